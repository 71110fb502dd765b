"""Sans-IO response head rendering and request-id rules."""

from __future__ import annotations

import pytest

from tokmesh.api.http_render import Framing, HeaderInjectionError, encode_chunk, encode_head
from tokmesh.api.http_request_id import client_request_id, request_id_for
from tokmesh.api.http_types import HttpRequest, HttpResponse


async def _never() -> object:  # pragma: no cover - only its type matters
    yield b""


def test_plain_head_layout() -> None:
    resp = HttpResponse(201, [("Content-Type", "application/json")], b'{"a":1}')
    head, framing, length, keep = encode_head(
        resp, request_id="req-x", keep_alive=True, http10=False, head_only=False
    )
    text = head.decode()
    assert text.startswith("HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n")
    assert "X-Request-ID: req-x\r\n" in text
    assert "Content-Length: 7\r\n" in text
    assert "\r\nDate: " in text
    assert "Connection" not in text
    assert text.endswith("\r\n\r\n")
    assert (framing, length, keep) == (Framing.NONE, 7, True)


def test_handler_framing_headers_are_replaced() -> None:
    resp = HttpResponse(
        200,
        [("content-length", "999"), ("Transfer-Encoding", "gzip"), ("X-Request-ID", "mine")],
        b"abc",
    )
    head, _, _, _ = encode_head(
        resp, request_id="req-x", keep_alive=True, http10=False, head_only=False
    )
    text = head.decode()
    assert "Content-Length: 3\r\n" in text
    assert "999" not in text and "gzip" not in text
    assert "X-Request-ID: mine\r\n" in text and "req-x" not in text


def test_connection_close_and_http10() -> None:
    resp = HttpResponse(200, [("Connection", "close")], b"")
    head, _, _, keep = encode_head(
        resp, request_id=None, keep_alive=True, http10=False, head_only=False
    )
    assert keep is False and b"Connection: close\r\n" in head
    head, _, _, keep = encode_head(
        HttpResponse(200), request_id=None, keep_alive=True, http10=True, head_only=False
    )
    assert keep is True and b"Connection: keep-alive\r\n" in head


def test_no_body_statuses_have_no_length() -> None:
    for status in (204, 304, 101):
        head, framing, _, _ = encode_head(
            HttpResponse(status, [], b""),
            request_id=None,
            keep_alive=True,
            http10=False,
            head_only=False,
        )
        assert b"Content-Length" not in head
        assert framing == Framing.NONE


def test_streamed_framings() -> None:
    resp = HttpResponse(200, [], body_iter=_never())  # type: ignore[arg-type]
    _, framing, _, keep = encode_head(
        resp, request_id=None, keep_alive=True, http10=False, head_only=False
    )
    assert (framing, keep) == (Framing.CHUNKED, True)
    _, framing, _, keep = encode_head(
        resp, request_id=None, keep_alive=True, http10=True, head_only=False
    )
    assert (framing, keep) == (Framing.UNTIL_CLOSE, False)
    resp.headers.append(("Content-Length", "10"))
    head, framing, length, _ = encode_head(
        resp, request_id=None, keep_alive=True, http10=False, head_only=False
    )
    assert (framing, length) == (Framing.FIXED, 10)
    assert b"Content-Length: 10\r\n" in head
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"


@pytest.mark.parametrize(
    "header",
    [("X-A", "v\r\nSet-Cookie: evil=1"), ("X-A\r\nX-B", "v"), ("X-A", "v\n"), ("X-A", "v\r")],
)
def test_header_injection_is_refused(header: tuple[str, str]) -> None:
    with pytest.raises(HeaderInjectionError):
        encode_head(
            HttpResponse(200, [header], b""),
            request_id=None,
            keep_alive=True,
            http10=False,
            head_only=False,
        )


def test_request_id_rules() -> None:
    assert client_request_id(b"a") == "a"
    assert client_request_id(b"x" * 128) == "x" * 128
    assert client_request_id(b"x" * 129) is None
    assert client_request_id(b"") is None
    assert client_request_id(b"tab\there") is None
    assert client_request_id(b"\xff") is None
    req = HttpRequest("GET", "/", "", [(b"x-request-id", b"\x01bad")])
    rid = request_id_for(req)
    assert rid.startswith("req-") and len(rid) == 20
    assert request_id_for(req) == rid  # stable per request
    req = HttpRequest("GET", "/", "", [(b"x-request-id", b"ok-id")])
    assert request_id_for(req) == "ok-id"
    assert req.get_header("X-Request-Id") == b"ok-id"
    assert req.get_header(b"absent") is None
