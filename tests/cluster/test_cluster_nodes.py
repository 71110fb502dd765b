"""Three real ``tokmesh-server`` processes on one etcd: any node serves any request.

One cluster serves the whole module (starting it takes a few seconds); the test that kills
a node runs last and brings it back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.cluster.cluster_support import ClusterNodeProcess, TestCluster, eventually
from tests.cluster.conftest import EtcdMember
from tests.support.server import free_port
from tokmesh.domain.ids import new_session_id_in_shard
from tokmesh.domain.shards import shard_of
from tokmesh.domain.tokens import generate_token


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    root = tmp_path_factory.mktemp("cluster")
    etcd = EtcdMember(root / "etcd", "solo", free_port(), free_port())
    etcd.start()
    c = TestCluster(root / "nodes", etcd, 3)
    try:
        c.start()
        c.admin = c.admin_key()  # type: ignore[attr-defined]
        yield c
    finally:
        c.stop()
        etcd.stop()


def admin(c: TestCluster) -> str:
    return c.admin  # type: ignore[attr-defined,no-any-return]


def http(node: ClusterNodeProcess, key: str) -> httpx.Client:
    return node.client(key)


def resp(node: ClusterNodeProcess, key: str) -> redis.Redis:
    key_id, secret = key.split(":", 1)
    # Exactly as a user constructs it.
    return redis.Redis("127.0.0.1", node.redis_port, username=key_id, password=secret)


def create(node: ClusterNodeProcess, key: str, user: str, **extra: Any) -> dict[str, Any]:
    with http(node, key) as c:
        r = c.post("/sessions", json={"user_id": user, **extra})
    assert r.status_code == 201, r.text
    return dict(r.json()["data"])


def status(node: ClusterNodeProcess, key: str) -> dict[str, Any]:
    with http(node, key) as c:
        r = c.get("/admin/v1/cluster/status")
    assert r.status_code == 200, r.text
    return dict(r.json()["data"])


def test_every_node_is_ready_and_owns_its_share(cluster: TestCluster) -> None:
    for node in cluster.nodes:
        assert node.ready_checks() == {"storage": "ok", "cluster": "ok"}
    owners = status(cluster.nodes[1], admin(cluster))["shard_map"]["owners"]
    assert sorted(owners) == [n.node_id for n in cluster.nodes]
    assert all(84 <= count <= 86 for count in owners.values()), owners
    with http(cluster.nodes[0], admin(cluster)) as c:
        text = c.get("/metrics").text
    assert 'tokmesh_cluster_nodes_total{status="active"} 3.0' in text
    assert "tokmesh_cluster_quorum_lost 0.0" in text
    assert 'tokmesh_shard_keys_count{node_id="tmnd-test1"}' in text


def test_a_session_is_served_by_every_node_over_http(cluster: TestCluster) -> None:
    key = admin(cluster)
    for origin in cluster.nodes:
        made = create(origin, key, f"user-{origin.node_id}", ttl_seconds=600)
        sid, token = made["session_id"], made["token"]
        for node in cluster.nodes:
            with http(node, key) as c:
                v = c.post("/tokens/validate", json={"token": token})
                assert v.status_code == 200 and v.json()["data"]["session"]["id"] == sid, v.text
                g = c.get(f"/sessions/{sid}")
                assert (
                    g.status_code == 200
                    and g.json()["data"]["user_id"] == made["session"]["user_id"]
                )
                r = c.post(f"/sessions/{sid}/renew", json={"ttl_seconds": 900})
                assert r.status_code == 200, r.text
        with http(cluster.nodes[-1], key) as c:
            assert c.post(f"/sessions/{sid}/revoke", json={}).status_code == 200
        for node in cluster.nodes:
            with http(node, key) as c:
                v = c.post("/tokens/validate", json={"token": token})
                assert v.status_code == 401 and v.json()["code"] == "TM-TOKN-4012", v.text


def test_a_session_is_served_by_every_node_over_resp(cluster: TestCluster) -> None:
    key = admin(cluster)
    sid = new_session_id_in_shard(7)
    body = json.dumps({"user_id": "resp-user"})
    created = json.loads(resp(cluster.nodes[0], key).execute_command("TM.CREATE", sid, body))
    token = created["token"]
    for node in cluster.nodes:
        r = resp(node, key)
        assert r.execute_command("TM.VALIDATE", token) == b"OK"
        assert json.loads(r.get(sid))["user_id"] == "resp-user"
        assert r.expire(sid, 1200) is True
        assert 1100 <= r.ttl(sid) <= 1200
        assert r.exists(sid, new_session_id_in_shard(200), new_session_id_in_shard(90)) == 1
    assert resp(cluster.nodes[2], key).delete(sid) == 1
    for node in cluster.nodes:
        assert resp(node, key).get(sid) is None
    # Session ids are case-insensitive: an upper-case id routes to the same owner.
    for node in cluster.nodes:
        upper = new_session_id_in_shard(42).upper()
        made = resp(node, key).execute_command("TM.CREATE", upper, body)
        assert json.loads(made)["session_id"] == upper.lower(), made
        assert json.loads(resp(cluster.nodes[0], key).get(upper))["user_id"] == "resp-user"


def test_a_pipeline_of_validations_spanning_every_owner(cluster: TestCluster) -> None:
    """A gateway pipelines validations of tokens held all over the cluster: the local
    ones are answered in one loop, the others fetched from their owners, in order."""
    key = admin(cluster)
    tokens = [create(cluster.nodes[i % 3], key, f"pipe-{i}")["token"] for i in range(24)]
    asked = [*tokens, generate_token(), *tokens[:3]]
    for node in cluster.nodes:
        pipe = resp(node, key).pipeline(transaction=False)
        for token in asked:
            pipe.execute_command("TM.VALIDATE", token)
        replies = pipe.execute(raise_on_error=False)
        assert replies[:24] == [b"OK"] * 24
        assert isinstance(replies[24], redis.ResponseError)
        assert replies[25:] == [b"OK"] * 3


def test_a_client_chosen_token_validates_everywhere(cluster: TestCluster) -> None:
    """The token names a shard that does not hold its session: two hops, still valid."""
    key = admin(cluster)
    sid = new_session_id_in_shard(10)
    token = generate_token(200)  # routes to shard 200, the session is in shard 10
    resp(cluster.nodes[1], key).set(sid, json.dumps({"user_id": "chosen", "token": token}))
    for node in cluster.nodes:
        with http(node, key) as c:
            v = c.post("/tokens/validate", json={"token": token})
            assert v.status_code == 200 and v.json()["data"]["session"]["id"] == sid, v.text
        assert resp(node, key).execute_command("TM.VALIDATE", token) == b"OK"


def test_an_api_key_made_on_one_node_works_on_all(cluster: TestCluster) -> None:
    key = admin(cluster)
    with http(cluster.nodes[2], key) as c:
        r = c.post("/admin/v1/keys", json={"role": "issuer", "description": "made on node 3"})
    assert r.status_code == 201, r.text
    issuer = f"{r.json()['data']['key_id']}:{r.json()['data']['key_secret']}"
    for node in cluster.nodes:
        made = eventually(lambda n=node: create(n, issuer, "key-user"), timeout=2)  # type: ignore[misc]
        assert made["session_id"]


def test_revoke_by_user_reaches_every_shard(cluster: TestCluster) -> None:
    key = admin(cluster)
    user = "many-shards"
    tokens = [create(n, key, user)["token"] for n in cluster.nodes]
    # Sessions with chosen ids land outside the user's shard, on other owners.
    for shard in (3, 100, 250):
        sid = new_session_id_in_shard(shard)
        created = resp(cluster.nodes[0], key).execute_command(
            "TM.CREATE", sid, json.dumps({"user_id": user})
        )
        tokens.append(json.loads(created)["token"])
    owners = {shard_of(user)} | {3, 100, 250}
    assert len(owners) >= 3
    with http(cluster.nodes[1], key) as c:
        listed = c.get("/sessions", params={"user_id": user, "size": 100})
        assert listed.status_code == 200 and listed.json()["data"]["total_items"] == 6, listed.text
        r = c.post(f"/users/{user}/sessions/revoke", json={})
        assert r.status_code == 200 and r.json()["data"]["revoked_count"] == 6, r.text
    for node in cluster.nodes:
        with http(node, key) as c:
            for token in tokens:
                v = c.post("/tokens/validate", json={"token": token})
                assert v.json()["code"] == "TM-TOKN-4012", v.text


def test_sync_revoke_is_refused_everywhere_before_the_reply(cluster: TestCluster) -> None:
    key = admin(cluster)
    made = create(cluster.nodes[0], key, "sync-user")
    with http(cluster.nodes[2], key) as c:
        r = c.post(f"/sessions/{made['session_id']}/revoke", json={"sync": True})
        assert r.status_code == 200, r.text
    for node in cluster.nodes:
        with http(node, key) as c:
            v = c.post("/tokens/validate", json={"token": made["token"]})
            assert v.json()["code"] == "TM-TOKN-4012"


def _node_status(node: ClusterNodeProcess, key: str, node_id: str) -> str:
    with http(node, key) as c:
        r = c.get("/admin/v1/cluster/nodes")
    return next(n["status"] for n in r.json()["data"]["nodes"] if n["node_id"] == node_id)


def test_a_node_that_must_not_join_stops_with_the_reason(cluster: TestCluster) -> None:
    """A second process with a live node id, and a node whose data dir belongs to another
    cluster, both exit 1 saying why, and the cluster is untouched."""
    twin = cluster._make("tmnd-test1", 3, home=cluster.root / "twin")
    stranger = cluster._make("tmnd-stranger", 3)
    data = stranger.root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "cluster-id").write_text("0b7a3c0e-8f5e-4d2a-9c1b-2f6e7d8a9b0c\n")
    try:
        for node, reason in ((twin, "TM-CLST-4090"), (stranger, "refusing to join")):
            node.start(wait_ready=False)
            assert node.proc is not None
            assert node.proc.wait(30) == 1, node.log_tail()
            assert reason in node.log_tail(20000), node.log_tail()
    finally:
        twin.stop()
        stranger.stop()
    assert status(cluster.nodes[0], admin(cluster))["nodes"]["active"] == 3


def test_a_killed_node_makes_only_its_shards_unavailable_and_returns(
    cluster: TestCluster, tmp_path: Path
) -> None:
    key = admin(cluster)
    victim = cluster.nodes[2]
    survivors = cluster.nodes[:2]
    owners = status(survivors[0], key)["shard_map"]["owners"]
    assert owners[victim.node_id] > 0
    # One session per node's shards, made while all are up.
    sessions = {n.node_id: create(n, key, f"kill-{n.node_id}") for n in cluster.nodes}
    on_victim = [
        s
        for s in (create(survivors[0], key, f"probe-{i}") for i in range(40))
        if cluster.owner_of(s["session_id"]) == victim.node_id
    ]
    assert on_victim, "no session landed on the victim's shards"
    # A client-chosen token whose route the victim holds (in memory) for a session a
    # survivor holds: after the victim's restart, the survivor sends the route again.
    shard_map = cluster.shard_map()
    route_shard = shard_map.shards_of(victim.node_id)[0]
    held_shard = shard_map.shards_of(survivors[0].node_id)[0]
    routed_sid, routed_token = new_session_id_in_shard(held_shard), generate_token(route_shard)
    resp(survivors[1], key).set(
        routed_sid, json.dumps({"user_id": "routed", "token": routed_token})
    )
    victim.kill9()
    # Suspected by the gossip prober within 3 s, dead once its lease ran out.
    eventually(
        lambda: _node_status(survivors[0], key, victim.node_id) in ("suspect", "down"), timeout=3
    )
    eventually(lambda: _node_status(survivors[0], key, victim.node_id) == "down", timeout=10)
    with http(survivors[1], key) as c:
        v = c.post("/tokens/validate", json={"token": on_victim[0]["token"]})
        assert v.status_code == 503 and v.json()["code"] == "TM-CLST-5030", v.text
        for node_id, made in sessions.items():
            if cluster.owner_of(made["session_id"]) != victim.node_id:
                ok = c.post("/tokens/validate", json={"token": made["token"]})
                assert ok.status_code == 200, (node_id, ok.text)
    # It comes back with its WAL and serves its sessions again.
    victim.start(wait_ready=False)
    victim.wait_ready(60)
    with http(survivors[1], key) as c:
        eventually(
            lambda: (
                c.post("/tokens/validate", json={"token": on_victim[0]["token"]}).status_code == 200
            ),
            timeout=10,
        )
        eventually(
            lambda: c.post("/tokens/validate", json={"token": routed_token}).status_code == 200,
            timeout=10,
        )


def test_a_node_starts_without_etcd_and_joins_when_it_comes(tmp_path: Path) -> None:
    """etcd unreachable at start: the node starts anyway, /ready is 503 with
    ``checks.cluster: "connecting"``, each failed attempt is logged with its reason; once
    etcd answers, the node joins and becomes ready."""
    etcd = EtcdMember(tmp_path / "late-etcd", "late", free_port(), free_port())
    c = TestCluster(tmp_path / "nodes", etcd, 1)
    node = c.nodes[0]
    try:
        node.start(wait_ready=False)

        def connecting() -> bool:
            r = httpx.get(node.base_url + "/ready", timeout=2)
            checks = r.json().get("details", {}).get("checks", {})
            return r.status_code == 503 and checks.get("cluster") == "connecting"

        eventually(connecting, timeout=30)
        eventually(lambda: "cannot register node" in node.log_tail(50000), timeout=10)
        etcd.start()
        node.wait_ready(30)
        assert node.ready_checks() == {"storage": "ok", "cluster": "ok"}
    finally:
        c.stop()
        etcd.stop()


@pytest.mark.parametrize(
    ("cluster_yaml", "named"),
    [
        (
            "cluster: {enabled: true, listen_address: '127.0.0.1:5343', "
            "etcd: {endpoints: ['http://127.0.0.1:2379']}, tls: {cert_file: missing.pem, "
            "key_file: missing.key, client_ca_file: missing-ca.pem}}",
            ["cluster.advertise_address", "cluster.tls.cert_file"],
        ),
        ("cluster: {discovery: {seeds: ['10.0.0.1:5343']}}", ["cluster.discovery.seeds"]),
        (
            "cluster: {enabled: true, advertise_address: '127.0.0.1:5343'}",
            ["cluster.etcd.endpoints", "cluster.tls.cert_file"],
        ),
    ],
)
def test_bad_cluster_config_fails_at_start_naming_the_key(
    tmp_path: Path, cluster_yaml: str, named: list[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"storage: {{wal: {{dir: {tmp_path}/wal}}, snapshot: {{dir: {tmp_path}/snap}}}}\n"
        + cluster_yaml
        + "\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKMESH_")}
    exe = Path(sys.executable).with_name("tokmesh-server")
    proc = subprocess.run(
        [str(exe) if exe.exists() else "tokmesh-server", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for key in named:
        assert key in proc.stdout + proc.stderr, (key, proc.stdout + proc.stderr)
