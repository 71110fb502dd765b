"""Session events: what a WAL record means to a watcher, and its wire form.

Sans-IO: turns one committed record (live from the commit stream, or read back from the
WAL) into a :class:`SessionEvent`, renders it as the JSON text of one WebSocket frame,
and parses what a client sends back (cursor, type filter). Nothing here touches a socket
or a file.

An event never carries a token, a token hash or a session's ``data``: only identifiers,
the time, the version and the API key id that caused it.

The cursor is the WAL position just after the record (``segment << 32 | offset``),
written as a decimal *string*: it passes 2**53 once the segment id does, and JavaScript
numbers would round it. Clients treat it as opaque and hand it back as ``?cursor=``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

import orjson

from tokmesh.actors.commit_stream import REPLICATED_CAUSE
from tokmesh.storage.wal_codec import RecordType, WalRecord

CREATED: Final = "created"
RENEWED: Final = "renewed"
TOUCHED: Final = "touched"
UPDATED: Final = "updated"
REVOKED: Final = "revoked"
EXPIRED: Final = "expired"
#: Every event type, in the order the documentation lists them.
EVENT_TYPES: Final = (CREATED, RENEWED, TOUCHED, UPDATED, REVOKED, EXPIRED)
#: ``by`` of a change no API key asked for (expiry), or whose record does not say.
SYSTEM: Final = "system"

#: The event type of each cause a record's event note names.
_TYPE_OF_CAUSE: Final = {
    "touch": TOUCHED,
    "renew": RENEWED,
    "update": UPDATED,
    "revoke": REVOKED,
    "expire": EXPIRED,
}

#: WebSocket close codes of the event stream (4000-4999 are for applications).
CLOSE_GOING_AWAY: Final = 1001  # the server is shutting down: reconnect with the cursor
CLOSE_BAD_REQUEST: Final = 4400  # malformed cursor or filter
CLOSE_UNAUTHORIZED: Final = 4401  # the key was disabled, rotated away or removed meanwhile
CLOSE_CURSOR_EXPIRED: Final = 4410  # the cursor is no longer in the retained WAL: resync
CLOSE_TOO_SLOW: Final = 4429  # the client did not keep up: reconnect with the cursor
CLOSE_PING_TIMEOUT: Final = 4408  # no pong within the idle timeout

#: The subprotocol a client offers (and the server selects) on ``GET /events``.
SUBPROTOCOL: Final = "tokmesh.events"
#: Prefix of the subprotocol that carries ``base64url(key_id:secret)`` for browsers.
AUTH_SUBPROTOCOL_PREFIX: Final = "tokmesh.auth."


class SessionEvent:
    """One event. Treat as immutable."""

    __slots__ = ("at", "by", "device_id", "position", "session_id", "type", "user_id", "version")

    def __init__(
        self,
        position: int,
        type: str,
        session_id: str,
        user_id: str,
        device_id: str,
        at: int,
        version: int,
        by: str,
    ) -> None:
        self.position = position
        self.type = type
        self.session_id = session_id
        self.user_id = user_id
        self.device_id = device_id
        self.at = at
        self.version = version
        self.by = by

    def to_dict(self) -> dict[str, Any]:
        """The wire form as a dict (field order as documented)."""
        return {
            "cursor": format_cursor(self.position),
            "type": self.type,
            "session_id": self.session_id,
            "user_id": self.user_id,
            "device_id": self.device_id,
            "at": self.at,
            "version": self.version,
            "by": self.by,
        }

    def to_json(self) -> bytes:
        """The wire form: one JSON object, the payload of one text frame."""
        return orjson.dumps(self.to_dict())

    def __repr__(self) -> str:
        return f"SessionEvent({self.position:#x}, {self.type}, {self.session_id!r})"


#: ``lookup(session_id)`` -> ``(user_id, device_id, version, revoked)`` of a session the
#: node still holds, or None: how an old DELETE record without an event note is named.
Lookup = Callable[[str], "tuple[str, str, int, bool] | None"]


def event_of(position: int, record: WalRecord, lookup: Lookup | None = None) -> SessionEvent | None:
    """The event of the record committed at ``position``; None for a record that is not
    a session event (``KEY_PUT``).

    Records carry an event note since the event stream exists (see ``WalRecord.event``).
    Older records are named as well as they can be, and say ``by: "system"``: an UPDATE
    that set ``expires_at`` to its own time plus the TTL is a renew, any other a touch; a
    DELETE is a revoke when the node still holds the session's tombstone, else an expiry.
    A record whose note says ``cause: "replicate"`` (a replica copying its owner's state
    in cluster mode) is no event here: the owner of the shard streams it.
    """
    rtype = record.type
    note = record.event
    if note is not None and note.get("cause") == REPLICATED_CAUSE:
        # A replica applying its owner's states: the owner streams that event.
        return None
    if rtype is RecordType.CREATE:
        body = record.body or {}
        by = body.get("created_by") or SYSTEM
        return SessionEvent(
            position,
            CREATED,
            record.entity_id,
            str(body.get("user_id", "")),
            str(body.get("device_id", "")),
            record.ts,
            record.version,
            str(by),
        )
    if rtype is RecordType.UPDATE:
        body = record.body or {}
        if note is not None:
            kind = _TYPE_OF_CAUSE.get(str(note.get("cause")), UPDATED)
            by = str(note.get("by") or SYSTEM)
        else:
            ttl = body.get("ttl", 0)
            renewed = bool(ttl) and body.get("expires_at") == record.ts + ttl
            kind, by = (RENEWED if renewed else TOUCHED), SYSTEM
        return SessionEvent(
            position,
            kind,
            record.entity_id,
            str(body.get("user_id", "")),
            str(body.get("device_id", "")),
            record.ts,
            record.version,
            by,
        )
    if rtype is RecordType.DELETE:
        if note is not None:
            return SessionEvent(
                position,
                _TYPE_OF_CAUSE.get(str(note.get("cause")), REVOKED),
                record.entity_id,
                str(note.get("user_id", "")),
                str(note.get("device_id", "")),
                record.ts,
                int(note.get("version", 0)),
                str(note.get("by") or SYSTEM),
            )
        held = lookup(record.entity_id) if lookup is not None else None
        if held is None:
            return SessionEvent(position, EXPIRED, record.entity_id, "", "", record.ts, 0, SYSTEM)
        user_id, device_id, version, revoked = held
        kind = REVOKED if revoked else EXPIRED
        return SessionEvent(
            position, kind, record.entity_id, user_id, device_id, record.ts, version, SYSTEM
        )
    return None


def format_cursor(position: int) -> str:
    """The cursor of an event at ``position`` (a decimal string)."""
    return str(position)


def parse_cursor(text: str) -> int:
    """The WAL position a client's cursor names; ``ValueError`` when malformed.

    Accepts the decimal string the server sends (and a bare JSON number's digits).
    """
    if not text or len(text) > 20 or not text.isascii() or not text.isdigit():
        raise ValueError("cursor must be the decimal string of an event's cursor")
    position = int(text)
    if position >= 1 << 64:
        raise ValueError("cursor out of range")
    return position


def parse_types(text: str | None, include_touch: bool) -> frozenset[str]:
    """The event types a ``?types=a,b`` filter selects (every type when absent).

    ``ValueError`` for an unknown type, an empty list, or ``touched`` while touch events
    are not published (``events.include_touch: false``): asking for what can never come
    is a mistake to report, not an empty stream.
    """
    published = frozenset(t for t in EVENT_TYPES if include_touch or t != TOUCHED)
    if text is None:
        return published
    wanted = frozenset(part.strip() for part in text.split(",") if part.strip())
    if not wanted:
        raise ValueError("types must name at least one event type")
    unknown = wanted - frozenset(EVENT_TYPES)
    if unknown:
        raise ValueError(f"unknown event type(s): {', '.join(sorted(unknown))}")
    if TOUCHED in wanted and not include_touch:
        raise ValueError("touched events are not published (events.include_touch is false)")
    return wanted


_LEN16: Final = struct.Struct(">H")
_LEN64: Final = struct.Struct(">Q")


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked WebSocket text frame around ``payload`` (RFC 6455,
    section 5.2: frames from a server are never masked).

    Built once per event and shared by every subscriber, so a batch of events costs a
    subscriber one write of concatenated frames instead of one call per event.
    """
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return b"\x81\x7e" + _LEN16.pack(n) + payload
    return b"\x81\x7f" + _LEN64.pack(n) + payload
