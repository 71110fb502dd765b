"""Wall-clock jumps, forward and back: expiry follows wall time, timeouts the monotonic clock.

A session expires at an absolute wall time, so a clock that jumps forward past it makes it
expire then (and only sessions whose expiry was passed), and a clock that jumps back
makes nothing expire until wall time reaches an expiry again; sessions created meanwhile
expire when their own expiry passes. The sweeper's tick, the snapshot interval and
connection timeouts are durations on the monotonic clock: a wall jump neither stops nor
fires them.

The service-level tests drive an injected :class:`ManualClock`; the last test moves the
wall clock of a real server process through its test hook
(``TOKMESH_TEST_WALL_OFFSET_FILE``, see ``tokmesh/clock_hook.py``).
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.core.conftest import CTX, EngineRunner
from tests.support.server import ServerProcess
from tokmesh.actors.engine import StorageEngine
from tokmesh.actors.snapshotter import SnapshotSettings
from tokmesh.actors.sweeper import TtlSweeper
from tokmesh.clock_hook import ENV_VAR
from tokmesh.domain.clock import ManualClock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.services.sessions import SessionService, local_sessions

pytestmark = pytest.mark.fault

START = 1_750_000_000_000
DAY_MS = 86_400_000


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def runner(
    nursery: trio.Nursery, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[EngineRunner]:
    r = EngineRunner(nursery, tmp_path, clock)
    yield r
    await r.stop()


def svc(engine: StorageEngine) -> SessionService:
    return local_sessions(engine)


def expect_code(code: E, call: object) -> None:
    with pytest.raises(TokMeshError) as info:
        call()  # type: ignore[operator]
    assert info.value.error is code, info.value.code


async def wait_purged(engine: StorageEngine, sid: str) -> None:
    with trio.fail_after(10):
        while sid in engine.state.sessions:
            await trio.sleep(0.02)


async def a_few_ticks(engine: StorageEngine) -> None:
    await trio.sleep(engine.settings.gc_interval * 5)


async def test_forward_jump_expires_exactly_what_it_passed(
    runner: EngineRunner, clock: ManualClock
) -> None:
    engine = await runner.start()
    s = svc(engine)
    short = await s.create(CTX, "u1", ttl_seconds=60)
    long = await s.create(CTX, "u2", ttl_seconds=120)
    clock.set(START + 60_000)  # exactly at the expiry: still valid
    assert s.validate(short.token).id == short.session.id
    await a_few_ticks(engine)
    assert short.session.id in engine.state.sessions
    clock.set(START + 60_001)
    expect_code(E.TOKN_EXPIRED, lambda: s.validate(short.token))
    await wait_purged(engine, short.session.id)
    expect_code(E.TOKN_EXPIRED, lambda: s.validate(short.token))  # still "expired"
    assert s.validate(long.token).id == long.session.id
    assert long.session.id in engine.state.sessions


async def test_backward_jump_nothing_expires_early_nothing_lives_forever(
    runner: EngineRunner, clock: ManualClock
) -> None:
    engine = await runner.start()
    s = svc(engine)
    before = await s.create(CTX, "u1", ttl_seconds=60)  # expires at START + 60 s
    clock.set(START - DAY_MS)  # a day back
    assert s.validate(before.token).id == before.session.id
    touched = await s.touch(CTX, before.session.id)
    assert touched.last_active == before.session.last_active  # never goes back
    during = await s.create(CTX, "u2", ttl_seconds=60)
    assert during.session.expires_at == START - DAY_MS + 60_000
    await a_few_ticks(engine)  # the sweeper keeps running and purges nothing
    assert {before.session.id, during.session.id} <= set(engine.state.sessions)
    # wall time reaches the new session's expiry: it goes, the older one stays
    clock.set(START - DAY_MS + 60_001)
    expect_code(E.TOKN_EXPIRED, lambda: s.validate(during.token))
    await wait_purged(engine, during.session.id)
    assert s.validate(before.token).id == before.session.id
    # and back to the first one's expiry: it goes too
    clock.set(START + 60_001)
    await wait_purged(engine, before.session.id)
    expect_code(E.TOKN_EXPIRED, lambda: s.validate(before.token))


async def test_timeouts_follow_the_monotonic_clock(
    runner: EngineRunner, clock: ManualClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A day's jump either way: the sweeper ticks at its interval, no snapshot interval
    fires, the batch-mode WAL still syncs on its own interval."""
    from tokmesh.actors.wal_writer import WalSettings

    ticks: list[float] = []
    real_tick = TtlSweeper.tick

    async def counted(self: TtlSweeper) -> int:
        ticks.append(trio.current_time())
        return await real_tick(self)

    monkeypatch.setattr(TtlSweeper, "tick", counted)
    engine = await runner.start(
        wal=WalSettings(sync_mode="batch", sync_interval=0.05),
        snapshot=SnapshotSettings(interval=3600.0, check_every=0.05),
    )
    s = svc(engine)
    assert engine.wal is not None
    for jump in (DAY_MS, -2 * DAY_MS):
        clock.advance(jump)
        await s.create(CTX, f"u{jump}", ttl_seconds=60)
        ticks.clear()
        fsyncs = engine.wal.stats.fsyncs
        started = trio.current_time()
        await trio.sleep(0.5)
        elapsed = trio.current_time() - started
        interval = engine.settings.gc_interval
        assert elapsed / interval - 2 <= len(ticks) <= elapsed / interval + 1, ticks
        assert engine.wal.stats.fsyncs > fsyncs
    assert not list((tmp_path / "snapshots").glob("*.snap"))


# -- a real process ---------------------------------------------------------------------------


def set_offset(path: Path, node: ServerProcess, key: str, offset_ms: int) -> None:
    """Move the server's wall clock and wait until it reads the new offset."""
    path.write_text(str(offset_ms))
    deadline = time.monotonic() + 10
    with node.client(key) as c:
        while time.monotonic() < deadline:
            # a probe session's expiry shows the server's wall clock
            r = c.post("/sessions", json={"user_id": "probe", "ttl_seconds": 60})
            assert r.status_code == 201, r.text
            data = r.json()["data"]
            c.post(f"/sessions/{data['session_id']}/revoke")
            server_now = data["expires_at"] - 60_000
            if abs(server_now - (time.time_ns() // 1_000_000 + offset_ms)) < 1000:
                return
            time.sleep(0.02)
    raise AssertionError("the server did not take the new wall-clock offset")


def validate(c: httpx.Client, token: str) -> tuple[int, str]:
    r = c.post("/tokens/validate", json={"token": token})
    return r.status_code, r.json().get("code", "")


def test_real_process_wall_clock_jumps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    offset_file = tmp_path / "wall-offset"
    offset_file.write_text("0")
    monkeypatch.setenv(ENV_VAR, str(offset_file))
    node = ServerProcess(tmp_path / "node")
    node.start()
    try:
        key = node.create_key("issuer", rate_limit=1_000_000)
        with node.client(key) as c:
            short = c.post("/sessions", json={"user_id": "a", "ttl_seconds": 60}).json()["data"]
            long = c.post("/sessions", json={"user_id": "b", "ttl_seconds": 3600}).json()["data"]
        # a keep-alive connection opened before the jumps, used again after each
        conn = socket.create_connection(("127.0.0.1", node.http_port), timeout=10)

        def health_on_old_connection() -> None:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            head = conn.recv(65536)
            assert head.startswith(b"HTTP/1.1 200"), head[:200]

        health_on_old_connection()
        set_offset(offset_file, node, key, 61_000)  # forward past the short one only
        health_on_old_connection()
        with node.client(key) as c:
            assert validate(c, short["token"]) == (401, "TM-TOKN-4011")
            assert validate(c, long["token"]) == (200, "OK")
        set_offset(offset_file, node, key, -DAY_MS)  # a day back
        health_on_old_connection()
        with node.client(key) as c:
            assert validate(c, long["token"]) == (200, "OK")
            during = c.post("/sessions", json={"user_id": "c", "ttl_seconds": 60}).json()["data"]
            assert validate(c, during["token"]) == (200, "OK")
        # wall time passes the expiry of the session made in the past: it expires
        set_offset(offset_file, node, key, -DAY_MS + 62_000)
        with node.client(key) as c:
            assert validate(c, during["token"]) == (401, "TM-TOKN-4011")
            assert validate(c, long["token"]) == (200, "OK")
            r = c.get(f"/sessions/{during['session_id']}")
            assert r.status_code == 404 and r.json()["code"] == "TM-SESS-4041"
        # a day forward from the start: the long one has expired as well
        set_offset(offset_file, node, key, DAY_MS)
        health_on_old_connection()
        with node.client(key) as c:
            assert validate(c, long["token"]) == (401, "TM-TOKN-4011")
        conn.close()
        assert "test hook" in node.log_tail(100_000)
    finally:
        node.stop()
