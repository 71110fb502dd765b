"""WAL segment files: writer start-up, rotation, sealing, reading, compaction (01 §8, §10.2)."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tokmesh.domain.errors import E
from tokmesh.storage import wal_files
from tokmesh.storage.cipher import ALG_AES, Cipher, StorageFatalError
from tokmesh.storage.wal_codec import (
    CUT_MARK,
    MAGIC,
    RecordType,
    WalRecord,
    encode_record,
    frame,
    make_position,
    split_position,
)
from tokmesh.storage.wal_files import (
    SegmentWriter,
    WalReadStats,
    compact,
    is_sealed,
    list_segments,
    read_wal,
    segment_name,
    wal_size_bytes,
)

from .conftest import MakeSession


def rec(make_session: MakeSession, version: int = 1, **kw: object) -> WalRecord:
    s = make_session(version=version, **kw)
    return WalRecord(RecordType.CREATE, s.last_active, s.id, s.version, s.to_record())


def write(w: SegmentWriter, records: list[WalRecord], cipher: Cipher) -> list[int]:
    """Append each record as its own batch; returns the positions."""
    return [w.append(encode_record(r, cipher), 1) for r in records]


def ids(items: list[tuple[int, WalRecord]]) -> list[str]:
    return [r.entity_id for _, r in items]


def test_segment_names_and_listing(tmp_path: Path) -> None:
    assert segment_name(1) == "wal-00000001.log"
    assert segment_name(12345678) == "wal-12345678.log"
    for name in [
        "wal-00000002.log",
        "wal-00000010.log",
        "wal-1.log",
        "notes.txt",
        "wal-00000001.log.bak",
    ]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / ".encryption_key").write_text("x")
    assert [i for i, _ in list_segments(tmp_path)] == [2, 10]
    assert list_segments(tmp_path / "missing") == []


def test_open_empty_dir_creates_first_segment(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    w = SegmentWriter.open(wal_dir)
    path = wal_dir / "wal-00000001.log"
    assert path.read_bytes() == MAGIC
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(wal_dir.stat().st_mode) == 0o750
    assert w.position == make_position(1, 8)
    assert w.recovery.new_segment
    w.close()


def test_append_positions_and_read_back(
    tmp_path: Path, make_session: MakeSession, cipher: Cipher
) -> None:
    w = SegmentWriter.open(tmp_path)
    records = [rec(make_session) for _ in range(5)]
    positions = write(w, records, cipher)
    w.fsync()
    assert positions[-1] == w.position
    assert split_position(w.position) == (1, (tmp_path / "wal-00000001.log").stat().st_size)
    got = list(read_wal(tmp_path, 0, cipher))
    assert [p for p, _ in got] == positions
    assert [r for _, r in got] == [
        WalRecord(
            r.type,
            r.ts,
            r.entity_id,
            r.version,
            {k: v for k, v in (r.body or {}).items() if k != "is_deleted"},
        )
        for r in records
    ]
    # Seeking: from a record's end position only later records come back.
    assert ids(list(read_wal(tmp_path, positions[1], cipher))) == [r.entity_id for r in records[2:]]
    assert list(read_wal(tmp_path, positions[-1], cipher)) == []
    w.close()


def test_batch_append_counts_records(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    w = SegmentWriter.open(tmp_path, max_segment_records=4)
    batch = b"".join(encode_record(rec(make_session), aes) for _ in range(3))
    w.append(batch, 3)
    assert w.segment_records == 3 and w.current_segment_id == 1
    w.append(batch, 3)  # 3 + 3 > 4: rotate before writing
    assert w.current_segment_id == 2 and w.segment_records == 3
    w.close()
    assert len(list(read_wal(tmp_path, 0, aes))) == 6


def test_rotation_by_records_seals_with_sha256(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    w = SegmentWriter.open(tmp_path, max_segment_records=3)
    records = [rec(make_session) for _ in range(7)]
    positions = write(w, records, aes)
    assert [split_position(p)[0] for p in positions] == [1, 1, 1, 2, 2, 2, 3]
    assert [p.name for _, p in list_segments(tmp_path)] == [
        "wal-00000001.log",
        "wal-00000002.log",
        "wal-00000003.log",
    ]
    for seg_id in (1, 2):
        raw = (tmp_path / segment_name(seg_id)).read_bytes()
        assert raw.startswith(MAGIC)
        assert raw[-32:] == hashlib.sha256(raw[:-32]).digest()
        assert stat.S_IMODE((tmp_path / segment_name(seg_id)).stat().st_mode) == 0o600
    active = (tmp_path / segment_name(3)).read_bytes()
    assert not is_sealed(active)
    w.seal_and_close()
    assert is_sealed((tmp_path / segment_name(3)).read_bytes())
    assert ids(list(read_wal(tmp_path, 0, aes))) == [r.entity_id for r in records]
    # A trailer is not part of any position: reading from the end of segment 1 yields 2, 3.
    assert ids(list(read_wal(tmp_path, positions[2], aes))) == [r.entity_id for r in records[3:]]


def test_rotation_by_size(tmp_path: Path, make_session: MakeSession, aes: Cipher) -> None:
    frame_len = len(encode_record(rec(make_session), aes))
    w = SegmentWriter.open(tmp_path, max_segment_bytes=8 + 2 * frame_len + frame_len // 2)
    write(w, [rec(make_session) for _ in range(5)], aes)
    sizes = [p.stat().st_size for _, p in list_segments(tmp_path)]
    assert len(sizes) == 3
    assert all(size - 32 <= w.max_segment_bytes for size in sizes[:2])
    w.close()


def test_clean_shutdown_then_reopen_starts_next_segment(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    w = SegmentWriter.open(tmp_path)
    write(w, [rec(make_session)], aes)
    w.seal_and_close()
    w.seal_and_close()  # idempotent
    w2 = SegmentWriter.open(tmp_path)
    assert w2.current_segment_id == 2 and w2.recovery.new_segment
    write(w2, [rec(make_session)], aes)
    w2.close()
    assert len(list(read_wal(tmp_path, 0, aes))) == 2


def test_torn_last_record_is_truncated_then_appends_cleanly(
    tmp_path: Path, make_session: MakeSession, aes: Cipher, caplog: pytest.LogCaptureFixture
) -> None:
    w = SegmentWriter.open(tmp_path)
    records = [rec(make_session) for _ in range(3)]
    positions = write(w, records, aes)
    w.close()  # crash: no trailer
    path = tmp_path / segment_name(1)
    full = path.stat().st_size
    os.truncate(path, full - 10)  # the last frame is cut mid-payload

    stats = WalReadStats()
    with caplog.at_level(logging.WARNING, logger="tokmesh.storage"):
        assert ids(list(read_wal(tmp_path, 0, aes, stats))) == [r.entity_id for r in records[:2]]
    assert "torn tail" in caplog.text and "wal-00000001.log" in caplog.text
    assert stats.bytes_dropped == full - 10 - split_position(positions[1])[1]

    w2 = SegmentWriter.open(tmp_path)
    assert w2.current_segment_id == 1
    assert w2.position == positions[1]
    assert w2.recovery.truncated_bytes == full - 10 - split_position(positions[1])[1]
    new = rec(make_session)
    write(w2, [new], aes)
    w2.close()
    assert ids(list(read_wal(tmp_path, 0, aes))) == [
        records[0].entity_id,
        records[1].entity_id,
        new.entity_id,
    ]


def test_flipped_byte_in_middle_record_drops_rest_of_segment_only(
    tmp_path: Path, make_session: MakeSession, aes: Cipher, caplog: pytest.LogCaptureFixture
) -> None:
    w = SegmentWriter.open(tmp_path, max_segment_records=3)
    records = [rec(make_session) for _ in range(9)]
    positions = write(w, records, aes)
    w.seal_and_close()
    # Flip one byte inside record #2 (the middle record of segment 1).
    path = tmp_path / segment_name(1)
    raw = bytearray(path.read_bytes())
    start, end = split_position(positions[0])[1], split_position(positions[1])[1]
    raw[(start + end) // 2] ^= 0x04
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="tokmesh.storage"):
        got = ids(list(read_wal(tmp_path, 0, aes)))
    assert got == [records[0].entity_id] + [r.entity_id for r in records[3:]]
    assert f"wal-00000001.log: corruption (CRC mismatch) at offset {start}" in caplog.text


def test_bad_magic_segment_is_skipped(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    w = SegmentWriter.open(tmp_path, max_segment_records=2)
    records = [rec(make_session) for _ in range(6)]
    write(w, records, aes)
    w.close()
    path = tmp_path / segment_name(2)
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0xFF
    path.write_bytes(bytes(raw))
    stats = WalReadStats()
    assert ids(list(read_wal(tmp_path, 0, aes, stats))) == [
        r.entity_id for r in records[:2] + records[4:]
    ]
    assert stats.segments_skipped == 1 and any("bad magic" in m for m in stats.warnings)


def test_newest_segment_with_bad_magic_is_left_alone(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    (tmp_path / segment_name(1)).write_bytes(b"GARBAGE!" + b"\x00" * 20)
    w = SegmentWriter.open(tmp_path)
    assert w.current_segment_id == 2
    assert (tmp_path / segment_name(1)).read_bytes() == b"GARBAGE!" + b"\x00" * 20
    write(w, [rec(make_session)], aes)
    w.close()
    assert len(list(read_wal(tmp_path, 0, aes))) == 1


def test_incomplete_magic_is_rewritten(tmp_path: Path) -> None:
    (tmp_path / segment_name(1)).write_bytes(MAGIC[:3])
    w = SegmentWriter.open(tmp_path)
    assert w.current_segment_id == 1 and w.position == make_position(1, 8)
    w.close()
    assert (tmp_path / segment_name(1)).read_bytes() == MAGIC


def test_zero_filled_tail_is_truncated(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    w = SegmentWriter.open(tmp_path)
    [pos] = write(w, [rec(make_session)], aes)
    w.close()
    with (tmp_path / segment_name(1)).open("ab") as fh:
        fh.write(b"\x00" * 4096)  # what some filesystems leave after a crash
    w2 = SegmentWriter.open(tmp_path)
    assert w2.position == pos and w2.recovery.truncated_bytes == 4096
    w2.close()


def test_writer_moves_past_a_position_the_log_lost(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    w = SegmentWriter.open(tmp_path)
    positions = write(w, [rec(make_session) for _ in range(3)], aes)
    w.close()
    os.truncate(tmp_path / segment_name(1), split_position(positions[0])[1])  # tail lost
    # A snapshot already covered positions[2]: new records must land after it.
    w2 = SegmentWriter.open(tmp_path, min_position=positions[2])
    assert w2.current_segment_id == 2 and w2.position > positions[2]
    assert is_sealed((tmp_path / segment_name(1)).read_bytes())
    new = rec(make_session)
    write(w2, [new], aes)
    w2.close()
    assert ids(list(read_wal(tmp_path, positions[2], aes))) == [new.entity_id]


def test_wrong_key_is_fatal(tmp_path: Path, make_session: MakeSession, aes: Cipher) -> None:
    w = SegmentWriter.open(tmp_path)
    write(w, [rec(make_session)], aes)
    w.close()
    with pytest.raises(StorageFatalError) as info:
        list(read_wal(tmp_path, 0, Cipher(os.urandom(32), ALG_AES)))
    assert info.value.error is E.SYS_STORAGE
    assert "wal-00000001.log offset 8" in info.value.message


def test_write_failure_latches_writer(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    w = SegmentWriter.open(tmp_path)
    assert w._fd is not None
    os.close(w._fd)  # real OS failure: the descriptor is gone (EBADF)
    with pytest.raises(OSError):
        w.append(encode_record(rec(make_session), aes), 1)
    with pytest.raises(StorageFatalError):
        w.append(encode_record(rec(make_session), aes), 1)
    with pytest.raises(StorageFatalError):
        w.fsync()
    w.seal_and_close()  # no-op after failure


def test_no_plaintext_in_segment_files(
    tmp_path: Path, make_session: MakeSession, cipher: Cipher
) -> None:
    s = make_session(user_id="needle-user-8472", data={"note": "needle-value-8472"})
    w = SegmentWriter.open(tmp_path)
    w.append(encode_record(WalRecord(RecordType.CREATE, 1, s.id, 1, s.to_record()), cipher), 1)
    w.seal_and_close()
    raw = (tmp_path / segment_name(1)).read_bytes()
    for needle in (
        b"needle-user-8472",
        b"needle-value-8472",
        s.token_hash.hex().encode(),
        s.token_hash,
    ):
        assert needle not in raw
    assert cipher.alg.encode() in raw  # enc_alg recorded


def test_compaction_keeps_three_and_never_the_active(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    w = SegmentWriter.open(tmp_path, max_segment_records=1)
    write(w, [rec(make_session) for _ in range(6)], aes)  # segments 1..6, 6 active
    total = wal_size_bytes(tmp_path)
    sizes = {p.name: p.stat().st_size for _, p in list_segments(tmp_path)}
    removed, freed = compact(tmp_path, cut_segment_id=3, active_segment_id=6)
    assert removed == ["wal-00000001.log", "wal-00000002.log"]
    assert freed == sizes["wal-00000001.log"] + sizes["wal-00000002.log"]
    assert wal_size_bytes(tmp_path) == total - freed
    # Cut beyond everything: the floor of 3 segments holds.
    removed, _ = compact(tmp_path, cut_segment_id=100, active_segment_id=6)
    assert removed == ["wal-00000003.log"]
    assert [i for i, _ in list_segments(tmp_path)] == [4, 5, 6]
    # The active segment is never a candidate, even with a lower floor.
    removed, _ = compact(tmp_path, cut_segment_id=100, active_segment_id=6, min_keep=0)
    assert [i for i, _ in list_segments(tmp_path)] == [6]
    w.close()
    # Reading still works from a position inside a removed segment.
    assert len(list(read_wal(tmp_path, make_position(2, 8), aes))) == 1


def test_writer_cuts_at_crc_valid_garbage(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    w = SegmentWriter.open(tmp_path)
    [pos] = write(w, [rec(make_session)], aes)
    w.close()
    with (tmp_path / segment_name(1)).open("ab") as fh:
        fh.write(frame(1, b"this is not json"))  # intact frame, invalid record
    w2 = SegmentWriter.open(tmp_path)
    assert w2.position == pos and w2.recovery.reason == "bad JSON"
    new = rec(make_session)
    write(w2, [new], aes)
    w2.close()
    assert len(list(read_wal(tmp_path, 0, aes))) == 2  # the new record is not lost behind it


def test_missing_segments_are_reported(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    w = SegmentWriter.open(tmp_path, max_segment_records=1)
    write(w, [rec(make_session) for _ in range(4)], aes)
    w.close()
    (tmp_path / segment_name(2)).unlink()
    stats = WalReadStats()
    assert len(list(read_wal(tmp_path, 0, aes, stats))) == 3
    assert stats.warnings == [
        "WAL segments wal-00000002.log to wal-00000002.log are missing; records in them "
        "cannot be replayed"
    ]
    stats = WalReadStats()
    (tmp_path / segment_name(1)).unlink()
    assert len(list(read_wal(tmp_path, make_position(1, 8), aes, stats))) == 2
    assert "wal-00000001.log to wal-00000002.log are missing" in stats.warnings[0]


def test_writer_on_empty_dir_starts_after_min_position(tmp_path: Path) -> None:
    w = SegmentWriter.open(tmp_path, min_position=make_position(4, 500))
    assert w.current_segment_id == 5 and w.position == make_position(5, 8)
    w.close()


# ---- a batch that fails is cut off -----------------------------------------------------


class _Os:
    """The ``os`` module as ``wal_files`` sees it, with some calls replaced."""

    def __init__(self, **replaced: object) -> None:
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)


def _disk_with_room(room: int) -> Callable[[int, bytes], int]:
    """``os.write`` on a disk with ``room`` bytes free: short writes, then ENOSPC."""
    left = [room]

    def write(fd: int, data: bytes) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = os.write(fd, bytes(data[: left[0]]))
        left[0] -= n
        return n

    return write


def _eio(*_: object) -> None:
    raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_short_write_cuts_the_failed_batch_off(
    tmp_path: Path, make_session: MakeSession, aes: Cipher, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = SegmentWriter.open(tmp_path)
    acked = [rec(make_session) for _ in range(2)]
    write(w, acked, aes)  # acknowledged, not fsynced (batch mode)
    before = w.position
    frames = [encode_record(rec(make_session), aes) for _ in range(3)]
    room = len(frames[0]) + len(frames[1]) // 2  # one complete frame lands, then ENOSPC
    monkeypatch.setattr(wal_files, "os", _Os(write=_disk_with_room(room)))
    with pytest.raises(OSError) as info:
        w.append(b"".join(frames), 3)
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(StorageFatalError):  # latched
        w.append(frames[0], 1)
    monkeypatch.undo()
    # Without the cut, the batch's complete first frame would be replayed.
    assert (tmp_path / segment_name(1)).stat().st_size == split_position(before)[1]
    stats = WalReadStats()
    assert ids(list(read_wal(tmp_path, 0, aes, stats))) == [r.entity_id for r in acked]
    assert stats.warnings == []
    # The next start appends right after the acknowledged records.
    w = SegmentWriter.open(tmp_path)
    assert w.position == before and w.recovery.truncated_bytes == 0
    later = rec(make_session)
    write(w, [later], aes)
    w.close()
    assert ids(list(read_wal(tmp_path, 0, aes))) == [r.entity_id for r in [*acked, later]]


def test_failed_fdatasync_cuts_the_batch_off(
    tmp_path: Path, make_session: MakeSession, aes: Cipher, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = SegmentWriter.open(tmp_path)
    acked = rec(make_session)
    w.append(encode_record(acked, aes), 1, sync=True)
    before = w.position
    monkeypatch.setattr(wal_files, "_fdatasync", _eio)
    with pytest.raises(OSError):
        w.append(encode_record(rec(make_session), aes), 1, sync=True)
    monkeypatch.undo()
    # The whole batch was written; the failed fdatasync refused it, so it is gone.
    assert (tmp_path / segment_name(1)).stat().st_size == split_position(before)[1]
    assert ids(list(read_wal(tmp_path, 0, aes))) == [acked.entity_id]


def test_cut_mark_when_the_segment_cannot_be_truncated(
    tmp_path: Path,
    make_session: MakeSession,
    aes: Cipher,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = SegmentWriter.open(tmp_path)
    acked = [rec(make_session) for _ in range(2)]
    write(w, acked, aes)
    before_off = split_position(w.position)[1]
    frames = [encode_record(rec(make_session), aes) for _ in range(3)]
    room = len(frames[0]) + len(frames[1]) // 2
    monkeypatch.setattr(wal_files, "os", _Os(write=_disk_with_room(room), ftruncate=_eio))
    with caplog.at_level(logging.ERROR, logger="tokmesh.storage"), pytest.raises(OSError):
        w.append(b"".join(frames), 3)
    monkeypatch.undo()
    assert "marked cut at offset" in caplog.text
    path = tmp_path / segment_name(1)
    buf = path.read_bytes()
    assert len(buf) == before_off + room  # the failed bytes are still there...
    assert buf[before_off : before_off + len(CUT_MARK)] == CUT_MARK  # ...behind the mark
    stats = WalReadStats()
    assert ids(list(read_wal(tmp_path, 0, aes, stats))) == [r.entity_id for r in acked]
    assert stats.warnings == [
        f"WAL segment {path.name}: a write that failed was cut off at offset {before_off}; "
        f"its {room} bytes (never acknowledged) are not replayed"
    ]
    # The next start truncates at the mark and appends cleanly after it.
    w = SegmentWriter.open(tmp_path)
    assert w.recovery.truncated_bytes == room
    assert w.recovery.reason == "cut mark of a failed write"
    later = rec(make_session)
    write(w, [later], aes)
    w.close()
    stats = WalReadStats()
    got = ids(list(read_wal(tmp_path, 0, aes, stats)))
    assert got == [r.entity_id for r in [*acked, later]] and stats.warnings == []


def test_batch_that_cannot_be_cut_off_says_how_to_fix_it(
    tmp_path: Path,
    make_session: MakeSession,
    aes: Cipher,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = SegmentWriter.open(tmp_path)
    write(w, [rec(make_session)], aes)
    offset = split_position(w.position)[1]
    frames = [encode_record(rec(make_session), aes) for _ in range(2)]
    monkeypatch.setattr(
        wal_files,
        "os",
        _Os(write=_disk_with_room(len(frames[0]) + 20), ftruncate=_eio, pwrite=_eio),
    )
    with caplog.at_level(logging.ERROR, logger="tokmesh.storage"), pytest.raises(OSError):
        w.append(b"".join(frames), 2)
    monkeypatch.undo()
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    path = tmp_path / segment_name(1)
    assert f"truncate -s {offset} {path}" in critical[0].getMessage()
