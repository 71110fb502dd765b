"""Observability routes (03 §3.7): ``/health``, ``/ready``, ``/metrics``."""

from __future__ import annotations

import time

from tokmesh.api.envelope import ok
from tokmesh.api.http_errors import error_response
from tokmesh.api.http_types import HttpResponse
from tokmesh.api.routes import SCOPE_METRICS, SCOPE_OPEN, Call, Route
from tokmesh.domain import apikey as ak
from tokmesh.domain.errors import E
from tokmesh.telemetry import metrics


def health(call: Call) -> HttpResponse:
    """Always 200 while the process runs; no dependency checks."""
    return ok(call.rid, {"status": "healthy", "timestamp": time.time_ns() // 1_000_000})


def ready(call: Call) -> HttpResponse:
    """200 only once recovery finished; 503 during startup, restore and shutdown."""
    readiness = call.deps.readiness
    checks = readiness.checks()
    if readiness.ready:
        return ok(call.rid, {"status": "ready", "checks": checks})
    return error_response(
        call.rid,
        E.SYS_UNAVAILABLE,
        "Service not ready",
        details={"status": "not_ready", "checks": checks},
    )


async def metrics_route(call: Call) -> HttpResponse:
    """Prometheus text exposition (not an envelope)."""
    body, content_type = metrics.render()
    return HttpResponse(200, [("Content-Type", content_type), ("X-Request-ID", call.rid)], body)


def ops_routes() -> list[Route]:
    """Health, readiness and metrics."""
    return [
        Route("GET", "/health", health, SCOPE_OPEN, None, True, "Liveness"),
        Route("GET", "/ready", ready, SCOPE_OPEN, None, True, "Readiness"),
        Route(
            "GET",
            "/metrics",
            metrics_route,
            SCOPE_METRICS,
            ak.PERM_METRICS_READ,
            False,
            "Prometheus metrics",
        ),
    ]
