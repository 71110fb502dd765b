"""Blocking snapshot files: atomic write, listing, loading with fallback, retention
(01 §9.3–§9.6). Runs in a worker thread (``trio.to_thread``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import attrs

from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.session import ROW_FIELDS, Session
from tokmesh.storage.cipher import Cipher, DecryptError, StorageFatalError, ensure_dir, fsync_dir
from tokmesh.storage.session_columns import ColumnDecoder, encode_columns
from tokmesh.storage.snapshot_codec import (
    CHUNK_RECORDS,
    LAYOUT_COLUMNS,
    TRAILER_LEN,
    SnapshotCorrupt,
    check_frame,
    decode_header,
    encode_chunk,
    encode_header,
    encode_keys,
    iter_snapshot,
    trailer_matches,
)
from tokmesh.storage.wal_codec import split_position

_log = logging.getLogger("tokmesh.storage")
_SNAP_RE = re.compile(r"snapshot-(\d{14})-(\d{4})\.snap")
_DAY_MS = 86_400_000


class SnapshotError(TokMeshError):
    """Writing a snapshot failed (``TM-SYS-5002``); older snapshots are untouched."""

    def __init__(self, message: str) -> None:
        super().__init__(E.SYS_BACKUP, message)


class _Abandoned(Exception):
    """The caller asked :func:`write_snapshot` to give up."""


@attrs.frozen(slots=True)
class SnapshotInfo:
    """Metadata of one snapshot file (01 §9.4); ``checksum`` is the hex SHA-256 trailer."""

    id: str
    path: Path
    size: int
    created_at: int
    session_count: int
    key_count: int
    wal_last_offset: int
    checksum: str
    node_id: str


@attrs.frozen(slots=True)
class LoadedSnapshot:
    """A decoded, verified snapshot (``sessions`` is empty when they went to a sink)."""

    info: SnapshotInfo
    sessions: list[Session]
    api_keys: list[dict[str, Any]]


class SessionSink(Protocol):
    """Takes a snapshot's records chunk by chunk as they are decoded (recovery builds its
    primary map and indexes that way, while each chunk is still hot in the CPU cache)."""

    def reserve(self, count: int) -> None:
        """Make room for ``count`` records (the snapshot's count, known before the first
        chunk); a hint that may be ignored."""

    def load(self, sessions: list[Session]) -> None:
        """Add records whose ids are new; ``ValueError`` if an id repeats."""

    def clear(self) -> None:
        """Forget everything loaded (the snapshot turned out corrupt part-way)."""


class _Collect:
    """The default sink: a list, rejecting repeated ids like the store's state does."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self._ids: set[str] = set()

    def reserve(self, count: int) -> None:
        """A list needs no room made."""

    def load(self, sessions: list[Session]) -> None:
        before = len(self._ids)
        self._ids.update(s.id for s in sessions)
        if len(self._ids) != before + len(sessions):
            raise ValueError("a session id repeats in the snapshot")
        self.sessions.extend(sessions)

    def clear(self) -> None:
        self.sessions.clear()
        self._ids.clear()


def snapshot_timestamp_ms(name: str) -> int | None:
    """Creation time (UTC, second precision) encoded in a snapshot file name."""
    m = _SNAP_RE.fullmatch(name)
    if not m:
        return None
    dt = datetime.strptime(m.group(1), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1000


def list_snapshots(snapshot_dir: Path) -> list[Path]:
    """Snapshot files of ``snapshot_dir``, newest first (name order = time order)."""
    try:
        names = [
            e.name
            for e in os.scandir(snapshot_dir)
            if _SNAP_RE.fullmatch(e.name) and e.is_file(follow_symlinks=False)
        ]
    except FileNotFoundError:
        return []
    names.sort(reverse=True)
    return [Path(snapshot_dir) / n for n in names]


def _next_id(snapshot_dir: Path, now_ms: int) -> str:
    stamp = datetime.fromtimestamp(now_ms / 1000, tz=UTC).strftime("%Y%m%d%H%M%S")
    prefix = f"snapshot-{stamp}-"
    # Temporary files count too: a writer killed part-way (a snapshot cancelled by a
    # shutdown, its child process killed) leaves its ``.tmp`` until the next start-up,
    # and the shutdown's own snapshot, in the same second, must not pick that name.
    seqs = [
        int(name[len(prefix) : len(prefix) + 4])
        for name in os.listdir(snapshot_dir)
        if name.startswith(prefix) and name[len(prefix) : len(prefix) + 4].isdigit()
    ]
    seq = max(seqs, default=0) + 1
    if seq > 9999:
        raise SnapshotError("too many snapshots within one second")
    return f"{prefix}{seq:04d}"


def _write_chunks(fd: int, chunks: Sequence[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


def write_snapshot(
    snapshot_dir: Path,
    sessions: Sequence[Session],
    api_keys: Sequence[dict[str, Any]],
    wal_last_offset: int,
    node_id: str,
    cipher: Cipher,
    now_ms: int,
    *,
    abort: threading.Event | None = None,
) -> SnapshotInfo:
    """Encode, encrypt and atomically write a snapshot (01 §9.3, §9.4).

    ``<id>.tmp`` (0600) → fsync → close → rename to ``<id>.snap`` → fsync dir. On any
    failure the temp file is removed and :class:`SnapshotError` (``TM-SYS-5002``) raised.
    The WAL must already be durable up to ``wal_last_offset`` when this is called: a
    snapshot must never claim records the WAL could still lose. Setting ``abort`` (from
    another thread) gives up between two chunks, the same way: temp file removed,
    :class:`SnapshotError`; a shutdown that runs out of time uses it.
    """
    snapshot_dir = Path(snapshot_dir)
    try:
        ensure_dir(snapshot_dir)
        snap_id = _next_id(snapshot_dir, now_ms)
    except OSError as exc:
        raise SnapshotError(f"snapshot directory unusable: {exc.strerror or exc}") from exc
    tmp = snapshot_dir / f"{snap_id}.tmp"
    final = snapshot_dir / f"{snap_id}.snap"
    digest = hashlib.sha256()
    size = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)

            def emit(part: bytes) -> None:
                nonlocal size
                digest.update(part)
                size += len(part)
                _write_chunks(fd, [part])

            emit(
                encode_header(
                    session_count=len(sessions),
                    key_count=len(api_keys),
                    wal_last_offset=wal_last_offset,
                    node_id=node_id,
                    created_at=now_ms,
                    cipher=cipher,
                    fields=ROW_FIELDS,
                    layout=LAYOUT_COLUMNS,
                )
            )
            # Chunk by chunk: only ~2k records are converted at a time, and no single C call
            # (JSON encoding, encryption) holds the GIL for long.
            for i in range(0, len(sessions), CHUNK_RECORDS):
                if abort is not None and abort.is_set():
                    raise _Abandoned
                columns = encode_columns(sessions[i : i + CHUNK_RECORDS])
                emit(encode_chunk(columns, cipher))
            emit(encode_keys(api_keys, cipher))
            checksum = digest.digest()
            _write_chunks(fd, [checksum])
            size += len(checksum)
            os.fsync(fd)
        finally:
            os.close(fd)
        if final.exists():  # rename would silently replace it
            raise FileExistsError(final.name)
        os.rename(tmp, final)
        fsync_dir(snapshot_dir)
    except (OSError, TypeError, ValueError, _Abandoned) as exc:
        # TypeError/ValueError: a record that JSON cannot encode (orjson.JSONEncodeError).
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, _Abandoned):
            raise SnapshotError(f"writing snapshot {snap_id} abandoned (out of time)") from None
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SnapshotError(f"writing snapshot {snap_id} failed: {reason}") from exc
    info = SnapshotInfo(
        id=snap_id,
        path=final,
        size=size,
        created_at=now_ms,
        session_count=len(sessions),
        key_count=len(api_keys),
        wal_last_offset=wal_last_offset,
        checksum=checksum.hex(),
        node_id=node_id,
    )
    _log.info(
        "snapshot %s written: %d sessions, %d keys, %d bytes",
        snap_id,
        info.session_count,
        info.key_count,
        info.size,
    )
    return info


class _ChecksumThread:
    """:func:`trailer_matches` of a buffer, computed in a thread."""

    def __init__(self, buf: bytes) -> None:
        self._intact = False
        self._thread = threading.Thread(
            target=self._run, args=(buf,), name="tokmesh-snapshot-checksum", daemon=True
        )
        self._thread.start()

    def _run(self, buf: bytes) -> None:
        self._intact = trailer_matches(buf)

    def join(self) -> bool:
        """Wait for the verdict: True when the trailer matches."""
        self._thread.join()
        return self._intact


def read_snapshot(path: Path, cipher: Cipher, into: SessionSink | None = None) -> LoadedSnapshot:
    """Load and verify one snapshot file.

    :class:`SnapshotCorrupt` on checksum/magic/truncation/malformed content, a repeated
    session id included (callers fall back to an older file); :class:`StorageFatalError`
    on an AEAD failure or a plaintext snapshot (never a silent empty load). With ``into``,
    each chunk's records go to ``into.load`` as soon as they are decoded and the result's
    ``sessions`` is empty; on an error part-way, what ``into`` received is not cleared
    here (:func:`load_newest_valid` does it).
    """
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise SnapshotCorrupt(f"cannot read snapshot: {exc.strerror or exc}") from None
    check_frame(buf)
    # The SHA-256 over the whole file (~0.2 s for a million sessions) runs in a thread
    # while the chunks decode; its verdict still comes first: a mismatch is reported as
    # such whatever decoding raised (a flipped bit in a chunk fails that chunk's AEAD tag,
    # and must still mean "corrupt, try an older snapshot", not "wrong key").
    checksum_check = _ChecksumThread(buf)
    collect = _Collect()
    sink: SessionSink = collect if into is None else into
    failure: Exception | None = None
    try:
        header, chunks, keys, checksum = iter_snapshot(buf, cipher, verify=False)
        if header.fields and header.fields != ROW_FIELDS:
            raise SnapshotCorrupt("snapshot row layout is not supported by this version")
        sink.reserve(header.session_count)
        if header.layout == LAYOUT_COLUMNS:
            decoder = ColumnDecoder()
            for chunk in chunks:
                sink.load(decoder.decode(chunk)[1])
        else:
            # Snapshots written before the column layout: rows, or record objects.
            decode = Session.from_row if header.fields else Session.from_record
            for chunk in chunks:
                sink.load([decode(r) for r in chunk])  # type: ignore[arg-type]
    except (
        DecryptError,
        StorageFatalError,
        SnapshotCorrupt,
        KeyError,
        ValueError,
        TypeError,
    ) as exc:
        failure = exc
    finally:
        intact = checksum_check.join()
    if not intact:
        raise SnapshotCorrupt("snapshot checksum mismatch")
    if isinstance(failure, DecryptError):
        raise StorageFatalError(
            f"snapshot {path.name}: cannot decrypt: {failure}", {"snapshot": path.name}
        )
    if isinstance(failure, StorageFatalError | SnapshotCorrupt):
        raise failure
    if failure is not None:
        raise SnapshotCorrupt(f"malformed session record in snapshot: {type(failure).__name__}")
    info = SnapshotInfo(
        id=path.name.removesuffix(".snap"),
        path=path,
        size=len(buf),
        created_at=header.created_at,
        session_count=header.session_count,
        key_count=header.key_count,
        wal_last_offset=header.wal_last_offset,
        checksum=checksum.hex(),
        node_id=header.node_id,
    )
    return LoadedSnapshot(info, collect.sessions, keys)


def peek_snapshot_info(path: Path) -> SnapshotInfo:
    """Header-only :class:`SnapshotInfo` (no checksum verification, no decryption), for
    listings; ``checksum`` is the stored trailer. :class:`SnapshotCorrupt` if unreadable."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(64 * 1024)
            if size >= TRAILER_LEN:
                fh.seek(size - TRAILER_LEN)
                trailer = fh.read(TRAILER_LEN)
            else:
                trailer = b""
    except OSError as exc:
        raise SnapshotCorrupt(f"cannot read snapshot: {exc.strerror or exc}") from None
    header = decode_header(head)
    return SnapshotInfo(
        id=path.name.removesuffix(".snap"),
        path=path,
        size=size,
        created_at=header.created_at,
        session_count=header.session_count,
        key_count=header.key_count,
        wal_last_offset=header.wal_last_offset,
        checksum=trailer.hex(),
        node_id=header.node_id,
    )


def clean_temp_files(snapshot_dir: Path) -> list[str]:
    """Remove stale ``*.tmp`` files left by an interrupted write; returns their names."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(snapshot_dir))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if entry.name.endswith(".tmp") and entry.name.startswith("snapshot-"):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(entry.name)
    if removed:
        _log.info("removed %d stale snapshot temp files", len(removed))
    return removed


def load_newest_valid(
    snapshot_dir: Path, cipher: Cipher, into: SessionSink | None = None
) -> LoadedSnapshot | None:
    """The newest snapshot that verifies, falling back to older ones (01 §9.6).

    Corrupt files are skipped with a WARN; :class:`StorageFatalError` (wrong key,
    plaintext file) stops the search. ``None`` when there is no valid snapshot (an ERROR
    is logged when some existed but none was valid). Stale temp files are removed first.
    With ``into`` the records go there (see :func:`read_snapshot`); it is cleared before
    each fallback, so it ends up holding exactly the snapshot returned.
    """
    clean_temp_files(snapshot_dir)
    paths = list_snapshots(snapshot_dir)
    for path in paths:
        try:
            loaded = read_snapshot(path, cipher, into)
        except SnapshotCorrupt as exc:
            if into is not None:
                into.clear()
            _log.warning("snapshot %s is not usable (%s); trying an older one", path.name, exc)
            continue
        _log.info(
            "loaded snapshot %s: %d sessions, %d keys",
            path.name,
            loaded.info.session_count,
            loaded.info.key_count,
        )
        return loaded
    if paths:
        _log.error("none of the %d snapshots is valid; recovering from the WAL alone", len(paths))
    return None


def apply_retention(snapshot_dir: Path, count: int, days: int, now_ms: int) -> list[str]:
    """Delete snapshots outside (newest ``count``) ∪ (created within ``days``) (01 §9.5).

    The newest snapshot is always kept. Age comes from the UTC time in the file name.
    Returns the removed file names.
    """
    paths = list_snapshots(snapshot_dir)
    horizon = now_ms - days * _DAY_MS
    removed: list[str] = []
    for index, path in enumerate(paths):
        if index < max(count, 1):
            continue
        created = snapshot_timestamp_ms(path.name)
        if created is not None and created >= horizon:
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path.name)
    if removed:
        fsync_dir(Path(snapshot_dir))
        _log.info("snapshot retention removed %d files", len(removed))
    return removed


def compaction_cut_segment(snapshot_dir: Path) -> int | None:
    """Segment id below which WAL segments may be deleted (01 §8.8, the safer variant).

    Uses the second-newest readable snapshot header so a fallback to it still has its
    complete WAL tail; with a single snapshot, that one. ``None`` without snapshots.
    """
    offsets: list[int] = []
    for path in list_snapshots(snapshot_dir):
        try:
            offsets.append(peek_snapshot_info(path).wal_last_offset)
        except (SnapshotCorrupt, StorageFatalError):
            continue
        if len(offsets) == 2:
            break
    if not offsets:
        return None
    return split_position(offsets[-1])[0]
