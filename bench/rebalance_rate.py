"""Rebalance throughput against ``cluster.rebalance.max_rate`` (issue 13).

Three nodes (replication factor 2) take ``--sessions`` creates of distinct random users
through every node; then a fourth node joins and the coordinator moves its share to it,
with the data. For each cap in ``--rates`` (a fresh cluster each), prints the sessions
the new node received, the rebalance's elapsed time (from ``cluster status``), the bytes
that implies (sessions x the wire size of one replication entry of such a session) and
the ratio to the cap. The copy is what the cap throttles; the switch of each batch adds
a round of map writes on top, so the ratio stays below 1 and nears it as copies grow.

    python bench/rebalance_rate.py [--sessions 20000] [--rates 4Mbps,16Mbps]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._server import loadavg
from tests.cluster.cluster_support import TestCluster, eventually
from tests.cluster.conftest import EtcdMember
from tests.support.server import free_port
from tokmesh.config.types import parse_rate
from tokmesh.domain.session import Session


def _entry_bytes(sample: dict[str, object]) -> int:
    """The JSON size of one replication entry carrying a session shaped like ``sample``."""
    now = int(time.time() * 1000)
    session = Session(
        id=str(sample["session_id"]),
        user_id=str(sample["user_id"]),
        token_hash=os.urandom(32),
        created_at=now,
        expires_at=now + 3_600_000,
        last_active=now,
        ttl=3_600_000,
    )
    record = session.to_record()
    return len(orjson.dumps([17, 3, 1 << 40, session.id, session.user_id, record]))


def run(root: Path, rate: str, sessions: int) -> dict[str, float]:
    etcd = EtcdMember(root / "etcd", "solo", free_port(), free_port())
    etcd.start()
    cluster = TestCluster(root / "nodes", etcd, 3, replication_factor=2, lease_ttl="5s")
    try:
        for node in cluster.nodes:
            node.config["cluster"]["rebalance"] = {"max_rate": rate, "min_ttl": "0s"}
        cluster.start()
        key = cluster.admin_key()
        headers = {"Authorization": f"Bearer {key}"}

        def create(i: int) -> dict[str, object]:
            node = cluster.nodes[i % 3]
            user = f"u{random.getrandbits(48):012x}"
            r = httpx.post(
                node.base_url + "/sessions",
                json={"user_id": user, "ttl_seconds": 3600},
                headers=headers,
                timeout=10,
            )
            assert r.status_code == 201, r.text
            return dict(r.json()["data"], user_id=user)

        with ThreadPoolExecutor(8) as pool:
            made = list(pool.map(create, range(sessions)))
        fourth = cluster.add_node("tmnd-test4")
        fourth.config["cluster"]["rebalance"] = {"max_rate": rate, "min_ttl": "0s"}
        fourth.start()

        def progress() -> dict[str, float] | None:
            r = httpx.get(cluster.nodes[0].base_url + "/admin/v1/cluster/status", headers=headers)
            data = r.json()["data"]["rebalance"]
            return data if data.get("state") == "done" and data.get("total") else None

        done = eventually(progress, timeout=600, interval=0.2)
        metrics = httpx.get(fourth.base_url + "/metrics", headers=headers).text
        held = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("tokmesh_shard_keys_count{")
        )
        moved_bytes = held * _entry_bytes(made[0])
        elapsed = float(done["elapsed_seconds"])
        cap = parse_rate(rate) / 8
        return {
            "shards_moved": float(done["moved"]),
            "sessions_moved": held,
            "elapsed_s": elapsed,
            "bytes_per_s": moved_bytes / elapsed,
            "cap_bytes_per_s": cap,
            "ratio_to_cap": moved_bytes / elapsed / cap,
        }
    finally:
        cluster.stop()
        etcd.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=20_000)
    ap.add_argument("--rates", default="4Mbps,16Mbps")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; load average before: {loadavg()}")
    print(f"3 nodes, RF 2, {args.sessions} sessions; a 4th node joins")
    for rate in args.rates.split(","):
        with tempfile.TemporaryDirectory(prefix="tm-rebalance-") as tmp:
            result = run(Path(tmp), rate, args.sessions)
        print(f"max_rate {rate}: " + orjson.dumps(result).decode())
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
