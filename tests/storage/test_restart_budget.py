"""Restart time is bounded by snapshots: a graceful stop ends with one, and after a crash
the replay is at most the WAL written since the newest one (the size trigger's budget).

Real engines, real files, a real ``kill -9`` of a writing process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from tests.storage.conftest import NOW_MS, MakeSession
from tests.storage.restart_writer import CTX, KEY_HEX, settings
from tests.storage.test_recovery import ModelStore, _same
from tokmesh.actors.engine import StorageEngine
from tokmesh.actors.snapshotter import SnapshotSettings
from tokmesh.services.sessions import SessionService
from tokmesh.storage.cipher import Cipher
from tokmesh.storage.recovery import recover
from tokmesh.storage.snapshot_files import (
    SnapshotError,
    list_snapshots,
    peek_snapshot_info,
    write_snapshot,
)
from tokmesh.storage.wal_files import WalReadStats, wal_bytes_after
from tokmesh.storage.wal_prefetch import (
    PrefetchFailed,
    WalPrefetch,
    decode_tail,
    decode_tail_parts,
    parse_tail,
)

REPO = Path(__file__).resolve().parents[2]
CIPHER = Cipher(bytes.fromhex(KEY_HEX))
#: The kill -9 test's snapshot threshold (~170 records).
THRESHOLD = 128 << 10


async def start(nursery: trio.Nursery, root: Path, snapshot: SnapshotSettings) -> StorageEngine:
    engine = StorageEngine(settings(root, snapshot))
    await nursery.start(engine.run)
    return engine


async def stop(engine: StorageEngine) -> None:
    await engine.stop()
    with trio.fail_after(10):
        await engine.wait_stopped()


async def test_a_graceful_stop_writes_a_snapshot_and_the_restart_replays_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # No snapshot trigger fires on its own during the test: only the stop takes one.
    quiet = SnapshotSettings(interval=3600.0, threshold_bytes=1 << 30)
    engine = await start(nursery, tmp_path, quiet)
    assert engine.store is not None
    service = SessionService(engine.store)
    made = [await service.create(CTX, f"user-{i % 7}", ttl_seconds=600) for i in range(40)]
    for m in made[::5]:
        await service.revoke(CTX, m.session.id)
    before = dict(engine.state.sessions)
    position = engine.state.position
    await stop(engine)

    snaps = list_snapshots(tmp_path / "snapshots")
    assert len(snaps) == 1
    info = peek_snapshot_info(snaps[0])
    assert info.wal_last_offset == position and info.session_count == len(before)

    engine = await start(nursery, tmp_path, quiet)
    assert engine.recovery_info["snapshot"] == info.id
    assert engine.recovery_info["replayed_records"] == 0
    assert dict(engine.state.sessions) == before
    # A stop with nothing new since the newest snapshot does not write another one.
    await stop(engine)
    assert list_snapshots(tmp_path / "snapshots") == snaps


async def test_a_shutdown_snapshot_out_of_time_is_abandoned_and_loses_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    no_time = SnapshotSettings(interval=3600.0, threshold_bytes=1 << 30, shutdown_budget=0.0)
    engine = await start(nursery, tmp_path, no_time)
    assert engine.store is not None
    service = SessionService(engine.store)
    for i in range(30):
        await service.create(CTX, f"user-{i}", ttl_seconds=600)
    before = dict(engine.state.sessions)
    await stop(engine)
    assert list(tmp_path.glob("snapshots/*")) == []  # no snapshot, no temp file either
    engine = await start(nursery, tmp_path, no_time)
    assert engine.recovery_info["replayed_records"] == 30
    assert dict(engine.state.sessions) == before
    await stop(engine)


def test_an_abandoned_snapshot_write_leaves_no_file(
    tmp_path: Path, make_session: MakeSession
) -> None:
    abort = threading.Event()
    abort.set()
    sessions = [make_session() for _ in range(10)]
    with pytest.raises(SnapshotError, match="abandoned"):
        write_snapshot(tmp_path, sessions, [], 0, "n", CIPHER, NOW_MS, abort=abort)
    assert os.listdir(tmp_path) == []


def test_kill9_under_writes_replays_at_most_the_wal_budget(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.storage.restart_writer", str(tmp_path), str(THRESHOLD)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    acked: list[str] = []
    deadline = time.monotonic() + 30
    try:
        # Until the trigger has fired a few times (or the child died: the asserts say why).
        for line in proc.stdout:
            acked.append(line.strip())
            if len(acked) % 50 == 0 and len(list_snapshots(tmp_path / "snapshots")) >= 3:
                break
            assert time.monotonic() < deadline, "the size trigger took no snapshots"
    finally:
        proc.kill()
        proc.wait(10)
    # Lines already in the pipe were acknowledged before the kill.
    acked += [line.strip() for line in proc.stdout.read().splitlines() if line.strip()]
    proc.stdout.close()

    state = recover(tmp_path / "wal", tmp_path / "snapshots", CIPHER, int(time.time() * 1000))
    assert state.snapshot is not None
    replayed_bytes = wal_bytes_after(tmp_path / "wal", state.snapshot.wal_last_offset)
    # The budget, plus a stated slack of one more threshold's worth: what can arrive
    # between two looks at the WAL (20 ms) and while a snapshot is written (tens of ms),
    # at the child's ~300 KB/s, ~10x over.
    assert replayed_bytes <= 2 * THRESHOLD, replayed_bytes
    assert state.replayed <= 2 * THRESHOLD // 600  # a create record is ~770 bytes
    assert len(acked) > 3 * THRESHOLD // 1000
    missing = [sid for sid in acked if sid not in state.sessions]
    assert missing == []


def test_a_wal_only_replay_is_split_with_the_worker(
    tmp_path: Path, make_session: MakeSession
) -> None:
    wal_dir, snap_dir = tmp_path / "wal", tmp_path / "snapshots"
    store = ModelStore(wal_dir, CIPHER, max_segment_records=25)
    ids = [store.create(make_session(user_id=f"user-{i % 5}")).id for i in range(120)]
    for sid in ids[::4]:
        store.update(sid, last_active=NOW_MS + 1, data={"n": "1"})
    for sid in ids[::9]:
        store.revoke(sid)
    store.writer.close()
    # a torn tail in the newest segment, read by the worker
    newest = sorted(wal_dir.glob("wal-*.log"))[-1]
    with newest.open("r+b") as fh:
        fh.truncate(newest.stat().st_size - 5)
    serial = recover(wal_dir, snap_dir, CIPHER, NOW_MS, parallel_wal=False)
    split = recover(wal_dir, snap_dir, CIPHER, NOW_MS, parallel_wal=True)
    # this process decoded the first segments, the worker the rest
    assert 0 < split.stats.prefetched < split.stats.replayed
    assert split.snapshot is None and len(split.warnings) == 1
    _same(split, serial)


def test_the_worker_output_in_parts_is_the_whole_document(
    tmp_path: Path, make_session: MakeSession
) -> None:
    """The parent applies the worker's output part by part as it arrives: the parts,
    parsed in order, give exactly the records, warnings and counters of one document."""
    store = ModelStore(tmp_path, CIPHER, max_segment_records=25)
    ids = [store.create(make_session()).id for i in range(60)]
    for sid in ids[::3]:
        store.revoke(sid)
    store.writer.close()
    newest = sorted(tmp_path.glob("wal-*.log"))[-1]
    with newest.open("r+b") as fh:
        fh.truncate(newest.stat().st_size - 5)
    whole_stats, parts_stats = WalReadStats(), WalReadStats()
    whole = parse_tail(decode_tail(tmp_path, 0, CIPHER), whole_stats)
    parts = list(decode_tail_parts(tmp_path, 0, CIPHER, part_records=7))
    assert len(parts) == len(whole) // 7 + 1
    parsed = [rec for blob in parts for rec in parse_tail(blob, parts_stats)]
    assert parsed == whole and len(whole) == 79
    assert parts_stats == whole_stats and len(whole_stats.warnings) == 1


def test_a_worker_that_dies_is_reported_as_incomplete(tmp_path: Path) -> None:
    prefetch = WalPrefetch(tmp_path, 0, CIPHER)
    prefetch.cancel()
    with pytest.raises(PrefetchFailed):
        list(prefetch.parts())
