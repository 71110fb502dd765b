"""The local implementation of :class:`~tokmesh.services.session_ops.SessionOperations`.

:class:`SessionService` runs each session operation on this node: field rules live here
once; the store actors enforce the rules that need current state
(quota, uniqueness, version, existence). Read paths (:meth:`SessionService.get`,
:meth:`SessionService.validate`, :meth:`SessionService.list_sessions`) are synchronous and
read the committed state inline: a validation costs a SHA-256 and two dict lookups.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Callable, Iterable
from typing import Any

from tokmesh.actors import messages as m
from tokmesh.actors.engine import StorageEngine
from tokmesh.actors.reply import Callback, Reply
from tokmesh.actors.session_store import SessionStore
from tokmesh.actors.sweeper import purge_due
from tokmesh.domain.clock import SYSTEM_CLOCK, Clock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.ids import new_session_id, new_session_id_in_shard, normalize_session_id
from tokmesh.domain.session import (
    BATCH_REVOKE_LIMIT,
    PUBLIC_FIELDS,
    Session,
    check_data,
    check_device_id,
    check_user_id,
    clean_ip,
    clean_user_agent,
)
from tokmesh.domain.session_settings import SessionSettings as SessionSettings
from tokmesh.domain.shards import shard_of
from tokmesh.domain.tokens import generate_token, is_valid_token, token_digest, token_shard

# The interface's types, also importable from here as before they moved there.
from tokmesh.services.session_ops import CreateResult as CreateResult
from tokmesh.services.session_ops import ListQuery as ListQuery
from tokmesh.services.session_ops import ListResult as ListResult
from tokmesh.services.session_ops import RequestContext as RequestContext
from tokmesh.services.session_ops import TokenScan
from tokmesh.telemetry import metrics

log = logging.getLogger("tokmesh.sessions")

_VALIDATE_VALID = metrics.TOKEN_VALIDATE_VALID
_VALIDATE_INVALID = metrics.TOKEN_VALIDATE_INVALID
_VALIDATE_ERROR = metrics.TOKEN_VALIDATE_ERROR

#: A session that is absent or expired (both count as absent for Redis ``SET``).
_GONE = (E.SESS_NOT_FOUND, E.SESS_EXPIRED)
_NO_ROTATION = "token rotation via SET not supported, recreate session instead"

_sha_digest = token_digest
_sha256 = hashlib.sha256

#: Durations in ms (ttl, idle timeout) shared between records, see :func:`_shared_ms`.
_SHARED_MS: dict[int, int] = {}
SHARED_MS_MAX = 1024


def _shared_ms(value: int) -> int:
    """One int object for every record with the same ttl / idle timeout.

    ``ttl_seconds * 1000`` is a new 28-byte int on every request, kept by the record for
    its whole life, while a deployment uses a handful of distinct durations (~28 MB per
    million sessions). Ints are immutable, so sharing them changes nothing else; the
    first :data:`SHARED_MS_MAX` distinct values are remembered, later ones kept as they are.
    """
    shared = _SHARED_MS.get(value)
    if shared is not None:
        return shared
    if len(_SHARED_MS) < SHARED_MS_MAX:
        _SHARED_MS[value] = value
    return value


class SessionService:
    """Create, read, validate, touch, renew, update, put, revoke and list sessions here.

    Implements :class:`~tokmesh.services.session_ops.SessionOperations` over this node's
    store actors (mutations) and committed state (reads).
    """

    def __init__(
        self,
        store: SessionStore,
        settings: SessionSettings | None = None,
        clock: Clock = SYSTEM_CLOCK,
        *,
        cluster: bool = False,
    ) -> None:
        self.store = store
        self.state = store.state
        self.settings = settings or SessionSettings()
        self.clock = clock
        #: Place new sessions for a cluster (ids in the user's shard, tokens that name it).
        self.cluster = cluster

    # -- ttl rules --------------------------------------------------------------------------

    def _ttl_ms(self, ttl_seconds: int | None, *, required: bool = False) -> int:
        """01 §4.1/§4.6: absent/0 → default (create), < 0 → ARG-1001, > max → SESS-4001."""
        if ttl_seconds is None or (ttl_seconds == 0 and not required):
            if required:
                raise TokMeshError(E.ARG_MISSING, "ttl_seconds is required")
            return self.settings.ttl_default_ms
        if ttl_seconds <= 0:
            raise TokMeshError(E.ARG_INVALID, "ttl_seconds must be positive")
        ttl_ms = ttl_seconds * 1000
        if ttl_ms > self.settings.ttl_max_ms:
            raise TokMeshError(
                E.SESS_INVALID,
                "ttl_seconds exceeds session.ttl.max",
                {"max_ttl_seconds": self.settings.ttl_max_ms // 1000},
            )
        return _shared_ms(ttl_ms)

    # -- create -----------------------------------------------------------------------------

    async def create(
        self,
        ctx: RequestContext,
        user_id: str | None,
        *,
        device_id: str | None = None,
        data: dict[str, str] | None = None,
        ttl_seconds: int | None = None,
        token: str | None = None,
        idle_timeout_seconds: int | None = None,
        session_id: str | None = None,
        require_token: bool = False,
    ) -> CreateResult:
        """Create a session (01 §4.1); ``session_id`` set = Redis create paths (01 §4.2)."""
        session, token = self._new_session(
            ctx,
            user_id,
            device_id=device_id,
            data=data,
            ttl_seconds=ttl_seconds,
            token=token,
            idle_timeout_seconds=idle_timeout_seconds,
            session_id=session_id,
            require_token=require_token,
        )
        reply: Reply[Session] = Reply()
        msg = self._create_message(session, session_id is not None, reply)
        created: Session = await self.store.call(session.user_id, msg)
        return CreateResult(created, token)

    def create_now(
        self,
        ctx: RequestContext,
        user_id: str | None,
        then: Callable[[CreateResult], None],
        failed: Callable[[BaseException], None],
        *,
        device_id: str | None = None,
        data: dict[str, str] | None = None,
        ttl_seconds: int | None = None,
        token: str | None = None,
        idle_timeout_seconds: int | None = None,
        session_id: str | None = None,
    ) -> bool:
        """:meth:`create` answered through ``then`` / ``failed`` (see SessionOperations)."""
        session, plain = self._new_session(
            ctx,
            user_id,
            device_id=device_id,
            data=data,
            ttl_seconds=ttl_seconds,
            token=token,
            idle_timeout_seconds=idle_timeout_seconds,
            session_id=session_id,
        )
        reply: Callback[Session] = Callback(lambda s: then(CreateResult(s, plain)), failed)
        msg = self._create_message(session, session_id is not None, reply)
        return self.store.submit(session.user_id, msg)

    def _create_message(self, session: Session, exclusive: bool, reply: Reply[Session]) -> m.Create:
        return m.Create(
            session=session,
            max_per_user=self.settings.max_per_user,
            evict_oldest=self.settings.quota_policy == "evict_oldest",
            exclusive_id=exclusive,
            reply=reply,
        )

    def _new_session(
        self,
        ctx: RequestContext,
        user_id: str | None,
        *,
        device_id: str | None,
        data: dict[str, str] | None,
        ttl_seconds: int | None,
        token: str | None,
        idle_timeout_seconds: int | None,
        session_id: str | None = None,
        require_token: bool = False,
    ) -> tuple[Session, str]:
        """The checked new session and its plaintext token (nothing stored yet)."""
        chosen = None
        if session_id is not None:
            chosen = normalize_session_id(session_id)
            if chosen is None:
                raise TokMeshError(E.ARG_INVALID, "invalid session id")
        if require_token and not token:
            raise TokMeshError(E.ARG_MISSING, "token is required")
        user_id = check_user_id(user_id)
        if chosen is not None:
            sid = chosen
        elif self.cluster:
            # In a cluster every session of a user lives in the user's shard (one node
            # counts the quota and serves by-user calls); standalone, any id will do.
            sid = new_session_id_in_shard(shard_of(user_id))
        else:
            sid = new_session_id()
        device_id = check_device_id(device_id)
        data = check_data(data)
        ttl_ms = self._ttl_ms(ttl_seconds)
        idle_ms = 0
        if idle_timeout_seconds:
            if idle_timeout_seconds < 0:
                raise TokMeshError(E.ARG_INVALID, "idle_timeout_seconds must be positive")
            idle_ms = _shared_ms(idle_timeout_seconds * 1000)
        if token is not None and token != "":
            if not is_valid_token(token):
                raise TokMeshError(E.TOKN_MALFORMED)
        else:
            # A token the cluster issues names its session's shard in its first byte, so
            # any node sends its validation straight to the owner.
            token = generate_token(shard_of(sid)) if self.cluster else generate_token()
        now = self.clock.now_ms()
        ip = clean_ip(ctx.client_ip)
        ua = clean_user_agent(ctx.user_agent)
        session = Session(
            id=sid,
            user_id=user_id,
            token_hash=_sha_digest(token),
            ip_address=ip,
            user_agent=ua,
            last_access_ip=ip,
            last_access_ua=ua,
            device_id=device_id,
            created_by=ctx.key_id,
            created_at=now,
            expires_at=now + ttl_ms,
            last_active=now,
            data=data,
            version=1,
            ttl=ttl_ms,
            idle_timeout=idle_ms,
            # Where this token's validations are sent: its session's shard for a token
            # issued here, any shard for one the client chose (that shard's owner keeps
            # a route to the session). 0 on a standalone node.
            shard_id=token_shard(token) if self.cluster else 0,
        )
        return session, token

    # -- reads ------------------------------------------------------------------------------

    def get(self, session_id: str) -> Session:
        """Pure read (01 §4.3): 4040 absent/invalid/revoked, 4041 expired."""
        sid = normalize_session_id(session_id)
        s = self.state.sessions.get(sid) if sid is not None else None
        if s is None or s.is_deleted:
            if s is None and sid is not None and sid in self.state.expired_ids:
                raise TokMeshError(E.SESS_EXPIRED)
            raise TokMeshError(E.SESS_NOT_FOUND)
        if s.is_expired(self.clock.now_ms()):
            raise TokMeshError(E.SESS_EXPIRED)
        return s

    def find_by_token(self, token: str) -> Session:
        """The session a token belongs to, with the token errors of 01 §4.4 steps 1-3."""
        state = self.state
        # Look the digest up first: every indexed token passed the strict format check
        # when it was stored, so a hit needs no second check and the format check (a
        # regex) runs only to classify a miss as malformed or unknown.
        try:
            digest: bytes | None = _sha256(token.encode("ascii")).digest()
        except UnicodeEncodeError:
            digest = None
        sid = state.by_token.get(digest) if digest is not None else None
        if sid is None:
            if not token:
                raise TokMeshError(E.ARG_MISSING, "token is required")
            if digest is None or not is_valid_token(token):
                raise TokMeshError(E.TOKN_MALFORMED)
            if digest in state.expired_tokens:
                raise TokMeshError(E.TOKN_EXPIRED)
            raise TokMeshError(E.TOKN_INVALID)
        s = state.sessions.get(sid)
        if s is None:
            # An index entry pointing at nothing is an orphan (01 §4.4 step 2).
            state.by_token.pop(digest, None)  # type: ignore[arg-type]
            raise TokMeshError(E.TOKN_INVALID)
        if s.is_deleted:
            raise TokMeshError(E.TOKN_REVOKED)
        if s.is_expired(self.clock.now_ms()):
            raise TokMeshError(E.TOKN_EXPIRED)
        return s

    def validate(self, token: str, count: int = 1) -> Session:
        """Validate without touch: no mutation, microseconds, no await.

        ``count`` > 1: the answer stands for that many identical validations made at the
        same instant (a RESP pipeline run); the result counters move by ``count``.
        """
        try:
            s = self.find_by_token(token)
        except TokMeshError as err:
            # valid / invalid (token errors) / error (malformed request)
            if err.error.code.startswith("TM-TOKN-40") and err.error is not E.TOKN_MALFORMED:
                _VALIDATE_INVALID.value += count
            else:
                _VALIDATE_ERROR.value += count
            raise
        _VALIDATE_VALID.value += count
        return s

    def validate_scan(self, scan: TokenScan) -> int:
        """Run a compiled validation loop over the live index (see SessionOperations)."""
        state = self.state
        valid = scan(state.by_token.segments, state.sessions.segments, self.clock.now_ms())
        _VALIDATE_VALID.value += valid
        return valid

    async def validate_touch(self, ctx: RequestContext, token: str) -> Session:
        """Validate with touch (01 §4.4 step 4): best effort, returns the post-touch session."""
        s = self.validate(token)
        reply: Reply[Session] = Reply()
        msg = m.Touch(
            sid=s.id,
            now_ms=self.clock.now_ms(),
            min_interval_ms=self.settings.touch_min_interval_ms,
            ip=clean_ip(ctx.client_ip),
            ua=clean_user_agent(ctx.user_agent),
            reply=reply,
            by=ctx.key_id,
        )
        try:
            touched: Session = await self.store.call(s.user_id, msg)
        except TokMeshError as err:
            if err.error in (E.SYS_STORAGE, E.SYS_UNAVAILABLE):
                log.warning("validate touch not persisted: %s", err.code)
                return s
            raise
        return touched

    # -- mutations by id ----------------------------------------------------------------------

    def _owner(self, session_id: str, *, missing_ok: bool = False) -> tuple[str, Session | None]:
        sid = normalize_session_id(session_id)
        s = self.state.sessions.get(sid) if sid is not None else None
        if s is None and not missing_ok:
            if sid is not None and sid in self.state.expired_ids:
                raise TokMeshError(E.SESS_EXPIRED)
            raise TokMeshError(E.SESS_NOT_FOUND)
        return sid or session_id, s

    async def touch(self, ctx: RequestContext, session_id: str) -> Session:
        """Touch (01 §4.5): only ``last_active`` moves, monotonic, version +1 if changed."""
        sid, s = self._owner(session_id)
        assert s is not None
        reply: Reply[Session] = Reply()
        msg = m.Touch(
            sid=sid,
            now_ms=self.clock.now_ms(),
            min_interval_ms=self.settings.touch_min_interval_ms,
            ip=None,
            ua=None,
            reply=reply,
            by=ctx.key_id,
        )
        result: Session = await self.store.call(s.user_id, msg)
        return result

    async def renew(
        self,
        ctx: RequestContext,
        session_id: str,
        ttl_seconds: int | None,
        expected_version: int | None = None,
    ) -> Session:
        """Renew (01 §4.6): ``expires_at = now + ttl``; 4091 on a stale expected version."""
        reply: Reply[Session] = Reply()
        user_id, msg = self._renew_message(ctx, session_id, ttl_seconds, expected_version, reply)
        result: Session = await self.store.call(user_id, msg)
        return result

    def renew_now(
        self,
        ctx: RequestContext,
        session_id: str,
        ttl_seconds: int | None,
        expected_version: int | None,
        then: Callable[[Session], None],
        failed: Callable[[BaseException], None],
    ) -> bool:
        """:meth:`renew` answered through ``then`` / ``failed`` (see SessionOperations)."""
        reply: Callback[Session] = Callback(then, failed)
        user_id, msg = self._renew_message(ctx, session_id, ttl_seconds, expected_version, reply)
        return self.store.submit(user_id, msg)

    def _renew_message(
        self,
        ctx: RequestContext,
        session_id: str,
        ttl_seconds: int | None,
        expected_version: int | None,
        reply: Reply[Session],
    ) -> tuple[str, m.Renew]:
        ttl_ms = self._ttl_ms(ttl_seconds, required=True)
        sid, s = self._owner(session_id)
        assert s is not None
        msg = m.Renew(
            sid=sid,
            now_ms=self.clock.now_ms(),
            ttl_ms=ttl_ms,
            expected_version=expected_version,
            reply=reply,
            by=ctx.key_id,
        )
        return s.user_id, msg

    async def update(
        self,
        ctx: RequestContext,
        session_id: str,
        *,
        user_id: str | None = None,
        device_id: str | None = None,
        data: dict[str, str] | None = None,
        ttl_seconds: int | None = None,
        expected_version: int | None = None,
    ) -> Session:
        """Redis ``SET`` on an existing key (01 §4.7)."""
        device_id = check_device_id(device_id) if device_id else None
        if data is not None:
            data = check_data(data) or {}
        ttl_ms = 0
        if ttl_seconds:
            ttl_ms = self._ttl_ms(ttl_seconds, required=True)
        sid, s = self._owner(session_id)
        assert s is not None
        reply: Reply[Session] = Reply()
        msg = m.Update(
            sid=sid,
            now_ms=self.clock.now_ms(),
            user_id=user_id,
            device_id=device_id,
            data=data,
            ttl_ms=ttl_ms,
            expected_version=expected_version,
            reply=reply,
            by=ctx.key_id,
        )
        result: Session = await self.store.call(s.user_id, msg)
        return result

    async def put(
        self,
        ctx: RequestContext,
        session_id: str,
        *,
        user_id: str | None = None,
        token: str | None = None,
        device_id: str | None = None,
        data: dict[str, str] | None = None,
        ttl_seconds: int | None = None,
    ) -> bool:
        """Redis ``SET``: update a live session, else create it; True when created.

        An expired session counts as absent, also when it expires (or is revoked)
        between the read here and the update: then it is created afresh.
        """
        try:
            current: Session | None = self.get(session_id)
        except TokMeshError as exc:
            if exc.error not in _GONE:
                raise
            current = None
        if current is not None:
            if token is not None:
                raise TokMeshError(E.ARG_INVALID, _NO_ROTATION)
            if user_id is not None and user_id != current.user_id:
                raise TokMeshError(E.ARG_INVALID, "user_id cannot be changed")
            try:
                await self.update(
                    ctx,
                    session_id,
                    user_id=user_id,
                    device_id=device_id,
                    data=data,
                    ttl_seconds=ttl_seconds,
                )
                return False
            except TokMeshError as exc:
                if exc.error not in _GONE:
                    raise
        if not token:
            raise TokMeshError(
                E.ARG_MISSING, "token is required when creating new session with SET"
            )
        await self.create(
            ctx,
            user_id,
            device_id=device_id,
            data=data,
            ttl_seconds=ttl_seconds,
            token=token,
            session_id=session_id,
            require_token=True,
        )
        return True

    async def revoke(self, ctx: RequestContext, session_id: str, *, sync: bool = False) -> bool:
        """Revoke (01 §4.8): idempotent; True when a tombstone was written.

        ``sync`` changes nothing on one node: the reply follows the commit, after which
        no request here accepts the session."""
        sid, s = self._owner(session_id, missing_ok=True)
        if s is None:
            return False
        reply: Reply[bool] = Reply()
        done: bool = await self.store.call(
            s.user_id, m.Revoke(sid=sid, now_ms=self.clock.now_ms(), reply=reply, by=ctx.key_id)
        )
        return done

    def revoke_now(
        self,
        ctx: RequestContext,
        session_id: str,
        then: Callable[[bool], None],
        failed: Callable[[BaseException], None],
    ) -> bool:
        """:meth:`revoke` answered through ``then`` / ``failed`` (see SessionOperations)."""
        sid, s = self._owner(session_id, missing_ok=True)
        if s is None:
            then(False)
            return True
        msg = m.Revoke(
            sid=sid, now_ms=self.clock.now_ms(), reply=Callback(then, failed), by=ctx.key_id
        )
        return self.store.submit(s.user_id, msg)

    async def revoke_user(
        self,
        ctx: RequestContext,
        user_id: str,
        except_session_id: str | None = None,
        *,
        sync: bool = False,
    ) -> int:
        """Revoke every live session of a user (≤ 1000, else 4002 and nothing revoked)."""
        if not user_id:
            raise TokMeshError(E.ARG_MISSING, "user_id is required")
        except_sid = None
        if except_session_id:
            except_sid = normalize_session_id(except_session_id)
            if except_sid is None:
                raise TokMeshError(E.ARG_INVALID, "invalid except_session_id")
        reply: Reply[int] = Reply()
        msg = m.RevokeUser(
            user_id=user_id,
            now_ms=self.clock.now_ms(),
            except_sid=except_sid,
            limit=BATCH_REVOKE_LIMIT,
            reply=reply,
            by=ctx.key_id,
        )
        count: int = await self.store.call(user_id, msg)
        return count

    # -- list / gc ---------------------------------------------------------------------------

    def list_sessions(self, q: ListQuery) -> ListResult:
        """Filter, sort and page sessions (01 §4.10); index candidates first, scan last."""
        if q.page < 1 or q.size < 1 or q.size > 100:
            raise TokMeshError(E.ARG_INVALID, "invalid paging", {"max_size": 100})
        if q.sort_by not in ("created_at", "last_active"):
            raise TokMeshError(E.ARG_INVALID, "sort_by must be created_at or last_active")
        if q.sort_order not in ("asc", "desc"):
            raise TokMeshError(E.ARG_INVALID, "sort_order must be asc or desc")
        if q.status not in ("active", "expired"):
            raise TokMeshError(E.ARG_INVALID, "status must be active or expired")
        net = None
        if q.ip_address:
            try:
                net = ipaddress.ip_network(q.ip_address, strict=False)
            except ValueError:
                raise TokMeshError(E.ARG_INVALID, "invalid ip_address filter") from None
        state = self.state
        now = self.clock.now_ms()
        candidates: Iterable[str] | None = None
        if q.user_id is not None:
            candidates = state.by_user.get(q.user_id)
        if q.device_id is not None:
            dev = state.by_device.get(q.device_id)
            candidates = dev if candidates is None else set(candidates).intersection(dev)
        if candidates is None:
            if q.key_id is not None or net is not None:
                log.warning("session list without user_id/device_id: full scan")
            pool: Iterable[Session] = state.sessions.values()
        else:
            pool = (state.sessions[sid] for sid in candidates if sid in state.sessions)
        want_expired = q.status == "expired"
        foreign = state.foreign
        out: list[Session] = []
        for s in pool:
            if s.is_deleted or s.is_expired(now) != want_expired:
                continue
            if foreign is not None and foreign(s.id):
                continue
            if q.user_id is not None and s.user_id != q.user_id:
                continue
            if q.device_id is not None and s.device_id != q.device_id:
                continue
            if q.key_id is not None and s.created_by != q.key_id:
                continue
            if q.created_after is not None and s.created_at < q.created_after:
                continue
            if q.created_before is not None and s.created_at >= q.created_before:
                continue
            if q.active_after is not None and s.last_active < q.active_after:
                continue
            if net is not None and not _ip_in(s.last_access_ip or s.ip_address, net):
                continue
            out.append(s)
        key = q.sort_by
        out.sort(key=lambda s: (getattr(s, key), s.id), reverse=q.sort_order == "desc")
        start = (q.page - 1) * q.size
        return ListResult(out[start : start + q.size], len(out), q.page, q.size)

    async def gc(self) -> int:
        """Purge every expired session and expired tombstone now (01 §4.11), in the
        sweeper's bounded passes, so a large purge does not hold the event loop."""
        return await purge_due(self.store, self.clock)


def _ip_in(text: str, net: Any) -> bool:
    try:
        return ipaddress.ip_address(text) in net
    except ValueError:
        return False


def trim_fields(
    public: dict[str, Any], fields: str | None, mandatory: Iterable[str]
) -> dict[str, Any]:
    """Field trimming of 03 §2.5: unknown names → ``TM-ARG-1001``; mandatory fields kept."""
    if not fields:
        return public
    names = [f.strip() for f in fields.split(",") if f.strip()]
    if not names:
        return public
    for name in names:
        if name not in PUBLIC_FIELDS:
            raise TokMeshError(E.ARG_INVALID, f"unknown field {name!r}")
    keep = set(names) | set(mandatory)
    return {k: v for k, v in public.items() if k in keep}


def local_sessions(engine: StorageEngine) -> SessionService:
    """The local session operations over a started ``engine`` (its store, clock and
    ``session.*`` settings); ``TM-SYS-5030`` before the engine has opened its store."""
    store = engine.store
    if store is None:
        raise TokMeshError(E.SYS_UNAVAILABLE, "service not ready")
    return SessionService(store, engine.settings.sessions, engine.clock)
