"""The route table and the request pipeline shared by every HTTP engine.

Each route's logic is written once as ``async def handler(call: Call) -> HttpResponse``.
The native Trio front serves the hot routes by calling :meth:`Api.handle` directly; the
Quart-Trio app (``tokmesh.api.quart_app``) hosts the same :class:`Api` for everything
else and, under ``server.http.engine: hypercorn``, for every route.

Pipeline order (03 §2.10): request id → recover → routing (404/405) → readiness →
client IP → authentication, rate limit, role, anti-replay → maintenance gate → audit →
handler.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import attrs

from tokmesh.api.envelope import query_params
from tokmesh.api.http_errors import error_response, exception_response
from tokmesh.api.http_request_id import request_id_for
from tokmesh.api.http_types import HttpRequest, HttpResponse
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.services.auth import SCOPE_ADMIN, SCOPE_BUSINESS, SCOPE_METRICS, Principal
from tokmesh.services.sessions import RequestContext

if TYPE_CHECKING:
    from tokmesh.api.deps import ApiDeps

log = logging.getLogger("tokmesh.http")

SCOPE_OPEN = "open"

Handler = Callable[["Call"], Awaitable[HttpResponse]]


@attrs.frozen
class Route:
    """One route: method, path template, handler, auth scope and permission."""

    method: str
    path: str
    handler: Handler
    scope: str
    permission: str | None = None
    hot: bool = False
    summary: str = ""
    request_schema: dict[str, Any] | None = None
    response_schema: dict[str, Any] | None = None
    success_status: int = 200
    audit_action: str | None = None
    #: business POSTs are audited as writes (02 §16) unless they only read
    audited: bool = True


class Call:
    """Everything a handler needs about one request."""

    __slots__ = ("_query", "client_ip", "deps", "params", "principal", "req", "rid", "route")

    def __init__(
        self,
        req: HttpRequest,
        route: Route,
        params: dict[str, str],
        deps: ApiDeps,
        rid: str,
    ) -> None:
        self.req = req
        self.route = route
        self.params = params
        self.deps = deps
        self.rid = rid
        self.client_ip = req.peer_ip
        self.principal: Principal | None = None
        self._query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        """Parsed query parameters (unknown ones are ignored by handlers)."""
        if self._query is None:
            self._query = query_params(self.req.query)
        return self._query

    def context(self) -> RequestContext:
        """The service-layer request context."""
        ua = self.req.get_header(b"user-agent")
        p = self.principal
        return RequestContext(
            request_id=self.rid,
            key_id=p.key_id if p else "",
            role=p.role if p else "",
            client_ip=self.client_ip,
            user_agent=ua.decode("latin-1") if ua else "",
        )


#: Every header the auth pipeline reads: credentials (02 §4), client IP behind trusted
#: proxies (02 §5) and anti-replay (02 §11). Only these are decoded per request.
AUTH_HEADERS: Final = {
    name.encode("latin-1"): name
    for name in (
        "authorization",
        "x-api-key",
        "x-api-key-id",
        "forwarded",
        "x-forwarded-for",
        "x-real-ip",
        "x-timestamp",
        "x-nonce",
    )
}


def auth_headers(req: HttpRequest) -> dict[str, str]:
    """The auth-relevant headers of ``req`` (lower-case names; the first occurrence wins)."""
    out: dict[str, str] = {}
    wanted = AUTH_HEADERS
    for name, value in req.headers:
        key = wanted.get(name)
        if key is not None and key not in out:
            out[key] = value.decode("latin-1")
    return out


_PARAM = re.compile(r"\{([a-z_]+)\}")


class Router:
    """Exact-path lookup for static routes, regexes for templated ones."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._static: dict[str, dict[str, Route]] = {}
        self._dynamic: list[tuple[re.Pattern[str], dict[str, Route]]] = []
        by_template: dict[str, dict[str, Route]] = {}
        for r in routes:
            by_template.setdefault(r.path, {})[r.method] = r
        for template, methods in by_template.items():
            if "{" not in template:
                self._static[template] = methods
            else:
                rx = "^" + _PARAM.sub(lambda m: f"(?P<{m.group(1)}>[^/]+)", template) + "$"
                self._dynamic.append((re.compile(rx), methods))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for ``method path`` or ``TokMeshError`` 404/405 (with ``Allow``)."""
        methods = self._static.get(path)
        params: dict[str, str] = {}
        if methods is None:
            for rx, cand in self._dynamic:
                m = rx.match(path)
                if m is not None:
                    methods = cand
                    params = _decode_params(m.groupdict())
                    break
        if methods is None:
            raise TokMeshError(E.SYS_NOT_FOUND, "route not found")
        route = methods.get(method)
        if route is None:
            allow = ", ".join(sorted(methods))
            raise TokMeshError(E.SYS_METHOD_NOT_ALLOWED, headers={"Allow": allow})
        return route, params


def _decode_params(raw: dict[str, str]) -> dict[str, str]:
    from urllib.parse import unquote

    out = {}
    for k, v in raw.items():
        v = unquote(v)
        # IDs are case-insensitive on input, lower-case on output (03 §2.1).
        out[k] = v.lower() if k in ("session_id", "key_id") else v
    return out


class Api:
    """Runs the pipeline for one request against the route table."""

    def __init__(self, deps: ApiDeps, routes: list[Route]) -> None:
        self.deps = deps
        self.router = Router(routes)

    def is_hot(self, method: str, path: str) -> bool:
        """True for routes the native front serves inline (no ASGI hop)."""
        try:
            route, _ = self.router.match(method, path)
        except TokMeshError:
            return True  # 404/405 are cheap to answer inline
        return route.hot

    async def handle(
        self,
        req: HttpRequest,
        matched: tuple[Route, dict[str, str]] | None = None,
    ) -> HttpResponse:
        """Answer one request (``matched`` = an already routed request); never raises."""
        rid = request_id_for(req)
        started = time.perf_counter()
        route: Route | None = None
        call: Call | None = None
        try:
            route, params = matched or self.router.match(req.method, req.path)
            call = Call(req, route, params, self.deps, rid)
            resp = await self._run(call)
        except TokMeshError as exc:
            # Every error, /metrics 401/403 included, is a full envelope (03 §2.2, D-2;
            # 02 §6.1 only says /metrics needs no body, which does not forbid one).
            resp = exception_response(rid, exc)
        except Exception:
            log.exception("unhandled error", extra={"request_id": rid})
            resp = error_response(rid, E.SYS_INTERNAL)
        if route is not None:
            self.deps.observe(route, req, resp, started, call)
        return resp

    async def _run(self, call: Call) -> HttpResponse:
        route = call.route
        deps = self.deps
        scope = route.scope
        if scope == SCOPE_OPEN:
            return await route.handler(call)
        req = call.req
        if scope == SCOPE_METRICS and not deps.auth.metrics_auth_required:
            return await route.handler(call)
        readiness = deps.readiness
        if not readiness.ready and readiness.phase.value in ("starting", "recovering"):
            # Keys are not loaded yet: answer 503 rather than a misleading 401.
            raise TokMeshError(E.SYS_UNAVAILABLE, "service not ready", {"status": "not_ready"})
        headers = auth_headers(req)
        call.client_ip = deps.auth.resolve_client_ip(req.peer_ip, headers)
        call.principal = await deps.auth.authorize_http(
            req.method,
            headers,
            call.client_ip,
            scope,
            route.permission,
            tcp_remote_ip=req.peer_ip,
        )
        if scope == SCOPE_BUSINESS:
            readiness.require_serving()  # maintenance gate: 503 TM-ADMIN-5031 while restoring
        resp = await route.handler(call)
        if scope == SCOPE_ADMIN or (
            scope == SCOPE_BUSINESS and req.method == "POST" and route.audited
        ):
            deps.audit_request(call, resp)
        return resp


__all__ = ["SCOPE_ADMIN", "SCOPE_BUSINESS", "SCOPE_METRICS", "SCOPE_OPEN", "Api", "Call", "Route"]
