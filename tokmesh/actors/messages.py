"""Typed messages of the store shard actors (DESIGN §1, 01 §7).

Messages are never changed after they are built; they are plain slotted classes rather
than frozen ones because a frozen attrs class costs three times as much to build, once
per write.

Every mutation is one message evaluated atomically by the owning shard against its latest
state (committed plus in-flight). Each carries its own :class:`Reply`.
"""

from __future__ import annotations

import attrs

from tokmesh.actors.reply import Reply
from tokmesh.domain.session import Session


@attrs.define
class Create:
    """Insert a fully built session (version 1); checks quota, id and token uniqueness.

    ``exclusive_id`` marks client-chosen ids (Redis create paths): a duplicate answers
    ``TM-SESS-4090`` instead of being regenerated.
    """

    session: Session
    max_per_user: int
    evict_oldest: bool
    exclusive_id: bool
    reply: Reply[Session]


@attrs.define
class Touch:
    """Monotonic ``last_active`` bump; with ``ip``/``ua`` it is validate-with-touch."""

    sid: str
    now_ms: int
    min_interval_ms: int
    ip: str | None
    ua: str | None
    reply: Reply[Session]
    #: The API key that asked (empty: the system); logged for the event stream.
    by: str = ""


@attrs.define
class Renew:
    """Set ``expires_at = now + ttl_ms`` with an optional optimistic-lock version."""

    sid: str
    now_ms: int
    ttl_ms: int
    expected_version: int | None
    reply: Reply[Session]
    #: The API key that asked (empty: the system); logged for the event stream.
    by: str = ""


@attrs.define
class Update:
    """Redis ``SET`` on an existing key: replace device/data, optionally the TTL (01 §4.7)."""

    sid: str
    now_ms: int
    user_id: str | None
    device_id: str | None
    data: dict[str, str] | None
    ttl_ms: int
    expected_version: int | None
    reply: Reply[Session]
    #: The API key that asked (empty: the system); logged for the event stream.
    by: str = ""


@attrs.define
class Revoke:
    """Tombstone one session; idempotent. Replies True when a record was written."""

    sid: str
    now_ms: int
    reply: Reply[bool]
    #: The API key that asked (empty: the system); logged for the event stream.
    by: str = ""


@attrs.define
class RevokeUser:
    """Tombstone every live session of a user (≤ 1000), optionally sparing one."""

    user_id: str
    now_ms: int
    except_sid: str | None
    limit: int
    reply: Reply[int]
    #: The API key that asked (empty: the system); logged for the event stream.
    by: str = ""


@attrs.define
class Purge:
    """Remove expired sessions (WAL DELETE) and expired tombstones (no record)."""

    sids: tuple[str, ...]
    now_ms: int
    reply: Reply[int] | None


@attrs.define
class Replicate:
    """Apply states copied from a shard's owner (on a replica), idempotently.

    Each item is ``(session_id, state)``: ``state`` is the owner's full record (a
    tombstone when ``is_deleted``) or ``None`` for a session the owner purged after its
    expiry. A higher version wins, a tombstone wins over a live state, an item that
    changes nothing writes nothing. Replies with the number of records written.
    """

    items: tuple[tuple[str, Session | None], ...]
    now_ms: int
    reply: Reply[int]


@attrs.define
class Drop:
    """Forget copies of sessions this node no longer holds for anyone (no WAL record);
    ids with a write in flight are kept. Replies with the number dropped."""

    sids: tuple[str, ...]
    reply: Reply[int]


@attrs.define
class Barrier:
    """Resolves once every earlier message of this shard has been committed or failed."""

    reply: Reply[None]


Message = Create | Touch | Renew | Update | Revoke | RevokeUser | Purge | Replicate | Drop | Barrier

__all__ = [
    "Barrier",
    "Create",
    "Drop",
    "Message",
    "Purge",
    "Renew",
    "Replicate",
    "Revoke",
    "RevokeUser",
    "Touch",
    "Update",
]
