"""OpenAPI 3.1 document built from the route table, and a small docs page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from tokmesh import __version__
from tokmesh.api.http_types import HttpResponse
from tokmesh.api.routes import SCOPE_OPEN, Call, Route

if TYPE_CHECKING:
    from tokmesh.api.routes import Api


def build_document(routes: list[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing ``routes``."""
    paths: dict[str, Any] = {}
    for r in routes:
        op: dict[str, Any] = {
            "operationId": f"{r.method.lower()}_{r.path.strip('/').replace('/', '_').replace('{', '').replace('}', '') or 'root'}",
            "summary": r.summary,
            "responses": {str(r.success_status): {"description": "Success"}},
        }
        params = [p.strip("{}") for p in r.path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ]
        if r.scope != SCOPE_OPEN:
            op["security"] = [{"bearer": []}]
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "TokMesh", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def openapi_routes(api: Api) -> list[Route]:
    """``GET /openapi.json`` and ``GET /docs``."""
    cache: dict[str, bytes] = {}

    async def openapi_json(call: Call) -> HttpResponse:
        body = cache.get("doc")
        if body is None:
            body = cache["doc"] = orjson.dumps(build_document(api.router.routes))
        return HttpResponse(200, [("Content-Type", "application/json"), ("X-Request-ID", call.rid)], body)

    async def docs(call: Call) -> HttpResponse:
        html = (
            "<!doctype html><html><head><meta charset='utf-8'><title>TokMesh API</title></head>"
            "<body><h1>TokMesh API</h1><p>The OpenAPI 3.1 document is at "
            "<a href='/openapi.json'>/openapi.json</a>.</p></body></html>"
        ).encode()
        return HttpResponse(200, [("Content-Type", "text/html; charset=utf-8"), ("X-Request-ID", call.rid)], html)

    return [
        Route("GET", "/openapi.json", openapi_json, SCOPE_OPEN, summary="OpenAPI document"),
        Route("GET", "/docs", docs, SCOPE_OPEN, summary="API documentation"),
    ]
