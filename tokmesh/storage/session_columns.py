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

import functools
import struct
import sys
from collections.abc import Sequence
from typing import Any

from tokmesh.domain.session import ROW_FIELDS, Session, share_data

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


#: How many leading values of a column are looked at to guess whether it repeats.
_PROBE = 64


def _encode_column(values: Sequence[Any], keys: Sequence[Any] | None = None) -> Any:
    """``values`` as they are (a plain JSON array), or dictionary-encoded when they repeat
    enough (records with equal ``keys`` share one value; ``keys`` defaults to the values).

    Runs for every column of every chunk in the snapshot thread, so the work is done by
    C loops (``dict.fromkeys``, ``map``), and a probe of the first values skips the
    attempt for columns that clearly do not repeat (creation times, mostly).
    """
    if keys is None:
        keys = values
    n = len(keys)
    probe = keys[:_PROBE]
    if not n or 2 * len(dict.fromkeys(probe)) > len(probe):
        return list(values)
    first = dict.fromkeys(keys)
    if len(first) == 1:
        return {"v": [values[0]]}
    if 2 * len(first) > n:
        return list(values)
    lookup = {k: i for i, k in enumerate(first)}
    index = list(map(lookup.__getitem__, keys))
    if keys is values:
        distinct = list(first)
    else:
        chosen = dict(zip(keys, values, strict=True))  # one value per key (equal ones)
        distinct = [chosen[k] for k in first]
    return {"v": distinct, "i": index}


def _data_keys(values: Sequence[dict[str, str] | None]) -> list[Any] | None:
    """Sharing keys of a ``data`` column: the items of each map (a dict is not hashable;
    equal items mean equal maps), ``None`` for no data. ``None`` instead of keys when a
    value is not hashable (state replayed from an old WAL is not validated): the column
    is then written plainly."""
    try:
        keys = [tuple(d.items()) if d else None for d in values]
        dict.fromkeys(keys[:_PROBE])
    except (TypeError, AttributeError):
        return None
    return keys


def _rows(sessions: Sequence[Session]) -> list[tuple[Any, ...]]:
    # One pass over each record, its slots in ROW_FIELDS order: a million records spread
    # over memory are read once rather than once per column (and specialised attribute
    # loads beat operator.attrgetter's generic lookups).
    return [
        (
            s.id,
            s.user_id,
            s.token_hash,
            s.ip_address,
            s.user_agent,
            s.last_access_ip,
            s.last_access_ua,
            s.device_id,
            s.created_by,
            s.created_at,
            s.expires_at,
            s.last_active,
            s.data,
            s.version,
            s.shard_id,
            s.ttl,
            s.is_deleted,
            s.idle_timeout,
        )
        for s in sessions
    ]


def encode_columns(sessions: Sequence[Session]) -> dict[str, Any]:
    """The column form of one chunk of records (JSON-serialisable)."""
    n = len(sessions)
    columns: list[tuple[Any, ...]] = [()] * len(ROW_FIELDS)
    if n:
        columns = list(zip(*_rows(sessions), strict=True))
    out: dict[str, Any] = {"n": n}
    for name, column in zip(ROW_FIELDS, columns, strict=True):
        if name == "token_hash":
            out[name] = b"".join(column).hex()
        elif name == "data":
            keys = _data_keys(column)
            out[name] = list(column) if keys is None else _encode_column(column, keys)
        else:
            out[name] = _encode_column(column)
    return out


class ColumnDecoder:
    """Decodes column chunks into records, sharing repeated values across chunks.

    Records with the same ``data`` map share one dict (:func:`share_data`). Raises
    ``ValueError`` / ``TypeError`` / ``KeyError`` on a malformed chunk (the caller maps
    them to ``SnapshotCorrupt``).
    """

    __slots__ = ()

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
        tokens = _digests(n).unpack(raw) if n else ()
        columns: list[Sequence[Any]] = [ids, self._column(chunk["user_id"], n, "user_id"), tokens]
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

    @staticmethod
    def _share(value: dict[str, str] | None) -> dict[str, str] | None:
        # The process-wide table, so sessions created after a restart share the maps
        # loaded here.
        return share_data(value)


@functools.lru_cache(maxsize=8)
def _digests(n: int) -> struct.Struct:
    # Splits n concatenated digests in one C call, ~5x faster than slicing in a loop
    # (chunks have CHUNK_RECORDS records but the last, so the cache stays tiny).
    return struct.Struct(f"{_DIGEST}s" * n)


def _check_types(values: list[Any], types: frozenset[type], name: str) -> None:
    if not set(map(type, values)) <= types:
        raise TypeError(f"session column {name!r} holds a value of the wrong type")


def _check_plain(values: Any, n: int, types: frozenset[type]) -> None:
    if type(values) is not list or len(values) != n:
        raise ValueError("session column does not match the chunk's count")
    if not set(map(type, values)) <= types:
        raise TypeError("session column holds a value of the wrong type")
