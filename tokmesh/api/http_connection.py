"""One HTTP/1.x connection: llhttp (``httptools``) callbacks plus a sequential I/O loop.

The connection object is the parser's callback protocol. Callbacks only record state
(they cannot await); the loop in :meth:`HttpConnection.serve` reads, feeds the parser,
then answers every request completed by that read, in order, in the connection's own
task, and sends all those answers with one write. Nothing is spawned per request. On a
plain TCP listener whose app can answer without waiting, the idle connection is read by
the listener's :class:`~tokmesh.api.http_mux.HttpMux` instead, which runs the same
``feed`` and answers what needs no waiting, and hands the connection back to this loop
for everything else.

Failure policy (the connection always stays in a defined state):

- malformed request, smuggling shapes (``Content-Length`` with ``Transfer-Encoding``,
  duplicate lengths, a coding other than ``chunked``, ``Transfer-Encoding`` on
  HTTP/1.0, missing or repeated ``Host``), bad chunked framing: 400 ``TM-SYS-4000``;
- head larger than ``max_header_bytes`` or with too many fields: 431 ``TM-SYS-4000``;
- body larger than ``max_body_size``: 413 ``TM-ADMIN-4130`` (as soon as a declared
  ``Content-Length`` shows it, so ``Expect: 100-continue`` clients never send it);
- HTTP version other than 1.0/1.1: 505 ``TM-SYS-4000``;
- head or buffered body not complete in time: 408 ``TM-SYS-4000``;

each answered after the requests before it, with ``Connection: close``; parsing stops
at the error, so bytes after it (a smuggled request) are never executed. An idle
keep-alive connection that times out is closed without an answer.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from typing import Any

import httptools
import trio

from tokmesh.api.http_errors import error_response, exception_response
from tokmesh.api.http_limits import HttpLimits
from tokmesh.api.http_render import (
    CONTINUE,
    LAST_CHUNK,
    Framing,
    HeaderInjectionError,
    encode_chunk,
    encode_head,
)
from tokmesh.api.http_request_id import request_id_for, request_id_from_headers
from tokmesh.api.http_types import (
    Header,
    HttpApp,
    HttpRequest,
    HttpResponse,
    RequestBodyError,
    StreamingPredicate,
    UpgradeHandler,
)
from tokmesh.domain.errors import E, ErrorCode, TokMeshError

LOGGER = logging.getLogger("tokmesh.api.http")

_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")}
_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"
_HOST = b"host"
_EXPECT = b"expect"
_UPGRADE = b"upgrade"
_WATCHED = frozenset({_CONTENT_LENGTH, _TRANSFER_ENCODING, _HOST, _EXPECT})

# Plain TCP connections read and write the socket's file descriptor directly (see
# HttpConnection._read / _flush). read(2)/write(2) on a socket are recv/send without
# flags (POSIX), the descriptor comes from the public ``SocketType.fileno()`` and the
# waits from ``trio.lowlevel.wait_readable``; anything else keeps Trio's stream API.
DIRECT_IO = os.name == "posix"

# What a connection is blocked on (HttpConnection.waiting), read by the reaper and drain.
WAIT_NONE = 0
"""Running a handler or parsing: no deadline."""
WAIT_IDLE = 1
"""Waiting for the first byte of the next request (keep-alive or fresh connection)."""
WAIT_MESSAGE = 2
"""Waiting for the rest of a request head or buffered body (timeout answers 408)."""
WAIT_WRITE = 3
"""Sending to the client."""
WAIT_LINGER = 4
"""Draining input after the last answer, before closing."""


class _Reject(Exception):
    """Raised inside a parser callback: answer with this error and stop parsing."""

    def __init__(
        self,
        error: ErrorCode,
        message: str,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.status = status
        self.details = details

    def as_body_error(self) -> RequestBodyError:
        """The same failure as seen by a handler reading a streamed body."""
        return RequestBodyError(self.error, self.message, status=self.status, details=self.details)


class _StopParsing(Exception):
    """Raised inside a parser callback: the connection ends after this message."""


class _SameHead:
    """The parse of one request head, for the next read that repeats it byte for byte."""

    __slots__ = ("body_size", "head", "headers", "method", "path", "query", "version")

    def __init__(
        self,
        head: bytes,
        body_size: int,
        method: str,
        path: str,
        query: str,
        headers: list[Header],
        version: str,
    ) -> None:
        self.head = head
        self.body_size = body_size
        self.method = method
        self.path = path
        self.query = query
        self.headers = tuple(headers)
        self.version = version


class ServerHooks:
    """Per-listener settings shared by all its connections (read-only)."""

    __slots__ = (
        "app",
        "control",
        "limits",
        "mux",
        "streaming_predicate",
        "upgrade_handler",
        "upgrade_paths",
    )

    def __init__(
        self,
        app: HttpApp,
        limits: HttpLimits,
        control: Any,
        streaming_predicate: StreamingPredicate | None = None,
        upgrade_handler: UpgradeHandler | None = None,
        upgrade_paths: frozenset[str] = frozenset({"/events"}),
    ) -> None:
        self.app = app
        self.limits = limits
        # A ServerControl (typed loosely to keep this module free of the server module).
        self.control = control
        self.streaming_predicate = streaming_predicate
        self.upgrade_handler = upgrade_handler
        self.upgrade_paths = upgrade_paths
        # The HttpMux serving plain connections of this listener (set by the server).
        self.mux: Any = None


class BodyStream:
    """``HttpRequest.stream`` for streamed routes: yields body chunks as they arrive.

    Reading pulls from the connection in the handler's own task (no extra task); the
    size limit and the per-read ``body_timeout`` still apply. Failures raise
    :class:`RequestBodyError`.
    """

    __slots__ = ("_conn", "chunks", "complete", "error")

    def __init__(self, conn: HttpConnection) -> None:
        self._conn = conn
        self.chunks: deque[bytes] = deque()
        self.complete = False
        self.error: RequestBodyError | None = None

    def __aiter__(self) -> BodyStream:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self.chunks:
                return self.chunks.popleft()
            if self.error is not None:
                raise self.error
            if self.complete:
                raise StopAsyncIteration
            await self._conn.pull_body(self)

    async def read_all(self) -> bytes:
        """The rest of the body in one piece (still bounded by ``max_body_size``)."""
        return b"".join([chunk async for chunk in self])


class HttpConnection:
    """State and loop of one accepted connection (see the module docstring)."""

    def __init__(
        self,
        hooks: ServerHooks,
        stream: trio.abc.Stream,
        *,
        peer: tuple[str, int] = ("", 0),
        local: tuple[str, int] = ("", 0),
        tls: bool = False,
    ) -> None:
        self.hooks = hooks
        self.limits = hooks.limits
        self.app = hooks.app
        self.stream = stream
        self.peer_ip, self.peer_port = peer
        self.server_ip, self.server_port = local
        self.tls = tls
        # The Trio socket under a plain TCP stream, for direct fd I/O (None: use the stream).
        self.tsock: Any = stream.socket if DIRECT_IO and type(stream) is trio.SocketStream else None
        # The multiplexer that reads this connection while nothing needs its task.
        self.mux: Any = hooks.mux if self.tsock is not None else None
        # How the mux handed the connection back (an HttpMux HAND_* value) and the
        # event its task sleeps on meanwhile.
        self.handed = 0
        self.wake = trio.Event()
        # The mux answers a mutation when its commit lands (``deferred``); input that
        # arrives meanwhile stays in the socket (``paused``: out of the mux's epoll set).
        self.deferred = False
        self.paused = False
        self.pending: tuple[HttpRequest, HttpResponse] | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.same_head: _SameHead | None = None
        self.queue: deque[HttpRequest] = deque()
        self.out = bytearray()
        # Terminal state.
        self.error: _Reject | None = None
        self.stop_parsing = False
        self.must_close = False
        self.upgrade_req: HttpRequest | None = None
        self.upgrade_rest = b""
        self.handed_over = False
        # Timeout machinery (see the I/O loop section).
        self.scope = trio.CancelScope()
        self.deadline = math.inf
        self.waiting = WAIT_NONE
        # The wait for the next request's first byte. Before the first request it is the
        # header timeout: a connection that never says anything holds a descriptor for
        # seconds, not for the keep-alive minute a client that has spoken earns.
        self.idle_timeout = min(self.limits.header_timeout, self.limits.idle_timeout)
        # trio.current_time() of the read being parsed: one clock read per read, not
        # two per request (head and body deadlines count from the read that began them).
        self.now = 0.0
        # State of the message being parsed.
        self.in_head = False
        self.in_body = False
        self.url = b""
        self.headers: list[Header] = []
        self.head_bytes = 0
        self.head_raw = 0
        self.trailer_bytes = 0
        self.content_length: int | None = None
        self.transfer_encoding: bytes | None = None
        self.host_count = 0
        self.expect_continue = False
        self.continue_pending = False
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.head_deadline = 0.0
        self.body_deadline = 0.0
        self.cur_req: HttpRequest | None = None
        self.cur_stream: BodyStream | None = None

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        """llhttp: a new request starts."""
        self.in_head = True
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.head_raw = 0
        self.trailer_bytes = 0
        self.content_length = None
        self.transfer_encoding = None
        self.host_count = 0
        self.expect_continue = False
        self.body_parts = []
        self.body_size = 0
        self.head_deadline = self.now + self.limits.header_timeout
        self.idle_timeout = self.limits.idle_timeout

    def on_url(self, url: bytes) -> None:
        """llhttp: (part of) the request target."""
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > self.limits.max_header_bytes:
            raise _Reject(E.SYS_BAD_REQUEST, "request header fields too large", 431)

    def on_header(self, name: bytes, value: bytes) -> None:
        """llhttp (via httptools): one complete header field, or a trailer field."""
        limits = self.limits
        if not self.in_head:
            # Chunked trailers: bounded like the head, otherwise ignored.
            self.trailer_bytes += len(name) + len(value) + 4
            if self.trailer_bytes > limits.max_header_bytes:
                raise _Reject(E.SYS_BAD_REQUEST, "request trailer fields too large", 431)
            return
        if value and value[-1] in (32, 9):
            value = value.rstrip(b" \t")
        self.head_bytes += len(name) + len(value) + 4
        if (
            self.head_bytes > limits.max_header_bytes
            or len(self.headers) >= limits.max_header_count
        ):
            raise _Reject(E.SYS_BAD_REQUEST, "request header fields too large", 431)
        lname = name.lower()
        if lname in _WATCHED:
            if lname == _CONTENT_LENGTH:
                # llhttp has already rejected non-digits, overflow and duplicates.
                self.content_length = int(value)
            elif lname == _TRANSFER_ENCODING:
                self.transfer_encoding = value
            elif lname == _HOST:
                self.host_count += 1
            else:
                self.expect_continue = value.lower() == b"100-continue"
        self.headers.append((lname, value))

    def on_headers_complete(self) -> None:
        """llhttp: the head is complete; validate it and build the request."""
        self.in_head = False
        parser = self.parser
        limits = self.limits
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _Reject(E.SYS_BAD_REQUEST, "HTTP version not supported", 505)
        if self.host_count != 1 and (self.host_count > 1 or version == "1.1"):
            raise _Reject(E.SYS_BAD_REQUEST, "exactly one Host header is required")
        te = self.transfer_encoding
        if te is not None and (version == "1.0" or te.strip().lower() != b"chunked"):
            raise _Reject(E.SYS_BAD_REQUEST, "unsupported Transfer-Encoding")
        if self.content_length is not None and self.content_length > limits.max_body_size:
            raise _Reject(
                E.ADMIN_TOO_LARGE,
                "request body too large",
                details={"max_body_size": limits.max_body_size},
            )
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("latin-1")
        url = self.url
        if url[:1] != b"/" and b"://" in url:
            # absolute-form target (RFC 9112 §3.2.2): keep only path and query. llhttp
            # checks only the characters of a target, so its URL parser can still refuse
            # one (a bad host or port): that is the client's error, not ours.
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise _Reject(E.SYS_BAD_REQUEST, "malformed request target") from None
            url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
        path, _, query = url.partition(b"?")
        if b"#" in query:
            query = query.partition(b"#")[0]
        req = self._request(
            method,
            path.decode("latin-1"),
            query.decode("latin-1"),
            self.headers,
            version,
            parser.should_keep_alive(),
        )
        self.cur_req = req
        self.in_body = True
        self.body_deadline = self.now + limits.body_timeout
        self.continue_pending = self.expect_continue and version == "1.1"
        if parser.should_upgrade():
            self.upgrade_req = req
        predicate = self.hooks.streaming_predicate
        if predicate is not None and predicate(method, req.path):
            stream = BodyStream(self)
            req.stream = stream
            self.cur_stream = stream
            self.queue.append(req)

    def _request(
        self,
        method: str,
        path: str,
        query: str,
        headers: list[Header],
        version: str,
        keep_alive: bool,
        body: bytes = b"",
    ) -> HttpRequest:
        return HttpRequest(
            method,
            path,
            query,
            headers,
            body,
            peer_ip=self.peer_ip,
            peer_port=self.peer_port,
            server_ip=self.server_ip,
            server_port=self.server_port,
            http_version=version,
            keep_alive=keep_alive,
            tls=self.tls,
        )

    def on_body(self, data: bytes) -> None:
        """llhttp: (part of) the body, already de-chunked."""
        self.body_size += len(data)
        if self.body_size > self.limits.max_body_size:
            raise _Reject(
                E.ADMIN_TOO_LARGE,
                "request body too large",
                details={"max_body_size": self.limits.max_body_size},
            )
        self.continue_pending = False
        stream = self.cur_stream
        if stream is not None:
            stream.chunks.append(data)
        else:
            self.body_parts.append(data)

    def on_message_complete(self) -> None:
        """llhttp: the request is complete; queue it (streamed ones are queued already)."""
        self.in_body = False
        self.continue_pending = False
        req = self.cur_req
        self.cur_req = None
        if req is None:  # pragma: no cover - llhttp always reports the head first
            return
        stream = self.cur_stream
        if stream is not None:
            stream.complete = True
            self.cur_stream = None
        else:
            parts = self.body_parts
            if parts:
                req.body = parts[0] if len(parts) == 1 else b"".join(parts)
            self.queue.append(req)
        if not req.keep_alive and self.upgrade_req is not req:
            # Anything after a closing request is ignored; llhttp would call it an error.
            raise _StopParsing()

    # ------------------------------------------------------------------ feeding

    def feed(self, data: bytes | bytearray) -> None:
        """Feed one read to the parser; record the outcome, never raise parse errors.

        A read that is exactly one request whose head is byte-identical to the previous
        plain request's head on this connection (a gateway sending the same API key,
        headers and fixed-length token each time) reuses that parse: parsing is a pure
        function of the bytes, so the request is the same but for the body, and llhttp
        would end in the same between-messages state it is in now.
        """
        self.now = trio.current_time()
        at_boundary = not (self.in_head or self.in_body)
        same = self.same_head
        if same is not None and at_boundary and self.error is None:
            head = same.head
            if len(data) == len(head) + same.body_size and data.startswith(head):
                self.queue.append(
                    self._request(
                        same.method,
                        same.path,
                        same.query,
                        list(same.headers),
                        same.version,
                        True,
                        bytes(data[len(head) :]),
                    )
                )
                return
        queued = len(self.queue)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            inner = exc.__context__
            if isinstance(inner, _StopParsing):
                self.stop_parsing = True
            elif isinstance(inner, _Reject):
                self._fail(inner)
            else:
                LOGGER.error("HTTP parser callback failed", exc_info=inner)
                self._fail(_Reject(E.SYS_INTERNAL, E.SYS_INTERNAL.message))
            return
        except httptools.HttpParserUpgrade as exc:
            self.stop_parsing = True
            self.upgrade_rest = bytes(data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            reason = str(exc) or "malformed request"
            self._fail(_Reject(E.SYS_BAD_REQUEST, f"malformed HTTP request: {reason}"))
            return
        if self.in_head:
            # llhttp keeps a partial header line in memory; bound that too. The first
            # read of a message may also hold earlier requests, hence the read_size slack.
            self.head_raw += len(data)
            if self.head_raw > self.limits.max_header_bytes + self.limits.read_size:
                self._fail(_Reject(E.SYS_BAD_REQUEST, "request header fields too large", 431))
        elif at_boundary and not self.in_body and len(self.queue) == queued + 1:
            self._remember_head(data)

    def _remember_head(self, data: bytes | bytearray) -> None:
        """Keep the head of a read that held exactly one plain request (see :meth:`feed`)."""
        req = self.queue[-1]
        body_size = len(req.body)
        if (
            not req.keep_alive
            or req.stream is not None
            or req is self.upgrade_req
            or self.expect_continue
            or self.transfer_encoding is not None
            or body_size != (self.content_length or 0)
            or self.stop_parsing
            or self.error is not None
        ):
            return
        head = bytes(data[: len(data) - body_size])
        if head.endswith(b"\r\n\r\n"):
            self.same_head = _SameHead(
                head, body_size, req.method, req.path, req.query, req.headers, req.http_version
            )

    def _fail(self, rej: _Reject) -> None:
        self.stop_parsing = True
        stream = self.cur_stream
        if stream is not None:
            # The handler of this request is (or will be) reading the body: it sees the
            # failure and answers; the connection closes afterwards.
            stream.error = rej.as_body_error()
            self.cur_stream = None
            self.must_close = True
        elif self.error is None:
            self.error = rej

    # ------------------------------------------------------------------ I/O loop
    #
    # Timeouts: a cancel scope per read and per send would cost ~15 us per request
    # (measured), a fifth of the whole budget. Instead each connection has ONE cancel
    # scope and publishes ``deadline`` (a float) and ``waiting`` (what it waits for);
    # the server's reaper task cancels the scope of any connection past its deadline,
    # and drain cancels the ones waiting idle. While a handler runs the deadline is
    # infinite. serve() then acts on ``waiting``: 408 for a half-received request,
    # silence for an idle wait.

    async def serve(self) -> None:
        """Serve requests until the connection ends; closes gracefully after answers."""
        control = self.hooks.control
        control.conns.add(self)
        try:
            with self.scope:
                if await self._loop() and not self.handed_over:
                    await self._flush()
                    await self._linger()
                return
            # Only the reaper or drain cancel self.scope: a timeout or an idle close.
            if self.waiting == WAIT_MESSAGE:
                self.out = bytearray()
                self._append_error(_Reject(E.SYS_BAD_REQUEST, "request timeout", 408))
                await self._final_flush_and_linger()
        finally:
            control.conns.discard(self)

    async def _loop(self) -> bool:
        """Returns True when the server ends the connection after sending something."""
        mux = self.mux
        while True:
            if mux is not None and self._may_multiplex():
                # The mux reads and answers this connection until something needs this
                # task (see tokmesh.api.http_mux); it then leaves the state as if this
                # loop had fed the last read itself.
                if self.out:
                    await self._flush()
                handed = await mux.serve(self)
                pending = self.pending
                if pending is not None:
                    # An answer with a streamed body, left for this task to send.
                    self.pending = None
                    if not await self.answer(*pending):
                        return True
                if handed != mux.HAND_WORK:
                    if handed == mux.HAND_EOF:
                        return False
                    if handed == mux.HAND_CLOSE:
                        return True
                    if handed == mux.HAND_SEND:
                        await self._flush()
                        continue
                    raise trio.BrokenResourceError("socket error")
            else:
                data = await self._read()
                if not data:
                    return False
                self.feed(data)
            while self.queue:
                if not await self._dispatch(self.queue.popleft()):
                    return True
                if len(self.out) > self.limits.flush_threshold:
                    await self._flush()
            if self.error is not None:
                self._append_error(self.error)
                return True
            if self.stop_parsing or self.must_close:
                return True

    def _may_multiplex(self) -> bool:
        """Whether the next read can go through the mux (nothing pending for this task)."""
        return not (
            self.continue_pending or self.cur_stream is not None or self.hooks.control.draining
        )

    def arm_read(self, now: float) -> bool:
        """Publish the deadline of the next read; False when it should not happen.

        Head and buffered body count from the read that began them; an idle wait gets a
        fresh ``idle_timeout`` (the header timeout before the first request), and a
        draining server reads no further request.
        """
        if self.in_head:
            self.deadline = self.head_deadline
            self.waiting = WAIT_MESSAGE
        elif self.in_body:
            self.deadline = self.body_deadline
            self.waiting = WAIT_MESSAGE
        else:
            if self.hooks.control.draining:
                return False
            self.deadline = now + self.idle_timeout
            self.waiting = WAIT_IDLE
        return True

    async def _read(self) -> bytes | bytearray:
        """Next read for the parser; ``b""`` on EOF or when draining an idle connection."""
        if self.continue_pending and self.body_size == 0:
            self.out += CONTINUE
            self.continue_pending = False
        if self.out:
            await self._flush()
        if not self.arm_read(trio.current_time()):
            return b""
        data: bytes | bytearray
        tsock = self.tsock
        fd = tsock.fileno() if tsock is not None else -1
        if fd >= 0:
            # Plain TCP: wait until readable, then read(2) the descriptor. This skips the
            # failed first recv() that Trio's receive_some makes (a keep-alive client sends
            # its next request only after our answer, so that attempt nearly always fails)
            # and its extra reschedule after a successful one. The wait is a full
            # checkpoint, so every read still yields to the scheduler once.
            read_size = self.limits.read_size
            while True:
                await trio.lowlevel.wait_readable(fd)
                try:
                    data = os.read(fd, read_size)
                    break
                except BlockingIOError:
                    continue  # readiness without data: wait again
                except OSError as exc:
                    raise trio.BrokenResourceError(f"receive failed: {exc}") from exc
        else:
            data = await self.stream.receive_some(self.limits.read_size)
        if self.scope.cancel_called:
            # Cancelled after the data arrived but before this task resumed: honour the
            # timeout/drain now rather than half-way through the request.
            await trio.lowlevel.checkpoint()
        self.mark_busy()
        return data

    def mark_busy(self) -> None:
        """Working on what was read: no deadline until the next wait is armed."""
        self.waiting = WAIT_NONE
        self.deadline = math.inf

    async def pull_body(self, stream: BodyStream) -> None:
        """Read more of a streamed body (called from the handler via ``BodyStream``).

        May run in another task (the ASGI bridge's), so it uses its own cancel scopes
        instead of the connection's deadline.
        """
        if self.continue_pending and self.body_size == 0:
            self.out += CONTINUE
            self.continue_pending = False
        limits = self.limits
        try:
            if self.out:
                data_out = self.out
                self.out = bytearray()
                with trio.fail_after(limits.write_timeout):
                    await self.stream.send_all(data_out)
            with trio.move_on_after(limits.body_timeout):
                data = await self.stream.receive_some(limits.read_size)
                if data:
                    self.feed(data)
                    return
                stream.error = RequestBodyError(E.SYS_BAD_REQUEST, "request body incomplete")
                self.must_close = True
                return
            stream.error = RequestBodyError(E.SYS_BAD_REQUEST, "request body timeout", status=408)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            stream.error = RequestBodyError(E.SYS_BAD_REQUEST, "connection lost")
        self.must_close = True
        if self.cur_stream is stream:
            self.cur_stream = None
        self.stop_parsing = True

    async def _dispatch(self, req: HttpRequest) -> bool:
        """Run the handler for ``req`` and queue/stream its answer; False = close now."""
        if req is self.upgrade_req:
            hooks = self.hooks
            if (
                hooks.upgrade_handler is not None
                and req.path in hooks.upgrade_paths
                and (req.get_header(_UPGRADE) or b"").lower() == b"websocket"
            ):
                await self._flush()
                self.handed_over = True
                self.deadline = math.inf
                await hooks.upgrade_handler(req, self.stream, rebuild_head(req) + self.upgrade_rest)
                return False
        try:
            resp = await self.app(req)
        except RequestBodyError as exc:
            self.must_close = True
            resp = exception_response(request_id_for(req), exc, exc.status)
        except Exception as exc:
            resp = self.handler_failed(req, exc)
        return await self.answer(req, resp)

    def handler_failed(self, req: HttpRequest, exc: Exception) -> HttpResponse:
        """The answer when the handler raised ``exc`` instead of answering."""
        if isinstance(exc, TokMeshError):
            return exception_response(request_id_for(req), exc)
        LOGGER.error("unhandled error in HTTP handler", exc_info=exc)
        return error_response(request_id_for(req), E.SYS_INTERNAL)

    async def answer(self, req: HttpRequest, resp: HttpResponse) -> bool:
        """Queue or stream ``resp`` as the answer to ``req``; False = close now."""
        answer, framing, length, keep = self.append_response(req, resp)
        if answer is not resp:
            await _close_body_iter(resp)
        if answer.body_iter is None:
            return keep
        return await self._stream_body(answer, framing, length) and keep

    def append_response(
        self, req: HttpRequest, resp: HttpResponse
    ) -> tuple[HttpResponse, int, int, bool]:
        """Queue the head (and a complete body) of the answer to ``req`` in ``out``.

        Returns ``(answer, framing, length, keep_alive)``. ``answer`` is a 500 in place
        of ``resp`` when the handler produced an invalid head (then the caller closes
        ``resp.body_iter``); an ``answer.body_iter`` is left for the caller to stream.
        """
        stream = req.stream
        keep = (
            req.keep_alive
            and not self.must_close
            and not self.hooks.control.draining
            and req is not self.upgrade_req
            and (stream is None or (isinstance(stream, BodyStream) and stream.complete))
        )
        try:
            head, framing, length, keep = encode_head(
                resp,
                request_id=request_id_for(req),
                keep_alive=keep,
                http10=req.http_version == "1.0",
                head_only=req.method == "HEAD",
            )
        except (HeaderInjectionError, ValueError, UnicodeError):
            LOGGER.error("handler produced an invalid response head")
            resp = error_response(request_id_for(req), E.SYS_INTERNAL)
            head, framing, length, keep = encode_head(
                resp, request_id=None, keep_alive=keep, http10=False, head_only=False
            )
        self.out += head
        if resp.body_iter is None and framing == Framing.NONE and req.method != "HEAD" and length:
            self.out += resp.body
        return resp, framing, length, keep

    async def _stream_body(self, resp: HttpResponse, framing: int, length: int) -> bool:
        """Send a ``body_iter`` body; False when framing broke and the connection must end."""
        body_iter = resp.body_iter
        assert body_iter is not None
        ok = True
        try:
            await self._flush()
            if framing == Framing.FIXED:
                remaining = length
                async for chunk in body_iter:
                    if len(chunk) > remaining:
                        chunk = chunk[:remaining]
                        ok = False
                    if chunk:
                        await self._send(chunk)
                        remaining -= len(chunk)
                    if not ok:
                        break
                ok = ok and remaining == 0
            elif framing == Framing.CHUNKED:
                async for chunk in body_iter:
                    if chunk:
                        await self._send(encode_chunk(chunk))
                await self._send(LAST_CHUNK)
            elif framing == Framing.UNTIL_CLOSE:
                async for chunk in body_iter:
                    if chunk:
                        await self._send(chunk)
                ok = False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception:
            # Head already sent: the only honest signal left is to cut the connection.
            LOGGER.exception("streamed response body failed")
            ok = False
        finally:
            await _close_body_iter(resp)
        if not ok:
            self.must_close = True
        return ok

    def _append_error(self, rej: _Reject) -> None:
        """Queue the answer to a connection-level failure (always ``Connection: close``)."""
        rid = request_id_from_headers(self.headers)
        resp = error_response(rid, rej.error, rej.message, status=rej.status, details=rej.details)
        head, _, _, _ = encode_head(
            resp, request_id=None, keep_alive=False, http10=False, head_only=False
        )
        self.out += head
        self.out += resp.body

    async def _send(self, data: bytes | bytearray | memoryview) -> None:
        self.deadline = trio.current_time() + self.limits.write_timeout
        self.waiting = WAIT_WRITE
        await self.stream.send_all(data)
        self.waiting = WAIT_NONE
        self.deadline = math.inf

    async def _flush(self) -> None:
        """Send ``out``; on plain TCP try one direct non-blocking write first.

        An answer nearly always fits the socket buffer, and the direct write saves
        ``send_all``'s wrappers and its reschedule. Whatever does not fit goes through
        ``send_all`` under the write deadline, as before.
        """
        if not self.out:
            return
        data: bytearray | memoryview = self.out
        self.out = bytearray()
        tsock = self.tsock
        if tsock is not None:
            fd = tsock.fileno()
            if fd >= 0:
                try:
                    sent = os.write(fd, data)
                except BlockingIOError:
                    sent = 0
                except OSError as exc:
                    raise trio.BrokenResourceError(f"send failed: {exc}") from exc
                if sent >= len(data):
                    return
                data = memoryview(data)[sent:]
        await self._send(data)

    async def _linger(self) -> None:
        """Half-close and drain input briefly, so a client still sending sees our answer."""
        stream = self.stream
        if not isinstance(stream, trio.abc.HalfCloseableStream):
            return
        try:
            await stream.send_eof()
            self.deadline = trio.current_time() + self.limits.linger_timeout
            self.waiting = WAIT_LINGER  # drain may cut this short, like an idle wait
            while await stream.receive_some(self.limits.read_size):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass

    async def _final_flush_and_linger(self) -> None:
        """Send ``out`` and linger outside the (already cancelled) connection scope."""
        limits = self.limits
        stream = self.stream
        try:
            with trio.move_on_after(limits.write_timeout):
                await stream.send_all(self.out)
            self.out = bytearray()
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
                with trio.move_on_after(limits.linger_timeout):
                    while await stream.receive_some(limits.read_size):
                        pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass


async def _close_body_iter(resp: HttpResponse) -> None:
    aclose = getattr(resp.body_iter, "aclose", None)
    if aclose is not None:
        await aclose()


def rebuild_head(req: HttpRequest) -> bytes:
    """The request head of ``req`` re-serialised (for protocol upgrades)."""
    lines = [f"{req.method} {req.target} HTTP/{req.http_version}\r\n".encode("latin-1")]
    lines.extend(name + b": " + value + b"\r\n" for name, value in req.headers)
    lines.append(b"\r\n")
    return b"".join(lines)
