"""The Session entity (01 §2) and its field limits (01 §3, 03 §3.1).

Records are immutable: every mutation builds a new ``Session`` (copy-on-write), so a shallow
copy of the primary map is a consistent snapshot view (01 §9.2). The class is slotted and
keeps the token hash as 32 raw bytes and ``data`` as ``None`` when empty, to keep 1M
sessions well under the memory budget (DESIGN §3).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.tokens import digest_to_hash

MAX_USER_ID_BYTES = 128
MAX_DEVICE_ID_BYTES = 128
MAX_DATA_KEY_BYTES = 64
MAX_DATA_VALUE_BYTES = 1024
MAX_DATA_TOTAL_BYTES = 4096
MAX_USER_AGENT_BYTES = 512
MAX_IP_CHARS = 45
BATCH_REVOKE_LIMIT = 1000

#: Fields returned on the wire (03 §3.1), in display order.
PUBLIC_FIELDS: tuple[str, ...] = (
    "id",
    "user_id",
    "device_id",
    "ip_address",
    "user_agent",
    "last_access_ip",
    "last_access_ua",
    "created_by",
    "created_at",
    "expires_at",
    "last_active",
    "data",
    "version",
)


#: Column order of :meth:`Session.to_row` (recorded in every snapshot header).
ROW_FIELDS: tuple[str, ...] = (
    "id",
    "user_id",
    "token_hash",
    "ip_address",
    "user_agent",
    "last_access_ip",
    "last_access_ua",
    "device_id",
    "created_by",
    "created_at",
    "expires_at",
    "last_active",
    "data",
    "version",
    "shard_id",
    "ttl",
    "is_deleted",
    "idle_timeout",
)


#: Distinct ``data`` maps shared between records, by their items (see :func:`share_data`).
_SHARED_DATA: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
SHARED_DATA_MAX = 10_000


def share_data(data: dict[str, str] | None) -> dict[str, str] | None:
    """One dict for every record whose ``data`` has the same items; ``None`` for none.

    Records never mutate their ``data`` (copy-on-write, 01 §9.2), so equal maps can be
    one object: a few distinct maps (roles, tenants) repeated over a million sessions
    would otherwise cost a dict of ~230 B each. The first :data:`SHARED_DATA_MAX`
    distinct maps are remembered; later ones, and maps that cannot be keyed (values
    that are not strings, from an old WAL), are kept as they are.
    """
    if not data:
        return None
    try:
        key = tuple(data.items())
        shared = _SHARED_DATA.get(key)
    except TypeError:
        return data
    if shared is not None:
        return shared
    if len(_SHARED_DATA) < SHARED_DATA_MAX:
        _SHARED_DATA[key] = data
    return data


class Session:
    """One session record. Treat as immutable; use :meth:`evolve` to change it."""

    __slots__ = (
        "created_at",
        "created_by",
        "data",
        "device_id",
        "expires_at",
        "id",
        "idle_timeout",
        "ip_address",
        "is_deleted",
        "last_access_ip",
        "last_access_ua",
        "last_active",
        "shard_id",
        "token_hash",
        "ttl",
        "user_agent",
        "user_id",
        "version",
    )

    id: str
    user_id: str
    token_hash: bytes
    ip_address: str
    user_agent: str
    last_access_ip: str
    last_access_ua: str
    device_id: str
    created_by: str
    created_at: int
    expires_at: int
    last_active: int
    data: dict[str, str] | None
    version: int
    shard_id: int
    ttl: int
    is_deleted: bool
    idle_timeout: int

    def __init__(
        self,
        *,
        id: str,
        user_id: str,
        token_hash: bytes,
        ip_address: str = "",
        user_agent: str = "",
        last_access_ip: str = "",
        last_access_ua: str = "",
        device_id: str = "",
        created_by: str = "",
        created_at: int = 0,
        expires_at: int = 0,
        last_active: int = 0,
        data: dict[str, str] | None = None,
        version: int = 1,
        shard_id: int = 0,
        ttl: int = 0,
        is_deleted: bool = False,
        idle_timeout: int = 0,
    ) -> None:
        self.id = id
        # Interning shares the few distinct IPs / user agents / key ids among millions
        # of records, and one user's (or device's) id among its sessions, which each
        # request would otherwise bring as a new string (runtime-interned strings are
        # freed when unused).
        self.user_id = sys.intern(user_id)
        self.token_hash = token_hash
        self.ip_address = sys.intern(ip_address)
        self.user_agent = sys.intern(user_agent)
        self.last_access_ip = sys.intern(last_access_ip)
        self.last_access_ua = sys.intern(last_access_ua)
        self.device_id = sys.intern(device_id)
        self.created_by = sys.intern(created_by)
        self.created_at = created_at
        self.expires_at = expires_at
        self.last_active = last_active
        self.data = share_data(data)
        self.version = version
        self.shard_id = shard_id
        self.ttl = ttl
        self.is_deleted = is_deleted
        # Sliding idle timeout in ms (0 = none): a TokMesh addition beside the absolute
        # expires_at; whichever comes first ends the session.
        self.idle_timeout = idle_timeout

    def evolve(self, **changes: Any) -> Session:
        """A copy with ``changes`` applied (copy-on-write)."""
        fields = {name: getattr(self, name) for name in Session.__slots__}
        fields.update(changes)
        return Session(**fields)

    def is_expired(self, now_ms: int) -> bool:
        """Expired ⇔ ``expires_at != 0 and now > expires_at`` (valid at expires_at exactly),
        or the idle timeout has passed since ``last_active``."""
        if self.expires_at != 0 and now_ms > self.expires_at:
            return True
        return self.idle_timeout != 0 and now_ms > self.last_active + self.idle_timeout

    def effective_expiry(self) -> int:
        """The instant after which the session is expired (0 = never)."""
        if self.idle_timeout:
            idle_end = self.last_active + self.idle_timeout
            return idle_end if self.expires_at == 0 else min(self.expires_at, idle_end)
        return self.expires_at

    def is_live(self, now_ms: int) -> bool:
        """Present, not expired, not revoked."""
        return not self.is_deleted and not self.is_expired(now_ms)

    def to_public(self) -> dict[str, Any]:
        """The wire form of 03 §3.1 (token, hash and internals never exposed)."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "device_id": self.device_id,
            "ip_address": self.ip_address,
            "user_agent": self.user_agent,
            "last_access_ip": self.last_access_ip,
            "last_access_ua": self.last_access_ua,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "last_active": self.last_active,
            "data": dict(self.data) if self.data else {},
            "version": self.version,
            **({"idle_timeout_seconds": self.idle_timeout // 1000} if self.idle_timeout else {}),
        }

    def to_record(self) -> dict[str, Any]:
        """All 17 fields for WAL and snapshot payloads (token hash as ``tmth_`` hex)."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "token_hash": digest_to_hash(self.token_hash),
            "ip_address": self.ip_address,
            "user_agent": self.user_agent,
            "last_access_ip": self.last_access_ip,
            "last_access_ua": self.last_access_ua,
            "device_id": self.device_id,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "last_active": self.last_active,
            "data": self.data or {},
            "version": self.version,
            "shard_id": self.shard_id,
            "ttl": self.ttl,
            "is_deleted": self.is_deleted,
            **({"idle_timeout": self.idle_timeout} if self.idle_timeout else {}),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Session:
        """Inverse of :meth:`to_record`; ``ValueError``/``KeyError``/``TypeError`` on a
        malformed record.

        This runs a million times at start-up (snapshot load), so it fills the slots
        directly instead of going through ``__init__`` with seventeen keyword lookups.
        """
        th = rec["token_hash"]
        if len(th) != 69 or th[:5].lower() != "tmth_":
            raise ValueError("malformed token_hash in record")
        digest = bytes.fromhex(th[5:])  # ValueError on non-hex
        if len(digest) != 32:
            raise ValueError("malformed token_hash in record")
        self = object.__new__(cls)
        get = rec.get
        intern = sys.intern
        self.id = rec["id"]
        self.user_id = rec["user_id"]
        self.token_hash = digest
        self.ip_address = intern(get("ip_address") or "")
        self.user_agent = intern(get("user_agent") or "")
        self.last_access_ip = intern(get("last_access_ip") or "")
        self.last_access_ua = intern(get("last_access_ua") or "")
        self.device_id = get("device_id") or ""
        self.created_by = intern(get("created_by") or "")
        self.created_at = int(get("created_at", 0))
        self.expires_at = int(get("expires_at", 0))
        self.last_active = int(get("last_active", 0))
        data = get("data")
        self.data = share_data(dict(data)) if data else None
        self.version = int(get("version", 1))
        self.shard_id = int(get("shard_id", 0))
        self.ttl = int(get("ttl", 0))
        self.is_deleted = bool(get("is_deleted", False))
        self.idle_timeout = int(get("idle_timeout", 0))
        if not isinstance(self.id, str) or not isinstance(self.user_id, str):
            raise TypeError("session id and user_id must be strings")
        return self

    def to_row(self) -> list[Any]:
        """Positional form for snapshots (column order :data:`ROW_FIELDS`): compact, and
        decoded without per-field key lookups at start-up."""
        return [
            self.id,
            self.user_id,
            self.token_hash.hex(),
            self.ip_address,
            self.user_agent,
            self.last_access_ip,
            self.last_access_ua,
            self.device_id,
            self.created_by,
            self.created_at,
            self.expires_at,
            self.last_active,
            self.data or {},
            self.version,
            self.shard_id,
            self.ttl,
            self.is_deleted,
            self.idle_timeout,
        ]

    @classmethod
    def from_row(cls, row: list[Any]) -> Session:
        """Inverse of :meth:`to_row`; ``ValueError``/``TypeError`` on a malformed row."""
        (
            sid,
            user_id,
            token_hex,
            ip,
            ua,
            last_ip,
            last_ua,
            device_id,
            created_by,
            created_at,
            expires_at,
            last_active,
            data,
            version,
            shard_id,
            ttl,
            is_deleted,
            idle_timeout,
        ) = row
        digest = bytes.fromhex(token_hex)
        if len(digest) != 32 or type(sid) is not str or type(user_id) is not str:
            raise ValueError("malformed session row")
        if type(expires_at) is not int or type(version) is not int:
            raise TypeError("malformed session row")
        intern = sys.intern
        self = object.__new__(cls)
        self.id = sid
        self.user_id = user_id
        self.token_hash = digest
        self.ip_address = ip = intern(ip)
        self.user_agent = ua = intern(ua)
        # Usually unchanged since creation: share the interned string without a lookup.
        self.last_access_ip = ip if last_ip == ip else intern(last_ip)
        self.last_access_ua = ua if last_ua == ua else intern(last_ua)
        self.device_id = device_id
        self.created_by = intern(created_by)
        self.created_at = created_at
        self.expires_at = expires_at
        self.last_active = last_active
        self.data = share_data(data)
        self.version = version
        self.shard_id = shard_id
        self.ttl = ttl
        self.is_deleted = is_deleted
        self.idle_timeout = idle_timeout
        return self

    @classmethod
    def from_columns(cls, columns: Sequence[Iterable[Any]]) -> list[Session]:
        """Records from one column per field, in :data:`ROW_FIELDS` order (start-up path).

        The caller has already checked the columns' types and lengths, decoded the token
        hashes and interned the strings it wants shared; nothing is validated or copied
        here. Slots are filled in one tight loop (about 0.3 µs a record instead of ~2 µs
        for :meth:`from_row`), which is what makes a million-record cold start fast.
        ``data`` dicts may be shared between records: records never mutate them.
        """
        if len(columns) != len(ROW_FIELDS):
            raise ValueError("one column per session field is required")
        new = object.__new__
        out: list[Session] = []
        append = out.append
        for (
            sid,
            user_id,
            token_hash,
            ip,
            ua,
            last_ip,
            last_ua,
            device_id,
            created_by,
            created_at,
            expires_at,
            last_active,
            data,
            version,
            shard_id,
            ttl,
            is_deleted,
            idle_timeout,
        ) in zip(*columns, strict=True):
            self = new(cls)
            self.id = sid
            self.user_id = user_id
            self.token_hash = token_hash
            self.ip_address = ip
            self.user_agent = ua
            self.last_access_ip = last_ip
            self.last_access_ua = last_ua
            self.device_id = device_id
            self.created_by = created_by
            self.created_at = created_at
            self.expires_at = expires_at
            self.last_active = last_active
            self.data = data
            self.version = version
            self.shard_id = shard_id
            self.ttl = ttl
            self.is_deleted = is_deleted
            self.idle_timeout = idle_timeout
            append(self)
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Session):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in Session.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        # Never show the token hash (sensitive) in reprs that may reach logs.
        return (
            f"Session(id={self.id!r}, version={self.version}, expires_at={self.expires_at}, "
            f"is_deleted={self.is_deleted})"
        )


def _utf8_len(value: str) -> int:
    return len(value.encode("utf-8"))


def check_user_id(user_id: str | None) -> str:
    """``user_id`` is required (``TM-ARG-1002``) and ≤ 128 UTF-8 bytes (``TM-SESS-4001``)."""
    if not user_id:
        raise TokMeshError(E.ARG_MISSING, "user_id is required")
    if _utf8_len(user_id) > MAX_USER_ID_BYTES:
        raise TokMeshError(E.SESS_INVALID, "user_id exceeds 128 bytes", {"field": "user_id"})
    return user_id


def check_device_id(device_id: str | None) -> str:
    """``device_id`` is optional and ≤ 128 UTF-8 bytes (``TM-SESS-4001``)."""
    if not device_id:
        return ""
    if _utf8_len(device_id) > MAX_DEVICE_ID_BYTES:
        raise TokMeshError(E.SESS_INVALID, "device_id exceeds 128 bytes", {"field": "device_id"})
    return device_id


def check_data(data: dict[str, str] | None) -> dict[str, str] | None:
    """Limits of ``data``: key ≤ 64 B, value ≤ 1024 B, Σ(key+value) ≤ 4096 B (01 §2)."""
    if not data:
        return None
    total = 0
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TokMeshError(E.SYS_BAD_REQUEST, "data keys and values must be strings")
        klen = _utf8_len(key)
        vlen = _utf8_len(value)
        if klen > MAX_DATA_KEY_BYTES:
            raise TokMeshError(E.SESS_INVALID, "data key exceeds 64 bytes", {"field": "data"})
        if vlen > MAX_DATA_VALUE_BYTES:
            raise TokMeshError(E.SESS_INVALID, "data value exceeds 1024 bytes", {"field": "data"})
        total += klen + vlen
    if total > MAX_DATA_TOTAL_BYTES:
        raise TokMeshError(
            E.SESS_INVALID, "data exceeds 4096 bytes", {"field": "data", "size": total}
        )
    return dict(data)


def truncate_utf8(value: str | None, limit: int) -> str:
    """Truncate to at most ``limit`` UTF-8 bytes without splitting a character."""
    if not value:
        return ""
    raw = value.encode("utf-8")
    if len(raw) <= limit:
        return value
    return raw[:limit].decode("utf-8", errors="ignore")


def clean_user_agent(ua: str | None) -> str:
    """User agents longer than 512 bytes are truncated, never rejected (D15)."""
    return truncate_utf8(ua, MAX_USER_AGENT_BYTES)


def clean_ip(ip: str | None) -> str:
    """IP text is at most 45 chars (IPv6 text form); longer input is truncated."""
    return (ip or "")[:MAX_IP_CHARS]
