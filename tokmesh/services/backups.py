"""Backups (03 §4.3, §4.7): the ``.bak`` format, the snapshot catalogue, restore jobs.

- **Backup file** (``.bak``) = :data:`BAK_MAGIC` followed by the snapshot file's bytes
  unchanged. The snapshot is already encrypted with the node's data key and ends with
  its own SHA-256 trailer, so the backup needs no second envelope; a backup can only be
  restored on a node configured with the same ``security.storage.wal_encryption_key``.
- **Catalogue**: every ``snapshot-<YYYYMMDDHHMMSS>-<seq>.snap`` file of the snapshot
  directory is listed as ``snap-YYYYMMDD-HHMMSS`` (``-N`` appended when ``seq`` > 1). Its
  listing ``checksum`` is ``"sha256:"`` + the SHA-256 of the whole ``.bak`` (magic +
  snapshot), i.e. of exactly the bytes a download returns; it is computed once and kept,
  with the description and origin, in a sidecar file ``<snapshot file>.meta``.
- **Restore jobs**: a restore runs as a background task (one at a time) calling
  :meth:`StorageEngine.restore`, which verifies, takes a safety snapshot, enters
  maintenance, swaps the state atomically and comes back READY.

Blocking helpers (hashing, verification, WAL scans) run in worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import re
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import attrs
import orjson
import trio

from tokmesh.domain.clock import SYSTEM_CLOCK, Clock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.ids import new_ulid
from tokmesh.storage import snapshot_files, wal_files
from tokmesh.storage.cipher import Cipher, DecryptError, StorageFatalError
from tokmesh.storage.snapshot_codec import SnapshotCorrupt, SnapshotHeader, iter_snapshot
from tokmesh.storage.wal_codec import (
    FRAME_HEADER_LEN,
    MAGIC_LEN,
    MAX_FRAME,
    MIN_FRAME_LEN,
    split_position,
)
from tokmesh.telemetry import audit as audit_mod

if TYPE_CHECKING:
    from tokmesh.actors.engine import StorageEngine

log = logging.getLogger("tokmesh.backups")

BAK_MAGIC: Final = b"TOKMESH_BAK_V1\n"
#: Size of the reads used to hash, verify and stream files: memory stays flat.
CHUNK: Final = 256 * 1024
#: Restore jobs remembered for ``GET /backups/restores/{job_id}``.
MAX_JOBS: Final = 100
MAX_DESCRIPTION: Final = 256

STATUS_RUNNING: Final = "RUNNING"
STATUS_FAILED: Final = "FAILED"
STATUS_IDLE: Final = "IDLE"

_SNAP_FILE_RE: Final = re.compile(r"snapshot-(\d{8})(\d{6})-(\d{4})\.snap")
_SNAP_ID_RE: Final = re.compile(r"snap-(\d{8})-(\d{6})(?:-([1-9]\d{0,3}))?")
_META_SUFFIX: Final = ".meta"
_UPLOAD_PREFIX: Final = "upload-"
_UPLOAD_SUFFIX: Final = ".part"


# ---------------------------------------------------------------------------- format


def snapshot_id_for(file_name: str) -> str | None:
    """``snapshot-20251217103000-0001.snap`` → ``snap-20251217-103000`` (``-N`` if seq > 1)."""
    m = _SNAP_FILE_RE.fullmatch(file_name)
    if m is None:
        return None
    seq = int(m.group(3))
    base = f"snap-{m.group(1)}-{m.group(2)}"
    return base if seq == 1 else f"{base}-{seq}"


def file_name_for(snapshot_id: str) -> str | None:
    """The snapshot file name of a canonical ``snapshot_id`` (``None`` if not one)."""
    m = _SNAP_ID_RE.fullmatch(snapshot_id)
    if m is None:
        return None
    seq = int(m.group(3) or 1)
    if seq == 1 and m.group(3) is not None:
        return None  # "-1" is never written: keep the mapping one-to-one
    return f"snapshot-{m.group(1)}{m.group(2)}-{seq:04d}.snap"


def bak_size(snapshot_size: int) -> int:
    """Size of the ``.bak`` of a snapshot file of ``snapshot_size`` bytes."""
    return len(BAK_MAGIC) + snapshot_size


def bak_checksum(snapshot_path: Path) -> str:
    """``"sha256:<hex>"`` of the ``.bak`` of ``snapshot_path`` (read in chunks; blocking)."""
    digest = hashlib.sha256(BAK_MAGIC)
    with open(snapshot_path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


class BackupInvalid(TokMeshError):
    """A backup that cannot be restored: 422 ``TM-ADMIN-4221`` (state untouched)."""

    def __init__(self, message: str) -> None:
        super().__init__(E.ADMIN_UNPROCESSABLE, message)


class MagicStripper:
    """Sans-IO: checks the ``.bak`` magic at the start of a byte stream and strips it.

    :meth:`feed` returns the snapshot bytes that follow the magic (``b""`` while the
    magic is still incomplete) and raises :class:`BackupInvalid` as soon as a byte
    differs; :meth:`finish` raises when the stream ended inside the magic.
    """

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen = 0

    def feed(self, data: bytes) -> bytes:
        """Consume ``data``; return what belongs to the snapshot."""
        need = len(BAK_MAGIC) - self._seen
        if need <= 0:
            return data
        head = data[:need]
        if head != BAK_MAGIC[self._seen : self._seen + len(head)]:
            raise BackupInvalid("not a TokMesh backup: missing TOKMESH_BAK_V1 magic")
        self._seen += len(head)
        return data[need:]

    def finish(self) -> None:
        """The stream ended: the whole magic must have been seen."""
        if self._seen < len(BAK_MAGIC):
            raise BackupInvalid("not a TokMesh backup: missing TOKMESH_BAK_V1 magic")


def verify_snapshot_file(path: Path, cipher: Cipher) -> SnapshotHeader:
    """Check a snapshot file before restoring it (blocking; memory-mapped, not loaded).

    Verifies the magic, the SHA-256 trailer, the layout and that the API-key part
    decrypts with ``cipher`` (which proves the data key is the same without decrypting
    every session). :class:`BackupInvalid` describes the first problem found.
    """
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, after the map
    except OSError as exc:
        raise BackupInvalid(f"backup unreadable: {exc.strerror or exc}") from None
    with fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise BackupInvalid("backup truncated: empty snapshot")
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise BackupInvalid(f"backup unreadable: {exc.strerror or exc}") from None
        try:
            header = _verify_mapped(mm, cipher)
        finally:
            with contextlib.suppress(BufferError):
                mm.close()  # a still-exported view is released with its owner
    return header


def _verify_mapped(mm: mmap.mmap, cipher: Cipher) -> SnapshotHeader:
    try:
        header, chunks, _keys, _ = iter_snapshot(cast(bytes, mm), cipher)
        del chunks  # never decrypt the sessions here; drops the view on the map
        return header
    except SnapshotCorrupt as exc:
        text = str(exc)
        if "checksum" in text:
            raise BackupInvalid("bad backup checksum: the file is damaged or was altered") from None
        raise BackupInvalid(f"invalid backup: {text}") from None
    except DecryptError:
        raise BackupInvalid("backup encrypted with a different key") from None
    except StorageFatalError as exc:
        raise BackupInvalid(f"invalid backup: {exc.message}") from None


# ---------------------------------------------------------------------------- ranges


class RangeNotSatisfiable(Exception):
    """A syntactically valid ``Range`` that selects nothing of the file (answer 416)."""


def parse_range(value: str | None, total: int) -> tuple[int, int] | None:
    """The inclusive byte span ``(first, last)`` selected by a ``Range`` header.

    Single ranges only: ``bytes=a-b``, ``bytes=a-``, ``bytes=-n``. ``None`` means "send
    the whole file": no header, another unit, several ranges or a malformed value are
    ignored as RFC 9110 §14.2 allows. :class:`RangeNotSatisfiable` when the range starts
    past the end or is an empty suffix.
    """
    if not value:
        return None
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_s, dash, last_s = spec.strip().partition("-")
    first_s, last_s = first_s.strip(), last_s.strip()
    if not dash or (first_s and not first_s.isdigit()) or (last_s and not last_s.isdigit()):
        return None
    if not first_s:
        if not last_s:
            return None
        suffix = int(last_s)
        if suffix == 0 or total == 0:
            raise RangeNotSatisfiable()
        return max(0, total - suffix), total - 1
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None  # invalid syntax: ignore the header
    if first >= total:
        raise RangeNotSatisfiable()
    last = int(last_s) if last_s else total - 1
    return first, min(last, total - 1)


class BakReader:
    """Async iterator over bytes ``[first, last]`` of a snapshot's ``.bak`` (magic + file).

    File reads happen in a worker thread, one :data:`CHUNK` at a time, so a download
    holds at most one chunk in memory. The file is opened by :meth:`open` (the snapshot
    stays readable even if retention unlinks it meanwhile) and closed by :meth:`aclose`,
    which the HTTP front calls whether or not iteration started.
    """

    def __init__(self, fh: Any, first: int, last: int) -> None:
        self._fh = fh
        self._pos = first
        self._end = last + 1

    @classmethod
    async def open(cls, snapshot_path: Path, first: int, last: int) -> BakReader:
        """Open ``snapshot_path`` for the span; :class:`FileNotFoundError` if it is gone."""
        fh = await trio.to_thread.run_sync(open, snapshot_path, "rb")
        return cls(fh, first, last)

    def __aiter__(self) -> BakReader:
        return self

    async def __anext__(self) -> bytes:
        if self._pos >= self._end or self._fh is None:
            await self.aclose()
            raise StopAsyncIteration
        magic_len = len(BAK_MAGIC)
        if self._pos < magic_len:
            data = BAK_MAGIC[self._pos : min(magic_len, self._end)]
        else:
            want = min(CHUNK, self._end - self._pos)
            fh = self._fh
            offset = self._pos - magic_len
            data = await trio.to_thread.run_sync(os.pread, fh.fileno(), want, offset)
            if not data:  # the file shrank under us: end the (now short) body
                await self.aclose()
                raise StopAsyncIteration
        self._pos += len(data)
        return data

    async def aclose(self) -> None:
        """Close the file (idempotent)."""
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()


# ---------------------------------------------------------------------------- catalogue


@attrs.frozen(slots=True)
class BackupEntry:
    """One snapshot as the backup API shows it."""

    snapshot_id: str
    path: Path
    size_bytes: int
    snapshot_size: int
    created_at: int
    checksum: str
    description: str
    type: str
    session_count: int
    key_count: int

    def to_public(self) -> dict[str, Any]:
        """The item of ``GET /admin/v1/backups/snapshots`` (03 §4.3) plus extras."""
        return {
            "snapshot_id": self.snapshot_id,
            "size_bytes": self.size_bytes,
            "path": str(self.path),
            "created_at": self.created_at,
            "checksum": self.checksum,
            "description": self.description,
            "type": self.type,
            "encrypted": True,
            "session_count": self.session_count,
            "key_count": self.key_count,
        }


class SnapshotCatalogue:
    """The snapshot directory seen as backups, with the ``.meta`` sidecars (blocking)."""

    def __init__(self, snapshot_dir: Path) -> None:
        self.snapshot_dir = Path(snapshot_dir)

    def _meta_path(self, snap: Path) -> Path:
        return snap.with_name(snap.name + _META_SUFFIX)

    def _read_meta(self, snap: Path) -> dict[str, Any]:
        try:
            meta = orjson.loads(self._meta_path(snap).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def _write_meta(self, snap: Path, meta: dict[str, Any]) -> None:
        target = self._meta_path(snap)
        tmp = target.with_name(target.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, orjson.dumps(meta))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except OSError as exc:
            # The sidecar is a cache plus a description: losing it loses no data.
            log.warning("cannot write snapshot sidecar %s: %s", target.name, exc)

    def annotate(
        self, snap: Path, *, description: str | None = None, kind: str | None = None
    ) -> None:
        """Record the description/origin of ``snap`` (keeps what is not given)."""
        meta = self._read_meta(snap)
        if description is not None:
            meta["description"] = description
        if kind is not None:
            meta["type"] = kind
        self._write_meta(snap, meta)

    def entry(self, snap: Path, with_checksum: bool = True) -> BackupEntry:
        """The entry of snapshot file ``snap``; computes and caches its checksum once.

        :class:`FileNotFoundError` when the file vanished (retention), and
        :class:`~tokmesh.storage.snapshot_codec.SnapshotCorrupt` for an unreadable one.
        """
        snapshot_id = snapshot_id_for(snap.name)
        if snapshot_id is None:
            raise FileNotFoundError(snap.name)
        st = snap.stat()
        info = snapshot_files.peek_snapshot_info(snap)
        meta = self._read_meta(snap)
        stamp = [st.st_size, st.st_mtime_ns]
        checksum = meta.get("checksum")
        fresh = isinstance(checksum, str) and meta.get("stamp") == stamp
        if not fresh and not with_checksum:
            checksum = ""  # a download does not need it: do not hash 500 MB first
        elif not fresh:
            checksum = bak_checksum(snap)
            meta["checksum"] = checksum
            meta["stamp"] = stamp
            self._write_meta(snap, meta)
        return BackupEntry(
            snapshot_id=snapshot_id,
            path=snap,
            size_bytes=bak_size(st.st_size),
            snapshot_size=st.st_size,
            created_at=info.created_at,
            checksum=str(checksum),
            description=str(meta.get("description") or ""),
            type=str(meta.get("type") or "scheduled"),
            session_count=info.session_count,
            key_count=info.key_count,
        )

    def snapshot_paths(self) -> list[Path]:
        """Snapshot files, newest first; removes sidecars whose snapshot is gone."""
        paths = snapshot_files.list_snapshots(self.snapshot_dir)
        names = {p.name for p in paths}
        with contextlib.suppress(FileNotFoundError):
            for item in os.scandir(self.snapshot_dir):
                if (
                    item.name.endswith(_META_SUFFIX)
                    and item.name[: -len(_META_SUFFIX)] not in names
                ):
                    with contextlib.suppress(OSError):
                        os.unlink(item.path)
        return paths

    def page(self, page: int, size: int) -> tuple[list[BackupEntry], int]:
        """One page of entries, newest first, and the total count."""
        paths = self.snapshot_paths()
        start = (page - 1) * size
        items: list[BackupEntry] = []
        for snap in paths[start : start + size]:
            try:
                items.append(self.entry(snap))
            except (FileNotFoundError, SnapshotCorrupt) as exc:
                log.warning("snapshot %s not listed: %s", snap.name, exc)
        return items, len(paths)

    def find(self, snapshot_id: str, with_checksum: bool = True) -> BackupEntry:
        """The entry of ``snapshot_id`` or 404 ``TM-ADMIN-4041``."""
        name = file_name_for(snapshot_id)
        if name is not None:
            try:
                return self.entry(self.snapshot_dir / name, with_checksum)
            except (FileNotFoundError, SnapshotCorrupt):
                pass
        raise TokMeshError(E.ADMIN_NOT_FOUND, "snapshot not found", {"snapshot_id": snapshot_id})

    def new_upload_path(self) -> Path:
        """A fresh temp path for an uploaded backup (inside the snapshot directory)."""
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        return self.snapshot_dir / f"{_UPLOAD_PREFIX}{new_ulid().lower()}{_UPLOAD_SUFFIX}"

    def clean_uploads(self) -> list[str]:
        """Remove upload temp files left by a crash; returns their names."""
        removed: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            for item in os.scandir(self.snapshot_dir):
                if item.name.startswith(_UPLOAD_PREFIX) and item.name.endswith(_UPLOAD_SUFFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(item.path)
                        removed.append(item.name)
        return removed


class UploadFile:
    """A streamed backup upload: strips the magic, buffers up to 1 MiB, writes off-loop."""

    FLUSH_AT: Final = 1 << 20

    def __init__(self, path: Path, label: str | None = None) -> None:
        self.path = path
        #: the snapshot id named by the uploaded file name (``snap-….bak``), if any
        self.label = label
        self._fd: int | None = None
        self._buf = bytearray()
        self._magic = MagicStripper()
        self.size = 0

    async def open(self) -> None:
        """Create the temp file (0600, exclusive)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self._fd = await trio.to_thread.run_sync(os.open, self.path, flags, 0o600)

    async def write(self, data: bytes) -> None:
        """Append part of the uploaded ``.bak``; :class:`BackupInvalid` on a bad magic."""
        body = self._magic.feed(data)
        if body:
            self._buf += body
            self.size += len(body)
            if len(self._buf) >= self.FLUSH_AT:
                await self._flush()

    async def _flush(self) -> None:
        buf, self._buf = self._buf, bytearray()
        fd = self._fd
        assert fd is not None

        def write_all() -> None:
            view = memoryview(buf)
            while view:
                view = view[os.write(fd, view) :]

        await trio.to_thread.run_sync(write_all)

    async def finish(self) -> None:
        """Flush and close; :class:`BackupInvalid` if the magic never completed."""
        self._magic.finish()
        if self._buf:
            await self._flush()
        await self.close()

    async def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            await trio.to_thread.run_sync(os.close, fd)

    async def discard(self) -> None:
        """Close and delete the temp file."""
        await self.close()
        with contextlib.suppress(OSError):
            await trio.to_thread.run_sync(self.path.unlink)


# ---------------------------------------------------------------------------- WAL status


@attrs.define
class _SegmentScan:
    scanned_to: int = MAGIC_LEN
    first_ts: int = 0
    last_ts: int = 0


class WalTimes:
    """Oldest/newest record time of the WAL, scanned incrementally (blocking).

    Walks frame headers with seeks (payloads are not read, except the first and the last
    frame of a segment, whose ``ts`` it needs), remembering how far each segment was
    scanned so repeated status calls only look at new bytes of the active segment.
    """

    def __init__(self) -> None:
        self._scans: dict[Path, _SegmentScan] = {}

    def times(self, wal_dir: Path) -> tuple[int, int]:
        """``(oldest_entry_time, newest_entry_time)`` in Unix ms (0 when unknown)."""
        segments = wal_files.list_segments(wal_dir)
        live = {p for _, p in segments}
        for gone in [p for p in self._scans if p not in live]:
            del self._scans[gone]
        oldest = newest = 0
        for _, path in segments:
            scan = self._scan(path)
            if scan.first_ts and not oldest:
                oldest = scan.first_ts
            if scan.last_ts:
                newest = scan.last_ts
        return oldest, newest

    def _scan(self, path: Path) -> _SegmentScan:
        scan = self._scans.setdefault(path, _SegmentScan())
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                pos = scan.scanned_to
                last: tuple[int, int] | None = None  # (frame start, frame len field)
                while pos + FRAME_HEADER_LEN <= size:
                    head = os.pread(fh.fileno(), FRAME_HEADER_LEN, pos)
                    (length,) = struct.unpack_from(">I", head)
                    if length < MIN_FRAME_LEN or length > MAX_FRAME or pos + 4 + length > size:
                        break  # torn tail, the sealed trailer, or corruption
                    if scan.first_ts == 0:
                        scan.first_ts = _frame_ts(fh.fileno(), pos, length)
                    last = (pos, length)
                    pos += 4 + length
                if last is not None:
                    ts = _frame_ts(fh.fileno(), *last)
                    if ts:
                        scan.last_ts = ts
                        scan.scanned_to = pos
        except OSError:
            pass
        return scan


def _frame_ts(fd: int, pos: int, length: int) -> int:
    """The ``ts`` of the frame at ``pos`` (0 when the frame does not check out)."""
    raw = os.pread(fd, 4 + length, pos)
    if len(raw) != 4 + length:
        return 0
    (crc,) = struct.unpack_from(">I", raw, 4)
    body = raw[8:]
    if zlib.crc32(body) != crc:
        return 0
    try:
        doc = orjson.loads(body[1:])
    except orjson.JSONDecodeError:
        return 0
    ts = doc.get("ts") if isinstance(doc, dict) else None
    return ts if isinstance(ts, int) else 0


class WalLogReader:
    """Async iterator over raw (encrypted) WAL bytes from a WAL position (``GET /wal/logs``).

    ``position`` uses the encoding of ``last_offset`` (``segment_id << 32 | byte_offset``;
    0 = the first byte of the oldest segment). Bytes of consecutive segments follow each
    other, magic and trailers included, exactly as on disk. Reads are one chunk at a time
    in a worker thread. Without ``follow`` it stops after ``limit`` bytes or at the end of
    the log; with ``follow`` it waits for new bytes (polling) until the client leaves.
    """

    def __init__(
        self, wal_dir: Path, position: int, limit: int, follow: bool, poll: float = 0.25
    ) -> None:
        self.wal_dir = wal_dir
        self.segment, self.offset = split_position(position)
        self.remaining: int | None = None if follow else limit
        self.follow = follow
        self.poll = poll
        self._closed = False

    def __aiter__(self) -> WalLogReader:
        return self

    async def __anext__(self) -> bytes:
        while not self._closed and self.remaining != 0:
            data = await trio.to_thread.run_sync(self._read_some)
            if data:
                return data
            if not self.follow:
                break
            await trio.sleep(self.poll)
        raise StopAsyncIteration

    def _read_some(self) -> bytes:
        for seg_id, path in wal_files.list_segments(self.wal_dir):
            if seg_id < self.segment:
                continue
            if seg_id > self.segment:
                # The current segment is exhausted (or compacted away): continue with the next.
                self.segment, self.offset = seg_id, 0
            try:
                with open(path, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if self.offset >= size:
                        continue
                    want = min(CHUNK, size - self.offset)
                    if self.remaining is not None:
                        want = min(want, self.remaining)
                    data = os.pread(fh.fileno(), want, self.offset)
            except FileNotFoundError:
                continue
            self.offset += len(data)
            if self.remaining is not None:
                self.remaining -= len(data)
            return data
        return b""

    async def aclose(self) -> None:
        """Stop (idempotent); files are opened per read, so nothing else to release."""
        self._closed = True


# ---------------------------------------------------------------------------- restore jobs


@attrs.define
class RestoreJob:
    """One restore (03 §4.3): ``RUNNING`` → ``IDLE`` (done, 100 %) or ``FAILED``."""

    job_id: str
    snapshot_id: str
    started_at: int
    source: Path
    upload: bool
    operator: dict[str, Any] = attrs.Factory(dict)
    status: str = STATUS_RUNNING
    progress: int = 0
    message: str = "restore accepted"
    finished_at: int = 0
    done: trio.Event = attrs.Factory(trio.Event)

    def to_public(self) -> dict[str, Any]:
        """The data of ``GET /admin/v1/backups/restores/{job_id}``."""
        return {
            "job_id": self.job_id,
            "status": self.status,
            "progress": self.progress,
            "message": self.message,
            "snapshot_id": self.snapshot_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class BackupService:
    """Snapshots on demand, the catalogue, downloads, restore jobs and the WAL routes.

    :meth:`run` must be started in a long-lived nursery (the server's): restore jobs run
    in it. Without it, jobs fall back to a Trio system task.
    """

    def __init__(
        self,
        engine: StorageEngine,
        audit: audit_mod.AuditLog | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.clock = clock
        self.catalogue = SnapshotCatalogue(engine.settings.snapshot_dir)
        self.jobs: dict[str, RestoreJob] = {}
        self._busy = False
        self._nursery: trio.Nursery | None = None
        self._wal_times = WalTimes()
        self._wal_lock = trio.Lock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host restore jobs until cancelled; removes stale upload temp files first."""
        removed = await trio.to_thread.run_sync(self.catalogue.clean_uploads)
        if removed:
            log.info("removed %d stale backup upload files", len(removed))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    # -- snapshots ------------------------------------------------------------------------

    @property
    def restore_running(self) -> bool:
        """True while a restore is being received, verified or run."""
        return self._busy

    def _check_idle(self) -> None:
        if self._busy:
            raise TokMeshError(E.ADMIN_CONFLICT, "a restore is in progress")

    def _snapshotter(self) -> Any:
        snapshotter = self.engine.snapshotter
        if snapshotter is None:
            raise TokMeshError(E.SYS_UNAVAILABLE, "service not ready")
        return snapshotter

    async def create_snapshot(self, description: str = "", kind: str = "manual") -> BackupEntry:
        """Take a snapshot now (joins one in flight); 409 while a restore runs."""
        self._check_idle()
        if len(description) > MAX_DESCRIPTION:
            raise TokMeshError(
                E.ARG_INVALID,
                f"description longer than {MAX_DESCRIPTION} characters",
                {"field": "description"},
            )
        snapshotter = self._snapshotter()
        try:
            info = await snapshotter.take(kind)
        except TokMeshError as exc:
            raise TokMeshError(E.ADMIN_FAILED, f"snapshot creation failed: {exc.message}") from exc

        def annotate() -> BackupEntry:
            self.catalogue.annotate(info.path, description=description, kind=kind)
            return self.catalogue.entry(info.path)

        try:
            return await trio.to_thread.run_sync(annotate)
        except (OSError, SnapshotCorrupt) as exc:
            raise TokMeshError(E.ADMIN_FAILED, "snapshot written but unreadable") from exc

    async def list_snapshots(self, page: int, size: int) -> tuple[list[BackupEntry], int]:
        """A page of the catalogue, newest first."""
        return await trio.to_thread.run_sync(self.catalogue.page, page, size)

    async def find(self, snapshot_id: str, with_checksum: bool = True) -> BackupEntry:
        """The entry of ``snapshot_id`` or 404 ``TM-ADMIN-4041``."""
        return await trio.to_thread.run_sync(self.catalogue.find, snapshot_id, with_checksum)

    # -- restores -------------------------------------------------------------------------

    def claim(self) -> None:
        """Reserve the single restore slot (409 ``TM-ADMIN-4091`` when taken)."""
        self._check_idle()
        self._busy = True

    def release(self) -> None:
        """Give the slot back (after a refused upload)."""
        self._busy = False

    def _cipher(self) -> Cipher:
        cipher = self.engine.cipher
        if cipher is None:
            raise TokMeshError(E.SYS_UNAVAILABLE, "service not ready")
        return cipher

    async def start_from_snapshot(
        self, snapshot_id: str, operator: dict[str, Any] | None = None
    ) -> RestoreJob:
        """Verify a catalogued snapshot and start restoring it (slot must be claimed)."""
        entry = await self.find(snapshot_id, with_checksum=False)
        cipher = self._cipher()
        await trio.to_thread.run_sync(verify_snapshot_file, entry.path, cipher)
        return self._start(entry.snapshot_id, entry.path, False, operator or {})

    async def start_from_upload(
        self, upload: UploadFile, operator: dict[str, Any] | None = None
    ) -> RestoreJob:
        """Verify a finished upload and start restoring it (slot must be claimed)."""
        cipher = self._cipher()
        header = await trio.to_thread.run_sync(verify_snapshot_file, upload.path, cipher)
        label = upload.label
        if label is None or file_name_for(label) is None:
            # Name the job after the snapshot the backup was made from (its UTC second).
            stamp = datetime.fromtimestamp(header.created_at / 1000, tz=UTC)
            label = stamp.strftime("snap-%Y%m%d-%H%M%S")
        return self._start(label, upload.path, True, operator or {})

    def _start(
        self, snapshot_id: str, source: Path, upload: bool, operator: dict[str, Any]
    ) -> RestoreJob:
        job = RestoreJob(
            job_id="job-" + new_ulid().lower(),
            snapshot_id=snapshot_id,
            started_at=self.clock.now_ms(),
            source=source,
            upload=upload,
            operator=operator,
        )
        self.jobs[job.job_id] = job
        while len(self.jobs) > MAX_JOBS:
            oldest = next(iter(self.jobs))
            if self.jobs[oldest].status == STATUS_RUNNING:
                break
            del self.jobs[oldest]
        self._spawn(lambda: self._run_job(job))
        return job

    def _spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn)
            return

        async def guarded() -> None:
            # A system task must never raise: _run_job already catches everything.
            with contextlib.suppress(Exception):
                await fn()

        trio.lowlevel.spawn_system_task(guarded)

    def job(self, job_id: str) -> RestoreJob:
        """The job ``job_id`` or 404 ``TM-ADMIN-4041``."""
        from tokmesh.readiness import Phase

        job = self.jobs.get(job_id)
        if job is None:
            raise TokMeshError(E.ADMIN_NOT_FOUND, "restore job not found", {"job_id": job_id})
        restoring = self.engine.readiness.phase is Phase.RESTORING
        if job.status == STATUS_RUNNING and restoring and job.progress < 50:
            # The engine is past verification and its safety snapshot: maintenance.
            job.progress = 50
            job.message = "maintenance: loading the snapshot"
        return job

    async def _run_job(self, job: RestoreJob) -> None:
        from tokmesh.readiness import Phase

        job.progress = 10
        job.message = "verified; taking a safety snapshot of the current state"
        result: dict[str, Any] | None = None
        try:
            result = await self.engine.restore(job.source)
        except Exception as exc:
            message = _failure_message(exc)
            if self.engine.readiness.phase is Phase.FAILED:
                message += "; the node must be restarted"
            log.error("restore %s failed: %s", job.job_id, message)
            self._finish(job, STATUS_FAILED, job.progress, message)
        else:
            self._finish(
                job,
                STATUS_IDLE,
                100,
                f"restore completed: {result.get('sessions', 0)} session records, "
                f"{result.get('api_keys', 0)} API keys",
            )
        finally:
            if job.status == STATUS_RUNNING:  # cancelled (shutdown): never leave it RUNNING
                self._finish(job, STATUS_FAILED, job.progress, "restore interrupted")
            if job.upload:
                with contextlib.suppress(OSError):
                    await trio.to_thread.run_sync(job.source.unlink)
        ok = job.status == STATUS_IDLE
        self._audit_completed(job, audit_mod.RESULT_SUCCESS if ok else audit_mod.RESULT_FAILURE)
        if result is not None:
            await self._annotate_after_restore(job, result)

    def _finish(self, job: RestoreJob, status: str, progress: int, message: str) -> None:
        """Publish the outcome at once: status, times and the free slot change together."""
        job.status = status
        job.progress = progress
        job.message = message
        job.finished_at = self.clock.now_ms()
        self._busy = False
        job.done.set()

    async def _annotate_after_restore(self, job: RestoreJob, result: dict[str, Any]) -> None:
        """Name the two snapshots a restore writes (best effort, for the listing)."""
        snap_dir = self.catalogue.snapshot_dir
        notes = [
            (result.get("safety_snapshot"), "pre-restore", f"state before restore {job.job_id}"),
            (result.get("snapshot"), "restore", f"restored from {job.snapshot_id}"),
        ]

        def annotate() -> None:
            for snap_id, kind, text in notes:
                if isinstance(snap_id, str) and snap_id:
                    path = snap_dir / f"{snap_id}.snap"
                    if path.exists():
                        self.catalogue.annotate(path, description=text, kind=kind)

        with contextlib.suppress(OSError):
            await trio.to_thread.run_sync(annotate)

    def _audit_completed(self, job: RestoreJob, outcome: str) -> None:
        if self.audit is None:
            return
        self.audit.append(
            audit_mod.AuditRecord.new(
                audit_mod.RESTORE_COMPLETED,
                result=outcome,
                resource=job.snapshot_id,
                details={"job_id": job.job_id, "status": job.status, "message": job.message},
                **job.operator,
            )
        )

    # -- WAL ------------------------------------------------------------------------------

    async def wal_status(self) -> dict[str, Any]:
        """The data of ``GET /admin/v1/wal/status`` (03 §4.7)."""
        wal = self.engine.wal
        wal_dir = self.engine.settings.wal_dir

        def collect() -> tuple[list[tuple[int, Path]], int, tuple[int, int]]:
            segments = wal_files.list_segments(wal_dir)
            total = 0
            for _, p in segments:
                with contextlib.suppress(FileNotFoundError):
                    total += p.stat().st_size
            return segments, total, self._wal_times.times(wal_dir)

        async with self._wal_lock:  # the incremental scan cache is not thread-safe
            segments, total, (oldest, newest) = await trio.to_thread.run_sync(collect)
        current = wal.current_segment_id if wal is not None else 0
        return {
            "enabled": True,
            "sync_mode": wal.settings.sync_mode if wal is not None else "",
            "current_segment": current,
            "current_segment_file": wal_files.segment_name(current) if current else "",
            "total_segments": len(segments),
            "total_size_bytes": total,
            "oldest_entry_time": oldest,
            "newest_entry_time": newest,
            "last_offset": wal.position if wal is not None else 0,
        }

    async def compact_wal(self) -> tuple[BackupEntry, list[str], int]:
        """R14: take a snapshot, delete the WAL segments it covers (01 §8.8 rules)."""
        entry = await self.create_snapshot("", kind="wal-compact")
        last = self._snapshotter().last_compaction
        return entry, list(last.removed_segments), int(last.freed_bytes)


def _failure_message(exc: BaseException) -> str:
    """A reason for a failed job that never carries secrets (codes and fixed texts)."""
    if isinstance(exc, TokMeshError):
        return f"{exc.error.code}: {exc.message}"
    if isinstance(exc, SnapshotCorrupt):
        return f"invalid backup: {exc}"
    return f"restore failed: {type(exc).__name__}"


async def body_chunks(stream: AsyncIterator[bytes] | None, body: bytes) -> AsyncIterator[bytes]:
    """The request body chunk by chunk, streamed or already buffered."""
    if stream is None:
        for i in range(0, len(body), CHUNK):
            yield body[i : i + CHUNK]
        return
    async for chunk in stream:
        yield chunk


__all__ = [
    "BAK_MAGIC",
    "BackupEntry",
    "BackupInvalid",
    "BackupService",
    "BakReader",
    "MagicStripper",
    "RangeNotSatisfiable",
    "RestoreJob",
    "SnapshotCatalogue",
    "UploadFile",
    "WalLogReader",
    "WalTimes",
    "bak_checksum",
    "bak_size",
    "file_name_for",
    "parse_range",
    "snapshot_id_for",
    "verify_snapshot_file",
]
