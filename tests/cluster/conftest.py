"""Real etcd processes for cluster tests: one member, or a three-member cluster.

Every member listens on free loopback ports and keeps its data under a temp dir (the WAL
preallocates 2 x 64 MB, so never share one data dir between tests). The fixtures are
meant for every cluster test: ``etcd`` is one member shared by a module (tests isolate
themselves with a key prefix of their own, ``etcd_prefix``); ``etcd_factory`` starts
fresh members a test may restart or kill; ``etcd_cluster`` is three members.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import free_port


class EtcdMember:
    """One ``etcd`` process; ``start`` waits until its client port answers /health."""

    def __init__(self, root: Path, name: str, client_port: int, peer_port: int) -> None:
        self.root = root
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = root / f"{name}.etcd"
        self.log_path = root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.initial_cluster = f"{name}=http://127.0.0.1:{peer_port}"
        self.extra_args: list[str] = []
        # Set both to serve clients over TLS (see ``use_tls``).
        self.scheme = "http"
        self.health_verify: ssl.SSLContext | bool = True

    def use_tls(self, cert: str, key: str, ca: str, client_ctx: ssl.SSLContext) -> None:
        """Serve clients over TLS and require a client certificate signed by ``ca``."""
        self.scheme = "https"
        self.health_verify = client_ctx
        self.extra_args += [
            "--cert-file", cert, "--key-file", key,
            "--trusted-ca-file", ca, "--client-cert-auth",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, wait: bool = True) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            "etcd",
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-token", f"tm-{self.root.name}",
            # Short elections so a lost leader is replaced quickly in tests.
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--log-level", "warn",
            *self.extra_args,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited: {self.log_path.read_text()[-2000:]}")
            try:
                resp = httpx.get(self.url + "/health", timeout=0.5, verify=self.health_verify)
                if resp.json().get("health") == "true":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"etcd {self.name} not healthy in {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def status(self) -> dict[str, str]:
        """``/v3/maintenance/status`` of this member (leader and member IDs as strings)."""
        resp = httpx.post(self.url + "/v3/maintenance/status", json={}, timeout=2)
        return dict(resp.json()["header"], leader=resp.json().get("leader", ""))


class EtcdCluster:
    """Three members on loopback, formed together."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.members = [EtcdMember(root, f"m{i}", free_port(), free_port()) for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.members]

    def start(self) -> None:
        for m in self.members:
            m.start(wait=False)
        for m in self.members:
            m.wait_healthy()

    def leader(self) -> EtcdMember:
        """The member that is leader now, asked of any live member."""
        for m in self.members:
            if m.proc is None:
                continue
            st = m.status()
            if st.get("leader") == st.get("member_id"):
                return m
        raise RuntimeError("no member reports itself leader")

    def stop(self) -> None:
        for m in self.members:
            m.stop()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    """One etcd member shared by the tests of a module (use ``etcd_prefix`` per test)."""
    member = EtcdMember(tmp_path_factory.mktemp("etcd"), "solo", free_port(), free_port())
    member.start()
    yield member
    member.stop()


@pytest.fixture
def etcd_prefix() -> bytes:
    """A key prefix no other test uses, so tests can share one etcd."""
    return f"/t-{uuid.uuid4().hex[:12]}/".encode()


@pytest.fixture
def etcd_factory(tmp_path: Path) -> Iterator[object]:
    """Start fresh single members a test owns (to restart or kill them)."""
    made: list[EtcdMember] = []

    def make(name: str = "e") -> EtcdMember:
        member = EtcdMember(tmp_path / name, name, free_port(), free_port())
        made.append(member)
        member.start()
        return member

    yield make
    for m in made:
        m.stop()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """Three etcd members forming one cluster; a test may kill any of them."""
    cluster = EtcdCluster(tmp_path / "etcd3")
    cluster.start()
    yield cluster
    cluster.stop()
