"""The commit stream: every committed change in WAL order with its position, on a real engine."""

from __future__ import annotations

import os

import attrs
import pytest
import trio
import trio.testing

from tokmesh.actors.commit_stream import Commit, CommitKind, CommitStream, SubscriptionLost
from tokmesh.actors.engine import StorageEngine
from tokmesh.actors.wal_writer import WalSettings
from tokmesh.domain.apikey import ApiKey
from tokmesh.domain.clock import ManualClock
from tokmesh.domain.errors import TokMeshError
from tokmesh.services.sessions import SessionService
from tokmesh.storage.wal_codec import RecordType
from tokmesh.storage.wal_files import read_wal

from .conftest import CTX, EngineRunner


def service(engine: StorageEngine, clock: ManualClock) -> SessionService:
    assert engine.store is not None
    return SessionService(engine.store, clock=clock)


def wal_after(engine: StorageEngine, position: int) -> list[tuple[int, RecordType, str]]:
    """``(position, type, id)`` of every record in the engine's WAL after ``position``."""
    assert engine.cipher is not None
    records = read_wal(engine.settings.wal_dir, position, engine.cipher)
    return [(pos, rec.type, rec.entity_id) for pos, rec in records]


async def test_every_kind_in_wal_order_with_its_position(
    runner: EngineRunner, clock: ManualClock
) -> None:
    engine = await runner.start()
    seen: list[Commit] = []
    engine.commits.subscribe(seen.append)
    start = engine.state.position
    s = service(engine, clock)
    assert engine.store is not None
    revoked = (await s.create(CTX, "u1", ttl_seconds=60)).session
    expiring = (await s.create(CTX, "u2", ttl_seconds=30)).session
    clock.advance(1_000)
    await s.touch(CTX, revoked.id)
    await s.renew(CTX, revoked.id, 60)
    await s.revoke(CTX, revoked.id)
    await s.revoke(CTX, revoked.id)  # already revoked: no record, nothing published
    key = ApiKey(key_id="tmak-01jf8xzm7e3xqh5p8n4r6s2w0a", secret_hash="x", role="issuer")
    await engine.store.put_key(key)
    await engine.store.put_key(attrs.evolve(key, status="disabled", version=2))
    # Past both expiries: the live session is purged with a WAL DELETE, the tombstone
    # ends without one.
    clock.advance(120_000)
    assert engine.sweeper is not None
    assert await engine.sweeper.tick() == 2

    kinds = [(c.kind, c.entity_id) for c in seen]
    K = CommitKind
    assert kinds[:7] == [
        (K.CREATE, revoked.id),
        (K.CREATE, expiring.id),
        (K.UPDATE, revoked.id),
        (K.UPDATE, revoked.id),
        (K.REVOKE, revoked.id),
        (K.KEY_PUT, key.key_id),
        (K.KEY_PUT, key.key_id),
    ]
    # The sweeper's pass: in the order the shards committed it.
    assert set(kinds[7:]) == {(K.EXPIRE, expiring.id), (K.TOMBSTONE_END, revoked.id)}
    assert len(kinds) == 9
    assert seen[4].session is not None and seen[4].session.is_deleted
    assert seen[6].key is not None and seen[6].key.status == "disabled"
    end = next(c for c in seen if c.kind is K.TOMBSTONE_END)
    assert end.record is None and end.session is not None and end.session.is_deleted
    logged = [c for c in seen if c.logged]
    # Exactly the WAL's records, in its order, at its positions.
    assert [(c.position, c.record.type, c.entity_id) for c in logged if c.record] == wal_after(
        engine, start
    )
    positions = [c.position for c in seen]
    assert positions == sorted(positions) and len({c.position for c in logged}) == len(logged)
    # The unlogged drop carries the position of the commit before it.
    assert end.position == seen[seen.index(end) - 1].position
    assert engine.commits.position == engine.state.position == positions[-1]


async def test_failed_batch_publishes_nothing(runner: EngineRunner, clock: ManualClock) -> None:
    engine = await runner.start()
    seen: list[Commit] = []
    engine.commits.subscribe(seen.append)
    s = service(engine, clock)
    ok = await s.create(CTX, "u1")
    assert engine.wal is not None and engine.wal._segment is not None
    fd = engine.wal._segment._fd
    assert fd is not None
    os.close(fd)  # a real OS-level write failure for the next batch
    with pytest.raises(TokMeshError) as info:
        await s.create(CTX, "u2")
    assert info.value.code == "TM-SYS-5001"
    assert [(c.kind, c.entity_id) for c in seen] == [(CommitKind.CREATE, ok.session.id)]
    # the closed descriptor's number may be reused by the test runner: never write to it
    runner.engine = None


async def test_slow_subscription_is_cut_off_and_resyncs_from_the_wal(
    runner: EngineRunner, clock: ManualClock
) -> None:
    # Batch mode: commits are published once written, before the periodic fsync.
    engine = await runner.start(wal=WalSettings(sync_mode="batch"))
    s = service(engine, clock)
    await s.create(CTX, "before")
    slow = engine.commits.open_subscription(limit=5)
    fast = engine.commits.open_subscription()
    assert slow.start_position == engine.state.position
    n = 40
    # Nobody reads ``slow``: every write still completes, none waits for it.
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(s.create, CTX, f"u{i}")
    got = await fast.receive()
    assert len(got) == n and [c.kind for c in got] == [CommitKind.CREATE] * n
    held = await slow.receive()
    assert held == got[:5] and slow.lost
    with pytest.raises(SubscriptionLost) as info:
        await slow.receive()
    resume = info.value.resume_after
    assert resume == got[4].position
    # What it missed is exactly the WAL after the position it was given.
    missed = [(c.position, RecordType.CREATE, c.entity_id) for c in got[5:]]
    assert wal_after(engine, resume) == missed
    fast.close()
    with pytest.raises(trio.EndOfChannel):
        await fast.receive()


async def test_failing_callback_is_dropped_and_writes_go_on(
    runner: EngineRunner, clock: ManualClock
) -> None:
    engine = await runner.start()
    calls: list[Commit] = []

    def broken(commit: Commit) -> None:
        calls.append(commit)
        raise RuntimeError("subscriber bug")

    seen: list[Commit] = []
    engine.commits.subscribe(broken)
    engine.commits.subscribe(seen.append)
    s = service(engine, clock)
    first = await s.create(CTX, "u1")
    second = await s.create(CTX, "u2")
    assert len(calls) == 1
    assert [c.entity_id for c in seen] == [first.session.id, second.session.id]
    assert s.get(second.session.id).version == 1


async def test_waiting_subscriber_wakes_and_unsubscribe_stops_callbacks() -> None:
    stream = CommitStream()
    seen: list[Commit] = []
    unsubscribe = stream.subscribe(seen.append)
    sub = stream.open_subscription(limit=2)
    got: list[list[Commit]] = []

    async def reader() -> None:
        async for batch in sub:
            got.append(batch)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        first = Commit(10, CommitKind.CREATE, "a", None)
        stream.publish(first)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [[first]]
        unsubscribe()
        stream.publish(Commit(20, CommitKind.UPDATE, "a", None))
        await trio.testing.wait_all_tasks_blocked()
        sub.close()
    assert seen == [first] and len(got) == 2 and stream.position == 20
