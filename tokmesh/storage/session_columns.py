"""Column layout of snapshot session chunks (sans-IO, TokMesh's choice within 01 §13).

A chunk of up to 2,048 sessions is one JSON object with one entry per field of
:data:`~tokmesh.domain.session.ROW_FIELDS` plus ``n`` (the record count)::

    {"n": 2048,
     "id": ["tmss-…", …],                       # a plain list: one value per record
     "token_hash": "<hex of n × 32 bytes>",     # all digests of the chunk, concatenated
     "ip_address": {"v": ["10.1.2.3", …], "i": [0, 0, 1, …]},   # dictionary-encoded
     "ttl": {"v": [86400000]},                  # one value for every record
     …}

A column whose values repeat (at most one distinct value for every two records) is
written as its distinct values ``v`` plus an index ``i`` per record, ``i`` left out when
there is a single value. Why columns rather than one row per record: loading a snapshot
is the bulk of a cold start, and here almost all of it runs in C - ``orjson`` builds
each column as one list, ``map`` expands the dictionaries, ``bytes.fromhex`` decodes all
token hashes at once - leaving one tight loop that fills the record slots. Repeated
values (IPs, user agents, key ids, user ids, TTLs, ``data`` maps) also come back as one
shared object each instead of a copy per record, which saves memory after a restart.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

import orjson

from tokmesh.domain.session import ROW_FIELDS, Session

_DIGEST = 32
_NONE_TYPE = type(None)

# Per field: the element types a decoded column may hold, and whether its strings are
# interned (the few distinct IPs, user agents and key ids are shared process-wide, as
# Session's constructor does).
_STR = frozenset({str})
_INT = frozenset({int})
_KINDS: dict[str, tuple[frozenset[type], bool]] = {
    "user_id": (_STR, False),
    "ip_address": (_STR, True),
    "user_agent": (_STR, True),
    "last_access_ip": (_STR, True),
    "last_access_ua": (_STR, True),
    "device_id": (_STR, False),
    "created_by": (_STR, True),
    "created_at": (_INT, False),
    "expires_at": (_INT, False),
    "last_active": (_INT, False),
    "data": (frozenset({dict, _NONE_TYPE}), False),
    "version": (_INT, False),
    "shard_id": (_INT, False),
    "ttl": (_INT, False),
    "is_deleted": (frozenset({bool}), False),
    "idle_timeout": (_INT, False),
}
_GETTERS = {name: attrgetter(name) for name in ROW_FIELDS}


def _data_key(value: dict[str, str] | None) -> bytes:
    return orjson.dumps(value) if value else b""


def _encode_column(values: list[Any], key: Callable[[Any], Any] | None = None) -> Any:
    """``values`` as a plain list, or dictionary-encoded when they repeat enough."""
    n = len(values)
    keys = values if key is None else [key(v) for v in values]
    index: dict[Any, int] = {}
    for k in keys:
        if k not in index:
            index[k] = len(index)
            if 2 * len(index) > n:
                return values
    if not index:
        return values
    distinct: list[Any] = [None] * len(index)
    for k, v in zip(keys, values, strict=True):
        distinct[index[k]] = v
    if len(distinct) == 1:
        return {"v": distinct}
    return {"v": distinct, "i": [index[k] for k in keys]}


def encode_columns(sessions: Sequence[Session]) -> dict[str, Any]:
    """The column form of one chunk of records (JSON-serialisable)."""
    out: dict[str, Any] = {
        "n": len(sessions),
        "id": [s.id for s in sessions],
        "token_hash": b"".join([s.token_hash for s in sessions]).hex(),
    }
    for name in ROW_FIELDS:
        if name in ("id", "token_hash"):
            continue
        values = list(map(_GETTERS[name], sessions))
        if name == "data":
            # ``None`` and ``{}`` are the same "no data"; a dict is not hashable, so
            # identical maps are recognised by their JSON text.
            out[name] = _encode_column(values, _data_key)
        else:
            out[name] = _encode_column(values)
    return out


class ColumnDecoder:
    """Decodes column chunks into records, sharing repeated values across chunks.

    One decoder per snapshot load: it remembers the ``data`` maps it has built so that
    every record with the same map shares one dict. Raises ``ValueError`` /
    ``TypeError`` / ``KeyError`` on a malformed chunk (the caller maps them to
    ``SnapshotCorrupt``).
    """

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[bytes, dict[str, str]] = {}

    def decode(self, chunk: Any) -> tuple[list[str], list[Session]]:
        """``(ids, records)`` of one decoded chunk, in record order."""
        if type(chunk) is not dict:
            raise TypeError("session chunk is not a JSON object")
        n = chunk["n"]
        if type(n) is not int or n < 0:
            raise ValueError("session chunk count invalid")
        ids = chunk["id"]
        _check_plain(ids, n, _STR)
        raw = bytes.fromhex(chunk["token_hash"])
        if len(raw) != n * _DIGEST:
            raise ValueError("session chunk token hashes do not match its count")
        tokens = [raw[i : i + _DIGEST] for i in range(0, len(raw), _DIGEST)]
        columns: list[list[Any]] = [ids, self._column(chunk["user_id"], n, "user_id"), tokens]
        for name in ROW_FIELDS[3:]:
            columns.append(self._column(chunk[name], n, name))
        return ids, Session.from_columns(columns)

    def _column(self, encoded: Any, n: int, name: str) -> list[Any]:
        types, interned = _KINDS[name]
        if type(encoded) is list:
            _check_plain(encoded, n, types)
            if interned:
                return list(map(sys.intern, encoded))
            if name == "data":
                # mostly distinct maps (else the writer would have shared them): no cache
                return [d or None for d in encoded]
            return encoded
        if type(encoded) is not dict:
            raise TypeError(f"session column {name!r} malformed")
        distinct = encoded["v"]
        if type(distinct) is not list or not distinct:
            raise TypeError(f"session column {name!r} malformed")
        _check_types(distinct, types, name)
        if interned:
            distinct = [sys.intern(v) for v in distinct]
        elif name == "data":
            distinct = [self._share(d) for d in distinct]
        index = encoded.get("i")
        if index is None:
            if len(distinct) != 1:
                raise ValueError(f"session column {name!r} malformed")
            return distinct * n
        _check_plain(index, n, _INT)
        if n and (min(index) < 0 or max(index) >= len(distinct)):
            raise ValueError(f"session column {name!r} has an index out of range")
        return list(map(distinct.__getitem__, index))

    def _share(self, value: dict[str, str] | None) -> dict[str, str] | None:
        if not value:
            return None
        key = orjson.dumps(value)
        shared = self._data.get(key)
        if shared is None:
            self._data[key] = shared = value
        return shared


def _check_types(values: list[Any], types: frozenset[type], name: str) -> None:
    if not set(map(type, values)) <= types:
        raise TypeError(f"session column {name!r} holds a value of the wrong type")


def _check_plain(values: Any, n: int, types: frozenset[type]) -> None:
    if type(values) is not list or len(values) != n:
        raise ValueError("session column does not match the chunk's count")
    if not set(map(type, values)) <= types:
        raise TypeError("session column holds a value of the wrong type")
