"""Child process of ``test_restart_budget``: a real storage engine under a steady stream
of creates, with a small snapshot threshold, until it is killed.

Usage: ``python -m tests.storage.restart_writer ROOT THRESHOLD_BYTES``. Prints the id of
every session whose create was acknowledged (sync mode: durable), one per line, flushed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from tokmesh.actors.engine import EngineSettings, StorageEngine
from tokmesh.actors.snapshotter import SnapshotSettings
from tokmesh.actors.wal_writer import WalSettings
from tokmesh.services.sessions import RequestContext, SessionService

KEY_HEX = "11" * 32
CTX = RequestContext(
    request_id="req-restart",
    key_id="tmak-01jf8xzm7e3xqh5p8n4r6s2w0t",
    role="issuer",
    client_ip="10.0.0.1",
    user_agent="restart-writer",
)
#: Creates between two pauses of 10 ms: at most ~400 records (~300 KB of WAL) a second,
#: so the slack the test allows is reached only if a check or snapshot stalls ~0.4 s.
BURST = 4


def settings(root: Path, snapshot: SnapshotSettings) -> EngineSettings:
    """An engine in ``root`` with sync commits and the given snapshot settings."""
    return EngineSettings(
        wal_dir=root / "wal",
        snapshot_dir=root / "snapshots",
        encryption_key_hex=KEY_HEX,
        wal=WalSettings(sync_mode="sync"),
        snapshot=snapshot,
    )


async def main(root: Path, threshold: int) -> None:
    """Run the engine (a snapshot every ``threshold`` WAL bytes, looked at every 20 ms)
    and create sessions until killed."""
    snapshot = SnapshotSettings(threshold_bytes=threshold, check_every=0.02)
    engine = StorageEngine(settings(root, snapshot))
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        assert engine.store is not None
        service = SessionService(engine.store)
        i = 0
        while True:
            made = await service.create(CTX, f"user-{i}", ttl_seconds=3600)
            sys.stdout.write(made.session.id + "\n")
            sys.stdout.flush()
            i += 1
            if i % BURST == 0:
                await trio.sleep(0.01)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), int(sys.argv[2]))
