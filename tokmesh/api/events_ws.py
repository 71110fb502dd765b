"""``GET /events``: the session event stream over WebSocket (native HTTP front).

The HTTP front hands an ``Upgrade: websocket`` request for ``/events`` to
:class:`EventsEndpoint` with the connection's stream and the request head replayed.
The endpoint authenticates the request as any business route (permission
``events.read``), answers refusals as ordinary HTTP error envelopes, completes the
handshake with ``wsproto`` and then serves one :class:`~tokmesh.actors.event_hub.Watcher`:
replay of the WAL after ``?cursor=`` first, live events after.

Why ``wsproto`` directly rather than a connection object per message (trio-websocket):
an event's frame is built once and shared by every watcher, and a watcher's pending
events go out in one write. One call per event per watcher would cost the node's single
Trio thread more than the writes it reports (measured with ``bench/events_bench.py``).

Browsers cannot set headers on a WebSocket, so credentials may also come as a
subprotocol: ``Sec-WebSocket-Protocol: tokmesh.events, tokmesh.auth.<base64url(id:secret)>``
(without padding); the server then selects ``tokmesh.events``. That header is never
logged or echoed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    Request,
)
from wsproto.utilities import RemoteProtocolError

from tokmesh.actors.event_codec import (
    AUTH_SUBPROTOCOL_PREFIX,
    CLOSE_BAD_REQUEST,
    CLOSE_CURSOR_EXPIRED,
    CLOSE_PING_TIMEOUT,
    CLOSE_UNAUTHORIZED,
    SUBPROTOCOL,
    SessionEvent,
    parse_cursor,
    parse_types,
    text_frame,
)
from tokmesh.actors.event_hub import (
    CursorExpired,
    EventHub,
    WatchEnded,
    Watcher,
    read_events,
)
from tokmesh.api.envelope import query_params
from tokmesh.api.http_errors import exception_response
from tokmesh.api.http_render import encode_head
from tokmesh.api.http_request_id import request_id_for
from tokmesh.api.http_types import HttpRequest, HttpResponse
from tokmesh.api.routes import SCOPE_BUSINESS, Call, Route, auth_headers
from tokmesh.domain.apikey import PERM_EVENTS_READ
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.services.auth import Principal

if TYPE_CHECKING:
    from tokmesh.api.deps import ApiDeps

log = logging.getLogger("tokmesh.events")

#: Seconds between the server's pings; a pong (or any frame) must come back within the
#: HTTP idle timeout, and the API key is checked again at each ping.
PING_INTERVAL = 15.0
#: How long a closing server waits for the client's close frame.
CLOSE_WAIT = 2.0
#: Frames written at most per write.
BATCH = 1024
#: Seconds a watcher lets events gather after a write that was not full.
COALESCE = 0.05
#: Bytes the kernel may hold unsent for one watcher (the socket's send buffer).
SEND_BUFFER = 256 * 1024


class EventsEndpoint:
    """The upgrade handler of the native HTTP front for ``GET /events``."""

    def __init__(
        self,
        deps: ApiDeps,
        hub: EventHub,
        *,
        idle_timeout: float = 75.0,
        write_timeout: float = 30.0,
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        self.deps = deps
        self.hub = hub
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.ping_interval = ping_interval

    async def __call__(self, req: HttpRequest, stream: Any, buffered: bytes) -> None:
        """Serve one upgrade request; the connection is closed when this returns."""
        try:
            principal, offered = await authorize_upgrade(self.deps, req)
        except TokMeshError as exc:
            await _refuse(stream, req, exc)
            return
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.receive_data(buffered)
            handshake = next(iter(ws.events()), None)
        except RemoteProtocolError as exc:
            await _refuse(stream, req, TokMeshError(E.SYS_BAD_REQUEST, str(exc)))
            return
        if not isinstance(handshake, Request):
            await _refuse(stream, req, TokMeshError(E.SYS_BAD_REQUEST, "bad WebSocket handshake"))
            return
        chosen = SUBPROTOCOL if SUBPROTOCOL in offered else None
        _bound_send_buffer(stream)
        with trio.fail_after(self.write_timeout):
            await stream.send_all(ws.send(AcceptConnection(subprotocol=chosen)))
        session = _Session(self, ws, stream, principal)
        await session.run(req.query)


def _bound_send_buffer(stream: Any) -> None:
    """Cap the kernel's send buffer of a watcher's socket at :data:`SEND_BUFFER`.

    Autotuning would let a client that stops reading park megabytes in the kernel before
    the watcher's own bound is reached; with a fixed buffer what a stalled client costs
    is known, and it is found out (and closed with 4429) after about that much.
    """
    sock = getattr(stream, "socket", None)
    if sock is None:
        sock = getattr(getattr(stream, "transport_stream", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


async def _refuse(stream: Any, req: HttpRequest, exc: TokMeshError) -> None:
    """Answer a refused upgrade as an ordinary HTTP error envelope, then close."""
    resp = exception_response(request_id_for(req), exc)
    head = encode_head(resp, request_id=None, keep_alive=False, http10=False, head_only=False)
    try:
        with trio.move_on_after(5):
            await stream.send_all(head[0] + resp.body)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def offered_subprotocols(req: HttpRequest) -> list[str]:
    """The subprotocols a WebSocket request offers, in order (every header line)."""
    out: list[str] = []
    for name, value in req.headers:
        if name == b"sec-websocket-protocol":
            out.extend(p.strip() for p in value.decode("latin-1").split(",") if p.strip())
    return out


def subprotocol_credentials(offered: list[str]) -> str | None:
    """``key_id:secret`` carried by a ``tokmesh.auth.<base64url>`` subprotocol, if any.

    Raises :class:`TokMeshError` (``TM-AUTH-4010``) when such a subprotocol is offered but
    does not decode: a credential that was meant to be there is not silently ignored.
    """
    for proto in offered:
        if proto.startswith(AUTH_SUBPROTOCOL_PREFIX):
            text = proto[len(AUTH_SUBPROTOCOL_PREFIX) :]
            try:
                raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
                credential = raw.decode("ascii")
            except (binascii.Error, ValueError):
                raise TokMeshError(E.AUTH_MISSING, "malformed credential subprotocol") from None
            return credential
    return None


class _Session:
    """One accepted WebSocket: replay, then live events, pings, and the close."""

    def __init__(self, endpoint: EventsEndpoint, ws: WSConnection, stream: Any, p: Any) -> None:
        self.endpoint = endpoint
        self.hub = endpoint.hub
        self.ws = ws
        self.stream = stream
        self.principal: Principal = p
        self.send_lock = trio.Lock()
        self.last_heard = trio.current_time()
        self.peer_closed = trio.Event()
        self.sent_close = False

    async def run(self, query: str) -> None:
        hub = self.hub
        try:
            params = query_params(query)
            cursor_text = params.get("cursor")
            after = parse_cursor(cursor_text) if cursor_text is not None else None
            types = parse_types(params.get("types"), hub.include_touch)
            user_id = params.get("user_id") or None
        except ValueError as exc:
            await self._close(CLOSE_BAD_REQUEST, str(exc))
            return
        if not hub.ready:
            await self._close(1013, "event stream not available: try again")
            return
        watcher = hub.watch(user_id, types)
        try:
            await self._serve(watcher, after)
        finally:
            hub.unwatch(watcher)

    async def _serve(self, watcher: Watcher, after: int | None) -> None:
        ending: tuple[int, str] | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_loop, nursery.cancel_scope)
                nursery.start_soon(self._ping_loop, nursery.cancel_scope)
                ending = await self._deliver(watcher, after)
                nursery.cancel_scope.cancel()
            # None: the client closed, or a ping ended the session; both sent their close.
            if ending is not None:
                await self._close(*ending)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass  # the client went away or stopped reading: nothing left to tell it

    async def _deliver(self, watcher: Watcher, after: int | None) -> tuple[int, str]:
        """Replay, then live events until the watcher ends; the close to send."""
        last = watcher.start_position
        if after is not None:
            try:
                last = await self._replay(watcher, after)
            except CursorExpired as exc:
                return CLOSE_CURSOR_EXPIRED, f"cursor expired, resync: {exc}"
        watcher.limit = self.hub.live_limit
        try:
            while True:
                batch = await watcher.take(BATCH)
                frames = [frame for position, frame in batch if position > last]
                if frames:
                    last = batch[-1][0]
                    await self._send(b"".join(frames))
                if len(batch) < BATCH:
                    # Let a few more events gather: one write per watcher every few
                    # milliseconds instead of one per commit batch costs the node's one
                    # thread far less under a write load, for a few ms of latency.
                    await trio.sleep(COALESCE)
        except WatchEnded as ended:
            return ended.code, ended.reason

    async def _replay(self, watcher: Watcher, after: int) -> int:
        """Send the retained WAL's events after ``after`` up to the watcher's start."""
        hub = self.hub
        cipher = hub.cipher
        assert cipher is not None
        upto: int = watcher.start_position
        steps = read_events(hub.wal_dir, cipher, after, upto, watcher.wants, hub.lookup)
        done = object()
        last = after
        while True:
            events: Any = await trio.to_thread.run_sync(next, steps, done)
            if events is done:
                return max(last, upto)
            if events:
                await self._send(b"".join(_frames(events)))
                last = events[-1].position

    async def _send(self, data: bytes) -> None:
        async with self.send_lock:
            with trio.fail_after(self.endpoint.write_timeout):
                await self.stream.send_all(data)

    async def _read_loop(self, cancel: trio.CancelScope) -> None:
        """Read the client's frames: answer pings, note pongs, stop at its close."""
        ws = self.ws
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                break
            self.last_heard = trio.current_time()
            try:
                ws.receive_data(data)
                events = list(ws.events())
            except RemoteProtocolError:
                break
            for event in events:
                if isinstance(event, Ping):
                    await self._send(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.peer_closed.set()
                    if not self.sent_close:
                        # Answer the client's close, then end the session.
                        self.sent_close = True
                        await self._send(ws.send(event.response()))
                    cancel.cancel()
                    return
                # Pongs only prove liveness; text or binary from the client is ignored.
        self.peer_closed.set()
        cancel.cancel()

    async def _ping_loop(self, cancel: trio.CancelScope) -> None:
        """Ping the client; end the session when it stays silent or its key lost access."""
        endpoint = self.endpoint
        auth = endpoint.deps.auth
        while True:
            await trio.sleep(endpoint.ping_interval)
            if trio.current_time() - self.last_heard > endpoint.idle_timeout:
                await self._close(CLOSE_PING_TIMEOUT, "no pong within the idle timeout")
                cancel.cancel()
                return
            try:
                self.principal = auth.recheck(self.principal)
            except TokMeshError as exc:
                await self._close(CLOSE_UNAUTHORIZED, f"credentials no longer valid ({exc.code})")
                cancel.cancel()
                return
            await self._send(self.ws.send(Ping(b"tokmesh")))

    async def _close(self, code: int, reason: str) -> None:
        """Send our close frame (once) and wait briefly for the client's."""
        if self.sent_close:
            return
        self.sent_close = True
        try:
            await self._send(self.ws.send(CloseConnection(code=code, reason=reason)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            return
        if not self.peer_closed.is_set():
            with trio.move_on_after(CLOSE_WAIT):
                await self._drain_until_close()

    async def _drain_until_close(self) -> None:
        ws = self.ws
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    return
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, CloseConnection):
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError):
            return


def _frames(events: list[SessionEvent]) -> list[bytes]:
    return [text_frame(e.to_json()) for e in events]


# ---------------------------------------------------------------------------- the route


async def events_without_upgrade(call: Call) -> HttpResponse:
    """``GET /events`` without a WebSocket upgrade (or under the Hypercorn engine)."""
    raise TokMeshError(
        E.ARG_INVALID,
        "GET /events is a WebSocket: send Upgrade: websocket (native HTTP engine only)",
    )


def events_routes() -> list[Route]:
    """The plain-HTTP face of ``GET /events``: documents the route, refuses non-upgrades."""
    return [
        Route(
            "GET",
            "/events",
            events_without_upgrade,
            SCOPE_BUSINESS,
            PERM_EVENTS_READ,
            False,
            "Session events (WebSocket)",
            success_status=101,
            audited=False,
        )
    ]


async def authorize_upgrade(deps: ApiDeps, req: HttpRequest) -> tuple[Principal, list[str]]:
    """Authenticate an upgrade request as a business route with ``events.read``.

    Returns the principal and the subprotocols offered. Raises :class:`TokMeshError`.
    """
    if deps.readiness.loading:
        raise TokMeshError(E.SYS_UNAVAILABLE, "service not ready", {"status": "not_ready"})
    headers = auth_headers(req)
    offered = offered_subprotocols(req)
    if "authorization" not in headers and "x-api-key" not in headers:
        credential = subprotocol_credentials(offered)
        if credential is not None:
            headers["authorization"] = "Bearer " + credential
    client_ip = deps.auth.resolve_client_ip(req.peer_ip, headers)
    principal = await deps.auth.authorize_http(
        "GET", headers, client_ip, SCOPE_BUSINESS, PERM_EVENTS_READ, tcp_remote_ip=req.peer_ip
    )
    return principal, offered
