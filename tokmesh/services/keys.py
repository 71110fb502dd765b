"""API key lifecycle: create, list, enable/disable, rotate, emergency create (02 §9, 03 §4.2).

Every change is written through the :class:`KeyRepository` (durable before it returns) and
then invalidates the key's cached grants at once. Mutations are serialised by one lock,
because each is a read-modify-write across an ``await`` (the WAL write).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import attrs
import trio

from tokmesh.domain.apikey import (
    DEFAULT_RATE_LIMIT,
    LOCAL_ADMIN,
    MAX_ALLOWEDLIST_ENTRIES,
    MAX_DESCRIPTION_CHARS,
    RATE_LIMIT_MAX,
    RATE_LIMIT_MIN,
    ROLE_ADMIN,
    ROLES,
    STATUS_ACTIVE,
    STATUS_DISABLED,
    STATUSES,
    ApiKey,
    generate_secret,
)
from tokmesh.domain.clock import Clock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.ids import new_key_id, normalize_key_id
from tokmesh.domain.ip_rules import parse_networks

log = logging.getLogger("tokmesh.keys")

YEAR_MS: Final = 365 * 24 * 3600 * 1000
LONG_VALIDITY_WARNING: Final = (
    "Security Warning: This key is valid for more than 1 year. "
    "Please consider a shorter rotation cycle."
)
EMERGENCY_WARNING: Final = (
    "This key was created via emergency channel. Please rotate it after normal access is restored."
)
LAST_ADMIN_WARNING: Final = (
    "This was the last active admin key. Use the local admin socket "
    "(EMERGENCY_CREATE_ADMIN_KEY) to regain admin access."
)
EMERGENCY_DESCRIPTION: Final = "Emergency Admin Key"
MAX_PAGE_SIZE: Final = 100
_ROLE_MESSAGE: Final = "Role must be one of: " + ", ".join(ROLES)


class KeyRepository(Protocol):
    """Where keys are kept: the one seam every key change goes through.

    Standalone, the session store (WAL ``KEY_PUT``, applied on commit); in cluster mode,
    ``cluster.key_sync.EtcdKeyRepository`` (etcd, then applied by this node's watcher).
    """

    def get_key(self, key_id: str) -> ApiKey | None: ...  # sync in-memory read

    def list_keys(self) -> list[ApiKey]: ...

    async def put_key(self, key: ApiKey) -> None: ...  # durable (WAL) before returning;

    # raises TokMeshError(E.SYS_STORAGE) on failure


class SecretHasher(Protocol):
    """Computes Argon2id hashes off the event loop (the auth-cache actor)."""

    async def hash_secret(self, secret: str) -> str:
        """PHC string for ``secret``."""
        ...


@attrs.frozen(slots=True)
class KeySettings:
    """The key-lifecycle numbers (from ``security.auth.*``)."""

    rotation_grace_ms: int = 3_600_000
    #: ``last_used`` is written at most once per this interval per key (cache TTL).
    last_used_interval_ms: int = 60_000
    #: How long ``run`` gathers ``last_used`` notes before one write pass.
    last_used_flush_s: float = 1.0


# --- argument checks (values straight from decoded JSON) ----------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_role_name(role: Any) -> str:
    """Role present (``TM-ARG-1002``) and one of the four (``TM-ARG-1001``)."""
    if role is None or role == "":
        raise TokMeshError(E.ARG_MISSING, "role is required", details={"field": "role"})
    if not isinstance(role, str) or role not in ROLES:
        raise TokMeshError(E.ARG_INVALID, _ROLE_MESSAGE, details={"field": "role"})
    return role


def check_description(description: Any) -> str:
    """Optional text of at most 256 characters."""
    if description is None:
        return ""
    if not isinstance(description, str):
        raise TokMeshError(E.SYS_BAD_REQUEST, "description must be a string")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise TokMeshError(
            E.ARG_INVALID,
            f"description exceeds {MAX_DESCRIPTION_CHARS} characters",
            details={"field": "description", "max_length": MAX_DESCRIPTION_CHARS},
        )
    return description


def check_allowedlist(allowedlist: Any) -> tuple[str, ...]:
    """At most 100 IP/CIDR entries, every one valid (rejected, never skipped)."""
    if allowedlist is None:
        return ()
    if not isinstance(allowedlist, list | tuple) or not all(
        isinstance(e, str) for e in allowedlist
    ):
        raise TokMeshError(E.SYS_BAD_REQUEST, "allowedlist must be a list of strings")
    if len(allowedlist) > MAX_ALLOWEDLIST_ENTRIES:
        raise TokMeshError(
            E.ARG_INVALID,
            f"allowedlist has more than {MAX_ALLOWEDLIST_ENTRIES} entries",
            details={"field": "allowedlist", "max_items": MAX_ALLOWEDLIST_ENTRIES},
        )
    parse_networks(allowedlist, E.ARG_INVALID, "allowedlist")
    return tuple(allowedlist)


def check_rate_limit(rate_limit: Any) -> int:
    """QPS 1-1,000,000; absent = 1000."""
    if rate_limit is None:
        return DEFAULT_RATE_LIMIT
    if not _is_int(rate_limit):
        raise TokMeshError(E.SYS_BAD_REQUEST, "rate_limit must be an integer")
    if not RATE_LIMIT_MIN <= rate_limit <= RATE_LIMIT_MAX:
        raise TokMeshError(
            E.ARG_INVALID,
            f"rate_limit must be between {RATE_LIMIT_MIN} and {RATE_LIMIT_MAX}",
            details={"field": "rate_limit", "min": RATE_LIMIT_MIN, "max": RATE_LIMIT_MAX},
        )
    return int(rate_limit)


def check_expires_at(expires_at: Any) -> int:
    """Unix ms; 0/absent = never. Past values are accepted (the key is unusable, 02 §2)."""
    if expires_at is None:
        return 0
    if not _is_int(expires_at):
        raise TokMeshError(E.SYS_BAD_REQUEST, "expires_at must be an integer (Unix ms)")
    if expires_at < 0:
        raise TokMeshError(
            E.ARG_INVALID, "expires_at must be 0 or Unix milliseconds", {"field": "expires_at"}
        )
    return int(expires_at)


def check_status(status: Any) -> str:
    """``active`` or ``disabled`` (``TM-ARG-1001`` otherwise, ``TM-ARG-1002`` if absent)."""
    if status is None:
        raise TokMeshError(E.ARG_MISSING, "status is required", details={"field": "status"})
    if not isinstance(status, str) or status not in STATUSES:
        raise TokMeshError(
            E.ARG_INVALID, "status must be one of: active, disabled", details={"field": "status"}
        )
    return status


def check_paging(page: Any, size: Any) -> tuple[int, int]:
    """``page`` ≥ 1 (default 1), ``size`` 1-100 (default 20); no silent clamping (03 §2.5)."""
    page = 1 if page is None else page
    size = 20 if size is None else size
    if not _is_int(page) or not _is_int(size) or page < 1 or not 1 <= size <= MAX_PAGE_SIZE:
        raise TokMeshError(
            E.ARG_INVALID,
            "page must be >= 1 and size between 1 and 100",
            details={"max_size": MAX_PAGE_SIZE},
        )
    return page, size


def validity_warning(expires_at: int, now_ms: int) -> str | None:
    """The > 1 year warning (02 §9.1); a never-expiring key is valid > 1 year (03 §4.2)."""
    if expires_at == 0 or expires_at - now_ms > YEAR_MS:
        return LONG_VALIDITY_WARNING
    return None


# --- wire shapes (03 §4.2, 03 §6) ----------------------------------------------------------


def created_data(key: ApiKey, secret: str, warning: str | None) -> dict[str, Any]:
    """``data`` of ``POST /admin/v1/keys`` (201) and of ``EMERGENCY_CREATE_ADMIN_KEY``."""
    data: dict[str, Any] = {
        "key_id": key.key_id,
        "key_secret": secret,
        "role": key.role,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
    }
    if warning:
        data["warning"] = warning
    return data


def status_data(key: ApiKey, updated_at: int, warning: str | None) -> dict[str, Any]:
    """``data`` of ``POST /admin/v1/keys/{key_id}/status``."""
    data: dict[str, Any] = {"key_id": key.key_id, "status": key.status, "updated_at": updated_at}
    if warning:
        data["warning"] = warning
    return data


def rotated_data(key: ApiKey, new_secret: str, old_valid_until: int) -> dict[str, Any]:
    """``data`` of ``POST /admin/v1/keys/{key_id}/rotate``."""
    return {
        "key_id": key.key_id,
        "new_key_secret": new_secret,
        "old_secret_valid_until": old_valid_until,
    }


def list_data(items: Sequence[ApiKey], total: int, page: int, size: int) -> dict[str, Any]:
    """``data`` of ``GET /admin/v1/keys`` (03 §2.5 list shape; never secrets or hashes)."""
    return {
        "items": [k.to_public() for k in items],
        "total_items": total,
        "page": page,
        "size": size,
    }


class KeyService:
    """Key lifecycle on top of a :class:`KeyRepository`.

    ``cache_invalidate(key_id)`` is called after every change (the auth cache's
    ``invalidate``), so cached credentials of that key stop working at once. Auditing
    (``KEY_CREATED`` …) is left to the caller, which knows the operator and request.
    """

    def __init__(
        self,
        repo: KeyRepository,
        settings: KeySettings,
        clock: Clock,
        hasher: SecretHasher,
        cache_invalidate: Callable[[str], object],
    ) -> None:
        self._repo = repo
        self._settings = settings
        self._clock = clock
        self._hasher = hasher
        self._invalidate = cache_invalidate
        self._lock = trio.Lock()
        self._used: dict[str, int] = {}
        self._used_event = trio.Event()

    # --- queries -------------------------------------------------------------------------

    def get(self, key_id: str) -> ApiKey:
        """The key or 404 ``TM-ADMIN-4041`` (any input case)."""
        norm = normalize_key_id(key_id) if isinstance(key_id, str) else None
        key = self._repo.get_key(norm) if norm is not None else None
        if key is None:
            raise TokMeshError(E.ADMIN_NOT_FOUND, "api key not found", details={"key_id": norm})
        return key

    def list(
        self, page: Any = None, size: Any = None, role: Any = None, status: Any = None
    ) -> tuple[list[ApiKey], int]:
        """One page of keys in creation order, optionally filtered; ``(items, total)``."""
        page_i, size_i = check_paging(page, size)
        if role is not None and role != "" and role not in ROLES:
            raise TokMeshError(E.ARG_INVALID, _ROLE_MESSAGE, details={"field": "role"})
        if status is not None and status != "" and status not in STATUSES:
            raise TokMeshError(E.ARG_INVALID, "status must be one of: active, disabled")
        keys = sorted(self._repo.list_keys(), key=lambda k: k.key_id)
        if role:
            keys = [k for k in keys if k.role == role]
        if status:
            keys = [k for k in keys if k.status == status]
        start = (page_i - 1) * size_i
        return keys[start : start + size_i], len(keys)

    def active_admin_count(self, now_ms: int | None = None) -> int:
        """Admin keys that can log in now (active, unexpired)."""
        now = self._clock.now_ms() if now_ms is None else now_ms
        return sum(1 for k in self._repo.list_keys() if k.role == ROLE_ADMIN and k.usable(now))

    # --- changes -------------------------------------------------------------------------

    async def create(
        self,
        role: Any,
        description: Any = None,
        allowedlist: Any = None,
        rate_limit: Any = None,
        expires_at: Any = None,
        created_by: str = "system",
    ) -> tuple[ApiKey, str, str | None]:
        """Create a key; returns ``(key, plaintext_secret, warning)``. The secret is shown once."""
        role_s = check_role_name(role)
        desc = check_description(description)
        allowed = check_allowedlist(allowedlist)
        limit = check_rate_limit(rate_limit)
        expires = check_expires_at(expires_at)
        return await self._create(role_s, desc, allowed, limit, expires, created_by)

    async def create_emergency(self, description: str | None = None) -> tuple[ApiKey, str, str]:
        """Admin key for the local socket: ``created_by=LOCAL_ADMIN``; the emergency warning."""
        desc = check_description(description.strip() if description else None)
        key, secret, _ = await self._create(
            ROLE_ADMIN, desc or EMERGENCY_DESCRIPTION, (), DEFAULT_RATE_LIMIT, 0, LOCAL_ADMIN
        )
        return key, secret, EMERGENCY_WARNING

    async def _create(
        self,
        role: str,
        description: str,
        allowedlist: tuple[str, ...],
        rate_limit: int,
        expires_at: int,
        created_by: str,
    ) -> tuple[ApiKey, str, str | None]:
        secret = generate_secret()
        secret_hash = await self._hasher.hash_secret(secret)
        async with self._lock:
            key_id = new_key_id()
            while self._repo.get_key(key_id) is not None:  # never in practice: ULIDs
                key_id = new_key_id()
            now = self._clock.now_ms()
            key = ApiKey(
                key_id=key_id,
                secret_hash=secret_hash,
                role=role,
                allowedlist=allowedlist,
                rate_limit=rate_limit,
                expires_at=expires_at,
                status=STATUS_ACTIVE,
                description=description,
                created_at=now,
                created_by=created_by,
                version=1,
            )
            await self._write(key)
        return key, secret, validity_warning(expires_at, now)

    async def set_status(self, key_id: str, status: Any) -> tuple[ApiKey, int, str | None]:
        """Enable/disable; returns ``(key, updated_at, warning)``. Same status = no-op.

        Disabling the last usable admin key is allowed and answers a warning that points
        to the local emergency socket (02 §9.3, §20 #14).
        """
        wanted = check_status(status)
        async with self._lock:
            key = self.get(key_id)
            now = self._clock.now_ms()
            if key.status == wanted:
                return key, now, None
            key = attrs.evolve(key, status=wanted, version=key.version + 1)
            await self._write(key)
        warning = None
        if (
            wanted == STATUS_DISABLED
            and key.role == ROLE_ADMIN
            and not self.active_admin_count(now)
        ):
            warning = LAST_ADMIN_WARNING
        return key, now, warning

    async def rotate(self, key_id: str) -> tuple[ApiKey, str, int]:
        """New secret live at once; the previous one works until ``now + rotation_grace``.

        Returns ``(key, new_secret, old_secret_valid_until)``. Only one previous secret is
        kept: rotating during grace discards the older one. Grace 0 = the old secret dies now.
        """
        self.get(key_id)  # 404 before spending Argon2 time
        secret = generate_secret()
        secret_hash = await self._hasher.hash_secret(secret)
        async with self._lock:
            key = self.get(key_id)
            now = self._clock.now_ms()
            grace = self._settings.rotation_grace_ms
            valid_until = now + grace
            key = attrs.evolve(
                key,
                secret_hash=secret_hash,
                old_secret_hash=key.secret_hash if grace > 0 else None,
                grace_period_end=valid_until if grace > 0 else 0,
                version=key.version + 1,
            )
            await self._write(key)
        return key, secret, valid_until

    async def _write(self, key: ApiKey) -> None:
        try:
            await self._repo.put_key(key)
        finally:
            # After the write (or its failure): any verification that read the old record
            # has an older generation and cannot cache it.
            self._invalidate(key.key_id)

    # --- last_used (02 §2: asynchronous, throttled, off the request path) -------------------

    def note_used(self, key_id: str, now_ms: int) -> None:
        """Record a successful authentication; written later by :meth:`run`. Never blocks."""
        key = self._repo.get_key(key_id)
        if key is None or now_ms - key.last_used < self._settings.last_used_interval_ms:
            return
        if now_ms > self._used.get(key_id, 0):
            self._used[key_id] = now_ms
            self._used_event.set()

    async def flush_last_used(self) -> int:
        """Write pending ``last_used`` values now; returns how many keys were written."""
        pending, self._used = self._used, {}
        written = 0
        for key_id, used_at in pending.items():
            async with self._lock:
                key = self._repo.get_key(key_id)
                if key is None or used_at <= key.last_used:
                    continue
                try:
                    # Not an operator change: the auth cache is not invalidated.
                    await self._repo.put_key(
                        attrs.evolve(key, last_used=used_at, version=key.version + 1)
                    )
                    written += 1
                except TokMeshError as exc:
                    log.error("last_used update failed for %s: %s", key_id, exc.code)
        return written

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background writer for ``last_used``; start it in the server nursery."""
        task_status.started()
        while True:
            await self._used_event.wait()
            self._used_event = trio.Event()
            await trio.sleep(self._settings.last_used_flush_s)
            await self.flush_last_used()
