"""What the HTTP routes depend on: the engine, auth, keys, readiness, telemetry.

Built once by the composition root (``tokmesh/server.py``) and handed to :class:`Api`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokmesh.actors.engine import StorageEngine
from tokmesh.api.http_types import HttpRequest, HttpResponse
from tokmesh.readiness import Readiness
from tokmesh.services.auth import Authenticator
from tokmesh.services.keys import KeyService
from tokmesh.services.session_ops import SessionOperations
from tokmesh.services.sessions import local_sessions
from tokmesh.telemetry import audit as audit_mod
from tokmesh.telemetry import metrics

if TYPE_CHECKING:
    from tokmesh.api.routes import Call, Route


def default_build_time() -> str:
    """The RFC 3339 build stamp of ``GET /admin/v1/status/summary`` (03 §4.1).

    A release build writes ``tokmesh._build.BUILD_TIME``; without it the modification
    time of the installed package stands in (pip writes it at install time).
    """
    try:
        from tokmesh import _build  # type: ignore[attr-defined]

        return str(_build.BUILD_TIME)
    except ImportError:
        pass
    import tokmesh

    mtime = Path(tokmesh.__file__).stat().st_mtime
    return datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiDeps:
    """Service handles and cross-cutting hooks used by the route handlers."""

    def __init__(
        self,
        engine: StorageEngine,
        auth: Authenticator,
        keys: KeyService,
        *,
        node_id: str,
        version: str,
        build_time: str | None = None,
        audit: audit_mod.AuditLog | None = None,
        config: Any = None,
        server: Any = None,
        sessions: SessionOperations | None = None,
        make_sessions: Callable[[StorageEngine], SessionOperations] | None = None,
    ) -> None:
        self.engine = engine
        self._sessions = sessions
        self._make_sessions = make_sessions or local_sessions
        self.auth = auth
        self.keys = keys
        self.readiness: Readiness = engine.readiness
        self.node_id = node_id
        self.version = version
        self.build_time = build_time or default_build_time()
        self.audit = audit
        self.config = config
        #: the running server (config reload, maintenance, restore); optional in tests
        self.server = server
        self.started_at = time.time()
        self.gc_last: dict[str, float] = {}
        self._qps_window: list[float] = [time.monotonic(), 0.0, 0.0]

    @property
    def sessions(self) -> SessionOperations | None:
        """The session operations the routes call (``None`` until recovery finished).

        Unless the composition root gave others, made by ``make_sessions`` (default: the
        local ones over the engine's store; a cluster node: forwarding ones) the first
        time they are asked for once the store exists.
        """
        ops = self._sessions
        if ops is None:
            if self.engine.store is None:
                return None
            ops = self._sessions = self._make_sessions(self.engine)
        return ops

    def current_qps(self) -> float:
        """Requests per second over the last completed window (cheap, approximate)."""
        start, count, last = self._qps_window
        now = time.monotonic()
        if now - start >= 1.0:
            return count / (now - start)
        return last

    def observe(
        self,
        route: Route,
        req: HttpRequest,
        resp: HttpResponse,
        started: float,
        call: Call | None,
    ) -> None:
        """Per-request counters: no logging on the hot path (DESIGN §3)."""
        window = self._qps_window
        now = time.monotonic()
        if now - window[0] >= 1.0:
            window[2] = window[1] / (now - window[0])
            window[0] = now
            window[1] = 0.0
        window[1] += 1
        metrics.observe_api_request(
            req.method, route.path, resp.status, time.perf_counter() - started
        )

    def audit_request(self, call: Call, resp: HttpResponse) -> None:
        """Request-level audit of admin calls and business writes (one record each)."""
        log = self.audit
        if log is None:
            return
        p = call.principal
        route = call.route
        ua = call.req.get_header(b"user-agent")
        log.append_write(
            route.audit_action or audit_mod.admin_action(route.method, route.path),
            result=audit_mod.RESULT_SUCCESS if resp.status < 400 else audit_mod.RESULT_FAILURE,
            operator_id=p.key_id if p else None,
            operator_role=p.role if p else None,
            resource=call.req.path,
            ip_address=call.client_ip,
            tcp_remote_ip=call.req.peer_ip,
            user_agent=ua.decode("latin-1") if ua else "",
            request_id=call.rid,
            method=route.method,
            route=route.path,
            status=resp.status,
        )
