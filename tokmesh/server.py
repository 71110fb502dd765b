"""Composition root: config → actors → listeners → recovery → ready (05 §15).

Start order: JSON logging and warnings, the local admin socket, the HTTP listeners (they
answer ``/ready`` 503 while recovery runs), then storage recovery, then READY. Shutdown
on SIGTERM/SIGINT or the socket's ``SHUTDOWN``: ``/ready`` 503 at once, stop accepting,
let in-flight requests finish within ``server.shutdown.grace_period``, then flush, fsync
and seal the WAL; exit 0 when everything finished inside ``server.shutdown.timeout``.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from tokmesh import __version__
from tokmesh.actors.auth_cache import AuthCache
from tokmesh.actors.commit_stream import Commit, CommitKind
from tokmesh.actors.engine import EngineSettings, StorageEngine
from tokmesh.actors.event_hub import LIVE_LIMIT, EventHub
from tokmesh.actors.periodic import keep_running
from tokmesh.actors.snapshotter import SnapshotSettings
from tokmesh.actors.wal_writer import WalSettings
from tokmesh.api.accept import ConnectionGate, accept_succeeded, fold_trio_accept_errors
from tokmesh.api.admin import status_data
from tokmesh.api.app import BodyLimit, NativeFront, build_api, create_quart_app
from tokmesh.api.asgi_bridge import AsgiBridge
from tokmesh.api.backups import backup_service, streams_request_body
from tokmesh.api.deps import ApiDeps
from tokmesh.api.events_ws import EventsEndpoint
from tokmesh.api.http_limits import HttpLimits
from tokmesh.api.http_server import ServerControl, serve_http
from tokmesh.api.local_socket import LocalSocketServer, Peer
from tokmesh.api.local_socket_path import (
    first_key_commands,
    first_key_hint,
    socket_candidates,
)
from tokmesh.api.tls_reload import CertReloader, server_context
from tokmesh.clock_hook import wall_clock
from tokmesh.config.descriptors import descriptor_limit, effective_max_connections
from tokmesh.config.node_id import data_dir_of, resolve_node_id
from tokmesh.config.schema import Config
from tokmesh.config.types import parse_addr
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.session_settings import SessionSettings
from tokmesh.readiness import Phase
from tokmesh.services.auth import Authenticator, AuthHooks, AuthSettings
from tokmesh.services.keys import KeyService
from tokmesh.telemetry import audit as audit_mod
from tokmesh.telemetry import metrics
from tokmesh.telemetry.logging import set_level

if TYPE_CHECKING:
    from tokmesh.cluster.key_sync import KeyWatcher
    from tokmesh.cluster.node import ClusterNode
    from tokmesh.services.session_ops import SessionOperations

log = logging.getLogger("tokmesh.server")


class EngineKeyRepository:
    """The ``KeyRepository`` of the auth layer on top of the storage engine.

    Keys are read from the committed state (loaded by recovery) and written through
    the WAL; before recovery finished there are no keys and writes answer 503.
    """

    def __init__(self, engine: StorageEngine) -> None:
        self.engine = engine

    def get_key(self, key_id: str) -> Any:
        """The committed key or ``None``."""
        return self.engine.state.keys.get(key_id)

    def list_keys(self) -> list[Any]:
        """All committed keys."""
        return list(self.engine.state.keys.values())

    async def put_key(self, key: Any) -> None:
        """Durable upsert through the WAL."""
        store = self.engine.store
        if store is None:
            raise TokMeshError(E.SYS_UNAVAILABLE, "service not ready")
        await store.put_key(key)


def engine_settings(cfg: Config, node_id: str) -> EngineSettings:
    """Map the ``storage.*`` and ``session.*`` config to :class:`EngineSettings`."""
    st = cfg.storage
    ses = cfg.session
    return EngineSettings(
        wal_dir=Path(st.wal.dir),
        snapshot_dir=Path(st.snapshot.dir),
        encryption_key_hex=cfg.security.storage.wal_encryption_key,
        node_id=node_id,
        wal=WalSettings(
            sync_mode=st.wal.sync_mode,
            sync_interval=st.wal.sync_interval,
            batch_count=st.wal.batch_count,
            batch_size=st.wal.batch_size,
        ),
        snapshot=SnapshotSettings(
            interval=st.snapshot.interval,
            threshold_bytes=st.snapshot.threshold,
            retention_count=st.snapshot.retention_count,
            retention_days=st.snapshot.retention_days,
        ),
        sessions=SessionSettings(
            ttl_default_ms=int(ses.ttl.default * 1000),
            ttl_max_ms=int(ses.ttl.max * 1000),
            max_per_user=ses.quota.max_per_user,
            quota_policy=ses.quota_policy,
            touch_min_interval_ms=int(ses.touch_min_interval * 1000),
        ),
        gc_interval=ses.ttl.gc_interval,
        sample_size=ses.ttl.sample_size,
    )


def auth_settings(cfg: Config) -> AuthSettings:
    """Map ``security.*`` and the metrics auth flag to :class:`AuthSettings`."""
    sec = cfg.security
    a = sec.auth
    return AuthSettings(
        allow_list=tuple(a.allow_list),
        rotation_grace_ms=int(a.rotation_grace * 1000),
        cache_capacity=a.cache_capacity,
        cache_ttl_ms=int(a.cache_ttl * 1000),
        argon2_memory_kib=a.argon2.memory,
        argon2_iterations=a.argon2.iterations,
        argon2_parallelism=a.argon2.parallelism,
        anti_replay_required=sec.anti_replay.required,
        timestamp_window_ms=int(sec.anti_replay.timestamp_window * 1000),
        nonce_ttl_ms=int(sec.anti_replay.nonce_ttl * 1000),
        nonce_cache_size=sec.anti_replay.nonce_cache_size,
        trusted_proxies=tuple(sec.network.trusted_proxies),
        metrics_auth_enabled=cfg.telemetry.metrics.auth_enabled,
    )


def _count_commit(commit: Commit) -> None:
    """Commit-stream subscriber of the session metrics."""
    if commit.kind is CommitKind.CREATE and not commit.replicated:
        metrics.SESSION_CREATE.inc()


class TokMeshServer:
    """One TokMesh node."""

    def __init__(
        self,
        cfg: Config,
        *,
        config_file: str | None = None,
        flags: dict[str, str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_file = config_file
        self.flags = dict(flags or {})
        self.node_id = resolve_node_id(cfg)
        self.data_dir = data_dir_of(cfg)
        # One wall clock for everything that compares with an absolute time (a test hook
        # can shift it; see tokmesh/clock_hook.py).
        self.clock = wall_clock(os.environ)
        self.engine = StorageEngine(engine_settings(cfg, self.node_id), clock=self.clock)
        self.engine.commits.subscribe(_count_commit)
        # Session events (GET /events): fed by the commit stream, replays from the WAL.
        self.events = EventHub(
            self.engine.commits,
            self.engine.settings.wal_dir,
            cfg.events.include_touch,
            lookup=self._held_session,
            # Not a config key yet: the tests set a small bound to meet a slow watcher
            # within seconds (docs/events.md).
            live_limit=int(os.environ.get("TOKMESH_EVENTS_LIVE_LIMIT") or LIVE_LIMIT),
        )
        self.engine.restore_hooks.append(lambda _keys: self.events.state_replaced())
        a = auth_settings(cfg)
        self.audit = audit_mod.AuditLog(
            self.data_dir / "audit", retention_days=cfg.telemetry.audit.retention_days
        )
        self.auth_cache = AuthCache(
            clock=self.clock,
            capacity=a.cache_capacity,
            ttl_ms=a.cache_ttl_ms,
            argon2=a.argon2_params(),
            on_argon2_seconds=metrics.AUTH_ARGON2_DURATION.observe,
        )
        # A restore replaces every key: purge their cached grants at once.
        self.engine.restore_hooks.append(
            lambda key_ids: [self.auth_cache.invalidate(k) for k in key_ids]
        )
        repo: Any = EngineKeyRepository(self.engine)
        # A cluster node: sessions are routed to their shard's owner over the cluster
        # port, API keys live in etcd (applied to every node through its own WAL).
        self.cluster: ClusterNode | None = None
        self.key_watcher: KeyWatcher | None = None
        if cfg.cluster.enabled:
            from tokmesh.cluster import cluster_metrics
            from tokmesh.cluster.key_sync import EtcdKeyRepository, KeyWatcher
            from tokmesh.cluster.node import ClusterNode, ClusterSettings

            self.cluster = ClusterNode(
                ClusterSettings.from_config(cfg, self.node_id, self.data_dir, __version__),
                on_refused=self._refused,
            )
            cluster_metrics.register(self.cluster)
            if cfg.cluster.discovery.seeds:
                log.info(
                    "cluster.discovery.seeds is ignored: nodes find each other through etcd "
                    "(cluster.etcd.endpoints)"
                )
            self.engine.readiness.add_check("cluster", self.cluster.readiness_check)
            self.key_watcher = KeyWatcher(
                self.cluster.etcd, repo, self.auth_cache.invalidate, cfg.cluster.etcd.prefix
            )
            repo = EtcdKeyRepository(
                self.cluster.etcd, self.key_watcher, timeout=cfg.cluster.etcd.request_timeout
            )
        self.keys = KeyService(
            repo, a.key_settings(), self.clock, self.auth_cache, self.auth_cache.invalidate
        )
        self.auth = Authenticator(
            a,
            repo,
            self.auth_cache,
            self.clock,
            audit=self._audit_auth,
            hooks=AuthHooks(
                cache_hit=metrics.AUTH_CACHE_HITS.inc,
                cache_miss=metrics.AUTH_CACHE_MISSES.inc,
                failure=lambda reason: metrics.AUTH_FAILURES.labels(reason=reason).inc(),
            ),
            on_used=self.keys.note_used,
        )
        self.deps = ApiDeps(
            self.engine,
            self.auth,
            self.keys,
            node_id=self.node_id,
            version=__version__,
            audit=self.audit,
            config=cfg,
            server=self,
            make_sessions=self._cluster_sessions if self.cluster is not None else None,
        )
        self.api = build_api(self.deps)
        # One cap for every TCP listener (HTTP, HTTPS, RESP, RESP TLS).
        self.gate = ConnectionGate(
            effective_max_connections(cfg.server.max_connections, descriptor_limit())
        )
        self.http_controls: list[ServerControl] = []
        self.cert_reloaders: list[CertReloader] = []
        self._hypercorn_stops: list[trio.Event] = []
        self.resp_stats: Any = None
        self.ports: dict[str, int] = {}
        self.socket_path: Path | None = None
        self._shutdown = trio.Event()
        self._grace: float | None = None
        self._exit_code = 0
        self._register_gauges()
        for warning in a.startup_warnings():
            log.warning(warning)

    def _held_session(self, session_id: str) -> tuple[str, str, int, bool] | None:
        """``(user_id, device_id, version, revoked)`` of a session this node holds: names
        the session of an old DELETE record (without an event note) in a replay."""
        s = self.engine.state.sessions.get(session_id)
        if s is None:
            return None
        return s.user_id, s.device_id, s.version, s.is_deleted

    def _refused(self, reason: str) -> None:
        """The cluster refused this node: stop, and exit 1 (a supervisor restarting it
        would only be refused again; the log line says what to fix)."""
        self._exit_code = 1
        self.request_shutdown()

    def _cluster_sessions(self, engine: StorageEngine) -> SessionOperations:
        """The fronts' session operations on a cluster node: each request goes to the
        owner of its shard, this node's own shards run on its store."""

        assert self.cluster is not None and engine.store is not None
        local = self.cluster.local_operations(engine.store, engine.settings.sessions, engine.clock)
        return self.cluster.attach(local)

    # -- telemetry hooks ---------------------------------------------------------------------

    def _register_gauges(self) -> None:
        state = self.engine.state
        metrics.register_gauge_provider(
            "tokmesh_sessions_active_total", lambda: float(state.live_count())
        )
        cache = self.auth_cache
        metrics.register_gauge_provider(
            "tokmesh_auth_cache_hit_rate", lambda: float(cache.stats.hit_rate()), {"key": "apikey"}
        )
        gate = self.gate
        metrics.register_gauge_provider("tokmesh_connections_open", lambda: float(gate.open))
        metrics.CONNECTIONS_MAX.set(gate.limit)

    def _audit_auth(self, action: str, **fields: Any) -> None:
        self.audit.append(audit_mod.AuditRecord.new(action, **fields))

    # -- lifecycle ------------------------------------------------------------------------------

    def request_shutdown(self, grace: float | None = None) -> None:
        """Begin a graceful shutdown (signals, the socket's SHUTDOWN)."""
        if grace is not None:
            self._grace = grace
        self._shutdown.set()

    async def run(
        self, *, task_status: trio.TaskStatus[TokMeshServer] = trio.TASK_STATUS_IGNORED
    ) -> int:
        """Run until shutdown; returns the process exit code."""
        cfg = self.cfg
        engine_done = trio.Event()
        engine_started = _StartedFlag()

        async def run_engine() -> None:
            try:
                await self.engine.run(task_status=engine_started)
            finally:
                engine_done.set()
                engine_started.started()  # unblock the parent if recovery failed

        log.info(
            "connection cap",
            extra={
                "max_connections": self.gate.limit,
                "derived": cfg.server.max_connections == 0,
                "descriptor_limit": descriptor_limit(),
            },
        )
        async with trio.open_nursery() as nursery:
            # Periodic work that touches files survives a transient OSError (e.g. out of
            # descriptors): restarted, not taking the server down (actors/periodic.py).
            await nursery.start(functools.partial(keep_running, "audit_log", self.audit.run))
            await nursery.start(self.auth_cache.run)
            nursery.start_soon(self._signals)
            if self.cluster is not None:
                # The cluster port opens now; joining through etcd goes on in the
                # background (/ready says "connecting" meanwhile).
                await nursery.start(self.cluster.run)
            await self._start_local_socket(nursery)
            quart_app = create_quart_app(self.api, cfg.server.http.max_body_size)
            bridge = AsgiBridge(quart_app)
            async with bridge.running():
                front = NativeFront(self.api, bridge)
                limits = HttpLimits(
                    max_body_size=cfg.server.http.max_body_size,
                    header_timeout=cfg.server.http.header_timeout,
                )
                async with trio.open_nursery() as listeners:
                    if cfg.server.http.engine == "hypercorn":
                        limited = BodyLimit(quart_app, cfg.server.http.max_body_size)
                        await self._start_hypercorn(listeners, limited)
                    else:
                        await self._start_http(listeners, front, limits)
                    # Recovery runs while the listeners already answer /ready with 503.
                    nursery.start_soon(run_engine)
                    await engine_started.wait()
                    if not engine_done.is_set():
                        if self.cluster is not None:
                            # Making the operations attaches them to the cluster port:
                            # peers' forwarded calls are served from now on, even before
                            # a request reaches this node's own listeners.
                            self.deps.sessions  # noqa: B018
                        if self.key_watcher is not None:
                            nursery.start_soon(self.key_watcher.run)
                        nursery.start_soon(keep_running, "key_last_used", self.keys.run)
                        await nursery.start(backup_service(self.deps).run)
                        if self.engine.cipher is not None:
                            await nursery.start(self.events.run, self.engine.cipher)
                        await self._start_resp(listeners)
                        log.info(
                            "tokmesh-server ready",
                            extra={"node_id": self.node_id, "ports": self.ports},
                        )
                        self._point_to_first_key()
                        task_status.started(self)
                        await self._shutdown.wait()
                        if self.cluster is not None:
                            # Move this node's shards (with their data) to the others
                            # while the listeners still forward to them.
                            try:
                                await self.cluster.drain(cfg.cluster.shutdown.timeout)
                            except Exception as exc:  # etcd or a peer failing: stop anyway
                                log.warning("could not drain this node's shards: %s", exc)
                    deadline = trio.current_time() + cfg.server.shutdown.timeout
                    await self._drain_listeners()
                    listeners.cancel_scope.cancel()
            exit_code = await self._stop_storage(deadline, engine_done)
            nursery.cancel_scope.cancel()
        return exit_code

    async def _start_resp(self, nursery: trio.Nursery) -> None:
        """RESP listeners (03 §5): plain ``server.redis.*`` and TLS ``server.redis_tls.*``.

        They open once recovery is complete: RESP has no readiness probe, so a refused
        connection is its "not ready" (decision recorded in docs/decisions.md).
        """
        from tokmesh.resp.backend import ServiceBackend
        from tokmesh.resp.commands import Dispatcher
        from tokmesh.resp.limits import RespLimits
        from tokmesh.resp.listener import serve_resp

        cfg = self.cfg
        # The very session operations the HTTP routes call.
        sessions = self.deps.sessions
        if sessions is None or not (cfg.server.redis.enabled or cfg.server.redis_tls.enabled):
            return
        readiness = self.engine.readiness
        backend = ServiceBackend(
            self.auth,
            sessions,
            self.engine.state,
            in_maintenance=lambda: readiness.phase is Phase.RESTORING,
            node_id=self.node_id,
            started_at=self.deps.started_at,
            max_clients=self.gate.limit,
        )
        dispatcher = Dispatcher(backend, audit=self.audit)
        self.resp_stats = dispatcher.stats
        if cfg.server.redis.enabled:
            log.warning("plaintext RESP listener enabled (server.redis.enabled): dev use only")
        targets = await self._listener_targets(
            nursery, ("redis", cfg.server.redis), ("redis_tls", cfg.server.redis_tls)
        )
        for name, address, tls in targets:
            host, port = parse_addr(address)
            listeners = await trio.open_tcp_listeners(port, host=host or None)
            await nursery.start(
                functools.partial(
                    serve_resp,
                    listeners,
                    dispatcher,
                    RespLimits(login_timeout=cfg.server.redis.login_timeout),
                    tls,
                    stats=self.resp_stats,
                    gate=self.gate,
                )
            )
            self.ports[name] = int(listeners[0].socket.getsockname()[1])
            log.info("listening", extra={"listener": name, "address": f"{host}:{self.ports[name]}"})

    async def _start_hypercorn(self, nursery: trio.Nursery, app: Any) -> None:
        """``server.http.engine: hypercorn``: the whole Quart-Trio app under Hypercorn
        (HTTP/2 on HTTPS via ALPN), same routes and pipeline as the native front.

        Hypercorn accepts with Trio's ``serve_listeners``, which waits out descriptor
        exhaustion as ours does but logs every retry: those lines are folded into the
        process's one accept episode, which each request (proof of an accept) ends. The
        connection cap does not apply to Hypercorn's connections.
        """
        from hypercorn.config import Config as HypercornConfig
        from hypercorn.trio import serve

        fold_trio_accept_errors()

        async def noting_accepts(scope: Any, receive: Any, send: Any) -> None:
            accept_succeeded()
            await app(scope, receive, send)

        cfg = self.cfg
        for name, enabled, address in (
            ("http", cfg.server.http.enabled, cfg.server.http.address),
            ("https", cfg.server.https.enabled, cfg.server.https.address),
        ):
            if not enabled:
                continue
            hc = HypercornConfig()
            hc.bind = [address]
            hc.accesslog = None
            hc.errorlog = None
            hc.graceful_timeout = cfg.server.shutdown.grace_period
            hc.h11_max_incomplete_size = 64 * 1024
            if name == "https":
                t = cfg.server.https.tls
                hc.certfile, hc.keyfile = t.cert_file, t.key_file
                hc.ciphers = cfg.security.tls.ciphers
                if t.client_ca_file:
                    hc.ca_certs = t.client_ca_file
                    hc.verify_mode = ssl.CERT_REQUIRED
            stopped = trio.Event()
            self._hypercorn_stops.append(stopped)
            binds: list[str] = await nursery.start(
                functools.partial(serve, noting_accepts, hc, shutdown_trigger=stopped.wait)
            )
            port = int(binds[0].rsplit(":", 1)[1]) if binds else parse_addr(address)[1]
            self.ports[name] = port
            log.info("listening (hypercorn)", extra={"listener": name, "address": address})

    async def _drain_listeners(self) -> None:
        """Phases 1-2 of 05 §15: not ready at once, stop accepting, finish in-flight."""
        grace = self._grace if self._grace is not None else self.cfg.server.shutdown.grace_period
        log.info("shutting down", extra={"grace_seconds": grace})
        if self.engine.readiness.phase is not Phase.FAILED:
            self.engine.readiness.set(Phase.STOPPING)
        # Event watchers never finish by themselves: close them (1001) before the drain.
        self.events.shutdown()
        # Drain every listener at once: none keeps accepting while another drains.
        for control in self.http_controls:
            control.begin_drain(grace)
        for stop in self._hypercorn_stops:
            stop.set()
        for control in self.http_controls:
            if not await control.wait_stopped():
                log.warning("in-flight requests cancelled after the grace period")

    async def _stop_storage(self, deadline: float, engine_done: trio.Event) -> int:
        """Phase 4: flush, fsync and seal the WAL, close the audit log."""
        exit_code = self._exit_code  # 1 when the cluster refused this node
        with trio.move_on_at(deadline) as scope:
            await self.engine.stop()
            await engine_done.wait()
            await self.audit.aclose()
        if scope.cancelled_caught:
            log.error(
                "shutdown exceeded server.shutdown.timeout (%.0f s)",
                self.cfg.server.shutdown.timeout,
            )
            exit_code = 1
        if self.engine.readiness.phase is Phase.FAILED:
            exit_code = 1
        log.info("tokmesh-server stopped", extra={"exit_code": exit_code})
        return exit_code

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for signum in sigs:
                if signum == signal.SIGHUP:
                    await self.reload()
                else:
                    self.request_shutdown()

    async def reload(self) -> dict[str, list[str]]:
        """SIGHUP / ``RELOAD`` / ``POST /admin/v1/config/reload`` (05 §5).

        Reloads the TLS certificates, re-reads the configuration with the original flags,
        validates it fully and applies the hot items (log level); restart-only changes
        are listed in ``ignored``. An invalid file changes nothing.
        """
        from tokmesh.config.reload import reload_plan
        from tokmesh.config.schema import build_config, config_to_flat
        from tokmesh.config.validate import load_and_validate

        if self.config_file is None:
            updated = [f"server.{r.name}.tls" for r in self.cert_reloaders if r.reload()]
            return {"updated": updated, "ignored": []}
        result, report = await trio.to_thread.run_sync(
            lambda: load_and_validate(self.config_file, dict(os.environ), self.flags, Path.cwd())
        )
        if report.errors:
            log.error(
                "config reload rejected; keeping the running configuration",
                extra={
                    "event": "config_reloaded",
                    "status": "failed",
                    "errors": [f"{e.key}: {e.code.code}" for e in report.errors],
                },
            )
            return {"updated": [], "ignored": []}
        new = result.config
        hot, restart = reload_plan(self.cfg, new)
        # Certificate paths are hot too: point each reloader at the new files first.
        for reloader in self.cert_reloaders:
            section = new.server.https if reloader.name == "https" else new.server.redis_tls
            tls = section.tls
            reloader.set_files(tls.cert_file, tls.key_file, tls.client_ca_file)
        updated = [f"server.{r.name}.tls" for r in self.cert_reloaders if r.reload()]
        if "telemetry.logging.level" in hot:
            set_level(new.telemetry.logging.level)
        updated.extend(
            k
            for k in hot
            if k not in updated
            and not k.startswith("server.https.tls")
            and not k.startswith("server.redis_tls.tls")
        )
        # Keep the running values of restart-only keys; take every hot one.
        values = config_to_flat(self.cfg)
        new_values = config_to_flat(new)
        for key in hot:
            values[key] = new_values[key]
        self.cfg = build_config(values)
        if restart:
            log.warning(
                "restart required for configuration changes: %s",
                ", ".join(restart),
                extra={"restart_required": restart},
            )
        log.info(
            "config_reloaded",
            extra={
                "event": "config_reloaded",
                "status": "success",
                "updated": updated,
                "ignored": restart,
            },
        )
        return {"updated": updated, "ignored": restart}

    # -- listeners -------------------------------------------------------------------------------

    async def _listener_targets(
        self, nursery: trio.Nursery, plain: tuple[str, Any], secure: tuple[str, Any]
    ) -> list[tuple[str, str, ssl.SSLContext | None]]:
        """``(name, address, tls context)`` of a protocol's enabled plain and TLS
        listeners; a TLS listener gets a certificate reloader (hot reload, 05 §5)."""
        targets: list[tuple[str, str, ssl.SSLContext | None]] = []
        name, section = plain
        if section.enabled:
            targets.append((name, section.address, None))
        name, section = secure
        if section.enabled:
            t = section.tls
            ctx = server_context(
                t.cert_file, t.key_file, t.client_ca_file, self.cfg.security.tls.ciphers
            )
            reloader = CertReloader(name, ctx, t.cert_file, t.key_file, t.client_ca_file)
            self.cert_reloaders.append(reloader)
            await nursery.start(functools.partial(keep_running, f"tls_reload_{name}", reloader.run))
            targets.append((name, section.address, ctx))
        return targets

    async def _start_http(
        self, nursery: trio.Nursery, front: NativeFront, limits: HttpLimits
    ) -> None:
        cfg = self.cfg
        targets = await self._listener_targets(
            nursery, ("http", cfg.server.http), ("https", cfg.server.https)
        )
        for name, address, tls in targets:
            host, port = parse_addr(address)
            listeners = await trio.open_tcp_listeners(port, host=host or None)
            control: ServerControl = await nursery.start(
                functools.partial(
                    serve_http,
                    front,
                    listeners,
                    limits=limits,
                    ssl_context=tls,
                    streaming_predicate=streams_request_body,
                    upgrade_handler=EventsEndpoint(
                        self.deps,
                        self.events,
                        idle_timeout=limits.idle_timeout,
                        write_timeout=limits.write_timeout,
                    ),
                    gate=self.gate,
                )
            )
            self.http_controls.append(control)
            self.ports[name] = control.ports[0]
            log.info("listening", extra={"listener": name, "address": f"{host}:{control.ports[0]}"})

    def _point_to_first_key(self) -> None:
        """On a node without any API key, say where the local admin socket is and which
        command creates the first admin key: in the JSON log, and as one plain line on
        stderr for the person who just typed ``tokmesh-server``."""
        if self.engine.state.keys:
            return
        cwd = Path.cwd()
        path = self.socket_path
        log.warning(
            "no API key exists yet",
            extra={
                "socket_path": str(path) if path else None,
                "commands": list(first_key_commands(path, cwd, os.environ)) if path else [],
            },
        )
        print(first_key_hint(path, cwd, os.environ), file=sys.stderr, flush=True)

    async def _start_local_socket(self, nursery: trio.Nursery) -> None:
        candidates = socket_candidates(self.cfg.server.local.socket_path, self.data_dir)
        if not candidates:
            log.info("local admin socket off (server.local.socket_path is empty)")
            return
        commands = {
            "EMERGENCY_CREATE_ADMIN_KEY": self._cmd_emergency,
            "STATUS": self._cmd_status,
            "SHUTDOWN": self._cmd_shutdown,
            "RELOAD": self._cmd_reload,
            "DRAIN": self._cmd_drain,
        }
        for i, path in enumerate(candidates):
            try:
                server = LocalSocketServer(path, commands)
                await nursery.start(server.serve)
            except OSError as exc:
                if i + 1 < len(candidates):
                    log.warning(
                        "local admin socket %s unavailable (%s); using %s instead",
                        path,
                        exc.strerror or exc,
                        candidates[i + 1],
                    )
                    continue
                log.warning("local admin socket disabled: %s", exc)
                return
            self.socket_path = path
            log.info("local admin socket listening", extra={"socket_path": str(path)})
            return

    # -- local socket commands ------------------------------------------------------------------

    def _local_audit(self, action: str, peer: Peer, **details: Any) -> None:
        self.audit.append(
            audit_mod.AuditRecord.new(
                action,
                operator_id=audit_mod.LOCAL_ADMIN,
                operator_role="admin",
                resource="local_socket",
                details={**details, **peer.fields(), "socket_path": str(self.socket_path)},
            )
        )

    async def _cmd_emergency(self, args: list[str], peer: Peer) -> dict[str, Any]:
        self.engine.readiness.require_ready()
        key, secret, warning = await self.keys.create_emergency(" ".join(args) or None)
        self._local_audit(audit_mod.EMERGENCY_KEY_CREATED, peer, key_id=key.key_id, role=key.role)
        # The secret goes to the caller only: never to the log or the audit trail.
        log.warning(
            "emergency admin key created over the local admin socket",
            extra={
                "event": audit_mod.EMERGENCY_KEY_CREATED,
                "key_id": key.key_id,
                "role": key.role,
                "socket_path": str(self.socket_path),
                **peer.fields(),
            },
        )
        return {
            "key_id": key.key_id,
            "key_secret": secret,
            "created_at": key.created_at,
            "warning": warning,
        }

    async def _cmd_status(self, args: list[str], peer: Peer) -> dict[str, Any]:
        self._local_audit("STATUS", peer)
        return status_data(self.deps)

    async def _cmd_shutdown(self, args: list[str], peer: Peer) -> dict[str, Any]:
        grace = 30.0
        if args:
            try:
                grace = float(args[0])
            except ValueError:
                raise TokMeshError(E.ARG_INVALID, "grace_seconds must be a number") from None
            if grace < 0:
                raise TokMeshError(E.ARG_INVALID, "grace_seconds must be >= 0")
        self._local_audit("SHUTDOWN", peer, grace_seconds=grace)
        self.request_shutdown(grace)
        return {"status": "shutting_down", "grace_seconds": grace}

    async def _cmd_reload(self, args: list[str], peer: Peer) -> dict[str, Any]:
        self._local_audit("RELOAD", peer)
        result = await self.reload()
        return dict(result)

    async def _cmd_drain(self, args: list[str], peer: Peer) -> dict[str, Any]:
        self._local_audit("DRAIN", peer)
        grace = self.cfg.server.shutdown.grace_period
        for control in self.http_controls:
            control.begin_drain(grace)
        return {"status": "draining"}


class _StartedFlag:
    """A ``task_status`` object that also lets the parent wait for ``started()``."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def started(self, value: Any = None) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
