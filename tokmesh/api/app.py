"""Assembling the HTTP application: route table, native front, Quart-Trio host.

- :func:`build_api` puts every route of the modules in one :class:`Api`.
- :class:`NativeFront` is what TokMesh's own Trio/httptools server calls: hot routes
  (and 404/405) are answered inline; everything else goes through the ASGI bridge to
  the Quart-Trio app (DESIGN §3).
- :func:`create_quart_app` hosts the same :class:`Api` in Quart-Trio: used behind the
  bridge, and as the whole application under ``server.http.engine: hypercorn``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import quart
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import PathConverter

from tokmesh.api.admin import admin_routes
from tokmesh.api.admin_config import config_routes
from tokmesh.api.backups import backup_routes
from tokmesh.api.business import business_routes
from tokmesh.api.deps import ApiDeps
from tokmesh.api.events_ws import events_routes
from tokmesh.api.http_errors import error_response
from tokmesh.api.http_request_id import request_id_from_headers
from tokmesh.api.http_types import Deferred, HttpRequest, HttpResponse
from tokmesh.api.oauth2 import oauth2_routes
from tokmesh.api.ops import ops_routes
from tokmesh.api.routes import Api, Route
from tokmesh.domain.errors import E, TokMeshError

RouteFactory = Callable[[], list[Route]]


def build_api(deps: ApiDeps, extra: list[RouteFactory] | None = None) -> Api:
    """The :class:`Api` with every route (plus ``extra`` route factories)."""
    routes: list[Route] = []
    factories: list[RouteFactory] = [
        ops_routes,
        business_routes,
        admin_routes,
        config_routes,
        backup_routes,
        oauth2_routes,
        events_routes,
        *(extra or []),
    ]
    config = deps.config
    if config is None or config.server.http.ui.enabled:
        from tokmesh.ui.serve import ui_routes

        # The dashboard's static files, served beside the API (not documented in it).
        factories.append(ui_routes)
    for factory in factories:
        routes.extend(factory())
    api = Api(deps, routes)
    from tokmesh.api.openapi import openapi_routes

    api.router = type(api.router)(routes + openapi_routes(api))
    return api


class NativeFront:
    """The handler given to ``serve_http``: inline hot path, ASGI bridge for the rest."""

    def __init__(self, api: Api, bridge: Callable[[HttpRequest], Any]) -> None:
        self.api = api
        self.bridge = bridge
        self._match = api.router.match

    async def __call__(self, req: HttpRequest) -> HttpResponse:
        try:
            matched = self._match(req.method, req.path)
        except TokMeshError:
            return await self.api.handle(req)  # 404 / 405 rendered inline
        if matched[0].hot:
            return await self.api.handle(req, matched)
        resp: HttpResponse = await self.bridge(req)
        return resp

    def now(self, req: HttpRequest) -> HttpResponse | Deferred | None:
        """The answer to ``req`` without waiting, or None (then await the front itself).

        Used by the connection multiplexer (``tokmesh.api.http_mux``): hot routes with a
        plain handler, and 404/405, are answered on the spot; see :meth:`Api.handle_now`.
        """
        try:
            matched = self._match(req.method, req.path)
        except TokMeshError:
            return self.api.handle_now(req)  # 404 / 405 rendered on the spot
        if not matched[0].hot:
            return None
        return self.api.handle_now(req, matched)


class BodyLimit:
    """ASGI middleware enforcing ``server.http.max_body_size`` in front of Quart.

    Used for ``server.http.engine: hypercorn``. Quart's own limit is raised inside its
    receive task for chunked bodies, which leaves the request hanging; here the body is
    counted as it arrives and an oversize request gets the 413 ``TM-ADMIN-4130`` envelope
    at once (Content-Length is checked before reading anything).
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = list(scope.get("headers", []))
        for name, value in headers:
            if name.lower() == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._too_large(headers, send)
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.limit:
                await self._too_large(headers, send)
                return
            chunks.append(body)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            message: dict[str, Any] = await receive()
            return message

        await self.app(scope, replay, send)

    async def _too_large(self, headers: list[tuple[bytes, bytes]], send: Any) -> None:
        rid = request_id_from_headers(headers)
        resp = error_response(rid, E.ADMIN_TOO_LARGE, details={"max_body_size": self.limit})
        raw = [(k.lower().encode(), v.encode()) for k, v in resp.headers]
        raw.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": resp.status, "headers": raw})
        await send({"type": "http.response.body", "body": resp.body, "more_body": False})


class AnyPathConverter(PathConverter):
    """Matches every path, control characters included (Werkzeug's ``path`` stops at a
    newline, which would leave Quart's HTML 404 instead of the route table's envelope)."""

    regex = r"[\s\S]*"
    # Werkzeug infers segment isolation from a "/" in the regex; this one spans segments.
    part_isolating = False


ALL_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]


def create_quart_app(api: Api, max_body_size: int = 100 << 20) -> QuartTrio:
    """A Quart-Trio app serving ``api`` (every method, every path; routing is the Api's)."""
    app = QuartTrio("tokmesh", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = max_body_size
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    async def dispatch(path: str = "") -> quart.Response:
        request = quart.request
        scope = request.scope
        try:
            body = await request.get_data(cache=False)
        except RequestEntityTooLarge:
            rid = request_id_from_headers(list(scope.get("headers", [])))
            too_big = error_response(
                rid, E.ADMIN_TOO_LARGE, details={"max_body_size": max_body_size}
            )
            return quart.Response(
                too_big.body, status=too_big.status, headers=Headers(too_big.headers)
            )
        raw_path = scope.get("raw_path") or request.path.encode()
        headers = [(name.lower(), value) for name, value in scope.get("headers", [])]
        client = scope.get("client") or ("", 0)
        server = scope.get("server") or ("", 0)
        hreq = HttpRequest(
            request.method,
            raw_path.decode("latin-1"),
            scope.get("query_string", b"").decode("latin-1"),
            headers,
            body if isinstance(body, bytes) else body.encode(),
            peer_ip=client[0] or "",
            peer_port=client[1] or 0,
            server_ip=server[0] or "" if server else "",
            server_port=(server[1] or 0) if server else 0,
            http_version=scope.get("http_version", "1.1"),
            tls=scope.get("scheme") == "https",
        )
        resp = await api.handle(hreq)
        if resp.body_iter is not None:
            return quart.Response(resp.body_iter, status=resp.status, headers=Headers(resp.headers))
        return quart.Response(resp.body, status=resp.status, headers=Headers(resp.headers))

    app.add_url_rule("/", "root", dispatch, methods=ALL_METHODS, provide_automatic_options=False)
    app.url_map.converters["anypath"] = AnyPathConverter
    app.add_url_rule(
        "/<anypath:path>",
        "dispatch",
        dispatch,
        methods=ALL_METHODS,
        provide_automatic_options=False,
    )
    return app
