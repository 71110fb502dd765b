"""The store's ``Replicate`` message on a real engine: what a replica keeps of its owner's
states (newer versions win, tombstones are final, removals spare tombstones) and that
what it keeps is in its own WAL."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from tokmesh.actors.engine import StorageEngine
from tokmesh.actors.messages import Replicate
from tokmesh.actors.reply import Reply
from tokmesh.domain.clock import ManualClock
from tokmesh.domain.ids import new_session_id
from tokmesh.domain.session import Session
from tokmesh.storage.recovery import recover

USER = "replicated-user"
HOUR = 3_600_000


def _session(clock: ManualClock, version: int = 1, *, ttl: int = HOUR) -> Session:
    now = clock.now_ms()
    return Session(
        id=new_session_id(),
        user_id=USER,
        token_hash=os.urandom(32),
        device_id="dev-1",
        created_at=now,
        expires_at=now + ttl,
        last_active=now,
        ttl=ttl,
        version=version,
        data={"role": "reader"},
    )


async def _replicate(
    engine: StorageEngine, clock: ManualClock, *items: tuple[str, Session | None]
) -> int:
    """Send one ``Replicate`` to the shard of USER and return the records it wrote."""
    assert engine.store is not None
    reply: Reply[int] = Reply()
    msg = Replicate(items=tuple(items), now_ms=clock.now_ms(), reply=reply)
    written: int = await engine.store.call(USER, msg)
    return written


def _held(engine: StorageEngine, sid: str) -> Session | None:
    return engine.state.sessions.get(sid)


def _recovered(engine: StorageEngine, tmp_path: Path, now_ms: int) -> dict[str, Session]:
    """The sessions a fresh node would rebuild from this engine's WAL alone."""
    assert engine.cipher is not None
    empty = tmp_path / "no-snapshots"
    empty.mkdir(exist_ok=True)
    state = recover(engine.settings.wal_dir, empty, engine.cipher, now_ms, parallel_wal=False)
    return state.sessions


async def test_newer_version_wins_older_and_equal_are_ignored(
    engine: StorageEngine, clock: ManualClock
) -> None:
    v1 = _session(clock)
    sid = v1.id
    assert await _replicate(engine, clock, (sid, v1)) == 1
    assert _held(engine, sid) == v1
    v3 = v1.evolve(version=3, last_active=v1.last_active + 10, data={"role": "admin"})
    assert await _replicate(engine, clock, (sid, v3)) == 1
    held = _held(engine, sid)
    assert held is not None and held.to_record() == v3.to_record()
    # Older and equal versions (even with different contents) change nothing.
    v2 = v1.evolve(version=2, device_id="older")
    same = v3.evolve(device_id="equal-version")
    assert await _replicate(engine, clock, (sid, v2)) == 0
    assert await _replicate(engine, clock, (sid, same)) == 0
    held = _held(engine, sid)
    assert held is not None and held.to_record() == v3.to_record()
    # The replica's indexes follow what it keeps.
    assert engine.state.by_token.get(v3.token_hash) == sid


async def test_duplicates_are_harmless(engine: StorageEngine, clock: ManualClock) -> None:
    first = _session(clock)
    second = _session(clock)
    batch = ((first.id, first), (second.id, second))
    assert await _replicate(engine, clock, *batch) == 2
    position = engine.state.position
    # The same batch again (a resend after a lost answer) writes nothing.
    assert await _replicate(engine, clock, *batch) == 0
    assert engine.state.position == position
    assert _held(engine, first.id) == first and _held(engine, second.id) == second


async def test_a_tombstone_beats_a_live_state_and_is_never_revived(
    engine: StorageEngine, clock: ManualClock
) -> None:
    live = _session(clock, version=5)
    sid = live.id
    assert await _replicate(engine, clock, (sid, live)) == 1
    # A tombstone wins over a live state even with a lower version.
    tomb = live.evolve(version=2, is_deleted=True)
    assert await _replicate(engine, clock, (sid, tomb)) >= 1
    held = _held(engine, sid)
    assert held is not None and held.is_deleted
    assert sid not in engine.state.by_user.get(USER)
    # A live state never revives it, whatever its version.
    revived = live.evolve(version=99)
    assert await _replicate(engine, clock, (sid, revived)) == 0
    held = _held(engine, sid)
    assert held is not None and held.is_deleted


async def test_a_removal_removes_a_live_copy_but_not_a_tombstone(
    engine: StorageEngine, clock: ManualClock
) -> None:
    live = _session(clock)
    tomb = _session(clock).evolve(version=2, is_deleted=True)
    assert await _replicate(engine, clock, (live.id, live), (tomb.id, tomb)) >= 2
    assert await _replicate(engine, clock, (live.id, None), (tomb.id, None)) == 1
    assert _held(engine, live.id) is None
    held = _held(engine, tomb.id)
    assert held is not None and held.is_deleted
    # Removing what is not held writes nothing.
    assert await _replicate(engine, clock, (live.id, None), (new_session_id(), None)) == 0


async def test_later_items_of_one_message_are_checked_against_the_earlier_ones(
    engine: StorageEngine, clock: ManualClock
) -> None:
    """Within one message the newer version still wins (items out of order)."""
    v1 = _session(clock)
    sid = v1.id
    v3 = v1.evolve(version=3, device_id="newest")
    v2 = v1.evolve(version=2, device_id="older")
    await _replicate(engine, clock, (sid, v1))
    await _replicate(engine, clock, (sid, v3), (sid, v2))
    held = _held(engine, sid)
    assert held is not None and held.version == 3 and held.device_id == "newest"


async def test_applied_live_states_are_in_the_wal(
    engine: StorageEngine, clock: ManualClock, tmp_path: Path
) -> None:
    created = _session(clock)
    updated_v1 = _session(clock)
    updated = updated_v1.evolve(version=4, data={"role": "owner"})
    assert await _replicate(engine, clock, (created.id, created), (updated_v1.id, updated_v1)) == 2
    assert await _replicate(engine, clock, (updated.id, updated)) == 1
    recovered = _recovered(engine, tmp_path, clock.now_ms())
    assert recovered[created.id].to_record() == created.to_record()
    assert recovered[updated.id].to_record() == updated.to_record()


async def test_applied_tombstones_are_in_the_wal(
    engine: StorageEngine, clock: ManualClock, tmp_path: Path
) -> None:
    """A tombstone kept from the owner survives the replica's restart as it was kept, also
    for a session the replica never held live (it missed the create, or the tombstone
    came in a full copy)."""
    unseen = _session(clock).evolve(version=2, is_deleted=True)
    held_live = _session(clock)
    assert await _replicate(engine, clock, (unseen.id, unseen), (held_live.id, held_live)) >= 2
    tomb = held_live.evolve(version=7, is_deleted=True)
    assert await _replicate(engine, clock, (tomb.id, tomb)) >= 1
    in_memory = {sid: engine.state.sessions[sid].to_record() for sid in (unseen.id, tomb.id)}
    assert in_memory == {unseen.id: unseen.to_record(), tomb.id: tomb.to_record()}
    recovered = _recovered(engine, tmp_path, clock.now_ms())
    assert tomb.id in recovered and recovered[tomb.id].is_deleted
    assert unseen.id in recovered, "the tombstone of a session never held live was lost"
    assert recovered[unseen.id].to_record() == unseen.to_record()
    assert recovered[tomb.id].to_record() == tomb.to_record()


async def test_removals_are_in_the_wal(
    engine: StorageEngine, clock: ManualClock, tmp_path: Path
) -> None:
    """The owner purges expired sessions; the replica's removal is logged too."""
    doomed = _session(clock, ttl=1_000)
    kept = _session(clock)
    assert await _replicate(engine, clock, (doomed.id, doomed), (kept.id, kept)) == 2
    clock.advance(2_000)
    assert await _replicate(engine, clock, (doomed.id, None)) == 1
    with trio.fail_after(5):
        assert engine.store is not None
        await engine.store.barrier()
    recovered = _recovered(engine, tmp_path, clock.now_ms())
    assert doomed.id not in recovered
    assert recovered[kept.id].to_record() == kept.to_record()
