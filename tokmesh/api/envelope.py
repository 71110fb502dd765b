"""Success envelopes and strict JSON bodies (03 §2.2, §2.3).

Errors are rendered by :mod:`tokmesh.api.http_errors` (one place for the error shape);
this module renders successes and parses request bodies in strict mode.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl

import orjson

from tokmesh.api.http_types import HttpResponse
from tokmesh.domain.errors import E, TokMeshError

_JSON = ("Content-Type", "application/json")


def ok(
    request_id: str, data: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
) -> HttpResponse:
    """``{"code":"OK","message":"Success","request_id","timestamp","data"}``."""
    body = orjson.dumps(
        {
            "code": "OK",
            "message": "Success",
            "request_id": request_id,
            "timestamp": time.time_ns() // 1_000_000,
            "data": data,
        }
    )
    out = [_JSON, ("X-Request-ID", request_id)]
    if headers:
        out.extend(headers)
    return HttpResponse(status, out, body)


#: field -> (type or tuple of types, required)
Schema = dict[str, tuple[type | tuple[type, ...], bool]]


def parse_body(raw: bytes, schema: Schema) -> dict[str, Any]:
    """Strict body: empty ≡ ``{}``; invalid JSON, non-object, wrong type or unknown field
    → ``TM-SYS-4000``; a missing required field → ``TM-ARG-1002``."""
    if not raw or raw.isspace():
        doc: Any = {}
    else:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TokMeshError(E.SYS_BAD_REQUEST, "request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise TokMeshError(E.SYS_BAD_REQUEST, "request body must be a JSON object")
    for name, value in doc.items():
        spec = schema.get(name)
        if spec is None:
            raise TokMeshError(E.SYS_BAD_REQUEST, f"unknown field {name!r}", {"field": name})
        types = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
        # bool is an int subclass: true/false never passes as an integer field.
        if value is not None and (
            not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        ):
            raise TokMeshError(
                E.SYS_BAD_REQUEST, f"field {name!r} has the wrong type", {"field": name}
            )
    for name, (_, required) in schema.items():
        if required and (doc.get(name) is None or doc.get(name) == ""):
            raise TokMeshError(E.ARG_MISSING, f"{name} is required", {"field": name})
    return doc


def check_str_map(value: Any, field: str) -> dict[str, str] | None:
    """A JSON object of string values (``data``); other shapes → ``TM-SYS-4000``."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TokMeshError(
            E.SYS_BAD_REQUEST, f"{field} must map strings to strings", {"field": field}
        )
    return value


def query_params(query: str) -> dict[str, str]:
    """Query string as a dict (first value wins; unknown parameters are ignored by routes)."""
    out: dict[str, str] = {}
    if query:
        for k, v in parse_qsl(query, keep_blank_values=True):
            out.setdefault(k, v)
    return out


def int_param(
    params: dict[str, str], name: str, default: int, lo: int, hi: int | None = None
) -> int:
    """An integer query parameter in ``[lo, hi]`` or ``TM-ARG-1001`` (no silent clamping)."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    details: dict[str, Any] = {"field": name}
    if name == "size" and hi is not None:
        details["max_size"] = hi  # 03 §2.5: every bad size names the bound, not-integer too
    try:
        value = int(raw)
    except ValueError:
        raise TokMeshError(E.ARG_INVALID, f"{name} must be an integer", details) from None
    if value < lo or (hi is not None and value > hi) or value > MAX_SAFE_INTEGER:
        raise TokMeshError(E.ARG_INVALID, f"{name} out of range", details)
    return value


#: the largest integer every JSON client reads exactly (2**53 - 1)
MAX_SAFE_INTEGER = 2**53 - 1
