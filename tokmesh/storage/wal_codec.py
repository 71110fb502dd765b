"""Sans-IO codec of WAL frames and records (01 §8.2, §8.3).

A segment is ``magic(8) · frames… · [trailer(32)]``; a frame is
``[len:u32 BE][crc:u32 BE][type:u8][payload: len-5 bytes]`` where ``len`` counts crc + type +
payload and ``crc`` is CRC-32/IEEE over ``type ‖ payload``. The payload is a UTF-8 JSON
object; session and API-key state inside it is always encrypted (``enc_session`` /
``enc_key`` = standard padded Base64 of ``nonce ‖ ciphertext ‖ tag``, plus ``enc_alg``).

Record types 1–3 are the spec's. ``KEY_PUT`` (4) is a TokMesh addition: a full-state upsert
of an API key record, so API keys are durable through the same WAL as sessions.

Records may also carry an *event note* (:attr:`WalRecord.event`): what caused the change
and which API key asked for it, which the session event stream needs when it replays the
WAL and the state alone cannot tell (a touch and a renew both log an UPDATE; a DELETE logs
no state). It is always encrypted: inside the session state under ``_event`` for
CREATE/UPDATE, as its own ``enc_event`` blob for DELETE. Both are optional, so records
written before notes existed still decode, and readers that predate notes ignore them.
"""

from __future__ import annotations

import base64
import binascii
import enum
import struct
import zlib
from binascii import a2b_base64
from typing import Any

import attrs
import orjson

from tokmesh.storage.cipher import Cipher, DecryptError

MAGIC = b"TOKMWAL\x01"
MAGIC_LEN = len(MAGIC)
TRAILER_LEN = 32
#: Bytes before a frame's payload: len(4) + crc(4) + type(1).
FRAME_HEADER_LEN = 9
#: Sanity cap on a frame's ``len`` field; anything larger is corruption (01 §8.2).
MAX_FRAME = 16 * 1024 * 1024
MIN_FRAME_LEN = 5
#: Written over the first frame header of a batch that failed when the writer could not
#: truncate it away: a zero ``len`` (no real frame has one) followed by ``CUT!``. Every
#: reader stops there, so no record of a batch its callers were told had failed is ever
#: replayed; the writer truncates the segment at the mark on its next start.
CUT_MARK = b"\x00\x00\x00\x00CUT!"

_HEAD = struct.Struct(">IIB")
_LEN_CRC = struct.Struct(">II")


class RecordType(enum.IntEnum):
    """Frame type byte. 0 and anything else are invalid (corruption)."""

    CREATE = 1
    UPDATE = 2
    DELETE = 3
    #: TokMesh addition: full-state upsert of an API key record.
    KEY_PUT = 4


_VALID_TYPES = frozenset(int(t) for t in RecordType)
_TYPE_BY_BYTE: dict[int, RecordType] = {int(t): t for t in RecordType}
_SESSION_BODY_TYPES = (RecordType.CREATE, RecordType.UPDATE)


class WalCorruptError(ValueError):
    """A CRC-valid frame whose payload is not a well-formed record (bad JSON, missing or
    mistyped field, bad Base64). Readers treat it like a CRC failure (drop rest of segment)."""


@attrs.frozen(slots=True)
class WalRecord:
    """One logical WAL record.

    ``entity_id`` is the session id (``sid``) or, for ``KEY_PUT``, the API key id (``kid``).
    ``body`` is the full plaintext state: ``Session.to_record()`` for CREATE/UPDATE (the
    codec leaves out ``is_deleted``, which 01 §8.2 excludes from WAL session state), an
    opaque dict for KEY_PUT, ``None`` for DELETE. ``version`` is 0 for DELETE (not logged).

    ``event`` is the optional event note (see the module doc): ``cause`` (``touch``,
    ``renew``, ``update``, ``revoke``, ``expire``) and ``by`` (the API key id, empty for
    the system) and, for a DELETE, the ``user_id``, ``device_id`` and ``version`` of the
    session it ended. A DELETE's note is decoded only when asked for (``notes=True``):
    recovery does not need it and should not pay a decryption per DELETE.
    """

    type: RecordType
    ts: int
    entity_id: str
    version: int
    body: dict[str, Any] | None = None
    event: dict[str, Any] | None = None


def make_position(segment_id: int, offset: int) -> int:
    """``WalPosition`` = ``(segment_id << 32) | byte_offset`` (01 §8.3)."""
    if not 0 <= offset <= 0xFFFFFFFF:
        raise ValueError("WAL byte offset out of u32 range")
    if segment_id < 0:
        raise ValueError("negative WAL segment id")
    return (segment_id << 32) | offset


def split_position(position: int) -> tuple[int, int]:
    """``(segment_id, byte_offset)`` of a ``WalPosition``."""
    return position >> 32, position & 0xFFFFFFFF


def frame(rtype: int, payload: bytes) -> bytes:
    """One raw frame around an already-encoded payload."""
    crc = zlib.crc32(payload, zlib.crc32(bytes((rtype,))))
    return _HEAD.pack(len(payload) + MIN_FRAME_LEN, crc, rtype) + payload


def _enc(cipher: Cipher, body: dict[str, Any]) -> str:
    blob = cipher.encrypt(orjson.dumps(body))
    return base64.b64encode(blob).decode("ascii")


def encode_payload(rec: WalRecord, cipher: Cipher) -> bytes:
    """The JSON payload of ``rec`` with its state encrypted under ``cipher``."""
    rtype = rec.type
    if rtype in _SESSION_BODY_TYPES:
        if rec.body is None:
            raise ValueError("CREATE/UPDATE records need the full session state")
        body = rec.body
        event = rec.event
        if "is_deleted" in body or event:
            body = dict(body)  # a C-level copy: cheaper than a comprehension
            body.pop("is_deleted", None)
            if event:
                body["_event"] = event
        obj: dict[str, Any] = {"ts": rec.ts, "sid": rec.entity_id}
        if rec.version:
            obj["ver"] = rec.version
        obj["enc_session"] = _enc(cipher, body)
        obj["enc_alg"] = cipher.alg
    elif rtype == RecordType.DELETE:
        obj = {"ts": rec.ts, "sid": rec.entity_id}
        if rec.event:
            # Names the record it belongs to, so a blob moved between records is caught.
            obj["enc_event"] = _enc(cipher, {**rec.event, "id": rec.entity_id})
            obj["enc_alg"] = cipher.alg
    elif rtype == RecordType.KEY_PUT:
        if rec.body is None:
            raise ValueError("KEY_PUT records need the full key state")
        obj = {
            "ts": rec.ts,
            "kid": rec.entity_id,
            "ver": rec.version,
            "enc_key": _enc(cipher, rec.body),
            "enc_alg": cipher.alg,
        }
    else:  # pragma: no cover - RecordType is closed
        raise ValueError(f"unknown record type {rtype!r}")
    return orjson.dumps(obj)


def encode_record(rec: WalRecord, cipher: Cipher) -> bytes:
    """One complete frame for ``rec`` (state always encrypted)."""
    return frame(int(rec.type), encode_payload(rec, cipher))


class StopReason(enum.Enum):
    """Why :func:`decode_frames` stopped."""

    #: Reached the end of the buffer exactly on a frame boundary.
    END = "end"
    #: The last frame is incomplete (header or payload cut short): a torn write.
    TORN = "torn"
    #: Impossible length, CRC mismatch or invalid type byte.
    CORRUPT = "corrupt"
    #: A :data:`CUT_MARK`: what follows belongs to a write that failed.
    CUT = "cut"


@attrs.frozen(slots=True)
class FrameScan:
    """Result of :func:`decode_frames`.

    ``frames`` holds ``(end_offset, type, payload)`` for each complete valid frame in order;
    ``stop_offset`` is where scanning stopped (end of the last valid frame); ``detail``
    says what was wrong there (empty for :attr:`StopReason.END`).
    """

    frames: list[tuple[int, int, bytes]]
    stop: StopReason
    stop_offset: int
    detail: str = ""


def decode_frames(buf: bytes, start: int, end: int | None = None) -> FrameScan:
    """Scan complete, CRC-valid frames of ``buf[start:end]`` (offsets are into ``buf``).

    Stops at the first problem: a short header or payload is a torn tail;
    ``len`` below 5 or above :data:`MAX_FRAME`, a CRC mismatch or a type outside 1–4 is
    corruption; a :data:`CUT_MARK` ends the log on purpose. Nothing after the stop point
    is interpreted.
    """
    limit = len(buf) if end is None else min(end, len(buf))
    frames: list[tuple[int, int, bytes]] = []
    pos = start
    crc32 = zlib.crc32
    unpack = _LEN_CRC.unpack_from
    view = memoryview(buf)  # CRC over the frame without copying it first
    while pos < limit:
        if limit - pos < FRAME_HEADER_LEN:
            return FrameScan(frames, StopReason.TORN, pos, "incomplete frame header")
        length, crc = unpack(buf, pos)
        if length < MIN_FRAME_LEN or length > MAX_FRAME:
            if buf[pos : pos + len(CUT_MARK)] == CUT_MARK:
                return FrameScan(frames, StopReason.CUT, pos, "cut mark of a failed write")
            return FrameScan(frames, StopReason.CORRUPT, pos, f"impossible frame length {length}")
        body_start = pos + 8
        frame_end = body_start + length - 4
        if frame_end > limit:
            return FrameScan(frames, StopReason.TORN, pos, "incomplete frame payload")
        if crc32(view[body_start:frame_end]) != crc:
            return FrameScan(frames, StopReason.CORRUPT, pos, "CRC mismatch")
        rtype = buf[body_start]
        if rtype not in _VALID_TYPES:
            return FrameScan(frames, StopReason.CORRUPT, pos, f"invalid record type {rtype}")
        frames.append((frame_end, rtype, buf[body_start + 1 : frame_end]))
        pos = frame_end
    return FrameScan(frames, StopReason.END, pos)


def payload_is_object(payload: bytes) -> bool:
    """True when ``payload`` parses as a JSON object (a cheap validity check that needs no
    key, used by the writer before appending to a crashed segment)."""
    try:
        return isinstance(orjson.loads(payload), dict)
    except orjson.JSONDecodeError:
        return False


def _int(obj: dict[str, Any], key: str, default: int | None = None) -> int:
    value = obj.get(key, default)
    if type(value) is not int or value < 0:
        raise WalCorruptError(f"record field {key!r} missing or not a non-negative integer")
    return value


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise WalCorruptError(f"record field {key!r} missing or not a string")
    return value


def _dec(obj: dict[str, Any], field: str, cipher: Cipher) -> dict[str, Any]:
    alg = obj.get("enc_alg")
    text = obj.get(field)
    if type(alg) is not str or not alg:
        raise WalCorruptError("record field 'enc_alg' missing or not a string")
    if type(text) is not str or not text:
        raise WalCorruptError(f"record field {field!r} missing or not a string")
    try:
        # Not strict: the AEAD tag authenticates the decoded bytes, so a stray character
        # that a lenient decoder skips cannot change what decrypts; strict checking only
        # cost time at replay. What cannot be decoded at all (non-ASCII, bad padding) is
        # still corruption.
        blob = a2b_base64(text)
    except (binascii.Error, ValueError):
        raise WalCorruptError(f"record field {field!r} is not valid Base64") from None
    plaintext = cipher.decrypt(blob, alg)  # DecryptError propagates: fatal for readers
    try:
        body = orjson.loads(plaintext)
    except orjson.JSONDecodeError:
        raise WalCorruptError("decrypted record state is not JSON") from None
    if type(body) is not dict:
        raise WalCorruptError("decrypted record state is not a JSON object")
    return body


def decode_record(rtype: int, payload: bytes, cipher: Cipher, notes: bool = False) -> WalRecord:
    """The :class:`WalRecord` in a frame's payload (a DELETE's event note with ``notes``).

    Raises :class:`WalCorruptError` for bad JSON / fields / type and :class:`DecryptError`
    for an AEAD failure, a plaintext session state (encryption is mandatory) or an
    encrypted state that does not belong to the record (a swapped blob): the latter are
    fatal for readers.
    """
    # Runs once per record at replay: the field checks are written out, not delegated.
    kind = _TYPE_BY_BYTE.get(rtype)
    if kind is None:
        raise WalCorruptError(f"invalid record type {rtype}")
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise WalCorruptError("record payload is not JSON") from None
    if type(obj) is not dict:
        raise WalCorruptError("record payload is not a JSON object")
    get = obj.get
    ts = get("ts")
    if type(ts) is not int or ts < 0:
        raise WalCorruptError("record field 'ts' missing or not a non-negative integer")
    if kind is RecordType.KEY_PUT:
        kid = _str(obj, "kid")
        version = _int(obj, "ver", 0)
        return WalRecord(
            kind, ts, kid, version, _owned(obj, "enc_key", "key_id", kid, version, cipher)
        )
    sid = get("sid")
    if type(sid) is not str or not sid:
        raise WalCorruptError("record field 'sid' missing or not a string")
    if kind is RecordType.DELETE:
        if notes and "enc_event" in obj:
            event = _dec(obj, "enc_event", cipher)
            if event.pop("id", None) != sid:
                raise DecryptError("encrypted event note does not match its record")
            return WalRecord(kind, ts, sid, 0, None, event)
        return WalRecord(kind, ts, sid, 0, None)
    version = get("ver", 0)
    if type(version) is not int or version < 0:
        raise WalCorruptError("record field 'ver' missing or not a non-negative integer")
    if "enc_session" not in obj:
        if "session" in obj:
            raise DecryptError("plaintext session record where encryption is mandatory")
        raise WalCorruptError("CREATE/UPDATE record without session state")
    body = _owned(obj, "enc_session", "id", sid, version, cipher)
    event = body.pop("_event", None)
    return WalRecord(kind, ts, sid, version, body, event if type(event) is dict else None)


def _owned(
    obj: dict[str, Any], field: str, id_key: str, entity_id: str, version: int, cipher: Cipher
) -> dict[str, Any]:
    """The decrypted state in ``obj[field]``, checked to be the record's own.

    Without associated data a valid blob could be moved between records; the state names
    its own id and version, so a mismatch can only mean tampering (fatal for readers).
    """
    body = _dec(obj, field, cipher)
    if body.get(id_key) != entity_id or body.get("version", version) != version:
        raise DecryptError("encrypted state does not match its record")
    return body
