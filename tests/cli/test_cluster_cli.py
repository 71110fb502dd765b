"""``tokmesh-cli cluster status|nodes|rebalance|leave``.

On a real standalone node every cluster command ends with the server's 501 and a hint.
The rendering tests serve a fixed cluster answer from the recording endpoint of
``tests/cli/support.py`` (a stand-in for a remote cluster node, which these tests do not
start): they check what the CLI sends and how it prints what a node answers. The real
routes on a real cluster are exercised by the multi-process tests of ``tests/cluster``.
"""

from __future__ import annotations

import json
from typing import Any

import pexpect
import pytest

from tests.cli.support import EXE, Cli, recording_server

KEY = "tmak-01aaaaaaaaaaaaaaaaaaaaaaaa:tmas_secret"
A = "tmnd-01kcaaaaaaaaaaaaaaaaaaaaaa"
B = "tmnd-01kcbbbbbbbbbbbbbbbbbbbbbb"
C = "tmnd-01kccccccccccccccccccccccc"

STATUS: dict[str, Any] = {
    "cluster_id": "6f1c2a52-8d0e-4a51-9a2e-1c4f0b7f3e10",
    "node_id": A,
    "leader_id": B,
    "state": "ok",
    "membership": "connected",
    "nodes": {"total": 3, "active": 2, "suspect": 1, "down": 0},
    "parity": {"even": False, "health": "OK"},
    "shard_map": {"version": 7, "owners": {A: 85, B: 86, C: 85}},
    "replication_factor": 1,
    "under_replicated_shards": [],
}


def _node(node_id: str, status: str, role: str, shards: int, uptime: int | None) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "address": None if uptime is None else f"127.0.0.1:53{shards}",
        "status": status,
        "role": role,
        "version": None if uptime is None else "1.4.0",
        "uptime_seconds": uptime,
        "metrics": {"shards": shards, "vnodes": 150},
    }


NODES: dict[str, Any] = {
    "nodes": [
        _node(A, "active", "follower", 85, 9000),
        _node(B, "active", "leader", 86, 90),
        _node(C, "down", "follower", 85, None),
    ],
    "cluster_id": STATUS["cluster_id"],
    "leader_id": B,
}


# -- a real standalone node -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("nodes",),
        ("rebalance",),
        ("leave", "--yes"),
        ("leave", "--yes", "--node-id", B),
    ],
)
def test_standalone_node_answers_501_with_a_hint(
    cli: Cli, admin: tuple[str, str], args: tuple[str, ...]
) -> None:
    url, key = admin
    r = cli.run("-t", url, "-k", key, "cluster", *args)
    assert r.code == 1, (r.out, r.err)
    lines = r.err.splitlines()
    assert lines[0] == "Error: cluster mode is not enabled on this node"
    assert lines[1] == "  Code: TM-SYS-5010"
    assert lines[-1] == (
        "Suggestion: This node runs standalone; cluster commands need a node started with "
        "cluster.enabled: true."
    )
    doc = cli.run("-t", url, "-k", key, "-o", "json", "cluster", *args).json()
    assert doc == {
        "success": False,
        "error": {
            "code": "TM-SYS-5010",
            "message": "cluster mode is not enabled on this node",
            "suggestion": (
                "This node runs standalone; cluster commands need a node started with "
                "cluster.enabled: true."
            ),
        },
    }


def test_system_status_of_a_standalone_node_has_no_role(cli: Cli, admin: tuple[str, str]) -> None:
    url, key = admin
    data = cli.run("-t", url, "-k", key, "-o", "json", "system", "status").json()["data"]
    assert data["cluster_state"] == "healthy"
    assert "role" not in data and "nodes" not in data


# -- rendering of a cluster node's answers ----------------------------------------------------


def test_status_summary(cli: Cli) -> None:
    with recording_server(reply=STATUS) as (url, seen):
        r = cli.run("-t", url, "-k", KEY, "cluster", "status")
    assert r.code == 0, r.err
    assert [(s.method, s.path) for s in seen] == [("GET", "/admin/v1/cluster/status")]
    assert seen[0].headers["Authorization"] == f"Bearer {KEY}"
    lines = r.out.splitlines()
    assert lines[0] == "CLUSTER STATUS"
    body = [line for line in lines if line.startswith("  ")]
    assert body == [
        "  Cluster ID:     6f1c2a52-8d0e-4a51-9a2e-1c4f0b7f3e10",
        f"  This Node:      {A}",
        f"  Leader:         {B}",
        "  State:          ok",
        "  Membership:     connected",
        "  Nodes:          3 total: 2 active, 1 suspect, 0 down",
        "  Parity:         odd (OK)",
        "  Shard Map:      version 7, 256 shards",
        "  Replication:    factor 1, 0 under-replicated shards",
    ]
    # Shards per node, most first, IDs truncated as in every table.
    table = lines[lines.index("NODE ID           SHARDS") :]
    assert table == [
        "NODE ID           SHARDS",
        "tmnd-01kcbbbb...  86",
        "tmnd-01kcaaaa...  85",
        "tmnd-01kccccc...  85",
    ]


def test_status_of_the_leader_before_any_shard_map(cli: Cli) -> None:
    early = {
        **STATUS,
        "leader_id": A,
        "state": "initializing",
        "shard_map": None,
        "parity": {"even": True, "health": "DEGRADED"},
    }
    with recording_server(reply=early) as (url, _):
        r = cli.run("-t", url, "-k", KEY, "cluster", "status")
        q = cli.run("-t", url, "-k", KEY, "-q", "cluster", "status")
    assert r.code == 0, r.err
    assert f"  This Node:      {A} (leader)" in r.out.splitlines()
    assert "  Shard Map:      none yet" in r.out.splitlines()
    assert "  Parity:         even (DEGRADED)" in r.out.splitlines()
    assert "NODE ID" not in r.out
    assert q.out == "initializing\n"


def test_status_structured_output_is_the_server_data(cli: Cli) -> None:
    with recording_server(reply=STATUS) as (url, _):
        j = cli.run("-t", url, "-k", KEY, "-o", "json", "cluster", "status")
        y = cli.run("-t", url, "-k", KEY, "-o", "yaml", "cluster", "status")
    assert j.json() == {"success": True, "data": STATUS}
    import yaml

    assert yaml.safe_load(y.out) == {"success": True, "data": STATUS}


def test_nodes_table(cli: Cli) -> None:
    with recording_server(reply=NODES) as (url, seen):
        r = cli.run("-t", url, "-k", KEY, "cluster", "nodes")
        full = cli.run("-t", url, "-k", KEY, "-v", "--no-headers", "cluster", "nodes")
        wide = cli.run("-t", url, "-k", KEY, "-o", "wide", "cluster", "nodes")
        quiet = cli.run("-t", url, "-k", KEY, "-q", "cluster", "nodes")
    assert r.code == full.code == wide.code == quiet.code == 0
    assert {(s.method, s.path) for s in seen} == {("GET", "/admin/v1/cluster/nodes")}
    rows = [line.split() for line in r.out.splitlines()]
    assert rows == [
        ["NODE", "ID", "ADDRESS", "STATUS", "ROLE", "VERSION", "UPTIME", "SHARDS"],
        ["tmnd-01kcaaaa...", "127.0.0.1:5385", "active", "follower", "1.4.0", "2h", "30m", "85"],
        ["tmnd-01kcbbbb...", "127.0.0.1:5386", "active", "leader", "1.4.0", "1m", "86"],
        ["tmnd-01kccccc...", "-", "down", "follower", "-", "-", "85"],
    ]
    assert [line.split()[0] for line in full.out.splitlines()] == [A, B, C]
    assert wide.out.splitlines()[0].split()[-2:] == ["SHARDS", "VNODES"]
    assert all(line.split()[-1] == "150" for line in wide.out.splitlines()[1:])
    assert quiet.out.splitlines() == [A, B, C]


def test_nodes_json_keeps_cluster_and_leader_ids(cli: Cli) -> None:
    with recording_server(reply=NODES) as (url, _):
        r = cli.run("-t", url, "-k", KEY, "-o", "json", "cluster", "nodes")
    assert r.json() == {"success": True, "data": NODES}


def test_rebalance_says_what_was_done(cli: Cli) -> None:
    reply = {"status": "not_started", "reason": "moving live shards needs replication"}
    with recording_server(reply=reply) as (url, seen):
        r = cli.run("-t", url, "-k", KEY, "cluster", "rebalance")
        dry = cli.run("-t", url, "-k", KEY, "--dry-run", "cluster", "rebalance")
    assert r.code == 0 and dry.code == 0
    assert r.out.splitlines()[1:] == [
        "Rebalance not started.",
        "  Reason: moving live shards needs replication",
    ]
    assert dry.out.splitlines()[-1] == "[DRY RUN] Would rebalance the cluster's shards"
    assert len(seen) == 1  # the dry run sent nothing
    assert (seen[0].method, seen[0].path, seen[0].body) == (
        "POST",
        "/admin/v1/cluster/rebalance",
        b"{}",
    )
    assert "X-Nonce" in seen[0].headers  # a POST carries the anti-replay headers


LEFT = {
    "status": "left",
    "node_id": A,
    "data_moved": False,
    "note": "shards are reassigned without their sessions until replication lands",
}


def test_leave_with_yes(cli: Cli) -> None:
    with recording_server(reply=LEFT) as (url, seen):
        r = cli.run("-t", url, "-k", KEY, "cluster", "leave", "--yes")
        j = cli.run("-t", url, "-k", KEY, "-o", "json", "cluster", "leave", "-y")
    assert r.code == 0, r.err
    assert r.out.splitlines()[1:] == [
        f"Node {A} left the cluster.",
        "  Data moved: no",
        "  Note: shards are reassigned without their sessions until replication lands",
    ]
    assert j.json() == {"success": True, "data": LEFT}
    assert [(s.method, s.path) for s in seen] == [("POST", "/admin/v1/cluster/leave")] * 2


def test_leave_of_another_node_uses_the_removal_route(cli: Cli) -> None:
    with recording_server(reply={"status": "removed", "node_id": C}) as (url, seen):
        r = cli.run("-t", url, "-k", KEY, "cluster", "leave", "--force", "--node-id", C)
    assert r.code == 0, r.err
    assert [(s.method, s.path) for s in seen] == [("POST", f"/admin/v1/cluster/nodes/{C}/remove")]


def test_leave_without_yes_needs_a_terminal(cli: Cli) -> None:
    with recording_server(reply=LEFT) as (url, seen):
        r = cli.run("-t", url, "-k", KEY, "cluster", "leave")
        dry = cli.run("-t", url, "-k", KEY, "--dry-run", "cluster", "leave")
    assert r.code == 64
    assert "confirmation required but stdin is not a terminal" in r.err
    assert dry.code == 0 and "[DRY RUN] Would make node" in dry.out
    assert seen == []


def _spawn(cli: Cli, url: str) -> pexpect.spawn:
    return pexpect.spawn(
        EXE,
        ["-t", url, "-k", KEY, "cluster", "leave"],
        env=cli.env(),
        encoding="utf-8",
        timeout=30,
        dimensions=(50, 200),
        cwd=str(cli.home),
    )


def test_leave_asks_on_a_terminal(cli: Cli) -> None:
    with recording_server(reply=LEFT) as (url, seen):
        host = url.removeprefix("http://")
        c = _spawn(cli, url)
        c.expect_exact(f"Are you sure node '{host}' should leave the cluster?")
        c.expect_exact("[y/N]: ")
        c.sendline("n")
        c.expect_exact("Cancelled.")
        c.expect(pexpect.EOF)
        c.close()
        assert c.exitstatus == 2
        assert seen == []

        c = _spawn(cli, url)
        c.expect_exact("[y/N]: ")
        c.sendline("yes")
        c.expect_exact(f"Node {A} left the cluster.")
        c.expect(pexpect.EOF)
        c.close()
        assert c.exitstatus == 0
        assert [(s.method, s.path) for s in seen] == [("POST", "/admin/v1/cluster/leave")]
        assert json.loads(seen[0].body or b"{}") == {}
