"""Admin routes ``/admin/v1``: status, GC, API keys, audit, cluster.

Every admin call is audited by the pipeline; key changes and a node leaving the cluster
also write their named action (``KEY_CREATED``, ``NODE_REMOVED`` …) with the operator.
The cluster routes answer from the server's :class:`~tokmesh.cluster.node.ClusterNode`;
a standalone node has none and answers them 501 ``TM-SYS-5010``.
"""

from __future__ import annotations

import gc
import math
import time
from typing import TYPE_CHECKING, Any

import trio

from tokmesh.api.envelope import int_param, ok, parse_body
from tokmesh.api.http_types import HttpResponse
from tokmesh.api.routes import SCOPE_ADMIN, Call, Route
from tokmesh.cluster.etcd_wire import EtcdError
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.readiness import OK, Phase, Readiness
from tokmesh.services import keys as key_rules
from tokmesh.telemetry import audit as audit_mod
from tokmesh.telemetry.metrics import read_rss_bytes

if TYPE_CHECKING:
    from tokmesh.cluster.node import ClusterNode

P = "/admin/v1"
GC_TYPES = {
    "expired_sessions": "expired_sessions",
    "expired": "expired_sessions",
    "memory": "memory",
    "all": "all",
}


def _audit(call: Call, action: str, resource: str, **details: Any) -> None:
    log = call.deps.audit
    if log is None:
        return
    p = call.principal
    log.append(
        audit_mod.AuditRecord.new(
            action,
            operator_id=p.key_id if p else None,
            operator_role=p.role if p else None,
            resource=resource,
            ip_address=call.client_ip,
            tcp_remote_ip=call.req.peer_ip,
            request_id=call.rid,
            details=details,
        )
    )


def status_data(deps: Any) -> dict[str, Any]:
    """The data of ``GET /admin/v1/status/summary`` (also the socket's ``STATUS``)."""
    state = deps.engine.state
    now = time.time_ns() // 1_000_000
    total = len(state.sessions)
    active = state.live_count(now)
    mem_mb = round(read_rss_bytes() / (1024 * 1024), 2)
    qps = round(deps.current_qps(), 2)
    try:
        tasks = _count_tasks()
    except RuntimeError:
        tasks = 0
    return {
        "uptime_seconds": int(time.time() - deps.started_at),
        "version": deps.version,
        "build_time": deps.build_time,
        "node_id": deps.node_id,
        "cluster_state": _state_word(deps.readiness),
        **_cluster_summary(cluster_of(deps)),
        "total_sessions": active,
        "memory_usage_mb": mem_mb,
        "current_qps": qps,
        "metrics": {
            "total_sessions": active,
            "stored_records": total,
            "active_sessions": active,
            "memory_usage_mb": mem_mb,
            "current_qps": qps,
            "goroutines": tasks,
        },
    }


def _state_word(readiness: Readiness) -> str:
    """``cluster_state``: ``healthy`` when ``/ready`` would answer 200, else why not."""
    if readiness.ready:
        return "healthy"
    if readiness.phase is not Phase.READY:
        return str(readiness.phase.value)
    # Storage serves, so a contributed check is failing: on a cluster node that is the
    # cluster's own word ("connecting", "lost", "initializing").
    for name, word in readiness.checks().items():
        if name != "storage" and word != OK:
            return str(word)
    return str(readiness.phase.value)


def _cluster_summary(cluster: ClusterNode | None) -> dict[str, Any]:
    """``role`` and ``nodes`` of the summary, shown by ``system status``; none standalone."""
    if cluster is None:
        return {}
    leader = cluster.coordinator.coordinator_id
    return {
        "role": "leader" if leader == cluster.node_id else "follower",
        "nodes": len(cluster.members),
    }


def _count_tasks() -> int:
    """Live Trio tasks (the ``goroutines`` figure of 03 §4.1)."""
    root = trio.lowlevel.current_root_task()
    if root is None:  # not inside trio.run (e.g. a synchronous caller)
        return 0
    count = 0
    stack = [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def status_summary(call: Call) -> HttpResponse:
    """``GET /admin/v1/status/summary``."""
    return ok(call.rid, status_data(call.deps))


async def gc_trigger(call: Call) -> HttpResponse:
    """``POST /admin/v1/gc/trigger``: same type twice within 60 s → 429 ``TM-ADMIN-4291``."""
    body = parse_body(call.req.body, {"type": (str, False)})
    kind = GC_TYPES.get(body.get("type") or "expired_sessions")
    if kind is None:
        raise TokMeshError(E.ARG_INVALID, "type must be expired_sessions, memory or all")
    last = call.deps.gc_last.get(kind)
    now = time.monotonic()
    if last is not None and now - last < 60:
        raise TokMeshError(
            E.ADMIN_THROTTLED,
            "this gc type ran less than 60 s ago",
            headers={"Retry-After": str(max(1, math.ceil(60 - (now - last))))},
        )
    call.deps.gc_last[kind] = now
    started = time.perf_counter()
    cleaned = 0
    freed_mb = 0.0
    if kind in ("expired_sessions", "all"):
        svc = call.deps.sessions
        if svc is None:
            raise TokMeshError(E.SYS_UNAVAILABLE)
        cleaned = await svc.gc()
    if kind in ("memory", "all"):
        before = read_rss_bytes()
        gc.collect()
        freed_mb = round(max(0, before - read_rss_bytes()) / (1024 * 1024), 2)
    return ok(
        call.rid,
        {
            "cleaned_count": cleaned,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "freed_memory_mb": freed_mb,
        },
    )


KEY_CREATE_SCHEMA: dict[str, Any] = {
    "role": (str, True),
    "description": (str, False),
    "allowedlist": (list, False),
    "rate_limit": (int, False),
    "expires_at": (int, False),
}


async def create_key(call: Call) -> HttpResponse:
    """``POST /admin/v1/keys`` → 201 with the secret shown once."""
    body = parse_body(call.req.body, KEY_CREATE_SCHEMA)
    p = call.principal
    key, secret, warning = await call.deps.keys.create(
        body.get("role"),
        body.get("description"),
        body.get("allowedlist"),
        body.get("rate_limit"),
        body.get("expires_at"),
        created_by=p.key_id if p else "system",
    )
    _audit(call, audit_mod.KEY_CREATED, key.key_id, role=key.role)
    return ok(call.rid, key_rules.created_data(key, secret, warning), status=201)


async def list_keys(call: Call) -> HttpResponse:
    """``GET /admin/v1/keys?page&size&role&status``."""
    q = call.query
    page = int_param(q, "page", 1, 1)
    size = int_param(q, "size", 20, 1, 100)
    items, total = call.deps.keys.list(page, size, q.get("role"), q.get("status"))
    return ok(call.rid, key_rules.list_data(items, total, page, size))


async def key_status(call: Call) -> HttpResponse:
    """``POST /admin/v1/keys/{key_id}/status``."""
    body = parse_body(call.req.body, {"status": (str, True)})
    key, updated_at, warning = await call.deps.keys.set_status(
        call.params["key_id"], body["status"]
    )
    action = audit_mod.KEY_DISABLED if key.status == "disabled" else audit_mod.KEY_ENABLED
    _audit(call, action, key.key_id)
    return ok(call.rid, key_rules.status_data(key, updated_at, warning))


async def rotate_key(call: Call) -> HttpResponse:
    """``POST /admin/v1/keys/{key_id}/rotate``."""
    parse_body(call.req.body, {})
    key, secret, old_until = await call.deps.keys.rotate(call.params["key_id"])
    _audit(call, audit_mod.KEY_ROTATED, key.key_id)
    return ok(call.rid, key_rules.rotated_data(key, secret, old_until))


async def audit_logs(call: Call) -> HttpResponse:
    """``GET /admin/v1/audit/logs?start_time&end_time&operator_id&action&page&size``."""
    log = call.deps.audit
    q = call.query
    page = int_param(q, "page", 1, 1)
    size = int_param(q, "size", 20, 1, 100)
    start = int_param(q, "start_time", 0, 0)
    end = int_param(q, "end_time", 0, 0)
    if log is None:
        return ok(call.rid, {"items": [], "total_items": 0, "page": page, "size": size})
    items, total = await log.query(
        start_time=start or None,
        end_time=end or None,
        operator_id=q.get("operator_id") or None,
        action=q.get("action") or None,
        page=page,
        size=size,
    )
    return ok(call.rid, {"items": items, "total_items": total, "page": page, "size": size})


#: The answer of every cluster route on a node started without ``cluster.enabled``.
STANDALONE = "cluster mode is not enabled on this node"


def cluster_of(deps: Any) -> ClusterNode | None:
    """The running server's cluster part, ``None`` on a standalone node (or without a
    server, as in tests that build the routes alone)."""
    node: ClusterNode | None = getattr(deps.server, "cluster", None)
    return node


def _cluster(call: Call) -> ClusterNode:
    node = cluster_of(call.deps)
    if node is None:
        raise TokMeshError(E.SYS_NOT_IMPLEMENTED, STANDALONE)
    return node


async def cluster_status(call: Call) -> HttpResponse:
    """``GET /admin/v1/cluster/status``: topology, health and shard map as this node sees
    them."""
    node = _cluster(call)
    data = node.status()
    data["rebalance"] = await node.rebalance_progress()
    return ok(call.rid, data)


async def cluster_nodes(call: Call) -> HttpResponse:
    """``GET /admin/v1/cluster/nodes``: every member or shard owner, with the cluster id
    and the coordinator (the node that writes the shard map) as ``leader_id``."""
    node = _cluster(call)
    return ok(
        call.rid,
        {
            "nodes": node.nodes(),
            "cluster_id": node.membership.cluster_id,
            "leader_id": node.coordinator.coordinator_id,
        },
    )


async def cluster_rebalance(call: Call) -> HttpResponse:
    """``POST /admin/v1/cluster/rebalance``: the coordinator starts moving shards, with
    their data, to where placement over the live nodes puts them."""
    node = _cluster(call)
    parse_body(call.req.body, {})
    return ok(call.rid, await node.rebalance())


async def cluster_leave(call: Call) -> HttpResponse:
    """``POST /admin/v1/cluster/leave``: this node leaves the cluster for good."""
    node = _cluster(call)
    parse_body(call.req.body, {})
    try:
        data = await node.leave()
    except EtcdError as exc:
        # The departure is recorded in etcd; not reaching it is a cluster operation that
        # did not complete, and repeating the call is safe.
        raise TokMeshError(
            E.CLST_TIMEOUT, f"could not record the departure in etcd: {exc.message}"
        ) from None
    # No action of its own in the catalogue: a graceful leave removes this node, so it is
    # audited as NODE_REMOVED with how it left.
    _audit(call, audit_mod.NODE_REMOVED, node.node_id, mode="leave")
    return ok(call.rid, data)


async def remove_node(call: Call) -> HttpResponse:
    """``POST /admin/v1/cluster/nodes/{node_id}/remove``: not provided yet (501)."""
    _cluster(call)
    raise TokMeshError(
        E.SYS_NOT_IMPLEMENTED,
        "removing another node is not provided yet; run 'cluster leave' on that node",
    )


async def reset_cluster(call: Call) -> HttpResponse:
    """``POST /admin/v1/cluster/reset``: not provided yet (501)."""
    _cluster(call)
    raise TokMeshError(E.SYS_NOT_IMPLEMENTED, "resetting the cluster is not provided yet")


def admin_routes() -> list[Route]:
    """The admin routes of this module."""
    a = SCOPE_ADMIN
    return [
        Route("GET", f"{P}/status/summary", status_summary, a, summary="Node status summary"),
        Route("POST", f"{P}/gc/trigger", gc_trigger, a, summary="Trigger garbage collection"),
        Route("POST", f"{P}/keys", create_key, a, summary="Create an API key", success_status=201),
        Route("GET", f"{P}/keys", list_keys, a, summary="List API keys"),
        Route(
            "POST",
            f"{P}/keys/{{key_id}}/status",
            key_status,
            a,
            summary="Enable or disable an API key",
        ),
        Route("POST", f"{P}/keys/{{key_id}}/rotate", rotate_key, a, summary="Rotate an API key"),
        Route("GET", f"{P}/audit/logs", audit_logs, a, summary="Query the audit log"),
        Route("GET", f"{P}/cluster/status", cluster_status, a, summary="Cluster status"),
        Route("GET", f"{P}/cluster/nodes", cluster_nodes, a, summary="Cluster nodes"),
        Route("POST", f"{P}/cluster/rebalance", cluster_rebalance, a, summary="Rebalance shards"),
        Route("POST", f"{P}/cluster/leave", cluster_leave, a, summary="Leave the cluster"),
        Route(
            "POST",
            f"{P}/cluster/nodes/{{node_id}}/remove",
            remove_node,
            a,
            summary="Remove a node",
        ),
        Route("POST", f"{P}/cluster/reset", reset_cluster, a, summary="Reset the cluster"),
    ]


__all__ = ["STANDALONE", "admin_routes", "cluster_of", "status_data"]
