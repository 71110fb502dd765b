"""A server stopped (SIGSTOP) under load and continued (SIGCONT).

While the process is stopped the wall clock moves on: sessions whose expiry passed meanwhile
must answer "expired" as soon as it runs again and be purged (in the sweeper's bounded
passes), the ones still in their lifetime must stay valid, and every create that was
acknowledged, before, during or after the stop, must survive a ``kill -9`` and restart.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from tests.support.server import ServerProcess

pytestmark = pytest.mark.fault

WRITERS = 4
VALIDATORS = 2
SHORT_TTL = 2
LONG_TTL = 3600
LOAD_BEFORE = 1.5
STOPPED = 4.0
LOAD_AFTER = 1.5


@attrs.define
class Outcomes:
    """What the clients were told (shared by the load threads, under ``lock``)."""

    acked: dict[str, tuple[str, int, int]] = attrs.Factory(dict)  # token -> sid, ttl, expiry
    unanswered: int = 0  # requests that got no answer (connection closed): outcome unknown
    wrong: list[str] = attrs.Factory(list)  # answers that must not happen
    validations: int = 0
    lock: threading.Lock = attrs.Factory(threading.Lock)


def new_token() -> str:
    import base64

    return "tmtk_" + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def writer(node: ServerProcess, key: str, out: Outcomes, stop: threading.Event, n: int) -> None:
    with node.client(key) as c:
        c.timeout = httpx.Timeout(60)
        for i in itertools.count():
            if stop.is_set():
                return
            ttl = SHORT_TTL if i % 2 else LONG_TTL
            token = new_token()
            body = {"user_id": f"w{n}-{i}", "ttl_seconds": ttl, "token": token}
            try:
                r = c.post("/sessions", json=body)
            except httpx.TransportError:
                with out.lock:
                    out.unanswered += 1
                continue
            with out.lock:
                if r.status_code == 201:
                    data = r.json()["data"]
                    out.acked[token] = (data["session_id"], ttl, data["expires_at"])
                else:
                    out.wrong.append(f"create {r.status_code} {r.text[:200]}")


def validator(node: ServerProcess, key: str, out: Outcomes, stop: threading.Event) -> None:
    """Validates long-lived sessions only: none of them may ever fail."""
    with node.client(key) as c:
        c.timeout = httpx.Timeout(60)
        while not stop.is_set():
            with out.lock:
                longs = [t for t, (_, ttl, _) in out.acked.items() if ttl == LONG_TTL]
            if not longs:
                time.sleep(0.01)
                continue
            token = random.choice(longs)
            try:
                r = c.post("/tokens/validate", json={"token": token})
            except httpx.TransportError:
                with out.lock:
                    out.unanswered += 1
                continue
            with out.lock:
                out.validations += 1
                if r.status_code != 200:
                    out.wrong.append(f"validate of a live session: {r.status_code} {r.text[:200]}")


def active_sessions(node: ServerProcess) -> int:
    r = httpx.get(node.base_url + "/metrics", headers={"Authorization": f"Bearer {node.admin_key}"})
    for line in r.text.splitlines():
        if line.startswith("tokmesh_sessions_active_total"):
            return int(float(line.split()[-1]))
    raise AssertionError("no tokmesh_sessions_active_total in /metrics")


def test_sigstop_sigcont_under_load(tmp_path: Path) -> None:
    node = ServerProcess(tmp_path, {"storage": {"wal": {"sync_mode": "sync"}}})
    node.start()
    try:
        issuer = node.create_key("issuer", rate_limit=1_000_000)
        out = Outcomes()
        stop = threading.Event()
        threads = [
            threading.Thread(target=writer, args=(node, issuer, out, stop, n))
            for n in range(WRITERS)
        ] + [
            threading.Thread(target=validator, args=(node, issuer, out, stop))
            for _ in range(VALIDATORS)
        ]
        for t in threads:
            t.start()
        time.sleep(LOAD_BEFORE)
        assert node.proc is not None
        pid = node.proc.pid
        with out.lock:
            acked_before_stop = len(out.acked)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(STOPPED)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        # it answers again at once (the clients' queued requests included)
        r = httpx.get(node.base_url + "/health", timeout=10)
        answered_after = time.monotonic() - resumed
        time.sleep(LOAD_AFTER)
        stop.set()
        for t in threads:
            t.join(60)
        assert r.status_code == 200 and answered_after < 3.0, answered_after
        assert out.wrong == []
        assert acked_before_stop > 20 and len(out.acked) > acked_before_stop
        assert out.validations > 100
        # requests sent while it was stopped were answered, not dropped on resumption
        assert out.unanswered == 0

        now_ms = time.time_ns() // 1_000_000
        shorts = {t: v for t, v in out.acked.items() if v[1] == SHORT_TTL}
        longs = {t: v for t, v in out.acked.items() if v[1] == LONG_TTL}
        with node.client(issuer) as c:
            # wait until every short session's expiry has passed by wall time
            latest = max(expiry for _, _, expiry in shorts.values())
            time.sleep(max(0.0, (latest - now_ms) / 1000 + 0.1))
            for token in shorts:
                r = c.post("/tokens/validate", json={"token": token})
                assert r.status_code == 401 and r.json()["code"] == "TM-TOKN-4011", r.text
            for token in longs:
                r = c.post("/tokens/validate", json={"token": token})
                assert r.status_code == 200, r.text
        # the sweeper purged the expired ones (counted sessions: the long ones only)
        deadline = time.monotonic() + 10
        while active_sessions(node) != len(longs) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert active_sessions(node) == len(longs)

        # no acknowledged write lost: kill -9, restart, every long session is there
        node.kill9()
        node.start()
        with node.client(issuer) as c:
            for token, (sid, _, expiry) in longs.items():
                r = c.post("/tokens/validate", json={"token": token})
                assert r.status_code == 200, r.text
                data: dict[str, Any] = r.json()["data"]
                assert data["session"]["id"] == sid
                assert data["session"]["expires_at"] == expiry
            for token in list(shorts)[:50]:
                r = c.post("/tokens/validate", json={"token": token})
                assert r.status_code == 401 and r.json()["code"] in (
                    "TM-TOKN-4010",
                    "TM-TOKN-4011",
                ), r.text
    finally:
        node.stop()
