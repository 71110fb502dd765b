"""API-key authentication and authorization: the 02 §6.1 pipeline, shared by HTTP and RESP.

Front ends call, in this order (02 §6.1; admin and metrics variants inside
:meth:`Authenticator.authenticate`):

1. :meth:`Authenticator.parse_credentials` (none -> 401 ``TM-AUTH-4010``)
2. :meth:`Authenticator.authenticate` - format, cache, IP block, key state, allow-lists,
   Argon2id (plus the admin role / metrics role where the spec puts them earlier)
3. :meth:`Authenticator.check_rate` - per-key token bucket
4. :meth:`Authenticator.check_role` - permission of the route or command
5. :meth:`Authenticator.check_replay` - POST only

:meth:`Authenticator.authorize_http` runs the whole chain for one HTTP request. RESP runs
``authenticate(scope="redis")`` on AUTH, then per command ``recheck``, ``check_rate`` and
``check_role``.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
from collections.abc import Callable, Mapping
from typing import Any, Final, NoReturn

import attrs
import trio

from tokmesh.domain.apikey import (
    PERM_METRICS_READ,
    ROLE_ADMIN,
    ROLE_VALIDATOR,
    STATUS_ACTIVE,
    ApiKey,
    is_presentable_secret,
    role_allows,
)
from tokmesh.domain.argon2_hash import Argon2Params
from tokmesh.domain.clock import Clock
from tokmesh.domain.errors import E, ErrorCode, TokMeshError
from tokmesh.domain.grants import (
    Grant,
    credential_digest,
    grant_still_matches,
    hash_fingerprint,
)
from tokmesh.domain.ids import normalize_key_id
from tokmesh.domain.ip_rules import (
    Networks,
    ip_allowed,
    networks_or_deny,
    parse_networks,
    resolve_client_ip,
)
from tokmesh.services.auth_grants import CredentialCache
from tokmesh.services.auth_ratelimit import (
    BRUTE_FORCE_BLOCK_MS,
    BRUTE_FORCE_THRESHOLD,
    BruteForceGuard,
    RateLimiter,
)
from tokmesh.services.auth_replay import ReplayGuard
from tokmesh.services.keys import KeyRepository, KeySettings

log = logging.getLogger("tokmesh.auth")

SCOPE_BUSINESS: Final = "business"
SCOPE_ADMIN: Final = "admin"
SCOPE_METRICS: Final = "metrics"
SCOPE_REDIS: Final = "redis"
SCOPES: Final = frozenset({SCOPE_BUSINESS, SCOPE_ADMIN, SCOPE_METRICS, SCOPE_REDIS})

#: Failure reasons for ``tokmesh_auth_failures_total{reason}`` (04 §16.3).
REASON_INVALID_KEY: Final = "invalid_key"
REASON_EXPIRED: Final = "expired"
REASON_IP_BLOCKED: Final = "ip_blocked"

#: Key id of the decoy verified for unknown key ids (not a ULID, so never a real key's).
DECOY_KEY_ID: Final = "tmak-decoy"
#: An invalidation generation no key has: the cache never keeps a grant verified under it.
_NEVER_CACHED: Final = -1

CredentialReader = Callable[[Mapping[str, str]], tuple[str, str] | None]
"""Reads ``(key_id, secret)`` from HTTP auth headers; None when there are none."""

AuditHook = Callable[..., object]
"""``audit(action, **fields)``; must not block. Fields follow 02 §16 names."""


def _str_tuple(value: Any) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(slots=True)
class AuthSettings:
    """Every auth number of 02 §18, built by the composition root from the config.

    Durations are integer milliseconds. ``argon2_concurrency=None`` = CPU count.
    """

    allow_list: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    rotation_grace_ms: int = 3_600_000
    cache_capacity: int = 10_000
    cache_ttl_ms: int = 60_000
    argon2_memory_kib: int = 16384
    argon2_iterations: int = 2
    argon2_parallelism: int = 2
    argon2_concurrency: int | None = None
    anti_replay_required: bool = False
    timestamp_window_ms: int = 30_000
    nonce_ttl_ms: int = 60_000
    nonce_cache_size: int = 100_000
    trusted_proxies: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    metrics_auth_enabled: bool = True

    def argon2_params(self) -> Argon2Params:
        """Cost parameters for new hashes."""
        return Argon2Params(
            memory_kib=self.argon2_memory_kib,
            iterations=self.argon2_iterations,
            parallelism=self.argon2_parallelism,
        )

    def key_settings(self) -> KeySettings:
        """The :class:`KeySettings` for the KeyService (``last_used`` throttled to cache TTL)."""
        return KeySettings(
            rotation_grace_ms=self.rotation_grace_ms,
            last_used_interval_ms=self.cache_ttl_ms,
        )

    def startup_warnings(self) -> list[str]:
        """WARN lines the server should log at start (02 §6.1 metrics, §11)."""
        out: list[str] = []
        if self.nonce_ttl_ms < 2 * self.timestamp_window_ms:
            out.append(
                "security.anti_replay.nonce_ttl is shorter than 2 x timestamp_window: "
                "a captured request can be replayed after its nonce expires"
            )
        if not self.metrics_auth_enabled:
            out.append("telemetry.metrics.auth_enabled=false: /metrics is open to anyone")
        return out


@attrs.frozen(slots=True)
class Principal:
    """An authenticated key, attached to the request context / RESP connection."""

    key_id: str
    role: str
    rate_limit: int
    expires_at: int
    version: int
    client_ip: str
    matched_old: bool = False
    grace_period_end: int = 0
    fingerprint: bytes = attrs.field(default=b"", repr=False)


@attrs.frozen(slots=True)
class AuthHooks:
    """Optional metric callbacks (telemetry wires them; all default to no-ops)."""

    cache_hit: Callable[[], object] | None = None
    cache_miss: Callable[[], object] | None = None
    #: Called with ``invalid_key`` / ``expired`` / ``ip_blocked``.
    failure: Callable[[str], object] | None = None
    rate_limited: Callable[[], object] | None = None


def _split_credential(value: str) -> tuple[str, str]:
    key_id, sep, secret = value.partition(":")
    if not sep:
        return "", ""  # present but not a credential: malformed (counted, 02 §21 #4)
    return key_id.strip(), secret


def parse_credentials(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """``(key_id, secret)`` from HTTP headers (02 §4, 03 §2.6), or ``None`` if none present.

    First match wins: ``Authorization: Bearer id:secret`` (scheme case-insensitive), then
    ``X-API-Key: id:secret``, then the legacy pair ``X-API-Key-ID: id`` + ``X-API-Key:
    secret``. A present value that is not a credential yields ``("", "")`` so that the
    format check rejects it with ``TM-AUTH-4010`` and counts the failure. Header names are
    looked up in lower case.
    """
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, rest = auth.strip().partition(" ")
        if scheme.lower() == "bearer":
            return _split_credential(rest.strip())
    api_key = headers.get("x-api-key")
    if api_key is not None:
        api_key = api_key.strip()
        if ":" in api_key:
            return _split_credential(api_key)
        legacy_id = headers.get("x-api-key-id")
        if legacy_id is not None and legacy_id.strip():
            return legacy_id.strip(), api_key
        return "", ""
    return None


def retry_after(ms: int) -> str:
    """``Retry-After`` value: integer seconds, at least 1."""
    return str(max(1, math.ceil(ms / 1000)))


class Authenticator:
    """The authentication pipeline of one node (02 §6, §8, §10-§13)."""

    def __init__(
        self,
        settings: AuthSettings,
        keys: KeyRepository,
        cache: CredentialCache,
        clock: Clock,
        *,
        audit: AuditHook | None = None,
        hooks: AuthHooks | None = None,
        on_used: Callable[[str, int], object] | None = None,
    ) -> None:
        self.settings = settings
        self._keys = keys
        self._cache = cache
        self._clock = clock
        self._audit_hook = audit
        self._hooks = hooks or AuthHooks()
        self._on_used = on_used
        self._global: Networks = parse_networks(
            settings.allow_list, E.CFG_TYPE, "security.auth.allow_list"
        )
        self._trusted: Networks = parse_networks(
            settings.trusted_proxies, E.CFG_TYPE, "security.network.trusted_proxies"
        )
        # Cache hits reuse the Principal built for the same grant and client IP: it is
        # immutable and fully determined by both. Keyed by digest; an entry only matches
        # while the cache still returns the *same* Grant object, so invalidation,
        # rotation and TTL expiry (which all replace or drop the grant) are inherited.
        self._principals: dict[bytes, tuple[Grant, Principal]] = {}
        # Made on first need (one Argon2 hash), then shared; see _verify_decoy.
        self._decoy: ApiKey | None = None
        self._decoy_lock = trio.Lock()
        self.rates = RateLimiter()
        self.guard = BruteForceGuard()
        self.replay = ReplayGuard(
            window_ms=settings.timestamp_window_ms,
            nonce_ttl_ms=settings.nonce_ttl_ms,
            capacity=settings.nonce_cache_size,
            required=settings.anti_replay_required,
        )

    # --- transport ------------------------------------------------------------------------

    @staticmethod
    def parse_credentials(headers: Mapping[str, str]) -> tuple[str, str] | None:
        """See :func:`parse_credentials`."""
        return parse_credentials(headers)

    def resolve_client_ip(self, peer_ip: str, headers: Mapping[str, str]) -> str:
        """``client_ip`` per 02 §5 / R3 with the configured trusted proxies."""
        return resolve_client_ip(peer_ip, headers, self._trusted)

    @property
    def metrics_auth_required(self) -> bool:
        """``telemetry.metrics.auth_enabled``: whether ``/metrics`` needs a key."""
        return self.settings.metrics_auth_enabled

    # --- the pipeline -----------------------------------------------------------------------

    async def authenticate(
        self,
        key_id: str,
        secret: str,
        client_ip: str,
        scope: str,
        *,
        tcp_remote_ip: str | None = None,
    ) -> Principal:
        """Steps 2-7 of 02 §6.1 (plus the admin/metrics role checks where they belong).

        ``scope``: ``business`` and ``redis`` stop after step 7; ``admin`` runs 1-5, 7,
        then the admin role (``TM-ADMIN-4030``), then allow-lists (``TM-ADMIN-4031``);
        ``metrics`` runs 1-7 and the metrics role. Unknown, expired and wrong-secret keys
        all answer the same ``TM-AUTH-4011 invalid api key``.
        """
        now = self._clock.now_ms()
        kid, digest, principal = self._from_cache(
            key_id, secret, client_ip, scope, tcp_remote_ip, now
        )
        if principal is not None:
            return principal

        if self._hooks.cache_miss is not None:
            self._hooks.cache_miss()
        blocked_ms = self.guard.blocked_for_ms(client_ip, now)
        if blocked_ms:
            if self._hooks.failure is not None:
                self._hooks.failure(REASON_IP_BLOCKED)
            raise TokMeshError(
                E.SYS_RATE_LIMITED,
                "too many failed authentications from this address",
                headers={"Retry-After": retry_after(blocked_ms)},
            )
        # Read the generation before the store: a change after this point keeps the
        # verification below from caching a stale snapshot.
        generation = self._cache.generation(kid)
        key = self._keys.get_key(kid)
        if key is None or (key.status == STATUS_ACTIVE and key.is_expired(now)):
            # Both answer "invalid api key" like a wrong secret, which costs an Argon2
            # verify: spend the same time, or the answer's timing tells which key ids exist.
            await self._verify_decoy(secret, digest)
        if key is None:
            self._fail(E.AUTH_INVALID, None, kid, client_ip, tcp_remote_ip, scope, now)
        self._check_state(key.status, key.expires_at, kid, client_ip, tcp_remote_ip, scope, now)
        allowed = networks_or_deny(key.allowedlist)
        if scope != SCOPE_ADMIN:
            self._check_ip(client_ip, allowed, scope)
        grant = await self._cache.verify(key, secret, digest, generation)
        now = self._clock.now_ms()
        if grant is None:
            self._fail(E.AUTH_INVALID, None, kid, client_ip, tcp_remote_ip, scope, now)
        if self._on_used is not None:
            self._on_used(kid, now)
        principal = self._principal(grant, client_ip)
        self._post_checks(principal, grant.allowed, scope, ip_checked=scope != SCOPE_ADMIN)
        return principal

    def _from_cache(
        self,
        key_id: str,
        secret: str,
        client_ip: str,
        scope: str,
        tcp_remote_ip: str | None,
        now: int,
    ) -> tuple[str, bytes, Principal | None]:
        """Steps 2-7 answered from the validation cache: ``(key id, digest, principal)``.

        The principal is None on a cache miss, and then nothing has been counted or
        changed yet, so the caller may still take the slow path (Argon2) or hand the
        request to a task that can. Malformed credentials and a cached key that is
        disabled, expired or refused fail here as on the slow path.
        """
        if scope not in SCOPES:
            raise ValueError(f"unknown auth scope {scope!r}")
        kid = normalize_key_id(key_id) if key_id else None
        if kid is None or not is_presentable_secret(secret):
            self._fail(
                E.AUTH_MISSING, "malformed credentials", kid, client_ip, tcp_remote_ip, scope, now
            )
        digest = credential_digest(kid, secret)
        grant = self._cache.lookup(digest, now)
        if grant is None:
            return kid, digest, None
        if self._hooks.cache_hit is not None:
            self._hooks.cache_hit()
        # Step 5 on the cached snapshot: no store read, no IP-block check, no Argon2.
        self._check_state(grant.status, grant.expires_at, kid, client_ip, tcp_remote_ip, scope, now)
        principal = self._hit_principal(digest, grant, client_ip)
        self._post_checks(principal, grant.allowed, scope)
        return kid, digest, principal

    def check_rate(self, principal: Principal, now_ms: int | None = None) -> None:
        """Step 8: one token from the key's bucket or 429 ``TM-SYS-4290`` with rate headers."""
        now = self._clock.now_ms() if now_ms is None else now_ms
        try:
            self.rates.check(principal.key_id, principal.rate_limit, now)
        except TokMeshError:
            if self._hooks.rate_limited is not None:
                self._hooks.rate_limited()
            raise

    def take_rate(self, principal: Principal, n: int, now_ms: int | None = None) -> bool:
        """Take ``n`` tokens of the key's bucket at once, or none (then False, no hooks).

        For a run of identical pipelined reads answered by one evaluation: when the bucket
        cannot cover the whole run, the caller falls back to one :meth:`check_rate` per
        command, which gives exactly the sequential answers.
        """
        now = self._clock.now_ms() if now_ms is None else now_ms
        return not self.rates.take(principal.key_id, principal.rate_limit, now, n)

    def check_role(
        self, principal: Principal, permission: str, scope: str, command: str | None = None
    ) -> None:
        """Step 9: 403 ``TM-AUTH-4030`` (``TM-ADMIN-4030`` on admin scope) if not granted.

        ``command`` (RESP) gives the ``permission denied for command '<CMD>'`` message.
        """
        if role_allows(principal.role, permission):
            return
        if scope == SCOPE_ADMIN:
            raise TokMeshError(E.ADMIN_FORBIDDEN)
        if command is not None:
            raise TokMeshError(E.AUTH_FORBIDDEN, f"permission denied for command '{command}'")
        raise TokMeshError(E.AUTH_FORBIDDEN)

    def check_replay(
        self, key_id: str, method: str, headers: Mapping[str, str], now_ms: int | None = None
    ) -> None:
        """Step 10 (02 §11, R2): POST only; 401 4014 / 400 ARG-1001 / 401 4015."""
        now = self._clock.now_ms() if now_ms is None else now_ms
        self.replay.check(key_id, method, headers, now)

    async def authorize_http(
        self,
        method: str,
        headers: Mapping[str, str],
        client_ip: str,
        scope: str,
        permission: str | None = None,
        *,
        tcp_remote_ip: str | None = None,
        credentials: CredentialReader | None = None,
    ) -> Principal:
        """The whole chain for one HTTP request of ``scope`` (business/admin/metrics).

        ``permission`` is the route's permission (business routes; ignored for admin,
        whose role check is part of :meth:`authenticate`). ``/metrics`` skips rate limit
        and anti-replay. Raises :class:`TokMeshError`; for ``/metrics`` the front end
        renders 401/403 bare. ``credentials`` reads the key from ``headers`` where a
        route accepts more than :func:`parse_credentials` does (HTTP Basic for OAuth).
        """
        creds = (credentials or parse_credentials)(headers)
        if creds is None:
            raise TokMeshError(E.AUTH_MISSING)  # step 1: not counted for blocking
        principal = await self.authenticate(
            creds[0], creds[1], client_ip, scope, tcp_remote_ip=tcp_remote_ip
        )
        return self._authorize(principal, method, headers, scope, permission)

    def authorize_http_now(
        self,
        method: str,
        headers: Mapping[str, str],
        client_ip: str,
        scope: str,
        permission: str | None = None,
        *,
        tcp_remote_ip: str | None = None,
        credentials: CredentialReader | None = None,
    ) -> Principal | None:
        """:meth:`authorize_http` without waiting: None when the key is not cached.

        A cache hit runs exactly the checks of :meth:`authorize_http` (and raises the
        same errors); a miss returns None before counting or changing anything, so the
        caller then runs :meth:`authorize_http` (Argon2 in a worker thread) instead.
        """
        creds = (credentials or parse_credentials)(headers)
        if creds is None:
            raise TokMeshError(E.AUTH_MISSING)
        now = self._clock.now_ms()  # one reading for the whole chain of this request
        _, _, principal = self._from_cache(creds[0], creds[1], client_ip, scope, tcp_remote_ip, now)
        if principal is None:
            return None
        return self._authorize(principal, method, headers, scope, permission, now)

    def _authorize(
        self,
        principal: Principal,
        method: str,
        headers: Mapping[str, str],
        scope: str,
        permission: str | None,
        now_ms: int | None = None,
    ) -> Principal:
        """Steps 8-10 after authentication: rate limit, role, anti-replay (at ``now_ms``,
        the caller's reading when it has one)."""
        if scope == SCOPE_METRICS:
            return principal
        self.check_rate(principal, now_ms)
        if permission is not None and scope != SCOPE_ADMIN:
            self.check_role(principal, permission, scope)
        self.check_replay(principal.key_id, method, headers, now_ms)
        return principal

    def recheck(self, principal: Principal, now_ms: int | None = None) -> Principal:
        """Cheap per-command re-validation for RESP (03 §5.2 step 3).

        A disabled (``TM-AUTH-4012``), expired, deleted, rotated-away or out-of-grace key
        (``TM-AUTH-4011``) loses access at once. Returns the principal to keep using (a
        fresh one when the key record changed, e.g. a new ``rate_limit``). ``now_ms``: the
        caller's clock reading, when it has one for the whole read.
        """
        now = self._clock.now_ms() if now_ms is None else now_ms
        key = self._keys.get_key(principal.key_id)
        if key is None:
            raise TokMeshError(E.AUTH_INVALID)
        if key.status != STATUS_ACTIVE:
            raise TokMeshError(E.AUTH_DISABLED)
        if key.is_expired(now):
            raise TokMeshError(E.AUTH_INVALID)
        if principal.matched_old and now >= principal.grace_period_end:
            raise TokMeshError(E.AUTH_INVALID)
        if key.version == principal.version:
            return principal
        if not grant_still_matches(key, principal.fingerprint, now):
            raise TokMeshError(E.AUTH_INVALID)
        if not ip_allowed(principal.client_ip, self._global, networks_or_deny(key.allowedlist)):
            raise TokMeshError(E.AUTH_IP_DENIED)
        matched_old = not hmac.compare_digest(
            principal.fingerprint, hash_fingerprint(key.secret_hash)
        )
        return Principal(
            key_id=key.key_id,
            role=key.role,
            rate_limit=key.rate_limit,
            expires_at=key.expires_at,
            version=key.version,
            client_ip=principal.client_ip,
            matched_old=matched_old,
            grace_period_end=key.grace_period_end if matched_old else 0,
            fingerprint=principal.fingerprint,
        )

    # --- internals ------------------------------------------------------------------------

    async def _verify_decoy(self, secret: str, digest: bytes) -> None:
        """Run the Argon2 verify a wrong secret costs, against a hash nothing matches.

        The decoy hash is made by the cache like a new key's (the configured Argon2
        parameters, in a worker thread, under the same concurrency limit) from a random
        secret that is thrown away. Its verify goes through the cache's own path, under
        a generation that is never current, so a grant for it is never kept.
        """
        decoy = self._decoy
        if decoy is None:
            async with self._decoy_lock:
                decoy = self._decoy
                if decoy is None:
                    phc = await self._cache.hash_secret(secrets.token_urlsafe(32))
                    decoy = ApiKey(key_id=DECOY_KEY_ID, secret_hash=phc, role=ROLE_VALIDATOR)
                    self._decoy = decoy
        await self._cache.verify(decoy, secret, digest, _NEVER_CACHED)

    def _hit_principal(self, digest: bytes, grant: Grant, client_ip: str) -> Principal:
        """The Principal for a cache hit: memoised per (digest, grant, client_ip)."""
        memo = self._principals.get(digest)
        if memo is not None and memo[0] is grant and memo[1].client_ip == client_ip:
            return memo[1]
        principal = self._principal(grant, client_ip)
        memos = self._principals
        if len(memos) >= max(self.settings.cache_capacity, 1) and digest not in memos:
            memos.clear()  # bounded like the cache itself; rebuilt on the next hits
        memos[digest] = (grant, principal)
        return principal

    @staticmethod
    def _principal(grant: Grant, client_ip: str) -> Principal:
        return Principal(
            key_id=grant.key_id,
            role=grant.role,
            rate_limit=grant.rate_limit,
            expires_at=grant.expires_at,
            version=grant.version,
            client_ip=client_ip,
            matched_old=grant.matched_old,
            grace_period_end=grant.grace_period_end if grant.matched_old else 0,
            fingerprint=grant.fingerprint,
        )

    def _check_state(
        self,
        status: str,
        expires_at: int,
        kid: str,
        client_ip: str,
        tcp_remote_ip: str | None,
        scope: str,
        now: int,
    ) -> None:
        # R5: status before expiry, so a disabled and expired key answers 4012.
        if status != STATUS_ACTIVE:
            self._fail(E.AUTH_DISABLED, None, kid, client_ip, tcp_remote_ip, scope, now)
        if expires_at != 0 and now > expires_at:
            self._fail(
                E.AUTH_INVALID, None, kid, client_ip, tcp_remote_ip, scope, now, REASON_EXPIRED
            )

    def _check_ip(self, client_ip: str, allowed: Networks | None, scope: str) -> None:
        if not ip_allowed(client_ip, self._global, allowed):
            raise TokMeshError(E.ADMIN_IP_DENIED if scope == SCOPE_ADMIN else E.AUTH_IP_DENIED)

    def _post_checks(
        self, principal: Principal, allowed: Networks | None, scope: str, ip_checked: bool = False
    ) -> None:
        if scope == SCOPE_ADMIN:
            # DS-0302 chain: admin role before the network ACL (02 §6.1, §20 #23).
            if principal.role != ROLE_ADMIN:
                raise TokMeshError(E.ADMIN_FORBIDDEN)
            self._check_ip(principal.client_ip, allowed, scope)
            return
        if not ip_checked:
            self._check_ip(principal.client_ip, allowed, scope)
        if scope == SCOPE_METRICS and not role_allows(principal.role, PERM_METRICS_READ):
            raise TokMeshError(E.AUTH_FORBIDDEN)

    def _fail(
        self,
        error: ErrorCode,
        message: str | None,
        kid: str | None,
        client_ip: str,
        tcp_remote_ip: str | None,
        scope: str,
        now: int,
        reason: str = REASON_INVALID_KEY,
    ) -> NoReturn:
        """Raise a counted authentication failure (02 §6.1 "counts for §12.1": yes)."""
        if self._hooks.failure is not None:
            self._hooks.failure(reason)
        outcome = self.guard.record_failure(client_ip, now)
        if outcome is not None:  # failures inside a block are neither counted nor audited
            self._audit(
                "AUTH_FAILED",
                operator_id=kid,
                ip_address=client_ip,
                tcp_remote_ip=tcp_remote_ip or client_ip,
                result="FAILURE",
                details={"reason": error.code, "scope": scope},
            )
            if outcome:
                log.warning(
                    "client ip blocked after repeated authentication failures",
                    extra={"client_ip": client_ip, "block_seconds": BRUTE_FORCE_BLOCK_MS // 1000},
                )
                self._audit(
                    "AUTH_IP_BLOCKED",
                    operator_id=kid,
                    ip_address=client_ip,
                    tcp_remote_ip=tcp_remote_ip or client_ip,
                    result="FAILURE",
                    details={
                        "failures": BRUTE_FORCE_THRESHOLD,
                        "block_seconds": BRUTE_FORCE_BLOCK_MS // 1000,
                    },
                )
        raise TokMeshError(error, message)

    def _audit(self, action: str, **fields: Any) -> None:
        if self._audit_hook is None:
            return
        try:
            self._audit_hook(action, **fields)
        except Exception:  # audit never changes the response (02 §16)
            log.exception("audit hook failed for %s", action)
