"""The cluster port's server: mTLS connections whose requests run concurrently.

Each accepted connection must complete a TLS handshake with a client certificate issued
by the cluster CA, then pass :func:`~tokmesh.cluster.transport.peer_identity`; a refused
peer is logged (WARN ``cluster rpc auth failed`` with method, peer and error) and closed.
An admitted connection is read by one task that decodes frames and starts one task per
request, so a slow call does not hold up the others on the same connection; replies go
out in the order they are ready, each naming its request id. A request runs for at most
the milliseconds its caller said it would wait. A peer that breaks the frame protocol gets
one connection-level error frame and is disconnected; the server goes on.
"""

from __future__ import annotations

import functools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn

import trio

from tokmesh.api.accept import accept_loop
from tokmesh.api.tls_handshake import server_handshake
from tokmesh.cluster.frames import (
    DEFAULT_MAX_FRAME,
    Decoder,
    FrameError,
    Request,
    check_method,
    encode_error,
    encode_response,
)
from tokmesh.cluster.transport import (
    AUTH_REFUSED_CODE,
    RECEIVE_SIZE,
    Outbox,
    PeerRefused,
    TlsContexts,
    format_address,
    peer_identity,
)
from tokmesh.domain.errors import E, TokMeshError

log = logging.getLogger("tokmesh.cluster.rpc")

#: A method: ``await handler(peer_identity, body)`` returns the reply body (a JSON value,
#: or bytes sent as they are) or raises :class:`TokMeshError`, which becomes an error frame.
Handler = Callable[[str, Any], Awaitable[Any]]

#: Seconds a refused or misbehaving connection is kept open after its error frame, reading
#: what the peer still sends: closing a socket with unread input makes the kernel answer
#: with a reset, which can destroy the error frame before the peer reads it.
LINGER: Final = 1.0


class RpcServer:
    """Serves registered methods on the cluster port; ``ping`` is built in."""

    def __init__(
        self,
        tls: TlsContexts,
        node_id: str,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME,
        handshake_timeout: float = 5.0,
        max_inflight: int = 1024,
    ) -> None:
        self.tls = tls
        self.node_id = node_id
        self.max_frame_size = max_frame_size
        self.handshake_timeout = handshake_timeout
        #: Requests one connection may have running; beyond it the connection is not read
        #: until one finishes, so a flood from one peer is held back by TCP, not memory.
        self.max_inflight = max_inflight
        self.handlers: dict[str, Handler] = {"ping": self._ping}
        #: ``host:port`` of each listening socket, once :meth:`serve` has started.
        self.addresses: list[str] = []
        self.port = 0

    def register(self, method: str, handler: Handler) -> None:
        """Serve ``method`` with ``handler`` (replacing a previous one)."""
        check_method(method)
        self.handlers[method] = handler

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Listen on ``host:port`` (port 0: any free port) and serve until cancelled;
        ``task_status.started`` gets the bound port."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.addresses = [format_address(li.socket.getsockname()) for li in listeners]
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(
                    functools.partial(
                        accept_loop, listener, nursery, self._serve_connection, name="cluster"
                    )
                )
            task_status.started(self.port)
            await trio.sleep_forever()

    async def _ping(self, peer: str, body: Any) -> dict[str, Any]:
        return {"node_id": self.node_id, "timestamp": int(time.time())}

    async def _serve_connection(self, tcp: trio.SocketStream) -> None:
        try:
            peer = format_address(tcp.socket.getpeername())
        except OSError:
            return  # gone before we looked
        stream = trio.SSLStream(tcp, self.tls.server_ctx, server_side=True)
        try:
            if not await server_handshake(stream, self.handshake_timeout):
                auth_failed("", peer, "TLS handshake timed out")
                return
        except trio.BrokenResourceError as exc:
            if isinstance(exc.__cause__, ssl.SSLError):
                auth_failed("", peer, f"TLS handshake refused: {exc.__cause__}")
            return  # else a plain disconnect (a port probe): nothing to report
        try:
            identity = peer_identity(stream.getpeercert(binary_form=True))
        except PeerRefused as exc:
            await self._refuse(stream, peer, str(exc))
            return
        await _Connection(self, stream, identity, peer).run()

    async def _refuse(self, stream: trio.SSLStream[Any], peer: str, reason: str) -> None:
        # The client has sent (or is about to send) its first request: wait briefly for
        # it, so the log line can name the method the peer tried.
        method = ""
        decoder = Decoder(self.max_frame_size)
        with trio.move_on_after(self.handshake_timeout):
            try:
                while (frame := decoder.next_frame()) is None:
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    decoder.feed(data)
                if isinstance(frame, Request):
                    method = frame.method
            except (FrameError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        auth_failed(method, peer, reason)
        await _say_and_close(
            stream, encode_error(0, AUTH_REFUSED_CODE, f"cluster peer refused: {reason}")
        )

    async def dispatch(self, identity: str, peer: str, request: Request) -> bytes:
        """Run ``request`` and return its reply frame; never raises for a failed call."""
        rid = request.request_id
        started = trio.current_time()
        try:
            handler = self.handlers.get(request.method)
            if handler is None:
                raise TokMeshError(E.SYS_NOT_FOUND, f"unknown cluster method {request.method}")
            value = request.load()
            with trio.move_on_after(request.deadline_ms / 1000) as scope:
                result = await handler(identity, value)
            if scope.cancelled_caught:
                raise TokMeshError(E.CLST_TIMEOUT, "deadline of the call passed on the server")
            frame = encode_response(rid, result)
            if len(frame) > self.max_frame_size:
                raise TokMeshError(E.SYS_INTERNAL, "reply exceeds the cluster frame limit")
            return frame
        except TokMeshError as exc:
            return encode_error(rid, exc.code, exc.message, exc.details)
        except FrameError as exc:
            return encode_error(rid, E.SYS_BAD_REQUEST.code, f"request body: {exc.detail}")
        except Exception as exc:
            # A bug in a handler fails its call, not the connection or the server.
            log.exception(
                "cluster rpc error",
                extra={
                    "component": "cluster_rpc",
                    "method": request.method,
                    "peer": peer,
                    "node": identity,
                    "duration_ms": round((trio.current_time() - started) * 1000, 3),
                    "error": repr(exc),
                },
            )
            return encode_error(rid, E.SYS_INTERNAL.code, E.SYS_INTERNAL.message)


def auth_failed(method: str, peer: str, error: str) -> None:
    """Log one refused peer."""
    log.warning(
        "cluster rpc auth failed",
        extra={"component": "cluster_rpc", "method": method, "peer": peer, "error": error},
    )


async def _say_and_close(stream: trio.SSLStream[Any], frame: bytes) -> None:
    """Send a last frame, then read (and drop) input until the peer closes or
    :data:`LINGER` passes; the caller closes the socket."""
    with trio.move_on_after(LINGER):
        try:
            await stream.send_all(frame)
            while await stream.receive_some(RECEIVE_SIZE):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class _Connection:
    """One admitted peer connection: a reader, a writer and a task per running request."""

    def __init__(
        self, server: RpcServer, stream: trio.SSLStream[Any], identity: str, peer: str
    ) -> None:
        self.server = server
        self.stream = stream
        self.identity = identity
        self.peer = peer
        self.outbox = Outbox(stream)
        self.inflight = 0
        self._slot_free = trio.lowlevel.ParkingLot()

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, nursery.cancel_scope)
                await self._read(nursery)
                nursery.cancel_scope.cancel()
        finally:
            self.outbox.close()

    async def _write(self, scope: trio.CancelScope) -> None:
        try:
            await self.outbox.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()  # a connection that cannot send is over

    async def _read(self, nursery: trio.Nursery) -> None:
        decoder = Decoder(self.server.max_frame_size)
        limit = self.server.max_inflight
        while True:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            try:
                decoder.feed(data)
                frames = decoder.frames()
            except FrameError as exc:
                await self._protocol_error(exc.detail)
                return
            for frame in frames:
                if not isinstance(frame, Request):
                    await self._protocol_error("only requests may be sent to the server")
                    return
                while self.inflight >= limit:
                    await self._slot_free.park()
                self.inflight += 1
                nursery.start_soon(self._answer, frame)

    async def _answer(self, request: Request) -> None:
        try:
            frame = await self.server.dispatch(self.identity, self.peer, request)
            await self.outbox.put(frame)
        except trio.ClosedResourceError:
            pass  # the connection ended while the call ran: nobody is waiting
        finally:
            self.inflight -= 1
            self._slot_free.unpark()

    async def _protocol_error(self, detail: str) -> None:
        log.warning(
            "cluster rpc protocol error",
            extra={
                "component": "cluster_rpc",
                "peer": self.peer,
                "node": self.identity,
                "error": detail,
            },
        )
        # Replies already queued go first; then the error, then the linger.
        try:
            await self.outbox.put(
                encode_error(0, E.SYS_BAD_REQUEST.code, f"protocol error: {detail}")
            )
        except trio.ClosedResourceError:
            return
        self.outbox.close()
        with trio.move_on_after(LINGER):
            await self.outbox.done.wait()
            try:
                while await self.stream.receive_some(RECEIVE_SIZE):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
