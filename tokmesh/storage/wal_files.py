"""Blocking WAL segment files (01 §8.1, §8.3, §8.5–§8.8, §10.2).

Everything here does plain file I/O and is meant to run in a worker thread
(``trio.to_thread``); the WAL-writer actor owns the one :class:`SegmentWriter`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import attrs

from tokmesh.storage.cipher import (
    Cipher,
    DecryptError,
    StorageFatalError,
    ensure_dir,
    fsync_dir,
)
from tokmesh.storage.wal_codec import (
    CUT_MARK,
    FRAME_HEADER_LEN,
    MAGIC,
    MAGIC_LEN,
    TRAILER_LEN,
    FrameScan,
    StopReason,
    WalCorruptError,
    WalRecord,
    decode_frames,
    decode_record,
    make_position,
    payload_is_object,
    split_position,
)

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_SEGMENT_RECORDS = 100_000
MIN_SEGMENTS_KEPT = 3

_log = logging.getLogger("tokmesh.storage")
_SEGMENT_RE = re.compile(r"wal-(\d{8})\.log")
# Offsets are u32 inside a WalPosition; refuse to grow a segment past that.
_MAX_OFFSET = 0xFFFFFFFF
_fdatasync = getattr(os, "fdatasync", os.fsync)


def segment_name(segment_id: int) -> str:
    """File name of segment ``segment_id``: ``wal-%08d.log``."""
    return f"wal-{segment_id:08d}.log"


def list_segments(wal_dir: Path) -> list[tuple[int, Path]]:
    """``[(id, path)]`` of the segment files in ``wal_dir``, by id; other names ignored."""
    result: list[tuple[int, Path]] = []
    try:
        entries = list(os.scandir(wal_dir))
    except FileNotFoundError:
        return result
    for entry in entries:
        m = _SEGMENT_RE.fullmatch(entry.name)
        if m and entry.is_file(follow_symlinks=False):
            seg_id = int(m.group(1))
            if seg_id > 0:
                result.append((seg_id, Path(entry.path)))
    result.sort()
    return result


def wal_size_bytes(wal_dir: Path) -> int:
    """Total size of all segment files (the snapshot size trigger of 01 §9.1)."""
    total = 0
    for _, path in list_segments(wal_dir):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue
    return total


def wal_bytes_after(wal_dir: Path, position: int) -> int:
    """Bytes of segment files from ``position`` on: what a replay from there reads."""
    start_seg, start_off = split_position(position)
    total = 0
    for seg_id, path in list_segments(wal_dir):
        if seg_id < start_seg:
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        total += max(size - start_off, 0) if seg_id == start_seg else size
    return total


def is_sealed(buf: bytes) -> bool:
    """A segment is sealed iff its last 32 bytes equal the SHA-256 of the rest (01 §8.1)."""
    if len(buf) < MAGIC_LEN + TRAILER_LEN:
        return False
    return hashlib.sha256(memoryview(buf)[:-TRAILER_LEN]).digest() == buf[-TRAILER_LEN:]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@attrs.frozen(slots=True)
class WriterRecovery:
    """What :meth:`SegmentWriter.open` found and did at start-up."""

    segment_id: int
    #: Bytes cut off an unsealed segment's torn/corrupt tail (0 if none).
    truncated_bytes: int = 0
    #: Why the tail was cut (empty when nothing was).
    reason: str = ""
    #: True when a new segment was started (fresh dir, sealed newest, forced rotation).
    new_segment: bool = False


class SegmentWriter:
    """Appends frames to the active segment, rotating and sealing (01 §8.5, §8.6).

    Not thread-safe: one owner (the WAL-writer actor) calls it, possibly from different
    worker threads but never concurrently. Any ``OSError`` from write/fsync propagates and
    latches the writer: every later call raises :class:`StorageFatalError` (an fsync is
    never retried on the same fd to make data durable). A batch that fails in
    :meth:`append` is first cut off the segment, so none of its records is ever replayed.
    """

    def __init__(
        self,
        wal_dir: Path,
        *,
        max_segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_segment_records: int = DEFAULT_SEGMENT_RECORDS,
    ) -> None:
        """Use :meth:`open`; the constructor only records the limits."""
        if max_segment_bytes <= MAGIC_LEN or max_segment_bytes > _MAX_OFFSET - TRAILER_LEN:
            raise ValueError("max_segment_bytes out of range")
        if max_segment_records < 1:
            raise ValueError("max_segment_records must be >= 1")
        self.wal_dir = Path(wal_dir)
        self.max_segment_bytes = max_segment_bytes
        self.max_segment_records = max_segment_records
        self._fd: int | None = None
        self._segment_id = 0
        self._size = 0
        self._records = 0
        self._hash = hashlib.sha256()
        self._failed: BaseException | None = None
        self.recovery = WriterRecovery(0)

    # ---- start-up ---------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        wal_dir: Path,
        *,
        min_position: int = 0,
        max_segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        max_segment_records: int = DEFAULT_SEGMENT_RECORDS,
    ) -> SegmentWriter:
        """Open the WAL for appending (01 §8.6).

        No segments → create ``wal-00000001.log``; newest sealed → start ``newest+1``;
        newest unsealed (crash) → truncate it at its first incomplete/invalid frame (logged
        with the bytes dropped) and append to it. Never appends after garbage.

        ``min_position`` is the recovered state's WAL position (e.g. a snapshot's
        ``wal_last_offset``). If the log ends before it - the unfsynced tail of a batch-mode
        WAL was lost while a snapshot already covered it - the writer seals and moves to a
        later segment, so new records never get positions at or below one a snapshot
        already claims.
        """
        self = cls(
            wal_dir,
            max_segment_bytes=max_segment_bytes,
            max_segment_records=max_segment_records,
        )
        ensure_dir(self.wal_dir)
        segments = list_segments(self.wal_dir)
        min_seg, _ = split_position(min_position)
        if not segments:
            self._create_segment(min_seg + 1 if min_position else 1)
            self.recovery = WriterRecovery(self._segment_id, new_segment=True)
        else:
            newest_id, newest_path = segments[-1]
            self._reopen_or_rotate(newest_id, newest_path)
        if self.position < min_position:
            _log.warning(
                "WAL ends at segment %d offset %d, before the recovered position "
                "(segment %d offset %d); starting a new segment",
                *split_position(self.position),
                *split_position(min_position),
            )
            next_id = max(self._segment_id, min_seg) + 1
            self._seal()
            self._create_segment(next_id)
            self.recovery = attrs.evolve(self.recovery, segment_id=next_id, new_segment=True)
        return self

    def _reopen_or_rotate(self, seg_id: int, path: Path) -> None:
        buf = path.read_bytes()
        if is_sealed(buf):
            self._create_segment(seg_id + 1)
            self.recovery = WriterRecovery(self._segment_id, new_segment=True)
            return
        if len(buf) < MAGIC_LEN and MAGIC.startswith(buf):
            # Crash while creating the segment: nothing was ever logged in it.
            self._open_existing(path, seg_id, b"", rewrite_magic=True)
            self.recovery = WriterRecovery(seg_id, len(buf), "incomplete magic" if buf else "")
            return
        if buf[:MAGIC_LEN] != MAGIC:
            # Not ours to repair (and readers skip it): leave it and start a new segment.
            _log.warning(
                "WAL segment %s has a bad magic; leaving it, starting a new one", path.name
            )
            self._create_segment(seg_id + 1)
            self.recovery = WriterRecovery(self._segment_id, 0, "bad magic", new_segment=True)
            return
        scan = decode_frames(buf, MAGIC_LEN)
        # A CRC-valid frame that is not a JSON object would make readers drop everything
        # after it, including what we are about to append: cut there as well.
        for index, (frame_end, _, payload) in enumerate(scan.frames):
            if not payload_is_object(payload):
                start = frame_end - len(payload) - FRAME_HEADER_LEN
                scan = FrameScan(scan.frames[:index], StopReason.CORRUPT, start, "bad JSON")
                break
        dropped = len(buf) - scan.stop_offset
        if dropped:
            _log.warning(
                "WAL segment %s: %s at offset %d; truncating %d bytes",
                path.name,
                scan.detail,
                scan.stop_offset,
                dropped,
            )
        self._open_existing(path, seg_id, buf[: scan.stop_offset], records=len(scan.frames))
        self.recovery = WriterRecovery(seg_id, dropped, scan.detail if dropped else "")

    def _open_existing(
        self,
        path: Path,
        seg_id: int,
        valid: bytes,
        *,
        records: int = 0,
        rewrite_magic: bool = False,
    ) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o600)
            if rewrite_magic:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                _write_all(fd, MAGIC)
                valid = MAGIC
            else:
                os.ftruncate(fd, len(valid))
                os.lseek(fd, len(valid), os.SEEK_SET)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._segment_id = seg_id
        self._size = len(valid)
        self._records = records
        self._hash = hashlib.sha256(valid)

    def _create_segment(self, seg_id: int) -> None:
        path = self.wal_dir / segment_name(seg_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            _write_all(fd, MAGIC)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        fsync_dir(self.wal_dir)
        self._fd = fd
        self._segment_id = seg_id
        self._size = MAGIC_LEN
        self._records = 0
        self._hash = hashlib.sha256(MAGIC)

    def _seal(self) -> None:
        """Write the trailer, fsync and close the active segment."""
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        try:
            _write_all(fd, self._hash.digest())
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---- state ------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """WAL position just after the last byte written (trailer excluded)."""
        return make_position(self._segment_id, self._size)

    @property
    def current_segment_id(self) -> int:
        """Id of the active segment."""
        return self._segment_id

    @property
    def segment_size(self) -> int:
        """Bytes in the active segment (magic included)."""
        return self._size

    @property
    def segment_records(self) -> int:
        """Records in the active segment."""
        return self._records

    @property
    def closed(self) -> bool:
        """True after :meth:`seal_and_close` / :meth:`close` or a latched failure."""
        return self._fd is None

    def _check(self) -> int:
        if self._failed is not None:
            raise StorageFatalError("WAL writer failed earlier; restart required")
        if self._fd is None:
            raise StorageFatalError("WAL writer is closed")
        return self._fd

    def _latch(self, exc: BaseException) -> None:
        self._failed = exc
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    # ---- writing ----------------------------------------------------------------------

    def append(self, frames: bytes, n_records: int, *, sync: bool = False) -> int:
        """Write encoded ``frames`` (``n_records`` records) and return the WAL position after
        them; with ``sync`` also make them durable (fdatasync).

        Rotates first when the batch would push the segment past its size or record limit
        (an empty segment always takes the batch, however large). Without ``sync`` the data
        is only handed to the OS; :meth:`fsync` makes it durable later.

        If the write or the fdatasync fails, the batch is cut off (see :meth:`_cut_off`),
        the writer is latched failed and the ``OSError`` propagates: the caller answers the
        batch's records with an error, and they must never come back after a restart.
        """
        self._check()
        if self.needs_rotation(len(frames), n_records):
            self._rotate()
        fd = self._check()
        if self._size + len(frames) > _MAX_OFFSET - TRAILER_LEN:
            raise ValueError("WAL batch does not fit in one segment")
        start = self._size
        try:
            _write_all(fd, frames)
            if sync:
                _fdatasync(fd)
        except OSError as exc:
            self._cut_off(fd, start, exc)
            self._latch(exc)
            raise
        self._hash.update(frames)
        self._size += len(frames)
        self._records += n_records
        return make_position(self._segment_id, self._size)

    def _cut_off(self, fd: int, offset: int, cause: OSError) -> None:
        """Remove what a failed batch left in the segment after ``offset`` (where it began).

        A short write (the disk filled up half-way) leaves the batch's first frames complete
        in the file, and an fdatasync error leaves all of them; a replay would bring back
        records whose callers were told they failed. Truncating back to ``offset`` removes
        them. Should that fail too, the batch's first frame header is overwritten in place
        with the cut mark, at which every reader stops (rewriting bytes that are already in
        the file needs no free space). If both fail, an operator must truncate the file by
        hand before the next start, and the CRITICAL line says exactly how.

        The fsync after the truncation follows a failed write or fdatasync on the same
        descriptor. That is safe here: it is asked to make the new size durable, not the
        data a failed fsync may have dropped, and that data is exactly what is cut off.
        Batches acknowledged before ``offset`` are not touched.
        """
        name = segment_name(self._segment_id)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        except OSError as exc:
            truncate_error = exc
        else:
            _log.error(
                "WAL write failed (%s); the failed batch was cut off: %s truncated back to "
                "offset %d",
                cause,
                name,
                offset,
            )
            return
        try:
            if os.fstat(fd).st_size >= offset + len(CUT_MARK):
                os.pwrite(fd, CUT_MARK, offset)
                os.fsync(fd)
            # else no complete frame of the batch is in the file: a torn header or
            # nothing at all, which every reader already drops.
        except OSError as exc:
            _log.critical(
                "WAL write failed (%s) and the failed batch could not be cut off "
                "(truncate: %s; cut mark: %s). Before restarting, truncate %s to %d "
                "bytes (truncate -s %d %s), or records refused to their callers will "
                "be replayed",
                cause,
                truncate_error,
                exc,
                self.wal_dir / name,
                offset,
                offset,
                self.wal_dir / name,
            )
            return
        _log.error(
            "WAL write failed (%s); truncating %s failed (%s), so the failed batch was "
            "marked cut at offset %d instead: no reader goes past it",
            cause,
            name,
            truncate_error,
            offset,
        )

    def _rotate(self) -> None:
        next_id = self._segment_id + 1
        try:
            self._seal()
            self._create_segment(next_id)
        except OSError as exc:
            self._latch(exc)
            raise
        _log.info("WAL rotated to %s", segment_name(next_id))

    def flush(self) -> None:
        """No-op: :meth:`append` writes straight to the OS (no user-space buffer)."""
        self._check()

    def needs_rotation(self, nbytes: int, n_records: int) -> bool:
        """Whether :meth:`append` of ``nbytes`` / ``n_records`` would rotate first (which
        fsyncs, seals and creates files: the caller may want that off its event loop)."""
        return self._records > 0 and (
            self._size + nbytes > self.max_segment_bytes
            or self._records + n_records > self.max_segment_records
        )

    def sync_handle(self) -> int:
        """A duplicate of the active segment's descriptor, for an fdatasync that runs in
        another thread while later batches are written (:func:`sync_handle_and_close`).

        The duplicate keeps the file open across a rotation, so the fdatasync never
        meets a closed or reused descriptor; the caller closes it.
        """
        return os.dup(self._check())

    def fail(self, exc: BaseException) -> None:
        """Latch the writer failed from outside (an fdatasync through a
        :meth:`sync_handle` failed): every later call raises, the fd is closed."""
        if self._failed is None:
            self._latch(exc)

    def fsync(self) -> None:
        """Make everything appended so far durable (fdatasync where available)."""
        fd = self._check()
        try:
            _fdatasync(fd)
        except OSError as exc:
            self._latch(exc)
            raise

    def seal_and_close(self) -> None:
        """Clean shutdown: write the trailer, fsync, close. Idempotent."""
        if self._failed is not None or self._fd is None:
            return
        try:
            self._seal()
        except OSError as exc:
            self._latch(exc)
            raise

    def close(self) -> None:
        """Close without sealing (the segment stays active for the next start). Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


# ---- reading --------------------------------------------------------------------------


@attrs.define
class WalReadStats:
    """Counters and warnings collected by :func:`read_wal`."""

    segments_read: int = 0
    records: int = 0
    segments_skipped: int = 0
    bytes_dropped: int = 0
    warnings: list[str] = attrs.Factory(list)
    #: keep warnings without logging them (a worker process hands them to its parent)
    quiet: bool = False

    def warn(self, message: str) -> None:
        """Log ``message`` as a WARN and keep it."""
        if not self.quiet:
            _log.warning("%s", message)
        self.warnings.append(message)


def read_wal(
    wal_dir: Path,
    from_position: int,
    cipher: Cipher,
    stats: WalReadStats | None = None,
    before_segment: int | None = None,
) -> Iterator[tuple[int, WalRecord]]:
    """Yield ``(position_after, record)`` from ``from_position`` on (01 §8.3, §10.2),
    up to the end of the log or, with ``before_segment``, of the segment before that one
    (recovery hands the rest to a worker process).

    Seeking: the segment whose id equals the position's starts at its byte offset (no
    magic check when it is > 0); later segments from byte 0. Corruption rules: a bad magic
    skips the segment; a torn/impossible/CRC-failing/bad-type/bad-JSON frame drops the
    rest of that segment with a WARN (segment + offset) and reading goes on with the next
    segment; so does the cut mark a failed write leaves when it cannot be truncated away.
    An AEAD failure on a CRC-valid frame raises :class:`StorageFatalError`.
    """
    if stats is None:
        stats = WalReadStats()
    start_seg, start_off = split_position(from_position)
    segments = [(sid, p) for sid, p in list_segments(wal_dir) if sid >= start_seg]
    newest = segments[-1][0] if segments else 0
    if before_segment is not None:
        segments = [(sid, p) for sid, p in segments if sid < before_segment]
    # The first segment we need is the one holding from_position (segment 1 for a full
    # replay); anything missing from there on is a hole in the history: say so loudly.
    expected = max(start_seg, 1)
    for seg_id, path in segments:
        if seg_id != expected:
            stats.warn(
                f"WAL segments {segment_name(expected)} to {segment_name(seg_id - 1)} are "
                "missing; records in them cannot be replayed"
            )
        expected = seg_id + 1
        try:
            buf = path.read_bytes()
        except FileNotFoundError:  # compacted while we were reading
            continue
        offset = start_off if seg_id == start_seg else 0
        if offset == 0:
            if buf[:MAGIC_LEN] != MAGIC:
                stats.segments_skipped += 1
                stats.bytes_dropped += len(buf)
                stats.warn(f"WAL segment {path.name}: bad magic, segment skipped")
                continue
            offset = MAGIC_LEN
        stats.segments_read += 1
        sealed = is_sealed(buf)
        end = len(buf) - TRAILER_LEN if sealed else len(buf)
        if offset > end:
            stats.warn(
                f"WAL segment {path.name}: start offset {offset} beyond its end {end}; "
                "nothing to replay in it"
            )
            continue
        scan = decode_frames(buf, offset, end)
        for frame_end, rtype, payload in scan.frames:
            frame_start = frame_end - len(payload) - FRAME_HEADER_LEN
            try:
                rec = decode_record(rtype, payload, cipher)
            except WalCorruptError as exc:
                stats.bytes_dropped += len(buf) - frame_start
                stats.warn(
                    f"WAL segment {path.name}: {exc} at offset {frame_start}; "
                    "rest of segment dropped"
                )
                break
            except DecryptError as exc:
                raise StorageFatalError(
                    f"WAL segment {path.name} offset {frame_start}: cannot decrypt record: {exc}",
                    {"segment": path.name, "offset": frame_start},
                ) from None
            stats.records += 1
            yield make_position(seg_id, frame_end), rec
        else:
            if scan.stop is not StopReason.END:
                stats.bytes_dropped += len(buf) - scan.stop_offset
                # A torn tail of the newest unsealed segment is the normal crash case, but
                # it still loses that record: always say so.
                if scan.stop is StopReason.CUT:
                    stats.warn(
                        f"WAL segment {path.name}: a write that failed was cut off at offset "
                        f"{scan.stop_offset}; its {len(buf) - scan.stop_offset} bytes "
                        "(never acknowledged) are not replayed"
                    )
                else:
                    kind = "torn tail" if scan.stop is StopReason.TORN else "corruption"
                    where = "active segment" if seg_id == newest and not sealed else "segment"
                    stats.warn(
                        f"WAL {where} {path.name}: {kind} ({scan.detail}) at offset "
                        f"{scan.stop_offset}; rest of segment dropped"
                    )
            elif not sealed and seg_id != newest:
                # Only the active segment has no trailer: the writer seals a segment before
                # it starts the next one. An older segment without one was cut short, and
                # whatever followed its last whole record is gone.
                stats.warn(
                    f"WAL segment {path.name} ends at offset {scan.stop_offset} without its "
                    "trailer although later segments exist: records after that offset are lost"
                )


# ---- compaction -----------------------------------------------------------------------


def compact(
    wal_dir: Path,
    cut_segment_id: int,
    active_segment_id: int,
    min_keep: int = MIN_SEGMENTS_KEPT,
) -> tuple[list[str], int]:
    """Delete segments whose id is below ``cut_segment_id`` (01 §8.8).

    Never deletes the active segment nor anything at/after it, and always leaves at least
    ``min_keep`` segment files (the oldest candidates go first). Returns the removed file
    names and the bytes freed.
    """
    segments = list_segments(wal_dir)
    budget = len(segments) - min_keep
    removed: list[str] = []
    freed = 0
    for seg_id, path in segments:
        if budget <= 0 or seg_id >= cut_segment_id or seg_id >= active_segment_id:
            break
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path.name)
        freed += size
        budget -= 1
    if removed:
        fsync_dir(Path(wal_dir))
        _log.info("WAL compaction removed %d segments (%d bytes)", len(removed), freed)
    return removed, freed


class WalGap(Exception):
    """What follows a position cannot be read in full from the retained WAL: its segment
    was removed (after a snapshot), it is not a record boundary of this node, or a
    segment on the way is damaged. The message says which."""


def frames_after(wal_dir: Path, after: int, upto: int) -> Iterator[list[tuple[int, int, bytes]]]:
    """The frames ``(position, record type, payload)`` logged after ``after`` up to
    ``upto``, one list per segment, payloads undecrypted.

    Blocking file I/O (run each step in a worker thread). Raises :class:`WalGap` rather
    than pass over anything it cannot read: a reader resuming from ``after`` either gets
    every record since, or knows it must start over from a full copy.
    """
    if after > upto:
        raise WalGap("the position is ahead of this node's WAL")
    if after == upto:
        return
    first_seg, first_off = split_position(after)
    last_seg, _ = split_position(upto)
    first_seg = max(first_seg, 1)
    present = dict(list_segments(wal_dir))
    for seg_id in range(first_seg, last_seg + 1):
        path = present.get(seg_id)
        if path is None:
            raise WalGap("the records after the position are no longer in the WAL")
        try:
            buf = path.read_bytes()
        except FileNotFoundError:
            raise WalGap("the WAL segment of the position was just removed") from None
        if buf[:MAGIC_LEN] != MAGIC:
            raise WalGap(f"WAL segment {path.name} is damaged")
        end = len(buf) - TRAILER_LEN if is_sealed(buf) else len(buf)
        start = MAGIC_LEN
        if seg_id == first_seg and first_off > MAGIC_LEN:
            # The position must be the end of a record: scan the frames before it (no
            # decryption) and check one ends exactly there.
            head = decode_frames(buf, MAGIC_LEN, first_off)
            if head.stop is not StopReason.END or head.stop_offset != first_off:
                raise WalGap("the position is not a record boundary of this node's WAL")
            start = first_off
        scan = decode_frames(buf, start, end)
        out: list[tuple[int, int, bytes]] = []
        reached = False
        for frame_end, rtype, payload in scan.frames:
            position = make_position(seg_id, frame_end)
            if position > upto:
                reached = True
                break
            out.append((position, rtype, payload))
        if not reached and seg_id == last_seg and scan.stop is not StopReason.END:
            # Damage before the live position: records the reader needs are unreadable.
            if make_position(seg_id, scan.stop_offset) < upto:
                raise WalGap(f"WAL segment {path.name} is damaged")
        elif not reached and seg_id < last_seg and scan.stop is not StopReason.END:
            raise WalGap(f"WAL segment {path.name} is damaged")
        yield out


def sync_handle_and_close(fd: int) -> None:
    """fdatasync a :meth:`SegmentWriter.sync_handle` and close it (in a worker thread)."""
    try:
        _fdatasync(fd)
    finally:
        os.close(fd)
