"""Fixtures for the HTTP front tests: a real server on 127.0.0.1 and a raw socket client.

The raw client parses responses with llhttp's response parser, so tests see exactly
what went over the wire (status, headers, body, and whether the server closed).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import httptools
import orjson
import pytest
import trio

from tokmesh.api.http_limits import HttpLimits
from tokmesh.api.http_server import ServerControl, serve_http
from tokmesh.api.http_types import HttpRequest, HttpResponse


class Resp:
    """One parsed response."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        return orjson.loads(self.body)


class RawClient:
    """A TCP client that writes raw bytes and parses raw responses."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = httptools.HttpResponseParser(self)
        self.done: deque[Resp] = deque()
        self.cur = Resp()
        self.eof = False
        self.raw = b""

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self.cur = Resp()

    def on_status(self, status: bytes) -> None:
        pass

    def on_header(self, name: bytes, value: bytes) -> None:
        self.cur.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.cur.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.cur.body += body

    def on_message_complete(self) -> None:
        self.done.append(self.cur)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _read_once(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            self.eof = True
            return
        self.raw += data
        self.parser.feed_data(data)

    async def responses(self, n: int, timeout: float = 5.0) -> list[Resp]:
        """Exactly ``n`` responses (fails the test on timeout or early EOF)."""
        with trio.fail_after(timeout):
            while len(self.done) < n:
                try:
                    await self._read_once()
                except trio.BrokenResourceError:
                    self.eof = True
                assert not self.eof, f"server closed after {len(self.done)} responses"
        return [self.done.popleft() for _ in range(n)]

    async def response(self, timeout: float = 5.0) -> Resp:
        return (await self.responses(1, timeout))[0]

    async def closed(self, timeout: float = 5.0) -> bool:
        """Whether the server closes the connection within ``timeout`` (reading on)."""
        with trio.move_on_after(timeout):
            while not self.eof:
                try:
                    await self._read_once()
                except (trio.BrokenResourceError, httptools.HttpParserError):
                    self.eof = True
            return True
        return False

    async def aclose(self) -> None:
        await self.stream.aclose()


class RecordingApp:
    """A trivial front handler that records what it executed."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, req: HttpRequest) -> HttpResponse:
        self.seen.append((req.method, req.path))
        if req.path == "/sleep":
            await trio.sleep(float(req.query or "0.2"))
        if req.path == "/boom":
            raise RuntimeError("handler bug")
        body = req.body
        if req.stream is not None:
            body = b"".join([chunk async for chunk in req.stream])
        doc = {
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "version": req.http_version,
            "body": body.decode("latin-1"),
            "peer": req.peer_ip,
            "tls": req.tls,
            "streamed": req.stream is not None,
        }
        return HttpResponse(200, [("Content-Type", "application/json")], orjson.dumps(doc))


class MuxFront:
    """A test app plus ``now``, so that the server reads plain connections through its mux.

    ``now`` answers every request the app answers without suspending (it drives the
    coroutine by hand) and declines ``/sleep*`` so that those take the awaiting path.
    Any other suspension is a bug in a test app and fails loudly.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.now_calls = 0

    async def __call__(self, req: HttpRequest) -> HttpResponse:
        resp: HttpResponse = await self.app(req)
        return resp

    def now(self, req: HttpRequest) -> HttpResponse | None:
        if req.path.startswith("/sleep"):
            return None
        self.now_calls += 1
        coro = self.app(req)
        try:
            coro.send(None)
        except StopIteration as stop:
            resp: HttpResponse = stop.value
            return resp
        coro.close()
        raise AssertionError(f"{req.method} {req.path} suspended inside now()")


StartServer = Callable[..., Awaitable[ServerControl]]
Connect = Callable[[ServerControl], Awaitable[RawClient]]


#: ``pytestmark = BOTH_FRONTS`` runs a module's tests twice: one task per connection, and
#: through the mux (for modules whose apps answer without suspending, see MuxFront).
BOTH_FRONTS = pytest.mark.parametrize("front_mode", ["task", "mux"])


@pytest.fixture
def front_mode() -> str:
    """How ``start_server`` serves plain connections (``task`` unless parametrized)."""
    return "task"


@pytest.fixture
def start_server(nursery: trio.Nursery, front_mode: str) -> StartServer:
    """``await start_server(app, limits=..., ...)`` -> the running server's control.

    In ``mux`` mode the app is wrapped in :class:`MuxFront` (plain connections are then
    read by the server's :class:`~tokmesh.api.http_mux.HttpMux`).
    """

    async def start(app: Any, **kwargs: Any) -> ServerControl:
        kwargs.setdefault("limits", HttpLimits(linger_timeout=0.5))
        if front_mode == "mux":
            app = MuxFront(app)
        control: ServerControl = await nursery.start(partial(serve_http, app, **kwargs))
        return control

    return start


@pytest.fixture
def connect() -> Connect:
    """``await connect(control)`` -> a RawClient on the server's first port."""

    async def open_client(control: ServerControl) -> RawClient:
        stream = await trio.open_tcp_stream("127.0.0.1", control.ports[0])
        return RawClient(stream)

    return open_client


@pytest.fixture
def recording_app() -> RecordingApp:
    return RecordingApp()
