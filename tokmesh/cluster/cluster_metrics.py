"""The cluster gauges of ``/metrics``, read from a :class:`ClusterNode` at each scrape.

* ``tokmesh_cluster_nodes_total{status}``: ``active`` or ``down`` as this node sees them.
  The metric has only those two values, so a node its prober suspects counts as ``down``:
  routing already refuses to send it anything, and an alert on ``down`` should see it.
* ``tokmesh_cluster_quorum_lost``: 1 while this node is not registered in etcd (still
  connecting, or its lease was lost): it cannot reach a control-plane majority then.

* ``tokmesh_shard_keys_count{node_id}``: the sessions this node holds, under its own node
  id. Every node exports its own series, so the scraper sees the whole spread (skew).

``tokmesh_cluster_nodes_parity`` is set by the node itself on every membership change.
``tokmesh_session_revoke_propagation_lag_seconds`` and
``tokmesh_gossip_propagation_lag_seconds`` stay empty in this part: every validation is
answered by the session's owner, so a revocation has nothing to propagate, and membership
comes from etcd rather than from gossip.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tokmesh.cluster.membership import MembershipState
from tokmesh.telemetry import metrics

if TYPE_CHECKING:
    from tokmesh.cluster.node import ClusterNode

__all__ = ["keys_held", "node_counts", "quorum_lost", "register", "unregister"]

NODES = "tokmesh_cluster_nodes_total"
QUORUM_LOST = "tokmesh_cluster_quorum_lost"
SHARD_KEYS = "tokmesh_shard_keys_count"
UNDER_REPLICATED = "tokmesh_cluster_under_replicated_shards"


def node_counts(nodes: Iterable[Mapping[str, Any]]) -> dict[tuple[str, ...], float]:
    """``{("active",): n, ("down",): m}`` from :meth:`ClusterNode.nodes` entries."""
    active = down = 0
    for node in nodes:
        if node.get("status") == "active":
            active += 1
        else:
            down += 1
    return {("active",): float(active), ("down",): float(down)}


def quorum_lost(state: MembershipState) -> float:
    """1.0 unless this node's member key is live in etcd."""
    return 0.0 if state is MembershipState.CONNECTED else 1.0


def quorum_lost_of(cluster: ClusterNode) -> float:
    """1.0 while the node is not registered or cannot confirm its lease (fenced)."""
    if quorum_lost(cluster.membership.state) or not cluster.membership.lease_valid():
        return 1.0
    return 0.0


def keys_held(cluster: ClusterNode) -> dict[tuple[str, ...], float]:
    """``{(node_id,): sessions held}`` once the node serves sessions, else nothing."""
    sessions = cluster.sessions
    if sessions is None:
        return {}
    return {(cluster.node_id,): float(sessions.local.state.live_count())}


def register(cluster: ClusterNode) -> None:
    """Make the cluster gauges read ``cluster`` at each scrape (call once at start)."""
    metrics.register_gauge_family_provider(NODES, lambda: node_counts(cluster.nodes()))
    metrics.register_gauge_provider(QUORUM_LOST, lambda: quorum_lost_of(cluster))
    metrics.register_gauge_family_provider(SHARD_KEYS, lambda: keys_held(cluster))
    metrics.register_gauge_provider(
        UNDER_REPLICATED, lambda: float(len(cluster.under_replicated()))
    )


def unregister() -> None:
    """Stop reading the node (the gauges keep their last values)."""
    metrics.register_gauge_family_provider(NODES, None)
    metrics.register_gauge_provider(QUORUM_LOST, None)
    metrics.register_gauge_family_provider(SHARD_KEYS, None)
    metrics.register_gauge_provider(UNDER_REPLICATED, None)
