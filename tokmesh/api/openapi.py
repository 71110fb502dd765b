"""The OpenAPI 3.1 document (``GET /openapi.json``) and its HTML rendering (``GET /docs``).

The document is generated from the live route table, so a route cannot be served without
being documented: each route gets its method and path from its :class:`Route` record and
its wire shapes from :data:`tokmesh.api.openapi_schemas.OPERATIONS`. The errors of an
operation are those of its scope (authentication, rate limit, readiness, strict bodies)
plus its own, each status with the exact list of codes it can carry.

The docs page is rendered on the server from the same document: plain HTML with inline
CSS, no scripts, no fonts, nothing fetched from the network.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import orjson

from tokmesh import __version__
from tokmesh.api.http_types import HttpResponse
from tokmesh.api.openapi_schemas import (
    DEFAULT_TTL_MAX_SECONDS,
    OPERATIONS,
    OpDoc,
    Param,
    Schema,
    component_schemas,
    ref,
)
from tokmesh.api.routes import SCOPE_ADMIN, SCOPE_BUSINESS, SCOPE_METRICS, SCOPE_OPEN, Call, Route
from tokmesh.domain.errors import E, ErrorCode

if TYPE_CHECKING:
    from tokmesh.api.routes import Api

_STATUS_TEXT: Final = {
    400: "Bad request",
    401: "Authentication failed",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    422: "Unprocessable payload",
    429: "Too many requests",
    500: "Internal error",
    501: "Not implemented",
    503: "Service unavailable",
    504: "Timeout",
}

_DESCRIPTION: Final = """\
TokMesh stores login sessions and validates their opaque tokens.

**Envelope.** Every JSON response is `{code, message, request_id, timestamp, data}` on
success (`code` = `OK`) and `{code, message, request_id, timestamp, details?}` on error
(`code` = `TM-<MODULE>-<NNNN>`, also in the `X-Error-Code` header). `request_id` equals
the `X-Request-ID` header, which is on every response. Timestamps are Unix milliseconds.

**Requests.** Only GET and POST; another method on a known path is 405 `TM-SYS-4050`
with `Allow`; an unknown path is 404 `TM-SYS-4040`. JSON bodies are strict: invalid
JSON, a wrong type or an unknown field is 400 `TM-SYS-4000`; an empty body equals `{}`.
A body over `server.http.max_body_size` is 413 `TM-ADMIN-4130`. Lists take `page` (≥ 1)
and `size` (1..100) and answer `{items, total_items, page, size}`.

**Authentication.** `Authorization: Bearer <key_id>:<key_secret>`, or
`X-API-Key: <key_id>:<key_secret>`, or the legacy pair `X-API-Key-ID: <key_id>` +
`X-API-Key: <key_secret>`. Roles: metrics < validator < issuer < admin. Each key has a
token-bucket rate limit (429 `TM-SYS-4290` with `Retry-After`). A POST carrying
`X-Timestamp` (Unix ms, ±30 s) or `X-Nonce` is checked against replay.
"""

_JSON: Final = "application/json"


def _error_response(status: int, codes: list[ErrorCode]) -> Schema:
    """One error status of an operation: the envelope with exactly ``codes``."""
    headers: dict[str, Any] = {
        "X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"},
        "X-Error-Code": {"$ref": "#/components/headers/X-Error-Code"},
    }
    if status == 405:
        headers["Allow"] = {"$ref": "#/components/headers/Allow"}
    if status == 429 or any(c in (E.SESS_CONFLICT, E.ADMIN_THROTTLED) for c in codes):
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    if E.SYS_RATE_LIMITED in codes:
        for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
            headers[name] = {"$ref": f"#/components/headers/{name}"}
    lines = "; ".join(f"`{c.code}` {c.message}" for c in codes)
    return {
        "description": f"{_STATUS_TEXT.get(status, 'Error')}: {lines}",
        "headers": headers,
        "content": {
            _JSON: {
                "schema": {
                    "allOf": [
                        ref("ErrorEnvelope"),
                        {"properties": {"code": {"enum": [c.code for c in codes]}}},
                    ]
                }
            }
        },
    }


#: Statuses answered before a route is known (routing, the body limit): always enveloped.
_FRONT_STATUSES: Final = frozenset({405, 413})


def _own_error_response(status: int, codes: list[ErrorCode], schema: Schema) -> Schema:
    """An error status of a route that renders its own error bodies (``OpDoc.error_schema``):
    ``schema`` as the body, the codes listed in ``X-Error-Code``."""
    envelope = _error_response(status, codes)
    headers = dict(envelope["headers"])
    headers["X-Error-Code"] = {
        "description": "The TokMesh error code behind the answer",
        "required": True,
        "schema": {"type": "string", "enum": [c.code for c in codes]},
    }
    if status == 401:
        headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate"}
    return {
        "description": envelope["description"],
        "headers": headers,
        "content": {_JSON: {"schema": schema}},
    }


def operation_errors(route: Route, op: OpDoc | None) -> dict[int, list[ErrorCode]]:
    """Every error status ``route`` can answer, with its codes (03 §2.6-§2.12)."""
    codes: list[ErrorCode] = [E.SYS_INTERNAL, E.SYS_METHOD_NOT_ALLOWED]
    post = route.method == "POST"
    if "{" in route.path:
        codes.append(E.SYS_NOT_FOUND)  # an empty path segment matches no route
    if route.scope != SCOPE_OPEN:
        # Until recovery finished the keys are unknown: 503 rather than a false 401.
        codes += [E.AUTH_MISSING, E.AUTH_INVALID, E.AUTH_DISABLED, E.SYS_RATE_LIMITED]
        codes.append(E.SYS_UNAVAILABLE)
    if route.scope == SCOPE_METRICS:
        codes.append(E.AUTH_FORBIDDEN)
    if route.scope in (SCOPE_BUSINESS, SCOPE_ADMIN):
        if route.scope == SCOPE_BUSINESS:
            codes += [E.AUTH_FORBIDDEN, E.AUTH_IP_DENIED, E.ADMIN_MAINTENANCE]
        else:
            codes += [E.ADMIN_FORBIDDEN, E.ADMIN_IP_DENIED]
        if post:
            # Strict body, body limit, anti-replay (X-Nonce format is TM-ARG-1001), writes.
            codes += [E.SYS_BAD_REQUEST, E.ADMIN_TOO_LARGE, E.ARG_INVALID]
            codes += [E.AUTH_TIMESTAMP, E.AUTH_NONCE_REUSED, E.SYS_STORAGE]
    if op is not None:
        codes += list(op.errors)
    pairs = [(c.http_status, c) for c in codes]
    if op is not None:
        pairs += list(op.status_overrides)
    by_status: dict[int, list[ErrorCode]] = {}
    for status, c in pairs:
        bucket = by_status.setdefault(status, [])
        if c not in bucket:
            bucket.append(c)
    for bucket in by_status.values():
        bucket.sort(key=lambda c: c.code)
    return dict(sorted(by_status.items()))


def _success_envelope(data: Schema) -> Schema:
    return {
        "type": "object",
        "required": ["code", "message", "request_id", "timestamp", "data"],
        "additionalProperties": False,
        "properties": {
            "code": {"const": "OK"},
            "message": {"const": "Success"},
            "request_id": ref("RequestId"),
            "timestamp": {"type": "integer", "minimum": 0},
            "data": data,
        },
    }


def _param(p: Param) -> Schema:
    out: Schema = {"name": p.name, "in": p.location, "schema": p.schema}
    if p.description:
        out["description"] = p.description
    if p.required or p.location == "path":
        out["required"] = True
    return out


_PATH_PARAM_DOCS: Final = {
    "session_id": "Session ID `tmss-…` (case-insensitive; unknown or malformed: 404)",
    "key_id": "API key ID `tmak-…` (case-insensitive)",
    "user_id": "User ID, verbatim (URL-decoded)",
    "node_id": "Node ID `tmnd-…`, verbatim",
    "snapshot_id": "Snapshot ID, verbatim",
    "job_id": "Restore job ID, verbatim",
}
_PATH_PARAM_RE: Final = re.compile(r"\{([A-Za-z_]+)\}")


def _fallback_id(route: Route) -> str:
    words = re.split(r"[^A-Za-z0-9]+", f"{route.method.lower()} {route.path}")
    words = [w for w in words if w]
    return words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])


def _fallback_tag(path: str) -> str:
    if path.startswith("/admin/"):
        return "Admin"
    return path.strip("/").split("/")[0].capitalize() or "Other"


def build_operation(route: Route, op: OpDoc | None) -> Schema:
    """The OpenAPI operation object of one route."""
    operation: Schema = {
        "operationId": op.operation_id if op else _fallback_id(route),
        "tags": [op.tag if op else _fallback_tag(route.path)],
        "summary": route.summary or route.path,
    }
    desc = op.description if op else ""
    if op is not None and op.roles:
        desc = (desc + "\n\n" if desc else "") + "Roles: " + ", ".join(op.roles) + "."
        operation["x-tokmesh-roles"] = list(op.roles)
    if desc:
        operation["description"] = desc
    params: list[Schema] = [
        _param(Param(name, {"type": "string"}, _PATH_PARAM_DOCS.get(name, ""), "path"))
        for name in _PATH_PARAM_RE.findall(route.path)
    ]
    params += [_param(p) for p in (op.query if op else ())]
    params.append({"$ref": "#/components/parameters/X-Request-ID"})
    authenticated = route.scope != SCOPE_OPEN
    if authenticated and route.method == "POST" and route.scope != SCOPE_METRICS:
        params.append({"$ref": "#/components/parameters/X-Timestamp"})
        params.append({"$ref": "#/components/parameters/X-Nonce"})
    operation["parameters"] = params
    if route.method == "POST":
        body = op.body if op and op.body else None
        if body is None and op is None:
            body = {"type": "object"}
        if body is not None:
            media = op.body_media if op else _JSON
            content: dict[str, Any] = {media: {"schema": body}}
            for more, schema in op.more_bodies if op else ():
                content[more] = {"schema": schema}
            about = "JSON object (strict: unknown fields are 400 TM-SYS-4000)"
            if media != _JSON:
                about = f"{media} (a parameter sent twice is 400; unknown ones are ignored)"
            operation["requestBody"] = {
                "required": bool(op and op.body_required),
                "description": about,
                "content": content,
            }
    schemes = [*(op.more_security if op else ()), "bearerAuth", "apiKeyAuth"]
    operation["security"] = [{name: []} for name in schemes] if authenticated else []
    ok: Schema = {
        "description": "Success",
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
    }
    for name, header in op.success_headers if op else ():
        ok["headers"][name] = header
    if op is not None and op.empty_success:
        pass  # no body at all
    elif op is not None and op.media_schema is not None:
        ok["content"] = {op.media: {"schema": op.media_schema}}  # not an envelope
    else:
        data = op.data if op is not None and op.data is not None else {"type": "object"}
        ok["content"] = {_JSON: {"schema": _success_envelope(data)}}
    responses: dict[str, Any] = {str(route.success_status): ok}
    for status in op.more_success if op else ():
        responses[str(status)] = {**ok, "description": f"Success ({status})"}
    own = op.error_schema if op is not None else None
    for status, codes in operation_errors(route, op).items():
        if own is not None and status not in _FRONT_STATUSES:
            responses[str(status)] = _own_error_response(status, codes, own)
        else:
            responses[str(status)] = _error_response(status, codes)
    operation["responses"] = responses
    return operation


def _components(ttl_max_seconds: int) -> Schema:
    string: Schema = {"type": "string"}
    return {
        "schemas": component_schemas(ttl_max_seconds),
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "<key_id>:<key_secret>",
                "description": "Authorization: Bearer tmak-…:tmas_… (recommended)",
            },
            "basicAuth": {
                "type": "http",
                "scheme": "basic",
                "description": (
                    "OAuth 2.0 routes only: client_id = key_id, client_secret = key_secret, "
                    "each form-urlencoded before base64 (RFC 6749 §2.3.1)"
                ),
            },
            "apiKeyAuth": {
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": (
                    "X-API-Key: <key_id>:<key_secret>; or the legacy pair "
                    "X-API-Key-ID: <key_id> with X-API-Key: <key_secret>"
                ),
            },
        },
        "headers": {
            "X-Request-ID": {
                "description": "The request's ID (the client's value if 1-128 printable ASCII)",
                "required": True,
                "schema": {**string, "minLength": 1, "maxLength": 128},
            },
            "X-Error-Code": {
                "description": "The error code of the envelope",
                "required": True,
                "schema": ref("ErrorCode"),
            },
            "WWW-Authenticate": {
                "description": 'The challenge of an OAuth 2.0 401: Basic realm="tokmesh" '
                '(Bearer realm="tokmesh" when a Bearer credential was sent)',
                "required": True,
                "schema": string,
            },
            "Allow": {
                "description": "The methods the path serves",
                "required": True,
                "schema": string,
            },
            "Retry-After": {
                "description": "Seconds to wait (integer ≥ 1)",
                "schema": {"type": "integer", "minimum": 1},
            },
            "X-RateLimit-Limit": {
                "description": "The key's rate limit per second",
                "schema": {"type": "integer", "minimum": 1},
            },
            "X-RateLimit-Remaining": {
                "description": "Requests left now (0)",
                "schema": {"type": "integer", "minimum": 0},
            },
            "X-RateLimit-Reset": {
                "description": "Unix seconds when a request is allowed again",
                "schema": {"type": "integer", "minimum": 0},
            },
        },
        "parameters": {
            "X-Request-ID": {
                "name": "X-Request-ID",
                "in": "header",
                "description": (
                    "Echoed if 1-128 printable ASCII characters; any other value is replaced "
                    "by a generated req-… ID"
                ),
                "schema": string,
            },
            "X-Timestamp": {
                "name": "X-Timestamp",
                "in": "header",
                "description": (
                    "Anti-replay: Unix ms within ±30 s of the server clock (else 401 "
                    "TM-AUTH-4014); checked when X-Timestamp or X-Nonce is present"
                ),
                "schema": {"type": "integer"},
            },
            "X-Nonce": {
                "name": "X-Nonce",
                "in": "header",
                "description": (
                    "Anti-replay: 1-256 characters, single use within 60 s (reuse: 401 "
                    "TM-AUTH-4015; bad format: 400 TM-ARG-1001)"
                ),
                "schema": {**string, "minLength": 1, "maxLength": 256},
            },
        },
    }


def build_document(
    routes: Iterable[Route], *, ttl_max_seconds: int = DEFAULT_TTL_MAX_SECONDS
) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing ``routes`` (every route, schema and error)."""
    paths: dict[str, Any] = {}
    seen_ids: set[str] = set()
    tags: list[str] = []
    for route in routes:
        if not route.documented:
            continue
        op = OPERATIONS.get((route.method, route.path))
        operation = build_operation(route, op)
        base = operation["operationId"]
        n = 2
        while operation["operationId"] in seen_ids:
            operation["operationId"] = f"{base}{n}"
            n += 1
        seen_ids.add(operation["operationId"])
        for tag in operation["tags"]:
            if tag not in tags:
                tags.append(tag)
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "TokMesh HTTP API",
            "version": __version__,
            "description": _DESCRIPTION,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": _components(ttl_max_seconds),
    }


# --- the docs page ---------------------------------------------------------------------------

_CSS: Final = """
body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1d2330;background:#fafbfc}
main{max-width:1100px;margin:0 auto;padding:1rem 2rem 4rem}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #d8dde6;padding-top:1rem}
section.op{background:#fff;border:1px solid #d8dde6;border-radius:6px;margin:1rem 0;
padding:.5rem 1rem}
.m{display:inline-block;min-width:3.5rem;text-align:center;border-radius:4px;color:#fff;
font-weight:600;padding:0 .4rem;margin-right:.5rem}
.get{background:#2f6fb3}.post{background:#2e8b57}
code,pre{font-family:ui-monospace,monospace;font-size:13px}
pre{background:#f3f5f8;padding:.6rem;overflow:auto;border-radius:4px}
table{border-collapse:collapse;width:100%;margin:.4rem 0}
th,td{border:1px solid #e1e5ec;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f5f8}nav ul{columns:2}
"""

_REF_RE: Final = re.compile(r"&quot;#/components/schemas/([A-Za-z0-9_]+)&quot;")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _inline_md(text: str) -> str:
    """Escape, then render `code` and **bold** spans (the only markup we write)."""
    out = _e(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _paragraphs(text: str) -> str:
    return "".join(
        f"<p>{_inline_md(' '.join(p.split()))}</p>" for p in text.split("\n\n") if p.strip()
    )


def _schema_html(schema: Any) -> str:
    body = _e(json.dumps(schema, indent=2, ensure_ascii=False))
    return "<pre>" + _REF_RE.sub(r'&quot;<a href="#schema-\1">\1</a>&quot;', body) + "</pre>"


def _resolve(doc: dict[str, Any], obj: Any) -> Any:
    if isinstance(obj, dict) and "$ref" in obj:
        node: Any = doc
        for part in obj["$ref"].lstrip("#/").split("/"):
            node = node[part]
        return node
    return obj


def _operation_html(doc: dict[str, Any], method: str, path: str, op: dict[str, Any]) -> str:
    parts = [
        f'<section class="op" id="{_e(op["operationId"])}">',
        f'<h3><span class="m {method}">{method.upper()}</span><code>{_e(path)}</code></h3>',
        f"<p><strong>{_e(op.get('summary', ''))}</strong></p>",
        _paragraphs(op.get("description", "")),
    ]
    sec = op.get("security") or []
    auth = "none" if not sec else " or ".join(_e(next(iter(s))) for s in sec)
    parts.append(f"<p>Authentication: {auth}</p>")
    params = [_resolve(doc, p) for p in op.get("parameters", [])]
    if params:
        parts.append("<table><tr><th>Parameter</th><th>In</th><th>Schema</th><th>About</th></tr>")
        for p in params:
            req = " (required)" if p.get("required") else ""
            parts.append(
                f"<tr><td><code>{_e(p['name'])}</code>{req}</td><td>{_e(p['in'])}</td>"
                f"<td><code>{_e(json.dumps(p.get('schema', {})))}</code></td>"
                f"<td>{_e(p.get('description', ''))}</td></tr>"
            )
        parts.append("</table>")
    body = op.get("requestBody")
    if body:
        req = "required" if body.get("required") else "optional; empty body ≡ {}"
        parts.append(f"<p>Request body ({req}):</p>")
        for media, content in body["content"].items():
            parts.append(f"<p><code>{_e(media)}</code></p>{_schema_html(content['schema'])}")
    parts.append("<table><tr><th>Status</th><th>Meaning</th><th>Body</th></tr>")
    for status, resp in op["responses"].items():
        content = resp.get("content") or {}
        shown = "".join(
            f"<code>{_e(media)}</code>{_schema_html(c.get('schema', {}))}"
            for media, c in content.items()
            if status.startswith("2")
        )
        if not status.startswith("2") and content:
            # The envelope, or a route's own error body (the OAuth 2.0 routes).
            own = next(iter(content.values())).get("schema", {}).get("$ref", "")
            name = own.rsplit("/", 1)[-1] if own else "ErrorEnvelope"
            shown = f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
        parts.append(
            f"<tr><td>{_e(status)}</td><td>{_inline_md(resp['description'])}</td>"
            f"<td>{shown}</td></tr>"
        )
    parts.append("</table></section>")
    return "".join(parts)


def render_docs(doc: dict[str, Any]) -> str:
    """A self-contained HTML page listing every operation and schema of ``doc``."""
    info = doc["info"]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            by_tag.setdefault(op["tags"][0], []).append((method, path, op))
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{_e(info['title'])} {_e(info['version'])}</title><style>{_CSS}</style>",
        "</head><body><main>",
        f"<h1>{_e(info['title'])}</h1><p>Version {_e(info['version'])}, OpenAPI "
        f"{_e(doc['openapi'])}: <a href='/openapi.json'>/openapi.json</a></p>",
        _paragraphs(info.get("description", "")),
        "<h2>Authentication</h2><table><tr><th>Scheme</th><th>How</th></tr>",
    ]
    for name, scheme in doc["components"]["securitySchemes"].items():
        out.append(f"<tr><td><code>{_e(name)}</code></td><td>{_e(scheme['description'])}</td></tr>")
    out.append("</table><h2>Operations</h2><nav><ul>")
    for tag, ops in by_tag.items():
        for method, path, op in ops:
            out.append(
                f'<li><a href="#{_e(op["operationId"])}">{method.upper()} {_e(path)}</a> '
                f"({_e(tag)})</li>"
            )
    out.append("</ul></nav>")
    for tag, ops in by_tag.items():
        out.append(f"<h2>{_e(tag)}</h2>")
        out.extend(_operation_html(doc, m, p, op) for m, p, op in ops)
    out.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        out.append(f'<h3 id="schema-{_e(name)}">{_e(name)}</h3>{_schema_html(schema)}')
    out.append("</main></body></html>")
    return "".join(out)


def openapi_routes(api: Api) -> list[Route]:
    """``GET /openapi.json`` and ``GET /docs``, built from ``api``'s route table."""
    cache: dict[str, bytes] = {}

    def document() -> dict[str, Any]:
        svc = api.deps.sessions
        ttl_max = svc.settings.ttl_max_ms // 1000 if svc is not None else DEFAULT_TTL_MAX_SECONDS
        return build_document(api.router.routes, ttl_max_seconds=ttl_max)

    def cached(name: str, render: Any) -> bytes:
        body = cache.get(name)
        if body is None:
            body = render()
            # Cache only once the session service exists: its ttl max is in the document.
            if api.deps.sessions is not None:
                cache[name] = body
        return body

    async def openapi_json(call: Call) -> HttpResponse:
        body = cached("json", lambda: orjson.dumps(document()))
        headers = [("Content-Type", _JSON), ("X-Request-ID", call.rid)]
        return HttpResponse(200, headers, body)

    async def docs(call: Call) -> HttpResponse:
        body = cached("html", lambda: render_docs(document()).encode())
        headers = [("Content-Type", "text/html; charset=utf-8"), ("X-Request-ID", call.rid)]
        return HttpResponse(200, headers, body)

    return [
        Route("GET", "/openapi.json", openapi_json, SCOPE_OPEN, summary="OpenAPI document"),
        Route("GET", "/docs", docs, SCOPE_OPEN, summary="API documentation"),
    ]


__all__ = ["build_document", "build_operation", "openapi_routes", "operation_errors", "render_docs"]
