"""Real multi-process clusters for tests: one etcd, N ``tokmesh-server`` processes, mTLS.

Each node is a :class:`~tests.support.server.ServerProcess` with the cluster on: its own
data dir, HTTP and RESP ports, a cluster port on loopback, and a certificate from one
``trustme`` CA whose CN is the node id (the cluster port's peer identity) and whose SANs
cover 127.0.0.1. Leases are short (2 s) so that a killed node is seen dead quickly.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import trustme

from tests.cluster.conftest import EtcdMember
from tests.support.server import ServerProcess, free_port
from tokmesh.cluster.shard_map import ShardMap

LEASE_TTL = "2s"


class ClusterNodeProcess(ServerProcess):
    """One node of a test cluster."""

    def __init__(self, root: Path, node_id: str, overrides: dict[str, Any]) -> None:
        super().__init__(root, overrides)
        self.node_id = node_id
        self.redis_port = int(self.config["server"]["redis"]["address"].rsplit(":", 1)[1])

    def ready_checks(self) -> dict[str, Any]:
        """``details.checks`` of ``/ready`` (or of its 200 answer)."""
        r = httpx.get(self.base_url + "/ready", timeout=2)
        body = r.json()
        data = body.get("data") or body.get("details") or {}
        return dict(data.get("checks") or data.get("details", {}).get("checks") or {})


class TestCluster:
    """``size`` nodes on one etcd, started together; :meth:`stop` ends them all."""

    __test__ = False  # not a test class for pytest

    def __init__(
        self,
        root: Path,
        etcd: EtcdMember | list[EtcdMember],
        size: int = 3,
        prefix: str = "",
        *,
        replication_factor: int = 1,
        ack: str = "revoke",
        lease_ttl: str = LEASE_TTL,
    ) -> None:
        self.root = root
        self.etcd_members = etcd if isinstance(etcd, list) else [etcd]
        self.etcd = self.etcd_members[0]
        self.replication_factor = replication_factor
        self.ack = ack
        self.lease_ttl = lease_ttl
        self.prefix = prefix or f"/tm-{root.name}/"
        self.ca = trustme.CA()
        self.ca_path = root / "ca.pem"
        root.mkdir(parents=True, exist_ok=True)
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        self.nodes: list[ClusterNodeProcess] = []
        for i in range(size):
            self.nodes.append(self._make(f"tmnd-test{i + 1}", size))

    def _make(self, node_id: str, expect: int, home: Path | None = None) -> ClusterNodeProcess:
        home = home or self.root / node_id
        home.mkdir(parents=True, exist_ok=True)
        cert = self.ca.issue_cert("127.0.0.1", "localhost", common_name=node_id)
        cert_path, key_path = home / "node.pem", home / "node.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(key_path))
        cluster_port = free_port()
        overrides: dict[str, Any] = {
            "server": {"redis": {"enabled": True, "address": f"127.0.0.1:{free_port()}"}},
            "cluster": {
                "enabled": True,
                "node_id": node_id,
                "listen_address": f"127.0.0.1:{cluster_port}",
                "advertise_address": f"127.0.0.1:{cluster_port}",
                "tls": {
                    "cert_file": str(cert_path),
                    "key_file": str(key_path),
                    "client_ca_file": str(self.ca_path),
                },
                "etcd": {
                    "endpoints": [m.url for m in self.etcd_members],
                    "prefix": self.prefix,
                    "lease_ttl": self.lease_ttl,
                },
                "bootstrap": {"expect_nodes": expect},
                "data": {"replication_factor": self.replication_factor},
                "replication": {"ack": self.ack},
            },
        }
        return ClusterNodeProcess(home, node_id, overrides)

    def start(self, timeout: float = 60.0) -> None:
        """Start every node, then wait until all are ready (a shard map is in force)."""
        for node in self.nodes:
            node.start(wait_ready=False)
        for node in self.nodes:
            node.wait_ready(timeout)

    def add_node(self, node_id: str) -> ClusterNodeProcess:
        """A further node of this cluster (not started)."""
        node = self._make(node_id, len(self.nodes))
        self.nodes.append(node)
        return node

    def node(self, node_id: str) -> ClusterNodeProcess:
        """The node with ``node_id``."""
        return next(n for n in self.nodes if n.node_id == node_id)

    def shard_map(self) -> ShardMap:
        """The shard map in etcd, read through the etcd gateway as any client could."""
        key = base64.b64encode((self.prefix + "shardmap").encode()).decode()
        url = self.etcd_members[0].url
        for member in self.etcd_members:
            if member.proc is not None and member.proc.poll() is None:
                url = member.url
                break
        r = httpx.post(url + "/v3/kv/range", json={"key": key}, timeout=5)
        kvs = r.json().get("kvs") or []
        assert kvs, "no shard map in etcd"
        return ShardMap.decode(base64.b64decode(kvs[0]["value"]))

    def owner_of(self, session_id: str) -> str:
        """The node id that owns ``session_id``'s shard."""
        return self.shard_map().owner_of(session_id)

    def admin_key(self) -> str:
        """An admin key (made through node 1's local socket; stored in etcd, so valid on
        every node)."""
        return self.nodes[0].create_admin_key()

    def stop(self) -> None:
        """End every node still running (kill -9: a graceful stop would first move each
        node's shards to the others, which a test's teardown does not need)."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.kill9()
            node.proc = None


@contextlib.contextmanager
def running_cluster(root: Path, size: int = 3, **options: Any) -> Iterator[TestCluster]:
    """A started cluster of ``size`` nodes on one etcd of its own, ended on exit.
    ``options`` go to :class:`TestCluster` (``replication_factor``, ``ack``)."""
    etcd = EtcdMember(root / "etcd", "solo", free_port(), free_port())
    etcd.start()
    cluster = TestCluster(root / "nodes", etcd, size, **options)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        etcd.stop()


def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """``check()``'s first truthy result within ``timeout`` seconds, else the last error."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # the condition is not met yet
            last = exc
        time.sleep(interval)
    if last is not None:
        raise AssertionError(f"not within {timeout}s: {last!r}") from last
    raise AssertionError(f"not within {timeout}s")
