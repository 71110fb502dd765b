"""Replication pieces on real stores: the replica side's epoch fencing and positions, the
owner side's queues (with a recording function standing in for the cluster transport),
and the lease check a node fences itself with (against a real etcd)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.cluster.conftest import EtcdMember
from tests.core.conftest import EngineRunner
from tests.support.server import free_port
from tokmesh.actors.commit_stream import Commit, CommitKind
from tokmesh.actors.engine import StorageEngine
from tokmesh.actors.messages import Create, Purge, Revoke
from tokmesh.actors.reply import Reply
from tokmesh.actors.session_store import SessionStore
from tokmesh.cluster.etcd import EtcdClient, EtcdSettings
from tokmesh.cluster.membership import Membership, MembershipSettings
from tokmesh.cluster.replication import (
    EPOCHS_FILE,
    ReplicaSide,
    Replicator,
    _changed_ids,
    decode_entries,
    points_from,
)
from tokmesh.cluster.shard_map import ShardMap
from tokmesh.cluster.transport import RpcUnreachable
from tokmesh.domain.clock import ManualClock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.ids import new_session_id_in_shard
from tokmesh.domain.session import Session
from tokmesh.domain.shards import SHARDS, shard_of
from tokmesh.storage.wal_files import WalGap
from tokmesh.telemetry import metrics

NODE = "tmnd-a"
BACKUP = "tmnd-b"
OTHER = "tmnd-c"
SPARE = "tmnd-d"
#: Shards the replicating node owns in these tests (the others belong to OTHER).
OWNED = frozenset(range(0, 16, 2))
HOUR = 3_600_000


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_750_000_000_000)


@pytest.fixture
async def engine(
    nursery: trio.Nursery, tmp_path: Path, clock: ManualClock
) -> AsyncIterator[StorageEngine]:
    runner = EngineRunner(nursery, tmp_path / "engine", clock)
    engine = await runner.start()
    yield engine
    await runner.stop()


def _store(engine: StorageEngine) -> SessionStore:
    assert engine.store is not None
    return engine.store


def _session(clock: ManualClock, shard: int, user: str, *, ttl: int = HOUR) -> Session:
    now = clock.now_ms()
    return Session(
        id=new_session_id_in_shard(shard),
        user_id=user,
        token_hash=os.urandom(32),
        created_at=now,
        expires_at=now + ttl,
        last_active=now,
        ttl=ttl,
    )


async def _create(
    store: SessionStore, clock: ManualClock, shard: int, user: str, *, ttl: int = HOUR
) -> Session:
    """Create a session whose id is in ``shard`` through the real store."""
    reply: Reply[Session] = Reply()
    msg = Create(_session(clock, shard, user, ttl=ttl), 1000, False, True, reply)
    created: Session = await store.call(user, msg)
    return created


async def _revoke(store: SessionStore, clock: ManualClock, session: Session) -> None:
    reply: Reply[bool] = Reply()
    assert await store.call(session.user_id, Revoke(session.id, clock.now_ms(), reply))


def _epochs() -> tuple[int, ...]:
    return tuple(1 + shard % 3 for shard in range(SHARDS))


def _map(
    version: int = 5,
    backups: tuple[str, ...] = (BACKUP,),
    *,
    owned: frozenset[int] = OWNED,
    epochs: tuple[int, ...] | None = None,
) -> ShardMap:
    """NODE owns ``owned`` (backed up by ``backups``); OTHER owns the rest, backed up by
    NODE."""
    return ShardMap(
        version=version,
        owners=tuple(NODE if s in owned else OTHER for s in range(SHARDS)),
        epochs=_epochs() if epochs is None else epochs,
        backups=tuple(backups if s in owned else (NODE,) for s in range(SHARDS)),
    )


def _address(node: str) -> str:
    return f"addr-{node}"


def _json(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


class Transport:
    """Stands in for ``ClusterNode.call``: records what is sent; can fail, hold or refuse."""

    def __init__(self) -> None:
        #: Every attempt, failed or not: (address, method, body).
        self.attempts: list[tuple[str, str, Any]] = []
        #: Calls that were answered.
        self.sent: list[tuple[str, str, Any]] = []
        self.fail_next = 0
        self.failing = False
        self.gate: trio.Event | None = None
        self.refuse: frozenset[int] = frozenset()

    async def __call__(self, address: str, method: str, body: Any) -> Any:
        body = _json(body)
        self.attempts.append((address, method, body))
        if self.gate is not None:
            await self.gate.wait()
        if self.failing or self.fail_next:
            self.fail_next = max(0, self.fail_next - 1)
            raise RpcUnreachable("peer down")
        self.sent.append((address, method, body))
        refused = sorted(
            {e[0] for e in body["entries"] if e[0] in self.refuse}
            | {m[0] for m in body["synced"] if m[0] in self.refuse}
        )
        return {"written": len(body["entries"]), "refused": refused}

    def entries(self, node: str = BACKUP) -> list[list[Any]]:
        return [e for a, _, b in self.sent if a == _address(node) for e in b["entries"]]

    def markers(self, node: str = BACKUP) -> list[list[Any]]:
        return [m for a, _, b in self.sent if a == _address(node) for m in b["synced"]]


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.01)


class Owner:
    """A Replicator on a real engine whose map a test changes."""

    def __init__(self, engine: StorageEngine, shard_map: ShardMap) -> None:
        self.map = shard_map
        self.transport = Transport()
        self.replicator = Replicator(
            NODE,
            _store(engine),
            engine.commits,
            lambda: self.map,
            _address,
            self.transport,
        )

    def change(self, shard_map: ShardMap) -> None:
        self.map = shard_map
        self.replicator.map_changed(shard_map)


async def _owner(nursery: trio.Nursery, engine: StorageEngine, shard_map: ShardMap) -> Owner:
    owner = Owner(engine, shard_map)
    owner.change(shard_map)
    await nursery.start(owner.replicator.run)
    return owner


# -- owner side ---------------------------------------------------------------------------


async def test_owned_commits_are_sent_in_order_stamped_with_shard_epoch_and_sequence(
    nursery: trio.Nursery, engine: StorageEngine, clock: ManualClock
) -> None:
    store = _store(engine)
    commits: list[Commit] = []
    engine.commits.subscribe(commits.append)
    owner = await _owner(nursery, engine, _map())
    made = [await _create(store, clock, shard, f"user-{i}") for i, shard in enumerate([0, 1, 2, 3])]
    made.append(await _create(store, clock, 4, "user-0"))
    made.append(await _create(store, clock, 5, "user-1"))
    await _revoke(store, clock, made[2])  # owned: a tombstone travels
    await _revoke(store, clock, made[1])  # not owned: nothing travels
    short = await _create(store, clock, 6, "user-9", ttl=1_000)
    clock.advance(2_000)
    purged: Reply[int] = Reply()
    assert await store.call("user-9", Purge((short.id,), clock.now_ms(), purged)) == 1

    owned = [
        c
        for c in commits
        if c.kind in (CommitKind.CREATE, CommitKind.UPDATE, CommitKind.REVOKE, CommitKind.EXPIRE)
        and shard_of(c.entity_id) in OWNED
    ]
    assert len(owned) == 6  # four owned creates, one revoke, one expiry
    await _until(lambda: len(owner.transport.entries()) >= len(owned))
    await trio.sleep(0.05)  # anything more would be a bug: give it the chance to show
    epochs = _epochs()
    expected: list[list[Any]] = []
    for c in owned:
        shard = shard_of(c.entity_id)
        assert c.session is not None
        record = None if c.kind is CommitKind.EXPIRE else _json(c.session.to_record())
        expected.append([shard, epochs[shard], c.position, c.entity_id, c.session.user_id, record])
    assert owner.transport.entries() == expected
    kinds = [c.kind for c in owned]
    assert kinds[3] is CommitKind.REVOKE and expected[3][5]["is_deleted"] is True
    assert kinds[5] is CommitKind.EXPIRE and expected[5][5] is None
    # Only the backup of the owned shards was called, only with repl.apply from NODE.
    assert {(a, m) for a, m, _ in owner.transport.sent} == {(_address(BACKUP), "repl.apply")}
    assert all(b["from"] == NODE for _, _, b in owner.transport.sent)
    unowned = {s.id for s in made if shard_of(s.id) not in OWNED}
    assert not unowned & {e[3] for e in owner.transport.entries()}


async def test_a_new_backup_is_seeded_with_a_full_copy_then_a_synced_marker(
    nursery: trio.Nursery, engine: StorageEngine, clock: ManualClock
) -> None:
    store = _store(engine)
    before = [await _create(store, clock, shard, f"user-{shard}") for shard in (0, 1, 2, 3, 4)]
    await _revoke(store, clock, before[2])
    position = engine.commits.position
    owner = await _owner(nursery, engine, _map())
    await _until(lambda: len(owner.transport.markers()) == len(OWNED))
    epochs = _epochs()
    assert sorted(owner.transport.markers()) == sorted(
        [shard, epochs[shard], position] for shard in OWNED
    )
    copied = owner.transport.entries()
    held = {
        sid: _json(s.to_record())
        for sid, s in engine.state.sessions.items()
        if shard_of(sid) in OWNED
    }
    assert len(held) == 3
    assert {e[3]: e[5] for e in copied} == held
    assert all(e[1] == epochs[e[0]] and e[2] == position for e in copied)
    # Every shard's copy is sent no later than its marker.
    bodies = [b for _, _, b in owner.transport.sent]
    for shard in OWNED:
        marker_at = next(i for i, b in enumerate(bodies) if any(m[0] == shard for m in b["synced"]))
        for i, body in enumerate(bodies):
            if any(e[0] == shard for e in body["entries"]):
                assert i <= marker_at
    # Commits after the copy follow it.
    later = await _create(store, clock, 8, "user-later")
    await _until(lambda: any(e[3] == later.id for e in owner.transport.entries()))
    last = owner.transport.entries()[-1]
    assert last[3] == later.id and last[2] > position
    # The same map again seeds nothing more.
    owner.change(_map())
    await owner.replicator.wait_replicated(None)
    assert len(owner.transport.markers()) == len(OWNED)


async def test_wait_replicated_returns_once_the_backup_confirmed(
    nursery: trio.Nursery, engine: StorageEngine, clock: ManualClock
) -> None:
    store = _store(engine)
    owner = await _owner(nursery, engine, _map())
    await owner.replicator.wait_replicated(None)
    gate = owner.transport.gate = trio.Event()
    session = await _create(store, clock, 2, "user-w")
    done = trio.Event()

    async def wait() -> None:
        await owner.replicator.wait_replicated(2, timeout=5)
        done.set()

    nursery.start_soon(wait)
    await _until(lambda: len(owner.transport.attempts) > len(owner.transport.sent))
    await trio.sleep(0.05)
    assert not done.is_set()
    gate.set()
    with trio.fail_after(5):
        await done.wait()
    assert owner.transport.entries()[-1][3] == session.id


async def test_wait_replicated_times_out_while_the_backup_does_not_answer(
    nursery: trio.Nursery, engine: StorageEngine, clock: ManualClock
) -> None:
    owner = await _owner(nursery, engine, _map())
    await owner.replicator.wait_replicated(None)
    answered = len(owner.transport.sent)
    tried = len(owner.transport.attempts)
    owner.transport.failing = True
    await _create(_store(engine), clock, 4, "user-t")
    with pytest.raises(TokMeshError) as info:
        await owner.replicator.wait_replicated(4, timeout=0.3)
    assert info.value.error is E.CLST_TIMEOUT
    assert len(owner.transport.attempts) - tried >= 2  # it kept trying
    assert len(owner.transport.sent) == answered


async def test_wait_replicated_needs_a_backup(
    nursery: trio.Nursery, engine: StorageEngine, clock: ManualClock
) -> None:
    owner = await _owner(nursery, engine, _map(backups=()))
    await _create(_store(engine), clock, 0, "user-n")
    for shard in (0, None):
        with pytest.raises(TokMeshError) as info:
            await owner.replicator.wait_replicated(shard, timeout=0.3)
        assert info.value.error is E.CLST_NO_NODES
    # A shard owned elsewhere is not this node's to wait for; OTHER's shards have NODE as
    # backup, which is not a replica of anything NODE owns.
    assert owner.transport.attempts == []


async def test_a_failed_batch_is_sent_again_as_it_was(
    nursery: trio.Nursery, engine: StorageEngine, clock: ManualClock
) -> None:
    store = _store(engine)
    owner = await _owner(nursery, engine, _map())
    await owner.replicator.wait_replicated(None)
    start = len(owner.transport.attempts)
    owner.transport.fail_next = 2
    session = await _create(store, clock, 0, "user-r")
    await owner.replicator.wait_replicated(0, timeout=5)
    attempts = owner.transport.attempts[start:]
    assert len(attempts) == 3
    assert attempts[0] == attempts[1] == attempts[2] == owner.transport.sent[-1]
    assert [e[3] for e in attempts[0][2]["entries"]] == [session.id]


async def test_resync_sends_no_second_copy_while_one_is_unconfirmed(
    nursery: trio.Nursery, engine: StorageEngine, clock: ManualClock
) -> None:
    store = _store(engine)
    session = await _create(store, clock, 0, "user-s")
    owner = Owner(engine, _map())
    owner.transport.failing = True
    owner.change(_map())
    await nursery.start(owner.replicator.run)
    await _until(lambda: len(owner.transport.attempts) >= 1)
    owner.replicator.resync(BACKUP)  # the first copy is still on its way
    owner.transport.failing = False
    await owner.replicator.wait_replicated(None, timeout=5)
    assert sorted(m[0] for m in owner.transport.markers()) == sorted(OWNED)
    assert [e[3] for e in owner.transport.entries()] == [session.id]
    # Once that copy is confirmed, a resync sends a fresh one.
    owner.replicator.resync(BACKUP)
    await owner.replicator.wait_replicated(None, timeout=5)
    assert sorted(m[0] for m in owner.transport.markers()) == sorted(list(OWNED) * 2)
    assert [e[3] for e in owner.transport.entries()] == [session.id, session.id]
    # A node that backs up nothing of ours gets nothing.
    owner.replicator.resync(SPARE)
    await trio.sleep(0.05)
    assert all(a != _address(SPARE) for a, _, _ in owner.transport.attempts)


async def test_a_refused_change_is_not_acknowledged_as_replicated(
    nursery: trio.Nursery, engine: StorageEngine, clock: ManualClock
) -> None:
    """A replica that refuses a change (it knows a newer owner of the shard) has not
    written it: a revocation waiting for it must not be answered as replicated."""
    owner = await _owner(nursery, engine, _map())
    await owner.replicator.wait_replicated(None)
    owner.transport.refuse = frozenset({2})
    gate = owner.transport.gate = trio.Event()
    session = await _create(_store(engine), clock, 2, "user-x")
    await _revoke(_store(engine), clock, session)
    outcome: list[TokMeshError | None] = []

    async def wait() -> None:
        try:
            await owner.replicator.wait_replicated(2, timeout=2.0)
        except TokMeshError as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    nursery.start_soon(wait)
    await trio.sleep(0.05)  # the revocation waits; now the replica answers
    gate.set()
    await _until(lambda: bool(outcome))
    assert outcome[0] is not None, "a refused revocation was acknowledged as replicated"
    assert session.id in {e[3] for e in owner.transport.entries()}


async def test_a_backup_that_left_and_came_back_is_seeded_again(
    nursery: trio.Nursery, engine: StorageEngine, clock: ManualClock
) -> None:
    """A backup dropped from a shard's replicas (its lease expired) misses the changes
    made meanwhile; when it is a backup again (same owner, so the same epoch) it must get
    a fresh copy, or it would still report itself in sync and could be promoted without
    them."""
    store = _store(engine)
    owner = await _owner(nursery, engine, _map(version=5))
    await owner.replicator.wait_replicated(None)
    assert len(owner.transport.markers(BACKUP)) == len(OWNED)
    owner.change(_map(version=6, backups=(SPARE,)))
    missed = await _create(store, clock, 0, "user-m")
    await _revoke(store, clock, missed)
    await owner.replicator.wait_replicated(0, timeout=5)
    assert missed.id not in {e[3] for e in owner.transport.entries(BACKUP)}
    owner.change(_map(version=7, backups=(BACKUP,)))
    with trio.move_on_after(1.0):
        await _until(lambda: missed.id in {e[3] for e in owner.transport.entries(BACKUP)})
    assert missed.id in {e[3] for e in owner.transport.entries(BACKUP)}, (
        "the returning backup never got the revocation it missed"
    )
    assert len(owner.transport.markers(BACKUP)) == 2 * len(OWNED)


# -- replica side -------------------------------------------------------------------------


def _entry(session: Session | None, shard: int, epoch: int, seq: int, sid: str = "") -> list[Any]:
    record = _json(session.to_record()) if session is not None else None
    user = session.user_id if session is not None else "nobody"
    return [shard, epoch, seq, session.id if session is not None else sid, user, record]


def _stale_total() -> float:
    return metrics.REGISTRY.get_sample_value("tokmesh_replication_stale_epoch_total") or 0.0


def _epochs_file(data_dir: Path) -> list[int]:
    raw: list[int] = orjson.loads((data_dir / EPOCHS_FILE).read_bytes())
    return raw


async def test_stale_epochs_are_refused_per_shard(
    engine: StorageEngine, clock: ManualClock, tmp_path: Path
) -> None:
    replica = ReplicaSide(tmp_path, _store(engine), clock)
    first = _session(clock, 3, "user-1")
    answer = await replica.apply(OTHER, {"from": OTHER, "entries": [_entry(first, 3, 4, 10)]})
    assert answer == {"written": 1, "refused": []}
    stale = _session(clock, 3, "user-2")
    fine = _session(clock, 7, "user-3")
    deposed_tomb = first.evolve(is_deleted=True, version=2)
    before = _stale_total()
    answer = await replica.apply(
        "tmnd-old",
        {
            "from": "tmnd-old",
            "entries": [
                _entry(stale, 3, 3, 11),
                _entry(fine, 7, 1, 12),
                _entry(deposed_tomb, 3, 2, 13),
            ],
            "synced": [[3, 3, 14]],
        },
    )
    assert answer == {"written": 1, "refused": [3]}
    assert _stale_total() - before == 3
    held = engine.state.sessions
    assert stale.id not in held and fine.id in held
    assert not held[first.id].is_deleted
    assert replica.positions([3, 7]) == {"3": [4, 10, False], "7": [1, 12, False]}
    # The same epoch as the known one is accepted.
    again = await replica.apply(OTHER, {"entries": [_entry(deposed_tomb, 3, 4, 15)]})
    assert again["written"] >= 1 and again["refused"] == []
    assert held[first.id].is_deleted


async def test_a_newer_epoch_is_persisted_before_anything_is_applied(
    nursery: trio.Nursery, tmp_path: Path, clock: ManualClock
) -> None:
    runner = EngineRunner(nursery, tmp_path / "engine", clock)
    engine = await runner.start()
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    replica = ReplicaSide(data_dir, _store(engine), clock)
    session = _session(clock, 9, "user-p")
    await replica.apply(OTHER, {"entries": [_entry(session, 9, 5, 1)]})
    assert _epochs_file(data_dir)[9] == 5
    # The store is gone (the node is stopping): the epoch is durable all the same.
    store = _store(engine)
    await runner.stop()
    late = _session(clock, 11, "user-q")
    with pytest.raises(TokMeshError):
        await replica.apply(OTHER, {"entries": [_entry(late, 11, 6, 2)]})
    assert _epochs_file(data_dir)[11] == 6
    # After a restart, the deposed owner's epoch is still refused.
    engine = await runner.start()
    restarted = ReplicaSide(data_dir, _store(engine), clock)
    assert restarted.epochs[9] == 5 and restarted.epochs[11] == 6
    old = _session(clock, 9, "user-o")
    answer = await restarted.apply("tmnd-old", {"entries": [_entry(old, 9, 4, 3)]})
    assert answer == {"written": 0, "refused": [9]}
    assert old.id not in engine.state.sessions
    assert store is not _store(engine)


async def test_an_epoch_that_could_not_be_persisted_is_not_taken_as_known(
    engine: StorageEngine, clock: ManualClock, tmp_path: Path
) -> None:
    """Saving the epochs file fails (here its directory is gone; a full disk does the
    same): nothing is applied. The same message again, once saving works, must persist the
    epoch before applying, not find it already "known" in memory and apply unpersisted."""
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    replica = ReplicaSide(data_dir, _store(engine), clock)
    session = _session(clock, 10, "user-f")
    body = {"entries": [_entry(session, 10, 6, 1)]}
    data_dir.rmdir()
    with pytest.raises((OSError, TokMeshError)):
        await replica.apply(OTHER, body)
    assert session.id not in engine.state.sessions
    data_dir.mkdir()
    await replica.apply(OTHER, body)
    assert session.id in engine.state.sessions
    assert (data_dir / EPOCHS_FILE).exists(), "applied under an epoch that is not durable"
    assert _epochs_file(data_dir)[10] == 6


async def test_note_map_raises_the_known_epochs(
    engine: StorageEngine, clock: ManualClock, tmp_path: Path
) -> None:
    replica = ReplicaSide(tmp_path, _store(engine), clock)
    epochs = list(_epochs())
    epochs[5] = 8
    async with trio.open_nursery() as nursery:
        await nursery.start(replica.run)
        replica.note_map(_map(version=8, epochs=tuple(epochs)))
        # Fenced with at once; on disk as soon as the writer task has run.
        assert replica.epochs == epochs
        with trio.fail_after(5):
            while not (tmp_path / "replica-epochs.json").exists():
                await trio.sleep(0.01)
        assert _epochs_file(tmp_path) == epochs
        # A map with lower epochs lowers nothing.
        replica.note_map(_map(version=9, epochs=(1,) * SHARDS))
        await trio.sleep(0.05)
        assert replica.epochs == epochs and _epochs_file(tmp_path) == epochs
        session = _session(clock, 5, "user-m")
        answer = await replica.apply("tmnd-old", {"entries": [_entry(session, 5, 7, 1)]})
        assert answer["refused"] == [5]
        nursery.cancel_scope.cancel()
    assert ReplicaSide(tmp_path, _store(engine), clock).epochs == epochs


async def test_positions_report_in_sync_only_after_a_synced_marker_of_the_current_epoch(
    engine: StorageEngine, clock: ManualClock, tmp_path: Path
) -> None:
    replica = ReplicaSide(tmp_path, _store(engine), clock)
    assert replica.positions([4]) == {"4": [0, 0, False]}
    assert len(replica.positions()) == SHARDS
    s1 = _session(clock, 4, "user-1")
    await replica.apply(OTHER, {"entries": [_entry(s1, 4, 2, 100)]})
    assert replica.positions([4]) == {"4": [2, 100, False]}
    await replica.apply(OTHER, {"entries": [], "synced": [[4, 2, 150]]})
    assert replica.positions([4]) == {"4": [2, 150, True]}
    s2 = _session(clock, 4, "user-2")
    await replica.apply(OTHER, {"entries": [_entry(s2, 4, 2, 170)]})
    assert replica.positions([4, 6]) == {"4": [2, 170, True], "6": [0, 0, False]}
    # A newer owner (epoch 3): the copy of epoch 2 no longer counts.
    replica.note_map(_map(version=3, epochs=(3,) * SHARDS))
    assert replica.positions([4])["4"][2] is False
    s3 = _session(clock, 4, "user-3")
    await replica.apply(SPARE, {"entries": [_entry(s3, 4, 3, 5)], "synced": [[4, 3, 5]]})
    assert replica.positions([4]) == {"4": [3, 5, True]}
    # A fresh replica side (a restart) is in sync with nothing.
    assert ReplicaSide(tmp_path, _store(engine), clock).positions([4]) == {"4": [0, 0, False]}


async def test_newer_epoch_items_are_kept_beside_stale_ones_of_the_same_shard(
    engine: StorageEngine, clock: ManualClock, tmp_path: Path
) -> None:
    """An owner that lost a shard (epoch 3 to another node, epoch 4) and got it back
    (epoch 5) may still hold epoch-3 items for a slow backup, followed by the copy and
    marker of epoch 5. Only the stale items are refused: the copy of epoch 5 counts."""
    replica = ReplicaSide(tmp_path, _store(engine), clock)
    replica.note_map(_map(version=4, epochs=(4,) * SHARDS))
    stale = _session(clock, 6, "user-1")
    current = _session(clock, 6, "user-2")
    answer = await replica.apply(
        NODE,
        {
            "entries": [_entry(stale, 6, 3, 10), _entry(current, 6, 5, 20)],
            "synced": [[6, 5, 20]],
        },
    )
    assert stale.id not in engine.state.sessions
    assert current.id in engine.state.sessions
    assert replica.positions([6]) == {"6": [5, 20, True]}
    assert answer["written"] == 1


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"entries": {}},
        {"entries": [[1, 1, 1, "tmss-x", "u"]]},
        {"entries": [[SHARDS, 1, 1, "tmss-x", "u", None]]},
        {"entries": [[1, -1, 1, "tmss-x", "u", None]]},
        {"entries": [[1, True, 1, "tmss-x", "u", None]]},
        {"entries": [[1, 1, 1, 5, "u", None]]},
        {"entries": [[1, 1, 1, "tmss-x", "u", {"id": "x"}]]},
        {"synced": [[1, 1]]},
        {"synced": [[1, 1, "1"]]},
    ],
)
async def test_malformed_messages_are_refused_with_tm_arg(
    engine: StorageEngine, clock: ManualClock, tmp_path: Path, body: Any
) -> None:
    replica = ReplicaSide(tmp_path, _store(engine), clock)
    position = engine.state.position
    with pytest.raises(TokMeshError) as info:
        await replica.apply(OTHER, body)
    assert info.value.error is E.ARG_INVALID
    assert not (tmp_path / EPOCHS_FILE).exists()
    assert engine.state.position == position


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 300)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=7) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
_RECORD_KEYS = st.sampled_from(
    ["id", "user_id", "token_hash", "created_at", "data", "ip_address", "version", "device_id"]
)
_RECORD = st.dictionaries(_RECORD_KEYS, _JSON | st.just("tmth_" + "ab" * 32)) | _JSON
_ENTRY = st.tuples(
    st.integers(-1, SHARDS) | _JSON,
    st.integers(-1, 5) | _JSON,
    st.integers(-1, 5) | _JSON,
    st.text(max_size=4) | _JSON,
    st.text(max_size=4) | _JSON,
    _RECORD,
).map(list)
_BODY = (
    st.fixed_dictionaries(
        {},
        optional={
            "from": _JSON,
            "entries": st.lists(_ENTRY | _JSON, max_size=3) | _JSON,
            "synced": st.lists(st.lists(st.integers(-1, SHARDS) | _JSON, max_size=4)) | _JSON,
        },
    )
    | _JSON
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_BODY)
@example({"entries": [[1, 1, 1, "tmss-x", "u", {"token_hash": [0] * 69}]]})
def test_decode_entries_raises_only_value_error(body: Any) -> None:
    try:
        entries, synced = decode_entries(body)
    except ValueError:
        return
    for shard, epoch, seq, sid, user_id, session in entries:
        assert 0 <= shard < SHARDS and epoch >= 0 and seq >= 0
        assert isinstance(sid, str) and isinstance(user_id, str)
        assert session is None or isinstance(session, Session)
    assert all(0 <= m[0] < SHARDS and m[1] >= 0 and m[2] >= 0 for m in synced)


def test_decode_entries_round_trips_what_the_owner_sends() -> None:
    clock = ManualClock(1_750_000_000_000)
    session = _session(clock, 12, "user-d")
    entries_sent = [_entry(session, 12, 3, 7), _entry(None, 12, 3, 8, "tmss-gone")]
    body = _json({"from": NODE, "entries": entries_sent, "synced": [[12, 3, 8]]})
    entries, synced = decode_entries(body)
    assert entries[0][:5] == (12, 3, 7, session.id, "user-d") and entries[0][5] == session
    assert entries[1] == (12, 3, 8, "tmss-gone", "nobody", None)
    assert synced == [(12, 3, 8)]


# -- self-fencing ---------------------------------------------------------------------------


async def test_lease_valid_follows_the_lease_on_this_nodes_clock(
    etcd: EtcdMember,
    etcd_prefix: bytes,
    tmp_path: Path,
    mock_clock: trio.testing.MockClock,
) -> None:
    settings_ = MembershipSettings(
        node_id="tmnd-fence",
        advertise_address=f"127.0.0.1:{free_port()}",
        data_dir=tmp_path / "fence",
        prefix=etcd_prefix.decode(),
        lease_ttl=3,
        retry_initial=0.05,
        retry_max=0.3,
    )
    async with (
        EtcdClient(EtcdSettings(endpoints=(etcd.url,), backoff_max=0.2)) as client,
        trio.open_nursery() as nursery,
    ):
        membership = Membership(client, settings_)
        assert not membership.lease_valid()  # not registered yet
        nursery.start_soon(membership.run)
        await membership.connected.wait()
        keeper = membership.keeper
        assert keeper is not None and keeper.lease_id == membership.lease_id
        assert keeper.expires_at > trio.current_time()
        assert membership.lease_valid()
        # Time passes on this node's clock with no renewal (the keeper does not get to
        # run between these checks): valid up to the expiry, not at or after it.
        mock_clock.jump(keeper.expires_at - trio.current_time() - 0.01)
        assert membership.lease_valid()
        mock_clock.jump(0.02)
        assert not membership.lease_valid()
        nursery.cancel_scope.cancel()


async def test_changed_ids_are_read_from_the_wal_after_each_resume_point(
    engine: StorageEngine, clock: ManualClock
) -> None:
    store = _store(engine)
    before = await _create(store, clock, 3, "user-a")
    mark = store.commits.position
    after = await _create(store, clock, 3, "user-b")
    other = await _create(store, clock, 4, "user-c")
    await _revoke(store, clock, before)
    wal_dir = engine.settings.wal_dir
    upto = store.commits.position
    changed = _changed_ids(wal_dir, {3: mark, 4: 0}, upto)
    # Shard 3: what was logged after its resume point (the revoke of the earlier session
    # too); shard 4: everything; other shards: not asked for.
    assert changed == {3: {after.id, before.id}, 4: {other.id}}
    assert _changed_ids(wal_dir, {3: upto}, upto) == {3: set()}
    # A position that is not a record boundary, or ahead of the WAL, is a gap: the owner
    # then sends a full copy instead of guessing.
    with pytest.raises(WalGap):
        _changed_ids(wal_dir, {3: mark + 1}, upto)
    with pytest.raises(WalGap):
        _changed_ids(wal_dir, {3: upto + 10}, upto)


def test_resume_points_decode_only_well_formed_entries() -> None:
    raw = {"3": [2, 100], "300": [1, 1], "x": [1, 1], "4": [1], "5": [-1, 3], "6": [1, 7]}
    assert points_from(raw) == {3: (2, 100), 6: (1, 7)}
    assert points_from([1, 2]) == {}


async def test_a_replica_removed_from_a_shards_backups_is_not_in_sync_until_a_new_copy(
    engine: StorageEngine, clock: ManualClock, tmp_path: Path
) -> None:
    replica = ReplicaSide(tmp_path, _store(engine), clock, NODE)
    shard = next(s for s in range(SHARDS) if s not in OWNED)  # NODE backs it up
    epoch = _epochs()[shard]
    replica.note_map(_map())
    await replica.apply(OTHER, {"entries": [], "synced": [[shard, epoch, 10]]})
    assert replica.positions([shard])[str(shard)][2] is True
    # A map without NODE among the shard's backups: from then on it misses changes.
    without = _map(owned=OWNED | {shard}, backups=(BACKUP,))
    replica.note_map(without)
    assert replica.positions([shard])[str(shard)][2] is False
    # Back as a backup under the same epoch: still not in sync (it missed what happened
    # meanwhile) until the owner's new copy ends with a marker.
    replica.note_map(_map())
    assert replica.positions([shard])[str(shard)][2] is False
    await replica.apply(OTHER, {"entries": [], "synced": [[shard, epoch, 20]]})
    assert replica.positions([shard])[str(shard)][2] is True
