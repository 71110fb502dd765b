"""The backup format and its helpers (03 §4.3): ids, magic, ranges, multipart, verification,
WAL times, and the restore service against a real engine (real files, real fsync)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tokmesh.actors.engine import StorageEngine
from tokmesh.api.backups import MultipartError, MultipartParser
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.session import Session
from tokmesh.readiness import Phase
from tokmesh.services.backups import (
    BAK_MAGIC,
    STATUS_FAILED,
    STATUS_IDLE,
    BackupInvalid,
    BackupService,
    BakReader,
    MagicStripper,
    RangeNotSatisfiable,
    SnapshotCatalogue,
    UploadFile,
    WalLogReader,
    WalTimes,
    bak_checksum,
    file_name_for,
    parse_range,
    snapshot_id_for,
    verify_snapshot_file,
)
from tokmesh.services.sessions import local_sessions
from tokmesh.storage import snapshot_files
from tokmesh.storage.cipher import Cipher

from .conftest import CTX, EngineRunner

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


# ---------------------------------------------------------------------------- ids


def test_snapshot_id_mapping_examples() -> None:
    assert snapshot_id_for("snapshot-20251217103000-0001.snap") == "snap-20251217-103000"
    assert snapshot_id_for("snapshot-20251217103000-0012.snap") == "snap-20251217-103000-12"
    assert snapshot_id_for("snapshot-20251217103000-0001.tmp") is None
    assert snapshot_id_for("wal-00000001.log") is None
    assert file_name_for("snap-20251217-103000") == "snapshot-20251217103000-0001.snap"
    assert file_name_for("snap-20251217-103000-12") == "snapshot-20251217103000-0012.snap"
    # Non-canonical spellings never resolve: the mapping stays one-to-one.
    for bad in (
        "snap-20251217-103000-1",
        "snap-20251217-103000-012",
        "snap-2025-1030",
        "../snapshot-20251217103000-0001.snap",
        "snap-20251217-103000-0",
    ):
        assert file_name_for(bad) is None, bad


@settings(max_examples=150, deadline=None)
@given(
    st.integers(min_value=0, max_value=99_999_999),
    st.integers(min_value=0, max_value=999_999),
    st.integers(min_value=1, max_value=9999),
)
def test_snapshot_id_round_trip(day: int, hms: int, seq: int) -> None:
    name = f"snapshot-{day:08d}{hms:06d}-{seq:04d}.snap"
    sid = snapshot_id_for(name)
    assert sid is not None
    assert file_name_for(sid) == name


# ---------------------------------------------------------------------------- magic


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=250), max_size=6))
def test_magic_stripper_any_split(payload: bytes, cuts: list[int]) -> None:
    data = BAK_MAGIC + payload
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    stripper = MagicStripper()
    out = b"".join(stripper.feed(p) for p in pieces)
    stripper.finish()
    assert out == payload


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=len(BAK_MAGIC) - 1), st.integers(1, 255))
def test_magic_stripper_rejects_any_wrong_byte(index: int, flip: int) -> None:
    bad = bytearray(BAK_MAGIC + b"rest")
    bad[index] ^= flip
    stripper = MagicStripper()
    with pytest.raises(BackupInvalid) as info:
        for i in range(len(bad)):
            stripper.feed(bytes(bad[i : i + 1]))
    assert info.value.error is E.ADMIN_UNPROCESSABLE


def test_magic_stripper_short_stream() -> None:
    stripper = MagicStripper()
    assert stripper.feed(BAK_MAGIC[:5]) == b""
    with pytest.raises(BackupInvalid):
        stripper.finish()


# ---------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("bytes=0-99", (0, 99)),
        ("bytes=10-", (10, 999)),
        ("bytes=-100", (900, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=990-5000", (990, 999)),
        ("bytes=999-999", (999, 999)),
        ("BYTES = 5-6", (5, 6)),
        ("bytes=0-1,5-6", None),  # several ranges: whole file
        ("items=0-1", None),
        ("bytes=abc", None),
        ("bytes=5-2", None),
        ("bytes=-", None),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-2000", "bytes=-0"])
def test_parse_range_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 1000)


# ---------------------------------------------------------------------------- multipart


def _multipart(boundary: bytes, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b"preamble to ignore\r\n"
    for name, filename, content in parts:
        disp = f'form-data; name="{name}"'
        if filename is not None:
            disp += f'; filename="{filename}"'
        out += b"--" + boundary + b"\r\n"
        out += f"Content-Disposition: {disp}\r\n".encode()
        out += b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
    return out + b"--" + boundary + b"--\r\nepilogue"


def _parse(parser: MultipartParser, pieces: list[bytes]) -> list[tuple[str, str | None, bytes]]:
    parts: list[tuple[str, str | None, bytes]] = []
    for piece in pieces:
        for ev in parser.feed(piece):
            if ev[0] == "part":
                parts.append((ev[1], ev[2], b""))
            elif ev[0] == "data":
                name, fn, data = parts[-1]
                parts[-1] = (name, fn, data + ev[1])
    return parts


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=300),
    st.lists(st.integers(min_value=0, max_value=600), max_size=8),
)
def test_multipart_any_chunking(content: bytes, cuts: list[int]) -> None:
    boundary = b"----tmb7x"
    # Content that nearly looks like a delimiter must come through untouched.
    content = content + b"\r\n------tmb7!" + content[:10] + b"\r\n--"
    assume(b"\r\n------tmb7x" not in content)
    body = _multipart(boundary, [("file", "snap-x.bak", content), ("note", None, b"hi")])
    points = sorted({min(c, len(body)) for c in cuts})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    parser = MultipartParser(boundary)
    parts = _parse(parser, pieces)
    assert parser.complete
    assert parts == [("file", "snap-x.bak", content), ("note", None, b"hi")]


def test_multipart_incomplete_and_malformed() -> None:
    boundary = b"XyZ"
    body = _multipart(boundary, [("file", "a.bak", b"data")])
    parser = MultipartParser(boundary)
    parser.feed(body[:-20])
    assert not parser.complete
    with pytest.raises(MultipartError):
        MultipartParser(boundary).feed(b"--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--")
    with pytest.raises(MultipartError):
        MultipartParser(boundary).feed(b"--XyZ\r\n" + b"X-Long: " + b"a" * 20000)


# ---------------------------------------------------------------------------- verification


def _snapshot(tmp_path: Path, key: bytes = KEY_A, n: int = 20) -> Path:
    cipher = Cipher(key)
    sessions = [
        Session.from_record(
            {
                "id": f"tmss-01jf8xzm7e3xqh5p8n4r6s2w{i:02d}",
                "user_id": f"u{i}",
                "token_hash": "tmth_" + hashlib.sha256(str(i).encode()).hexdigest(),
                "created_at": 1_750_000_000_000,
                "expires_at": 4_000_000_000_000,
                "last_active": 1_750_000_000_000,
                "version": 1,
            }
        )
        for i in range(n)
    ]
    info = snapshot_files.write_snapshot(
        tmp_path, sessions, [{"key_id": "tmak-x"}], 0, "tmnd-test", cipher, 1_750_000_000_000
    )
    return info.path


def test_verify_snapshot_file_accepts_a_real_snapshot(tmp_path: Path) -> None:
    path = _snapshot(tmp_path)
    header = verify_snapshot_file(path, Cipher(KEY_A))
    assert header.session_count == 20
    assert header.key_count == 1


@pytest.mark.parametrize("where", [0.1, 0.5, 0.99])
def test_verify_snapshot_file_rejects_a_flipped_byte(tmp_path: Path, where: float) -> None:
    path = _snapshot(tmp_path)
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BackupInvalid):
        verify_snapshot_file(path, Cipher(KEY_A))


def test_verify_snapshot_file_rejects_truncation_empty_and_other_key(tmp_path: Path) -> None:
    path = _snapshot(tmp_path)
    data = path.read_bytes()
    other = tmp_path / "other.snap"
    with pytest.raises(BackupInvalid) as info:
        verify_snapshot_file(path, Cipher(KEY_B))
    assert "different key" in info.value.message
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        other.write_bytes(data[:cut])
        with pytest.raises(BackupInvalid):
            verify_snapshot_file(other, Cipher(KEY_A))
    other.write_bytes(data + b"x")
    with pytest.raises(BackupInvalid):
        verify_snapshot_file(other, Cipher(KEY_A))


def test_bak_checksum_is_sha256_of_magic_plus_file(tmp_path: Path) -> None:
    path = _snapshot(tmp_path)
    expected = hashlib.sha256(BAK_MAGIC + path.read_bytes()).hexdigest()
    assert bak_checksum(path) == "sha256:" + expected


def test_catalogue_caches_checksum_and_drops_orphan_sidecars(tmp_path: Path) -> None:
    path = _snapshot(tmp_path)
    cat = SnapshotCatalogue(tmp_path)
    cat.annotate(path, description="nightly", kind="manual")
    items, total = cat.page(1, 20)
    assert total == 1
    entry = items[0]
    assert entry.snapshot_id == snapshot_id_for(path.name)
    assert entry.description == "nightly" and entry.type == "manual"
    assert entry.size_bytes == len(BAK_MAGIC) + path.stat().st_size
    assert cat.find(entry.snapshot_id).checksum == entry.checksum
    with pytest.raises(TokMeshError) as info:
        cat.find("snap-19990101-000000")
    assert info.value.error is E.ADMIN_NOT_FOUND
    path.unlink()
    assert cat.page(1, 20) == ([], 0)
    assert not list(tmp_path.glob("*.meta"))


async def test_bak_reader_spans(tmp_path: Path) -> None:
    path = _snapshot(tmp_path)
    whole = BAK_MAGIC + path.read_bytes()
    for first, last in [
        (0, len(whole) - 1),
        (0, 3),
        (5, 40),
        (15, 15),
        (len(whole) - 7, len(whole) - 1),
    ]:
        reader = await BakReader.open(path, first, last)
        got = b"".join([chunk async for chunk in reader])
        assert got == whole[first : last + 1]
    # aclose without iterating closes the file too
    reader = await BakReader.open(path, 0, 10)
    await reader.aclose()


async def test_upload_file_strips_magic_and_refuses_a_bad_one(tmp_path: Path) -> None:
    up = UploadFile(tmp_path / "upload-a.part")
    await up.open()
    payload = os.urandom(3 << 20)
    data = BAK_MAGIC + payload
    for i in range(0, len(data), 65536):
        await up.write(data[i : i + 65536])
    await up.finish()
    assert (tmp_path / "upload-a.part").read_bytes() == payload
    bad = UploadFile(tmp_path / "upload-b.part")
    await bad.open()
    with pytest.raises(BackupInvalid):
        await bad.write(b"hello world, not a backup")
    await bad.discard()
    assert not (tmp_path / "upload-b.part").exists()


# ---------------------------------------------------------------------------- service + engine


async def _fill(engine: StorageEngine, n: int, prefix: str) -> dict[str, Any]:
    svc = local_sessions(engine)
    assert svc is not None
    out = {}
    for i in range(n):
        created = await svc.create(CTX, f"{prefix}{i}")
        out[created.session.id] = created
    return out


async def test_restore_job_from_snapshot_round_trip(runner: EngineRunner) -> None:
    engine = await runner.start()
    backups = BackupService(engine)
    async with trio.open_nursery() as nursery:
        await nursery.start(backups.run)
        first = await _fill(engine, 30, "a")
        entry = await backups.create_snapshot("before b", kind="manual")
        assert entry.session_count == 30
        await _fill(engine, 10, "b")
        assert len(engine.state.sessions) == 40
        backups.claim()
        with pytest.raises(TokMeshError) as info:
            backups.claim()
        assert info.value.error is E.ADMIN_CONFLICT
        job = await backups.start_from_snapshot(entry.snapshot_id)
        with pytest.raises(TokMeshError) as info:
            await backups.create_snapshot("during restore")
        assert info.value.error is E.ADMIN_CONFLICT
        with trio.fail_after(20):
            await job.done.wait()
        assert job.status == STATUS_IDLE, job.message
        assert job.progress == 100 and job.finished_at >= job.started_at
        assert set(engine.state.sessions) == set(first)
        assert engine.readiness.phase is Phase.READY
        assert not backups.restore_running
        nursery.cancel_scope.cancel()


async def test_restore_job_failure_leaves_state(runner: EngineRunner, tmp_path: Path) -> None:
    engine = await runner.start()
    backups = BackupService(engine)
    await _fill(engine, 5, "a")
    # A snapshot made with another key is refused before the job starts (422)...
    foreign = _snapshot(tmp_path / "foreign", key=KEY_B)
    up = UploadFile(backups.catalogue.new_upload_path())
    await up.open()
    await up.write(BAK_MAGIC + foreign.read_bytes())
    await up.finish()
    backups.claim()
    with pytest.raises(BackupInvalid):
        await backups.start_from_upload(up)
    backups.release()
    await up.discard()
    assert len(engine.state.sessions) == 5
    assert engine.readiness.phase is Phase.READY
    # ...and a job whose source vanished fails cleanly, state untouched.
    entry = await backups.create_snapshot()
    backups.claim()
    job = await backups.start_from_snapshot(entry.snapshot_id)
    job.source.unlink()
    with trio.fail_after(20):
        await job.done.wait()
    assert job.status == STATUS_FAILED
    assert len(engine.state.sessions) == 5


async def test_wal_times_and_status(runner: EngineRunner) -> None:
    engine = await runner.start()
    await _fill(engine, 3, "w")
    backups = BackupService(engine)
    status = await backups.wal_status()
    assert status["enabled"] is True and status["sync_mode"] == "sync"
    assert status["total_segments"] >= 1 and status["total_size_bytes"] > 0
    assert status["current_segment"] == engine.wal.current_segment_id  # type: ignore[union-attr]
    assert status["last_offset"] == engine.wal.position  # type: ignore[union-attr]
    assert 0 < status["oldest_entry_time"] <= status["newest_entry_time"]
    times = WalTimes()
    assert times.times(engine.settings.wal_dir) == (
        status["oldest_entry_time"],
        status["newest_entry_time"],
    )


async def test_wal_log_reader_positions_and_follow(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    wal.mkdir()
    one, two = os.urandom(1000), os.urandom(700)
    (wal / "wal-00000001.log").write_bytes(one)
    (wal / "wal-00000002.log").write_bytes(two)

    async def read(position: int, limit: int) -> bytes:
        return b"".join([c async for c in WalLogReader(wal, position, limit, False)])

    assert await read(0, 10_000) == one + two
    assert await read(0, 16) == one[:16]
    assert await read((1 << 32) | 990, 30) == one[990:] + two[:20]
    assert await read((2 << 32) | 100, 10_000) == two[100:]
    assert await read((2 << 32) | 5000, 10) == b""
    assert await read(9 << 32, 10) == b""
    # follow: waits for bytes appended later, also in a new segment
    reader = WalLogReader(wal, (2 << 32) | 700, 1, True, poll=0.01)
    got: list[bytes] = []

    async def consume() -> None:
        async for chunk in reader:
            got.append(chunk)
            if sum(map(len, got)) >= 8:
                await reader.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.sleep(0.05)
        with open(wal / "wal-00000002.log", "ab") as fh:
            fh.write(b"abcd")
        await trio.sleep(0.05)
        (wal / "wal-00000003.log").write_bytes(b"efgh")
    assert b"".join(got) == b"abcdefgh"
