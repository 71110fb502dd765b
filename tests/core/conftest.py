"""Fixtures: a real storage engine (real files, real fsync) in a temporary directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tokmesh.actors.engine import EngineSettings, StorageEngine
from tokmesh.actors.wal_writer import WalSettings
from tokmesh.domain.clock import ManualClock
from tokmesh.services.sessions import RequestContext, SessionSettings

CTX = RequestContext(
    request_id="req-test",
    key_id="tmak-01jf8xzm7e3xqh5p8n4r6s2w0t",
    role="issuer",
    client_ip="10.0.0.1",
    user_agent="UA-A",
)


def engine_settings(tmp_path: Path, **overrides: Any) -> EngineSettings:
    """Engine settings rooted in ``tmp_path`` (sync mode unless overridden)."""
    base: dict[str, Any] = {
        "wal_dir": tmp_path / "wal",
        "snapshot_dir": tmp_path / "snapshots",
        "node_id": "tmnd-test",
        "wal": WalSettings(sync_mode="sync"),
        "sessions": SessionSettings(),
    }
    base.update(overrides)
    return EngineSettings(**base)


class EngineRunner:
    """Start/stop/restart a real engine inside the test's nursery."""

    def __init__(self, nursery: trio.Nursery, tmp_path: Path, clock: ManualClock) -> None:
        self.nursery = nursery
        self.tmp_path = tmp_path
        self.clock = clock
        self.engine: StorageEngine | None = None

    async def start(self, **overrides: Any) -> StorageEngine:
        settings = engine_settings(self.tmp_path, **overrides)
        self.engine = StorageEngine(settings, clock=self.clock)
        await self.nursery.start(self.engine.run)
        return self.engine

    async def stop(self) -> None:
        if self.engine is not None:
            engine = self.engine
            await engine.stop()
            with trio.fail_after(10):
                await engine.wait_stopped()
            self.engine = None

    async def restart(self, **overrides: Any) -> StorageEngine:
        await self.stop()
        return await self.start(**overrides)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_750_000_000_000)


@pytest.fixture
async def runner(
    nursery: trio.Nursery, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[EngineRunner]:
    r = EngineRunner(nursery, tmp_path, clock)
    yield r
    await r.stop()


@pytest.fixture
async def engine(runner: EngineRunner) -> StorageEngine:
    return await runner.start()


def wal_bytes(tmp_path: Path) -> int:
    return sum(p.stat().st_size for p in (tmp_path / "wal").glob("wal-*.log"))


Factory = Callable[..., Any]
