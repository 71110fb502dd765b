"""Readiness during WAL replay and graceful shutdown of a real node (05 §17 checks 36-37,
05 §14-§15).

Check 36 needs a WAL long enough to watch its replay. Creating tens of thousands of sessions
over HTTP takes minutes on a loaded 2-core box, so the WAL is written by the server's own
storage engine (``tokmesh.actors.engine.StorageEngine`` with the settings the binary derives
from the same config file, the same key file and node id); the real binary then replays it.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import attrs
import httpx
import pytest
import trio

from tests.integration.runtime_support import RuntimeServer, wait_exit
from tokmesh.actors.engine import StorageEngine
from tokmesh.config.node_id import resolve_node_id
from tokmesh.config.validate import load_and_validate
from tokmesh.server import engine_settings
from tokmesh.services.sessions import RequestContext, local_sessions

#: sessions in the pre-built WAL: ~1.5-3 s of replay on the 2-core reference box
BULK_SESSIONS = 20_000
GRACE = 2.0
TIMEOUT = 10.0


def _build_wal(node: RuntimeServer, count: int) -> list[str]:
    """Write ``count`` session creates into the node's WAL; returns a few of their ids."""
    node.write_config()
    result, report = load_and_validate(str(node.config_path), {}, {}, node.root, create_dirs=True)
    assert not report.errors, report.errors
    cfg = result.config
    sample: list[str] = []

    async def main() -> None:
        settings = engine_settings(cfg, resolve_node_id(cfg))
        # No snapshot at the stop, or the restart would load it instead of replaying.
        snapshot = attrs.evolve(settings.snapshot, on_shutdown=False)
        engine = StorageEngine(attrs.evolve(settings, snapshot=snapshot))
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.run)
            svc = local_sessions(engine)
            ctx = RequestContext(key_id="tmak-01hzzzzzzzzzzzzzzzzzzzzzzz", role="issuer")

            async def worker(n: int) -> None:
                for i in range(count // 50):
                    res = await svc.create(ctx, f"bulk-{n}-{i}", data={"k": "v" * 64})
                    if i == 0 and n < 5:
                        sample.append(res.session.id)

            async with trio.open_nursery() as workers:
                for n in range(50):
                    workers.start_soon(worker, n)
            await engine.stop()

    trio.run(main)
    return sample


@pytest.fixture(scope="module")
def replay_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A node whose restart replays a long WAL; every probe answer seen until ready."""
    node = RuntimeServer(tmp_path_factory.mktemp("replay") / "node")
    node.start()
    obs: dict[str, Any] = {}
    try:
        # Keys and one session written by the binary itself, then the bulk behind them.
        admin = node.create_admin_key()
        issuer = node.create_key("issuer")
        with node.client(issuer) as c:
            r = c.post("/sessions", json={"user_id": "before-bulk"})
            assert r.status_code == 201
            first = r.json()["data"]["session_id"]
        assert node.terminate(40) == 0
        sample = [first, *_build_wal(node, BULK_SESSIONS)]
        observed: list[dict[str, Any]] = []
        since = len(node.log_lines())
        node.start(wait_ready=False)
        deadline = time.monotonic() + 90
        with httpx.Client(base_url=node.base_url, timeout=10) as c:
            while True:
                assert node.proc is not None and node.proc.poll() is None, node.log_tail()
                assert time.monotonic() < deadline, node.log_tail()
                try:
                    # Business calls first: a /ready 503 after them proves they ran
                    # before readiness.
                    keyed = c.get(
                        f"/sessions/{first}", headers={"Authorization": f"Bearer {issuer}"}
                    )
                    anonymous = c.get("/sessions")
                    health = c.get("/health")
                    ready = c.get("/ready")
                except httpx.TransportError:
                    time.sleep(0.01)  # not listening yet
                    continue
                observed.append(
                    {
                        "ready": ready.status_code,
                        "ready_body": ready.json(),
                        "health": health.status_code,
                        "keyed": (keyed.status_code, keyed.headers.get("x-error-code")),
                        "anonymous": (anonymous.status_code, anonymous.headers.get("x-error-code")),
                    }
                )
                if ready.status_code == 200:
                    break
        obs["observed"] = observed
        obs["recovery"] = node.wait_for_log(
            lambda d: d.get("message") == "recovery complete", 5, since
        )
        with node.client(admin) as c:
            obs["total_sessions"] = c.get("/admin/v1/status/summary").json()["data"][
                "total_sessions"
            ]
            obs["sample"] = {sid: c.get(f"/sessions/{sid}").status_code for sid in sample}
        obs["log"] = node.log_tail()
        yield obs
    finally:
        node.stop()


def _not_ready(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in run["observed"] if o["ready"] == 503]


def test_ready_503_during_wal_replay_health_200(replay_run: dict[str, Any]) -> None:
    """Check 36: while the WAL replays ``/health`` is 200 and ``/ready`` 503
    ``TM-SYS-5030``; then ``/ready`` is 200 with every session back."""
    during = _not_ready(replay_run)
    replaying = [
        o for o in during if o["ready_body"]["details"]["checks"]["storage"] == "recovering"
    ]
    assert replaying, (replay_run["observed"], replay_run["log"])
    for o in during:
        body = o["ready_body"]
        assert body["code"] == "TM-SYS-5030" and body["message"] == "Service not ready"
        assert body["details"]["status"] == "not_ready"
        assert o["health"] == 200
    final = replay_run["observed"][-1]["ready_body"]["data"]
    assert final["status"] == "ready"
    assert final["checks"] == {"storage": "ok", "cluster": "ok"}
    rec = replay_run["recovery"]
    # the binary's own records are in the snapshot its SIGTERM wrote; the bulk is replayed
    assert rec["sessions"] == BULK_SESSIONS + 1 and rec["replayed_records"] == BULK_SESSIONS
    assert replay_run["total_sessions"] == BULK_SESSIONS + 1
    assert set(replay_run["sample"].values()) == {200}, replay_run["sample"]


def test_business_routes_503_during_replay(replay_run: dict[str, Any]) -> None:
    """05 §14 (D20): business routes answer 503 ``TM-SYS-5030`` until ready (before the
    keys are even loaded), for a valid key as well as without credentials."""
    during = _not_ready(replay_run)
    assert during
    for o in during:
        assert o["keyed"] == (503, "TM-SYS-5030"), o
        assert o["anonymous"] == (503, "TM-SYS-5030"), o


# --- check 37: SIGTERM ---------------------------------------------------------------------------


def _open_partial(port: int, head: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(head)
    return s


def _read_response(s: socket.socket) -> tuple[int, dict[str, Any] | None]:
    """Status and JSON body of one HTTP/1.1 response (0 when the server closed instead)."""
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return 0, None
            buf += chunk
        head, body = buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    except (ConnectionResetError, TimeoutError):
        return 0, None
    status = int(head.split(b" ", 2)[1])
    return status, (json.loads(body) if body else None)


@pytest.fixture(scope="module")
def shutdown_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """SIGTERM a node holding in-flight requests; record what each of them saw."""
    node = RuntimeServer(
        tmp_path_factory.mktemp("term") / "node",
        {"server": {"shutdown": {"grace_period": f"{GRACE:.0f}s", "timeout": f"{TIMEOUT:.0f}s"}}},
    )
    node.start()
    obs: dict[str, Any] = {}
    try:
        admin = node.create_admin_key()
        issuer = node.create_key("issuer")
        acked: dict[str, str] = {}
        with node.client(issuer) as c:
            for i in range(20):
                r = c.post("/sessions", json={"user_id": f"acked-{i}"})
                assert r.status_code == 201
                acked[r.json()["data"]["session_id"]] = r.json()["data"]["token"]
        port = node.http_port
        ready = _open_partial(port, b"GET /ready HTTP/1.1\r\nHost: t\r\n")
        health = _open_partial(port, b"GET /health HTTP/1.1\r\nHost: t\r\n")
        body = json.dumps({"user_id": "in-flight"}).encode()
        post = _open_partial(
            port,
            b"POST /sessions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {issuer}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:4],
        )
        # A request longer than the grace period: the WAL follow stream never ends.
        stream = _open_partial(
            port,
            b"GET /admin/v1/wal/logs?follow=true HTTP/1.1\r\nHost: t\r\n"
            + f"Authorization: Bearer {admin}\r\n\r\n".encode(),
        )
        assert stream.recv(12).startswith(b"HTTP/1.1 200")
        time.sleep(0.3)  # every partial request has reached the server
        assert node.proc is not None
        proc = node.proc
        started = time.monotonic()
        node.signal(15)
        time.sleep(0.2)
        ready.sendall(b"\r\n")
        health.sendall(b"\r\n")
        obs["ready"] = _read_response(ready)
        obs["health"] = _read_response(health)
        time.sleep(0.3)
        post.sendall(body[4:])
        obs["post"] = _read_response(post)
        stream.settimeout(TIMEOUT + 5)
        try:
            while stream.recv(65536):
                pass
        except (ConnectionResetError, TimeoutError):
            pass
        obs["stream_cut_after"] = time.monotonic() - started
        obs["exit_code"] = wait_exit(proc, TIMEOUT + 20)
        obs["exit_after"] = time.monotonic() - started
        node.proc = None
        for s in (ready, health, post, stream):
            s.close()
        node.start()
        with node.client(admin) as c:
            obs["after_restart"] = {sid: c.get(f"/sessions/{sid}").status_code for sid in acked}
            if obs["post"][0] == 201 and obs["post"][1] is not None:
                sid = obs["post"][1]["data"]["session_id"]
                obs["in_flight_after_restart"] = c.get(f"/sessions/{sid}").status_code
        obs["log"] = node.log_tail(8000)
        yield obs
    finally:
        node.stop()


def test_ready_503_at_once_health_200(shutdown_run: dict[str, Any]) -> None:
    """Check 37 / 05 §15 phase 1: right after SIGTERM ``/ready`` is 503 ``TM-SYS-5030``
    (storage ``stopping``) while ``/health`` stays 200."""
    status, body = shutdown_run["ready"]
    assert status == 503 and body is not None, shutdown_run
    assert body["code"] == "TM-SYS-5030"
    assert body["details"]["checks"]["storage"] == "stopping"
    status, body = shutdown_run["health"]
    assert status == 200 and body is not None and body["data"]["status"] == "healthy"


def test_request_longer_than_grace_is_cut(shutdown_run: dict[str, Any]) -> None:
    """Check 37: an in-flight request running past ``grace_period`` is cut at about the
    grace period, well before ``server.shutdown.timeout``."""
    cut = shutdown_run["stream_cut_after"]
    assert GRACE - 0.5 <= cut < TIMEOUT, shutdown_run


def test_exit_0_within_shutdown_timeout(shutdown_run: dict[str, Any]) -> None:
    """Check 37: a clean stop exits 0 within ``server.shutdown.timeout``."""
    assert shutdown_run["exit_code"] == 0, shutdown_run["log"]
    assert shutdown_run["exit_after"] < TIMEOUT


def test_acknowledged_writes_present_after_restart(shutdown_run: dict[str, Any]) -> None:
    """Check 37: every acknowledged write is there after the restart."""
    assert set(shutdown_run["after_restart"].values()) == {200}, shutdown_run["after_restart"]


def test_request_shorter_than_grace_completes(shutdown_run: dict[str, Any]) -> None:
    """Check 37: a request in flight at SIGTERM that ends within the grace period completes
    normally (201) and its write survives the restart."""
    status, body = shutdown_run["post"]
    assert status == 201, (status, body)
    assert shutdown_run["in_flight_after_restart"] == 200
