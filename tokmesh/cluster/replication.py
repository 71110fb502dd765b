"""Replication of each shard from its owner to its backups, fenced by the shard's epoch.

Owner side (:class:`Replicator`). Every commit of a session in a shard this node owns
(learnt from the commit stream, the one place changes are published) is queued for each
backup of the shard, stamped ``(shard, epoch, sequence)``: the epoch is the shard map's
fencing epoch of the shard, the sequence the commit's WAL position on this node. One
task per peer sends the queue in order, in batches, and counts what the peer confirmed
having written to its own WAL. A batch that fails (timeout, connection lost, a frame
that did not decode closed the connection) is sent again as it was: applying is
idempotent, so the peer resumes from the last batch it confirmed. A peer that falls so
far behind that its queue would outgrow its bound gets a full copy of its shards
instead once it answers again.

A backup that is new to a shard (after a map change, or this node's start) gets a full
copy of the shard first: the sessions held at one synchronous instant, then a marker
``synced(shard, epoch, position)``, then the commits after that instant, all in one
ordered queue. The marker is what makes a backup eligible for promotion: a replica that
restarted, or that lost its queue, is not in sync until it has a fresh copy.

:meth:`Replicator.wait_replicated` is how an acknowledgement waits for a replica: it
returns once at least one backup of the shard has confirmed everything queued for it up
to now, which includes the commit the caller just made (commits are queued in the same
synchronous step that applies them).

Replica side (:class:`ReplicaSide`). It keeps, per shard, the highest epoch it has seen
(from the shard map or from a message), persisted before anything of a newer epoch is
applied, and refuses messages of a lower epoch: a deposed owner that has not noticed
yet (paused, cut off from etcd) cannot write into the new owner's copies. Accepted
states go through the store's :class:`~tokmesh.actors.messages.Replicate`, which keeps
the newer version and lets tombstones win, through this node's own WAL.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import trio

from tokmesh.actors import messages as m
from tokmesh.actors.commit_stream import Commit, CommitKind, CommitStream
from tokmesh.actors.reply import Reply
from tokmesh.actors.session_store import SessionStore
from tokmesh.cluster.shard_map import ShardMap
from tokmesh.domain.clock import Clock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.session import Session
from tokmesh.domain.shards import SHARDS, shard_of
from tokmesh.storage.wal_codec import RecordType
from tokmesh.storage.wal_files import WalGap, frames_after
from tokmesh.telemetry import metrics

__all__ = ["ReplicaSide", "Replicator", "decode_entries"]

log = logging.getLogger("tokmesh.cluster.replication")

#: Entries per ``repl.apply`` call: a few hundred sessions stay well under a cluster frame.
BATCH = 200
#: Entries a peer's queue may hold before it is dropped for a full copy later.
QUEUE_LIMIT = 200_000
#: How long one ``repl.apply`` call may take.
CALL_TIMEOUT = 5.0
#: How long an acknowledgement waits for a replica before the caller gets TM-CLST-5040.
ACK_TIMEOUT = 5.0
#: Pause before sending a failed batch again (doubles up to the maximum).
RETRY_INITIAL = 0.05
RETRY_MAX = 1.0

EPOCHS_FILE = "replica-epochs.json"
POSITIONS_FILE = "replica-positions.json"

#: Commit kinds that change a session and travel to replicas.
_REPLICATED = frozenset(
    {CommitKind.CREATE, CommitKind.UPDATE, CommitKind.REVOKE, CommitKind.EXPIRE}
)

Call = Callable[[str, str, Any], Awaitable[Any]]
#: ``resume_points(node)`` -> ``{shard: (epoch, sequence)}``: up to where ``node`` holds
#: each shard completely (it may not know: then nothing).
ResumePoints = Callable[[str], Awaitable[Mapping[int, tuple[int, int]]]]


class _Entry:
    """One queued change: a session's state after a commit, or a full-copy item."""

    __slots__ = ("copy", "epoch", "queued_at", "seq", "session", "shard", "sid", "user_id")

    def __init__(
        self,
        shard: int,
        epoch: int,
        seq: int,
        sid: str,
        user_id: str,
        session: Session | None,
        queued_at: float,
        copy: bool = False,
    ) -> None:
        #: Part of a full copy (its bytes count against ``cluster.rebalance.max_rate``).
        self.copy = copy
        self.shard = shard
        self.epoch = epoch
        self.seq = seq
        self.sid = sid
        self.user_id = user_id
        self.session = session
        self.queued_at = queued_at

    def wire(self) -> list[Any]:
        """``[shard, epoch, seq, session_id, user_id, record or null]``."""
        record = self.session.to_record() if self.session is not None else None
        return [self.shard, self.epoch, self.seq, self.sid, self.user_id, record]


class _Answer(enum.Enum):
    """What became of one ``repl.apply`` batch."""

    CONFIRMED = "confirmed"
    #: The replica knows a newer epoch for some of its shards and applied none of those.
    REFUSED = "refused"
    #: No answer (send it again).
    FAILED = "failed"


class _Synced:
    """The marker after a full copy: the peer now holds the shard as of ``seq``."""

    __slots__ = ("epoch", "queued_at", "seq", "shard")

    def __init__(self, shard: int, epoch: int, seq: int, queued_at: float) -> None:
        self.shard = shard
        self.epoch = epoch
        self.seq = seq
        self.queued_at = queued_at


def decode_entries(
    body: Any,
) -> tuple[list[tuple[int, int, int, str, str, Session | None]], list[tuple[int, int, int]]]:
    """The entries and synced markers of a ``repl.apply`` body; ValueError if malformed."""
    if not isinstance(body, dict):
        raise ValueError("not an object")
    raw_entries = body.get("entries", [])
    raw_synced = body.get("synced", [])
    if not isinstance(raw_entries, list) or not isinstance(raw_synced, list):
        raise ValueError("entries and synced must be lists")
    entries = []
    for item in raw_entries:
        if not isinstance(item, list) or len(item) != 6:
            raise ValueError("an entry is not a list of six")
        shard, epoch, seq, sid, user_id, record = item
        if not (_index(shard) and _count(epoch) and _count(seq)):
            raise ValueError("bad shard, epoch or sequence")
        if not isinstance(sid, str) or not isinstance(user_id, str):
            raise ValueError("bad session or user id")
        try:
            session = Session.from_record(record) if record is not None else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"bad session record ({exc})") from None
        entries.append((shard, epoch, seq, sid, user_id, session))
    synced = []
    for item in raw_synced:
        if not isinstance(item, list) or len(item) != 3:
            raise ValueError("a synced marker is not a list of three")
        shard, epoch, seq = item
        if not (_index(shard) and _count(epoch) and _count(seq)):
            raise ValueError("bad synced marker")
        synced.append((shard, epoch, seq))
    return entries, synced


def _index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < SHARDS


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# -- owner side ----------------------------------------------------------------------------


class _Peer:
    """The ordered queue to one backup and what it has confirmed."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.queue: deque[_Entry | _Synced] = deque()
        #: Items ever queued / confirmed by the peer (counted together: equal when idle).
        self.queued = 0
        self.acked = 0
        #: Bumped when the queue is dropped for a full copy: what was waited for in an
        #: earlier generation will never be confirmed.
        self.generation = 0
        self.changed = trio.Event()
        self.wakeup = trio.Event()

    def push(self, item: _Entry | _Synced) -> None:
        self.queue.append(item)
        self.queued += 1
        self.wakeup.set()

    def progress(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class Replicator:
    """The owner side (see the module doc). Subscribe :meth:`on_commit` to the commit
    stream, call :meth:`map_changed` with each map in force, and run :meth:`run`."""

    def __init__(
        self,
        node_id: str,
        store: SessionStore,
        commits: CommitStream,
        current_map: Callable[[], ShardMap | None],
        address_of: Callable[[str], str | None],
        call: Call,
        *,
        clock: Callable[[], float] = time.monotonic,
        replication_factor: int = 2,
        max_rate: int = 0,
        min_ttl_ms: int = 0,
        now_ms: Callable[[], int] | None = None,
        may_send: Callable[[], bool] = lambda: True,
        wal_dir: Path | None = None,
        resume_points: ResumePoints | None = None,
    ) -> None:
        self.node_id = node_id
        #: Where this node's WAL is, and how to ask a backup up to where it holds each
        #: shard completely: together they let a returning backup catch up with what
        #: changed since instead of a full copy.
        self.wal_dir = wal_dir
        self.resume_points = resume_points
        #: False while this node must not act as an owner (fenced): nothing is sent then.
        self.may_send = may_send
        #: The clock session expiries are compared with (the store's).
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))
        #: Backups beyond ``replication_factor - 1`` are shards' move targets.
        self.width = max(1, replication_factor - 1)
        #: Bytes per second of full copies (0: no cap), and the remaining lifetime below
        #: which a moving shard's sessions are not copied.
        self.max_rate = max_rate
        self.min_ttl_ms = min_ttl_ms
        self._allowance = float(min(max_rate, 1 << 20))
        self._allowance_at = clock()
        self.store = store
        self.commits = commits
        self.current_map = current_map
        self.address_of = address_of
        self.call = call
        self.clock = clock
        self.peers: dict[str, _Peer] = {}
        self._nursery: trio.Nursery | None = None
        # (backup, shard) -> the epoch of the last full copy queued for it, and the
        # queue count at which that copy's marker is confirmed.
        self._seeded: dict[tuple[str, int], int] = {}
        self._copy_due: dict[tuple[str, int], int] = {}

    # -- inputs -----------------------------------------------------------------------------

    def on_commit(self, commit: Commit) -> None:
        """Queue a committed change of an owned shard for its backups (cheap: no encoding)."""
        if commit.kind not in _REPLICATED:
            return
        shard_map = self.current_map()
        if shard_map is None:
            return
        sid = commit.entity_id
        shard = shard_of(sid)
        if shard_map.owners[shard] != self.node_id:
            return
        backups = shard_map.backups[shard]
        if not backups:
            return
        session = commit.session
        user_id = session.user_id if session is not None else ""
        state = None if commit.kind is CommitKind.EXPIRE else session
        now = self.clock()
        epoch = shard_map.epochs[shard]
        for node in backups:
            peer = self._peer(node)
            peer.push(_Entry(shard, epoch, commit.position, sid, user_id, state, now))
            if len(peer.queue) > QUEUE_LIMIT:
                self._overflow(peer)

    def map_changed(self, shard_map: ShardMap) -> None:
        """Seed every backup that does not hold a copy of this node's shard from us yet."""
        # A backup that stopped being one (or a shard no longer ours) forgets its copy:
        # if it becomes a backup again it gets a fresh one, never counting on one that
        # missed what happened meanwhile.
        for key in [
            (node, shard)
            for node, shard in self._seeded
            if shard_map.owners[shard] != self.node_id or node not in shard_map.backups[shard]
        ]:
            del self._seeded[key]
            self._copy_due.pop(key, None)
        wanted: dict[str, list[int]] = {}
        for shard, owner in enumerate(shard_map.owners):
            if owner != self.node_id:
                continue
            epoch = shard_map.epochs[shard]
            for node in shard_map.backups[shard]:
                if self._seeded.get((node, shard)) != epoch:
                    wanted.setdefault(node, []).append(shard)
        for node, shards in wanted.items():
            self._seed(node, shards, shard_map)

    def resync(self, node: str) -> None:
        """A backup asked for fresh copies (it restarted): send every shard it backs up."""
        shard_map = self.current_map()
        if shard_map is None:
            return
        shards = [
            s
            for s, owner in enumerate(shard_map.owners)
            if owner == self.node_id and node in shard_map.backups[s]
        ]
        peer = self._peer(node)
        # A copy still on its way is as fresh as a new one would be.
        shards = [s for s in shards if self._copy_due.get((node, s), -1) <= peer.acked]
        if shards:
            self._seed(node, shards, shard_map)

    def _peer(self, node: str) -> _Peer:
        peer = self.peers.get(node)
        if peer is None:
            peer = self.peers[node] = _Peer(node)
            if self._nursery is not None:
                self._nursery.start_soon(self._send_loop, peer)
        return peer

    def _overflow(self, peer: _Peer) -> None:
        """Drop a hopeless queue; the peer gets full copies of its shards instead."""
        log.warning(
            "replication queue to %s exceeded %d entries; it will get full copies instead",
            peer.node, QUEUE_LIMIT,
        )  # fmt: skip
        peer.queue.clear()
        peer.acked = peer.queued
        peer.generation += 1
        peer.progress()
        for key in [k for k in self._seeded if k[0] == peer.node]:
            del self._seeded[key]
        shard_map = self.current_map()
        if shard_map is not None:
            self.map_changed(shard_map)

    def _seed(self, node: str, shards: list[int], shard_map: ShardMap) -> None:
        """Bring ``node`` up to date on ``shards``: only what changed since it last held
        them completely when it can say so and the WAL still has it, else a full copy."""
        if self.resume_points is None or self.wal_dir is None or self._nursery is None:
            self._copy(node, shards, shard_map)
            return
        for shard in shards:
            # Counted as seeded now (no second seeding meanwhile); confirmed once the
            # marker queued by the task is.
            self._seeded[(node, shard)] = shard_map.epochs[shard]
            self._copy_due[(node, shard)] = 1 << 62
        self._nursery.start_soon(self._seed_task, node, shards, shard_map)

    async def _seed_task(self, node: str, shards: list[int], shard_map: ShardMap) -> None:
        assert self.resume_points is not None and self.wal_dir is not None
        try:
            points = await self.resume_points(node)
        except Exception as exc:  # the peer did not answer: it gets full copies
            log.info("%s did not say what it holds (%s); full copies", node, exc)
            points = {}
        resumable = {
            s: points[s][1] for s in shards if s in points and points[s][0] == shard_map.epochs[s]
        }
        changed: dict[int, set[str]] | None = {}
        if resumable:
            try:
                changed = await trio.to_thread.run_sync(
                    _changed_ids, self.wal_dir, resumable, self.commits.position
                )
            except WalGap as gap:
                log.info("catching %s up from the WAL is not possible (%s); full copies", node, gap)
                changed = None
        # From here on synchronous: what is queued reflects one instant.
        current = self.current_map()
        if current is None:
            return
        still = [
            s
            for s in shards
            if current.owners[s] == self.node_id
            and node in current.backups[s]
            and current.epochs[s] == shard_map.epochs[s]
        ]
        caught_up = [s for s in still if changed is not None and s in resumable]
        full = [s for s in still if s not in caught_up]
        if full:
            self._copy(node, full, current)
        if caught_up and changed is not None:
            self._catch_up(node, caught_up, changed, current)

    def _catch_up(
        self, node: str, shards: list[int], changed: dict[int, set[str]], shard_map: ShardMap
    ) -> None:
        """Queue the current state of every session of ``shards`` changed since the
        backup's resume point (a removal where it is gone), then a synced marker."""
        peer = self._peer(node)
        position = self.commits.position
        now = self.clock()
        held = self.store.state.sessions
        sent = 0
        for shard in shards:
            epoch = shard_map.epochs[shard]
            for sid in sorted(changed.get(shard, ())):
                session = held.get(sid)
                user_id = session.user_id if session is not None else ""
                peer.queue.append(_Entry(shard, epoch, position, sid, user_id, session, now))
                peer.queued += 1
                sent += 1
            peer.push(_Synced(shard, epoch, position, now))
            self._seeded[(node, shard)] = epoch
            self._copy_due[(node, shard)] = peer.queued
        log.info(
            "caught %s up on %d shards from the WAL (%d sessions changed)",
            node, len(shards), sent,
        )  # fmt: skip

    def _copy(self, node: str, shards: list[int], shard_map: ShardMap) -> None:
        """Queue the sessions of ``shards`` as held now, then a synced marker per shard."""
        peer = self._peer(node)
        wanted = set(shards)
        # A move target (a backup beyond the replication factor) skips sessions about to
        # expire anyway; a backup that must survive a failover gets everything.
        moving = {s for s in shards if node in shard_map.backups[s][self.width :]}
        position = self.commits.position
        now = self.clock()
        keep_until = self.now_ms() + self.min_ttl_ms
        held = self.store.state.sessions
        for sid, session in list(held.items()):
            shard = shard_of(sid)
            if shard not in wanted:
                continue
            if (
                shard in moving
                and not session.is_deleted
                and session.expires_at
                and session.expires_at < keep_until
            ):
                continue
            peer.queue.append(
                _Entry(shard, shard_map.epochs[shard], position, sid, session.user_id,
                       session, now, copy=True)
            )  # fmt: skip
            peer.queued += 1
        for shard in shards:
            epoch = shard_map.epochs[shard]
            peer.push(_Synced(shard, epoch, position, now))
            self._seeded[(node, shard)] = epoch
            self._copy_due[(node, shard)] = peer.queued
        log.info("seeding %d shards to %s (%d queued)", len(shards), node, len(peer.queue))

    # -- acknowledgements -------------------------------------------------------------------

    async def wait_replicated(self, shard: int | None, timeout: float = ACK_TIMEOUT) -> None:
        """Return once a backup of ``shard`` (``None``: of every shard this node owns)
        confirmed everything queued for it so far.

        Raises ``TM-CLST-5030`` when a shard has no backup to wait for, ``TM-CLST-5040``
        when none confirmed in time (the change is committed here; retrying is safe)."""
        shard_map = self.current_map()
        if shard_map is None:
            raise TokMeshError(E.CLST_NO_NODES, "the cluster has no shard map yet")
        if shard is None:
            groups = {
                shard_map.backups[s]
                for s, owner in enumerate(shard_map.owners)
                if owner == self.node_id
            }
        else:
            groups = {shard_map.backups[shard]}
        if any(not group for group in groups):
            raise TokMeshError(
                E.CLST_NO_NODES, "a shard of this change has no replica to acknowledge it"
            )
        # What each peer must have confirmed: everything queued for it up to now.
        targets = {
            node: (self._peer(node).queued, self._peer(node).generation)
            for group in groups
            for node in group
        }

        def confirmed(node: str) -> bool:
            peer = self.peers[node]
            target, generation = targets[node]
            return peer.generation == generation and peer.acked >= target

        def hopeless(node: str) -> bool:
            return self.peers[node].generation != targets[node][1]

        with trio.move_on_after(timeout):
            while True:
                waiting = [g for g in groups if not any(confirmed(n) for n in g)]
                if not waiting:
                    return
                if any(all(hopeless(n) for n in g) for g in waiting):
                    break  # what a shard's replicas owed was dropped for a full copy
                await _first([self.peers[n].changed for g in waiting for n in g])
        raise TokMeshError(
            E.CLST_TIMEOUT,
            "no replica confirmed the change in time; it is committed on the shard's owner "
            "and retrying is safe",
        )

    async def wait_peer(self, node: str, timeout: float = ACK_TIMEOUT) -> None:
        """Return once ``node`` confirmed everything queued for it so far (a shard's
        hand-over to it); ``TM-CLST-5040`` when it does not in time."""
        peer = self._peer(node)
        target, generation = peer.queued, peer.generation
        with trio.move_on_after(timeout):
            while peer.generation == generation and peer.acked < target:
                await peer.changed.wait()
            if peer.generation == generation:
                return
        raise TokMeshError(E.CLST_TIMEOUT, f"{node} did not confirm the last changes in time")

    def lag(self, node: str) -> float:
        """Seconds the oldest unconfirmed item to ``node`` has waited (0 when none)."""
        peer = self.peers.get(node)
        if peer is None or not peer.queue:
            return 0.0
        return max(0.0, self.clock() - peer.queue[0].queued_at)

    # -- sending ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send every peer's queue in its own task, and export the lag every second."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for peer in self.peers.values():
                nursery.start_soon(self._send_loop, peer)
            unsubscribe = self.commits.subscribe(self.on_commit)
            task_status.started()
            try:
                while True:
                    for node in list(self.peers):
                        metrics.REPLICATION_LAG.labels(self.node_id, node).set(self.lag(node))
                    await trio.sleep(1.0)
            finally:
                unsubscribe()

    async def _send_loop(self, peer: _Peer) -> None:
        delay = RETRY_INITIAL
        while True:
            if not peer.queue:
                peer.wakeup = trio.Event()
                await peer.wakeup.wait()
                continue
            batch = [peer.queue[i] for i in range(min(BATCH, len(peer.queue)))]
            address = self.address_of(peer.node)
            answer: _Answer = _Answer.FAILED
            if address is not None and self.may_send():
                answer = await self._send(peer, address, batch)
            if answer is _Answer.FAILED:
                await trio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            delay = RETRY_INITIAL
            # The queue may have been dropped meanwhile (overflow): only pop what is ours.
            for item in batch:
                if peer.queue and peer.queue[0] is item:
                    peer.queue.popleft()
                    peer.acked += 1
            if answer is _Answer.REFUSED:
                # The replica knows a newer owner: what waited on this batch was not
                # replicated and never will be from here.
                peer.generation += 1
            peer.progress()

    async def _throttle(self, size: int) -> None:
        """Wait until ``size`` bytes of full copy fit under ``max_rate`` (a token bucket
        with a burst of one MiB, or of the rate when smaller)."""
        if self.max_rate <= 0:
            return
        burst = float(min(self.max_rate, 1 << 20))
        now = self.clock()
        self._allowance = min(burst, self._allowance + (now - self._allowance_at) * self.max_rate)
        self._allowance_at = now
        self._allowance -= size
        if self._allowance < 0:
            await trio.sleep(-self._allowance / self.max_rate)

    async def _send(self, peer: _Peer, address: str, batch: list[_Entry | _Synced]) -> _Answer:
        body = {
            "from": self.node_id,
            "entries": [item.wire() for item in batch if isinstance(item, _Entry)],
            "synced": [
                [item.shard, item.epoch, item.seq] for item in batch if isinstance(item, _Synced)
            ],
        }
        copied = [e for e in batch if isinstance(e, _Entry) and e.copy]
        if copied:
            await self._throttle(len(orjson.dumps([e.wire() for e in copied])))
        try:
            answer = await self.call(address, "repl.apply", body)
        except TokMeshError as exc:
            log.info("replication to %s failed (%s); sending again", peer.node, exc.message)
            return _Answer.FAILED
        except Exception as exc:  # RpcError and friends: the transport said no
            log.info("replication to %s failed (%s); sending again", peer.node, exc)
            return _Answer.FAILED
        refused = answer.get("refused") if isinstance(answer, dict) else None
        if refused:
            log.warning(
                "replica %s refused shards %s: it knows a newer epoch (this node is no longer "
                "their owner)",
                peer.node, refused,
            )  # fmt: skip
            return _Answer.REFUSED
        return _Answer.CONFIRMED


async def _first(events: list[trio.Event]) -> None:
    """Wait until any of ``events`` is set."""
    distinct = list({id(e): e for e in events}.values())
    if len(distinct) == 1:
        # The usual case (one backup): no nursery and task per wait.
        await distinct[0].wait()
        return
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in distinct:
            nursery.start_soon(wait, event)


# -- replica side ----------------------------------------------------------------------------


class ReplicaSide:
    """Applies what owners send, refusing stale epochs; see the module doc."""

    def __init__(
        self, data_dir: Path, store: SessionStore, clock: Clock, node_id: str = ""
    ) -> None:
        #: This node (empty: not known, as in tests of the file alone).
        self.node_id = node_id
        self.path = data_dir / EPOCHS_FILE
        self.store = store
        self.clock = clock
        #: The epochs this node fences with, and those known to be on disk. Only
        #: :meth:`_persist` writes the file, one write at a time and never a lower epoch.
        self.epochs = _load_epochs(self.path)
        self._on_disk = list(self.epochs)
        self._lock = trio.Lock()
        self._map_epochs = trio.Event()
        #: shard -> (epoch, sequence) of the last applied entry or marker.
        self.applied: dict[int, tuple[int, int]] = {}
        #: shard -> epoch for which this node received a full copy since it started.
        self.synced: dict[int, int] = {}
        #: shard -> (epoch, sequence) up to which this node holds the shard completely
        #: (a marker, and everything after it, applied): where its owner can resume from
        #: after a restart. Kept in ``replica-positions.json``, written once a second.
        self.positions_path = data_dir / POSITIONS_FILE
        self.complete = _load_points(self.positions_path)
        self._points_saved = dict(self.complete)

    def note_map(self, shard_map: ShardMap) -> None:
        """Learn a map in force. Its epochs are fenced with at once and written to disk by
        :meth:`run` (the map itself is durable in etcd; the file keeps them across a
        restart that happens before the map is read again). A shard this node does not
        back up in it is no longer in sync here: it misses what happens from now on, so
        it counts as in sync again only after a new copy's marker, whatever it held."""
        grown = False
        for shard, epoch in enumerate(shard_map.epochs):
            if epoch > self.epochs[shard]:
                self.epochs[shard] = epoch
                grown = True
            if self.node_id and self.node_id not in shard_map.backups[shard]:
                self.synced.pop(shard, None)
        if grown:
            self._map_epochs.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write the epochs learnt from maps to disk whenever there are new ones, and the
        resume points once a second when they moved."""
        task_status.started()
        while True:
            with trio.move_on_after(1.0):
                await self._map_epochs.wait()
            if self._map_epochs.is_set():
                self._map_epochs = trio.Event()
                await self._persist(list(self.epochs))
            if self.complete != self._points_saved:
                points = dict(self.complete)
                await trio.to_thread.run_sync(_save_points, self.positions_path, points)
                self._points_saved = points

    def resume_from(self) -> dict[str, list[int]]:
        """The ``repl.resume_points`` answer: ``{shard: [epoch, sequence]}``."""
        return {str(shard): [e, q] for shard, (e, q) in self.complete.items()}

    def forget(self, shards: Iterable[int]) -> None:
        """This node no longer holds ``shards`` (its copies are being dropped)."""
        for shard in shards:
            self.complete.pop(shard, None)
            self.synced.pop(shard, None)

    async def _persist(self, epochs: list[int]) -> None:
        """Make at least ``epochs`` durable (merged with what is on disk), then fence with
        them: an epoch is relied on only once a restart cannot forget it."""
        async with self._lock:
            merged = [max(a, b) for a, b in zip(epochs, self._on_disk, strict=True)]
            if merged != self._on_disk:
                await trio.to_thread.run_sync(_save_epochs, self.path, merged)
                self._on_disk = merged
        self.epochs = [max(a, b) for a, b in zip(self.epochs, merged, strict=True)]

    def positions(self, shards: Iterable[int] | None = None) -> dict[str, list[Any]]:
        """``{shard: [epoch, sequence, in_sync]}`` for promotion decisions."""
        out: dict[str, list[Any]] = {}
        wanted = range(SHARDS) if shards is None else shards
        for shard in wanted:
            epoch, seq = self.applied.get(shard, (0, 0))
            in_sync = (
                self.synced.get(shard) == self.epochs[shard] and self.synced.get(shard) is not None
            )
            out[str(shard)] = [epoch, seq, in_sync]
        return out

    async def apply(self, peer: str, body: Any) -> dict[str, Any]:
        """The ``repl.apply`` handler: apply what is not stale, report what is."""
        try:
            entries, synced = decode_entries(body)
        except ValueError as exc:
            raise TokMeshError(E.ARG_INVALID, f"bad replication message: {exc}") from None
        sender = body.get("from", peer)
        stamps = [(e[0], e[1]) for e in entries] + [(x[0], x[1]) for x in synced]
        epochs = list(self.epochs)
        for shard, epoch in stamps:
            epochs[shard] = max(epochs[shard], epoch)
        if epochs != self.epochs:
            # Durable before anything of the newer epoch is applied, so a restart cannot
            # forget that an older owner is deposed; known only once it is on disk.
            await self._persist(epochs)
        epochs = self.epochs
        # Each item is fenced by itself: a stale one beside newer ones of its shard (a
        # shard that moved away and back) does not take them down with it.
        fresh = [e for e in entries if e[1] >= epochs[e[0]]]
        markers = [x for x in synced if x[1] >= epochs[x[0]]]
        refused = sorted({e[0] for e in entries if e[1] < epochs[e[0]]}
                         | {x[0] for x in synced if x[1] < epochs[x[0]]})  # fmt: skip
        if refused:
            metrics.REPLICATION_STALE_EPOCH.inc(
                len(entries) - len(fresh) + len(synced) - len(markers)
            )
            log.warning(
                "refused replication from %s for shards %s: stale epoch (a newer owner exists)",
                sender, refused,
            )  # fmt: skip
        by_actor: dict[int, list[tuple[str, Session | None]]] = {}
        actors: dict[int, Any] = {}
        held = self.store.state.sessions
        for _, _, _, sid, user_id, session in fresh:
            if not user_id:
                # A removal its owner could not name the user of: ours names it.
                copy = held.get(sid)
                if copy is None:
                    continue
                user_id = copy.user_id
            actor = self.store.shard_for(user_id)
            actors[id(actor)] = actor
            by_actor.setdefault(id(actor), []).append((sid, session))
        now = self.clock.now_ms()
        replies: list[Reply[int]] = []
        for key, items in by_actor.items():
            reply: Reply[int] = Reply()
            await actors[key].send(m.Replicate(items=tuple(items), now_ms=now, reply=reply))
            replies.append(reply)
        written = 0
        for reply in replies:
            written += await reply.wait()
        # Positions move only once what they claim is written. Entries first: a marker
        # says everything up to it is here, including the entries before it.
        for shard, epoch, seq, *_ in fresh:
            self._advance(shard, epoch, seq)
        for shard, epoch, seq in markers:
            self.synced[shard] = epoch
            self._advance(shard, epoch, seq)
        return {"written": written, "refused": refused}

    def _advance(self, shard: int, epoch: int, seq: int) -> None:
        last = self.applied.get(shard)
        if last is None or (epoch, seq) > last:
            self.applied[shard] = (epoch, seq)
        if self.synced.get(shard) == epoch:
            done = self.complete.get(shard)
            if done is None or (epoch, seq) > done:
                self.complete[shard] = (epoch, seq)


def _load_epochs(path: Path) -> list[int]:
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return [0] * SHARDS
    except (OSError, orjson.JSONDecodeError) as exc:
        raise TokMeshError(
            E.CLST_INCONSISTENT,
            f"{path} cannot be read ({exc}); remove it only if this node's data is to be discarded",
        ) from None
    if not isinstance(raw, list) or len(raw) != SHARDS or not all(_count(e) for e in raw):
        raise TokMeshError(E.CLST_INCONSISTENT, f"{path} is not a list of {SHARDS} epochs")
    return list(raw)


def points_from(raw: Any) -> dict[int, tuple[int, int]]:
    """Resume points ``{"shard": [epoch, sequence]}`` as kept on disk and sent by
    ``repl.resume_points`` (malformed entries are left out)."""
    out: dict[int, tuple[int, int]] = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            if (
                isinstance(key, str)
                and key.isdigit()
                and _index(int(key))
                and isinstance(value, list)
                and len(value) == 2
                and all(_count(v) for v in value)
            ):
                out[int(key)] = (value[0], value[1])
    return out


def _load_points(path: Path) -> dict[int, tuple[int, int]]:
    """The resume points kept by :class:`ReplicaSide` (none when the file is missing or
    unreadable: the owners then send full copies, which is always safe)."""
    try:
        return points_from(orjson.loads(path.read_bytes()))
    except (OSError, orjson.JSONDecodeError):
        return {}


def _save_points(path: Path, points: dict[int, tuple[int, int]]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps({str(k): list(v) for k, v in points.items()}))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_epochs(path: Path, epochs: list[int]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(epochs))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def positions_from(answer: Any) -> Mapping[int, tuple[int, int, bool]]:
    """Decode a ``repl.positions`` answer (malformed entries are left out)."""
    out: dict[int, tuple[int, int, bool]] = {}
    if not isinstance(answer, dict):
        return out
    for key, value in answer.items():
        try:
            shard = int(key)
        except ValueError:
            continue
        if isinstance(value, list) and len(value) == 3 and _index(shard):
            epoch, seq, in_sync = value
            if _count(epoch) and _count(seq) and isinstance(in_sync, bool):
                out[shard] = (epoch, seq, in_sync)
    return out


def _changed_ids(wal_dir: Path, resume: Mapping[int, int], upto: int) -> dict[int, set[str]]:
    """Per shard of ``resume``, the session ids logged after its resume position up to
    ``upto`` (blocking: run in a worker thread). :class:`WalGap` when the WAL no longer
    holds all of it. Payloads are not decrypted: the id is in clear in each record."""
    out: dict[int, set[str]] = {shard: set() for shard in resume}
    session_types = (RecordType.CREATE, RecordType.UPDATE, RecordType.DELETE)
    for frames in frames_after(wal_dir, min(resume.values()), upto):
        for position, rtype, payload in frames:
            if rtype not in session_types:
                continue
            try:
                sid = orjson.loads(payload).get("sid")
            except orjson.JSONDecodeError:
                raise WalGap("a WAL record after the resume point does not decode") from None
            if not isinstance(sid, str):
                continue
            shard = shard_of(sid)
            since = resume.get(shard)
            if since is not None and position > since:
                out[shard].add(sid)
    return out
