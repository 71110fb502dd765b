"""Fuzzing the HTTP/1.x front (``tokmesh.api.http_connection.HttpConnection``).

The connection's parsing half is driven without a socket, the way the I/O loop does it:
``feed`` each read, stop at an error or at the end of a closing request. Every example
checks:

- pipelined valid requests (fixed-length and chunked bodies, chunk extensions and
  trailers, HTTP/1.0 and 1.1, absolute-form targets, a closing last request) come out as
  exactly the requests they were built from, in one read, in two reads cut at every
  offset, one byte per read, and one request per read (which takes the repeated-head
  shortcut);
- any bytes (random, or valid requests damaged) end the same way however they are cut:
  the same requests, then either nothing or one defined rejection (400, 413, 431 or 505
  with ``TM-SYS-4000`` or ``TM-ADMIN-4130``) - never an exception out of ``feed`` and
  never the 500 that a failing parser callback turns into;
- over a real connection loop (``serve`` on an in-memory stream), whatever the client
  sends gets well-framed answers: one per complete request, then at most the rejection,
  and ``serve`` returns normally.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httptools
import orjson
import pytest
import trio
import trio.testing
from hypothesis import example, given
from hypothesis import strategies as st

from tests.faults.fuzz_support import apply_edits, edits, every_split, fuzz_settings
from tokmesh.api.http_connection import HttpConnection, ServerHooks
from tokmesh.api.http_limits import HttpLimits
from tokmesh.api.http_types import HttpRequest, HttpResponse
from tokmesh.domain.errors import E

pytestmark = pytest.mark.fault

#: Small limits, so that examples of a few hundred bytes reach them.
SMALL = HttpLimits(max_header_bytes=400, max_header_count=8, max_body_size=64)
#: What a rejected request may be answered with: (catalogue code, HTTP status).
REJECTIONS = {
    (E.SYS_BAD_REQUEST.code, 400),
    (E.SYS_BAD_REQUEST.code, 431),
    (E.SYS_BAD_REQUEST.code, 505),
    (E.ADMIN_TOO_LARGE.code, 413),
}


class _Control:
    """The part of ``ServerControl`` a connection reads."""

    def __init__(self) -> None:
        self.draining = False
        self.conns: set[Any] = set()


def connection(
    limits: HttpLimits, app: Any = None, stream: trio.abc.Stream | None = None
) -> HttpConnection:
    """A connection for feeding by hand (its stream is never touched) or for ``serve``."""
    hooks = ServerHooks(app, limits, _Control())
    if stream is None:
        stream = trio.testing.memory_stream_pair()[1]
    return HttpConnection(hooks, stream, peer=("192.0.2.7", 40000))


def request_fields(req: HttpRequest) -> tuple[Any, ...]:
    """Everything the parser decides about a request."""
    return (
        req.method,
        req.path,
        req.query,
        list(req.headers),
        req.body,
        req.http_version,
        req.keep_alive,
    )


Outcome = tuple[list[tuple[Any, ...]], tuple[str, int, str] | None, bytes | None]


def run(reads: list[bytes], limits: HttpLimits) -> Outcome:
    """Feed ``reads`` as the I/O loop does.

    Returns the requests, the rejection ``(code, status, message)`` if any, and for a
    protocol upgrade the bytes after the upgrading request's head (``None`` otherwise).
    """
    conn = connection(limits)
    upgraded: bytes | None = None
    for i, read in enumerate(reads):
        conn.feed(read)
        if conn.error is not None:
            break
        if conn.stop_parsing:
            if conn.upgrade_req is not None:
                upgraded = conn.upgrade_rest + b"".join(reads[i + 1 :])
            break
    requests = [request_fields(req) for req in conn.queue]
    rej = conn.error
    if rej is None:
        return requests, None, upgraded
    status = rej.status or rej.error.http_status
    assert (rej.error.code, status) in REJECTIONS, (rej.error, status, rej.message)
    return requests, (rej.error.code, status, rej.message), upgraded


def assert_split_independent(data: bytes, limits: HttpLimits, extra: list[list[bytes]]) -> Outcome:
    """The outcome of ``data`` in one read, checked equal under every split."""
    whole = run([data], limits)
    for reads in [*every_split(data), *extra]:
        assert run(reads, limits) == whole, [len(r) for r in reads]
    return whole


# -- valid requests ----------------------------------------------------------------------

_TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~"
_PATH = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%/"
_VALUE = "".join(chr(c) for c in range(0x21, 0x7F))
# Headers the framing depends on: generated on purpose, never at random.
_FRAMING = {"content-length", "transfer-encoding", "host", "connection", "upgrade", "expect"}
_FRAMING |= {"proxy-connection", "keep-alive"}

header_name = st.text(_TOKEN, min_size=1, max_size=12).filter(lambda n: n.lower() not in _FRAMING)
header_value = st.builds(
    lambda a, b: (a + b).strip(" \t"),
    st.text(_VALUE, max_size=10),
    st.text(_VALUE + " \t", max_size=10),
)


class Wire:
    """One generated request: its bytes and the request the parser must make of them."""

    def __init__(self, raw: bytes, fields: tuple[Any, ...]) -> None:
        self.raw = raw
        self.fields = fields


METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")


@st.composite
def valid_request(
    draw: st.DrawFn, closing: bool = False, methods: tuple[str, ...] = METHODS
) -> Wire:
    """A request that must parse; keep-alive unless ``closing``."""
    method = draw(st.sampled_from(methods))
    path = "/" + draw(st.text(_PATH, max_size=16))
    query = draw(st.none() | st.text(_PATH + "?=&", max_size=12))
    target = path + ("" if query is None else "?" + query)
    if draw(st.booleans()):
        target = "http://h.example" + target  # absolute form: the path is kept
    version = draw(st.sampled_from(["1.1", "1.1", "1.0"]))
    headers = draw(st.lists(st.tuples(header_name, header_value), max_size=4))
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["length", "chunked"] if version == "1.1" else ["length"]))
    if not body and framing == "length" and draw(st.booleans()):
        framing = "none"
    if version == "1.1" or draw(st.booleans()):
        headers.insert(draw(st.integers(0, len(headers))), ("Host", "h.example"))
    if version == "1.0" and not closing:
        headers.append(("Connection", "keep-alive"))
    if version == "1.1" and closing:
        headers.append(("Connection", "close"))
    encoded_body = body
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        encoded_body = draw(chunked(body))
    head = f"{method} {target} HTTP/{version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    raw = head.encode("latin-1") + b"\r\n" + encoded_body
    expected_headers = [(n.lower().encode(), v.encode("latin-1")) for n, v in headers]
    fields = (method, path, query or "", expected_headers, body, version, not closing)
    return Wire(raw, fields)


@st.composite
def chunked(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` in chunked coding: random chunk sizes, extensions and trailers."""
    out = []
    pos = 0
    while pos < len(body):
        size = draw(st.integers(1, len(body) - pos))
        ext = draw(st.sampled_from(["", ";a=b", ";x"]))
        hex_size = draw(st.sampled_from(["%x", "%X", "%04x"])) % size
        out.append(f"{hex_size}{ext}\r\n".encode() + body[pos : pos + size] + b"\r\n")
        pos += size
    trailers = draw(st.lists(st.tuples(header_name, header_value), max_size=2))
    out.append(b"0\r\n" + "".join(f"{n}: {v}\r\n" for n, v in trailers).encode() + b"\r\n")
    return b"".join(out)


@st.composite
def pipeline(draw: st.DrawFn, methods: tuple[str, ...] = METHODS) -> list[Wire]:
    """One to five requests; the last one may close the connection."""
    reqs = draw(st.lists(valid_request(methods=methods), min_size=1, max_size=3))
    if draw(st.booleans()):
        reqs.append(reqs[0])  # a repeated head, for the repeated-head shortcut
    if draw(st.booleans()):
        reqs.append(draw(valid_request(closing=True, methods=methods)))
    return reqs


def per_request(reqs: list[Wire]) -> Iterator[list[bytes]]:
    """Reads that hold one request each, and two requests each."""
    yield [r.raw for r in reqs]
    yield [b"".join(r.raw for r in reqs[i : i + 2]) for i in range(0, len(reqs), 2)]


@fuzz_settings(80)
@given(reqs=pipeline(), after=st.binary(max_size=12))
async def test_valid_requests_parse_to_themselves_however_split(
    reqs: list[Wire], after: bytes
) -> None:
    closing = not reqs[-1].fields[-1]
    # Whatever follows a closing request is never parsed.
    data = b"".join(r.raw for r in reqs) + (after if closing else b"")
    expected = [r.fields for r in reqs]
    limits = HttpLimits()
    assert assert_split_independent(data, limits, list(per_request(reqs))) == (
        expected,
        None,
        None,
    )


# -- damaged and arbitrary bytes ---------------------------------------------------------


@fuzz_settings(120)
@given(reqs=pipeline(), changes=edits, small=st.booleans())
async def test_damaged_requests_end_in_a_defined_rejection_however_split(
    reqs: list[Wire], changes: list[tuple[str, int, int, bytes]], small: bool
) -> None:
    damaged, intact = apply_edits(b"".join(r.raw for r in reqs), changes)
    requests, _rejection, _upgraded = assert_split_independent(
        damaged, SMALL if small else HttpLimits(), []
    )
    if not small:
        # Everything complete before the damage was parsed as it was sent.
        done, end = [], 0
        for r in reqs:
            end += len(r.raw)
            if end > intact:
                break
            done.append(r.fields)
        assert requests[: len(done)] == done


@fuzz_settings(150)
@given(data=st.binary(max_size=120))
@example(data=b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n")
@example(data=b"GET / HTTP/2.0\r\nHost: h\r\n\r\n")
@example(data=b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
@example(data=b"GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n")
@example(data=b"GET http://x HTTP/1.1\r\nHost: h\r\n\r\n")
# llhttp accepted the target, its URL parser did not: the request was answered 500.
@example(data=b"GET http://h.example, HTTP/1.1\r\nHost: h\r\n\r\n")
@example(data=b"GET http://a:b@h:99999/x HTTP/1.1\r\nHost: h\r\n\r\n")
async def test_arbitrary_bytes_end_in_a_defined_rejection_however_split(data: bytes) -> None:
    assert_split_independent(data, HttpLimits(), [])
    assert_split_independent(data, SMALL, [])


@fuzz_settings(100)
@given(
    data=st.lists(
        st.sampled_from(
            [
                b"GET ",
                b"POST ",
                b"/",
                b"?",
                b"#",
                b" HTTP/1.1",
                b" HTTP/1.0",
                b"\r\n",
                b"\n",
                b"Host: h\r\n",
                b"Content-Length: ",
                b"Transfer-Encoding: chunked\r\n",
                b"Connection: close\r\n",
                b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
                b"Expect: 100-continue\r\n",
                b"5",
                b"0",
                b"ff",
                b";",
                b":",
                b" ",
                b"\t",
                b"x",
                b"\x00",
                b"\xff",
            ]
        ),
        max_size=30,
    ).map(b"".join)
)
async def test_protocol_shaped_noise_ends_in_a_defined_rejection_however_split(
    data: bytes,
) -> None:
    assert_split_independent(data, HttpLimits(), [])
    assert_split_independent(data, SMALL, [])


# -- the connection loop -----------------------------------------------------------------


async def echo(req: HttpRequest) -> HttpResponse:
    """Answers every request with its method, path and body length."""
    return HttpResponse(
        200,
        [("Content-Type", "text/plain")],
        b"%s %s %d" % (req.method.encode(), req.path.encode("latin-1"), len(req.body)),
    )


class _Responses:
    """llhttp's response parser, collecting ``(status, headers, body)``."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self._headers: dict[bytes, bytes] = {}
        self._body = b""

    def on_message_begin(self) -> None:
        self._headers, self._body = {}, b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self._headers, self._body))


@fuzz_settings(60)
@given(
    reqs=pipeline(methods=tuple(m for m in METHODS if m != "HEAD")),
    changes=st.just([]) | edits,
)
async def test_the_connection_loop_answers_anything_with_framed_responses(
    reqs: list[Wire], changes: list[tuple[str, int, int, bytes]]
) -> None:
    sent, _intact = apply_edits(b"".join(r.raw for r in reqs), changes)
    requests, rejection, _upgraded = run([sent], HttpLimits())
    client, server = trio.testing.memory_stream_pair()
    conn = connection(HttpLimits(), echo, server)
    received = bytearray()

    async def talk() -> None:
        await client.send_all(sent)
        await client.send_eof()
        while chunk := await client.receive_some(65536):
            received.extend(chunk)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(talk)
            await conn.serve()
            await server.aclose()
    answers = _Responses()
    answers.parser.feed_data(bytes(received))
    # An upgrade nobody takes is answered by the app like any request, then the end.
    expected = [
        (200, b"%s %s %d" % (m.encode(), p.encode("latin-1"), len(b)))
        for m, p, _q, _h, b, _v, _k in requests
    ]
    final = [a for a in answers.done if a[0] != 100]  # "100 Continue" is not an answer
    assert [(status, body) for status, _, body in final[: len(expected)]] == expected
    extra = final[len(expected) :]
    if rejection is None:
        assert extra == []
    else:
        code, status, _message = rejection
        assert [(s, h[b"x-error-code"]) for s, h, _ in extra] == [(status, code.encode())]
        assert orjson.loads(extra[0][2])["code"] == code
        assert extra[0][1][b"connection"] == b"close"
