"""The WAL writer actor: group commit, fsync policy, rotation, fail-stop (01 §8, DESIGN §4).

Writers hand a record plus two callbacks to :meth:`WalWriter.append`, which only enqueues,
or many records at once to :meth:`WalWriter.append_many` (one mailbox message: the sweeper's
``DELETE`` records share group commits without an ``await`` per record).
The actor takes everything waiting in its channel (up to ``batch_count`` records /
``batch_size`` bytes), encodes and encrypts the batch on the event loop, writes it in a
worker thread, fsyncs once (``sync`` mode) and only then calls every record's ``on_commit``
in WAL order, synchronously. So a store shard's committed state always equals a prefix of
the WAL, and one fsync (~0.2 ms here) is shared by every writer of the batch. Those
callbacks also publish each record on the commit stream
(:mod:`tokmesh.actors.commit_stream`), which therefore carries what this writer committed,
in its order, and nothing of a failed batch.

Only the system calls (``write``, ``fdatasync``) run in the worker thread, and they release
the GIL. Encoding there as well made the thread and the busy event loop take the GIL from
each other (the interpreter hands it over only every few milliseconds), so ~0.15 ms of
encoding stretched a batch to 3-5 ms of wall time, all of it added to every record's
commit latency. On the loop the same work holds the loop for its ~0.15 ms and no more.

``batch`` mode writes each group to the OS at once and fsyncs every ``sync_interval``:
a killed process loses nothing, an OS crash loses at most the interval (RPO < 1 s).

A failed write or fsync fails the batch with ``TM-SYS-5001``, cuts what it left off the
segment (none of its records can come back after a restart), latches the writer failed
(later appends fail fast) and marks the node not ready: a restart is required, the fd is
never fsynced again (a retried fsync can report success for data the kernel dropped).

A node that starts on a full disk comes up the same way: recovered and serving reads,
writes refused with ``TM-SYS-5001``, ``/ready`` 503 until it is restarted with free space.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import trio

from tokmesh.domain.errors import E, TokMeshError
from tokmesh.storage.cipher import Cipher, out_of_space, probe_write
from tokmesh.storage.wal_codec import WalRecord, encode_record, make_position, split_position
from tokmesh.storage.wal_files import SegmentWriter, sync_handle_and_close

log = logging.getLogger("tokmesh.wal")

OnCommit = Callable[[int], None]
OnFail = Callable[[TokMeshError], None]


@attrs.frozen
class WalSettings:
    """The ``storage.wal.*`` settings the writer needs."""

    sync_mode: str = "batch"
    sync_interval: float = 1.0
    batch_count: int = 100
    batch_size: int = 1 << 20
    segment_max_bytes: int = 64 << 20
    segment_max_records: int = 100_000


@attrs.define
class Append:
    """Message: log ``record``; call ``on_commit(position)`` once durable, else ``on_fail``.

    Never changed once built (not frozen: that triples the cost of building one, per write).
    """

    record: WalRecord
    on_commit: OnCommit
    on_fail: OnFail


@attrs.define
class WalStats:
    """Counters exposed to metrics and ``/admin/v1/wal/status``."""

    records: int = 0
    bytes: int = 0
    batches: int = 0
    fsyncs: int = 0
    fsync_failures: int = 0


class WalWriter:
    """Owns the open segment; the only task that writes WAL files."""

    def __init__(
        self,
        wal_dir: Path,
        cipher: Cipher,
        settings: WalSettings,
        on_failure: Callable[[BaseException], None] | None = None,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.wal_dir = wal_dir
        self.cipher = cipher
        self.settings = settings
        self.stats = WalStats()
        self.failed: BaseException | None = None
        self._on_failure = on_failure
        self._on_batch = on_batch
        self._batch_listeners: list[Callable[[], None]] = []
        # A message is one record or a run of records submitted together.
        self._send, self._recv = trio.open_memory_channel[Append | Sequence[Append]](8192)
        self._segment: SegmentWriter | None = None
        self._io_lock = trio.Lock()
        self._dirty = False
        self._closing = False
        self._stopped = trio.Event()
        #: WAL position after the last record handed to on_commit.
        self.position = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self, min_position: int = 0) -> None:
        """Open (or create) the active segment per 01 §8.6; call after recovery.

        ``min_position`` is the recovered position: new records are never given a
        position at or below one a snapshot already covers.

        A full disk does not stop the node: if the segment cannot be opened or a probe
        file cannot be written in the WAL directory for lack of space, the writer starts
        latched failed (reads are served, writes answer ``TM-SYS-5001``, the node is not
        ready). Any other error propagates and the start fails.
        """
        s = self.settings
        self.position = min_position

        def open_and_probe() -> SegmentWriter:
            segment = SegmentWriter.open(
                self.wal_dir,
                min_position=min_position,
                max_segment_bytes=s.segment_max_bytes,
                max_segment_records=s.segment_max_records,
            )
            # Reopening the active segment writes nothing, so a full disk would only show
            # at the first write; find out now, while no caller is waiting.
            try:
                probe_write(self.wal_dir)
            except OSError:
                segment.close()
                raise
            return segment

        try:
            self._segment = await trio.to_thread.run_sync(open_and_probe)
        except OSError as exc:
            if not out_of_space(exc):
                raise
            self._latch(exc, "WAL cannot be written at start-up; serving reads only")
            return
        self.position = self._segment.position

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Actor loop: group commit until :meth:`close` drains the mailbox."""
        if self._segment is None and self.failed is None:
            await self.open()
        async with trio.open_nursery() as nursery:
            if self.settings.sync_mode == "batch":
                nursery.start_soon(self._sync_ticker)
            task_status.started()
            try:
                await self._loop()
            finally:
                nursery.cancel_scope.cancel()
        self._stopped.set()

    async def close(self) -> None:
        """Stop accepting, commit everything queued, fsync and seal the segment."""
        if self._closing:
            await self._stopped.wait()
            return
        self._closing = True
        await self._send.aclose()
        await self._stopped.wait()
        seg = self._segment
        if seg is not None and self.failed is None:
            async with self._io_lock:
                await trio.to_thread.run_sync(seg.seal_and_close)
            self._segment = None

    # -- API used by store shards --------------------------------------------------------

    async def append(self, record: WalRecord, on_commit: OnCommit, on_fail: OnFail) -> None:
        """Queue a record (backpressure when the mailbox is full); raises 5001 when failed."""
        await self._submit(Append(record, on_commit, on_fail))

    async def append_many(self, items: Sequence[Append]) -> None:
        """Queue several records as one mailbox message, in order.

        They are committed like separately appended records (each gets its own callback,
        split over as many group commits as ``batch_count`` asks), but the caller pays
        one mailbox send, not one per record: a bulk purge does not turn into hundreds
        of scheduler round trips. Raises 5001 when failed, like :meth:`append`.
        """
        if items:
            await self._submit(items)

    def try_append_many(self, items: Sequence[Append]) -> bool:
        """:meth:`append_many` without waiting: queue ``items`` as one mailbox message now,
        or not at all.

        Returns True once they are queued (their callbacks follow as for
        :meth:`append_many`), False when the mailbox is full: nothing was queued, and the
        caller may wait with :meth:`append_many` instead. An empty ``items`` queues nothing
        and returns True. Raises the same ``TokMeshError`` as :meth:`append` when the
        writer is failed (``TM-SYS-5001``) or shutting down.

        The WAL order stays the order of submission: a trio memory channel moves a blocked
        sender's message into its buffer as soon as a slot frees up, so the buffer stays
        full while any sender waits, and ``send_nowait`` succeeds only when no sender is
        waiting. These records never overtake records of an ``append`` still blocked.
        """
        if not items:
            return True
        self._check_accepting()
        try:
            self._send.send_nowait(items)
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise TokMeshError(E.SYS_UNAVAILABLE, "server is shutting down") from None
        return True

    def add_batch_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` once after each batch, synchronously on the writer's task.

        It runs after every ``on_commit`` of a committed batch, or every ``on_fail`` of a
        refused one, has returned: a front end whose callbacks only queue answers can write
        them out once per batch rather than once per record. An exception from ``fn`` is
        logged and does not stop the writer. Listeners run in the order they were added.
        """
        self._batch_listeners.append(fn)

    async def _submit(self, msg: Append | Sequence[Append]) -> None:
        self._check_accepting()
        try:
            await self._send.send(msg)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise TokMeshError(E.SYS_UNAVAILABLE, "server is shutting down") from None

    def _check_accepting(self) -> None:
        if self.failed is not None:
            raise TokMeshError(E.SYS_STORAGE, "write-ahead log failed; restart required")
        if self._closing:
            raise TokMeshError(E.SYS_UNAVAILABLE, "server is shutting down")

    async def sync_now(self) -> None:
        """Force an fsync of everything written so far (used by snapshots and shutdown)."""
        if self._segment is None or self.failed is not None:
            return
        try:
            await self._fsync_written()
        except OSError as exc:
            self._latch(exc, "WAL fsync failed")
            raise

    @property
    def current_segment_id(self) -> int:
        """Id of the active segment (never deleted by compaction)."""
        if self._segment is None:
            return split_position(self.position)[0]
        return self._segment.current_segment_id

    # -- internals -------------------------------------------------------------------------

    async def _loop(self) -> None:
        # Records of a multi-record message that did not fit in the previous batch; they
        # go first into the next one, so the WAL order is the order of submission.
        carry: list[Append] = []
        while True:
            if not carry:
                try:
                    carry = _records(await self._recv.receive())
                except trio.EndOfChannel:
                    return
            batch, carry = self._take_batch(carry)
            await self._commit_batch(batch)
            # Not kept while waiting for more: the records hold whole sessions.
            del batch

    def _take_batch(self, carry: list[Append]) -> tuple[list[Append], list[Append]]:
        """Up to ``batch_count`` records: ``carry`` first, then whatever is waiting."""
        limit = self.settings.batch_count
        batch, carry = carry[:limit], carry[limit:]
        while len(batch) < limit:
            try:
                records = _records(self._recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            room = limit - len(batch)
            batch.extend(records[:room])
            carry = records[room:]
        return batch, carry

    async def _commit_batch(self, batch: list[Append]) -> None:
        if self.failed is not None:
            err = TokMeshError(E.SYS_STORAGE, "write-ahead log failed; restart required")
            for item in batch:
                item.on_fail(err)
            self._notify_batch_listeners()
            return
        seg = self._segment
        assert seg is not None
        do_fsync = self.settings.sync_mode == "sync"
        started = trio.current_time()
        try:
            # On the loop, in one go: see the module doc for why not in the thread.
            cipher = self.cipher
            frames = [encode_record(item.record, cipher) for item in batch]
            data = b"".join(frames)
            n_frames = len(frames)

            def write() -> int:
                return seg.append(data, n_frames, sync=do_fsync)

            if do_fsync or seg.needs_rotation(len(data), n_frames):
                async with self._io_lock:
                    end = await trio.to_thread.run_sync(write)
            else:
                # Batch mode: a write to the page cache (tens of microseconds) is done
                # here. In a worker thread it cost the thread's wait for the GIL while
                # the loop is busy, up to the 5 ms switch interval, twice per batch, and
                # every record of the batch waited that long for its answer. The fsync
                # stays in a thread (the ticker), as do sync mode and rotations. No
                # other task runs between here and the commit callbacks.
                end = write()
        except Exception as exc:  # OSError, encoding failures: fail-stop
            self._latch(exc, "WAL write failed; batch refused")
            err = TokMeshError(E.SYS_STORAGE, "write-ahead log write failed")
            for item in batch:
                item.on_fail(err)
            self._notify_batch_listeners()
            return
        # The whole batch lands in one segment (rotation happens before writing), so each
        # record's end offset follows from the batch end.
        nbytes = len(data)
        seg_id, off = split_position(end)
        off -= nbytes
        ends = []
        for f in frames:
            off += len(f)
            ends.append(make_position(seg_id, off))
        st = self.stats
        st.records += len(batch)
        st.bytes += nbytes
        st.batches += 1
        if do_fsync:
            st.fsyncs += 1
        else:
            self._dirty = True
        if self._on_batch is not None:
            self._on_batch(len(batch), nbytes, trio.current_time() - started)
        for item, pos in zip(batch, ends, strict=True):
            self.position = pos
            item.on_commit(pos)
        self._notify_batch_listeners()

    def _notify_batch_listeners(self) -> None:
        for fn in self._batch_listeners:
            try:
                fn()
            except Exception:
                log.exception("WAL batch listener %r failed", fn)

    async def _sync_ticker(self) -> None:
        interval = self.settings.sync_interval
        while True:
            await trio.sleep(interval)
            if self._dirty and self.failed is None and self._segment is not None:
                try:
                    await self._fsync_written()
                except Exception as exc:
                    self._latch(exc, "WAL fsync failed")

    async def _fsync_written(self) -> None:
        """fdatasync what was written so far, without holding up later batches.

        The fdatasync runs in a thread on a duplicate of the segment's descriptor, so
        batches go on being written meanwhile (a rotation cannot close it under the
        fsync). The duplicate is taken under the I/O lock: no write or rotation is in a
        thread then. A failure latches the segment here, on the loop, never from the
        thread while the loop may be writing to that descriptor.
        """
        seg = self._segment
        assert seg is not None
        async with self._io_lock:
            self._dirty = False
            fd = seg.sync_handle()
        try:
            await trio.to_thread.run_sync(sync_handle_and_close, fd)
        except OSError as exc:
            seg.fail(exc)
            raise
        self.stats.fsyncs += 1

    def _latch(self, exc: BaseException, what: str) -> None:
        if self.failed is None:
            self.failed = exc
            self.stats.fsync_failures += 1
            log.error(
                "%s: %s; writes answer TM-SYS-5001 and the node is not ready until restarted",
                what,
                describe_failure(exc),
            )
            if self._on_failure is not None:
                self._on_failure(exc)


def _records(msg: Append | Sequence[Append]) -> list[Append]:
    return [msg] if isinstance(msg, Append) else list(msg)


def describe_failure(exc: BaseException) -> str:
    """Short words for a WAL failure, naming the OS's reason (``No space left on device``)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
