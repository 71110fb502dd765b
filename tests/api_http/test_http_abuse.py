"""Parser abuse: each attack gets its defined answer and the server keeps serving others."""

from __future__ import annotations

import resource
from typing import Any

import pytest
import trio

from tokmesh.api.http_limits import HttpLimits
from tokmesh.api.http_types import HttpRequest, HttpResponse

from .conftest import BOTH_FRONTS

pytestmark = BOTH_FRONTS

GET = b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n"


async def assert_still_serving(control: Any, connect: Any, deadline: float = 1.0) -> None:
    """A fresh client gets a normal answer within ``deadline`` seconds."""
    client = await connect(control)
    with trio.fail_after(deadline):
        await client.send(GET % b"/alive")
        resp = await client.response(deadline)
    assert resp.status == 200
    assert resp.json()["path"] == "/alive"
    await client.aclose()


async def expect_error(client: Any, status: int, code: str) -> Any:
    resp = await client.response()
    assert resp.status == status
    assert resp.header("X-Error-Code") == code
    assert resp.header("Connection") == "close"
    doc = resp.json()
    assert doc["code"] == code
    assert doc["request_id"] == resp.header("X-Request-ID")
    assert await client.closed(2)
    return doc


async def test_oversize_headers_get_431(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    control = await start_server(recording_app, limits=HttpLimits(max_header_bytes=4096))
    client = await connect(control)
    await client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
    await expect_error(client, 431, "TM-SYS-4000")

    # Many small headers over the byte limit.
    client = await connect(control)
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(90))
    await client.send(b"GET / HTTP/1.1\r\nHost: t\r\n" + many + b"\r\n")
    await expect_error(client, 431, "TM-SYS-4000")

    # Too many fields.
    client = await connect(control)
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    await client.send(b"GET / HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n")
    await expect_error(client, 431, "TM-SYS-4000")

    # One endless header line, fed in pieces, never completed: bounded, answered 431.
    client = await connect(control)
    await client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Endless: ")
    with trio.move_on_after(3):
        for _ in range(200):
            try:
                await client.send(b"b" * 1024)
            except trio.BrokenResourceError:
                break
            await trio.sleep(0)
    await expect_error(client, 431, "TM-SYS-4000")
    assert recording_app.seen == []
    await assert_still_serving(control, connect)


async def test_oversize_body_gets_413_admin_4130(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    control = await start_server(recording_app, limits=HttpLimits(max_body_size=1024))
    client = await connect(control)
    body = b"z" * 4096
    await client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4096\r\n\r\n" + body)
    doc = await expect_error(client, 413, "TM-ADMIN-4130")
    assert doc["details"] == {"max_body_size": 1024}

    # Chunked bodies have no declared length: cut off when the running total passes it.
    client = await connect(control)
    await client.send(
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"400\r\n"
        + b"y" * 1024
        + b"\r\n1\r\ny\r\n0\r\n\r\n"
    )
    await expect_error(client, 413, "TM-ADMIN-4130")

    # Exactly at the limit is fine.
    client = await connect(control)
    await client.send(b"POST /ok HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n" + b"q" * 1024)
    assert (await client.response()).status == 200
    assert recording_app.seen == [("POST", "/ok")]


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nabc\r\n0\r\n\r\n",  # not hex
        b"3\nabc\n0\n\n",  # bare LF
        b"fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",  # size overflow
        b"3\r\nabcdef\r\n0\r\n\r\n",  # chunk longer than its size
        b"-3\r\nabc\r\n0\r\n\r\n",  # negative size
    ],
)
async def test_invalid_chunked_gets_400(
    start_server: Any, connect: Any, recording_app: Any, body: bytes
) -> None:
    control = await start_server(recording_app)
    client = await connect(control)
    await client.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    await expect_error(client, 400, "TM-SYS-4000")
    assert recording_app.seen == []


@pytest.mark.parametrize(
    "head",
    [
        # CL.TE and TE.CL: the classic desync pair.
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
        # Obfuscated or layered transfer codings.
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity, chunked\r\n"
        b"Content-Length: 4\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\x0bchunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        # Conflicting lengths.
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 44\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4, 44\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +4\r\n\r\n",
        # Host confusion.
        b"POST / HTTP/1.1\r\nHost: t\r\nHost: evil\r\nContent-Length: 4\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\n",
    ],
)
async def test_smuggling_shapes_rejected_and_smuggled_request_never_runs(
    start_server: Any, connect: Any, recording_app: Any, head: bytes
) -> None:
    control = await start_server(recording_app)
    client = await connect(control)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    await client.send(head + b"0\r\n\r\n" + smuggled)
    await expect_error(client, 400, "TM-SYS-4000")
    await trio.sleep(0.05)
    assert recording_app.seen == []
    await assert_still_serving(control, connect)
    assert ("GET", "/smuggled") not in recording_app.seen


async def test_requests_before_a_bad_one_are_answered_then_closed(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    control = await start_server(recording_app)
    client = await connect(control)
    await client.send(
        GET % b"/first"
        + b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        + GET % b"/smuggled"
    )
    first, bad = await client.responses(2)
    assert first.status == 200 and first.header("Connection") is None
    assert bad.status == 400 and bad.header("Connection") == "close"
    assert await client.closed(2)
    assert recording_app.seen == [("GET", "/first")]


async def test_unsupported_versions(start_server: Any, connect: Any, recording_app: Any) -> None:
    control = await start_server(recording_app)
    client = await connect(control)
    await client.send(b"GET / HTTP/2.0\r\nHost: t\r\n\r\n")
    await expect_error(client, 505, "TM-SYS-4000")
    # h2c prior-knowledge preface on the cleartext port is refused, not spoken.
    client = await connect(control)
    await client.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    await expect_error(client, 400, "TM-SYS-4000")
    assert recording_app.seen == []


async def test_slowloris_one_byte_per_second_times_out_while_others_are_served(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    control = await start_server(
        recording_app, limits=HttpLimits(header_timeout=2.0, linger_timeout=0.5)
    )
    slow = await connect(control)
    request = b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
    served_meanwhile = 0
    start = trio.current_time()

    async def trickle() -> None:
        for byte in request:
            try:
                await slow.send(bytes([byte]))
            except trio.BrokenResourceError:
                return
            await trio.sleep(1.0)

    async def others() -> None:
        nonlocal served_meanwhile
        while trio.current_time() - start < 2.5:
            client = await connect(control)
            t0 = trio.current_time()
            await client.send(GET % b"/fast")
            assert (await client.response()).status == 200
            assert trio.current_time() - t0 < 0.5
            served_meanwhile += 1
            await client.aclose()
            await trio.sleep(0.2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        nursery.start_soon(others)
        resp = await slow.response(timeout=4)
        assert resp.status == 408
        assert resp.json()["code"] == "TM-SYS-4000"
        assert resp.header("Connection") == "close"
        assert await slow.closed(2)
        elapsed = trio.current_time() - start
        assert 1.8 < elapsed < 3.6
    assert served_meanwhile >= 5
    assert ("GET", "/slow") not in recording_app.seen


async def test_slow_body_times_out_with_408(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    control = await start_server(recording_app, limits=HttpLimits(body_timeout=1.0))
    client = await connect(control)
    await client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
    resp = await client.response(timeout=3)
    assert resp.status == 408
    assert await client.closed(2)
    assert recording_app.seen == []


async def test_thousand_idle_connections(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2600:
        if hard != resource.RLIM_INFINITY and hard < 2600:
            pytest.skip("needs 2600 file descriptors")
        resource.setrlimit(resource.RLIMIT_NOFILE, (2600, hard))
    control = await start_server(
        recording_app, limits=HttpLimits(idle_timeout=3.0, linger_timeout=0.2)
    )
    idle = []
    for _ in range(1000):
        idle.append(await connect(control))
    with trio.fail_after(5):
        while control.connections < 1000:
            await trio.sleep(0.01)
    # A new client is still served promptly.
    t0 = trio.current_time()
    await assert_still_serving(control, connect, deadline=1.0)
    assert trio.current_time() - t0 < 1.0
    # Every idle connection is closed by the idle timeout, without an answer.
    with trio.fail_after(8):
        for client in idle:
            assert await client.closed(8)
            assert client.raw == b""
            await client.aclose()
    with trio.fail_after(2):
        while control.connections:
            await trio.sleep(0.01)
    assert control.accepted == 1001


async def test_drain_finishes_in_flight_and_closes_idle(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    control = await start_server(recording_app)
    port = control.ports[0]
    idle = await connect(control)
    await idle.send(GET % b"/warm")
    await idle.response()
    busy = await connect(control)
    await busy.send(b"GET /sleep?0.5 HTTP/1.1\r\nHost: t\r\n\r\n")
    await trio.sleep(0.1)
    clean: list[bool] = []

    async def drain() -> None:
        clean.append(await control.drain(5.0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        assert await idle.closed(1)
        resp = await busy.response()
        assert resp.status == 200
        assert resp.header("Connection") == "close"
    assert clean == [True]
    assert control.stopped
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_drain_deadline_cancels_stragglers(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    control = await start_server(recording_app)
    busy = await connect(control)
    await busy.send(b"GET /sleep?30 HTTP/1.1\r\nHost: t\r\n\r\n")
    await trio.sleep(0.1)
    t0 = trio.current_time()
    assert await control.drain(0.3) is False
    assert trio.current_time() - t0 < 1.0
    assert await busy.closed(1)
    assert control.connections == 0


async def test_stalled_streamed_body_gets_408(
    start_server: Any, connect: Any, recording_app: Any
) -> None:
    control = await start_server(
        recording_app,
        streaming_predicate=lambda method, path: path == "/upload",
        limits=HttpLimits(body_timeout=0.5, linger_timeout=0.2),
    )
    client = await connect(control)
    await client.send(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n"
    )
    assert (await client.response()).status == 100
    await client.send(b"abc")
    resp = await client.response(timeout=3)
    assert resp.status == 408
    assert resp.json()["code"] == "TM-SYS-4000"
    assert resp.header("Connection") == "close"
    assert await client.closed(2)
    assert recording_app.seen == [("POST", "/upload")]
    await assert_still_serving(control, connect)


async def test_client_that_never_reads_is_dropped_after_write_timeout(
    start_server: Any, connect: Any
) -> None:
    big = b"x" * (32 * 1024 * 1024)

    async def app(req: HttpRequest) -> HttpResponse:
        return HttpResponse(200, [], big)

    control = await start_server(app, limits=HttpLimits(write_timeout=0.5))
    client = await connect(control)
    await client.send(GET % b"/big")
    with trio.fail_after(3):
        while control.connections:
            await trio.sleep(0.05)
    await assert_still_serving_any(control, connect)


async def assert_still_serving_any(control: Any, connect: Any) -> None:
    client = await connect(control)
    await client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    with trio.fail_after(2):
        while b"\r\n\r\n" not in client.raw:
            data = await client.stream.receive_some(65536)
            assert data
            client.raw += data
    assert client.raw.startswith(b"HTTP/1.1 200 OK\r\n")
