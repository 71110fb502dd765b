"""The native front's fast paths: direct socket I/O, auth header extraction, request ids."""

from __future__ import annotations

import re

import trio

from tokmesh.api.http_request_id import new_request_id
from tokmesh.api.http_types import HttpRequest, HttpResponse
from tokmesh.api.routes import auth_headers

from .conftest import Connect, StartServer

BIG = 8 * 1024 * 1024


async def big_app(req: HttpRequest) -> HttpResponse:
    return HttpResponse(200, [("Content-Type", "application/octet-stream")], b"x" * BIG)


async def test_answer_larger_than_socket_buffer_arrives_whole(
    start_server: StartServer, connect: Connect
) -> None:
    # A slow reader: the direct write sends only part, send_all must finish the rest.
    control = await start_server(big_app)
    client = await connect(control)
    await client.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    await trio.sleep(0.3)
    first, second = await client.responses(2, timeout=20)
    assert first.status == 200 and len(first.body) == BIG
    assert second.status == 200 and len(second.body) == BIG
    await client.aclose()


async def test_many_keep_alive_requests_on_one_connection(
    start_server: StartServer, connect: Connect
) -> None:
    async def app(req: HttpRequest) -> HttpResponse:
        return HttpResponse(200, [("Content-Type", "text/plain")], req.path.encode())

    control = await start_server(app)
    client = await connect(control)
    for i in range(200):
        await client.send(f"GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        resp = await client.response()
        assert resp.status == 200 and resp.body == f"/r{i}".encode()
        assert resp.header("X-Request-ID") is not None
    await client.aclose()


def test_auth_headers_only_auth_names_first_wins() -> None:
    req = HttpRequest(
        "POST",
        "/tokens/validate",
        "",
        [
            (b"host", b"x"),
            (b"authorization", b"Bearer first"),
            (b"x-nonce", b"n1"),
            (b"authorization", b"Bearer second"),
            (b"user-agent", b"ua"),
            (b"x-timestamp", b"123"),
        ],
    )
    assert auth_headers(req) == {
        "authorization": "Bearer first",
        "x-nonce": "n1",
        "x-timestamp": "123",
    }


def test_generated_request_ids_are_well_formed_and_unique() -> None:
    ids = [new_request_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"req-[A-Za-z0-9_-]{16}", rid) for rid in ids)
