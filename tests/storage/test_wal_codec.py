"""WAL frame and record codec (01 §8.2, §8.3)."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokmesh.domain.session import Session
from tokmesh.storage.cipher import ALG_AES, ALG_CHACHA, Cipher, DecryptError
from tokmesh.storage.wal_codec import (
    CUT_MARK,
    MAX_FRAME,
    RecordType,
    StopReason,
    WalCorruptError,
    WalRecord,
    decode_frames,
    decode_record,
    encode_record,
    frame,
    make_position,
    split_position,
)

from .conftest import MakeSession

KEY = bytes(range(32))
HYP = settings(
    max_examples=75,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def session_record(s: Session, rtype: RecordType = RecordType.CREATE) -> WalRecord:
    return WalRecord(rtype, s.last_active, s.id, s.version, s.to_record())


def decode_all(buf: bytes, cipher: Cipher) -> list[WalRecord]:
    scan = decode_frames(buf, 0)
    assert scan.stop is StopReason.END, scan.detail
    return [decode_record(t, p, cipher) for _, t, p in scan.frames]


def expected_body(s: Session) -> dict[str, Any]:
    body = s.to_record()
    del body["is_deleted"]  # 01 §8.2: WAL session state excludes is_deleted
    return body


text = st.text(min_size=1, max_size=40)


@HYP
@given(
    user_id=text,
    data=st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=4),
    version=st.integers(1, 2**40),
    alg=st.sampled_from([ALG_AES, ALG_CHACHA]),
    rtype=st.sampled_from([RecordType.CREATE, RecordType.UPDATE]),
)
def test_session_record_round_trip(
    make_session: MakeSession,
    user_id: str,
    data: dict[str, str],
    version: int,
    alg: str,
    rtype: RecordType,
) -> None:
    cipher = Cipher(KEY, alg)
    s = make_session(user_id=user_id, data=data, version=version)
    [rec] = decode_all(encode_record(session_record(s, rtype), cipher), Cipher(KEY, ALG_CHACHA))
    assert rec == WalRecord(rtype, s.last_active, s.id, version, expected_body(s))
    assert rec.body is not None and Session.from_record(rec.body) == s


def test_delete_and_key_put_round_trip(cipher: Cipher) -> None:
    delete = WalRecord(RecordType.DELETE, 5, "tmss-01jf8xzm7e3xqh5p8n4r6s2w0t", 0, None)
    key_body = {"key_id": "tmak-x", "role": "admin", "secret_hash": "$argon2id$v=19$abc"}
    key_put = WalRecord(RecordType.KEY_PUT, 6, "tmak-x", 3, key_body)
    buf = encode_record(delete, cipher) + encode_record(key_put, cipher)
    assert decode_all(buf, cipher) == [delete, key_put]
    payloads = [orjson.loads(p) for _, _, p in decode_frames(buf, 0).frames]
    assert payloads[0] == {"ts": 5, "sid": "tmss-01jf8xzm7e3xqh5p8n4r6s2w0t"}
    assert set(payloads[1]) == {"ts", "kid", "ver", "enc_key", "enc_alg"}
    assert b"argon2id" not in buf and b"admin" not in buf


def test_frame_layout_matches_spec(make_session: MakeSession, aes: Cipher) -> None:
    s = make_session(version=7)
    buf = encode_record(session_record(s, RecordType.UPDATE), aes)
    length, crc, rtype = struct.unpack_from(">IIB", buf)
    assert length == len(buf) - 4  # counts crc + type + payload
    assert rtype == 2
    assert crc == zlib.crc32(buf[8:])  # CRC-32/IEEE over type || payload
    payload = orjson.loads(buf[9:])
    assert set(payload) == {"ts", "sid", "ver", "enc_session", "enc_alg"}
    assert payload["sid"] == s.id and payload["ver"] == 7 and payload["enc_alg"] == ALG_AES
    blob = base64.b64decode(payload["enc_session"], validate=True)  # standard, padded
    assert len(payload["enc_session"]) % 4 == 0
    assert orjson.loads(aes.decrypt(blob, ALG_AES)) == expected_body(s)


def test_version_zero_is_omitted(make_session: MakeSession, aes: Cipher) -> None:
    s = make_session(version=0)
    buf = encode_record(session_record(s), aes)
    assert "ver" not in orjson.loads(buf[9:])
    assert decode_all(buf, aes)[0].version == 0


def test_no_plaintext_in_frames(make_session: MakeSession, cipher: Cipher) -> None:
    s = make_session(user_id="plaintext-user-xyz", data={"k": "plaintext-value-xyz"})
    buf = encode_record(session_record(s), cipher)
    for secret in (b"plaintext-user-xyz", b"plaintext-value-xyz", s.token_hash.hex().encode()):
        assert secret not in buf
    assert s.token_hash not in buf


def _assert_never_wrong(buf: bytes, original: list[WalRecord], cipher: Cipher) -> None:
    """A damaged buffer yields a prefix of the original records and then stops, or fails
    loudly - never a record that was not written."""
    scan = decode_frames(buf, 0)
    decoded = []
    for _, t, p in scan.frames:
        try:
            decoded.append(decode_record(t, p, cipher))
        except (WalCorruptError, DecryptError):
            return
    assert decoded == original[: len(decoded)]
    assert len(decoded) < len(original) or scan.stop is not StopReason.END


def test_every_single_byte_corruption_is_detected(make_session: MakeSession, aes: Cipher) -> None:
    records = [session_record(make_session()), session_record(make_session(user_id="bob"))]
    buf = b"".join(encode_record(r, aes) for r in records)
    originals = decode_all(buf, aes)
    for i in range(len(buf)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(buf)
            bad[i] ^= mask
            _assert_never_wrong(bytes(bad), originals, aes)


@HYP
@given(data=st.data())
def test_any_byte_value_corruption_is_detected(
    make_session: MakeSession, data: st.DataObject
) -> None:
    cipher = Cipher(KEY, ALG_CHACHA)
    records = [session_record(make_session()) for _ in range(3)]
    buf = b"".join(encode_record(r, cipher) for r in records)
    originals = decode_all(buf, cipher)
    i = data.draw(st.integers(0, len(buf) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != buf[i]))
    bad = bytearray(buf)
    bad[i] = value
    _assert_never_wrong(bytes(bad), originals, cipher)


def test_torn_tail_at_every_cut(make_session: MakeSession, aes: Cipher) -> None:
    first = encode_record(session_record(make_session()), aes)
    second = encode_record(session_record(make_session()), aes)
    buf = first + second
    for cut in range(len(first) + 1, len(buf)):
        scan = decode_frames(buf[:cut], 0)
        assert scan.stop is StopReason.TORN
        assert scan.stop_offset == len(first)
        assert [end for end, _, _ in scan.frames] == [len(first)]
    scan = decode_frames(buf, 0)
    assert scan.stop is StopReason.END and scan.stop_offset == len(buf)


@pytest.mark.parametrize("length", [0, 4, MAX_FRAME + 1, 0xFFFFFFFF])
def test_impossible_length_is_corruption(length: int) -> None:
    buf = struct.pack(">IIB", length, 0, 1) + b"x" * 16
    scan = decode_frames(buf, 0)
    assert scan.stop is StopReason.CORRUPT and scan.frames == []


def test_cut_mark_ends_the_frames_on_purpose(make_session: MakeSession, aes: Cipher) -> None:
    kept = encode_record(session_record(make_session()), aes)
    failed = encode_record(session_record(make_session()), aes)
    # The writer overwrites the failed batch's first header with the mark in place.
    buf = kept + CUT_MARK + failed[len(CUT_MARK) :]
    scan = decode_frames(buf, 0)
    assert scan.stop is StopReason.CUT and scan.stop_offset == len(kept)
    assert [end for end, _, _ in scan.frames] == [len(kept)]
    assert decode_frames(CUT_MARK + b"\x00", 0).stop is StopReason.CUT
    assert decode_frames(CUT_MARK, 0).stop is StopReason.TORN  # no room for a header


@pytest.mark.parametrize("rtype", [0, 5, 255])
def test_bad_type_with_valid_crc_is_corruption(rtype: int) -> None:
    good = frame(3, b'{"ts":1,"sid":"a"}')
    scan = decode_frames(good + frame(rtype, b"{}"), 0)
    assert scan.stop is StopReason.CORRUPT
    assert scan.stop_offset == len(good) and len(scan.frames) == 1
    with pytest.raises(WalCorruptError):
        decode_record(rtype, b"{}", Cipher(KEY))


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1,2]", b'{"sid":"a"}', b'{"ts":1}', b'{"ts":-1,"sid":"a"}'],
)
def test_bad_json_with_valid_crc_is_corruption(payload: bytes) -> None:
    scan = decode_frames(frame(3, payload), 0)
    assert scan.stop is StopReason.END  # the frame itself is intact...
    with pytest.raises(WalCorruptError):  # ...its record is not
        decode_record(3, payload, Cipher(KEY))


def test_plaintext_session_record_is_refused(make_session: MakeSession) -> None:
    s = make_session()
    payload = orjson.dumps({"ts": 1, "sid": s.id, "ver": 1, "session": s.to_record()})
    with pytest.raises(DecryptError):
        decode_record(1, payload, Cipher(KEY))


def test_wrong_key_is_a_decrypt_error(make_session: MakeSession, cipher: Cipher) -> None:
    buf = encode_record(session_record(make_session()), cipher)
    [(_, t, p)] = decode_frames(buf, 0).frames
    with pytest.raises(DecryptError):
        decode_record(t, p, Cipher(bytes(32), cipher.alg))


def test_swapped_encrypted_state_is_detected(make_session: MakeSession, aes: Cipher) -> None:
    a, b = make_session(), make_session()
    pa = orjson.loads(encode_record(session_record(a), aes)[9:])
    pb = orjson.loads(encode_record(session_record(b), aes)[9:])
    pa["enc_session"] = pb["enc_session"]  # valid blob, wrong record
    with pytest.raises(DecryptError):
        decode_record(1, orjson.dumps(pa), aes)


def test_positions() -> None:
    pos = make_position(3, 4096)
    assert pos == (3 << 32) | 4096
    assert split_position(pos) == (3, 4096)
    assert make_position(1, 8) < make_position(1, 9) < make_position(2, 8)
    with pytest.raises(ValueError):
        make_position(1, 2**32)
