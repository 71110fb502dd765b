"""Answers the mux gives from a callback (a mutation answered when its commit lands).

The front's ``now`` returns a :class:`Deferred` for ``/later*``; the test resolves them
from another task, as the WAL writer's commit callbacks do, in any order it likes.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio

from tokmesh.api.http_server import serve_http
from tokmesh.api.http_types import Deferred, HttpRequest, HttpResponse

from .conftest import Connect, RawClient


def _text(req: HttpRequest, status: int = 200) -> HttpResponse:
    return HttpResponse(status, [("Content-Type", "text/plain")], req.path.encode())


class DeferringFront:
    """``/later*`` answered through a Deferred the test resolves; the rest at once."""

    def __init__(self) -> None:
        self.waiting: list[tuple[HttpRequest, Deferred]] = []
        self.awaited = 0
        self.arrived = trio.Event()

    async def __call__(self, req: HttpRequest) -> HttpResponse:
        self.awaited += 1
        return _text(req)

    def now(self, req: HttpRequest) -> HttpResponse | Deferred | None:
        if req.path.startswith("/later"):
            later = Deferred()
            self.waiting.append((req, later))
            self.arrived.set()
            return later
        return _text(req)

    async def next_waiting(self) -> tuple[HttpRequest, Deferred]:
        while not self.waiting:
            self.arrived = trio.Event()
            await self.arrived.wait()
        return self.waiting.pop(0)


@pytest.fixture
async def served(nursery: trio.Nursery, connect: Connect) -> tuple[DeferringFront, RawClient]:
    """A server whose front defers ``/later*``, and one raw client connected to it."""
    front = DeferringFront()
    control = await nursery.start(partial(serve_http, front))
    return front, await connect(control)


async def test_deferred_answer_is_written_when_resolved(
    served: tuple[DeferringFront, RawClient],
) -> None:
    front, client = served
    for i in range(20):
        await client.send(
            f"POST /later{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
        )
        req, later = await front.next_waiting()
        await trio.sleep(0.01)
        later.resolve(_text(req, 201))
        resp = await client.response()
        assert resp.status == 201 and resp.body == f"/later{i}".encode()
    assert front.awaited == 0  # never handed to the connection's task
    await client.aclose()


async def test_pipelined_requests_behind_a_deferred_answer_keep_their_order(
    served: tuple[DeferringFront, RawClient],
) -> None:
    front, client = served
    # One write: an immediate answer, a deferred one, an immediate one, another deferred.
    await client.send(
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /later1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /later2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    first = await client.response()
    assert first.body == b"/a"
    req1, later1 = await front.next_waiting()
    await trio.sleep(0.05)
    assert not front.waiting  # /b and /later2 wait behind /later1
    later1.resolve(_text(req1))
    second, third = await client.responses(2)
    assert (second.body, third.body) == (b"/later1", b"/b")
    req2, later2 = await front.next_waiting()
    later2.resolve(_text(req2))
    assert (await client.response()).body == b"/later2"
    await client.aclose()


async def test_input_arriving_while_an_answer_waits_is_read_after_it(
    served: tuple[DeferringFront, RawClient],
) -> None:
    front, client = served
    await client.send(b"POST /later1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    req1, later1 = await front.next_waiting()
    # The next request arrives while the first answer waits (the mux pauses the socket).
    await client.send(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    await trio.sleep(0.05)
    later1.resolve(_text(req1))
    first, second = await client.responses(2)
    assert (first.body, second.body) == (b"/later1", b"/after")
    await client.aclose()


async def test_half_closed_client_still_gets_the_deferred_answer(
    served: tuple[DeferringFront, RawClient],
) -> None:
    front, client = served
    await client.send(b"POST /later HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    req, later = await front.next_waiting()
    await client.stream.send_eof()
    await trio.sleep(0.05)
    later.resolve(_text(req, 201))
    resp = await client.response()
    assert resp.status == 201 and resp.body == b"/later"
    assert await client.closed()


async def test_an_error_resolution_is_rendered_and_the_connection_serves_on(
    served: tuple[DeferringFront, RawClient],
) -> None:
    front, client = served
    await client.send(b"POST /later HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    _req, later = await front.next_waiting()
    later.resolve(RuntimeError("a bug"))
    resp = await client.response()
    assert resp.status == 500
    await client.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await client.response()).body == b"/next"
    await client.aclose()


async def test_a_connection_gone_before_its_answer_is_left_alone(
    nursery: trio.Nursery, connect: Connect
) -> None:
    front = DeferringFront()
    control = await nursery.start(partial(serve_http, front))
    client = await connect(control)
    await client.send(b"POST /later HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    req, later = await front.next_waiting()
    await client.aclose()
    await trio.sleep(0.05)
    later.resolve(_text(req))  # the socket is closed: nothing to write, nothing raised
    other = await connect(control)
    await other.send(b"GET /still HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await other.response()).body == b"/still"
    await other.aclose()
