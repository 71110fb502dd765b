"""The native front's fast paths: direct socket I/O, the connection mux, auth header
extraction, request ids."""

from __future__ import annotations

import re
from functools import partial

import pytest
import trio

from tokmesh.api import http_mux
from tokmesh.api.http_limits import HttpLimits
from tokmesh.api.http_request_id import new_request_id
from tokmesh.api.http_server import serve_http
from tokmesh.api.http_types import HttpRequest, HttpResponse
from tokmesh.api.routes import auth_headers

from .conftest import BOTH_FRONTS, Connect, MuxFront, StartServer

BIG = 8 * 1024 * 1024


async def big_app(req: HttpRequest) -> HttpResponse:
    return HttpResponse(200, [("Content-Type", "application/octet-stream")], b"x" * BIG)


@BOTH_FRONTS
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


@BOTH_FRONTS
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


class CountingApp:
    """Answers ``/sleep*`` after a nap (awaiting path), anything else at once."""

    def __init__(self) -> None:
        self.awaited: list[str] = []

    async def __call__(self, req: HttpRequest) -> HttpResponse:
        if req.path.startswith("/sleep"):
            self.awaited.append(req.path)
            await trio.sleep(0.05)
        return HttpResponse(200, [("Content-Type", "text/plain")], req.path.encode())


async def test_mux_hands_waiting_requests_to_the_task_and_takes_the_connection_back(
    nursery: trio.Nursery, connect: Connect
) -> None:
    app = CountingApp()
    front = MuxFront(app)
    control = await nursery.start(partial(serve_http, front))
    client = await connect(control)
    # One read: answered by the mux, then a request that must wait, then one queued
    # behind it; the answers keep request order.
    await client.send(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /sleep1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    answers = await client.responses(3)
    assert [r.body for r in answers] == [b"/a", b"/sleep1", b"/b"]
    assert front.now_calls == 1  # /b ran in the connection's task, after /sleep1
    assert app.awaited == ["/sleep1"]
    # The connection went back to the mux: the next request is answered there again.
    for i in range(5):
        await client.send(f"GET /c{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert (await client.response()).body == f"/c{i}".encode()
    assert front.now_calls == 6
    await client.aclose()


async def test_mux_idle_connection_times_out_and_others_keep_being_served(
    nursery: trio.Nursery, connect: Connect
) -> None:
    front = MuxFront(CountingApp())
    limits = HttpLimits(idle_timeout=0.3, timer_resolution=0.05, linger_timeout=0.2)
    control = await nursery.start(partial(serve_http, front, limits=limits))
    idle = await connect(control)
    await idle.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await idle.response()).body == b"/x"
    busy = await connect(control)
    with trio.fail_after(3):
        for i in range(8):  # keeps talking past the idle timeout of the other one
            await busy.send(f"GET /k{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert (await busy.response()).status == 200
            await trio.sleep(0.06)
    assert await idle.closed(2)
    await busy.send(b"GET /last HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await busy.response()).body == b"/last"
    assert front.now_calls == 10
    await busy.aclose()


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


async def test_mux_serves_more_ready_connections_than_one_batch(
    nursery: trio.Nursery, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_mux, "MAX_BATCH", 3)  # 20 ready connections: 7 wake-ups
    front = MuxFront(CountingApp())
    control = await nursery.start(partial(serve_http, front))
    clients = [await connect(control) for _ in range(20)]
    for i, client in enumerate(clients):
        await client.send(f"GET /n{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    for i, client in enumerate(clients):
        assert (await client.response()).body == f"/n{i}".encode()
        await client.aclose()
    assert front.now_calls == 20
