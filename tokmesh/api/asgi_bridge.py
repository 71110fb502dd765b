"""A small ASGI 3 server-side bridge: the HTTP front hands low-rate requests to an ASGI app.

The hot routes are served by plain handlers on the HTTP front; everything else (admin,
docs, ...) goes to the Quart-Trio app through :class:`AsgiBridge`, which is itself a
front handler (``async def __call__(req) -> HttpResponse``).

Two modes:

- **inline** (bridge used on its own): the app runs in the connection's task and the
  whole response is buffered;
- **running** (inside ``async with bridge.running():``): the bridge owns a nursery, each
  request runs the app in its own task, and a response without a small declared
  ``Content-Length`` is streamed to the client while the app produces it (downloads).
  ``running()`` also drives the app's lifespan (startup before, shutdown after).

:func:`asgi_lifespan` runs the ASGI lifespan protocol on its own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeAlias
from urllib.parse import unquote

import trio

from tokmesh.api.http_request_id import request_id_for
from tokmesh.api.http_types import HttpRequest, HttpResponse, RequestBodyError

LOGGER = logging.getLogger("tokmesh.api.asgi")

Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
# Parameters typed loosely so that apps with TypedDict scopes (Quart, Starlette) fit.
AsgiApp: TypeAlias = Callable[[Any, Any, Any], Awaitable[None]]

_ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}
_X_REQUEST_ID = b"x-request-id"


class AsgiLifespanError(RuntimeError):
    """The ASGI app reported ``lifespan.startup.failed``."""


@asynccontextmanager
async def asgi_lifespan(app: AsgiApp, *, timeout: float = 30.0) -> AsyncIterator[dict[str, Any]]:
    """Run ``app``'s lifespan: startup on entry, shutdown on exit.

    Yields the lifespan ``state`` dict (copied into every HTTP scope by the bridge).
    An app that does not speak lifespan (raises before startup completes) is accepted
    as is. ``lifespan.startup.failed`` raises :class:`AsgiLifespanError`. Exceptions
    from the body propagate wrapped in an ``ExceptionGroup`` (the lifespan task lives in
    a nursery around the body).
    """
    state: dict[str, Any] = {}
    scope: dict[str, Any] = {"type": "lifespan", "asgi": dict(_ASGI_VERSION), "state": state}
    to_app, from_server = trio.open_memory_channel[Message](2)
    started = trio.Event()
    stopped = trio.Event()
    failure: list[str] = []

    async def receive() -> Message:
        return await from_server.receive()

    async def send(message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            started.set()
        elif kind == "lifespan.startup.failed":
            failure.append(str(message.get("message", "")))
            started.set()
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            if kind == "lifespan.shutdown.failed":
                LOGGER.error("ASGI lifespan shutdown failed: %s", message.get("message", ""))
            stopped.set()

    async def run() -> None:
        try:
            await app(scope, receive, send)
        except Exception:
            if started.is_set():
                LOGGER.exception("ASGI lifespan task failed")
            else:
                LOGGER.debug("ASGI app does not support lifespan", exc_info=True)
        finally:
            started.set()
            stopped.set()

    failed = False
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await to_app.send({"type": "lifespan.startup"})
        with trio.fail_after(timeout):
            await started.wait()
        if failure:
            failed = True
            nursery.cancel_scope.cancel()
        else:
            try:
                yield state
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(timeout):
                    if not stopped.is_set():
                        await to_app.send({"type": "lifespan.shutdown"})
                        await stopped.wait()
                nursery.cancel_scope.cancel()
    if failed:
        raise AsgiLifespanError(f"ASGI startup failed: {failure[0]}")


class _Exchange:
    """One request/response between the front and the ASGI app."""

    def __init__(self, req: HttpRequest, streaming_allowed: bool, buffer_limit: int) -> None:
        self.req = req
        self.streaming_allowed = streaming_allowed
        self.buffer_limit = buffer_limit
        self.body_sent = False
        self.body_error: RequestBodyError | None = None
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.streaming = False
        self.complete = False
        self.app_error: BaseException | None = None
        self.ready = trio.Event()  # head decided (streaming) or response complete
        self.finished = trio.Event()  # response complete or app ended
        self.cancel_scope = trio.CancelScope()
        self.chunk_send, self.chunk_recv = trio.open_memory_channel[bytes](1)

    async def receive(self) -> Message:
        if not self.body_sent:
            stream = self.req.stream
            if stream is None:
                self.body_sent = True
                return {"type": "http.request", "body": self.req.body, "more_body": False}
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                self.body_sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            except RequestBodyError as exc:
                # ASGI's word for "the client is gone"; the front answers the error.
                self.body_sent = True
                self.body_error = exc
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": chunk, "more_body": True}
        await self.finished.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.status:
                raise RuntimeError("http.response.start sent twice")
            self.status = int(message["status"])
            self.headers = [
                (bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
                for name, value in message.get("headers", ())
            ]
            if self.streaming_allowed:
                declared = _declared_length(self.headers)
                if declared is None or declared > self.buffer_limit:
                    self.streaming = True
                    self.ready.set()
        elif kind == "http.response.body":
            if not self.status or self.complete:
                raise RuntimeError("http.response.body out of order")
            body = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            if self.streaming:
                if body:
                    await self.chunk_send.send(body)
                if not more:
                    self.complete = True
                    self.chunk_send.close()
                    self.finished.set()
            else:
                if body:
                    self.chunks.append(body)
                if not more:
                    self.complete = True
                    self.ready.set()
                    self.finished.set()

    async def run(self, app: AsgiApp, scope: MutableMapping[str, Any]) -> None:
        """Run the app in a bridge task (running mode)."""
        with self.cancel_scope:
            try:
                await app(scope, self.receive, self.send)
            except Exception as exc:
                self.app_error = exc
            finally:
                self.chunk_send.close()
                self.ready.set()
                self.finished.set()

    def response(self) -> HttpResponse:
        """The response once ``ready`` (or after an inline run)."""
        if self.body_error is not None:
            raise self.body_error
        if self.app_error is not None and not self.status:
            raise self.app_error
        if not self.status or (not self.streaming and not self.complete):
            raise RuntimeError("ASGI app ended without a complete response")
        if self.streaming:
            return HttpResponse(self.status, self.headers, body_iter=_AsgiBody(self))
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        return HttpResponse(self.status, self.headers, body)


class _AsgiBody:
    """``body_iter`` of a streamed ASGI response; ``aclose`` stops the app."""

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange

    def __aiter__(self) -> _AsgiBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._exchange.chunk_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if not self._exchange.complete:
                raise RuntimeError("ASGI app ended in the middle of its response") from None
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._exchange.cancel_scope.cancel()
        await self._exchange.chunk_recv.aclose()


def _declared_length(headers: list[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if name.lower() == "content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class AsgiBridge:
    """Serve an ASGI 3 app as a front handler: ``response = await bridge(req)``.

    The scope's ``X-Request-ID`` header is the front's chosen id
    (:func:`~tokmesh.api.http_request_id.request_id_for`), so the app's envelope and the
    response header agree with what the front would have generated.
    """

    def __init__(
        self,
        app: AsgiApp,
        *,
        root_path: str = "",
        buffer_limit: int = 256 * 1024,
    ) -> None:
        self.app = app
        self.root_path = root_path
        self.buffer_limit = buffer_limit
        self.state: dict[str, Any] | None = None
        self._nursery: trio.Nursery | None = None

    @asynccontextmanager
    async def running(
        self, *, lifespan: bool = True, lifespan_timeout: float = 30.0
    ) -> AsyncIterator[AsgiBridge]:
        """Run lifespan startup, serve in streaming mode, run lifespan shutdown at exit."""
        async with AsyncExitStack() as stack:
            if lifespan:
                self.state = await stack.enter_async_context(
                    asgi_lifespan(self.app, timeout=lifespan_timeout)
                )
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    yield self
                finally:
                    self._nursery = None
                    nursery.cancel_scope.cancel()

    def build_scope(self, req: HttpRequest) -> dict[str, Any]:
        """The ASGI ``http`` scope for ``req``."""
        rid = request_id_for(req).encode("latin-1")
        headers: list[tuple[bytes, bytes]] = [
            (name, value) for name, value in req.headers if name != _X_REQUEST_ID
        ]
        headers.append((_X_REQUEST_ID, rid))
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": dict(_ASGI_VERSION),
            "http_version": req.http_version,
            "method": req.method,
            "scheme": "https" if req.tls else "http",
            "path": unquote(req.path),
            "raw_path": req.path.encode("latin-1"),
            "query_string": req.query.encode("latin-1"),
            "root_path": self.root_path,
            "headers": headers,
            "client": (req.peer_ip, req.peer_port) if req.peer_ip else None,
            "server": (req.server_ip, req.server_port) if req.server_ip else None,
            "extensions": {},
        }
        if self.state is not None:
            scope["state"] = dict(self.state)
        return scope

    async def __call__(self, req: HttpRequest) -> HttpResponse:
        """Run the app for ``req`` and return its response (streamed when running)."""
        scope = self.build_scope(req)
        nursery = self._nursery
        exchange = _Exchange(req, nursery is not None, self.buffer_limit)
        if nursery is None:
            try:
                await self.app(scope, exchange.receive, exchange.send)
            finally:
                exchange.finished.set()
            return exchange.response()
        nursery.start_soon(exchange.run, self.app, scope)
        try:
            await exchange.ready.wait()
            response = exchange.response()
        except BaseException:
            exchange.cancel_scope.cancel()
            raise
        if not exchange.streaming:
            # Buffered: let the app's task see its disconnect and end on its own.
            exchange.finished.set()
        return response
