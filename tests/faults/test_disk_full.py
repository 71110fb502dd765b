"""A full disk under a real server: refused writes never come back, acknowledged ones stay.

Each node keeps its whole data directory (WAL, snapshots, audit log, node id) on its own
small tmpfs; its config and its log are elsewhere. Concurrent creates with distinct user
ids run until the disk is full, so every create is known to be acknowledged (201) or
refused (500 ``TM-SYS-5001``); after a restart exactly the acknowledged ones exist.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from tests.support.server import ServerProcess, free_port

from .conftest import MountTmpfs, fill, fill_up, free_space

pytestmark = pytest.mark.fault

#: Independent nodes filling their disks at the same time (the issue asks for over 20).
RUNS = 20
DISK_KIB = 2048
WRITERS = 8
#: Refusals to collect before the writers stop: several writers race into the full disk.
REFUSALS = 3 * WRITERS
#: A disk that never fills up would make the writers go on forever.
MAX_CREATES = 5000
START_TIMEOUT = 120.0
NO_SPACE = "No space left on device"


@attrs.define
class Creates:
    """What the writers were told: acknowledged ``user_id -> session_id``, refused ids."""

    acked: dict[str, str] = attrs.Factory(dict)
    refused: set[str] = attrs.Factory(set)


_ports_lock = threading.Lock()
_ports_taken: set[int] = set()


def node_on(disk: Path, root: Path, sync_mode: str) -> ServerProcess:
    """A node whose data directory is ``disk`` (config and log under ``root``)."""
    node = ServerProcess(
        root,
        {
            "storage": {
                "wal": {"dir": str(disk / "wal"), "sync_mode": sync_mode},
                "snapshot": {"dir": str(disk / "snapshots")},
            }
        },
    )
    # A port is free when picked, not when the node binds it: twenty nodes picking at
    # once can draw the same one, and one node's /ready would then answer for another.
    with _ports_lock:
        while node.http_port in _ports_taken:
            node.http_port = free_port()
        _ports_taken.add(node.http_port)
    node.config["server"]["http"]["address"] = f"127.0.0.1:{node.http_port}"
    return node


def client(node: ServerProcess, key: str | None = None) -> httpx.Client:
    """A client of ``node``. Plain HTTP, so no CA bundle is loaded: that costs ~30 ms of
    CPU per client, which twenty nodes polling for readiness would spend many times."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=node.base_url, headers=headers, timeout=30, verify=False)


def start(node: ServerProcess, storage: str = "ok") -> None:
    """Start ``node``; wait until it logs that it is up and ``/ready`` reports ``storage``
    (``ok`` when ready). Its own log says it is up, so no other process on the port
    answers in its place."""
    log_start = node.log_path.stat().st_size if node.log_path.exists() else 0
    node.start(wait_ready=False)
    deadline = time.monotonic() + START_TIMEOUT
    with client(node) as c:
        while True:
            assert node.proc is not None and node.proc.poll() is None, node.log_tail()
            try:
                with open(node.log_path, "rb") as fh:
                    fh.seek(log_start)
                    if b'"message":"tokmesh-server ready"' in fh.read():
                        body = c.get("/ready").json()
                        checks = (body.get("data") or body.get("details"))["checks"]
                        if checks["storage"] == storage:
                            return
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                pass
            assert time.monotonic() < deadline, node.log_tail()
            time.sleep(0.05)


class Connection:
    """One keep-alive HTTP/1.1 connection with just enough of the protocol for creates.

    Much cheaper than an HTTP client library: twenty nodes are driven from this one
    process, and a slow client would hand each node one request at a time, so its WAL
    batches would hold one record and a failed batch could never leave another
    record's frame behind.
    """

    def __init__(self, node: ServerProcess, key: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", node.http_port), timeout=30)
        self.head = (
            "POST /sessions HTTP/1.1\r\nHost: tokmesh\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\n"
        ).encode()
        self.buf = b""

    def send_create(self, user: str) -> None:
        body = json.dumps({"user_id": user}).encode()
        self.sock.sendall(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def response(self) -> tuple[int, dict[str, Any]]:
        while b"\r\n\r\n" not in self.buf:
            self._receive()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in lines
            if line.lower().startswith(b"content-length:")
        )
        while len(self.buf) < length:
            self._receive()
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(lines[0].split()[1]), json.loads(body)

    def _receive(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def create_until_full(node: ServerProcess, key: str) -> Creates:
    """Creates in bursts of ``WRITERS`` at once, one user id each, on as many connections,
    until the disk has refused ``REFUSALS`` of them."""
    out = Creates()
    numbers = itertools.count()
    connections = [Connection(node, key) for _ in range(WRITERS)]
    try:
        while len(out.refused) < REFUSALS:
            assert len(out.acked) < MAX_CREATES, "the disk never filled up"
            users = [f"user-{next(numbers):05d}" for _ in connections]
            for conn, user in zip(connections, users, strict=True):
                conn.send_create(user)
            for conn, user in zip(connections, users, strict=True):
                status, body = conn.response()
                if status == 201:
                    out.acked[user] = body["data"]["session_id"]
                elif status == 500 and body["code"] == "TM-SYS-5001":
                    out.refused.add(user)
                else:
                    raise AssertionError(f"create of {user}: {status} {body}")
    finally:
        for conn in connections:
            conn.close()
    return out


def sessions_by_user(node: ServerProcess) -> dict[str, str]:
    """Every live session on the node as ``user_id -> session_id`` (admin listing)."""
    assert node.admin_key is not None
    found: dict[str, str] = {}
    with client(node, node.admin_key) as c:
        for page in itertools.count(1):
            r = c.get("/sessions", params={"page": page, "size": 100})
            assert r.status_code == 200, r.text
            items = r.json()["data"]["items"]
            for item in items:
                assert item["user_id"] not in found, f"two sessions of {item['user_id']}"
                found[item["user_id"]] = item["id"]
            if len(items) < 100:
                return found
    raise AssertionError("unreachable")


def wal_failures(node: ServerProcess) -> float:
    """``tokmesh_wal_fsync_failed_total`` from ``/metrics``."""
    assert node.admin_key is not None
    with client(node, node.admin_key) as c:
        text = c.get("/metrics").text
    for line in text.splitlines():
        if line.startswith("tokmesh_wal_fsync_failed_total "):
            return float(line.split()[1])
    raise AssertionError("tokmesh_wal_fsync_failed_total missing from /metrics")


def assert_failed_for_lack_of_space(node: ServerProcess, key: str, creates: Creates) -> None:
    """What a node on a full disk looks like from outside: reads work, writes are refused
    with ``TM-SYS-5001``, ``/ready`` is 503 and says why, ``/health`` stays 200."""
    with client(node, key) as c:
        ready = c.get("/ready")
        assert ready.status_code == 503, ready.text
        body: dict[str, Any] = ready.json()
        assert body["code"] == "TM-SYS-5030"
        checks = body["details"]["checks"]
        assert checks["storage"] == "failed"
        assert checks["storage_reason"] == f"write-ahead log failure: {NO_SPACE}"
        assert c.get("/health").status_code == 200
        for user, sid in itertools.islice(creates.acked.items(), 5):
            r = c.get(f"/sessions/{sid}")
            assert r.status_code == 200, r.text
            assert r.json()["data"]["user_id"] == user
        r = c.post("/sessions", json={"user_id": "refused-while-failed"})
        assert r.status_code == 500 and r.json()["code"] == "TM-SYS-5001", r.text
    creates.refused.add("refused-while-failed")
    assert wal_failures(node) == 1


def assert_exactly_acknowledged(node: ServerProcess, creates: Creates) -> None:
    """Every acknowledged create is there, with its session id, and nothing else is."""
    present = sessions_by_user(node)
    back = sorted(set(present) & creates.refused)
    assert not back, f"refused creates came back after the restart: {back}"
    lost = sorted(set(creates.acked) - set(present))
    assert not lost, f"acknowledged creates lost: {lost}"
    assert present == creates.acked


def one_node_fills_its_disk(index: int, base: Path, mount: MountTmpfs) -> tuple[int, int]:
    """One run of the acceptance scenario; returns (acknowledged, refused) counts."""
    disk = mount(base / f"disk-{index:02d}", DISK_KIB)
    # Vary what the runs share: the fsync policy, how the node is stopped, and where in
    # a page the disk runs out.
    node = node_on(disk, base / f"node-{index:02d}", "sync" if index % 2 else "batch")
    try:
        start(node)
        key = node.create_key("issuer")
        fill(disk, leave=(24 + 5 * index) * 1024)
        creates = create_until_full(node, key)
        assert_failed_for_lack_of_space(node, key, creates)
        if index % 4 < 2:
            assert node.terminate() == 1  # a failed node exits 1: its supervisor restarts it
        else:
            node.kill9()
        log = node.log_tail(1_000_000)
        assert f"WAL write failed ([Errno 28] {NO_SPACE}); the failed batch was cut off" in log
        free_space(disk)
        start(node)
        assert_exactly_acknowledged(node, creates)
        with client(node, key) as c:
            assert c.post("/sessions", json={"user_id": "after"}).status_code == 201
        return len(creates.acked), len(creates.refused)
    except Exception as exc:
        where = "".join(traceback.format_exception(exc)[-6:])
        raise AssertionError(f"run {index}: {where}--- server log ---\n{node.log_tail()}") from exc
    finally:
        node.stop()


def test_refused_creates_never_come_back(tmp_path: Path, mount_tmpfs: MountTmpfs) -> None:
    mount_tmpfs(tmp_path / "probe", 64)  # skip here, not in 20 threads, if we may not mount
    started = time.monotonic()
    with ThreadPoolExecutor(RUNS) as pool:
        futures = [
            pool.submit(one_node_fills_its_disk, i, tmp_path, mount_tmpfs) for i in range(RUNS)
        ]
        errors = [f.exception() for f in futures]
    failed = [str(e) for e in errors if e is not None]
    assert not failed, f"{len(failed)} of {RUNS} runs failed; first:\n{failed[0]}"
    counts = [f.result() for f in futures]
    print(f"{RUNS} runs in {time.monotonic() - started:.1f} s; (acked, refused): {counts}")
    assert all(acked > 0 for acked, _ in counts)


def test_restart_on_a_full_disk_serves_reads(tmp_path: Path, mount_tmpfs: MountTmpfs) -> None:
    disk = mount_tmpfs(tmp_path / "disk", DISK_KIB)
    node = node_on(disk, tmp_path / "node", "sync")
    try:
        start(node)
        key = node.create_key("issuer")
        fill(disk, leave=48 * 1024)
        creates = create_until_full(node, key)
        assert node.terminate() == 1
        fill_up(disk)  # whatever the cut-off batch freed is taken as well
        start(node, storage="failed")  # up, recovered, and failed for lack of space
        assert_failed_for_lack_of_space(node, key, creates)
        assert_exactly_acknowledged(node, creates)
        log = node.log_tail(1_000_000)
        assert "TM-CFG-1004" not in log
        assert f"is full ({NO_SPACE})" in log  # the start-up check names the cause
        assert f"WAL cannot be written at start-up; serving reads only: {NO_SPACE}" in log
        assert node.terminate() == 1
        free_space(disk)
        start(node)
        assert_exactly_acknowledged(node, creates)
        with client(node, key) as c:
            assert c.post("/sessions", json={"user_id": "after"}).status_code == 201
        assert node.terminate() == 0
    finally:
        node.stop()
