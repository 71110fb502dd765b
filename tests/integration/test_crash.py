"""Issue 2 acceptance 2: ``kill -9`` during concurrent writes loses nothing acknowledged.

Real ``tokmesh-server`` process, real HTTP, real fsync. Each writer thread runs
create → renew → (sometimes) revoke on its own sessions and records every acknowledged
result. After ``kill -9`` and a restart, every acknowledged state must be there with the
same version and expiry; an operation that was in flight may have landed completely
(one version further), never partially.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.server import ServerProcess


@dataclass
class Acked:
    token: str
    version: int
    expires_at: int
    revoked: bool = False
    in_flight: bool = False


@dataclass
class Ledger:
    sessions: dict[str, Acked] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[str] = field(default_factory=list)


def writer(base: str, key: str, n: int, stop: threading.Event, ledger: Ledger) -> None:
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=5)
    i = 0
    try:
        while not stop.is_set():
            i += 1
            try:
                r = client.post("/sessions", json={"user_id": f"w{n}-{i}", "ttl_seconds": 3600})
                if r.status_code != 201:
                    ledger.errors.append(f"create {r.status_code} {r.text}")
                    continue
                d = r.json()["data"]
                sid = d["session_id"]
                with ledger.lock:
                    ledger.sessions[sid] = Acked(d["token"], 1, d["expires_at"])
                ledger.sessions[sid].in_flight = True
                r = client.post(f"/sessions/{sid}/renew", json={"ttl_seconds": 1800 + i})
                if r.status_code == 200:
                    rd = r.json()["data"]
                    a = ledger.sessions[sid]
                    a.version, a.expires_at, a.in_flight = (
                        rd["version"],
                        rd["new_expires_at"],
                        False,
                    )
                if i % 3 == 0:
                    ledger.sessions[sid].in_flight = True
                    r = client.post(f"/sessions/{sid}/revoke")
                    if r.status_code == 200:
                        a = ledger.sessions[sid]
                        a.revoked, a.version, a.in_flight = True, a.version + 1, False
            except httpx.HTTPError:
                return  # the server was killed mid-request
    finally:
        client.close()


@pytest.mark.parametrize("mode", ["sync", "batch"])
def test_kill9_loses_no_acknowledged_write(tmp_path: Path, mode: str) -> None:
    srv = ServerProcess(tmp_path / mode, {"storage": {"wal": {"sync_mode": mode}}})
    srv.start()
    try:
        admin = srv.create_admin_key()
        key = srv.create_key("issuer", rate_limit=1_000_000)
        ledger = Ledger()
        stop = threading.Event()
        threads = [
            threading.Thread(target=writer, args=(srv.base_url, key, n, stop, ledger))
            for n in range(8)
        ]
        for t in threads:
            t.start()
        time.sleep(2.0)
        srv.kill9()  # SIGKILL in the middle of the write stream
        stop.set()
        for t in threads:
            t.join(10)
        assert not ledger.errors, ledger.errors[:3]
        assert len(ledger.sessions) > 50, "the load generator did too little work"

        srv.start()
        with srv.client(admin) as c:
            for sid, acked in ledger.sessions.items():
                r = c.get(f"/sessions/{sid}")
                if acked.revoked:
                    assert r.status_code == 404, (sid, r.text)
                    v = c.post("/tokens/validate", json={"token": acked.token})
                    assert v.json()["code"] == "TM-TOKN-4012"
                    continue
                if r.status_code == 404 and acked.in_flight:
                    # an in-flight revoke landed completely
                    v = c.post("/tokens/validate", json={"token": acked.token})
                    assert v.json()["code"] == "TM-TOKN-4012"
                    continue
                assert r.status_code == 200, (sid, r.text)
                s = r.json()["data"]
                if acked.in_flight:
                    assert s["version"] in (acked.version, acked.version + 1)
                    if s["version"] == acked.version:
                        assert s["expires_at"] == acked.expires_at
                else:
                    assert s["version"] == acked.version, (sid, s, acked)
                    assert s["expires_at"] == acked.expires_at
        # the data directory holds no plaintext tokens
        blob = b"".join(
            p.read_bytes() for p in (tmp_path / mode / "data").rglob("*") if p.is_file()
        )
        for acked in list(ledger.sessions.values())[:50]:
            assert acked.token.encode() not in blob
    finally:
        srv.stop()


def test_sigterm_under_load_exits_zero_and_keeps_writes(tmp_path: Path) -> None:
    """Issue 7 acceptance 2: graceful stop under a write load loses nothing acknowledged."""
    srv = ServerProcess(tmp_path / "term", {"storage": {"wal": {"sync_mode": "batch"}}})
    srv.start()
    try:
        srv.create_admin_key()
        key = srv.create_key("issuer", rate_limit=1_000_000)
        ledger = Ledger()
        stop = threading.Event()
        threads = [
            threading.Thread(target=writer, args=(srv.base_url, key, n, stop, ledger))
            for n in range(4)
        ]
        for t in threads:
            t.start()
        time.sleep(1.0)
        started = time.monotonic()
        code = srv.terminate(30)
        elapsed = time.monotonic() - started
        stop.set()
        for t in threads:
            t.join(10)
        assert code == 0, srv.log_tail()
        assert elapsed < 20  # server.shutdown.timeout in the test config
        srv.start()
        with srv.client(srv.create_admin_key()) as c:
            for sid, acked in ledger.sessions.items():
                if acked.in_flight:
                    continue
                r = c.get(f"/sessions/{sid}")
                if acked.revoked:
                    assert r.status_code == 404
                else:
                    assert r.status_code == 200 and r.json()["data"]["version"] == acked.version
    finally:
        srv.stop()


def test_readme_default_start_without_config(tmp_path: Path) -> None:
    """The README's start command works with no config: defaults, ./data, socket fallback."""
    env = dict(os.environ)
    port_free = True
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 5080))
        except OSError:
            port_free = False
    if not port_free:
        pytest.skip("port 5080 is busy on this machine")
    import subprocess

    proc = subprocess.Popen(
        ["tokmesh-server"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        ok = False
        while time.monotonic() < deadline:
            try:
                if httpx.get("http://127.0.0.1:5080/ready", timeout=1).status_code == 200:
                    ok = True
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert ok
        assert (tmp_path / "data" / "wal").is_dir()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert b"No configuration file found" in out
