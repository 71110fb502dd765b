"""Sans-IO codec of the cluster port: length-prefixed frames carrying requests and replies.

Nodes talk to each other over one mTLS connection that carries many calls at once, so
every frame names the call it belongs to (a request id chosen by the caller) and replies
may come back in any order. The codec never touches a socket: :class:`Decoder` is fed
bytes and hands back complete frames, the ``encode_*`` functions build frames, and both
are tested and fuzzed alone.

Wire layout (all integers big-endian)::

    offset  size  field
    0       2     magic  b"TM"
    2       1     version (1)
    3       1     kind: 1 request, 2 response, 3 error
    4       1     flags: bit 0 = the body is opaque bytes, not JSON
    5       1     method length (requests: 1..255; other kinds: 0)
    6       4     request id (requests and responses: >= 1; 0 = the whole connection)
    10      4     deadline: milliseconds the caller still waits (requests: >= 1; else 0)
    14      4     body length
    18      ...   method (ASCII), then body

The body is JSON encoded with ``orjson`` (already a runtime dependency and faster than a
pure-Python msgpack for the small dicts the cluster sends), or raw bytes when the flag
says so, which lets a node forward a payload it already holds without re-encoding it. An
error frame's body is always a JSON object ``{"code", "message", "details"}`` using the
codes of the error catalogue; an error frame with request id 0 is about the connection
itself (a protocol error) and precedes its close.

Anything that breaks these rules raises :class:`FrameError`: the peer cannot be trusted
to be in sync any more, so the connection is closed. The decoder stays failed.
"""

from __future__ import annotations

import re
import struct
from typing import Any, Final, TypeAlias

import attrs
import orjson

MAGIC: Final = b"TM"
VERSION: Final = 1

KIND_REQUEST: Final = 1
KIND_RESPONSE: Final = 2
KIND_ERROR: Final = 3

#: The body is opaque bytes handed over as they are (no JSON).
FLAG_RAW: Final = 0x01
_KNOWN_FLAGS: Final = FLAG_RAW

_HEADER: Final = struct.Struct(">2sBBBBIII")
HEADER_SIZE: Final = _HEADER.size

#: The largest frame (header, method and body) a decoder accepts unless told otherwise.
#: Cluster messages are sessions and small batches of them; a bigger frame is a bug or an
#: attack, and refusing it before its body arrives bounds the memory a peer can pin.
DEFAULT_MAX_FRAME: Final = 1 << 20

MAX_REQUEST_ID: Final = 0xFFFFFFFF
MAX_DEADLINE_MS: Final = 0xFFFFFFFF

_METHOD = re.compile(rb"[A-Za-z0-9_.\-/]{1,255}")


class FrameError(Exception):
    """The bytes are not a valid frame stream: close the connection."""

    __slots__ = ("detail",)

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class FrameTooLarge(FrameError):
    """A frame declares more bytes than the receiver's limit."""

    __slots__ = ()


@attrs.frozen(slots=True)
class Request:
    """A call: run ``method`` within ``deadline_ms`` and answer with the same id."""

    request_id: int
    method: str
    deadline_ms: int
    body: bytes
    flags: int = 0

    def load(self) -> Any:
        """The body as a value: bytes when sent raw, else the decoded JSON."""
        return _load(self.body, self.flags)


@attrs.frozen(slots=True)
class Response:
    """The successful answer to request ``request_id``."""

    request_id: int
    body: bytes
    flags: int = 0

    def load(self) -> Any:
        """The body as a value: bytes when sent raw, else the decoded JSON."""
        return _load(self.body, self.flags)


@attrs.frozen(slots=True)
class ErrorReply:
    """A failed call (``request_id`` >= 1) or a failed connection (``request_id`` 0)."""

    request_id: int
    code: str
    message: str
    details: dict[str, Any] | None = None


Frame: TypeAlias = Request | Response | ErrorReply


def _load(body: bytes, flags: int) -> Any:
    if flags & FLAG_RAW:
        return body
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"body is not JSON: {exc}") from None


def _dump(value: Any) -> tuple[bytes, int]:
    if isinstance(value, bytes):
        return value, FLAG_RAW
    return orjson.dumps(value), 0


# -- encoding -------------------------------------------------------------------------------


def check_method(method: str) -> bytes:
    """``method`` as it goes on the wire; ``ValueError`` unless it is 1 to 255 characters
    of letters, digits and ``_ . - /``."""
    raw_method = method.encode("ascii", "replace")
    if _METHOD.fullmatch(raw_method) is None:
        raise ValueError(f"invalid method name {method!r}")
    return raw_method


def encode_request(request_id: int, method: str, deadline_ms: int, value: Any) -> bytes:
    """A request frame; ``value`` is sent raw when it is ``bytes``, else as JSON.

    ``ValueError`` for an id, method or deadline outside the wire ranges, ``TypeError``
    for a value JSON cannot carry.
    """
    raw_method = check_method(method)
    if not 1 <= request_id <= MAX_REQUEST_ID:
        raise ValueError(f"request id {request_id} out of range")
    if not 1 <= deadline_ms <= MAX_DEADLINE_MS:
        raise ValueError(f"deadline {deadline_ms} ms out of range")
    body, flags = _dump(value)
    header = _HEADER.pack(
        MAGIC, VERSION, KIND_REQUEST, flags, len(raw_method), request_id, deadline_ms, len(body)
    )
    return header + raw_method + body


def encode_response(request_id: int, value: Any) -> bytes:
    """A response frame; ``value`` is sent raw when it is ``bytes``, else as JSON."""
    if not 1 <= request_id <= MAX_REQUEST_ID:
        raise ValueError(f"request id {request_id} out of range")
    body, flags = _dump(value)
    return _HEADER.pack(MAGIC, VERSION, KIND_RESPONSE, flags, 0, request_id, 0, len(body)) + body


def encode_error(
    request_id: int, code: str, message: str, details: dict[str, Any] | None = None
) -> bytes:
    """An error frame; ``request_id`` 0 reports a fault of the whole connection."""
    if not 0 <= request_id <= MAX_REQUEST_ID:
        raise ValueError(f"request id {request_id} out of range")
    body = orjson.dumps({"code": code, "message": message, "details": details})
    return _HEADER.pack(MAGIC, VERSION, KIND_ERROR, 0, 0, request_id, 0, len(body)) + body


# -- decoding -------------------------------------------------------------------------------

#: Consumed bytes are cut from the front of the buffer once there are this many, so a long
#: stream of small frames does not copy the buffer after every frame.
_COMPACT_AT: Final = 1 << 16


class Decoder:
    """Turns the bytes of one connection into frames; never blocks, never does I/O.

    Feed what the socket gave with :meth:`feed`, then call :meth:`next_frame` until it
    returns ``None`` (more bytes needed). A frame's header is checked as soon as its 18
    bytes are in, so an oversized or malformed frame is refused before its body arrives.
    After a :class:`FrameError` the decoder raises the same error on every call.
    """

    __slots__ = ("_buf", "_error", "_pos", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._pos = 0
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out as frames."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray) -> None:
        """Append received bytes."""
        if self._error is not None:
            raise self._error
        self._buf += data

    def frames(self) -> list[Frame]:
        """Every frame complete in the buffer (possibly none). Frames that came before a
        malformed one are returned first; the error is raised by the next call."""
        out: list[Frame] = []
        try:
            while (frame := self.next_frame()) is not None:
                out.append(frame)
        except FrameError:
            if not out:
                raise
        return out

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` until more bytes are fed."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except FrameError as exc:
            self._error = exc
            self._buf = bytearray()
            self._pos = 0
            raise

    def _next(self) -> Frame | None:
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if available < HEADER_SIZE:
            if available == 0 and pos:
                self._buf, self._pos = bytearray(), 0
            elif buf[pos : pos + 2] != MAGIC[:available]:
                raise FrameError("bad magic")
            return None
        magic, version, kind, flags, method_len, request_id, deadline_ms, body_len = (
            _HEADER.unpack_from(buf, pos)
        )
        if magic != MAGIC:
            raise FrameError("bad magic")
        if version != VERSION:
            raise FrameError(f"unsupported version {version}")
        size = HEADER_SIZE + method_len + body_len
        if size > self.max_frame_size:
            raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {self.max_frame_size}")
        if flags & ~_KNOWN_FLAGS:
            raise FrameError(f"unknown flags {flags:#x}")
        if kind == KIND_REQUEST:
            if method_len == 0 or request_id == 0 or deadline_ms == 0:
                raise FrameError("request without method, id or deadline")
        elif kind == KIND_RESPONSE:
            if method_len or deadline_ms or request_id == 0:
                raise FrameError("malformed response header")
        elif kind == KIND_ERROR:
            if method_len or deadline_ms or flags:
                raise FrameError("malformed error header")
        else:
            raise FrameError(f"unknown frame kind {kind}")
        if available < size:
            return None
        start = pos + HEADER_SIZE
        raw_method = bytes(buf[start : start + method_len])
        body = bytes(buf[start + method_len : pos + size])
        pos += size
        if pos >= _COMPACT_AT:
            del buf[:pos]
            pos = 0
        self._pos = pos
        if kind == KIND_RESPONSE:
            return Response(request_id, body, flags)
        if kind == KIND_REQUEST:
            return _request(request_id, raw_method, deadline_ms, body, flags)
        return _error_reply(request_id, body)


def _request(
    request_id: int, raw_method: bytes, deadline_ms: int, body: bytes, flags: int
) -> Request:
    if _METHOD.fullmatch(raw_method) is None:
        raise FrameError("invalid method name")
    return Request(request_id, raw_method.decode("ascii"), deadline_ms, body, flags)


def _error_reply(request_id: int, body: bytes) -> ErrorReply:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FrameError("error body is not JSON") from None
    if not isinstance(doc, dict):
        raise FrameError("error body is not an object")
    code, message, details = doc.get("code"), doc.get("message"), doc.get("details")
    if not isinstance(code, str) or not isinstance(message, str):
        raise FrameError("error body without code or message")
    if details is not None and not isinstance(details, dict):
        raise FrameError("error details are not an object")
    return ErrorReply(request_id, code, message, details)
