"""Indexes built during recovery (snapshot chunks loaded into the store's state, the WAL
replayed through it) equal the ones a record-by-record rebuild gives; the snapshotter's
view stays out of GC collections."""

from __future__ import annotations

import gc
import os
from pathlib import Path

from tokmesh.actors.expiry import BUCKET_MS
from tokmesh.actors.id_index import SMALL_MAX, IdIndex
from tokmesh.actors.snapshotter import SnapshotSettings, frozen_view
from tokmesh.actors.state import StoreState
from tokmesh.domain.clock import ManualClock
from tokmesh.domain.session import Session
from tokmesh.services.sessions import local_sessions
from tokmesh.storage.cipher import Cipher
from tokmesh.storage.recovery import recover
from tokmesh.storage.snapshot_files import write_snapshot

from .conftest import CTX, EngineRunner


def _rebuilt(sessions: dict[str, Session]) -> StoreState:
    ref = StoreState()
    for s in sessions.values():
        ref.put(s)
    return ref


def _check_compact(index: IdIndex) -> None:
    """Every key holds the representation its number of ids calls for."""
    total = 0
    for key, ids in index._map.items():
        if isinstance(ids, str):
            total += 1
        elif isinstance(ids, tuple):
            assert 2 <= len(ids) <= SMALL_MAX and len(set(ids)) == len(ids), key
            total += len(ids)
        else:
            assert isinstance(ids, set) and len(ids) > SMALL_MAX, key
            total += len(ids)
    assert index.count() == total


def _check_indexes(state: StoreState) -> None:
    ref = _rebuilt(state.sessions)
    assert state.by_token == ref.by_token
    assert state.by_user.as_dict() == ref.by_user.as_dict()
    assert state.by_device.as_dict() == ref.by_device.as_dict()
    assert state.by_user == ref.by_user and state.by_device == ref.by_device
    live = [s for s in state.sessions.values() if not s.is_deleted]
    assert state.by_user.count() == len(live) == state.live_count()
    assert state.by_device.count() == len([s for s in live if s.device_id])
    _check_compact(state.by_user)
    _check_compact(state.by_device)
    assert set(state._sample_ids) >= set(state.sessions)  # every session can be sampled
    # Wheel entries are hints: every session with an expiry has one in its bucket.
    hinted = {sid for ids in state.wheel._buckets.values() for sid in ids}
    for sid, s in state.sessions.items():
        if s.effective_expiry():
            assert sid in hinted
            bucket = -(-s.effective_expiry() // BUCKET_MS)
            assert sid in state.wheel._buckets[bucket]
    assert state.wheel.entries == len([1 for ids in state.wheel._buckets.values() for _ in ids])


async def test_restart_builds_the_indexes_while_loading(
    runner: EngineRunner, clock: ManualClock
) -> None:
    # no snapshot at the stop: the restart must replay the tail written after "test"
    engine = await runner.start(snapshot=SnapshotSettings(on_shutdown=False))
    svc = local_sessions(engine)
    assert svc is not None and engine.snapshotter is not None
    sids = []
    for i in range(40):
        r = await svc.create(
            CTX, f"user-{i % 6}", device_id=f"dev-{i % 4}" if i % 3 else "", ttl_seconds=600
        )
        sids.append(r.session.id)
    await svc.revoke(CTX, sids[0])
    await engine.snapshotter.take("test")
    # the WAL tail after the snapshot moves sessions between indexes
    await svc.revoke(CTX, sids[1])
    await svc.renew(CTX, sids[2], 1200)
    for _ in range(5):
        await svc.create(CTX, "user-late", device_id="dev-late")
    clock.advance(1)
    before = dict(engine.state.sessions)
    engine = await runner.restart()
    assert dict(engine.state.sessions) == before
    assert engine.recovery_info["replayed_records"] == 7
    _check_indexes(engine.state)
    assert len(engine.state.by_device.get("dev-late")) == 5
    assert sids[1] not in engine.state.by_user.get("user-1")
    assert sids[2] in engine.state.by_user.get("user-2")


def test_recovery_into_a_state_matches_a_plain_map(tmp_path: Path) -> None:
    """The same recovery into a bare map and into a StoreState, over a snapshot holding
    tombstones, device ids, idle timeouts and expired records, and users with one id,
    a few (a tuple in the index) and hundreds (a set), some spread over two chunks."""
    cipher = Cipher(os.urandom(32))
    now = 1_750_000_000_000
    sessions = [
        Session(
            id=f"tmss-01jf8xzm7e3xqh5p8n4r6s{i:04d}",
            user_id=(f"u{i % 5}", f"v{i // 21}", f"w{i}")[i % 3],
            token_hash=bytes([i % 256]) * 31 + bytes([i // 256]),
            device_id=(f"d{i % 3}" if i % 4 == 1 else f"e{i // 10}") if i % 2 else "",
            expires_at=now + (-1000 if i % 11 == 0 else 60_000 * (i + 1)),
            last_active=now,
            idle_timeout=30_000 if i % 7 == 0 else 0,
            is_deleted=i % 13 == 0,
            version=i + 1,
        )
        for i in range(3000)  # more than one chunk
    ]
    write_snapshot(tmp_path / "snap", sessions, [], 0, "n", cipher, now)
    plain = recover(tmp_path / "wal", tmp_path / "snap", cipher, now)
    state = StoreState()
    into_state = recover(tmp_path / "wal", tmp_path / "snap", cipher, now, state)
    assert into_state.sessions is state.sessions
    assert state.sessions == plain.sessions
    assert into_state.stats.dropped_expired == plain.stats.dropped_expired > 0
    _check_indexes(state)


def test_snapshot_view_is_left_out_of_gc_collections() -> None:
    """The snapshotter's view of a million records must not be walked by every GC
    collection while the snapshot thread runs (that was the longest loop stall)."""
    records = [object() for _ in range(10)]
    before = gc.get_freeze_count()
    view = frozen_view(iter(records))
    try:
        assert view == records
        assert gc.get_freeze_count() > before
        assert not any(view is obj for obj in gc.get_objects())  # in no generation
    finally:
        gc.unfreeze()
