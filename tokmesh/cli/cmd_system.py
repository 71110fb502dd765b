"""``system`` (alias ``sys``): status, health, ready, gc, wal (06 §9.6)."""

from __future__ import annotations

from typing import Any

import asyncclick as click

from tokmesh.cli.app import TmGroup, leaf, state_of
from tokmesh.cli.common import dry_run, emit, where
from tokmesh.cli.errors import EXIT_GENERAL, CliError

GC_TYPES = {"expired": "expired_sessions", "memory": "memory", "all": "all"}


def register(root: TmGroup) -> None:
    """Add the ``system`` group (and its alias ``sys``) to ``root``."""
    from tokmesh.cli.cmd_backup import wal

    root.add_command(system)
    root.add_alias("sys", "system")
    system.add_command(wal)


@click.group(
    "system",
    cls=TmGroup,
    aliases=("system", "sys"),
    help="Node status, health and readiness probes, garbage collection, WAL.",
)
async def system() -> None:
    """System commands."""


def status_rows(d: dict[str, Any]) -> list[list[tuple[str, str | None]]]:
    """The ``system status`` table rows (06 §9.6)."""
    from tokmesh.cli.output import format_bytes, format_duration, format_number

    metrics = d.get("metrics") or {}
    uptime = format_duration(float(d.get("uptime_seconds") or 0))
    cluster_bits = []
    if d.get("role"):
        cluster_bits.append(f"Role: {d['role']}")
    if d.get("nodes"):
        cluster_bits.append(f"Nodes: {d['nodes']}")
    total = float(d.get("total_sessions") or metrics.get("total_sessions") or 0)
    active = float(metrics.get("active_sessions", total) or 0)
    mem_mb = float(d.get("memory_usage_mb") or metrics.get("memory_usage_mb") or 0)
    state = str(d.get("cluster_state") or "-")
    return [
        [
            ("Service", None),
            ("Healthy", "ok"),
            (f"Uptime: {uptime}, Version: {d.get('version', '-')}", None),
        ],
        [
            ("Cluster", None),
            (state, "ok" if state == "healthy" else "warn"),
            (", ".join(cluster_bits) or "-", None),
        ],
        [
            ("Sessions", None),
            ("-", None),
            (f"Total: {format_number(total)}, Active: {format_number(active)}", None),
        ],
        [("Memory", None), ("-", None), (f"Used: {format_bytes(mem_mb * 1024 * 1024)}", None)],
    ]


@leaf(system, "status", help="Node status summary (also over the local socket).")
@click.pass_context
async def system_status(ctx: click.Context) -> None:
    """``GET /admin/v1/status/summary`` or the socket's ``STATUS``."""
    from tokmesh.cli.connection import remote

    state = state_of(ctx)
    printer = state.printer()
    async with remote(state, "system status", socket_ok=True) as conn:
        if conn.socket is not None:
            data = await conn.socket.command("STATUS")
        else:
            assert conn.http is not None
            data = await conn.http.call("GET", "/admin/v1/status/summary")
    emit(
        printer, data, lambda: printer.table(["Component", "Status", "Metrics"], status_rows(data))
    )


async def _probe(ctx: click.Context, path: str) -> None:
    from tokmesh.cli.connection import remote

    state = state_of(ctx)
    printer = state.printer()
    name = path.strip("/")
    async with remote(state, f"system {name}", need_key=False) as conn:
        assert conn.http is not None
        status, doc = await conn.http.request("GET", path, auth=False)
    if status == 200:
        data = doc.get("data") if isinstance(doc, dict) else {}
        emit(printer, data or {}, lambda: printer.out("OK"), lambda: printer.out("OK"))
        return
    details = doc.get("details") if isinstance(doc, dict) else None
    if name == "ready":
        checks = (details or {}).get("checks") or {}
        reason = ", ".join(f"{k}={v}" for k, v in checks.items()) or f"status {status}"
        err = CliError(
            f"NOT READY: {reason}",
            code=(doc or {}).get("code"),
            exit_code=EXIT_GENERAL,
            details=details,
        )
        if printer.structured:
            printer.error(err)
        else:
            printer.err(err.message)
        raise click.exceptions.Exit(EXIT_GENERAL)
    message = (doc or {}).get("message") if isinstance(doc, dict) else None
    raise CliError(
        str(message or f"health check failed with status {status}"),
        code=(doc or {}).get("code") if isinstance(doc, dict) else None,
        exit_code=EXIT_GENERAL,
        details=details,
    )


@leaf(system, "health", help="Liveness probe (GET /health, no API key needed).")
@click.pass_context
async def system_health(ctx: click.Context) -> None:
    """``GET /health``: 200 → ``OK`` (0), otherwise 1; unreachable → 69."""
    await _probe(ctx, "/health")


@leaf(system, "ready", help="Readiness probe (GET /ready, no API key needed).")
@click.pass_context
async def system_ready(ctx: click.Context) -> None:
    """``GET /ready``: 200 → ``OK`` (0), otherwise ``NOT READY: <checks>`` (1)."""
    await _probe(ctx, "/ready")


@leaf(system, "gc", help="Trigger garbage collection (one run per type per 60 s).")
@click.option(
    "--type",
    "gc_type",
    type=click.Choice(list(GC_TYPES)),
    default="expired",
    show_default=True,
    help="expired|memory|all",
)
@click.pass_context
async def system_gc(ctx: click.Context, gc_type: str) -> None:
    """``POST /admin/v1/gc/trigger {type}``."""
    from tokmesh.cli.connection import remote

    state = state_of(ctx)
    printer = state.printer()
    async with remote(state, "system gc") as conn:
        printer.hint(where(conn), f"Triggering garbage collection ({gc_type})...")
        if dry_run(state, printer, f"run garbage collection of type {GC_TYPES[gc_type]}"):
            return
        assert conn.http is not None
        data = await conn.http.call(
            "POST", "/admin/v1/gc/trigger", body={"type": GC_TYPES[gc_type]}
        )

    def human() -> None:
        printer.out(printer.paint("GC Completed.", "ok"))
        printer.out(f"{'Cleaned Sessions:':<18}{data.get('cleaned_count', 0)}")
        printer.out(f"{'Duration:':<18}{round(float(data.get('duration_ms') or 0))}ms")
        freed = float(data.get("freed_memory_mb") or 0)
        if freed > 0:
            printer.out(f"{'Freed Memory:':<18}{freed:g}MB")

    emit(printer, data, human)
