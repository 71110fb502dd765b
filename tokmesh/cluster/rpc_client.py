"""The cluster port's client: a small pool of multiplexed mTLS connections per peer.

``await client.call("10.0.0.2:5343", "session.get", {...}, timeout=0.5)`` sends one
request frame and waits for the frame with the same request id; many calls share one
connection and their answers may come back in any order. Every call has a deadline (the
client's ``default_timeout`` when none is given) that covers connecting, sending and
waiting, and travels in the request so the peer stops working when the caller stops
waiting. Failures are :class:`~tokmesh.cluster.transport.RpcError` subclasses: the peer
could not be reached (or refused our certificate), the deadline passed, the peer broke
the protocol, or the peer ran the call and it failed with a catalogue code.

A peer has up to ``connections_per_peer`` connections, opened when first needed: a call
takes the live connection with the fewest calls in flight and opens another only when
all are busy. A connection that breaks fails its calls in flight and leaves the pool; the
next call dials again, so a restarted peer is reached again without any other action.
"""

from __future__ import annotations

import contextlib
import math
import ssl
from collections.abc import AsyncIterator
from typing import Any, Final

import outcome
import trio

from tokmesh.cluster.frames import (
    DEFAULT_MAX_FRAME,
    MAX_DEADLINE_MS,
    MAX_REQUEST_ID,
    Decoder,
    ErrorReply,
    FrameError,
    Request,
    Response,
    encode_request,
)
from tokmesh.cluster.transport import (
    AUTH_REFUSED_CODE,
    RECEIVE_SIZE,
    Outbox,
    RpcAuthError,
    RpcError,
    RpcProtocolError,
    RpcRemoteError,
    RpcTimeout,
    RpcUnreachable,
    TlsContexts,
    split_address,
)

#: Calls in flight on every open connection to a peer before the next call opens
#: another connection (while the pool has room). One connection carries many calls; a
#: second one only helps when the first one's TLS stream becomes the bottleneck.
BUSY_CONNECTION: Final = 64


class RpcClient:
    """Calls methods on peers' cluster ports; run it with :meth:`run` (or use
    :func:`open_rpc_client`) so its connections have a nursery to live in."""

    def __init__(
        self,
        tls: TlsContexts,
        *,
        connections_per_peer: int = 2,
        default_timeout: float = 5.0,
        max_frame_size: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.tls = tls
        self.connections_per_peer = connections_per_peer
        self.default_timeout = default_timeout
        self.max_frame_size = max_frame_size
        self._peers: dict[str, _Peer] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the client's connections until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None
                peers, self._peers = self._peers, {}
                for peer in peers.values():
                    peer.close()

    async def call(
        self,
        peer: str,
        method: str,
        body: Any = None,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Any:
        """Run ``method`` on ``peer`` (``host:port``) and return its reply body.

        ``deadline`` is a ``trio.current_time()`` instant, ``timeout`` seconds from now;
        with neither, :attr:`default_timeout` applies; with both, the earlier. ``body``
        and the reply are JSON values, or bytes carried as they are.
        """
        now = trio.current_time()
        if deadline is None:
            deadline = now + (self.default_timeout if timeout is None else timeout)
        elif timeout is not None:
            deadline = min(deadline, now + timeout)
        with trio.move_on_at(deadline):
            conn = await self._peer(peer).connection()
            return await conn.call(method, body, deadline)
        raise RpcTimeout(f"{method} on {peer}: no answer within the deadline")

    async def ping(self, peer: str, *, timeout: float | None = None) -> dict[str, Any]:
        """The peer's ``ping`` answer: its node id and clock."""
        reply = await self.call(peer, "ping", None, timeout=timeout)
        if not isinstance(reply, dict):
            raise RpcProtocolError(f"ping answer of {peer} is not an object")
        return reply

    def connections(self, peer: str) -> int:
        """Open connections to ``peer``."""
        state = self._peers.get(peer)
        return len(state.conns) if state is not None else 0

    def _peer(self, address: str) -> _Peer:
        if self._nursery is None:
            raise RuntimeError("RpcClient.run is not running")
        state = self._peers.get(address)
        if state is None:
            state = self._peers[address] = _Peer(self, address, self._nursery)
        return state


@contextlib.asynccontextmanager
async def open_rpc_client(tls: TlsContexts, **options: Any) -> AsyncIterator[RpcClient]:
    """An :class:`RpcClient` running for the duration of the ``async with`` block."""
    client = RpcClient(tls, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()


class _Peer:
    """The connections to one peer address."""

    def __init__(self, client: RpcClient, address: str, nursery: trio.Nursery) -> None:
        self.client = client
        self.address = address
        self.nursery = nursery
        self.conns: list[_Connection] = []
        self.dialling = 0
        self._changed = trio.Event()

    async def connection(self) -> _Connection:
        """A live connection with room for one more call, dialling one if needed."""
        size = self.client.connections_per_peer
        while True:
            best = min(self.conns, key=_load, default=None)
            if best is not None and (
                best.inflight < BUSY_CONNECTION or len(self.conns) + self.dialling >= size
            ):
                return best
            if len(self.conns) + self.dialling < size:
                self.dialling += 1
                try:
                    conn = await self._dial()
                finally:
                    self.dialling -= 1
                    self._changed.set()
                    self._changed = trio.Event()
                self.conns.append(conn)
                return conn
            if best is not None:
                return best
            await self._changed.wait()  # another call is dialling and nothing is open

    async def _dial(self) -> _Connection:
        host, port = split_address(self.address)
        try:
            tcp = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise RpcUnreachable(f"cannot connect to {self.address}: {exc}", sent=False) from None
        stream = trio.SSLStream(tcp, self.client.tls.client_ctx, server_hostname=host)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            await trio.aclose_forcefully(stream)
            raise _broken(self.address, exc, sent=False) from None
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        conn = _Connection(self, stream)
        self.nursery.start_soon(conn.run)
        return conn

    def lost(self, conn: _Connection) -> None:
        """``conn`` ended: later calls use (or dial) another."""
        with contextlib.suppress(ValueError):
            self.conns.remove(conn)

    def close(self) -> None:
        """Fail every call in flight; the connections' tasks end with the nursery."""
        for conn in list(self.conns):
            conn.fail(RpcUnreachable(f"client closed; no answer from {self.address}"))


def _load(conn: _Connection) -> int:
    return conn.inflight


def _broken(address: str, exc: BaseException, *, sent: bool) -> RpcUnreachable:
    """The error of a TLS stream that broke: a refusal when the peer sent a TLS alert
    (or our side refused its certificate), else a lost connection."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError) or (
        isinstance(cause, ssl.SSLError) and "ALERT" in str(cause.reason or "").upper()
    ):
        # A refused handshake: the request was never read.
        return RpcAuthError(f"TLS with {address} refused: {cause}", sent=False)
    return RpcUnreachable(f"connection to {address} lost: {cause or exc}", sent=sent)


class _Connection:
    """One TLS connection to a peer, shared by many calls told apart by request id."""

    def __init__(self, peer: _Peer, stream: trio.SSLStream[Any]) -> None:
        self.peer = peer
        self.address = peer.address
        self.stream = stream
        self.outbox = Outbox(stream)
        self.max_frame_size = peer.client.max_frame_size
        self._waiting: dict[int, trio.lowlevel.Task] = {}
        self._last_id = 0
        self._error: RpcError | None = None

    @property
    def inflight(self) -> int:
        """Calls sent and not yet answered."""
        return len(self._waiting)

    async def call(self, method: str, body: Any, deadline: float) -> Any:
        """Send one request and wait for its answer (the caller's scope holds the deadline)."""
        if self._error is not None:
            raise self._error
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            raise RpcTimeout(f"{method} on {self.address}: deadline passed before sending")
        rid = self._next_id()
        deadline_ms = min(MAX_DEADLINE_MS, math.ceil(remaining * 1000))
        frame = encode_request(rid, method, deadline_ms, body)
        if len(frame) > self.max_frame_size:
            raise RpcProtocolError(f"request of {len(frame)} bytes exceeds the frame limit")
        try:
            await self.outbox.put(frame)
        except trio.ClosedResourceError:
            raise self._error or RpcUnreachable(f"connection to {self.address} closed") from None
        # Register only after the frame is queued: nothing below checkpoints before the
        # wait, so the reader cannot answer (or fail) the call before it waits. Parking the
        # task itself and rescheduling it with the reply is the cheapest wait trio offers
        # (no Event or channel per call); the abort keeps a timed-out call from being
        # answered later.
        task = trio.lowlevel.current_task()
        self._waiting[rid] = task

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._waiting.pop(rid, None)
            return trio.lowlevel.Abort.SUCCEEDED

        reply = await trio.lowlevel.wait_task_rescheduled(abort)
        if isinstance(reply, Response):
            try:
                return reply.load()
            except FrameError as exc:
                raise RpcProtocolError(f"{method} on {self.address}: {exc.detail}") from None
        assert isinstance(reply, ErrorReply)
        raise RpcRemoteError(reply.code, reply.message, reply.details)

    def _next_id(self) -> int:
        rid = self._last_id
        while True:
            rid = rid + 1 if rid < MAX_REQUEST_ID else 1
            if rid not in self._waiting:
                self._last_id = rid
                return rid

    def fail(self, error: RpcError) -> None:
        """End the connection for its callers: every call in flight raises ``error``."""
        if self._error is None:
            self._error = error
        self.peer.lost(self)
        self.outbox.close()
        waiting, self._waiting = self._waiting, {}
        for task in waiting.values():
            trio.lowlevel.reschedule(task, outcome.Error(error))

    async def run(self) -> None:
        """Read answers until the connection ends, then fail what is still waiting."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write, nursery.cancel_scope)
                self.fail(await self._read())
                nursery.cancel_scope.cancel()
        finally:
            self.fail(RpcUnreachable(f"connection to {self.address} closed"))
            await trio.aclose_forcefully(self.stream)

    async def _write(self, scope: trio.CancelScope) -> None:
        try:
            await self.outbox.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.fail(_broken(self.address, exc, sent=True))
        scope.cancel()

    async def _read(self) -> RpcError:
        decoder = Decoder(self.max_frame_size)
        while True:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                return _broken(self.address, exc, sent=True)
            if not data:
                return RpcUnreachable(f"connection to {self.address} closed by the peer")
            try:
                decoder.feed(data)
                frames = decoder.frames()
            except FrameError as exc:
                return RpcProtocolError(f"{self.address} broke the protocol: {exc.detail}")
            for frame in frames:
                if isinstance(frame, Request):
                    return RpcProtocolError(f"{self.address} sent a request to a client")
                if frame.request_id == 0:
                    assert isinstance(frame, ErrorReply)
                    if frame.code == AUTH_REFUSED_CODE:
                        return RpcAuthError(f"{self.address}: {frame.message}", sent=False)
                    return RpcProtocolError(f"{self.address}: {frame.message}")
                task = self._waiting.pop(frame.request_id, None)
                if task is not None:  # else the caller gave up (deadline) meanwhile
                    trio.lowlevel.reschedule(task, outcome.Value(frame))
