"""``cluster``: status, nodes, rebalance, leave of the cluster the target node belongs to.

Each command is one admin call to the node the CLI targets; the node answers from its own
view of the cluster (membership from etcd, suspicion from its prober, the shard map it
routes with). A standalone node answers 501 ``TM-SYS-5010``, shown with a hint.
"""

from __future__ import annotations

from typing import Any

import asyncclick as click

from tokmesh.cli.app import TmGroup, leaf, state_of
from tokmesh.cli.common import dry_run, emit, where
from tokmesh.cli.errors import CliError

P = "/admin/v1/cluster"
STANDALONE_HINT = (
    "This node runs standalone; cluster commands need a node started with cluster.enabled: true."
)
#: table colour of a node's status
STATUS_STYLE = {"active": "ok", "suspect": "warn", "down": "bad"}


def register(root: TmGroup) -> None:
    """Add the ``cluster`` group to ``root``."""
    root.add_command(cluster)


@click.group(
    "cluster",
    cls=TmGroup,
    help="Cluster topology, health and shard map; rebalance; leave the cluster.",
    examples=(
        "tokmesh-cli -t prod cluster status",
        "tokmesh-cli -t prod cluster nodes -o wide",
        "tokmesh-cli -t node3 cluster leave --yes",
    ),
)
async def cluster() -> None:
    """Cluster commands."""


def _standalone(exc: CliError) -> CliError:
    """The same error with a hint when the node is not in cluster mode."""
    if exc.code == "TM-SYS-5010" and not exc.suggestion:
        exc.suggestion = STANDALONE_HINT
    return exc


async def _call(ctx: click.Context, command: str, method: str, path: str) -> dict[str, Any]:
    """One admin call without a body; errors get the standalone hint."""
    from tokmesh.cli.connection import remote

    state = state_of(ctx)
    async with remote(state, command) as conn:
        assert conn.http is not None
        try:
            data = await conn.http.call(method, path)
        except CliError as exc:
            raise _standalone(exc) from None
    return dict(data or {})


# -- status ---------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return "-" if value in (None, "") else str(value)


def status_lines(d: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``Label: value`` rows of ``cluster status`` (a detail view)."""
    nodes = d.get("nodes") or {}
    parity = d.get("parity") or {}
    shard_map = d.get("shard_map")
    under = d.get("under_replicated_shards") or []
    leader = d.get("leader_id")
    me = _text(d.get("node_id"))
    return [
        ("Cluster ID", _text(d.get("cluster_id"))),
        ("This Node", f"{me} (leader)" if leader and leader == d.get("node_id") else me),
        ("Leader", _text(leader)),
        ("State", _text(d.get("state"))),
        ("Membership", _text(d.get("membership"))),
        (
            "Nodes",
            f"{nodes.get('total', 0)} total: {nodes.get('active', 0)} active, "
            f"{nodes.get('suspect', 0)} suspect, {nodes.get('down', 0)} down",
        ),
        (
            "Parity",
            f"{'even' if parity.get('even') else 'odd'} ({_text(parity.get('health'))})",
        ),
        (
            "Shard Map",
            "none yet"
            if not shard_map
            else f"version {shard_map.get('version')}, "
            f"{sum((shard_map.get('owners') or {}).values())} shards",
        ),
        (
            "Replication",
            f"factor {d.get('replication_factor', 1)}, {len(under)} under-replicated shards",
        ),
    ]


def shard_rows(d: dict[str, Any], full: bool) -> list[list[tuple[str, str | None]]]:
    """``NODE ID  SHARDS`` rows of ``cluster status``, most shards first."""
    from tokmesh.cli.output import truncate

    owners = (d.get("shard_map") or {}).get("owners") or {}
    ordered = sorted(owners.items(), key=lambda kv: (-int(kv[1]), kv[0]))
    return [[(truncate(str(node), full), "id"), (str(count), None)] for node, count in ordered]


@leaf(cluster, "status", help="Topology, health and shard map as the target node sees them.")
@click.pass_context
async def cluster_status(ctx: click.Context) -> None:
    """``GET /admin/v1/cluster/status``."""
    printer = state_of(ctx).printer()
    data = await _call(ctx, "cluster status", "GET", f"{P}/status")

    def human() -> None:
        printer.detail("CLUSTER STATUS", status_lines(data))
        rows = shard_rows(data, printer.verbose)
        if rows:
            printer.out()
            printer.table(["NODE ID", "SHARDS"], rows)

    emit(printer, data, human, lambda: printer.out(_text(data.get("state"))))


# -- nodes ----------------------------------------------------------------------------------


def node_rows(
    nodes: list[dict[str, Any]], wide: bool, full: bool
) -> list[list[tuple[str, str | None]]]:
    """The ``cluster nodes`` table rows."""
    from tokmesh.cli.output import format_duration, truncate

    rows = []
    for n in nodes:
        status = _text(n.get("status"))
        role = _text(n.get("role"))
        uptime = n.get("uptime_seconds")
        metrics = n.get("metrics") or {}
        row: list[tuple[str, str | None]] = [
            (truncate(_text(n.get("node_id")), full), "id"),
            (_text(n.get("address")), None),
            (status, STATUS_STYLE.get(status)),
            (role, "ok" if role == "leader" else None),
            (_text(n.get("version")), None),
            (format_duration(float(uptime)) if isinstance(uptime, int | float) else "-", None),
            (str(metrics.get("shards", 0)), None),
        ]
        if wide:
            row.append((_text(metrics.get("vnodes")), None))
        rows.append(row)
    return rows


@leaf(cluster, "nodes", help="Every member or shard owner: address, status, role, shards.")
@click.pass_context
async def cluster_nodes(ctx: click.Context) -> None:
    """``GET /admin/v1/cluster/nodes``."""
    printer = state_of(ctx).printer()
    data = await _call(ctx, "cluster nodes", "GET", f"{P}/nodes")
    nodes = list(data.get("nodes") or [])

    def human() -> None:
        if not nodes:
            if not printer.opts.no_headers:
                printer.out("No nodes found.")
            return
        wide = printer.fmt == "wide"
        headers = ["NODE ID", "ADDRESS", "STATUS", "ROLE", "VERSION", "UPTIME", "SHARDS"]
        if wide:
            headers.append("VNODES")
        printer.table(headers, node_rows(nodes, wide, printer.verbose))

    emit(printer, data, human, lambda: printer.lines(_text(n.get("node_id")) for n in nodes))


# -- rebalance ------------------------------------------------------------------------------


@leaf(
    cluster,
    "rebalance",
    help="Ask the coordinator to move shards, with their data, to where placement over the "
    "live nodes puts them (needs replicas); says what it did.",
)
@click.pass_context
async def cluster_rebalance(ctx: click.Context) -> None:
    """``POST /admin/v1/cluster/rebalance``."""
    from tokmesh.cli.connection import remote

    state = state_of(ctx)
    printer = state.printer()
    async with remote(state, "cluster rebalance") as conn:
        printer.hint(where(conn), "Requesting a rebalance...")
        if dry_run(state, printer, "rebalance the cluster's shards"):
            return
        assert conn.http is not None
        try:
            data = await conn.http.call("POST", f"{P}/rebalance")
        except CliError as exc:
            raise _standalone(exc) from None

    def human() -> None:
        status = data.get("status")
        if status == "not_started":
            printer.out(printer.paint("Rebalance not started.", "warn"))
        else:
            printer.out(printer.paint(f"Rebalance {status or 'requested'}.", "ok"))
        if data.get("reason"):
            printer.out(f"  Reason: {data['reason']}")

    emit(printer, data, human, lambda: printer.out(_text(data.get("status"))))


# -- leave ----------------------------------------------------------------------------------


@leaf(
    cluster,
    "leave",
    help="The target node leaves the cluster for good (asks unless --yes).\n\n"
    "With replicas its shards move to the other nodes with their sessions first; without, "
    "they go to the others without their sessions. "
    "--node-id asks for another node to be forced out instead.",
    examples=("tokmesh-cli -t node3 cluster leave --yes",),
)
@click.option("--node-id", help="Remove this node instead of the target (forced removal)")
@click.option("-y", "--yes", "-f", "--force", "yes", is_flag=True, help="Do not ask")
@click.pass_context
async def cluster_leave(ctx: click.Context, node_id: str | None, yes: bool) -> None:
    """``POST /admin/v1/cluster/leave``, or ``…/nodes/{id}/remove`` with ``--node-id``."""
    from urllib.parse import quote

    from tokmesh.cli.connection import remote
    from tokmesh.cli.prompts import confirm, require_terminal

    state = state_of(ctx)
    printer = state.printer()
    require_terminal(yes or bool(state.flag("dry_run")))
    target_id = node_id.strip() if node_id else None
    async with remote(state, "cluster leave") as conn:
        who = target_id or conn.label
        printer.hint(where(conn), f"Node {who} leaving the cluster...")
        if dry_run(state, printer, f"make node {who} leave the cluster"):
            return
        if not yes:
            await confirm(
                state,
                f"Are you sure node '{who}' should leave the cluster? Its shards move to "
                "the other nodes (without their sessions unless the cluster has replicas).",
            )
        assert conn.http is not None
        path = f"{P}/nodes/{quote(target_id, safe='')}/remove" if target_id else f"{P}/leave"
        try:
            data = await conn.http.call("POST", path)
        except CliError as exc:
            raise _standalone(exc) from None

    def human() -> None:
        left = _text(data.get("node_id") or who)
        printer.out(printer.paint(f"Node {left} left the cluster.", "ok"))
        if "data_moved" in data:
            printer.out(f"  Data moved: {'yes' if data['data_moved'] else 'no'}")
        if data.get("note"):
            printer.out(f"  Note: {data['note']}")

    emit(printer, data, human, lambda: printer.out(_text(data.get("status"))))
