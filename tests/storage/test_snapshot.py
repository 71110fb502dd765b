"""Snapshot format, atomic write, loading with fallback and retention (01 §9)."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokmesh.domain.errors import E
from tokmesh.domain.session import ROW_FIELDS
from tokmesh.storage import snapshot_files
from tokmesh.storage.cipher import ALG_AES, ALG_CHACHA, Cipher, StorageFatalError
from tokmesh.storage.snapshot_codec import MAGIC, SnapshotCorrupt, decode_snapshot, encode_snapshot
from tokmesh.storage.snapshot_files import (
    SnapshotError,
    apply_retention,
    compaction_cut_segment,
    list_snapshots,
    load_newest_valid,
    peek_snapshot_info,
    read_snapshot,
    write_snapshot,
)
from tokmesh.storage.wal_codec import make_position

from .conftest import HOUR_MS, NOW_MS, MakeSession

DAY_MS = 86_400_000
KEY = bytes(range(32))
NODE = "tmnd-test-node"
KEYS: list[dict[str, Any]] = [
    {"key_id": "tmak-a", "role": "admin", "version": 2, "secret_hash": "$argon2id$x"}
]


def take(
    tmp: Path,
    sessions: list[Any],
    cipher: Cipher,
    now: int = NOW_MS,
    offset: int = 0,
    keys: list[dict[str, Any]] | None = None,
) -> Any:
    return write_snapshot(tmp, sessions, KEYS if keys is None else keys, offset, NODE, cipher, now)


def test_write_and_read_round_trip(
    tmp_path: Path, make_session: MakeSession, cipher: Cipher
) -> None:
    sessions = [make_session(), make_session(is_deleted=True, version=4), make_session(data=None)]
    info = take(tmp_path, sessions, cipher, offset=make_position(3, 1234))
    assert info.id == "snapshot-20250101000000-0001"
    assert info.path == tmp_path / "snapshot-20250101000000-0001.snap"
    assert info.size == info.path.stat().st_size
    assert info.session_count == 3 and info.key_count == 1 and info.node_id == NODE
    assert stat.S_IMODE(info.path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [info.path.name]  # no .tmp left
    loaded = read_snapshot(info.path, cipher)
    assert loaded.info == info
    assert loaded.sessions == sessions
    assert loaded.api_keys == KEYS


def test_file_format(tmp_path: Path, make_session: MakeSession, aes: Cipher) -> None:
    info = take(tmp_path, [make_session()], aes, offset=make_position(2, 99))
    raw = info.path.read_bytes()
    assert raw[:8] == MAGIC
    (hlen,) = struct.unpack_from(">I", raw, 8)
    header = orjson.loads(raw[12 : 12 + hlen])
    assert header == {
        "version": 1,
        "created_at": NOW_MS,
        "node_id": NODE,
        "session_count": 1,
        "wal_last_offset": make_position(2, 99),
        "encrypted": True,
        "enc_alg": ALG_AES,
        "key_count": 1,
        "chunk_records": 2048,
        "fields": list(ROW_FIELDS),
        "layout": "columns",
    }
    # one session chunk, then the u32 0 end marker, then the key part
    (clen,) = struct.unpack_from(">I", raw, 12 + hlen)
    end_marker = 12 + hlen + 4 + clen
    assert struct.unpack_from(">I", raw, end_marker) == (0,)
    kpos = end_marker + 4
    (klen,) = struct.unpack_from(">Q", raw, kpos)
    assert kpos + 8 + klen + 32 == len(raw)
    assert raw[-32:] == hashlib.sha256(raw[:-32]).digest()
    assert info.checksum == raw[-32:].hex()
    peek = peek_snapshot_info(info.path)
    assert peek == info


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(0, 20),
    user_ids=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=5),
    keys=st.lists(
        st.dictionaries(
            st.text(max_size=8), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8), max_size=3
        ),
        max_size=3,
    ),
    alg=st.sampled_from([ALG_AES, ALG_CHACHA]),
)
def test_codec_round_trip(
    make_session: MakeSession, n: int, user_ids: list[str], keys: list[dict[str, Any]], alg: str
) -> None:
    cipher = Cipher(KEY, alg)
    sessions = [
        make_session(user_id=user_ids[i % len(user_ids)], version=i + 1).to_record()
        for i in range(n)
    ]
    enc = encode_snapshot(
        sessions, keys, wal_last_offset=n, node_id="", created_at=7, cipher=cipher
    )
    header, got_sessions, got_keys, checksum = decode_snapshot(
        b"".join(enc.chunks) + enc.checksum, Cipher(KEY, ALG_CHACHA)
    )
    assert (got_sessions, got_keys, checksum) == (sessions, keys, enc.checksum)
    assert header.session_count == n and header.wal_last_offset == n and header.enc_alg == alg


def test_every_single_byte_corruption_is_detected(make_session: MakeSession, aes: Cipher) -> None:
    enc = encode_snapshot(
        [make_session().to_record()],
        KEYS,
        wal_last_offset=1,
        node_id=NODE,
        created_at=1,
        cipher=aes,
    )
    buf = b"".join(enc.chunks) + enc.checksum
    for i in range(len(buf)):
        bad = bytearray(buf)
        bad[i] ^= 0x01 << (i % 8)
        with pytest.raises(SnapshotCorrupt):
            decode_snapshot(bytes(bad), aes)


def test_truncation_is_corruption(make_session: MakeSession, aes: Cipher) -> None:
    enc = encode_snapshot(
        [make_session().to_record()], [], wal_last_offset=1, node_id=NODE, created_at=1, cipher=aes
    )
    buf = b"".join(enc.chunks) + enc.checksum
    for cut in (0, 5, 12, len(buf) // 2, len(buf) - 1):
        with pytest.raises(SnapshotCorrupt):
            decode_snapshot(buf[:cut], aes)


def test_wrong_key_is_fatal_not_a_fallback(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    take(tmp_path, [make_session()], aes)
    other = Cipher(os.urandom(32), ALG_AES)
    with pytest.raises(StorageFatalError) as info:
        read_snapshot(list_snapshots(tmp_path)[0], other)
    assert info.value.error is E.SYS_STORAGE
    with pytest.raises(StorageFatalError):
        load_newest_valid(tmp_path, other)


def test_plaintext_snapshot_is_fatal(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    header = orjson.dumps(
        {
            "version": 1,
            "created_at": 1,
            "session_count": 1,
            "wal_last_offset": 0,
            "encrypted": False,
        }
    )
    data = orjson.dumps([make_session().to_record()])
    body = (
        MAGIC
        + struct.pack(">I", len(header))
        + header
        + struct.pack(">Q", len(data))
        + data
        + struct.pack(">Q", 2)
        + b"[]"
    )
    path = tmp_path / "snapshot-20250101000000-0001.snap"
    path.write_bytes(body + hashlib.sha256(body).digest())
    with pytest.raises(StorageFatalError):
        load_newest_valid(tmp_path, aes)


def test_aes_snapshot_readable_where_chacha_is_preferred(
    tmp_path: Path, make_session: MakeSession, key: bytes
) -> None:
    s = make_session()
    take(tmp_path, [s], Cipher(key, ALG_AES))
    loaded = load_newest_valid(tmp_path, Cipher(key, ALG_CHACHA))
    assert loaded is not None and loaded.sessions == [s]


def test_names_get_sequence_numbers_within_a_second(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    a = take(tmp_path, [make_session()], aes)
    b = take(tmp_path, [make_session()], aes, now=NOW_MS + 999)
    c = take(tmp_path, [make_session()], aes, now=NOW_MS + 1000)
    assert [a.id, b.id, c.id] == [
        "snapshot-20250101000000-0001",
        "snapshot-20250101000000-0002",
        "snapshot-20250101000001-0001",
    ]
    assert list_snapshots(tmp_path) == [c.path, b.path, a.path]


def test_a_killed_writers_temp_file_does_not_block_the_next_snapshot(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    # A snapshot cancelled by a shutdown has its child process killed, which leaves its
    # temporary file; the shutdown's own snapshot comes within the same second.
    (tmp_path / "snapshot-20250101000000-0001.tmp").write_bytes(b"partial")
    info = take(tmp_path, [make_session()], aes)
    assert info.id == "snapshot-20250101000000-0002"
    assert list_snapshots(tmp_path) == [info.path]


def test_failed_write_leaves_no_temp_and_keeps_older(
    tmp_path: Path, make_session: MakeSession, aes: Cipher, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = take(tmp_path, [make_session()], aes, now=NOW_MS - 5000)

    def rename_fails(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    # The final rename fails, as on a disk error (root ignores permissions here).
    monkeypatch.setattr(snapshot_files.os, "rename", rename_fails)
    with pytest.raises(SnapshotError) as info:
        take(tmp_path, [make_session()], aes)
    assert info.value.error is E.SYS_BACKUP
    assert not list(tmp_path.glob("*.tmp"))
    assert older.path.exists()


def test_corrupt_newest_falls_back_to_older(
    tmp_path: Path, make_session: MakeSession, aes: Cipher, caplog: pytest.LogCaptureFixture
) -> None:
    s_old, s_new = make_session(), make_session()
    old = take(tmp_path, [s_old], aes, now=NOW_MS - 2000, offset=10)
    new = take(tmp_path, [s_old, s_new], aes, now=NOW_MS - 1000, offset=20)
    raw = bytearray(new.path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    new.path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="tokmesh.storage"):
        loaded = load_newest_valid(tmp_path, aes)
    assert loaded is not None and loaded.info.id == old.id
    assert loaded.sessions == [s_old] and loaded.info.wal_last_offset == 10
    assert new.path.name in caplog.text and "checksum mismatch" in caplog.text


def test_truncated_newest_falls_back_and_stale_tmp_is_cleaned(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    old = take(tmp_path, [make_session()], aes, now=NOW_MS - 2000)
    new = take(tmp_path, [make_session()], aes, now=NOW_MS - 1000)
    os.truncate(new.path, new.size - 40)
    (tmp_path / "snapshot-20250101000000-0001.tmp").write_bytes(b"partial")
    loaded = load_newest_valid(tmp_path, aes)
    assert loaded is not None and loaded.info.id == old.id
    assert not list(tmp_path.glob("*.tmp"))


def test_none_valid_logs_error(
    tmp_path: Path, make_session: MakeSession, aes: Cipher, caplog: pytest.LogCaptureFixture
) -> None:
    assert load_newest_valid(tmp_path, aes) is None
    assert load_newest_valid(tmp_path / "missing", aes) is None
    info = take(tmp_path, [make_session()], aes)
    info.path.write_bytes(b"TOKMSNAP" + b"\x00" * 50)
    with caplog.at_level(logging.ERROR, logger="tokmesh.storage"):
        assert load_newest_valid(tmp_path, aes) is None
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_no_plaintext_in_snapshot_file(
    tmp_path: Path, make_session: MakeSession, cipher: Cipher
) -> None:
    s = make_session(user_id="needle-user-5521", data={"k": "needle-value-5521"})
    info = take(
        tmp_path, [s], cipher, keys=[{"key_id": "tmak-b", "secret_hash": "needle-hash-5521"}]
    )
    raw = info.path.read_bytes()
    for needle in (
        b"needle-user-5521",
        b"needle-value-5521",
        b"needle-hash-5521",
        s.token_hash.hex().encode(),
        s.token_hash,
    ):
        assert needle not in raw


def _names_at(
    tmp_path: Path, ages_ms: list[int], cipher: Cipher, make_session: MakeSession
) -> list[str]:
    return [take(tmp_path, [make_session()], cipher, now=NOW_MS - age).path.name for age in ages_ms]


def test_retention_count_union_days(tmp_path: Path, make_session: MakeSession, aes: Cipher) -> None:
    # 7 snapshots: 10, 9, 8, 3, 2, 1 days and 1 hour old.
    ages = [10 * DAY_MS, 9 * DAY_MS, 8 * DAY_MS, 3 * DAY_MS, 2 * DAY_MS, DAY_MS, HOUR_MS]
    names = _names_at(tmp_path, ages, aes, make_session)
    removed = apply_retention(tmp_path, count=5, days=7, now_ms=NOW_MS)
    assert removed == [names[1], names[0]]  # newest 5 kept; the older two are > 7 days
    assert [p.name for p in list_snapshots(tmp_path)] == list(reversed(names[2:]))
    # count=2 ∪ 7 days: the 8-day-old one goes, the 4 recent ones stay.
    assert apply_retention(tmp_path, count=2, days=7, now_ms=NOW_MS) == [names[2]]
    # count=1, 1 day: the newest always stays.
    removed = apply_retention(tmp_path, count=1, days=1, now_ms=NOW_MS + 30 * DAY_MS)
    assert [p.name for p in list_snapshots(tmp_path)] == [names[-1]]
    assert len(removed) == 3


def test_compaction_cut_uses_second_newest(
    tmp_path: Path, make_session: MakeSession, aes: Cipher
) -> None:
    assert compaction_cut_segment(tmp_path) is None
    take(tmp_path, [make_session()], aes, now=NOW_MS - 3000, offset=make_position(2, 100))
    assert compaction_cut_segment(tmp_path) == 2
    take(tmp_path, [make_session()], aes, now=NOW_MS - 2000, offset=make_position(5, 100))
    take(tmp_path, [make_session()], aes, now=NOW_MS - 1000, offset=make_position(9, 100))
    assert compaction_cut_segment(tmp_path) == 5


def test_many_chunks_round_trip(tmp_path: Path, make_session: MakeSession, cipher: Cipher) -> None:
    """More sessions than one chunk holds: split into several encrypted chunks and back."""
    from tokmesh.storage.snapshot_codec import CHUNK_RECORDS

    sessions = [make_session() for _ in range(CHUNK_RECORDS * 2 + 5)]
    info = take(tmp_path, sessions, cipher, offset=make_position(1, 8))
    loaded = read_snapshot(info.path, cipher)
    assert loaded.sessions == sessions
    assert info.session_count == len(sessions)
