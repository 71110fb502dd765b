"""Replication factor 2 on three real nodes: replicas hold copies, a killed owner's shards
fail over to them within 10 s, revocations survive the failover, a deposed owner's
late messages are refused by epoch."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.cluster_support import (
    ClusterNodeProcess,
    TestCluster,
    eventually,
    running_cluster,
)
from tokmesh.domain.shards import shard_of

pytestmark = pytest.mark.cluster_faults


@pytest.fixture
def cluster(tmp_path: Any) -> Iterator[TestCluster]:
    with running_cluster(tmp_path, 3, replication_factor=2) as c:
        c.admin = c.admin_key()  # type: ignore[attr-defined]
        yield c


def _key(c: TestCluster) -> str:
    return c.admin  # type: ignore[attr-defined,no-any-return]


def _create(node: ClusterNodeProcess, key: str, user: str) -> dict[str, Any]:
    with node.client(key) as client:
        r = client.post("/sessions", json={"user_id": user, "ttl_seconds": 3600})
    assert r.status_code == 201, r.text
    return dict(r.json()["data"])


def _valid(node: ClusterNodeProcess, key: str, token: str) -> int:
    with node.client(key) as client:
        return client.post("/tokens/validate", json={"token": token}).status_code


def _status(node: ClusterNodeProcess, key: str) -> dict[str, Any]:
    with node.client(key) as client:
        r = client.get("/admin/v1/cluster/status")
    assert r.status_code == 200, r.text
    return dict(r.json()["data"])


def _drained(c: TestCluster, key: str, nodes: list[ClusterNodeProcess]) -> bool:
    for node in nodes:
        peers = _status(node, key)["replication"]["peers"]
        if any(p["queued"] for p in peers.values()):
            return False
    return True


def test_replicas_take_over_a_killed_owner_within_10s(cluster: TestCluster) -> None:
    key = _key(cluster)
    nodes = cluster.nodes
    made = [_create(nodes[i % 3], key, f"user-{i}") for i in range(60)]
    revoked = made[:10]
    for s in revoked:
        with nodes[1].client(key) as client:
            assert client.post(f"/sessions/{s['session_id']}/revoke").status_code == 200
    status = _status(nodes[0], key)
    assert status["replication_factor"] == 2
    assert status["under_replicated_shards"] == []
    eventually(lambda: _drained(cluster, key, nodes), timeout=10)

    victim = nodes[2]
    survivors = [n for n in nodes if n is not victim]
    before = cluster.shard_map()
    lost = [s for s in made if before.owner_of(s["session_id"]) == victim.node_id]
    assert lost, "the victim owns some of the sessions"
    victim.kill9()
    killed_at = time.monotonic()

    live_lost = [s for s in lost if s not in revoked]
    eventually(
        lambda: all(_valid(survivors[0], key, s["token"]) == 200 for s in live_lost[:5]),
        timeout=15,
    )
    took = time.monotonic() - killed_at
    print(f"failover: traffic moved {took:.2f}s after the kill")
    assert took < 10, f"traffic moved after {took:.1f}s"
    after = cluster.shard_map()
    assert victim.node_id not in after.owners
    for shard in range(256):
        if before.owners[shard] == victim.node_id:
            assert after.epochs[shard] > before.epochs[shard]
    # Every acknowledged create survives (they were replicated before the kill), every
    # revocation too, from both survivors.
    for node in survivors:
        for s in made:
            expect = 401 if s in revoked else 200
            assert _valid(node, key, s["token"]) == expect, (node.node_id, s["session_id"])


def test_a_paused_owner_fences_itself_and_its_late_messages_are_refused(
    cluster: TestCluster,
) -> None:
    key = _key(cluster)
    nodes = cluster.nodes
    victim = nodes[1]
    shard_map = cluster.shard_map()
    mine = [_create(victim, key, f"p-{i}") for i in range(40)]
    owned = [s for s in mine if shard_map.owner_of(s["session_id"]) == victim.node_id]
    assert owned
    eventually(lambda: _drained(cluster, key, nodes), timeout=10)
    assert victim.proc is not None
    os.kill(victim.proc.pid, signal.SIGSTOP)
    try:
        # The lease (2 s) expires; the shards move to the replicas.
        eventually(lambda: victim.node_id not in cluster.shard_map().owners, timeout=15)
        other = nodes[0]
        # A revoke through a survivor, acknowledged while the old owner sleeps.
        target = owned[0]
        with other.client(key) as client:
            assert client.post(f"/sessions/{target['session_id']}/revoke").status_code == 200
    finally:
        os.kill(victim.proc.pid, signal.SIGCONT)
    # The woken node refuses to serve its former shards and never says valid for the
    # revoked token: it fenced itself, then learnt the new map.
    for _ in range(20):
        code = _valid(victim, key, target["token"])
        assert code in (401, 503), code
        time.sleep(0.05)
    eventually(lambda: victim.ready_checks().get("cluster") == "ok", timeout=15)
    assert _valid(victim, key, target["token"]) == 401
    for s in owned[1:]:
        assert _valid(victim, key, s["token"]) == 200


def _held(node: ClusterNodeProcess, key: str) -> int:
    with node.client(key) as client:
        text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith("tokmesh_shard_keys_count{"):
            return int(float(line.split()[-1]))
    raise AssertionError("no tokmesh_shard_keys_count")


def test_a_joining_node_gets_shards_with_data_and_old_copies_are_dropped(
    cluster: TestCluster,
) -> None:
    key = _key(cluster)
    made = [_create(cluster.nodes[i % 3], key, f"j-{i}") for i in range(90)]
    fourth = cluster.add_node("tmnd-test4")
    fourth.start()
    eventually(lambda: fourth.node_id in cluster.shard_map().owners, timeout=30)
    eventually(lambda: _status(fourth, key)["rebalance"].get("state") == "done", timeout=30)
    # Every session validates from the new node, and is held exactly where the map says:
    # by its owner and its backup, nowhere else (copies no longer needed are dropped).
    for s in made:
        assert _valid(fourth, key, s["token"]) == 200

    def held_as_mapped() -> bool:
        shard_map = cluster.shard_map()
        for node in cluster.nodes:
            expected = sum(
                1
                for s in made
                if node.node_id == shard_map.owner_of(s["session_id"])
                or node.node_id in shard_map.backups[shard_of(s["session_id"])]
            )
            if _held(node, key) != expected:
                return False
        return True

    eventually(held_as_mapped, timeout=20, interval=0.5)


def test_a_replica_restarted_at_once_catches_up_from_the_wal_and_can_take_over(
    tmp_path: Any,
) -> None:
    # The default 5 s lease (the fixture's 2 s can run out while Python starts again).
    with running_cluster(tmp_path, 3, replication_factor=2, lease_ttl="5s") as cluster:
        _restarted_replica_catches_up(cluster)


def _restarted_replica_catches_up(cluster: TestCluster) -> None:
    key = cluster.admin_key()
    nodes = cluster.nodes
    replica = nodes[1]
    shard_map = cluster.shard_map()
    # Users whose shard node 1 owns and the replica backs up (sessions live in their
    # user's shard), so creates keep working while the replica is down.
    users = [
        u
        for u in (f"r-{i}" for i in range(4000))
        if shard_map.owners[shard_of(u)] == nodes[0].node_id
        and replica.node_id in shard_map.backups[shard_of(u)]
    ][:80]
    first = [_create(nodes[0], key, u) for u in users[:40]]
    eventually(lambda: _drained(cluster, key, nodes), timeout=10)

    # Sessions owned by node 1 whose backup is the replica that will restart.
    def backed_up_by_replica(s: dict[str, Any]) -> bool:
        shard = shard_of(s["session_id"])
        return (
            shard_map.owners[shard] == nodes[0].node_id
            and replica.node_id in (shard_map.backups[shard])
        )

    # A crash and an immediate restart (as a supervisor does): the lease is still alive,
    # so the map does not change and the owners bring it up to date.
    replica.kill9()
    later = [_create(nodes[0], key, u) for u in users[40:]]
    replica.start()
    eventually(lambda: _drained(cluster, key, nodes), timeout=15)
    assert cluster.shard_map().version == shard_map.version
    owner_log = nodes[0].log_tail(200_000)
    assert f"caught {replica.node_id} up" in owner_log, owner_log[-3000:]
    # Proof it holds what happened while it was down: its owner dies, it takes over.
    mine = [s for s in first + later if backed_up_by_replica(s)]
    assert mine
    nodes[0].kill9()
    eventually(lambda: all(_valid(replica, key, s["token"]) == 200 for s in mine), timeout=15)
