"""The expiry machinery in small pieces: bounded sweeper passes, DELETE records submitted
as one run, the expired-session memory, the sampling array, returning freed memory."""

from __future__ import annotations

import errno
import os
import platform
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tokmesh.actors import sweeper as sweeper_mod
from tokmesh.actors.engine import StorageEngine
from tokmesh.actors.expiry import ExpiryWheel
from tokmesh.actors.memory import MALLOC_TRIM, MemoryReturn
from tokmesh.actors.messages import Purge
from tokmesh.actors.recent_keys import RecentKeys
from tokmesh.actors.reply import Reply
from tokmesh.actors.session_store import SessionStore
from tokmesh.actors.state import StoreState
from tokmesh.actors.store import SessionShard
from tokmesh.actors.sweeper import PASS_LIMIT
from tokmesh.actors.wal_writer import Append, OnCommit, OnFail, WalSettings, WalWriter
from tokmesh.domain.clock import ManualClock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.ids import new_session_id
from tokmesh.domain.session import Session
from tokmesh.domain.tokens import generate_token, token_digest
from tokmesh.services.sessions import local_sessions
from tokmesh.storage.cipher import Cipher
from tokmesh.storage.wal_codec import RecordType, WalRecord
from tokmesh.storage.wal_files import SegmentWriter, read_wal

from .conftest import CTX

NOW = 1_750_000_000_000


def session(user: str = "u", expires_at: int = NOW + 60_000, **kw: object) -> Session:
    fields: dict[str, object] = {
        "id": new_session_id(),
        "user_id": user,
        "token_hash": token_digest(generate_token()),
        "ip_address": "10.0.0.1",
        "user_agent": "UA",
        "last_access_ip": "10.0.0.1",
        "last_access_ua": "UA",
        "created_by": CTX.key_id,
        "created_at": NOW,
        "expires_at": expires_at,
        "last_active": NOW,
        "version": 1,
        "ttl": 60_000,
    }
    fields.update(kw)
    return Session(**fields)  # type: ignore[arg-type]


# -- the expired-session memory -------------------------------------------------------------


def test_recent_keys_remember_the_last_ones_and_forget_old_ones() -> None:
    recent = RecentKeys(1000)
    keys = [new_session_id() for _ in range(5000)]
    for k in keys:
        recent.add(k)
    # at least the last 1000 are remembered, nothing older than the last 2000
    assert all(k in recent for k in keys[-1000:])
    assert not any(k in recent for k in keys[:3000])
    assert new_session_id() not in recent
    assert token_digest(generate_token()) not in recent
    recent.clear()
    assert keys[-1] not in recent


def test_recent_keys_reserve_their_table_before_the_first_add() -> None:
    """The sweeper reserves the table (a 2 MiB zeroed block) in its own step, so the
    first purge's commit batch does not allocate it."""
    recent = RecentKeys(1000)
    assert recent._current is None  # a node that never purges pays nothing
    recent.reserve()
    table = recent._current
    assert table is not None
    recent.reserve()
    recent.add("tmss-x")
    assert recent._current is table and "tmss-x" in recent


def test_recent_keys_hold_no_reference() -> None:
    """The point of fingerprints: a purged record's id can be freed (and its memory)."""
    recent = RecentKeys(10)
    key = "tmss-" + os.urandom(13).hex()
    before = sys.getrefcount(key)
    recent.add(key)
    assert sys.getrefcount(key) == before
    assert key in recent and ("tmss-" + key[5:]) in recent  # an equal string matches


def test_expired_memory_answers_for_purged_sessions() -> None:
    state = StoreState()
    s = session()
    state.put(s)
    state.note_expired(state.remove(s.id))  # type: ignore[arg-type]
    assert s.id in state.expired_ids and s.token_hash in state.expired_tokens
    assert new_session_id() not in state.expired_ids


async def test_purged_sessions_leave_no_reference_behind(
    engine: StorageEngine, clock: ManualClock
) -> None:
    """Nothing keeps a purged session's id or token digest alive (each one left behind
    would keep its allocator arena, and the memory around it, from being given back):
    not the expired-session memory, not the state recovery built and the engine took
    over, not a rebuilt sampling array."""
    ids: list[str] = []
    digests: list[bytes] = []
    for i in range(3000):
        res = await local_sessions(engine).create(CTX, f"user-{i}", ttl_seconds=1)
        if i % 50 == 0:
            ids.append(res.session.id)
            digests.append(res.session.token_hash)
        del res
    clock.advance(1500)
    with trio.fail_after(10):
        while engine.state.sessions:
            await trio.sleep(0.02)
    await trio.sleep(engine.settings.gc_interval * 3)  # a tick tidies the sampling array
    # The shards hold their last message and the WAL writer its last batch until the
    # next one comes: one more write and a barrier replace them.
    await local_sessions(engine).create(CTX, "after", ttl_seconds=60)
    assert engine.store is not None
    await engine.store.barrier()
    assert all(i in engine.state.expired_ids for i in ids)
    # held by the list and the comprehension only (getrefcount adds its argument)
    assert [i for i in ids if sys.getrefcount(i) > 3] == []
    assert [d for d in digests if sys.getrefcount(d) > 3] == []


def test_adopted_state_keeps_nothing() -> None:
    built = StoreState()
    built.load([session(user=f"u{i}") for i in range(10)])
    live = StoreState()
    live.adopt(built)
    assert len(live.sessions) == 10 and len(live._sample_ids) == 10
    assert not built.sessions and not built._sample_ids and not built.by_token
    assert len(built.wheel) == 0 and built.by_user.count() == 0


# -- the sampling array -----------------------------------------------------------------------


def state_with_removed(total: int, removed: int) -> StoreState:
    """A state that held ``total`` sessions, of which the first ``removed`` are gone."""
    state = StoreState()
    records = [session(user=f"u{i}") for i in range(total)]
    for s in records:
        state.put(s)
    for s in records[:removed]:
        state.remove(s.id)
    return state


def test_prune_samples_drops_dead_entries_within_its_budget() -> None:
    state = state_with_removed(10_000, 4000)
    assert len(state._sample_ids) == 10_000
    assert state.prune_samples(budget=1000) <= 1000
    while state.prune_samples(budget=1000):
        pass
    # what is left is at most the small slack the pruning tolerates
    assert len(state._sample_ids) - len(state.sessions) <= (len(state._sample_ids) >> 4) + 64
    assert set(state._sample_ids) == set(state.sessions)
    assert all(s.id in state.sessions for s in state.sample(50))


def test_prune_samples_rebuilds_when_most_entries_are_dead() -> None:
    state = state_with_removed(5000, 4500)
    state.prune_samples()
    assert sorted(state._sample_ids) == sorted(state.sessions)


def test_a_replaced_sampling_array_is_freed_a_slice_per_call() -> None:
    """After a mass expiry the old array may hold the last reference to each of its ids:
    it is freed a budget's worth per call, not in one step of the loop."""
    state = state_with_removed(5000, 4500)
    state.prune_samples(budget=1000)  # the rebuild
    assert sorted(state._sample_ids) == sorted(state.sessions)
    assert len(state._retired) == 5000
    calls = 0
    while state._retired:
        assert state.prune_samples(budget=1000) == 0
        calls += 1
    assert calls == 5


# -- the wheel --------------------------------------------------------------------------------


def test_wheel_has_due_agrees_with_pop_due() -> None:
    wheel = ExpiryWheel()
    assert not wheel.has_due(NOW)
    wheel.add("a", NOW)  # bucket covers (NOW-1000, NOW]: due once NOW has passed
    assert not wheel.has_due(NOW - 1)
    due_at = -(-NOW // 1000) * 1000 + 1
    assert wheel.has_due(due_at) and wheel.pop_due(due_at, 10) == ["a"]
    assert not wheel.has_due(due_at)


# -- the WAL writer takes runs of records ---------------------------------------------------


def _delete(i: int) -> WalRecord:
    return WalRecord(type=RecordType.DELETE, ts=NOW + i, entity_id=f"sid-{i}", version=0)


async def test_append_many_keeps_order_and_batch_count(tmp_path: Path) -> None:
    cipher = Cipher(os.urandom(32))
    wal = WalWriter(tmp_path, cipher, WalSettings(sync_mode="sync", batch_count=3))
    await wal.open()
    committed: list[int] = []
    done = trio.Event()

    def item(i: int) -> Append:
        def on_commit(position: int) -> None:
            committed.append(i)
            if len(committed) == 8:
                done.set()

        return Append(_delete(i), on_commit, lambda err: None)

    async with trio.open_nursery() as nursery:
        await nursery.start(wal.run)
        await wal.append_many([item(i) for i in range(7)])
        await wal.append(_delete(7), item(7).on_commit, lambda err: None)
        with trio.fail_after(10):
            await done.wait()
        await wal.close()
    assert committed == list(range(8))
    # 3 + 3 + the seventh with the eighth: batch_count holds across a run of records
    assert wal.stats.batches == 3 and wal.stats.records == 8
    assert [r.entity_id for _, r in read_wal(tmp_path, 0, cipher)] == [f"sid-{i}" for i in range(8)]


async def test_append_many_failure_fails_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed write still fails the whole run and latches the writer (fail-stop)."""
    cipher = Cipher(os.urandom(32))
    wal = WalWriter(tmp_path, cipher, WalSettings(sync_mode="sync", batch_count=4))
    await wal.open()

    def full(self: SegmentWriter, frames: bytes, n: int, *, sync: bool = False) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SegmentWriter, "append", full)
    failed: list[tuple[int, str]] = []
    done = trio.Event()

    def item(i: int) -> Append:
        def on_fail(err: TokMeshError) -> None:
            failed.append((i, err.code))
            if len(failed) == 10:
                done.set()

        return Append(_delete(i), lambda position: None, on_fail)

    async with trio.open_nursery() as nursery:
        await nursery.start(wal.run)
        await wal.append_many([item(i) for i in range(10)])
        with trio.fail_after(10):
            await done.wait()
        assert wal.failed is not None
        with pytest.raises(TokMeshError) as info:
            await wal.append_many([item(10)])
        assert info.value.error is E.SYS_STORAGE
        nursery.cancel_scope.cancel()
    assert [i for i, _ in failed] == list(range(10))
    assert {code for _, code in failed} == {E.SYS_STORAGE.code}


# -- shards and the sweeper --------------------------------------------------------------------


async def test_purges_are_submitted_as_runs(
    engine: StorageEngine, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every purge DELETE reaches the WAL writer inside a run (one mailbox message per
    shard and pass), never through the one-record path."""
    assert engine.wal is not None
    for _ in range(40):
        await local_sessions(engine).create(CTX, "one-user", ttl_seconds=1)
    for i in range(300):
        await local_sessions(engine).create(CTX, f"user-{i}", ttl_seconds=1)
    single: list[WalRecord] = []
    runs: list[int] = []
    wal = engine.wal
    real_append, real_many = wal.append, wal.append_many

    async def append(record: WalRecord, on_commit: OnCommit, on_fail: OnFail) -> None:
        single.append(record)
        await real_append(record, on_commit, on_fail)

    async def append_many(items: list[Append]) -> None:
        runs.append(len(items))
        await real_many(items)

    monkeypatch.setattr(wal, "append", append)
    monkeypatch.setattr(wal, "append_many", append_many)
    clock.advance(2000)
    with trio.fail_after(10):
        while engine.state.sessions:
            await trio.sleep(0.01)
    assert single == []
    assert sum(runs) == 340 and max(runs) <= PASS_LIMIT
    # passes of PASS_LIMIT over four shards: a handful of runs, not one per record
    assert len(runs) <= 4 * (340 // PASS_LIMIT + 2)


async def test_a_mass_expiry_is_worked_off_in_one_tick_of_bounded_passes(
    engine: StorageEngine, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passes of at most PASS_LIMIT sessions follow each other inside one tick instead of
    waiting a gc_interval each."""
    n = 3 * PASS_LIMIT + 17
    for i in range(n):
        await local_sessions(engine).create(CTX, f"user-{i}", ttl_seconds=1)
    ticks = 0
    passes: list[tuple[int, int]] = []  # (tick, sessions in the pass)
    real_purge_due = sweeper_mod.purge_due
    real_purge = sweeper_mod.ExpiryPass.purge

    async def counting_purge_due(*args: Any, **kwargs: Any) -> int:
        nonlocal ticks
        ticks += 1
        return await real_purge_due(*args, **kwargs)

    async def purge(self: sweeper_mod.ExpiryPass) -> int:
        passes.append((ticks, self.count))
        return await real_purge(self)

    monkeypatch.setattr(sweeper_mod, "purge_due", counting_purge_due)
    monkeypatch.setattr(sweeper_mod.ExpiryPass, "purge", purge)
    clock.advance(2000)
    with trio.fail_after(10):
        while engine.state.sessions:
            await trio.sleep(0.01)
    assert sum(size for _, size in passes) == n
    assert max(size for _, size in passes) <= PASS_LIMIT
    assert len({tick for tick, _ in passes}) == 1 and len(passes) >= 4


async def test_purge_of_a_session_in_flight_is_retried() -> None:
    """The wheel entry is gone once the purge is tried; a session with a newer version in
    flight gets a new one instead of waiting for random sampling to find it."""
    state = StoreState()
    s = session(expires_at=NOW - 1)
    state.put(s)
    assert state.wheel.pop_due(NOW + 1, 10) == [s.id]
    shard = SessionShard(0, state, None)  # type: ignore[arg-type]  # logs nothing here
    shard._pending[s.id] = s  # as if a touch of it were being committed
    reply: Reply[int] = Reply()
    assert shard._purge(Purge(sids=(s.id,), now_ms=NOW, reply=reply)) == []
    assert await reply.wait() == 0 and s.id in state.sessions
    assert state.wheel.pop_due(NOW + 1001, 10) == [s.id]


def test_tombstone_listed_again_at_its_original_expiry() -> None:
    """An idle timeout lists a session before its expiry; its tombstone must stay until
    that expiry and be purged then, not be forgotten by the wheel."""
    state = StoreState()
    store = SessionStore(state, None)  # type: ignore[arg-type]  # nothing is sent
    tomb = session(expires_at=NOW + 60_000, idle_timeout=5_000, is_deleted=True, version=2)
    state.put(tomb)
    assert state.wheel.pop_due(NOW + 6_000, 10) == [tomb.id]
    work = sweeper_mod.ExpiryPass(store, NOW + 6_000)
    assert not work.consider(tomb.id, listed=True)
    assert not work.consider(tomb.id, listed=False)  # a sample adds no second entry
    assert not state.wheel.has_due(NOW + 60_000)
    assert state.wheel.pop_due(NOW + 61_000, 10) == [tomb.id]
    done = sweeper_mod.ExpiryPass(store, NOW + 61_000)
    assert done.consider(tomb.id, listed=True) and done.count == 1


async def test_manual_gc_purges_through_the_same_passes(
    engine: StorageEngine, clock: ManualClock
) -> None:
    for i in range(50):
        await local_sessions(engine).create(CTX, f"user-{i}", ttl_seconds=1)
    keep = await local_sessions(engine).create(CTX, "keeper", ttl_seconds=3600)
    clock.advance(1500)
    await local_sessions(engine).gc()  # the sweeper may have taken some of them first
    assert list(engine.state.sessions) == [keep.session.id]


# -- giving memory back ---------------------------------------------------------------------


async def test_memory_return_is_rate_limited() -> None:
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    memory = MemoryReturn(min_freed=100, min_interval=3600, trim=trim)
    memory.note_freed(99)
    assert not await memory.maybe_return()
    memory.note_freed(1)
    assert await memory.maybe_return() and calls == [0]
    memory.note_freed(10_000)
    assert not await memory.maybe_return()  # within the interval
    assert memory.returns == 1
    unlimited = MemoryReturn(min_freed=1, min_interval=0, trim=trim)
    unlimited.note_freed(1)
    assert await unlimited.maybe_return()
    assert not await unlimited.maybe_return()  # nothing purged since


async def test_sweeper_counts_purges_towards_the_memory_return(
    engine: StorageEngine, clock: ManualClock
) -> None:
    assert engine.sweeper is not None
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    engine.sweeper.memory = MemoryReturn(min_freed=20, min_interval=0, trim=trim)
    for i in range(25):
        await local_sessions(engine).create(CTX, f"user-{i}", ttl_seconds=1)
    clock.advance(1500)
    with trio.fail_after(10):
        while not calls:
            await trio.sleep(0.02)
    assert calls == [0] and not engine.state.sessions


def test_malloc_trim_is_found_on_glibc() -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not a glibc system")
    assert MALLOC_TRIM is not None
    assert MALLOC_TRIM(0) in (0, 1)


class _FailingSweeper(sweeper_mod.TtlSweeper):
    """A sweeper whose ticks fail with ``errors`` in turn, then succeed."""

    def __init__(self, errors: list[Exception]) -> None:
        super().__init__(SessionStore(StoreState(), None, 1), interval=0.01)  # type: ignore[arg-type]
        self.errors_to_raise = errors

    async def tick(self) -> int:
        if self.errors_to_raise:
            raise self.errors_to_raise.pop(0)
        return 0


async def test_failing_ticks_are_one_episode_not_a_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A WAL that refuses writes fails every tick: one WARN when it starts, one INFO when
    ticks work again, no traceback; an unexpected error (a bug) logs its traceback once."""
    from tokmesh.domain.errors import E, TokMeshError

    failures: list[Exception] = [TokMeshError(E.SYS_STORAGE) for _ in range(30)]
    failures += [OSError(errno.ENOSPC, "No space left on device")] * 5
    sweeper = _FailingSweeper(failures)
    with caplog.at_level("INFO"):
        async with trio.open_nursery() as nursery:
            await nursery.start(sweeper.run)
            with trio.fail_after(10):
                while sweeper.errors_to_raise or sweeper.errors.failing:
                    await trio.sleep(0.01)
            sweeper.errors_to_raise = [ValueError("bug")] * 3
            with trio.fail_after(10):
                while sweeper.errors_to_raise or sweeper.errors.failing:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    lines = [r for r in caplog.records if "ttl_sweeper" in r.getMessage() or r.exc_info]
    warns = [r for r in lines if r.levelname == "WARNING"]
    tracebacks = [r for r in caplog.records if r.exc_info]
    # The second episode follows within a minute: counted, not logged (episodes.py).
    assert len(warns) == 1, [r.getMessage() for r in lines]
    assert len(tracebacks) == 1 and "bug" in str(tracebacks[0].exc_info[1])  # type: ignore[index]
    assert sum("works again after 35 failures" in r.getMessage() for r in lines) == 1
