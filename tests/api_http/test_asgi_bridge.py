"""The ASGI bridge with a real Quart-Trio app behind the HTTP front."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from tokmesh.api.asgi_bridge import AsgiBridge, AsgiLifespanError, asgi_lifespan
from tokmesh.api.http_types import HttpRequest


class Probe:
    """What the app saw."""

    def __init__(self) -> None:
        self.started = False
        self.stopped = False
        self.release = trio.Event()
        self.scope: dict[str, Any] = {}


def make_app(probe: Probe) -> QuartTrio:
    app = QuartTrio("bridge_test")

    @app.before_serving
    async def startup() -> None:
        probe.started = True

    @app.after_serving
    async def shutdown() -> None:
        probe.stopped = True

    @app.get("/json")
    async def get_json() -> Any:
        probe.scope = dict(request.scope)
        return jsonify(
            hello="world",
            path=request.path,
            args=request.args.to_dict(),
            request_id=request.headers.get("X-Request-ID"),
            remote=request.remote_addr,
            scheme=request.scheme,
        )

    @app.post("/echo")
    async def echo() -> Any:
        data = await request.get_data()
        return Response(data, content_type="application/octet-stream")

    @app.get("/stream")
    async def stream() -> Any:
        async def gen() -> AsyncIterator[bytes]:
            yield b"first;"
            await probe.release.wait()
            yield b"second;"
            yield b"third"

        return gen()

    return app


async def test_bridge_json_echo_and_request_id(start_server: Any) -> None:
    probe = Probe()
    bridge = AsgiBridge(make_app(probe))
    async with bridge.running():
        assert probe.started
        control = await start_server(bridge)
        base = f"http://127.0.0.1:{control.ports[0]}"
        async with httpx.AsyncClient() as client:
            resp = await client.get(
                f"{base}/json?a=1&b=%C3%A9", headers={"X-Request-ID": "trace-7"}
            )
            assert resp.status_code == 200
            assert resp.json() == {
                "hello": "world",
                "path": "/json",
                "args": {"a": "1", "b": "é"},
                "request_id": "trace-7",
                "remote": "127.0.0.1",
                "scheme": "http",
            }
            assert resp.headers["x-request-id"] == "trace-7"
            assert resp.headers["content-type"] == "application/json"
            scope = probe.scope
            assert scope["type"] == "http" and scope["asgi"]["version"] == "3.0"
            assert scope["http_version"] == "1.1" and scope["method"] == "GET"
            assert scope["raw_path"] == b"/json" and scope["query_string"] == b"a=1&b=%C3%A9"
            assert scope["server"] == ("127.0.0.1", control.ports[0])
            assert scope["client"][0] == "127.0.0.1"

            # Without a client id the app sees the id the front puts on the response.
            resp = await client.get(f"{base}/json")
            assert resp.json()["request_id"] == resp.headers["x-request-id"]
            assert resp.headers["x-request-id"].startswith("req-")

            payload = bytes(range(256)) * 40
            resp = await client.post(f"{base}/echo", content=payload)
            assert resp.status_code == 200
            assert resp.content == payload

            resp = await client.get(f"{base}/nope")
            assert resp.status_code == 404
            assert resp.headers["x-request-id"].startswith("req-")
    assert probe.stopped


async def test_bridge_streams_response_while_app_produces_it(start_server: Any) -> None:
    probe = Probe()
    bridge = AsgiBridge(make_app(probe))
    async with bridge.running():
        control = await start_server(bridge)
        url = f"http://127.0.0.1:{control.ports[0]}/stream"
        async with httpx.AsyncClient() as client, client.stream("GET", url) as resp:
            assert resp.status_code == 200
            assert resp.headers["transfer-encoding"] == "chunked"
            chunks = resp.aiter_raw()
            # The first chunk arrives while the app is still blocked on `release`.
            with trio.fail_after(3):
                first = await chunks.__anext__()
            assert first == b"first;"
            probe.release.set()
            rest = b"".join([chunk async for chunk in chunks])
            assert rest == b"second;third"


async def test_bridge_with_streamed_request_body(start_server: Any) -> None:
    probe = Probe()
    bridge = AsgiBridge(make_app(probe))
    async with bridge.running():
        streamed: list[bool] = []

        async def front(req: HttpRequest) -> Any:
            streamed.append(req.stream is not None and req.body == b"")
            return await bridge(req)

        control = await start_server(
            front, streaming_predicate=lambda method, path: path == "/echo"
        )

        async def body() -> AsyncIterator[bytes]:
            for i in range(5):
                yield b"part%d;" % i
                await trio.sleep(0.01)

        async with httpx.AsyncClient() as client:
            resp = await client.post(f"http://127.0.0.1:{control.ports[0]}/echo", content=body())
            assert resp.status_code == 200
            assert resp.content == b"part0;part1;part2;part3;part4;"
        assert streamed == [True]


async def test_bridge_inline_mode_buffers(start_server: Any) -> None:
    probe = Probe()
    app = make_app(probe)
    bridge = AsgiBridge(app)
    probe.release.set()
    async with asgi_lifespan(app):
        assert probe.started
        control = await start_server(bridge)
        base = f"http://127.0.0.1:{control.ports[0]}"
        async with httpx.AsyncClient() as client:
            resp = await client.get(f"{base}/stream")
            assert resp.content == b"first;second;third"
            assert resp.headers["content-length"] == "18"
            resp = await client.post(f"{base}/echo", content=b"abc")
            assert resp.content == b"abc"
    assert probe.stopped


async def test_lifespan_failure_raises() -> None:
    app = QuartTrio("failing")

    @app.before_serving
    async def startup() -> None:
        raise RuntimeError("no database")

    with pytest.raises(AsgiLifespanError):
        async with asgi_lifespan(app):
            pass  # pragma: no cover


async def test_lifespan_unsupported_app_is_tolerated() -> None:
    async def plain_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError("only http")

    async with asgi_lifespan(plain_app) as state:
        assert state == {}
