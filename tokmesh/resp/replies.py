"""Replies in the connection's protocol: RESP2, or RESP3 once the client sent ``HELLO 3``.

RESP3 adds reply types to RESP2's five: null ``_``, map ``%``, set ``~``, verbatim string
``=``, double ``,`` and boolean ``#`` (and big numbers, attributes and pushes, which
TokMesh never sends). A RESP3 connection gets them exactly where Redis 7 sends them; a
RESP2 connection gets what Redis sends it instead: a map as a flat array of keys and
values, a set as an array, a verbatim string as a bulk string, a double as a bulk
string, a boolean as the integer 0 or 1, and a null as the null bulk ``$-1``.

A handler describes a structured reply once with plain Python values (plus the three
marker types below) and :meth:`Protocol.encode` writes it for the connection. Replies
that are the same bytes in both protocols (``+OK``, errors, integers, bulk strings) keep
using the encoders of :mod:`tokmesh.resp.codec`; the one prebuilt reply that differs on
a hot path, the null of a missed ``GET``, is :attr:`Protocol.nil`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final, TypeAlias

from tokmesh.resp.codec import NIL, encode_bulk, encode_integer, encode_simple


class Status(str):
    """A simple string (``+text``) inside a structured reply, such as a COMMAND flag."""

    __slots__ = ()


class Verbatim(str):
    """Text Redis sends as a verbatim string (``=len\\r\\ntxt:...``) to RESP3 clients:
    INFO, CLIENT INFO, CLIENT LIST. RESP2 clients get it as a bulk string."""

    __slots__ = ()


class RespSet(tuple["ReplyValue", ...]):
    """A set reply (``~`` in RESP3, an array in RESP2); its order is kept as given."""

    __slots__ = ()


#: What :meth:`Protocol.encode` accepts. ``str`` and ``bytes`` are bulk strings, ``None``
#: is the null, a mapping is a map and any other sequence an array.
ReplyValue: TypeAlias = (
    "bytes | str | int | float | bool | Sequence[ReplyValue] | Mapping[str, ReplyValue] | None"
)

_RESP3_NULL: Final = b"_\r\n"


class Protocol:
    """How one protocol version writes replies (two instances: :data:`RESP2`, :data:`RESP3`)."""

    __slots__ = ("nil", "resp3", "version")

    def __init__(self, version: int) -> None:
        #: 2 or 3, as negotiated by HELLO (``resp=`` in CLIENT LIST, ``proto`` in HELLO).
        self.version = version
        self.resp3 = version == 3
        #: The null reply (a missed ``GET``, ``CLIENT GETNAME`` without a name).
        self.nil = _RESP3_NULL if self.resp3 else NIL

    def __repr__(self) -> str:
        return f"RESP{self.version}"

    def encode(self, value: ReplyValue) -> bytes:
        """The complete reply for ``value`` in this protocol."""
        parts: list[bytes] = []
        self._encode(value, parts)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _encode(self, value: ReplyValue, parts: list[bytes]) -> None:
        resp3 = self.resp3
        # Subclasses first: Status and Verbatim are str, bool is int, RespSet is tuple.
        if isinstance(value, Status):
            parts.append(encode_simple(value))
        elif isinstance(value, Verbatim):
            if resp3:
                raw = value.encode("utf-8")
                parts.append(b"=%d\r\ntxt:%b\r\n" % (len(raw) + 4, raw))
            else:
                parts.append(encode_bulk(value))
        elif isinstance(value, bytes | str):
            parts.append(encode_bulk(value))
        elif value is None:
            parts.append(self.nil)
        elif isinstance(value, bool):
            if resp3:
                parts.append(b"#t\r\n" if value else b"#f\r\n")
            else:
                parts.append(encode_integer(int(value)))
        elif isinstance(value, int):
            parts.append(encode_integer(value))
        elif isinstance(value, float):
            text = _double(value)
            parts.append(b",%b\r\n" % text if resp3 else encode_bulk(text))
        elif isinstance(value, Mapping):
            n = len(value)
            parts.append(b"%%%d\r\n" % n if resp3 else b"*%d\r\n" % (2 * n))
            for key, item in value.items():
                parts.append(encode_bulk(key))
                self._encode(item, parts)
        else:
            marker = b"~" if resp3 and isinstance(value, RespSet) else b"*"
            parts.append(b"%b%d\r\n" % (marker, len(value)))
            for item in value:
                self._encode(item, parts)


def _double(value: float) -> bytes:
    """A double as Redis writes it: the shortest round-trip form, ``inf``, ``-inf``, ``nan``."""
    if math.isnan(value):
        return b"nan"
    if math.isinf(value):
        return b"inf" if value > 0 else b"-inf"
    text = repr(value)
    # Redis writes integral doubles without the ".0" Python adds.
    return (text[:-2] if text.endswith(".0") else text).encode("ascii")


RESP2: Final = Protocol(2)
RESP3: Final = Protocol(3)
