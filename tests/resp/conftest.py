"""Fixtures for the RESP tests.

* :class:`FakeBackend`: a small dict-backed ``RespBackend`` for the protocol-layer tests
  (codec, handler, fuzzing, flood). It is a test fixture for the transport, not a model
  of the session rules; command semantics are tested against the real services.
* ``real_stack``: the real storage engine (WAL on disk), AuthCache, KeyService and
  Authenticator behind :class:`tokmesh.resp.backend.ServiceBackend`, served on a real
  127.0.0.1 socket, so commands run the same service functions as HTTP.
* :func:`in_thread`: run the blocking ``redis`` client in a worker thread (redis.asyncio
  does not run on Trio).
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import redis
import trio

from tokmesh import accel
from tokmesh.actors.auth_cache import AuthCache
from tokmesh.actors.engine import EngineSettings, StorageEngine
from tokmesh.actors.wal_writer import WalSettings
from tokmesh.domain.argon2_hash import Argon2Params
from tokmesh.domain.clock import SYSTEM_CLOCK, Clock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.ids import normalize_session_id
from tokmesh.domain.session import Session
from tokmesh.domain.tokens import generate_token, is_valid_token, token_digest
from tokmesh.resp.backend import ServiceBackend, SortedIdScanner
from tokmesh.resp.commands import Dispatcher
from tokmesh.resp.connection import RespStats
from tokmesh.resp.deps import NodeFacts
from tokmesh.resp.limits import RespLimits
from tokmesh.resp.listener import serve_resp
from tokmesh.services.auth import Authenticator, AuthSettings
from tokmesh.services.keys import KeyService
from tokmesh.services.sessions import (
    CreateResult,
    RequestContext,
    SessionSettings,
    local_sessions,
)

T = TypeVar("T")

KEY_ISSUER = "tmak-01jf8xzm7e3xqh5p8n4r6s2w0a"
KEY_VALIDATOR = "tmak-01jf8xzm7e3xqh5p8n4r6s2w0b"
KEY_METRICS = "tmak-01jf8xzm7e3xqh5p8n4r6s2w0c"
SECRET = "tmas_" + "A" * 43


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call (the redis client) in a worker thread."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


# -- fake backend (protocol-layer fixture) ----------------------------------------------------


@attrs.frozen
class FakePrincipal:
    key_id: str
    role: str


@attrs.define
class FakeKey:
    secret: str
    role: str
    status: str = "active"


class FakeSessions:
    """Dict-backed session operations with the ``SessionOperations`` signatures."""

    def __init__(self, clock: Clock) -> None:
        self.settings = SessionSettings()
        self.clock = clock
        self.store: dict[str, Session] = {}
        self.by_token: dict[bytes, str] = {}

    def get(self, session_id: str) -> Session:
        sid = normalize_session_id(session_id)
        s = self.store.get(sid) if sid else None
        if s is None or s.is_deleted:
            raise TokMeshError(E.SESS_NOT_FOUND)
        if s.is_expired(self.clock.now_ms()):
            raise TokMeshError(E.SESS_EXPIRED)
        return s

    def validate(self, token: str, count: int = 1) -> Session:
        if not is_valid_token(token):
            raise TokMeshError(E.TOKN_MALFORMED)
        sid = self.by_token.get(token_digest(token))
        if sid is None:
            raise TokMeshError(E.TOKN_INVALID)
        s = self.store[sid]
        if s.is_deleted:
            raise TokMeshError(E.TOKN_REVOKED)
        if s.is_expired(self.clock.now_ms()):
            raise TokMeshError(E.TOKN_EXPIRED)
        return s

    def _put(self, s: Session) -> Session:
        self.store[s.id] = s
        return s

    async def validate_touch(self, ctx: RequestContext, token: str) -> Session:
        s = self.validate(token)
        await trio.lowlevel.checkpoint()
        now = self.clock.now_ms()
        return self._put(
            s.evolve(last_active=max(now, s.last_active), last_access_ip=ctx.client_ip)
        )

    async def touch(self, ctx: RequestContext, session_id: str) -> Session:
        s = self.get(session_id)
        await trio.lowlevel.checkpoint()
        return self._put(s.evolve(last_active=max(self.clock.now_ms(), s.last_active)))

    async def renew(
        self,
        ctx: RequestContext,
        session_id: str,
        ttl_seconds: int | None,
        expected_version: int | None = None,
    ) -> Session:
        s = self.get(session_id)
        await trio.lowlevel.checkpoint()
        assert ttl_seconds is not None
        return self._put(s.evolve(expires_at=self.clock.now_ms() + ttl_seconds * 1000))

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
        s = self.get(session_id)
        await trio.lowlevel.checkpoint()
        changes: dict[str, Any] = {"version": s.version + 1}
        if device_id:
            changes["device_id"] = device_id
        if data is not None:
            changes["data"] = data
        if ttl_seconds:
            changes["expires_at"] = self.clock.now_ms() + ttl_seconds * 1000
        return self._put(s.evolve(**changes))

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
        try:
            self.get(session_id)
        except TokMeshError:
            await self.create(
                ctx,
                user_id,
                device_id=device_id,
                data=data,
                ttl_seconds=ttl_seconds,
                token=token,
                session_id=session_id,
            )
            return True
        await self.update(ctx, session_id, device_id=device_id, data=data, ttl_seconds=ttl_seconds)
        return False

    async def revoke(self, ctx: RequestContext, session_id: str, *, sync: bool = False) -> bool:
        sid = normalize_session_id(session_id)
        s = self.store.get(sid) if sid else None
        await trio.lowlevel.checkpoint()
        if s is None or s.is_deleted or s.is_expired(self.clock.now_ms()):
            return False
        self._put(s.evolve(is_deleted=True))
        return True

    async def revoke_user(
        self,
        ctx: RequestContext,
        user_id: str,
        except_session_id: str | None = None,
        *,
        sync: bool = False,
    ) -> int:
        n = 0
        for s in list(self.store.values()):
            if s.user_id == user_id and await self.revoke(ctx, s.id):
                n += 1
        return n

    def validate_scan(self, scan: Any) -> int:
        """Declines (as a cluster node does): the dispatcher validates one by one."""
        return 0

    def create_now(self, *args: Any, **kwargs: Any) -> bool:
        """Declines (as a cluster node does): the dispatcher awaits :meth:`create`."""
        return False

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
        if not user_id:
            raise TokMeshError(E.ARG_MISSING, "user_id is required")
        assert session_id is not None
        if token and not is_valid_token(token):
            raise TokMeshError(E.TOKN_MALFORMED)
        token = token or generate_token()
        if session_id in self.store and self.store[session_id].is_live(self.clock.now_ms()):
            raise TokMeshError(E.SESS_EXISTS)
        await trio.lowlevel.checkpoint()
        now = self.clock.now_ms()
        ttl_ms = (ttl_seconds or 7200) * 1000
        s = Session(
            id=session_id,
            user_id=user_id,
            token_hash=token_digest(token),
            ip_address=ctx.client_ip,
            last_access_ip=ctx.client_ip,
            device_id=device_id or "",
            created_by=ctx.key_id,
            created_at=now,
            expires_at=now + ttl_ms,
            last_active=now,
            data=data,
            ttl=ttl_ms,
        )
        self.by_token[s.token_hash] = s.id
        return CreateResult(self._put(s), token)


class FakeBackend:
    """A ``RespBackend`` over :class:`FakeSessions` and a dict of keys."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.sessions = FakeSessions(clock)
        self.scanner = SortedIdScanner(self.sessions.store, clock)
        self.keys: dict[str, FakeKey] = {
            KEY_ISSUER: FakeKey(SECRET, "issuer"),
            KEY_VALIDATOR: FakeKey(SECRET, "validator"),
            KEY_METRICS: FakeKey(SECRET, "metrics"),
        }
        self.maintenance = False
        self.started_at = time.time()
        #: Commands each key may still run (None = unlimited).
        self.budget: dict[str, int] = {}
        self.auth_calls = 0

    async def authenticate(self, key_id: str, secret: str, peer_ip: str) -> FakePrincipal:
        self.auth_calls += 1
        await trio.lowlevel.checkpoint()
        key = self.keys.get(key_id)
        if key is None or key.secret != secret:
            raise TokMeshError(E.AUTH_INVALID)
        if key.status != "active":
            raise TokMeshError(E.AUTH_DISABLED)
        return FakePrincipal(key_id, key.role)

    def check_principal(self, principal: Any, now_ms: int | None = None) -> Any:
        key = self.keys.get(principal.key_id)
        if key is None:
            raise TokMeshError(E.AUTH_INVALID)
        if key.status != "active":
            raise TokMeshError(E.AUTH_DISABLED)
        return principal

    def rate_limit(self, principal: Any) -> None:
        left = self.budget.get(principal.key_id)
        if left is None:
            return
        if left <= 0:
            raise TokMeshError(E.SYS_RATE_LIMITED)
        self.budget[principal.key_id] = left - 1

    def take_rate(self, principal: Any, n: int, now_ms: int | None = None) -> bool:
        left = self.budget.get(principal.key_id)
        if left is None:
            return True
        if left < n:
            return False
        self.budget[principal.key_id] = left - n
        return True

    def in_maintenance(self) -> bool:
        return self.maintenance

    def node_facts(self) -> NodeFacts:
        live = sum(1 for s in self.sessions.store.values() if not s.is_deleted)
        return NodeFacts("tmnd-fake", self.started_at, live)


@pytest.fixture
def fake_backend() -> FakeBackend:
    return FakeBackend()


@attrs.define
class RespServer:
    """A RESP listener on 127.0.0.1 serving in the test's nursery."""

    port: int
    dispatcher: Dispatcher
    stats: RespStats
    backend: Any

    def client(self, **kwargs: Any) -> redis.Redis:
        """A blocking redis-py client with the library's defaults (RESP3 through
        ``HELLO 3``, CLIENT SETINFO); use it through :func:`in_thread`."""
        kwargs.setdefault("socket_timeout", 10)
        client = redis.Redis(host="127.0.0.1", port=self.port, **kwargs)
        # Keep PING's reply as sent (redis-py turns it into a bool).
        client.set_response_callback("PING", lambda r, **kw: r)
        return client

    def raw(self, timeout: float = 10.0) -> socket.socket:
        """A plain blocking socket to the listener."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


async def start_server(
    nursery: trio.Nursery,
    backend: Any,
    limits: RespLimits | None = None,
    ssl_context: Any = None,
) -> RespServer:
    """Bind 127.0.0.1:0 and serve RESP until the nursery ends."""
    dispatcher = Dispatcher(backend)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await nursery.start(
        functools.partial(serve_resp, listeners, dispatcher, limits or RespLimits(), ssl_context)
    )
    return RespServer(port, dispatcher, dispatcher.stats, backend)


@pytest.fixture
async def fake_server(nursery: trio.Nursery, fake_backend: FakeBackend) -> RespServer:
    return await start_server(nursery, fake_backend)


# -- the real services -----------------------------------------------------------------------


@attrs.define
class RealStack:
    """Real engine + auth behind a RESP listener, plus helpers to make keys."""

    engine: StorageEngine
    keys: KeyService
    auth: Authenticator
    server: RespServer
    maintenance: list[bool]

    async def new_key(self, role: str, **kwargs: Any) -> tuple[str, str]:
        key, secret, _ = await self.keys.create(role, **kwargs)
        return key.key_id, secret

    def client_for(self, key_id: str, secret: str, **kwargs: Any) -> redis.Redis:
        return self.server.client(username=key_id, password=secret, **kwargs)


@pytest.fixture(params=["compiled", "python"])
async def real_stack(
    nursery: trio.Nursery, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[RealStack]:
    """Every real-stack test runs twice: with the compiled validation loop
    (:mod:`tokmesh.accel`) and with the pure-Python path it stands in for."""
    if request.param == "compiled" and accel.validate_frames is None:
        pytest.skip("tokmesh._accel is not built (no C compiler at install time)")
    clock = SYSTEM_CLOCK
    engine = StorageEngine(
        EngineSettings(
            wal_dir=tmp_path / "wal",
            snapshot_dir=tmp_path / "snapshots",
            node_id="tmnd-resptest",
            wal=WalSettings(sync_mode="batch"),
            # No sweeping during a test: an expired session stays in memory, so reads
            # see "expired" (4041) rather than "absent" (4040), deterministically.
            gc_interval=3600.0,
        ),
        clock=clock,
    )
    await nursery.start(engine.run)
    settings = AuthSettings(argon2_memory_kib=8192, argon2_iterations=1, argon2_parallelism=1)
    cache = AuthCache(
        clock=clock,
        capacity=settings.cache_capacity,
        ttl_ms=settings.cache_ttl_ms,
        argon2=Argon2Params(8192, 1, 1),
        concurrency=2,
    )
    await nursery.start(cache.run)
    assert engine.store is not None
    keys = KeyService(engine.store, settings.key_settings(), clock, cache, cache.invalidate)
    auth = Authenticator(settings, engine.store, cache, clock, on_used=keys.note_used)
    maintenance = [False]
    backend = ServiceBackend(auth, local_sessions(engine), engine.state, lambda: maintenance[0])
    server = await start_server(nursery, backend)
    if request.param == "python":
        server.dispatcher._scan_frames = None
    yield RealStack(engine, keys, auth, server, maintenance)
    await engine.stop()
