"""API keys: the record, roles and permissions, secret generation and format checks (02 §1-§3).

The record is immutable (``attrs`` frozen, slotted); every change builds a new one with
``attrs.evolve`` and bumps ``version``. Hashes are kept for the encrypted WAL/snapshot
(:meth:`ApiKey.to_record`) and never leave through :meth:`ApiKey.to_public`.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Final

import attrs

from tokmesh.domain.ids import normalize_key_id

# --- roles and status -------------------------------------------------------------------

ROLE_METRICS: Final = "metrics"
ROLE_VALIDATOR: Final = "validator"
ROLE_ISSUER: Final = "issuer"
ROLE_ADMIN: Final = "admin"
#: Every role, in the order used by the "Role must be one of" message (02 §9.1).
ROLES: Final[tuple[str, ...]] = (ROLE_ADMIN, ROLE_ISSUER, ROLE_VALIDATOR, ROLE_METRICS)

STATUS_ACTIVE: Final = "active"
STATUS_DISABLED: Final = "disabled"
STATUSES: Final[tuple[str, ...]] = (STATUS_ACTIVE, STATUS_DISABLED)

#: ``created_by`` / audit ``operator_id`` of the local emergency channel (02 §1).
LOCAL_ADMIN: Final = "LOCAL_ADMIN"
#: ``created_by`` of keys made by the server itself (bootstrap, migrations).
CREATED_BY_SYSTEM: Final = "system"

# --- permissions (02 §3) ----------------------------------------------------------------

PERM_METRICS_READ: Final = "metrics.read"
PERM_TOKEN_VALIDATE: Final = "token.validate"
PERM_SESSION_READ: Final = "session.read"
PERM_SESSION_TOUCH: Final = "session.touch"
#: ``GET /sessions`` filtered by ``user_id`` (issuer, admin).
PERM_SESSION_LIST: Final = "session.list"
#: ``GET /sessions`` without ``user_id`` (admin only: "unscoped session.list").
PERM_SESSION_LIST_ALL: Final = "session.list_all"
PERM_SESSION_CREATE: Final = "session.create"
PERM_SESSION_RENEW: Final = "session.renew"
PERM_SESSION_REVOKE: Final = "session.revoke"
PERM_SESSION_REVOKE_USER: Final = "session.revoke_user"
#: The session event stream (``GET /events``); admin only unless a role grants it.
PERM_EVENTS_READ: Final = "events.read"
PERM_APIKEY_MANAGE: Final = "apikey.manage"
PERM_SYSTEM_MANAGE: Final = "system.manage"

_VALIDATOR_PERMS = frozenset({PERM_TOKEN_VALIDATE, PERM_SESSION_READ, PERM_SESSION_TOUCH})
_ISSUER_PERMS = _VALIDATOR_PERMS | {
    PERM_SESSION_LIST,
    PERM_SESSION_CREATE,
    PERM_SESSION_RENEW,
    PERM_SESSION_REVOKE,
    PERM_SESSION_REVOKE_USER,
}
ALL_PERMISSIONS: Final[frozenset[str]] = _ISSUER_PERMS | {
    PERM_METRICS_READ,
    PERM_SESSION_LIST_ALL,
    PERM_EVENTS_READ,
    PERM_APIKEY_MANAGE,
    PERM_SYSTEM_MANAGE,
}

#: Role -> granted permissions (02 §3 table).
ROLE_PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    ROLE_METRICS: frozenset({PERM_METRICS_READ}),
    ROLE_VALIDATOR: _VALIDATOR_PERMS,
    ROLE_ISSUER: frozenset(_ISSUER_PERMS),
    ROLE_ADMIN: ALL_PERMISSIONS,
}

#: RESP command -> permission (02 §3 "Redis"); PING/AUTH/QUIT need none.
REDIS_COMMAND_PERMISSIONS: Final[dict[str, str]] = {
    "GET": PERM_SESSION_READ,
    "TTL": PERM_SESSION_READ,
    "EXISTS": PERM_SESSION_READ,
    "SCAN": PERM_SESSION_READ,
    "TM.VALIDATE": PERM_TOKEN_VALIDATE,
    "TM.TOUCH": PERM_SESSION_TOUCH,
    "SET": PERM_SESSION_CREATE,
    "DEL": PERM_SESSION_REVOKE,
    "EXPIRE": PERM_SESSION_RENEW,
    "TM.CREATE": PERM_SESSION_CREATE,
    "TM.REVOKE_USER": PERM_SESSION_REVOKE_USER,
}


def role_allows(role: str, permission: str) -> bool:
    """True when ``role`` grants ``permission`` (unknown roles grant nothing)."""
    perms = ROLE_PERMISSIONS.get(role)
    return perms is not None and permission in perms


# --- limits (02 §2) ---------------------------------------------------------------------

MAX_ALLOWEDLIST_ENTRIES: Final = 100
MAX_DESCRIPTION_CHARS: Final = 256
RATE_LIMIT_MIN: Final = 1
RATE_LIMIT_MAX: Final = 1_000_000
DEFAULT_RATE_LIMIT: Final = 1000

# --- secrets (02 §1) --------------------------------------------------------------------

SECRET_PREFIX: Final = "tmas_"
SECRET_BODY_LENGTH: Final = 43
SECRET_LENGTH: Final = 48
BASE62_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SECRET_RE = re.compile(r"tmas_[0-9A-Za-z]{43}")
_SECRET_BODY_RE = re.compile(r"[0-9A-Za-z]{43}")


def base62_encode(data: bytes, width: int = SECRET_BODY_LENGTH) -> str:
    """Big-endian Base62 of ``data`` (alphabet ``0-9A-Za-z``), left-padded with ``0``."""
    value = int.from_bytes(data, "big")
    out: list[str] = []
    while value:
        value, rem = divmod(value, 62)
        out.append(BASE62_ALPHABET[rem])
    body = "".join(reversed(out))
    return body.rjust(width, "0")


def generate_secret() -> str:
    """A new key secret: ``tmas_`` + Base62 of 32 CSPRNG bytes padded to 43 (48 chars).

    62**43 > 2**256, so every 32-byte value fits in 43 characters.
    """
    return SECRET_PREFIX + base62_encode(secrets.token_bytes(32))


def is_valid_secret(secret: str) -> bool:
    """Strict, case-sensitive format check: exactly ``tmas_`` + 43 Base62 characters."""
    return len(secret) == SECRET_LENGTH and _SECRET_RE.fullmatch(secret) is not None


def is_presentable_secret(secret: str) -> bool:
    """Format gate of the auth pipeline (02 §6.1 step 2).

    Like :func:`is_valid_secret` but the ``tmas_`` prefix may be in any case: a secret
    that was upper-cased as a whole is a *wrong* secret (401 ``TM-AUTH-4011``, 02 §21 #3),
    not a malformed one. The body stays case-sensitive and the length fixed, which bounds
    the Argon2 input.
    """
    return (
        len(secret) == SECRET_LENGTH
        and secret[:5].lower() == SECRET_PREFIX
        and _SECRET_BODY_RE.fullmatch(secret, 5) is not None
    )


def is_valid_key_id(key_id: str) -> bool:
    """True when ``key_id`` (any case) is a ``tmak-`` ULID key ID."""
    return normalize_key_id(key_id) is not None


# --- the record (02 §2) -----------------------------------------------------------------


def _tuple_of_str(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


@attrs.frozen(slots=True)
class ApiKey:
    """One API key. Immutable: change it with ``attrs.evolve`` and bump ``version``.

    ``secret_hash`` / ``old_secret_hash`` are Argon2id PHC strings; they are excluded from
    ``repr`` so that a logged record never shows them.
    """

    key_id: str
    secret_hash: str = attrs.field(repr=False)
    role: str
    old_secret_hash: str | None = attrs.field(default=None, repr=False)
    grace_period_end: int = 0
    allowedlist: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    rate_limit: int = DEFAULT_RATE_LIMIT
    expires_at: int = 0
    status: str = STATUS_ACTIVE
    description: str = ""
    created_at: int = 0
    created_by: str = ""
    last_used: int = 0
    version: int = 1

    def is_active(self) -> bool:
        """``status == active`` (expiry is a separate check)."""
        return self.status == STATUS_ACTIVE

    def is_expired(self, now_ms: int) -> bool:
        """Expired ⇔ ``expires_at != 0 and now_ms > expires_at`` (02 §6.1 step 5)."""
        return self.expires_at != 0 and now_ms > self.expires_at

    def in_grace(self, now_ms: int) -> bool:
        """True while the previous secret is still accepted (rotation grace, 02 §9.4)."""
        return self.old_secret_hash is not None and now_ms < self.grace_period_end

    def usable(self, now_ms: int) -> bool:
        """Active and not expired."""
        return self.status == STATUS_ACTIVE and not self.is_expired(now_ms)

    def to_public(self) -> dict[str, Any]:
        """The key object of 03 §4.2: never secrets or hashes."""
        return {
            "key_id": self.key_id,
            "role": self.role,
            "status": self.status,
            "description": self.description,
            "allowedlist": list(self.allowedlist),
            "rate_limit": self.rate_limit,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "last_used_at": self.last_used,
            "grace_period_end": self.grace_period_end,
        }

    def to_record(self) -> dict[str, Any]:
        """Every field, hashes included, for the encrypted WAL / snapshot payload."""
        return {
            "key_id": self.key_id,
            "secret_hash": self.secret_hash,
            "old_secret_hash": self.old_secret_hash,
            "grace_period_end": self.grace_period_end,
            "role": self.role,
            "allowedlist": list(self.allowedlist),
            "rate_limit": self.rate_limit,
            "expires_at": self.expires_at,
            "status": self.status,
            "description": self.description,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "last_used": self.last_used,
            "version": self.version,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> ApiKey:
        """Inverse of :meth:`to_record`; ``ValueError`` on a malformed record."""
        try:
            key_id = normalize_key_id(str(rec["key_id"]))
            secret_hash = rec["secret_hash"]
            role = rec["role"]
        except KeyError as exc:
            raise ValueError(f"api key record lacks {exc.args[0]!r}") from None
        if key_id is None:
            raise ValueError("malformed key_id in api key record")
        if not isinstance(secret_hash, str) or not secret_hash:
            raise ValueError("malformed secret_hash in api key record")
        if role not in ROLE_PERMISSIONS:
            raise ValueError("unknown role in api key record")
        status = rec.get("status", STATUS_ACTIVE)
        if status not in STATUSES:
            raise ValueError("unknown status in api key record")
        old = rec.get("old_secret_hash")
        return cls(
            key_id=key_id,
            secret_hash=secret_hash,
            old_secret_hash=old if isinstance(old, str) and old else None,
            grace_period_end=int(rec.get("grace_period_end", 0)),
            role=role,
            allowedlist=tuple(rec.get("allowedlist") or ()),
            rate_limit=int(rec.get("rate_limit", DEFAULT_RATE_LIMIT)),
            expires_at=int(rec.get("expires_at", 0)),
            status=status,
            description=str(rec.get("description", "")),
            created_at=int(rec.get("created_at", 0)),
            created_by=str(rec.get("created_by", "")),
            last_used=int(rec.get("last_used", 0)),
            version=int(rec.get("version", 1)),
        )
