"""The event hub: session events of the commit stream, fanned out to watchers.

One task reads one bounded subscription of the node's
:class:`~tokmesh.actors.commit_stream.CommitStream`, turns each logged commit into a
:class:`~tokmesh.actors.event_codec.SessionEvent` (built and rendered as a WebSocket frame
once, however many watchers want it) and offers it to every :class:`Watcher` whose
filters match. Publishing never waits for a watcher: each holds a bounded buffer, and one
that is full is ended with ``4429`` (it resumes from its cursor). The WAL is read only to
replay the past for a watcher that brings a cursor (:func:`read_events`); live events
always come from the commit stream.

Exactly once across the switch from replay to live: a watcher is registered first, in one
synchronous step that notes :attr:`EventHub.position` (the last commit the hub has handed
out); it then receives every later commit live, while the replay reads the WAL after the
client's cursor up to and including that position. Every commit up to it is in the WAL
file already (the commit stream publishes only what the WAL writer has written).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import trio

from tokmesh.actors.commit_stream import CommitStream, Subscription, SubscriptionLost
from tokmesh.actors.event_codec import (
    CLOSE_CURSOR_EXPIRED,
    CLOSE_GOING_AWAY,
    CLOSE_TOO_SLOW,
    TOUCHED,
    Lookup,
    SessionEvent,
    event_of,
    text_frame,
)
from tokmesh.storage.cipher import Cipher
from tokmesh.storage.wal_codec import (
    WalCorruptError,
    decode_record,
)
from tokmesh.storage.wal_files import WalGap, frames_after

log = logging.getLogger("tokmesh.events")

#: Events a watcher may hold unsent before it is ended with 4429. About a second of a
#: busy node's writes; a client that falls further behind reconnects with its cursor.
LIVE_LIMIT = 4096
#: The same bound while the watcher's replay of the WAL runs: live events wait meanwhile,
#: and a long replay under a write load must not end the watcher it is catching up.
REPLAY_LIMIT = 262_144


class WatchEnded(Exception):
    """The hub ended a watcher: ``code`` and ``reason`` are its WebSocket close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class CursorExpired(Exception):
    """The events after a cursor are no longer (or were never) in this node's WAL."""


class Watcher:
    """One subscriber of the hub: its filters and its bounded buffer of frames."""

    __slots__ = (
        "_buffer",
        "_ended",
        "_wakeup",
        "limit",
        "start_position",
        "types",
        "user_id",
    )

    def __init__(self, start_position: int, user_id: str | None, types: frozenset[str]) -> None:
        #: Live events come after this position; the replay goes up to it.
        self.start_position = start_position
        self.user_id = user_id
        self.types = types
        self.limit = REPLAY_LIMIT
        self._buffer: deque[tuple[int, bytes]] = deque()
        self._ended: WatchEnded | None = None
        self._wakeup: trio.Event | None = None

    def wants(self, event: SessionEvent) -> bool:
        """Whether ``event`` passes this watcher's filters."""
        if event.type not in self.types:
            return False
        return self.user_id is None or event.user_id == self.user_id

    @property
    def ended(self) -> bool:
        """Whether the hub has ended this watcher."""
        return self._ended is not None

    def offer(self, position: int, frame: bytes) -> None:
        """Buffer one frame; end the watcher when its buffer is full. Never waits."""
        if self._ended is not None:
            return
        if len(self._buffer) >= self.limit:
            self.end(CLOSE_TOO_SLOW, "too slow: resume from your last cursor")
            return
        self._buffer.append((position, frame))
        self._wake()

    def end(self, code: int, reason: str) -> None:
        """End the watcher: what it holds is dropped, its reader gets :class:`WatchEnded`."""
        if self._ended is None:
            self._ended = WatchEnded(code, reason)
            self._buffer.clear()
            self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    async def take(self, most: int = 1024) -> list[tuple[int, bytes]]:
        """Up to ``most`` buffered ``(position, frame)`` pairs (at least one), oldest first.

        Raises :class:`WatchEnded` once the hub has ended the watcher.
        """
        while True:
            if self._ended is not None:
                raise self._ended
            buffer = self._buffer
            if buffer:
                if len(buffer) <= most:
                    out = list(buffer)
                    buffer.clear()
                    return out
                return [buffer.popleft() for _ in range(most)]
            self._wakeup = trio.Event()
            await self._wakeup.wait()


class EventHub:
    """Fans the session events of the commit stream out to :class:`Watcher` objects."""

    def __init__(
        self,
        commits: CommitStream,
        wal_dir: Path,
        include_touch: bool,
        lookup: Lookup | None = None,
        live_limit: int = LIVE_LIMIT,
    ) -> None:
        self.commits = commits
        #: Events a watcher may hold unsent once its replay is over (see LIVE_LIMIT).
        self.live_limit = live_limit
        self.wal_dir = wal_dir
        self.include_touch = include_touch
        #: Names the session of an old DELETE record without an event note (replay only).
        self.lookup = lookup
        #: Position of the last commit handed out to the watchers.
        self.position = commits.position
        self.cipher: Cipher | None = None
        self._watchers: tuple[Watcher, ...] = ()
        self._running = False
        self._closing = False

    @property
    def watchers(self) -> int:
        """How many watchers are registered."""
        return len(self._watchers)

    @property
    def ready(self) -> bool:
        """Whether watchers can be served (the hub runs and is not shutting down)."""
        return self._running and not self._closing and self.cipher is not None

    async def run(
        self, cipher: Cipher, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Read the commit stream until cancelled (``cipher`` reads the WAL for replays)."""
        self.cipher = cipher
        sub = self.commits.open_subscription()
        self.position = sub.start_position
        self._running = True
        task_status.started()
        try:
            while True:
                try:
                    await self._pump(sub)
                except SubscriptionLost:
                    # The hub fell behind the writers (it never should: it only encodes).
                    # Every watcher resumes from its cursor, which replays the WAL.
                    log.warning("event hub fell behind the commit stream; watchers ended")
                    self.end_all(CLOSE_TOO_SLOW, "server fell behind: resume from your cursor")
                    sub = self.commits.open_subscription()
                    self.position = sub.start_position
        finally:
            self._running = False
            sub.close()

    async def _pump(self, sub: Subscription) -> None:
        include_touch = self.include_touch
        async for batch in sub:
            watchers = self._watchers
            for commit in batch:
                self.position = commit.position
                record = commit.record
                if record is None or not watchers:
                    continue
                event = event_of(commit.position, record)
                if event is None or (event.type is TOUCHED and not include_touch):
                    continue
                frame: bytes | None = None
                for watcher in watchers:
                    if watcher.wants(event):
                        if frame is None:
                            frame = text_frame(event.to_json())
                        watcher.offer(commit.position, frame)

    def watch(self, user_id: str | None, types: frozenset[str]) -> Watcher:
        """Register a watcher: it receives every matching event after :attr:`position`."""
        watcher = Watcher(self.position, user_id, types)
        self._watchers = (*self._watchers, watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        """Stop feeding ``watcher``."""
        self._watchers = tuple(w for w in self._watchers if w is not watcher)

    def end_all(self, code: int, reason: str) -> None:
        """End every watcher with ``code``/``reason`` (shutdown, restore, lag)."""
        for watcher in self._watchers:
            watcher.end(code, reason)

    def shutdown(self) -> None:
        """The node is stopping: end every watcher with 1001 and accept no new one."""
        self._closing = True
        self.end_all(CLOSE_GOING_AWAY, "server shutting down: resume from your cursor")

    def state_replaced(self) -> None:
        """A backup was restored: the WAL history no longer leads to the state."""
        self.end_all(CLOSE_CURSOR_EXPIRED, "state restored from a backup: resync")


def read_events(
    wal_dir: Path,
    cipher: Cipher,
    after: int,
    upto: int,
    wants: Callable[[SessionEvent], bool],
    lookup: Lookup | None = None,
) -> Iterator[list[SessionEvent]]:
    """The events of the WAL after position ``after`` up to ``upto``, one list per segment.

    Blocking file I/O (run each step in a worker thread). Raises :class:`CursorExpired`
    when ``after`` is not the end of a record in the retained WAL (its segment was removed
    after a snapshot, or it never was a record boundary of this node), when a segment on
    the way is missing or damaged, or when ``after`` is beyond ``upto``: a gap is never
    passed over in silence. ``wants`` filters the events (touch events included only if
    the caller's filter says so).
    """
    try:
        for frames in frames_after(wal_dir, after, upto):
            out: list[SessionEvent] = []
            for position, rtype, payload in frames:
                try:
                    record = decode_record(rtype, payload, cipher, notes=True)
                except WalCorruptError:
                    raise CursorExpired("a WAL segment after the cursor is damaged") from None
                event = event_of(position, record, lookup)
                if event is not None and wants(event):
                    out.append(event)
            yield out
    except WalGap as gap:
        raise CursorExpired(str(gap)) from None
