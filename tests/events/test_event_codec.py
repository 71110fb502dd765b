"""The pure parts of the event stream: event naming, wire form, frames, parsing, and the
event notes the WAL codec carries (old records without them still decode)."""

from __future__ import annotations

import orjson
import pytest
import wsproto.frame_protocol as fp

from tokmesh.actors.event_codec import (
    EVENT_TYPES,
    SessionEvent,
    event_of,
    format_cursor,
    parse_cursor,
    parse_types,
    text_frame,
)
from tokmesh.domain.session import Session
from tokmesh.storage.cipher import Cipher
from tokmesh.storage.wal_codec import (
    RecordType,
    WalRecord,
    decode_frames,
    decode_record,
    encode_record,
)

CIPHER = Cipher(bytes(range(32)))


def session(**changes: object) -> Session:
    base = Session(
        id="tmss-01j3n5x0p9k2c7h8d4f6g1m2n3",
        user_id="alice",
        token_hash=bytes(32),
        device_id="phone",
        created_by="tmak-creator",
        created_at=1_000,
        expires_at=61_000,
        last_active=1_000,
        ttl=60_000,
        data={"secret": "value"},
    )
    return base.evolve(**changes) if changes else base


def roundtrip(record: WalRecord, notes: bool = True) -> WalRecord:
    frame = encode_record(record, CIPHER)
    ((_, rtype, payload),) = decode_frames(frame, 0).frames
    return decode_record(rtype, payload, CIPHER, notes=notes)


def test_each_kind_of_change_names_its_event_and_never_carries_secrets() -> None:
    s = session()
    created = WalRecord(RecordType.CREATE, 1_000, s.id, 1, s.to_record())
    renewed = WalRecord(
        RecordType.UPDATE,
        2_000,
        s.id,
        2,
        s.evolve(version=2).to_record(),
        {"cause": "renew", "by": "tmak-a"},
    )
    touched = WalRecord(
        RecordType.UPDATE,
        3_000,
        s.id,
        3,
        s.evolve(version=3).to_record(),
        {"cause": "touch", "by": "tmak-b"},
    )
    revoked = WalRecord(
        RecordType.DELETE,
        4_000,
        s.id,
        0,
        None,
        {"cause": "revoke", "by": "tmak-c", "user_id": "alice", "device_id": "phone", "version": 4},
    )
    expired = WalRecord(
        RecordType.DELETE,
        5_000,
        s.id,
        0,
        None,
        {"cause": "expire", "by": "", "user_id": "alice", "device_id": "phone", "version": 3},
    )
    got = [
        event_of(10 + i, roundtrip(r))
        for i, r in enumerate((created, renewed, touched, revoked, expired))
    ]
    assert [(e.type, e.by, e.version, e.at) for e in got if e] == [
        ("created", "tmak-creator", 1, 1_000),
        ("renewed", "tmak-a", 2, 2_000),
        ("touched", "tmak-b", 3, 3_000),
        ("revoked", "tmak-c", 4, 4_000),
        ("expired", "system", 3, 5_000),
    ]
    for e in got:
        assert e is not None and e.user_id == "alice" and e.device_id == "phone"
        wire = e.to_json()
        assert b"value" not in wire and b"token" not in wire and b"tmth_" not in wire
        assert orjson.loads(wire)["cursor"] == str(e.position)
    key = WalRecord(RecordType.KEY_PUT, 1, "tmak-x", 1, {"key_id": "tmak-x", "version": 1})
    assert event_of(99, key) is None
    replica = WalRecord(RecordType.UPDATE, 1, s.id, 2, s.to_record(), {"cause": "replicate"})
    assert event_of(99, replica) is None


def test_delete_notes_are_decoded_only_when_asked_and_bound_to_their_record() -> None:
    note = {"cause": "revoke", "by": "k", "user_id": "u", "device_id": "", "version": 2}
    record = WalRecord(RecordType.DELETE, 1, "tmss-a", 0, None, note)
    assert roundtrip(record).event == note
    assert roundtrip(record, notes=False) == WalRecord(RecordType.DELETE, 1, "tmss-a", 0, None)
    # The note of one record pasted into another is caught.
    frame = encode_record(record, CIPHER)
    payload = orjson.loads(decode_frames(frame, 0).frames[0][2])
    other = encode_record(WalRecord(RecordType.DELETE, 1, "tmss-b", 0, None), CIPHER)
    moved = orjson.loads(decode_frames(other, 0).frames[0][2])
    moved.update(enc_event=payload["enc_event"], enc_alg=payload["enc_alg"])
    with pytest.raises(Exception, match="does not match"):
        decode_record(RecordType.DELETE, orjson.dumps(moved), CIPHER, notes=True)


def test_records_without_notes_still_decode_and_are_named_by_their_state() -> None:
    s = session()
    # A renew sets expires_at to its own time plus the TTL; a touch does not.
    renew = s.evolve(version=2, expires_at=5_000 + 60_000, last_active=5_000)
    touch = s.evolve(version=3, last_active=6_000)
    old = [
        WalRecord(RecordType.UPDATE, 5_000, s.id, 2, renew.to_record()),
        WalRecord(RecordType.UPDATE, 6_000, s.id, 3, touch.to_record()),
        WalRecord(RecordType.DELETE, 7_000, s.id, 0, None),
    ]
    held = {s.id: ("alice", "phone", 4, True)}
    events = [event_of(1, roundtrip(r), held.get) for r in old]
    assert [(e.type, e.by) for e in events if e] == [
        ("renewed", "system"),
        ("touched", "system"),
        ("revoked", "system"),
    ]
    nothing: dict[str, tuple[str, str, int, bool]] = {}
    gone = event_of(1, roundtrip(old[2]), nothing.get)
    assert gone is not None and gone.type == "expired" and gone.user_id == ""
    # A session state written with a note reads back without the note in it.
    noted = roundtrip(
        WalRecord(RecordType.UPDATE, 1, s.id, 1, s.to_record(), {"cause": "touch", "by": ""})
    )
    assert noted.body is not None and "_event" not in noted.body


def test_cursor_types_and_frames() -> None:
    assert parse_cursor(format_cursor((7 << 32) | 123)) == (7 << 32) | 123
    for bad in ("", "-1", "1e3", "0x10", " 1", "9" * 21, str(1 << 64)):
        with pytest.raises(ValueError):
            parse_cursor(bad)
    assert parse_types(None, include_touch=False) == frozenset(EVENT_TYPES) - {"touched"}
    assert parse_types(None, include_touch=True) == frozenset(EVENT_TYPES)
    assert parse_types("created, revoked", False) == {"created", "revoked"}
    for bad in ("", ",", "created,nope", "touched"):
        with pytest.raises(ValueError):
            parse_types(bad, include_touch=False)
    # Frames as a conforming client parses them (wsproto), for each length encoding.
    for size in (0, 125, 126, 65_535, 65_536):
        payload = b"x" * size
        proto = fp.FrameProtocol(client=True, extensions=[])
        proto.receive_bytes(text_frame(payload))
        (frame,) = list(proto.received_frames())
        assert frame.opcode is fp.Opcode.TEXT and frame.message_finished
        assert frame.payload == payload.decode()


def test_event_repr_names_position_and_type() -> None:
    e = SessionEvent(0x10, "created", "tmss-x", "u", "", 1, 1, "system")
    assert "0x10" in repr(e) and "created" in repr(e)
