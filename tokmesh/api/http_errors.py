"""Error envelopes rendered by the HTTP front itself (03 §2.2).

The front answers some requests before any route runs: parse errors, limits, timeouts,
uncaught handler failures. Those answers use the same envelope as the routes:
``{"code","message","request_id","timestamp","details"?}`` with ``X-Request-ID`` and
``X-Error-Code`` headers.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from tokmesh.api.http_types import HttpResponse
from tokmesh.domain.errors import ErrorCode, TokMeshError


def error_envelope(
    request_id: str, code: str, message: str, details: dict[str, Any] | None = None
) -> bytes:
    """The JSON bytes of an error envelope; ``timestamp`` is now in Unix ms (R8)."""
    doc: dict[str, Any] = {
        "code": code,
        "message": message,
        "request_id": request_id,
        "timestamp": time.time_ns() // 1_000_000,
    }
    if details is not None:
        doc["details"] = details
    return orjson.dumps(doc)


def error_response(
    request_id: str,
    error: ErrorCode,
    message: str | None = None,
    *,
    details: dict[str, Any] | None = None,
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> HttpResponse:
    """An envelope response for catalogue entry ``error``.

    ``status`` overrides the catalogue status only where HTTP demands a specific one
    that the catalogue has no code for (431 header too large, 408 timeout, 505 version).
    """
    out = [
        ("Content-Type", "application/json"),
        ("X-Request-ID", request_id),
        ("X-Error-Code", error.code),
    ]
    if headers:
        out.extend(headers.items())
    body = error_envelope(request_id, error.code, message or error.message, details)
    return HttpResponse(status or error.http_status, out, body)


def exception_response(
    request_id: str, exc: TokMeshError, status: int | None = None
) -> HttpResponse:
    """The envelope response for a raised :class:`TokMeshError`."""
    return error_response(
        request_id,
        exc.error,
        exc.message,
        details=exc.details,
        status=status,
        headers=exc.headers,
    )
