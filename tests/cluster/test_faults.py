"""The fault-injection suite: three etcd members, three TokMesh nodes with replication
factor 2, mixed load with a fixed seed, one fault per case, and the checks of
``fault_load`` afterwards (no revocation lost or revived, acknowledged creates lost only
inside the replication lag, one owner per shard per epoch, epochs only grow).

Leases are 2 s, so a failover completes in about 3 s; each case runs about 30 s of load.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.cluster_support import ClusterNodeProcess, TestCluster, eventually
from tests.cluster.conftest import EtcdCluster
from tests.cluster.fault_load import Load, MapMonitor, Report, check, summary
from tests.cluster.tcp_proxy import TcpProxy
from tokmesh.domain.shards import shard_of

pytestmark = pytest.mark.cluster_faults

#: Seconds of load before the fault, and after it (the whole case stays near 30 s).
BEFORE = 8.0
AFTER = 14.0


def _start(
    root: Path,
    etcd: EtcdCluster,
    ack: str = "revoke",
    prepare: Callable[[TestCluster], None] | None = None,
) -> TestCluster:
    """Three nodes, replication factor 2; ``prepare`` may change configs before start."""
    c = TestCluster(root, list(etcd.members), 3, replication_factor=2, ack=ack)
    if prepare is not None:
        prepare(c)
    c.start()
    c.admin = c.admin_key()  # type: ignore[attr-defined]
    return c


@pytest.fixture
def etcd3(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path / "etcd3")
    cluster.start()
    yield cluster
    cluster.stop()


def _key(c: TestCluster) -> str:
    return c.admin  # type: ignore[attr-defined,no-any-return]


def _run_load(c: TestCluster, fault: Any, *, seed: int) -> tuple[Load, MapMonitor, float]:
    """Load for BEFORE seconds, ``fault()``, load for AFTER seconds; returns the load,
    the map monitor and when the fault happened."""
    load = Load(c, _key(c), seed=seed)
    monitor = MapMonitor(c)
    monitor.start()
    load.start()
    try:
        time.sleep(BEFORE)
        fault_at = time.monotonic()
        fault(load)
        time.sleep(AFTER)
    finally:
        load.stop()
        monitor.stop()
    return load, monitor, fault_at


def _assert_sound(report: Report, monitor: MapMonitor, *, max_loss_window: float) -> None:
    print("fault report:", json.dumps(summary(report)))
    assert report.creates_acknowledged > 100 and report.revokes_acknowledged > 20, summary(report)
    assert report.revived == [], report.revived[:5]
    assert monitor.violations == [], monitor.violations[:5]
    for sid, before in report.lost_creates:
        assert before < max_loss_window, f"{sid} lost although acknowledged {before:.2f}s before"


def _owned_tokens(c: TestCluster, load: Load, node_id: str) -> list[str]:
    shard_map = c.shard_map()
    return [
        o.token
        for o in load.history.of("create", "ok")
        if shard_map.owners[shard_of(o.session_id)] == node_id
    ]


@pytest.mark.parametrize("ack", ["revoke", "replica"])
def test_kill_an_owner(tmp_path: Path, etcd3: EtcdCluster, ack: str) -> None:
    c = _start(tmp_path / "nodes", etcd3, ack)
    victim = c.nodes[2]
    moved: list[float] = []
    try:

        def fault(load: Load) -> None:
            load.down.add(victim.node_id)
            victim.kill9()
            killed = time.monotonic()
            tokens = _owned_tokens(c, load, victim.node_id)
            revoked = {o.token for o in load.history.of("revoke")}
            probe = next(t for t in tokens if t not in revoked)
            with c.nodes[0].client(_key(c)) as client:

                def answers() -> bool:
                    r = client.post("/tokens/validate", json={"token": probe})
                    return r.status_code in (200, 401)

                eventually(answers, timeout=15, interval=0.05)
            moved.append(time.monotonic() - killed)

        load, monitor, fault_at = _run_load(c, fault, seed=11)
        report = check(load, c.nodes[:2], fault_at)
    finally:
        c.stop()
    print(f"ack={ack}: traffic moved {moved[0]:.2f}s after kill -9")
    assert moved[0] < 10
    # Revocations are never lost; creates only inside the replication lag (async), and
    # not at all when every write waits for a replica.
    _assert_sound(report, monitor, max_loss_window=1.5 if ack == "revoke" else 0.0)
    if ack == "replica":
        assert report.lost_creates == []


def test_pause_an_owner_beyond_its_lease(tmp_path: Path, etcd3: EtcdCluster) -> None:
    c = _start(tmp_path / "nodes", etcd3)
    victim = c.nodes[1]
    key = _key(c)
    try:

        def fault(load: Load) -> None:
            assert victim.proc is not None
            load.down.add(victim.node_id)
            os.kill(victim.proc.pid, signal.SIGSTOP)
            eventually(lambda: victim.node_id not in c.shard_map().owners, timeout=15)
            time.sleep(1.0)
            os.kill(victim.proc.pid, signal.SIGCONT)
            # Woken, it refuses to act for its former shards until it has the new map;
            # then it serves again as a node without them.
            eventually(lambda: victim.ready_checks().get("cluster") == "ok", timeout=15)
            load.down.discard(victim.node_id)

        load, monitor, fault_at = _run_load(c, fault, seed=12)
        report = check(load, c.nodes, fault_at)
        stale = _metric(victim, key, "tokmesh_cluster_fenced_refusals_total")
    finally:
        c.stop()
    _assert_sound(report, monitor, max_loss_window=1.5)
    print("fenced refusals on the paused node:", stale)


def _metric(node: ClusterNodeProcess, key: str, name: str) -> float:
    r = httpx.get(node.base_url + "/metrics", headers={"Authorization": f"Bearer {key}"})
    for line in r.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _etcd_through_proxies(etcd: EtcdCluster, index: int, into: list[TcpProxy]) -> Any:
    """A ``prepare`` that points node ``index`` at etcd through proxies (one per member)."""

    def prepare(c: TestCluster) -> None:
        into.extend(TcpProxy("127.0.0.1", m.client_port) for m in etcd.members)
        c.nodes[index].config["cluster"]["etcd"]["endpoints"] = [
            f"http://{p.address}" for p in into
        ]

    return prepare


def test_cut_a_node_off_from_etcd_and_compact_meanwhile(tmp_path: Path, etcd3: EtcdCluster) -> None:
    proxies: list[TcpProxy] = []
    c = _start(tmp_path / "nodes", etcd3, prepare=_etcd_through_proxies(etcd3, 2, proxies))
    key = _key(c)
    victim = c.nodes[2]
    seen: dict[str, Any] = {}
    try:

        def fault(load: Load) -> None:
            for p in proxies:
                p.cut()
            # Within its lease it fences itself: /ready 503, quorum lost, its shards
            # refused by it; the others fail its shards over.
            eventually(lambda: victim.ready_checks().get("cluster") != "ok", timeout=10)
            seen["quorum_lost"] = _metric(victim, key, "tokmesh_cluster_quorum_lost")
            eventually(lambda: victim.node_id not in c.shard_map().owners, timeout=15)
            # Compact etcd while the node's watch is down: it must resync, not miss.
            _compact(etcd3)
            time.sleep(2)
            for p in proxies:
                p.heal()
            eventually(lambda: victim.ready_checks().get("cluster") == "ok", timeout=20)
            # Its watch resumed past the compaction: it follows the map again.
            seen["caught_up"] = eventually(
                lambda: _status(victim, key)["shard_map"]["version"] == c.shard_map().version,
                timeout=20,
            )

        load, monitor, fault_at = _run_load(c, fault, seed=13)
        report = check(load, c.nodes, fault_at)
    finally:
        c.stop()
        for p in proxies:
            p.close()
    assert seen["quorum_lost"] == 1.0
    assert seen["caught_up"]
    _assert_sound(report, monitor, max_loss_window=1.5)


def test_cut_a_node_off_from_its_peers(tmp_path: Path, etcd3: EtcdCluster) -> None:
    proxies: list[TcpProxy] = []

    def prepare(c: TestCluster) -> None:
        # Peers reach the victim through a proxy on its advertised address.
        node = c.nodes[0]
        listen = node.config["cluster"]["listen_address"]
        proxies.append(TcpProxy("127.0.0.1", int(listen.rsplit(":", 1)[1])))
        node.config["cluster"]["advertise_address"] = proxies[0].address

    c = _start(tmp_path / "nodes", etcd3, prepare=prepare)
    victim = c.nodes[0]
    proxy = proxies[0]
    try:

        def fault(load: Load) -> None:
            proxy.cut()
            time.sleep(6)
            proxy.heal()

        load, monitor, fault_at = _run_load(c, fault, seed=14)
        # Its lease never lapsed: it kept its shards (no failover without etcd's word).
        assert victim.node_id in c.shard_map().owners
        report = check(load, c.nodes, fault_at)
    finally:
        c.stop()
        proxy.close()
    _assert_sound(report, monitor, max_loss_window=0.0)


def test_kill_the_etcd_leader(tmp_path: Path, etcd3: EtcdCluster) -> None:
    c = _start(tmp_path / "nodes", etcd3)
    try:

        def fault(load: Load) -> None:
            etcd3.leader().kill()

        load, monitor, fault_at = _run_load(c, fault, seed=15)
        report = check(load, c.nodes, fault_at)
    finally:
        c.stop()
    _assert_sound(report, monitor, max_loss_window=0.0)
    assert report.lost_creates == []


def test_restart_a_node_under_load(tmp_path: Path, etcd3: EtcdCluster) -> None:
    c = _start(tmp_path / "nodes", etcd3)
    victim = c.nodes[1]
    key = _key(c)
    try:

        def fault(load: Load) -> None:
            load.down.add(victim.node_id)
            victim.stop()
            time.sleep(3)
            victim.start(wait_ready=False)
            victim.wait_ready(30)
            load.down.discard(victim.node_id)
            # It catches up: the owners' copies reach it and their queues drain.
            eventually(lambda: _drained(c, key), timeout=20)

        load, monitor, fault_at = _run_load(c, fault, seed=16)
        report = check(load, c.nodes, fault_at)
    finally:
        c.stop()
    _assert_sound(report, monitor, max_loss_window=0.0)
    assert report.lost_creates == []


def _status(node: ClusterNodeProcess, key: str) -> dict[str, Any]:
    r = httpx.get(
        node.base_url + "/admin/v1/cluster/status", headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 200, r.text
    return dict(r.json()["data"])


def _drained(c: TestCluster, key: str) -> bool:
    for node in c.nodes:
        peers = _status(node, key)["replication"]["peers"]
        if any(p["queued"] for p in peers.values()):
            return False
    return True


def _compact(etcd: EtcdCluster) -> None:
    """Compact every live member's history up to its current revision."""
    for m in etcd.members:
        if m.proc is None:
            continue
        head = httpx.post(m.url + "/v3/kv/range", json={"key": base64.b64encode(b"x").decode()})
        revision = int(head.json()["header"]["revision"])
        r = httpx.post(m.url + "/v3/kv/compaction", json={"revision": str(revision)})
        assert r.status_code == 200, r.text
        return


def test_join_a_fourth_node_then_remove_one_under_load(tmp_path: Path, etcd3: EtcdCluster) -> None:
    c = _start(tmp_path / "nodes", etcd3)
    key = _key(c)
    fourth = c.add_node("tmnd-test4")
    leaving = c.nodes[0]
    misses: list[str] = []
    try:

        def fault(load: Load) -> None:
            # Join: the coordinator moves shards to the new node, with their data.
            load.down.add(fourth.node_id)
            fourth.start(wait_ready=False)
            fourth.wait_ready(30)
            load.down.discard(fourth.node_id)
            eventually(lambda: fourth.node_id in c.shard_map().owners, timeout=30)
            eventually(lambda: _rebalance_done(c, key), timeout=60)
            # Leave: the node drains its shards to the others first.
            with leaving.client(key) as client:
                r = client.post("/admin/v1/cluster/leave", json={}, timeout=70)
            assert r.status_code == 200, r.text
            assert r.json()["data"]["data_moved"] is True
            load.down.add(leaving.node_id)

        load, monitor, fault_at = _run_load(c, fault, seed=17)
        live = [n for n in c.nodes if n is not leaving]
        report = check(load, live, fault_at)
        final = c.shard_map()
        # Validations never failed for lack of an owner during the moves.
        misses = [
            f"{o.node} {o.detail}"
            for o in load.history.of("validate")
            if o.outcome != "ok" and o.node != leaving.node_id
        ]
    finally:
        c.stop()
    assert leaving.node_id not in final.owners
    assert fourth.node_id in final.owners
    counts = final.counts()
    assert max(counts.values()) - min(counts.values()) < 30, counts
    assert misses == [], misses[:5]
    _assert_sound(report, monitor, max_loss_window=0.0)
    assert report.lost_creates == []


def _rebalance_done(c: TestCluster, key: str) -> bool:
    progress = _status(c.nodes[1], key).get("rebalance") or {}
    return progress.get("state") == "done"
