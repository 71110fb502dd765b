"""The commit stream: every change to the committed state, in WAL order, with its position.

One stream per node. Metrics, events and (later) replication learn of changes here and
nowhere else. A commit is published in the same synchronous step that applies it to the
:class:`~tokmesh.actors.state.StoreState`, which is the WAL writer's commit callback: so
nothing is published that is not committed, a subscriber that reads the state sees the
change it was told about, and commits arrive in WAL order because the writer calls its
callbacks in WAL order. A failed batch calls no commit callback and publishes nothing.

"Committed" is the point at which the caller is answered, per ``storage.wal.sync_mode``:
after the fsync in ``sync`` mode, after the write to the OS in ``batch`` mode (fsynced
within ``sync_interval``). A stream that waited for the periodic fsync in batch mode
would lag every acknowledgement by up to a second; what an OS crash can lose was also
acknowledged to its client, and a replica holding it is no worse than the client's reply.

Two kinds of subscriber:

* :meth:`CommitStream.subscribe` — a synchronous callback on the Trio thread, called
  inside the WAL writer's commit step. It must be cheap (a counter, a dict update) and
  must not block; one that raises is logged and unsubscribed, so it cannot leave the rest
  of a WAL batch unapplied.
* :meth:`CommitStream.open_subscription` — a bounded buffer read by a task of its own.
  Publishing never waits for it: when its buffer is full the subscription is cut off
  (it stops receiving), and once it has read what it holds it gets
  :class:`SubscriptionLost` with the position to resync from (a snapshot, or the WAL
  after that position) before subscribing again.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from tokmesh.domain.apikey import ApiKey
    from tokmesh.domain.session import Session
    from tokmesh.storage.wal_codec import WalRecord

log = logging.getLogger("tokmesh.commits")

#: The event-note cause of the records a replica writes from its owner's stream.
REPLICATED_CAUSE = "replicate"

#: Commits an async subscription may hold unread before it is cut off. A WAL batch holds
#: at most ``batch_count`` (100 by default) records, so this is a few hundred batches.
DEFAULT_LIMIT = 50_000


class CommitKind(enum.Enum):
    """What a commit did to the state."""

    #: WAL ``CREATE``: ``session`` is the new session.
    CREATE = "create"
    #: WAL ``UPDATE`` (touch, renew, update): ``session`` is the new state.
    UPDATE = "update"
    #: WAL ``DELETE`` that leaves a tombstone (revoke, revoke-by-user, quota eviction):
    #: ``session`` is the tombstone (``is_deleted``), kept until its original expiry.
    REVOKE = "revoke"
    #: WAL ``DELETE`` that removes a session outright: the sweeper's purge of an expired
    #: session, or a create that reuses the id of an expired one. ``session`` is the
    #: record removed (``None`` if nothing was there any more).
    EXPIRE = "expire"
    #: No WAL record: a tombstone reached its original expiry and was dropped (recovery
    #: drops it by the same rule, so logging it would only cost a write). ``session`` is
    #: the tombstone dropped; ``record`` is ``None``.
    TOMBSTONE_END = "tombstone_end"
    #: No WAL record: a cluster node dropped its copy of a session of a shard it neither
    #: owns nor backs up any more (the shard moved on). ``session`` is the copy dropped;
    #: ``record`` is ``None``. Recovery brings such copies back until the first shard map
    #: is in force, which drops them again by the same rule.
    DROPPED = "dropped"
    #: WAL ``KEY_PUT``: an API key created or changed (disabled, rotated, used...);
    #: ``key`` is the new state.
    KEY_PUT = "key_put"


class Commit:
    """One committed change. Treat as immutable.

    ``position`` is the WAL position just after the record (``segment << 32 | offset``,
    the number snapshots and the state record): a consumer that has applied every commit
    up to ``P`` resumes by reading the WAL after ``P``. A ``TOMBSTONE_END`` has no record
    and carries the position of the last logged commit before it, so positions never go
    down and grow strictly from one logged commit to the next. ``record`` is the WAL
    record as logged.
    """

    __slots__ = ("entity_id", "key", "kind", "position", "record", "session")

    def __init__(
        self,
        position: int,
        kind: CommitKind,
        entity_id: str,
        record: WalRecord | None,
        session: Session | None = None,
        key: ApiKey | None = None,
    ) -> None:
        self.position = position
        self.kind = kind
        self.entity_id = entity_id
        self.record = record
        self.session = session
        self.key = key

    @property
    def logged(self) -> bool:
        """Whether the commit has a WAL record (every kind but ``TOMBSTONE_END``)."""
        return self.record is not None

    @property
    def replicated(self) -> bool:
        """Whether a replica wrote it from its owner's stream (not a change made here)."""
        record = self.record
        return (
            record is not None
            and record.event is not None
            and record.event.get("cause") == REPLICATED_CAUSE
        )

    def __repr__(self) -> str:
        return f"Commit({self.position:#x}, {self.kind.name}, {self.entity_id!r})"


CommitCallback = Callable[[Commit], None]


class SubscriptionLost(Exception):
    """An async subscription fell too far behind and was cut off.

    ``resume_after`` is the position of the last commit it received: the subscriber
    resyncs (snapshot, or the WAL after that position) and subscribes again.
    """

    def __init__(self, resume_after: int) -> None:
        super().__init__(f"commit subscription cut off after position {resume_after:#x}")
        self.resume_after = resume_after


class Subscription:
    """A bounded async view of the stream (see :meth:`CommitStream.open_subscription`)."""

    __slots__ = (
        "_buffer",
        "_closed",
        "_last",
        "_limit",
        "_lost",
        "_stream",
        "_wakeup",
        "start_position",
    )

    def __init__(self, stream: CommitStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._buffer: deque[Commit] = deque()
        #: Commits after this position are delivered (the stream's position when opened).
        self.start_position = stream.position
        self._last = stream.position
        self._lost = False
        self._closed = False
        self._wakeup: trio.Event | None = None

    @property
    def lost(self) -> bool:
        """Whether the subscription was cut off for falling behind."""
        return self._lost

    def _offer(self, commit: Commit) -> bool:
        """Take ``commit``; ``False`` when the buffer is full (the stream drops us)."""
        buffer = self._buffer
        if len(buffer) >= self._limit:
            self._lost = True
            self._wake()
            return False
        buffer.append(commit)
        self._last = commit.position
        if self._wakeup is not None:
            self._wake()
        return True

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    async def receive(self) -> list[Commit]:
        """Every commit waiting (at least one), oldest first.

        Raises :class:`SubscriptionLost` once a cut-off subscription has handed out
        everything it held, ``trio.EndOfChannel`` once a closed one has.
        """
        while not self._buffer:
            if self._lost:
                raise SubscriptionLost(self._last)
            if self._closed:
                raise trio.EndOfChannel
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        out = list(self._buffer)
        self._buffer.clear()
        return out

    def close(self) -> None:
        """Stop receiving; a task waiting in :meth:`receive` ends its iteration."""
        self._closed = True
        self._stream._drop(self)
        self._wake()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> list[Commit]:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class CommitStream:
    """Fan-out of committed changes to callbacks and bounded subscriptions."""

    __slots__ = ("_callbacks", "_subscriptions", "position")

    def __init__(self) -> None:
        #: Position of the last commit published (the recovered position before any).
        self.position = 0
        # Tuples, replaced on change: publishing iterates without copying, and a
        # subscriber added or dropped during a publish takes effect from the next one.
        self._callbacks: tuple[CommitCallback, ...] = ()
        self._subscriptions: tuple[Subscription, ...] = ()

    def subscribe(self, callback: CommitCallback) -> Callable[[], None]:
        """Call ``callback(commit)`` for every later commit; returns the unsubscribe."""
        self._callbacks = (*self._callbacks, callback)

        def unsubscribe() -> None:
            self._callbacks = tuple(c for c in self._callbacks if c is not callback)

        return unsubscribe

    def open_subscription(self, limit: int = DEFAULT_LIMIT) -> Subscription:
        """A subscription holding at most ``limit`` unread commits (see the module doc).

        It receives every commit published after :attr:`Subscription.start_position`,
        which is this stream's position now: a consumer that copies the state in the
        same synchronous step has everything up to that position.
        """
        if limit < 1:
            raise ValueError("a subscription must hold at least one commit")
        sub = Subscription(self, limit)
        self._subscriptions = (*self._subscriptions, sub)
        return sub

    def publish(self, commit: Commit) -> None:
        """Hand ``commit`` to every subscriber, synchronously; never waits."""
        self.position = commit.position
        for callback in self._callbacks:
            try:
                callback(commit)
            except Exception:
                log.exception("commit subscriber %r failed; unsubscribed", callback)
                self._callbacks = tuple(c for c in self._callbacks if c is not callback)
        for sub in self._subscriptions:
            if not sub._offer(commit):
                log.warning(
                    "commit subscription fell %d commits behind; cut off after %#x",
                    sub._limit,
                    sub._last,
                )
                self._drop(sub)

    def _drop(self, sub: Subscription) -> None:
        self._subscriptions = tuple(s for s in self._subscriptions if s is not sub)
