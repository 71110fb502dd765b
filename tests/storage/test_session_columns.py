"""Column layout of snapshot chunks: round trips, sharing, old layouts, malformed chunks."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokmesh.domain.session import ROW_FIELDS, Session
from tokmesh.storage.cipher import Cipher
from tokmesh.storage.recovery import PlainTable
from tokmesh.storage.session_columns import ColumnDecoder, encode_columns
from tokmesh.storage.snapshot_codec import (
    CHUNK_RECORDS,
    LAYOUT_COLUMNS,
    SnapshotCorrupt,
    encode_chunk,
    encode_header,
    encode_keys,
)
from tokmesh.storage.snapshot_files import load_newest_valid, read_snapshot, write_snapshot

from .conftest import HOUR_MS, NOW_MS, MakeSession


def _round_trip(sessions: list[Session]) -> list[Session]:
    ids, records = ColumnDecoder().decode(encode_columns(sessions))
    assert ids == [s.id for s in sessions]
    return records


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    picks=st.lists(st.integers(0, 3), max_size=40),
    ips=st.lists(st.text(max_size=12), min_size=4, max_size=4),
    datas=st.lists(
        st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
        min_size=4,
        max_size=4,
    ),
    ints=st.lists(st.integers(0, 2**62), min_size=4, max_size=4),
)
def test_round_trip_any_mix_of_repeated_and_distinct_values(
    make_session: MakeSession,
    picks: list[int],
    ips: list[str],
    datas: list[dict[str, str] | None],
    ints: list[int],
) -> None:
    # Values drawn from 4 choices per record: depending on the draw a column comes out
    # constant, dictionary-encoded or plain, and all three must decode the same.
    sessions = [
        make_session(
            user_id=f"user-{p}",
            ip_address=ips[p],
            last_access_ip=ips[(p + 1) % 4],
            device_id="" if p % 2 else f"dev-{p}",
            data=datas[p],
            created_at=ints[p],
            expires_at=ints[(p + 2) % 4],
            version=p + 1,
            is_deleted=p == 3,
            idle_timeout=ints[p] if p == 1 else 0,
        )
        for p in picks
    ]
    assert _round_trip(sessions) == sessions


def test_encoding_choice_per_column(make_session: MakeSession) -> None:
    sessions = [make_session(user_id=f"u{i // 2}", expires_at=NOW_MS + i) for i in range(8)]
    cols = encode_columns(sessions)
    assert cols["n"] == 8
    assert cols["ttl"] == {"v": [HOUR_MS]}  # one value: no index at all
    assert cols["user_id"] == {"v": ["u0", "u1", "u2", "u3"], "i": [0, 0, 1, 1, 2, 2, 3, 3]}
    assert cols["expires_at"] == [NOW_MS + i for i in range(8)]  # all distinct: plain
    assert cols["data"] == {"v": [{"role": "secret-data-value"}]}
    assert bytes.fromhex(cols["token_hash"]) == b"".join(s.token_hash for s in sessions)


def test_repeated_values_are_shared_objects(make_session: MakeSession) -> None:
    sessions = [make_session() for _ in range(6)]
    decoder = ColumnDecoder()
    _, first = decoder.decode(encode_columns(sessions[:3]))
    _, second = decoder.decode(encode_columns(sessions[3:]))
    records = first + second
    # one data dict for every record with the same map, even across chunks
    assert len({id(s.data) for s in records}) == 1
    assert len({id(s.user_agent) for s in records}) == 1
    assert all(s.data == {"role": "secret-data-value"} for s in records)


def test_empty_chunk_and_empty_data(make_session: MakeSession) -> None:
    assert _round_trip([]) == []
    records = _round_trip([make_session(data=None), make_session(data={})])
    assert [s.data for s in records] == [None, None]


def _good(make_session: MakeSession) -> dict[str, Any]:
    return encode_columns([make_session(user_id=f"u{i}", version=i + 1) for i in range(4)])


@pytest.mark.parametrize(
    "damage",
    [
        lambda c: c.update(n=5),
        lambda c: c.update(n=-1),
        lambda c: c.update(id=c["id"][:3]),
        lambda c: c.update(id=[*c["id"][:3], 7]),
        lambda c: c.update(token_hash=c["token_hash"][:-2]),
        lambda c: c.update(token_hash="zz" + c["token_hash"][2:]),
        lambda c: c.update(version=["1", 2, 3, 4]),
        lambda c: c.update(ttl={"v": [1, 2]}),
        lambda c: c.update(ttl={"v": []}),
        lambda c: c.update(ttl={"v": ["x"]}),
        lambda c: c.update(ip_address={"v": ["a"], "i": [0, 0, 0, 1]}),
        lambda c: c.update(ip_address={"v": ["a"], "i": [0, 0, 0, -1]}),
        lambda c: c.update(ip_address={"v": ["a"], "i": [0, 0, 0]}),
        lambda c: c.update(is_deleted=[0, 0, 0, 0]),
        lambda c: c.update(data=["x", None, None, None]),
        lambda c: c.pop("created_by"),
        lambda c: c.update(expires_at=7),
    ],
)
def test_malformed_chunks_raise(make_session: MakeSession, damage: Any) -> None:
    chunk = _good(make_session)
    damage(chunk)
    with pytest.raises((ValueError, TypeError, KeyError)):
        ColumnDecoder().decode(chunk)


def _write_raw(path: Path, header: bytes, chunks: list[Any], cipher: Cipher) -> None:
    parts = [header, *(encode_chunk(c, cipher) for c in chunks), encode_keys([], cipher)]
    body = b"".join(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body + hashlib.sha256(body).digest())


def _header(cipher: Cipher, count: int, **extra: Any) -> bytes:
    return encode_header(
        session_count=count,
        key_count=0,
        wal_last_offset=5,
        node_id="tmnd-test",
        created_at=NOW_MS,
        cipher=cipher,
        **extra,
    )


def test_row_and_object_layouts_still_load(
    tmp_path: Path, make_session: MakeSession, cipher: Cipher
) -> None:
    """Snapshots written before the column layout (rows, record objects) stay readable."""
    sessions = [make_session(user_id=f"u{i}") for i in range(5)]
    rows = tmp_path / "rows" / "snapshot-20250101000000-0001.snap"
    _write_raw(
        rows, _header(cipher, 5, fields=ROW_FIELDS), [[s.to_row() for s in sessions]], cipher
    )
    objects = tmp_path / "objects" / "snapshot-20250101000000-0001.snap"
    _write_raw(objects, _header(cipher, 5), [[s.to_record() for s in sessions]], cipher)
    for path in (rows, objects):
        loaded = read_snapshot(path, cipher)
        assert loaded.sessions == sessions


def test_malformed_column_chunk_falls_back_to_older_snapshot(
    tmp_path: Path, make_session: MakeSession, cipher: Cipher
) -> None:
    """A chunk that authenticates but does not decode is corruption (01 §9.6): the
    loader tries the next older snapshot instead of starting empty or crashing."""
    old = make_session()
    write_snapshot(tmp_path, [old], [], 3, "tmnd-test", cipher, NOW_MS - 5000)
    chunk = encode_columns([make_session()])
    chunk["version"] = ["one"]
    newer = tmp_path / "snapshot-20250101000000-0001.snap"
    _write_raw(newer, _header(cipher, 1, fields=ROW_FIELDS, layout=LAYOUT_COLUMNS), [chunk], cipher)
    with pytest.raises(SnapshotCorrupt):
        read_snapshot(newer, cipher)
    loaded = load_newest_valid(tmp_path, cipher)
    assert loaded is not None and loaded.sessions == [old]


def test_unknown_layout_is_corruption(tmp_path: Path, cipher: Cipher) -> None:
    path = tmp_path / "snapshot-20250101000000-0001.snap"
    _write_raw(path, _header(cipher, 0, layout="parquet"), [], cipher)
    with pytest.raises(SnapshotCorrupt, match="layout"):
        read_snapshot(path, cipher)


def test_column_chunk_count_must_match_header(
    tmp_path: Path, make_session: MakeSession, cipher: Cipher
) -> None:
    path = tmp_path / "snapshot-20250101000000-0001.snap"
    chunk = encode_columns([make_session(), make_session()])
    _write_raw(path, _header(cipher, 3, fields=ROW_FIELDS, layout=LAYOUT_COLUMNS), [chunk], cipher)
    with pytest.raises(SnapshotCorrupt, match="count"):
        read_snapshot(path, cipher)


def test_repeated_id_is_corruption_and_the_sink_is_cleared(
    tmp_path: Path, make_session: MakeSession, cipher: Cipher
) -> None:
    """A snapshot listing one id twice cannot come from a consistent view: it is corrupt,
    and what its first chunks put into the recovery table is dropped before the older
    snapshot loads."""
    old = make_session()
    write_snapshot(tmp_path, [old], [], 3, "tmnd-test", cipher, NOW_MS - 5000)
    a = make_session()
    many = [make_session() for _ in range(CHUNK_RECORDS)] + [a, a]  # the repeat is in chunk 2
    bad = write_snapshot(tmp_path, many, [], 4, "tmnd-test", cipher, NOW_MS)
    with pytest.raises(SnapshotCorrupt, match="malformed"):
        read_snapshot(bad.path, cipher)
    table = PlainTable()
    loaded = load_newest_valid(tmp_path, cipher, into=table)
    assert loaded is not None and loaded.info.wal_last_offset == 3
    assert table.sessions == {old.id: old}


def test_flipped_bit_in_a_chunk_is_a_checksum_failure_not_a_wrong_key(
    tmp_path: Path, make_session: MakeSession, cipher: Cipher, caplog: pytest.LogCaptureFixture
) -> None:
    """The checksum is computed beside the decoding; a damaged chunk fails its AEAD tag
    first, yet the snapshot must count as corrupt (fall back), never as undecryptable
    (fatal), exactly as when the checksum was compared before decoding."""
    old = make_session()
    write_snapshot(tmp_path, [old], [], 3, "tmnd-test", cipher, NOW_MS - 5000)
    newer = write_snapshot(
        tmp_path, [make_session() for _ in range(CHUNK_RECORDS + 10)], [], 4, "n", cipher, NOW_MS
    )
    raw = bytearray(newer.path.read_bytes())
    raw[int(len(raw) * 0.75)] ^= 0x04  # inside the first chunk's ciphertext
    newer.path.write_bytes(bytes(raw))
    with pytest.raises(SnapshotCorrupt, match="checksum mismatch"):
        read_snapshot(newer.path, cipher)
    with caplog.at_level("WARNING", logger="tokmesh.storage"):
        loaded = load_newest_valid(tmp_path, cipher)
    assert loaded is not None and loaded.sessions == [old]
    assert "checksum mismatch" in caplog.text
