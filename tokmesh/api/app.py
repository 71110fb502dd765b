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

from tokmesh.api.admin import admin_routes
from tokmesh.api.admin_config import config_routes
from tokmesh.api.backups import backup_routes
from tokmesh.api.business import business_routes
from tokmesh.api.deps import ApiDeps
from tokmesh.api.http_types import HttpRequest, HttpResponse
from tokmesh.api.ops import ops_routes
from tokmesh.api.routes import Api, Route
from tokmesh.domain.errors import TokMeshError

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
        *(extra or []),
    ]
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


ALL_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]


def create_quart_app(api: Api, max_body_size: int = 100 << 20) -> QuartTrio:
    """A Quart-Trio app serving ``api`` (every method, every path; routing is the Api's)."""
    app = QuartTrio("tokmesh", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = max_body_size
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    async def dispatch(path: str = "") -> quart.Response:
        request = quart.request
        body = await request.get_data(cache=False)
        scope = request.scope
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
            return quart.Response(
                resp.body_iter, status=resp.status, headers=Headers(resp.headers)
            )
        return quart.Response(resp.body, status=resp.status, headers=Headers(resp.headers))

    app.add_url_rule("/", "root", dispatch, methods=ALL_METHODS, provide_automatic_options=False)
    app.add_url_rule(
        "/<path:path>",
        "dispatch",
        dispatch,
        methods=ALL_METHODS,
        provide_automatic_options=False,
    )
    return app
