"""The snapshotter actor (01 §9): consistent view, off-loop encoding, retention, compaction.

A snapshot takes the committed state in one synchronous step (a shallow copy of the
record list: records are immutable) together with the WAL position it corresponds to;
encoding, encryption and file I/O run in a worker thread while writes continue. One
snapshot is in flight at a time; concurrent triggers join it.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterable
from pathlib import Path

import attrs
import trio

from tokmesh.actors.periodic import ActorErrors
from tokmesh.actors.session_store import SessionStore
from tokmesh.domain.clock import SYSTEM_CLOCK, Clock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.session import Session
from tokmesh.storage import snapshot_files, wal_files
from tokmesh.storage.cipher import Cipher
from tokmesh.storage.snapshot_files import SnapshotInfo

log = logging.getLogger("tokmesh.snapshot")


@attrs.frozen
class SnapshotSettings:
    """The ``storage.snapshot.*`` settings."""

    interval: float = 3600.0
    threshold_bytes: int = 1 << 30
    retention_count: int = 5
    retention_days: int = 7
    check_every: float = 10.0


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
        while True:
            await trio.sleep(self.settings.check_every)
            try:
                if await self._due(last):
                    try:
                        await self.take("interval")
                    finally:
                        last = trio.current_time()
            except (OSError, TokMeshError) as exc:
                self.errors.failed(exc)
            else:
                self.errors.succeeded()

    async def _due(self, last: float) -> bool:
        """Whether the interval has passed since ``last`` or the WAL outgrew the threshold."""
        if trio.current_time() - last >= self.settings.interval:
            return True
        size = await trio.to_thread.run_sync(wal_files.wal_size_bytes, self.wal_dir)
        return size >= self.settings.threshold_bytes

    async def take(self, reason: str = "manual") -> SnapshotInfo:
        """Take a snapshot now (or join the one in flight) and compact the WAL after it."""
        if self._inflight is not None:
            await self._inflight.wait()
            res = self._result
            if isinstance(res, SnapshotInfo):
                return res
            raise TokMeshError(E.SYS_BACKUP, "snapshot failed")
        self._inflight = trio.Event()
        try:
            info = await self._take(reason)
            self._result = info
            return info
        except BaseException as exc:
            self._result = exc
            raise
        finally:
            self._inflight.set()
            self._inflight = None

    async def _take(self, reason: str) -> SnapshotInfo:
        state = self.store.state
        # One synchronous step: records are immutable, so a list of references plus the
        # committed WAL position is a consistent view (01 §9.2).
        sessions = frozen_view(state.sessions.values())
        keys = [k.to_record() for k in state.keys.values()]
        position = state.position
        now = self.clock.now_ms()
        # The snapshot claims everything up to ``position``: make the WAL durable that far
        # first (batch mode), so a crash cannot leave a snapshot ahead of a shorter log.
        await self.store.wal.sync_now()
        started = trio.current_time()
        try:
            info = await trio.to_thread.run_sync(
                lambda: snapshot_files.write_snapshot(
                    self.snapshot_dir, sessions, keys, position, self.node_id, self.cipher, now
                )
            )
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
