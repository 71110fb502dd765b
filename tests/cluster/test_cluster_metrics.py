"""The cluster gauges: counting rules, and a real (not started) node read at each scrape."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tokmesh.cluster import cluster_metrics
from tokmesh.cluster.etcd import EtcdSettings, LeaseKeeper
from tokmesh.cluster.membership import MemberRecord, MembershipState
from tokmesh.cluster.node import ClusterNode, ClusterSettings
from tokmesh.cluster.swim import Ping, Status, Update
from tokmesh.telemetry import metrics

NODE = "tmnd-metrics1"
PEER = "tmnd-metrics2"


def test_suspect_and_down_nodes_count_as_down() -> None:
    nodes = [{"status": "active"}, {"status": "suspect"}, {"status": "down"}, {"status": "active"}]
    assert cluster_metrics.node_counts(nodes) == {("active",): 2.0, ("down",): 2.0}
    assert cluster_metrics.node_counts([]) == {("active",): 0.0, ("down",): 0.0}


@pytest.mark.parametrize(
    ("state", "lost"),
    [
        (MembershipState.CONNECTING, 1.0),
        (MembershipState.CONNECTED, 0.0),
        (MembershipState.LOST, 1.0),
    ],
)
def test_quorum_lost_unless_registered(state: MembershipState, lost: float) -> None:
    assert cluster_metrics.quorum_lost(state) == lost


@pytest.fixture
def node(tmp_path: Path) -> Iterator[ClusterNode]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", common_name=NODE)
    paths = {name: tmp_path / name for name in ("ca.pem", "node.pem", "node.key")}
    ca.cert_pem.write_to_path(str(paths["ca.pem"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["node.pem"]))
    cert.private_key_pem.write_to_path(str(paths["node.key"]))
    settings = ClusterSettings(
        node_id=NODE,
        data_dir=tmp_path,
        version="0.0.0",
        listen_address="127.0.0.1:1",
        advertise_address="127.0.0.1:1",
        cert_file=str(paths["node.pem"]),
        key_file=str(paths["node.key"]),
        ca_file=str(paths["ca.pem"]),
        etcd=EtcdSettings(endpoints=("http://127.0.0.1:1",)),
        prefix="/tm-metrics/",
        lease_ttl=2,
        expect_nodes=2,
        replication_factor=1,
    )
    cluster = ClusterNode(settings)
    cluster_metrics.register(cluster)
    try:
        yield cluster
    finally:
        cluster_metrics.unregister()


def _sample(name: str) -> str:
    body = metrics.render()[0].decode()
    return "\n".join(line for line in body.splitlines() if line.startswith(name + "{"))


async def test_gauges_follow_the_node(node: ClusterNode) -> None:
    # Not started: never registered, nobody known.
    assert _sample("tokmesh_cluster_nodes_total") == (
        'tokmesh_cluster_nodes_total{status="active"} 0.0\n'
        'tokmesh_cluster_nodes_total{status="down"} 0.0'
    )
    assert "\ntokmesh_cluster_quorum_lost 1.0\n" in metrics.render()[0].decode()

    # Two members in the table, the peer suspected by the prober: it counts as down.
    now = time.time()
    node.members = {
        NODE: MemberRecord(NODE, "127.0.0.1:1", "0.0.0", now),
        PEER: MemberRecord(PEER, "127.0.0.1:2", "0.0.0", now),
    }
    node.membership.state = MembershipState.CONNECTED
    # Registered under a lease whose renewal etcd confirmed (its expiry is ahead).
    node.membership.lease_id = 1
    node.membership.keeper = LeaseKeeper(node.etcd, 1, 10)
    assert _sample("tokmesh_cluster_nodes_total") == (
        'tokmesh_cluster_nodes_total{status="active"} 2.0\n'
        'tokmesh_cluster_nodes_total{status="down"} 0.0'
    )
    assert "\ntokmesh_cluster_quorum_lost 0.0\n" in metrics.render()[0].decode()
    node.prober.set_members(node.members)
    # Gossip from another prober that missed the peer's acks.
    await node.prober.handle("tmnd-metrics3", Ping((Update(PEER, Status.SUSPECT, 0),)))
    assert node.prober.state_of(PEER) is Status.SUSPECT
    assert _sample("tokmesh_cluster_nodes_total") == (
        'tokmesh_cluster_nodes_total{status="active"} 1.0\n'
        'tokmesh_cluster_nodes_total{status="down"} 1.0'
    )
