"""HTTP front over real sockets: keep-alive, pipelining, versions, Expect, request ids."""

from __future__ import annotations

import re
from typing import Any

import orjson
import trio

from tokmesh.api.http_limits import HttpLimits
from tokmesh.api.http_types import HttpRequest, HttpResponse
from tokmesh.domain.errors import E, TokMeshError

from .conftest import BOTH_FRONTS

pytestmark = BOTH_FRONTS

GET = b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n"
GENERATED_ID = re.compile(r"req-[A-Za-z0-9_-]{16}")


async def test_keep_alive_reuses_one_connection(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    control = await start_server(recording_app)
    client = await connect(control)
    for i in range(3):
        await client.send(GET % f"/k{i}".encode())
        resp = await client.response()
        assert resp.status == 200
        assert resp.json()["path"] == f"/k{i}"
        assert resp.header("Connection") is None
        assert resp.header("Content-Length") == str(len(resp.body))
        assert resp.header("Date") is not None
    assert control.accepted == 1
    assert control.connections == 1


async def test_pipelined_requests_answered_in_order_in_one_write(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    control = await start_server(recording_app)
    client = await connect(control)
    # The first request is the slowest: order must still be request order.
    await client.send(
        b"GET /sleep?0.2 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /two HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /three?x=1 HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    first, second, third = await client.responses(3)
    assert [r.json()["path"] for r in (first, second, third)] == ["/sleep", "/two", "/three"]
    assert second.json()["body"] == "hello"
    assert third.json()["query"] == "x=1"
    # All three answers of that one read went out in one send_all.
    assert client.raw.count(b"HTTP/1.1 200 OK") == 3


async def test_connection_close_is_honoured(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    control = await start_server(recording_app)
    client = await connect(control)
    await client.send(
        b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        b"GET /never HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    resp = await client.response()
    assert resp.status == 200
    assert resp.header("Connection") == "close"
    assert await client.closed(2)
    assert recording_app.seen == [("GET", "/a")]


async def test_http10_closes_unless_keep_alive_requested(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    control = await start_server(recording_app)
    client = await connect(control)
    await client.send(b"GET /old HTTP/1.0\r\n\r\n")
    resp = await client.response()
    assert resp.status == 200
    assert resp.json()["version"] == "1.0"
    assert resp.header("Connection") == "close"
    assert await client.closed(2)

    client = await connect(control)
    await client.send(b"GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    resp = await client.response()
    assert resp.header("Connection") == "keep-alive"
    await client.send(b"GET /ka2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert (await client.response()).json()["path"] == "/ka2"


async def test_expect_100_continue_sends_interim_before_body(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    control = await start_server(recording_app)
    client = await connect(control)
    await client.send(
        b"POST /up HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    )
    interim = await client.response()
    assert interim.status == 100
    assert recording_app.seen == []
    await client.send(b"data")
    resp = await client.response()
    assert resp.status == 200
    assert resp.json()["body"] == "data"


async def test_expect_100_continue_too_large_is_413_at_once(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    control = await start_server(recording_app, limits=HttpLimits(max_body_size=1024))
    client = await connect(control)
    await client.send(
        b"POST /up HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
    )
    resp = await client.response()
    assert resp.status == 413
    assert resp.json()["code"] == E.ADMIN_TOO_LARGE.code == "TM-ADMIN-4130"
    assert resp.header("Connection") == "close"
    assert b"100 Continue" not in client.raw
    assert await client.closed(2)
    assert recording_app.seen == []


async def test_request_id_reused_or_generated(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    control = await start_server(recording_app)
    client = await connect(control)
    await client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-ID: my-trace 42\r\n\r\n")
    assert (await client.response()).header("X-Request-ID") == "my-trace 42"
    too_long = b"x" * 129
    await client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-ID: " + too_long + b"\r\n\r\n")
    rid = (await client.response()).header("X-Request-ID")
    assert rid is not None and GENERATED_ID.fullmatch(rid)
    await client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-ID: caf\xc3\xa9\r\n\r\n")
    rid = (await client.response()).header("X-Request-ID")
    assert rid is not None and GENERATED_ID.fullmatch(rid)


async def test_parser_error_carries_request_id_and_envelope(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    control = await start_server(recording_app)
    client = await connect(control)
    await client.send(b"GET / HTTP/1.1\r\nX-Request-ID: abc-1\r\nHost: t\r\nBad Header: x\r\n\r\n")
    resp = await client.response()
    assert resp.status == 400
    assert resp.header("X-Request-ID") == "abc-1"
    assert resp.header("X-Error-Code") == "TM-SYS-4000"
    assert resp.header("Content-Type") == "application/json"
    doc = resp.json()
    assert doc["code"] == "TM-SYS-4000"
    assert doc["request_id"] == "abc-1"
    assert isinstance(doc["timestamp"], int) and doc["timestamp"] > 1_600_000_000_000
    assert set(doc) == {"code", "message", "request_id", "timestamp"}
    assert await client.closed(2)

    # Garbage before any header: a generated id, still present.
    client = await connect(control)
    await client.send(b"\x16\x03\x01 not http\r\n\r\n")
    resp = await client.response()
    assert resp.status == 400
    rid = resp.header("X-Request-ID")
    assert rid is not None and GENERATED_ID.fullmatch(rid)
    assert resp.json()["request_id"] == rid


async def test_handler_errors_become_envelopes(start_server: Any, connect: Any) -> None:
    async def app(req: HttpRequest) -> HttpResponse:
        if req.path == "/missing":
            raise TokMeshError(E.SESS_NOT_FOUND, details={"id": "x"})
        if req.path == "/limited":
            raise TokMeshError(E.SYS_RATE_LIMITED, headers={"Retry-After": "3"})
        raise RuntimeError("bug")

    control = await start_server(app)
    client = await connect(control)
    await client.send(GET % b"/missing" + GET % b"/limited" + GET % b"/bug")
    missing, limited, bug = await client.responses(3)
    assert missing.status == 404
    assert missing.json()["code"] == "TM-SESS-4040"
    assert missing.json()["details"] == {"id": "x"}
    assert limited.status == 429 and limited.header("Retry-After") == "3"
    assert bug.status == 500
    assert bug.json()["code"] == "TM-SYS-5000"
    assert bug.header("X-Error-Code") == "TM-SYS-5000"
    assert bug.json()["request_id"] == bug.header("X-Request-ID")
    # A handler bug does not poison the connection.
    await client.send(GET % b"/missing")
    assert (await client.response()).status == 404


async def test_head_has_length_but_no_body(start_server: Any, connect: Any) -> None:
    async def app(req: HttpRequest) -> HttpResponse:
        return HttpResponse(200, [("Content-Type", "text/plain")], b"twelve bytes")

    control = await start_server(app)
    client = await connect(control)
    await client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    with trio.fail_after(5):
        while client.raw.count(b"HTTP/1.1 200") < 2 or not client.raw.endswith(b"twelve bytes"):
            client.raw += await client.stream.receive_some(65536)
    head_part, get_part = client.raw.split(b"HTTP/1.1 200 OK")[1:]
    assert b"Content-Length: 12\r\n" in head_part
    assert head_part.endswith(b"\r\n\r\n")
    assert get_part.endswith(b"\r\n\r\ntwelve bytes")


async def test_streamed_response_chunked_and_fixed(start_server: Any, connect: Any) -> None:
    async def parts() -> Any:
        for piece in (b"alpha-", b"beta-", b"gamma"):
            yield piece

    async def app(req: HttpRequest) -> HttpResponse:
        headers = [("Content-Type", "application/octet-stream")]
        if req.path == "/fixed":
            headers.append(("Content-Length", "16"))
        return HttpResponse(200, headers, body_iter=parts())

    control = await start_server(app)
    client = await connect(control)
    await client.send(GET % b"/chunked")
    resp = await client.response()
    assert resp.header("Transfer-Encoding") == "chunked"
    assert resp.body == b"alpha-beta-gamma"
    await client.send(GET % b"/fixed")
    resp = await client.response()
    assert resp.header("Content-Length") == "16"
    assert resp.header("Transfer-Encoding") is None
    assert resp.body == b"alpha-beta-gamma"
    # HTTP/1.0 has no chunked coding: the body ends with the connection.
    await client.send(b"GET /chunked HTTP/1.0\r\n\r\n")
    assert await client.closed(2)
    assert client.raw.endswith(b"\r\n\r\nalpha-beta-gamma")


async def test_streaming_request_body(start_server: Any, connect: Any, recording_app: Any) -> None:
    control = await start_server(
        recording_app,
        streaming_predicate=lambda method, path: method == "POST" and path == "/upload",
        limits=HttpLimits(max_body_size=64),
    )
    client = await connect(control)
    await client.send(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    await trio.sleep(0.05)
    await client.send(
        b"6\r\n world\r\n0\r\n\r\nPOST /other HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok"
    )
    upload, other = await client.responses(2)
    assert upload.json() == upload.json() | {"streamed": True, "body": "hello world"}
    assert other.json() == other.json() | {"streamed": False, "body": "ok"}

    # The limit still applies to a streamed body: the handler sees a 413 error.
    client = await connect(control)
    await client.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    await client.send(b"40\r\n" + b"a" * 64 + b"\r\n10\r\n" + b"b" * 16 + b"\r\n0\r\n\r\n")
    resp = await client.response()
    assert resp.status == 413
    assert resp.json()["code"] == "TM-ADMIN-4130"
    assert resp.json()["details"] == {"max_body_size": 64}
    assert await client.closed(2)


async def test_upgrade_handler_takes_over_events_path(start_server: Any, connect: Any) -> None:
    handed: list[bytes] = []

    async def on_upgrade(req: HttpRequest, stream: Any, buffered: bytes) -> None:
        handed.append(buffered)
        await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\nhi")

    async def app(req: HttpRequest) -> HttpResponse:
        return HttpResponse(404, [], b"")

    control = await start_server(app, upgrade_handler=on_upgrade)
    client = await connect(control)
    await client.send(
        b"GET /events HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nFRAME"
    )
    assert await client.closed(2)
    assert client.raw == b"HTTP/1.1 101 Switching Protocols\r\n\r\nhi"
    assert handed[0].startswith(b"GET /events HTTP/1.1\r\nhost: t\r\nupgrade: websocket\r\n")
    assert handed[0].endswith(b"\r\n\r\nFRAME")

    # h2c upgrade on another path: served as plain HTTP/1.1, then closed.
    client = await connect(control)
    await client.send(
        b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    )
    resp = await client.response()
    assert resp.status == 404
    assert resp.header("Connection") == "close"
    assert b"101" not in client.raw


async def test_json_body_round_trip_is_exact(start_server: Any, connect: Any) -> None:
    async def app(req: HttpRequest) -> HttpResponse:
        return HttpResponse(200, [("Content-Type", "application/json")], req.body)

    control = await start_server(app)
    client = await connect(control)
    payload = orjson.dumps({"token": "x" * 5000, "n": list(range(200))})
    await client.send(
        b"POST /v HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload
    )
    assert (await client.response()).body == payload


async def test_header_injection_from_handler_becomes_500(start_server: Any, connect: Any) -> None:
    async def app(req: HttpRequest) -> HttpResponse:
        return HttpResponse(200, [("X-Echo", "a\r\nSet-Cookie: owned=1")], b"x")

    control = await start_server(app)
    client = await connect(control)
    await client.send(GET % b"/")
    resp = await client.response()
    assert resp.status == 500
    assert resp.json()["code"] == "TM-SYS-5000"
    assert resp.header("Set-Cookie") is None


async def test_repeated_heads_with_new_bodies_are_each_answered_from_their_own_bytes(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    # A gateway repeats the same head with a new fixed-length token: the reused parse
    # (HttpConnection.feed) must still give each request its own body and fields.
    control = await start_server(recording_app)
    client = await connect(control)
    head = b"POST /tokens/validate?x=1 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer k:s\r\n"
    for i in range(5):
        body = b'{"token":"tok-%04d"}' % i
        await client.send(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        doc = (await client.response()).json()
        assert doc["body"] == body.decode()
        assert (doc["method"], doc["path"], doc["query"]) == ("POST", "/tokens/validate", "x=1")
    # One byte different in the head, a different method, a body split over two reads,
    # then two requests in one read: all parsed afresh and answered in order.
    body = b'{"token":"tok-9999"}'
    await client.send(
        head.replace(b"k:s", b"k:t") + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    assert (await client.response()).json()["body"] == body.decode()
    await client.send(head + b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
    await trio.sleep(0.05)
    await client.send(body[5:])
    assert (await client.response()).json()["body"] == body.decode()
    one = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    await client.send(one + GET % b"/after")
    first, second = await client.responses(2)
    assert first.json()["body"] == body.decode()
    assert second.json()["path"] == "/after"
    await client.send(one)
    assert (await client.response()).json()["method"] == "POST"
    await client.aclose()
