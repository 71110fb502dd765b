"""Sans-IO snapshot codec (01 §9.3).

Layout (all integers big-endian)::

    magic "TOKMSNAP" (8)
    header_len u32 · header JSON {version:1, created_at, node_id, session_count,
                                  wal_last_offset, encrypted:true, enc_alg, key_count,
                                  chunk_records, fields?, layout?}
    data: chunks, each  chunk_len u32 · nonce ‖ ciphertext ‖ tag of the JSON of at most
          ``chunk_records`` session records;  then  u32 0  (end of the session data)

A chunk is a JSON array of record objects (no ``fields``), of positional rows in the
order of ``fields``, or - ``layout: "columns"``, what TokMesh writes now - one column
object (:mod:`tokmesh.storage.session_columns`). Readers accept all three.
    keys_len  u64 · keys  = nonce ‖ ciphertext ‖ tag of the JSON array of API-key records
    trailer (32)  = SHA-256 over every preceding byte

The session data is split into independently encrypted chunks (a TokMesh choice within
01 §13's incidental details): encoding, encryption and decoding then work on ~2k records
at a time, so a million-session snapshot never holds the GIL for more than a few
milliseconds at once (the event loop keeps serving while a worker thread writes it) and
never materialises a million record dicts. The ``keys`` part and ``key_count`` are
TokMesh additions that make API keys durable in snapshots too.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import orjson

from tokmesh.storage.cipher import ALGORITHMS, Cipher, DecryptError, StorageFatalError

MAGIC = b"TOKMSNAP"
FORMAT_VERSION = 1
TRAILER_LEN = 32
#: A header larger than this is corruption, not a real header.
MAX_HEADER_LEN = 1024 * 1024

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


#: one decrypted session chunk: a list of records, or a column object
Chunk = list[Any] | dict[str, Any]


class SnapshotCorrupt(Exception):
    """Checksum mismatch, bad magic, truncation or a malformed part: try an older one."""


@attrs.frozen(slots=True)
class SnapshotHeader:
    """The decoded header fields."""

    version: int
    created_at: int
    node_id: str
    session_count: int
    key_count: int
    wal_last_offset: int
    enc_alg: str
    #: column names when session records are positional rows or columns; empty = JSON
    #: objects
    fields: tuple[str, ...] = ()
    #: ``"columns"`` when each session chunk is a column object
    #: (:mod:`tokmesh.storage.session_columns`); empty = a JSON array of records
    layout: str = ""


@attrs.frozen(slots=True)
class EncodedSnapshot:
    """An encoded snapshot as chunks (written in order) plus its trailer.

    Kept as chunks so a large snapshot is never concatenated in memory; ``checksum`` is
    the 32-byte SHA-256 trailer over all chunks.
    """

    chunks: tuple[bytes, ...]
    checksum: bytes

    @property
    def size(self) -> int:
        """Total file size, trailer included."""
        return sum(len(c) for c in self.chunks) + TRAILER_LEN


CHUNK_RECORDS = 2048
#: ``layout`` header value of snapshots whose session chunks are column objects
LAYOUT_COLUMNS = "columns"


def encode_header(
    *,
    session_count: int,
    key_count: int,
    wal_last_offset: int,
    node_id: str,
    created_at: int,
    cipher: Cipher,
    chunk_records: int = CHUNK_RECORDS,
    fields: Sequence[str] = (),
    layout: str = "",
) -> bytes:
    """Magic, header length and header JSON: the first bytes of a snapshot file.

    ``fields`` names the columns when session records are written as positional rows
    or as column chunks (``layout="columns"``).
    """
    header = orjson.dumps(
        {
            "version": FORMAT_VERSION,
            "created_at": created_at,
            "node_id": node_id,
            "session_count": session_count,
            "wal_last_offset": wal_last_offset,
            "encrypted": True,
            "enc_alg": cipher.alg,
            "key_count": key_count,
            "chunk_records": chunk_records,
            **({"fields": list(fields)} if fields else {}),
            **({"layout": layout} if layout else {}),
        }
    )
    return MAGIC + _U32.pack(len(header)) + header


def encode_chunk(records: Sequence[Any] | dict[str, Any], cipher: Cipher) -> bytes:
    """One encrypted chunk of session records (a list, or a column object), length-prefixed."""
    blob = cipher.encrypt(orjson.dumps(records))
    return _U32.pack(len(blob)) + blob


#: marks the end of the session chunks
END_OF_CHUNKS = _U32.pack(0)


def encode_keys(key_records: Sequence[dict[str, Any]], cipher: Cipher) -> bytes:
    """The end-of-chunks marker followed by the encrypted API-key part."""
    keys = cipher.encrypt(orjson.dumps(list(key_records)))
    return END_OF_CHUNKS + _U64.pack(len(keys)) + keys


def encode_snapshot(
    session_records: Sequence[dict[str, Any]],
    key_records: Sequence[dict[str, Any]],
    *,
    wal_last_offset: int,
    node_id: str,
    created_at: int,
    cipher: Cipher,
    chunk_records: int = CHUNK_RECORDS,
) -> EncodedSnapshot:
    """Encode (and encrypt) a whole snapshot of plain record dicts in memory."""
    chunks = [
        encode_header(
            session_count=len(session_records),
            key_count=len(key_records),
            wal_last_offset=wal_last_offset,
            node_id=node_id,
            created_at=created_at,
            cipher=cipher,
            chunk_records=chunk_records,
        )
    ]
    for i in range(0, len(session_records), chunk_records):
        chunks.append(encode_chunk(session_records[i : i + chunk_records], cipher))
    chunks.append(encode_keys(key_records, cipher))
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return EncodedSnapshot(tuple(chunks), digest.digest())


def _take(buf: bytes, pos: int, n: int, end: int, what: str) -> int:
    if n < 0 or pos + n > end:
        raise SnapshotCorrupt(f"snapshot truncated in {what}")
    return pos + n


def _parse_header(raw: bytes) -> SnapshotHeader:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise SnapshotCorrupt("snapshot header is not JSON") from None
    if not isinstance(obj, dict):
        raise SnapshotCorrupt("snapshot header is not a JSON object")
    if obj.get("version") != FORMAT_VERSION:
        raise SnapshotCorrupt(f"unsupported snapshot format version {obj.get('version')!r}")
    if obj.get("encrypted") is not True:
        # 01 §9.6: a plaintext snapshot while encryption is configured is fatal, never a
        # silent load (encryption is always on in TokMesh).
        raise StorageFatalError("snapshot is not encrypted; encryption at rest is mandatory")
    alg = obj.get("enc_alg")
    if alg not in ALGORITHMS:
        raise StorageFatalError(f"snapshot uses unknown encryption algorithm {alg!r}")
    ints = {}
    for key in ("created_at", "session_count", "wal_last_offset"):
        value = obj.get(key)
        if type(value) is not int or value < 0:
            raise SnapshotCorrupt(f"snapshot header field {key!r} invalid")
        ints[key] = value
    key_count = obj.get("key_count", 0)
    if type(key_count) is not int or key_count < 0:
        raise SnapshotCorrupt("snapshot header field 'key_count' invalid")
    node_id = obj.get("node_id") or ""
    if not isinstance(node_id, str):
        raise SnapshotCorrupt("snapshot header field 'node_id' invalid")
    fields = obj.get("fields") or []
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise SnapshotCorrupt("snapshot header field 'fields' invalid")
    layout = obj.get("layout") or ""
    if layout not in ("", LAYOUT_COLUMNS):
        raise SnapshotCorrupt(f"snapshot layout {layout!r} is not supported by this version")
    return SnapshotHeader(
        version=FORMAT_VERSION,
        created_at=ints["created_at"],
        node_id=node_id,
        session_count=ints["session_count"],
        key_count=key_count,
        wal_last_offset=ints["wal_last_offset"],
        enc_alg=str(alg),
        fields=tuple(fields),
        layout=layout,
    )


def check_frame(buf: bytes) -> bytes:
    """The stored SHA-256 trailer of a complete snapshot buffer, not yet compared with
    the content; :class:`SnapshotCorrupt` if the magic is wrong or the file too short."""
    if len(buf) < len(MAGIC) + 4 + TRAILER_LEN:
        raise SnapshotCorrupt("snapshot truncated")
    if buf[: len(MAGIC)] != MAGIC:
        raise SnapshotCorrupt("bad snapshot magic")
    return buf[-TRAILER_LEN:]


def trailer_matches(buf: bytes) -> bool:
    """True when the last 32 bytes are the SHA-256 of the rest (hashlib releases the GIL
    meanwhile, so this can run in a thread beside the decoding)."""
    return hashlib.sha256(memoryview(buf)[:-TRAILER_LEN]).digest() == buf[-TRAILER_LEN:]


def verify_trailer(buf: bytes) -> bytes:
    """The checksum of a complete snapshot buffer; :class:`SnapshotCorrupt` if the magic is
    wrong, the file is too short or the SHA-256 trailer does not match."""
    trailer = check_frame(buf)
    if not trailer_matches(buf):
        raise SnapshotCorrupt("snapshot checksum mismatch")
    return trailer


def decode_header(buf: bytes) -> SnapshotHeader:
    """Only the header of a (possibly partial) snapshot buffer; no checksum check.

    Every problem is :class:`SnapshotCorrupt`: without the checksum, a header that claims
    a plaintext snapshot or an unknown algorithm cannot be told from a damaged one, and
    only a verified read (:func:`iter_snapshot`) may call the file fatal.
    """
    if buf[: len(MAGIC)] != MAGIC:
        raise SnapshotCorrupt("bad snapshot magic")
    pos = _take(buf, len(MAGIC), 4, len(buf), "header length")
    (hlen,) = _U32.unpack_from(buf, len(MAGIC))
    if hlen > MAX_HEADER_LEN:
        raise SnapshotCorrupt("impossible snapshot header length")
    end = _take(buf, pos, hlen, len(buf), "header")
    try:
        return _parse_header(buf[pos:end])
    except StorageFatalError as exc:
        raise SnapshotCorrupt(exc.message) from None


def iter_snapshot(
    buf: bytes, cipher: Cipher, *, verify: bool = True
) -> tuple[SnapshotHeader, Iterator[Chunk], list[dict[str, Any]], bytes]:
    """``(header, session_chunks, key_records, checksum)`` of a complete snapshot file.

    The checksum, the layout and the key part are verified up front; the session chunks
    are decrypted lazily, one chunk per iteration step: a list of records, or a column
    object (with its record count ``n``) when ``header.layout`` is ``"columns"``.
    :class:`SnapshotCorrupt` for bad magic, truncation, checksum mismatch or malformed
    parts; :class:`StorageFatalError`
    for a plaintext snapshot, and :class:`DecryptError` when a checksum-valid blob does
    not authenticate (wrong key): both fatal (01 §9.6).

    ``verify=False`` skips the SHA-256 comparison, for a caller that runs
    :func:`trailer_matches` itself (in parallel) and lets a mismatch take precedence
    over anything decoding raised, as if it had been checked first.
    """
    checksum = verify_trailer(buf) if verify else check_frame(buf)
    end = len(buf) - TRAILER_LEN
    pos = _take(buf, len(MAGIC), 4, end, "header length")
    (hlen,) = _U32.unpack_from(buf, len(MAGIC))
    if hlen > MAX_HEADER_LEN:
        raise SnapshotCorrupt("impossible snapshot header length")
    hend = _take(buf, pos, hlen, end, "header")
    header = _parse_header(buf[pos:hend])
    view = memoryview(buf)  # slices without copying the data blobs
    spans: list[tuple[int, int]] = []
    pos = hend
    while True:
        nxt = _take(buf, pos, 4, end, "chunk length")
        (clen,) = _U32.unpack_from(buf, pos)
        pos = nxt
        if clen == 0:
            break
        cend = _take(buf, pos, clen, end, "chunk")
        spans.append((pos, cend))
        pos = cend
    kpos = _take(buf, pos, 8, end, "keys length")
    (klen,) = _U64.unpack_from(buf, pos)
    kend = _take(buf, kpos, klen, end, "keys")
    if kend != end:
        raise SnapshotCorrupt("trailing bytes after snapshot keys")
    keys = _decrypt_list(cipher, view[kpos:kend], header.enc_alg, "keys")
    if len(keys) != header.key_count:
        raise SnapshotCorrupt("snapshot key count does not match its header")
    columns = header.layout == LAYOUT_COLUMNS

    def chunks() -> Iterator[Chunk]:
        total = 0
        for a, b in spans:
            if columns:
                obj = _decrypt_json(cipher, view[a:b], header.enc_alg, "sessions")
                count = obj.get("n") if isinstance(obj, dict) else None
                if type(count) is not int or count < 0:
                    raise SnapshotCorrupt("snapshot session chunk is not a column object")
                total += count
                yield obj
            else:
                items = _decrypt_list(cipher, view[a:b], header.enc_alg, "sessions")
                total += len(items)
                yield items
        if total != header.session_count:
            raise SnapshotCorrupt("snapshot session count does not match its header")

    return header, chunks(), keys, checksum


def decode_snapshot(
    buf: bytes, cipher: Cipher
) -> tuple[SnapshotHeader, list[Any], list[dict[str, Any]], bytes]:
    """Like :func:`iter_snapshot` with every chunk's records in one list (for the column
    layout, the list holds the column objects themselves)."""
    header, chunks, keys, checksum = iter_snapshot(buf, cipher)
    sessions: list[Any] = []
    for chunk in chunks:
        if isinstance(chunk, dict):
            sessions.append(chunk)
        else:
            sessions.extend(chunk)
    return header, sessions, keys, checksum


def _decrypt_json(cipher: Cipher, blob: memoryview, alg: str, what: str) -> Any:
    plaintext = cipher.decrypt(blob, alg)  # DecryptError propagates (fatal)
    try:
        return orjson.loads(plaintext)
    except orjson.JSONDecodeError:
        raise SnapshotCorrupt(f"snapshot {what} are not JSON") from None


def _decrypt_list(cipher: Cipher, blob: memoryview, alg: str, what: str) -> list[Any]:
    items = _decrypt_json(cipher, blob, alg, what)
    if not isinstance(items, list) or not all(isinstance(i, dict | list) for i in items):
        raise SnapshotCorrupt(f"snapshot {what} are not a list of records")
    return items


__all__ = [
    "LAYOUT_COLUMNS",
    "MAGIC",
    "Chunk",
    "DecryptError",
    "EncodedSnapshot",
    "SnapshotCorrupt",
    "SnapshotHeader",
    "check_frame",
    "decode_header",
    "decode_snapshot",
    "encode_chunk",
    "encode_header",
    "encode_keys",
    "encode_snapshot",
    "iter_snapshot",
    "trailer_matches",
    "verify_trailer",
]
