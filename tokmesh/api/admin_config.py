"""Configuration admin routes (03 §4.6): show, apply, validate, reload.

The same validator as ``tokmesh-server --test`` serves ``validate``; ``apply`` changes only
the hot-reloadable log level; ``reload`` is SIGHUP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tokmesh.api.envelope import ok, parse_body
from tokmesh.api.http_types import HttpResponse
from tokmesh.api.routes import SCOPE_ADMIN, Call, Route
from tokmesh.config.dump import sanitized_config
from tokmesh.config.reload import apply_partial
from tokmesh.config.validate import validate_yaml_text
from tokmesh.domain.errors import E, TokMeshError, lookup
from tokmesh.telemetry import audit as audit_mod
from tokmesh.telemetry.logging import set_level

P = "/admin/v1/config"


def _server(call: Call) -> Any:
    server = call.deps.server
    if server is None:
        raise TokMeshError(E.SYS_UNAVAILABLE, "configuration is not available")
    return server


async def show_config(call: Call) -> HttpResponse:
    """``GET /admin/v1/config[?merged=true]``: hot subset, or the full redacted config."""
    cfg = _server(call).cfg
    if call.query.get("merged", "").lower() in ("true", "1"):
        return ok(call.rid, sanitized_config(cfg))
    return ok(call.rid, {"telemetry": {"logging": {"level": cfg.telemetry.logging.level}}})


async def apply_config(call: Call) -> HttpResponse:
    """``POST /admin/v1/config/apply``: only ``telemetry.logging.level`` applies live."""
    try:
        tree = orjson.loads(call.req.body or b"{}")
    except orjson.JSONDecodeError:
        raise TokMeshError(E.SYS_BAD_REQUEST, "request body is not valid JSON") from None
    if not isinstance(tree, dict):
        raise TokMeshError(E.SYS_BAD_REQUEST, "request body must be a JSON object")
    server = _server(call)
    result = apply_partial(server.cfg, tree)
    if result.errors:
        first = result.errors[0]
        raise TokMeshError(
            lookup(first.code.code),
            first.message,
            {"errors": [e.to_api() for e in result.errors]},
        )
    if "telemetry.logging.level" in result.updated:
        set_level(result.config.telemetry.logging.level)
    server.cfg = result.config
    if result.updated and call.deps.audit is not None:
        p = call.principal
        call.deps.audit.append(
            audit_mod.AuditRecord.new(
                audit_mod.CONFIG_UPDATED,
                operator_id=p.key_id if p else None,
                operator_role=p.role if p else None,
                resource="config",
                ip_address=call.client_ip,
                tcp_remote_ip=call.req.peer_ip,
                request_id=call.rid,
                details={"updated": result.updated},
            )
        )
    message = "applied" if result.updated else "nothing applied"
    return ok(
        call.rid,
        {"updated": result.updated, "rejected": result.rejected, "message": message},
    )


async def validate_config(call: Call) -> HttpResponse:
    """``POST /admin/v1/config/validate {"config_yaml"}``: 200 ``{valid, errors}`` always."""
    body = parse_body(call.req.body, {"config_yaml": (str, True)})
    server = _server(call)
    base = Path(server.config_file).parent if server.config_file else Path.cwd()
    report = validate_yaml_text(body["config_yaml"], base_dir=base)
    return ok(call.rid, report.to_api())


async def reload_config(call: Call) -> HttpResponse:
    """``POST /admin/v1/config/reload`` (= SIGHUP)."""
    parse_body(call.req.body, {})
    result = await _server(call).reload()
    return ok(call.rid, result)


def config_routes() -> list[Route]:
    """The routes of 03 §4.6."""
    a = SCOPE_ADMIN
    return [
        Route("GET", P, show_config, a, summary="Show the configuration"),
        Route("POST", f"{P}/apply", apply_config, a, summary="Apply hot configuration"),
        Route("POST", f"{P}/validate", validate_config, a, summary="Validate a configuration"),
        Route("POST", f"{P}/reload", reload_config, a, summary="Reload the configuration file"),
    ]
