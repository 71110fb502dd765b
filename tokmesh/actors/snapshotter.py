"""The snapshotter actor: consistent view, off-loop encoding, retention, compaction.

A snapshot takes the committed state in one synchronous step (a shallow copy of the
record list: records are immutable) together with the WAL position it corresponds to;
encoding, encryption and file I/O run in a forked child process (a worker thread where
``fork`` is missing) while writes continue. One snapshot is in flight at a time;
concurrent triggers join it.

Snapshots bound the restart time. A graceful stop ends with one (:meth:`Snapshotter.final`),
so the next start loads it and replays nothing; after a crash, the replay is at most the
WAL written since the newest snapshot, which the size trigger keeps under
``threshold_bytes`` (plus what arrives between two checks and while a snapshot is written).
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs
import trio

from tokmesh.actors.forked_write import FORK_AVAILABLE, run_in_child
from tokmesh.actors.periodic import ActorErrors
from tokmesh.actors.session_store import SessionStore
from tokmesh.domain.clock import SYSTEM_CLOCK, Clock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.session import Session
from tokmesh.storage import snapshot_files, wal_files
from tokmesh.storage.cipher import Cipher, StorageFatalError
from tokmesh.storage.snapshot_codec import SnapshotCorrupt
from tokmesh.storage.snapshot_files import SnapshotInfo

log = logging.getLogger("tokmesh.snapshot")

#: 100 MiB of WAL (~135,000 records of ~770 bytes): what the prefetch worker decodes on
#: the second core (~15 µs a record) while a million-session snapshot loads (~2.4 s) on
#: a 2-core machine, so a crash costs the restart little more than applying them
#: (docs/performance.md). It is also the smallest value the configuration allows.
DEFAULT_THRESHOLD_BYTES = 100 << 20
#: After a snapshot triggered by the WAL size fails, the next size-triggered attempt
#: waits this long: each attempt encodes every session, and a disk that is full stays
#: full for a while.
FAILED_RETRY_SECONDS = 30.0


@attrs.frozen
class SnapshotSettings:
    """The ``storage.snapshot.*`` settings."""

    interval: float = 3600.0
    #: WAL bytes after the newest snapshot that call for a new one; the same as the
    #: ``storage.snapshot.threshold`` default (see docs/configuration.md for the choice).
    threshold_bytes: int = DEFAULT_THRESHOLD_BYTES
    retention_count: int = 5
    retention_days: int = 7
    #: Seconds between two looks at the WAL size. A look is a directory listing in a
    #: worker thread; at ~8 MB of WAL a second (10,000 creates/s) a second between looks
    #: lets the tail overshoot the threshold by ~8 MB, not the ~80 MB of a 10 s period.
    check_every: float = 1.0
    #: Whether a graceful stop ends with a snapshot (off: the next start replays the
    #: WAL, as after a crash; tests of the replay use that).
    on_shutdown: bool = True
    #: Longest a graceful stop spends on its snapshot (a million sessions take 1.5-3 s);
    #: past it the snapshot is abandoned and the next start replays the WAL instead.
    shutdown_budget: float = 10.0


@attrs.frozen
class CompactionResult:
    """What a snapshot-driven WAL compaction removed."""

    removed_segments: list[str]
    freed_bytes: int


def frozen_view(sessions: Iterable[Session]) -> list[Session]:
    """A list of the records, kept out of the cyclic GC's collections.

    While the snapshot thread encodes, every collection that includes this list walks
    all of its million references (~30-45 ms with the GIL held, measured as the longest
    event-loop stall of a snapshot). Young garbage is collected first, so the freeze only
    moves survivors and the view to the permanent generation, as the engine's periodic
    freeze does; the list is still freed by reference counting once the snapshot is done.
    """
    gc.collect(1)
    view = list(sessions)
    gc.freeze()
    return view


class Snapshotter:
    """Takes snapshots on schedule, on WAL growth and on demand."""

    def __init__(
        self,
        store: SessionStore,
        snapshot_dir: Path,
        wal_dir: Path,
        cipher: Cipher,
        node_id: str,
        settings: SnapshotSettings,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.snapshot_dir = snapshot_dir
        self.wal_dir = wal_dir
        self.cipher = cipher
        self.node_id = node_id
        self.settings = settings
        self.clock = clock
        self._inflight: trio.Event | None = None
        self._result: SnapshotInfo | BaseException | None = None
        self.last: SnapshotInfo | None = None
        self.last_compaction = CompactionResult([], 0)
        self.errors = ActorErrors("snapshotter")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Periodic trigger loop: interval or WAL size threshold, whichever first.

        A failed check or snapshot (out of descriptors, a disk error) is logged once per
        episode and counted (:class:`~tokmesh.actors.periodic.ActorErrors`); the next
        check tries again. A failed snapshot waits for the next interval, unless the WAL
        size still calls for one.
        """
        task_status.started()
        last = trio.current_time()
        not_before = last
        while True:
            await trio.sleep(self.settings.check_every)
            try:
                reason = await self._due(last, not_before)
                if reason:
                    try:
                        await self.take(reason)
                    except BaseException:
                        not_before = trio.current_time() + FAILED_RETRY_SECONDS
                        raise
                    finally:
                        last = trio.current_time()
            except (OSError, TokMeshError) as exc:
                self.errors.failed(exc)
            else:
                self.errors.succeeded()

    async def _due(self, last: float, not_before: float) -> str:
        """Why a snapshot is due (``""``: it is not): the interval has passed since
        ``last``, or the WAL after the newest snapshot outgrew the threshold (not again
        before ``not_before`` after a failure)."""
        now = trio.current_time()
        if now - last >= self.settings.interval:
            return "interval"
        if now < not_before:
            return ""
        size = await trio.to_thread.run_sync(self._wal_since_snapshot)
        return "wal_threshold" if size >= self.settings.threshold_bytes else ""

    def _wal_since_snapshot(self) -> int:
        """Bytes of WAL after the newest snapshot's position: what a restart would replay
        (blocking). The total size comes first: it is one listing, and when it is below
        the threshold so is every part of it."""
        total = wal_files.wal_size_bytes(self.wal_dir)
        if total < self.settings.threshold_bytes:
            return total
        return wal_files.wal_bytes_after(self.wal_dir, self._covered_position())

    def _covered_position(self) -> int:
        """The WAL position the newest snapshot on disk covers (0 without a readable one).

        Read from the file, not remembered: a restore writes snapshots too."""
        for path in snapshot_files.list_snapshots(self.snapshot_dir)[:1]:
            try:
                return snapshot_files.peek_snapshot_info(path).wal_last_offset
            except (SnapshotCorrupt, StorageFatalError):
                return 0
        return 0

    async def take(self, reason: str = "manual", *, compact: bool = True) -> SnapshotInfo:
        """Take a snapshot now (or join the one in flight) and, with ``compact``, apply
        retention and compact the WAL after it."""
        if self._inflight is not None:
            await self._inflight.wait()
            res = self._result
            if isinstance(res, SnapshotInfo):
                return res
            raise TokMeshError(E.SYS_BACKUP, "snapshot failed")
        self._inflight = trio.Event()
        try:
            info = await self._take(reason, compact)
            self._result = info
            return info
        except BaseException as exc:
            self._result = exc
            raise
        finally:
            self._inflight.set()
            self._inflight = None

    async def final(self) -> SnapshotInfo | None:
        """The snapshot of a graceful stop, taken once the shards and the WAL writer
        are closed (nothing changes any more, everything is fsynced), so that the next
        start loads it and replays nothing.

        Never raises but for a cancellation: the WAL still holds everything, so a failed
        snapshot costs the next start a longer replay, not data; it is logged. Skipped
        when the WAL failed (the state may be ahead of what the log made durable) or
        when the newest snapshot already covers the WAL. Bounded by
        ``shutdown_budget``; retention and compaction are left to the next scheduled
        snapshot, to keep the stop short.
        """
        wal = self.store.wal
        if not self.settings.on_shutdown:
            return None
        if wal.failed is not None:
            log.warning("no snapshot at shutdown: the write-ahead log failed")
            return None
        try:
            covered = await trio.to_thread.run_sync(self._covered_position)
            if covered == self.store.state.position:
                log.info("no snapshot at shutdown: the newest snapshot covers the whole WAL")
                return None
            with trio.move_on_after(self.settings.shutdown_budget) as scope:
                return await self.take("shutdown", compact=False)
        except (OSError, TokMeshError) as exc:
            log.error("snapshot at shutdown failed (the WAL still holds everything): %s", exc)
            return None
        if scope.cancelled_caught:
            log.error(
                "snapshot at shutdown abandoned after %.0f s (the WAL still holds everything)",
                self.settings.shutdown_budget,
            )
        return None

    async def _take(self, reason: str, compact: bool = True) -> SnapshotInfo:
        state = self.store.state
        # One synchronous step: records are immutable, so a list of references plus the
        # committed WAL position is a consistent view.
        sessions = frozen_view(state.sessions.values())
        keys = [k.to_record() for k in state.keys.values()]
        position = state.position
        now = self.clock.now_ms()
        # The snapshot claims everything up to ``position``: make the WAL durable that far
        # first (batch mode), so a crash cannot leave a snapshot ahead of a shorter log.
        await self.store.wal.sync_now()
        started = trio.current_time()
        try:
            write = functools.partial(
                snapshot_files.write_snapshot,
                self.snapshot_dir,
                sessions,
                keys,
                position,
                self.node_id,
                self.cipher,
                now,
            )
            if FORK_AVAILABLE:
                # Encoded in a child process: its Python does not take the loop's GIL.
                info = await run_in_child(write)
            else:
                info = await _write_abandonable(lambda abort: write(abort=abort))
        except TokMeshError:
            raise
        except Exception as exc:
            log.error("snapshot failed: %s", exc)
            raise TokMeshError(E.SYS_BACKUP, "snapshot creation failed") from exc
        log.info(
            "snapshot written",
            extra={
                "snapshot_id": info.id,
                "session_count": info.session_count,
                "reason": reason,
                "duration_ms": int((trio.current_time() - started) * 1000),
            },
        )
        self.last = info
        if compact:
            await self._retain_and_compact()
        return info

    async def _retain_and_compact(self) -> None:
        s = self.settings
        now = self.clock.now_ms()
        active = self.store.wal.current_segment_id

        def work() -> CompactionResult:
            snapshot_files.apply_retention(
                self.snapshot_dir, s.retention_count, s.retention_days, now
            )
            cut = snapshot_files.compaction_cut_segment(self.snapshot_dir)
            if cut is None:
                return CompactionResult([], 0)
            removed, freed = wal_files.compact(self.wal_dir, cut, active)
            return CompactionResult(list(removed), freed)

        self.last_compaction = await trio.to_thread.run_sync(work)


async def _write_abandonable(
    write: Callable[[threading.Event], SnapshotInfo],
) -> SnapshotInfo:
    """``write(abort)`` in a worker thread; a cancellation sets ``abort`` and waits (shielded)
    only until the thread notices, between two chunks, instead of until it finishes.

    A cancellation can also come before the thread has begun (or while it is being
    started): the thread then sees ``abort`` set and does not write at all; the lock
    makes "begun" and "told to stop" one decision, so nobody waits for a thread that
    never runs.
    """
    abort = threading.Event()
    finished = threading.Event()
    lock = threading.Lock()
    began = False

    def work() -> SnapshotInfo:
        nonlocal began
        with lock:
            if abort.is_set():
                raise TokMeshError(E.SYS_BACKUP, "snapshot abandoned before it began")
            began = True
        try:
            return write(abort)
        finally:
            finished.set()

    try:
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    finally:
        with lock:
            abort.set()
            wait = began and not finished.is_set()
        if wait:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(finished.wait)
