"""Sans-IO rendering of HTTP/1.1 response heads and chunked framing.

Kept free of I/O so it can be tested byte for byte and so the connection code stays a
thin loop. Status lines and the ``Date`` line are cached: the head of a typical hot-path
response is built with one ``str.join`` and one ``encode``.
"""

from __future__ import annotations

import http
import time
from email.utils import formatdate

from tokmesh.api.http_types import HttpResponse

_STATUS_LINES: dict[int, str] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in http.HTTPStatus
}
# Headers the front owns (framing, persistence) or must know about (request id).
_SPECIAL = frozenset({"content-length", "transfer-encoding", "connection", "x-request-id"})
# Exact spellings the envelopes use that need no special handling (skips a lower()).
_PLAIN = frozenset({"Content-Type", "X-Error-Code", "Retry-After", "Allow"})

_date_second = -1
_date_line = ""

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


class HeaderInjectionError(ValueError):
    """A response header name or value contained CR or LF."""


def status_line(status: int) -> str:
    """``HTTP/1.1 <status> <reason>\\r\\n``; unknown codes get an empty reason."""
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid HTTP status {status}")
        line = f"HTTP/1.1 {status} \r\n"
    return line


def date_line() -> str:
    """``Date: <IMF-fixdate>\\r\\n`` for the current second (cached per second)."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_line = "Date: " + formatdate(now, usegmt=True) + "\r\n"
        _date_second = now
    return _date_line


def body_allowed(status: int) -> bool:
    """Whether a response with ``status`` may carry a body (RFC 9112 §6.3)."""
    return status >= 200 and status != 204 and status != 304


class Framing:
    """How the body of a rendered head must be sent."""

    NONE = 0
    """No body bytes (HEAD, 1xx/204/304), or a buffered body of known length."""
    FIXED = 1
    """Stream exactly ``content_length`` bytes."""
    CHUNKED = 2
    """Stream with chunked transfer coding."""
    UNTIL_CLOSE = 3
    """HTTP/1.0 without a length: the body ends when the connection closes."""


def encode_head(
    resp: HttpResponse,
    *,
    request_id: str | None,
    keep_alive: bool,
    http10: bool,
    head_only: bool,
) -> tuple[bytes, int, int, bool]:
    """Render the head of ``resp``.

    ``request_id`` is added as ``X-Request-ID`` unless the response carries one already
    (pass ``None`` to skip). Returns ``(head bytes, framing, content_length, keep_alive)``
    where framing is a :class:`Framing` value and ``keep_alive`` may have been turned off
    (the handler asked for ``Connection: close``, or a close-delimited body).
    Raises :class:`HeaderInjectionError` when a header contains CR or LF.
    """
    status = resp.status
    lines = [status_line(status)]
    append = lines.append
    has_request_id = False
    declared_length: str | None = None
    for name, value in resp.headers:
        if name in _PLAIN:
            append(f"{name}: {value}\r\n")
            continue
        lname = name.lower()
        if lname in _SPECIAL:
            if lname == "x-request-id":
                has_request_id = True
            elif lname == "content-length":
                declared_length = value
                continue
            elif lname == "connection":
                if value.strip().lower() == "close":
                    keep_alive = False
                continue
            else:  # transfer-encoding: the front decides the framing
                continue
        append(f"{name}: {value}\r\n")
    if not has_request_id and request_id is not None:
        append(f"X-Request-ID: {request_id}\r\n")
    append(date_line())

    framing = Framing.NONE
    length = 0
    if not body_allowed(status):
        pass
    elif resp.body_iter is None:
        length = len(resp.body)
        append(f"Content-Length: {length}\r\n")
    elif declared_length is not None:
        length = int(declared_length)
        if length < 0:
            raise ValueError("negative Content-Length")
        append(f"Content-Length: {length}\r\n")
        framing = Framing.FIXED
    elif not http10:
        append("Transfer-Encoding: chunked\r\n")
        framing = Framing.CHUNKED
    else:
        framing = Framing.UNTIL_CLOSE
        keep_alive = False
    if head_only and framing != Framing.NONE:
        framing = Framing.NONE
    if not keep_alive:
        append("Connection: close\r\n")
    elif http10:
        append("Connection: keep-alive\r\n")
    append("\r\n")
    text = "".join(lines)
    # Every piece ends in exactly one CRLF; any other CR or LF came from a header
    # name or value and would split the response (header injection).
    n = len(lines)
    if text.count("\n") != n or text.count("\r") != n:
        raise HeaderInjectionError("CR or LF in a response header")
    return text.encode("latin-1"), framing, length, keep_alive


def encode_chunk(data: bytes) -> bytes:
    """One chunk of chunked transfer coding (``data`` must not be empty)."""
    return b"%x\r\n%b\r\n" % (len(data), data)
