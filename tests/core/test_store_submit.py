"""``SessionShard.submit``: a mutation handled without waiting when its shard is idle,
queued behind the shard's mailbox otherwise, and always committed in submission order.

A real engine (WAL writer, fsync, shard actors); replies are callbacks, as the HTTP and
RESP multiplexers use them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trio
import trio.testing

from tokmesh.actors.engine import StorageEngine
from tokmesh.actors.messages import Create, Renew, Revoke
from tokmesh.actors.reply import Callback
from tokmesh.domain.clock import ManualClock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.ids import new_session_id
from tokmesh.domain.session import Session
from tokmesh.storage.recovery import recover

HOUR = 3_600_000


def _session(clock: ManualClock, user: str) -> Session:
    now = clock.now_ms()
    return Session(
        id=new_session_id(),
        user_id=user,
        token_hash=os.urandom(32),
        created_at=now,
        expires_at=now + HOUR,
        last_active=now,
        ttl=HOUR,
        version=1,
    )


class Answers:
    """Collects what callback replies receive, in the order they arrive."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Any]] = []
        self.changed = trio.Event()

    def reply(self, name: str) -> Callback[Any]:
        def then(value: Any) -> None:
            self.got.append((name, value))
            self.changed.set()

        def failed(err: BaseException) -> None:
            self.got.append((name, err))
            self.changed.set()

        return Callback(then, failed)

    async def wait_for(self, n: int) -> None:
        with trio.fail_after(10):
            while len(self.got) < n:
                self.changed = trio.Event()
                await self.changed.wait()


def _create(s: Session, reply: Callback[Any]) -> Create:
    return Create(session=s, max_per_user=10, evict_oldest=False, exclusive_id=True, reply=reply)


async def test_idle_shard_handles_a_submission_at_once(
    engine: StorageEngine, clock: ManualClock
) -> None:
    store = engine.store
    assert store is not None
    await trio.testing.wait_all_tasks_blocked()
    answers = Answers()
    s = _session(clock, "submit-idle")
    shard = store.shard_for(s.user_id)
    assert store.submit(s.user_id, _create(s, answers.reply("create")))
    # Handled here and now: in flight before any task ran, not yet committed or answered.
    assert s.id in shard._pending and s.id not in engine.state.sessions
    assert answers.got == []
    await answers.wait_for(1)
    assert answers.got[0][1] == s and engine.state.sessions[s.id] == s


async def test_rejection_found_at_once_raises_and_leaves_nothing_in_flight(
    engine: StorageEngine, clock: ManualClock
) -> None:
    store = engine.store
    assert store is not None
    await trio.testing.wait_all_tasks_blocked()
    answers = Answers()
    msg = Renew(
        sid=new_session_id(),
        now_ms=clock.now_ms(),
        ttl_ms=HOUR,
        expected_version=None,
        reply=answers.reply("renew"),
        by="k",
    )
    try:
        store.submit("nobody", msg)
    except TokMeshError as err:
        assert err.error is E.SESS_NOT_FOUND
    else:  # pragma: no cover - the assertion below explains
        raise AssertionError("a renew of an unknown session must be refused at once")
    assert not store.shard_for("nobody")._pending and answers.got == []


async def test_submissions_behind_a_busy_shard_keep_their_order(
    engine: StorageEngine, clock: ManualClock, tmp_path: Path
) -> None:
    """The first submission makes the shard busy (its actor is woken with it); the rest
    queue in its mailbox. A create, a renew and a revoke of the same session, submitted
    back to back, commit and answer in that order, and the WAL holds them so."""
    store = engine.store
    assert store is not None
    user = "submit-order"
    shard = store.shard_for(user)
    await trio.testing.wait_all_tasks_blocked()
    answers = Answers()
    warm = _session(clock, user)
    s = _session(clock, user)
    # Wake the actor with a message, so that what follows finds it busy and queues.
    await shard.send(_create(warm, answers.reply("warm")))
    assert store.submit(user, _create(s, answers.reply("create")))
    assert s.id not in shard._pending  # queued, not handled at once
    renew = Renew(
        sid=s.id,
        now_ms=clock.now_ms(),
        ttl_ms=2 * HOUR,
        expected_version=1,
        reply=answers.reply("renew"),
        by="k",
    )
    # Not yet created, even in flight: a renew handled at once would be refused. Queued
    # behind the create, it finds the create in flight and succeeds.
    assert store.submit(user, renew)
    revoke = Revoke(sid=s.id, now_ms=clock.now_ms(), reply=answers.reply("revoke"), by="k")
    assert store.submit(user, revoke)
    await answers.wait_for(4)
    assert [name for name, _ in answers.got] == ["warm", "create", "renew", "revoke"]
    assert answers.got[2][1].version == 2 and answers.got[3][1] is True
    held = engine.state.sessions[s.id]
    assert held.is_deleted and held.version == 3
    assert engine.cipher is not None
    empty = tmp_path / "no-snapshots"
    empty.mkdir()
    again = recover(
        engine.settings.wal_dir, empty, engine.cipher, clock.now_ms(), parallel_wal=False
    )
    assert again.sessions[s.id].is_deleted and again.sessions[s.id].version == 3


async def test_a_full_wal_mailbox_hands_the_prepared_records_to_the_actor(
    engine: StorageEngine, clock: ManualClock
) -> None:
    """With no room in the WAL writer's mailbox, an idle shard's submission still goes
    through: the actor takes the prepared records and waits for room."""
    store = engine.store
    wal = engine.wal
    assert store is not None and wal is not None
    await trio.testing.wait_all_tasks_blocked()
    answers = Answers()
    s = _session(clock, "submit-full")
    real = wal.try_append_many
    calls: list[int] = []

    def no_room(items: Any) -> bool:
        calls.append(len(items))
        return False

    wal.try_append_many = no_room  # type: ignore[method-assign]
    try:
        assert store.submit(s.user_id, _create(s, answers.reply("create")))
    finally:
        wal.try_append_many = real  # type: ignore[method-assign]
    assert calls == [1]
    await answers.wait_for(1)
    assert answers.got[0][1] == s and engine.state.sessions[s.id] == s
