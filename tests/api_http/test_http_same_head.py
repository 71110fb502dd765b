"""The reused parse of a repeated request head gives exactly the parser's request."""

from __future__ import annotations

from typing import Any

import pytest

from tokmesh.api.http_connection import HttpConnection, ServerHooks
from tokmesh.api.http_limits import HttpLimits
from tokmesh.api.http_types import HttpRequest


class _Control:
    def __init__(self) -> None:
        self.draining = False
        self.conns: set[Any] = set()


class _NoStream:
    pass


class _Unused:
    def feed_data(self, data: bytes) -> None:
        raise AssertionError("the repeated head was parsed again")


def _conn() -> HttpConnection:
    hooks = ServerHooks(None, HttpLimits(), _Control())  # type: ignore[arg-type]
    return HttpConnection(hooks, _NoStream(), peer=("10.0.0.1", 5000))  # type: ignore[arg-type]


def _fields(req: HttpRequest) -> tuple[Any, ...]:
    return (
        req.method,
        req.path,
        req.query,
        list(req.headers),
        req.body,
        req.http_version,
        req.keep_alive,
        req.peer_ip,
        req.stream,
    )


HEADS = [
    b"POST /tokens/validate HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer a:b\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n",
    b"POST /x?q=1&r=%%20 HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n"
    b"Content-Length: %d\r\n\r\n",
    b"PUT http://example.com/abs/path?z HTTP/1.1\r\nHost: example.com\r\nX-A:  v \r\n"
    b"content-length: %d\r\n\r\n",
]


@pytest.mark.parametrize("head", HEADS)
async def test_repeated_head_gives_the_parsers_request(head: bytes) -> None:
    reused = _conn()
    for i in range(4):
        body = b"body-%03d" % i
        data = head % len(body) + body
        reused.feed(data)
        fresh = _conn()  # parses everything with llhttp
        fresh.feed(data)
        got, want = reused.queue.popleft(), fresh.queue.popleft()
        assert _fields(got) == _fields(want)
        assert got is not want and got.headers is not want.headers
        assert reused.same_head is not None
        reused.parser = _Unused()  # from now on the head must be reused, not parsed


@pytest.mark.parametrize(
    "data",
    [
        b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",  # closing request
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",  # two
    ],
)
async def test_heads_that_are_not_plain_single_requests_are_not_reused(data: bytes) -> None:
    conn = _conn()
    conn.feed(data)
    assert conn.same_head is None
