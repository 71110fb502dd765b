"""The route table and the request pipeline shared by every HTTP engine.

Each route's logic is written once as ``async def handler(call: Call) -> HttpResponse``,
or as a plain ``def`` when it never waits (reads such as ``GET /sessions/{id}``). The
native Trio front serves the hot routes by calling :meth:`Api.handle` directly, and plain
routes through :meth:`Api.handle_now` from its connection multiplexer, without a task
switch (``tokmesh.api.http_mux``); the Quart-Trio app hosts the same :class:`Api` for
everything else and, under ``server.http.engine: hypercorn``, for every route.

Pipeline order (03 §2.10): request id → recover → routing (404/405) → readiness →
client IP → authentication, rate limit, role, anti-replay → maintenance gate → audit →
handler.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, cast

import attrs

from tokmesh.api.envelope import query_params
from tokmesh.api.http_errors import exception_response
from tokmesh.api.http_request_id import request_id_for
from tokmesh.api.http_types import Deferred, HttpRequest, HttpResponse
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.services.auth import (
    SCOPE_ADMIN,
    SCOPE_BUSINESS,
    SCOPE_METRICS,
    CredentialReader,
    Principal,
)
from tokmesh.services.session_ops import NotLocal, RequestContext, run_fetching

if TYPE_CHECKING:
    from tokmesh.api.deps import ApiDeps

log = logging.getLogger("tokmesh.http")

SCOPE_OPEN = "open"

Handler = Callable[["Call"], Awaitable[HttpResponse]]
NowHandler = Callable[["Call"], HttpResponse]
"""A handler that never waits: it can answer inside the native front's multiplexer."""
SubmitHandler = Callable[["Call"], "HttpResponse | Deferred | None"]
"""The non-waiting twin of a mutation: the answer, a :class:`Deferred` its commit
completes, or None when the request must take the awaiting path after all."""
FailureRenderer = Callable[[HttpRequest, str, TokMeshError], HttpResponse]
"""Renders a :class:`TokMeshError` raised while serving a route: ``(request, rid, error)``."""


@attrs.frozen
class Route:
    """One route: method, path template, handler, auth scope and permission.

    ``handler`` is an ``async def`` or a plain ``def`` (a handler that never waits). An
    async handler may name a plain twin in ``now`` for the requests ``now_if`` accepts
    (``POST /tokens/validate`` without ``touch``). :attr:`run` is the handler to await
    and :attr:`now_handler` the one to call without waiting (None when there is none).
    """

    method: str
    path: str
    handler: Handler | NowHandler
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
    now: SubmitHandler | None = None
    now_if: Callable[[HttpRequest], bool] | None = None
    #: how the caller's API key is read (None: the usual headers, ``parse_credentials``);
    #: the OAuth 2.0 routes also accept HTTP Basic, as OAuth clients send it
    credentials: CredentialReader | None = None
    #: how this route's errors look (None: the TokMesh error envelope); the OAuth 2.0
    #: routes answer the ``{"error", "error_description"}`` bodies their clients parse
    failure: FailureRenderer | None = None
    #: part of the HTTP API described by ``/openapi.json`` (the dashboard's static
    #: files are served beside the API, not part of it)
    documented: bool = True
    run: Handler = attrs.field(init=False)
    now_handler: SubmitHandler | None = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        now: SubmitHandler | None
        if inspect.iscoroutinefunction(self.handler):
            run, now = cast(Handler, self.handler), self.now
        else:
            now = cast(NowHandler, self.handler)
            run = _awaitable(now)
        object.__setattr__(self, "run", run)
        object.__setattr__(self, "now_handler", now)


def _awaitable(now: NowHandler) -> Handler:
    """A plain handler as an async one (for the pipeline's awaiting path)."""

    async def run(call: Call) -> HttpResponse:
        return now(call)

    return run


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


def _failure(
    rid: str, exc: Exception, route: Route | None = None, req: HttpRequest | None = None
) -> HttpResponse:
    """The answer when the pipeline raised ``exc``.

    Every error, /metrics 401/403 included, is a full envelope (03 §2.2, D-2; 02 §6.1
    only says /metrics needs no body, which does not forbid one), unless the route
    renders its own (``Route.failure``) and was already matched.
    """
    if not isinstance(exc, TokMeshError):
        log.error("unhandled error", exc_info=exc, extra={"request_id": rid})
        exc = TokMeshError(E.SYS_INTERNAL)
    if route is not None and route.failure is not None and req is not None:
        return route.failure(req, rid, exc)
    return exception_response(rid, exc)


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
        except Exception as exc:
            resp = _failure(rid, exc, route, req)
        if route is not None:
            self.deps.observe(route, req, resp, started, call)
        return resp

    def handle_now(
        self,
        req: HttpRequest,
        matched: tuple[Route, dict[str, str]] | None = None,
    ) -> HttpResponse | Deferred | None:
        """:meth:`handle` without waiting, or None when the request needs to wait.

        None means nothing was changed: the route has no plain handler (or ``now_if``
        declines the request), the API key is not in the validation cache (Argon2 runs
        in a worker thread), or the handler declined after authorization (data on
        another node; then the request carries its principal, so :meth:`handle` does
        not authorize it twice). The caller then awaits :meth:`handle`. A mutation's
        answer may be a :class:`Deferred` that its commit completes, already audited
        and observed. Every answer given here is the one :meth:`handle` would give.
        """
        rid = request_id_for(req)
        started = time.perf_counter()
        route: Route | None = None
        call: Call | None = None
        try:
            route, params = matched or self.router.match(req.method, req.path)
            now = route.now_handler
            if now is None or (route.now_if is not None and not route.now_if(req)):
                return None
            call = Call(req, route, params, self.deps, rid)
            answer = self._run_now(call, now)
            if answer is None:
                return None
            if isinstance(answer, Deferred):
                return self._finish_later(answer, call, started)
            resp = answer
        except Exception as exc:
            resp = _failure(rid, exc, route, req)
        if route is not None:
            self.deps.observe(route, req, resp, started, call)
        return resp

    def _finish_later(self, pending: Deferred, call: Call, started: float) -> Deferred:
        """The rest of the pipeline (audit, observation) once ``pending`` completes."""
        out = Deferred()

        def finish(value: HttpResponse | BaseException) -> None:
            if isinstance(value, HttpResponse):
                resp = value
                self._audit(call, resp)
            else:
                resp = _failure(call.rid, value, call.route, call.req)  # type: ignore[arg-type]
            self.deps.observe(call.route, call.req, resp, started, call)
            out.resolve(resp)

        pending.then(finish)
        return out

    async def _run(self, call: Call) -> HttpResponse:
        route = call.route
        headers = self._before_auth(call)
        if headers is None:
            return await run_fetching(lambda: route.run(call))
        req = call.req
        authorized = req.authorized
        if isinstance(authorized, Principal):
            req.authorized = None
            call.principal = authorized
        else:
            call.principal = await self.deps.auth.authorize_http(
                req.method,
                headers,
                call.client_ip,
                route.scope,
                route.permission,
                tcp_remote_ip=req.peer_ip,
                credentials=route.credentials,
            )
        self._after_auth(call)
        resp = await run_fetching(lambda: route.run(call))
        self._audit(call, resp)
        return resp

    def _run_now(self, call: Call, now: SubmitHandler) -> HttpResponse | Deferred | None:
        """:meth:`_run` with a plain handler; None on a validation-cache miss."""
        headers = self._before_auth(call)
        if headers is None:
            return now(call)
        req = call.req
        route = call.route
        principal = self.deps.auth.authorize_http_now(
            req.method,
            headers,
            call.client_ip,
            route.scope,
            route.permission,
            tcp_remote_ip=req.peer_ip,
            credentials=route.credentials,
        )
        if principal is None:
            return None
        call.principal = principal
        self._after_auth(call)
        try:
            resp = now(call)
        except NotLocal:
            resp = None  # the data is on another node: handle() fetches it, awaiting
        if resp is None:
            req.authorized = principal
            return None
        if isinstance(resp, HttpResponse):
            self._audit(call, resp)
        return resp

    def _before_auth(self, call: Call) -> dict[str, str] | None:
        """Readiness and client IP; the auth headers, or None for an unauthenticated route."""
        scope = call.route.scope
        deps = self.deps
        if scope == SCOPE_OPEN:
            return None
        if scope == SCOPE_METRICS and not deps.auth.metrics_auth_required:
            return None
        if deps.readiness.loading:
            # Keys are not loaded yet: answer 503 rather than a misleading 401.
            raise TokMeshError(E.SYS_UNAVAILABLE, "service not ready", {"status": "not_ready"})
        headers = auth_headers(call.req)
        call.client_ip = deps.auth.resolve_client_ip(call.req.peer_ip, headers)
        return headers

    def _after_auth(self, call: Call) -> None:
        if call.route.scope == SCOPE_BUSINESS:
            # maintenance gate: 503 TM-ADMIN-5031 while restoring
            self.deps.readiness.require_serving()

    def _audit(self, call: Call, resp: HttpResponse) -> None:
        scope = call.route.scope
        if scope == SCOPE_ADMIN or (
            scope == SCOPE_BUSINESS and call.req.method == "POST" and call.route.audited
        ):
            self.deps.audit_request(call, resp)


__all__ = [
    "SCOPE_ADMIN",
    "SCOPE_BUSINESS",
    "SCOPE_METRICS",
    "SCOPE_OPEN",
    "Api",
    "Call",
    "CredentialReader",
    "FailureRenderer",
    "NowHandler",
    "Route",
    "SubmitHandler",
]
