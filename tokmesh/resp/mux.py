"""One task serving every plain-TCP RESP connection through its own epoll set.

Why: with one Trio task per connection, every unpipelined command costs a task wake-up
(the scheduler, the cancel-scope machinery, a checkpoint) on top of the two syscalls, and
that wake-up is most of the ~30 µs a command cost. Here the RESP sockets sit in a private
``select.epoll`` whose own descriptor Trio watches: one wake-up of the mux task answers
every connection that became readable, each with one ``recv`` and one ``send``, and no
other task runs in between. Measured with ``bench/resp_validate.py``, see
docs/performance.md.

Division of work:

* **The mux task** (:meth:`RespMux.run`) does the fast path: read, parse, run the
  inline commands (:meth:`~tokmesh.resp.commands.Dispatcher.run_inline`), send the
  replies with one non-blocking ``send``.
* **The connection's own task** (:meth:`RespMux.serve`, the listener's handler) sleeps
  while the mux serves it. The mux wakes it (and takes the socket out of the epoll set)
  for anything that must wait: a mutation to await through the store actors, a reply the
  kernel did not take at once, or the end of the connection. It does that work under the
  write timeout, then hands the socket back. It alone closes the socket.
* **The sweeper** (:meth:`RespMux._sweep`) enforces the idle, command and login
  timeouts without a clock read on the fast path: the mux only marks a connection
  active; the sweeper stamps times on its ticks (granularity: a tenth of the shortest
  timeout, at most one second, so a timeout fires between its value and value + tick).

TLS connections keep the per-connection loop of :mod:`tokmesh.resp.handler` (the TLS
state machine lives in ``trio.SSLStream``).
"""

from __future__ import annotations

import logging
import math
import select
import socket
import time
from collections.abc import Awaitable

import trio

from tokmesh.resp.codec import OK as _OK
from tokmesh.resp.codec import RespParser
from tokmesh.resp.commands import Dispatcher
from tokmesh.resp.connection import Connection, RespStats
from tokmesh.resp.handler import close_stream, end_of_read, open_connection, stdlib_socket
from tokmesh.resp.limits import RespLimits

log = logging.getLogger("tokmesh.resp")

# Why the mux handed a connection to its task (``_MuxConn.work``).
_WORK_CLOSE = 0  # EOF, QUIT, protocol error, timeout, transport error: close
_WORK_RUN = 1  # a command to await, then the rest of the read, then send
_WORK_SEND = 2  # bytes the kernel did not take at once

#: How a ``TM.VALIDATE token`` frame starts (a two-element array, an 11-byte name): other
#: reads skip the compiled loop's set-up.
_VALIDATE_HEAD = b"*2\r\n$11\r\n"


class _MuxConn:
    """One plain RESP connection as the mux sees it."""

    __slots__ = (
        "active",
        "closing_after",
        "commands",
        "conn",
        "done",
        "fd",
        "idle_since",
        "index",
        "login_deadline",
        "out",
        "parser",
        "partial_seq",
        "partial_since",
        "pending",
        "registered",
        "replies",
        "sock",
        "wake",
        "work",
    )

    def __init__(self, sock: socket.socket, conn: Connection, limits: RespLimits) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.parser = RespParser(limits)
        self.conn = conn
        self.registered = False
        #: Set on every read; the sweeper clears it and stamps ``idle_since``.
        self.active = True
        self.idle_since = 0.0
        #: Commands completed so far, and the sweeper's view of the partial command.
        self.done = 0
        self.partial_seq = -1
        self.partial_since = 0.0
        #: When the connection must have authenticated (inf once checked and bound).
        self.login_deadline = math.inf
        #: Hand-over to the connection's task.
        self.wake = trio.Event()
        self.work = _WORK_CLOSE
        self.commands: list[list[bytes]] = []
        self.index = 0
        self.pending: Awaitable[bytes] | None = None
        self.replies: list[bytes] = []
        self.out = b""
        #: The replies end the connection (QUIT or a protocol error).
        self.closing_after = False


class RespMux:
    """The fast path for plain RESP sockets; see the module doc."""

    def __init__(
        self, dispatcher: Dispatcher, limits: RespLimits, stats: RespStats | None = None
    ) -> None:
        self._dispatcher = dispatcher
        self._limits = limits
        self.stats = stats if stats is not None else dispatcher.stats
        self._epoll = select.epoll()
        self._conns: dict[int, _MuxConn] = {}
        self._ready: list[_MuxConn] = []
        shortest = min(limits.idle_timeout, limits.command_timeout, limits.login_timeout)
        self._tick = min(1.0, max(shortest / 10, 0.001))

    # -- the connection's task ------------------------------------------------------------

    async def serve(self, stream: trio.SocketStream, peer: str) -> None:
        """Serve one plain connection (the listener's handler); returns once it closed."""
        stats = self.stats
        stats.active += 1
        stats.total += 1
        raw = stdlib_socket(stream)
        assert raw is not None  # the listener sends only plain sockets here
        mc = _MuxConn(raw, open_connection(self._dispatcher, raw, peer), self._limits)
        mc.login_deadline = trio.current_time() + self._limits.login_timeout
        try:
            self._register(mc)
            while True:
                await mc.wake.wait()
                mc.wake = trio.Event()
                if mc.work == _WORK_CLOSE or not await self._slow_path(mc, stream):
                    return
                self._register(mc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer went away while we wrote
        finally:
            self._unregister(mc)
            self._dispatcher.clients.close(mc.conn)
            stats.active -= 1
            await close_stream(stream)

    async def _slow_path(self, mc: _MuxConn, stream: trio.SocketStream) -> bool:
        """Finish what the mux handed over; False when the connection must close."""
        conn = mc.conn
        with trio.move_on_after(self._limits.write_timeout) as scope:
            if mc.work == _WORK_RUN:
                commands, replies, pending = mc.commands, mc.replies, mc.pending
                mc.commands, mc.replies, mc.pending = [], [], None
                assert pending is not None
                await self._dispatcher.run_awaited(conn, commands, mc.index, pending, replies)
                mc.done += len(commands)
                closing = end_of_read(conn, mc.parser, replies, self.stats)
                if replies:
                    await stream.send_all(b"".join(replies))
                return not closing
            out, mc.out = mc.out, b""
            await stream.send_all(out)
            return not mc.closing_after
        if scope.cancelled_caught:
            self.stats.timeouts += 1
        return False

    # -- registration ------------------------------------------------------------------------

    def _register(self, mc: _MuxConn) -> None:
        """Put ``mc`` on the fast path (the mux reads it from now on)."""
        if self._epoll.closed:
            raise trio.ClosedResourceError("the RESP mux has stopped")
        self._conns[mc.fd] = mc
        self._epoll.register(mc.fd, select.EPOLLIN)
        mc.registered = True
        mc.active = True  # time spent off the fast path is not idle time

    def _unregister(self, mc: _MuxConn) -> None:
        if mc.registered:
            mc.registered = False
            del self._conns[mc.fd]
            if not self._epoll.closed:  # the mux may stop before its connections
                self._epoll.unregister(mc.fd)

    def _hand_over(self, mc: _MuxConn, work: int) -> None:
        """Take ``mc`` off the fast path and wake its task to do ``work``."""
        self._unregister(mc)
        mc.work = work
        mc.wake.set()

    # -- the mux task ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve readable connections until cancelled (plus the timeout sweeper)."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sweep)
                task_status.started()
                await self._loop()
        finally:
            self._epoll.close()

    async def _loop(self) -> None:
        poll = self._epoll.poll
        efd = self._epoll.fileno()
        conns = self._conns
        on_readable = self._on_readable
        wait_readable = trio.lowlevel.wait_readable
        ready = self._ready
        while True:
            await wait_readable(efd)
            for fd, _events in poll(0):
                mc = conns.get(fd)
                if mc is None:
                    continue  # handed over or closed earlier in this batch
                try:
                    on_readable(mc)
                except Exception:
                    # A bug serving one connection closes that connection, not the mux.
                    log.exception("RESP connection failed")
                    if mc.registered:
                        self._hand_over(mc, _WORK_CLOSE)
            if ready:
                self._answer_ready(ready)

    def _on_readable(self, mc: _MuxConn) -> None:
        """Read once, run the completed commands inline, answer with one send."""
        try:
            data = mc.sock.recv(self._limits.read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._hand_over(mc, _WORK_CLOSE)
            return
        if not data:
            self._hand_over(mc, _WORK_CLOSE)  # EOF
            return
        mc.active = True
        parser = mc.parser
        conn = mc.conn
        replies: list[bytes] = []
        # Reads run inline: re-check the bound key once for this synchronous run.
        conn.checked = False
        if data.startswith(_VALIDATE_HEAD) and not parser.has_partial and parser.error is None:
            # A run of validations at a command boundary: the compiled loop answers it
            # (its +OKs go first, one reply per frame), the parser takes the rest.
            valid, end = self._dispatcher.validate_frames(conn, data)
            if valid:
                out = _OK * valid if valid > 1 else _OK
                mc.done += valid
                if end == len(data):  # the whole read (a gateway's usual read)
                    self.stats.commands += valid
                    mc.out = out
                    mc.closing_after = False
                    self._ready.append(mc)
                    return
                replies.append(out)
                self.stats.commands += valid - 1  # end_of_read counts the one chunk
                data = data[end:]
        commands = parser.feed(data)
        i, pending = self._dispatcher.run_inline(conn, commands, 0, replies)
        if pending is not None:
            mc.commands, mc.index, mc.pending, mc.replies = commands, i, pending, replies
            self._hand_over(mc, _WORK_RUN)
            return
        mc.done += len(commands)
        closing = end_of_read(conn, parser, replies, self.stats)
        if replies:
            mc.out = replies[0] if len(replies) == 1 else b"".join(replies)
            mc.closing_after = closing
            self._ready.append(mc)  # sent after the batch (_answer_ready)
        elif closing:
            self._hand_over(mc, _WORK_CLOSE)

    def _answer_ready(self, ready: list[_MuxConn]) -> None:
        """Send the replies of the batch, one ``send`` per connection, back to back.

        As in the HTTP mux (:meth:`tokmesh.api.http_mux.HttpMux._answer_ready`): a client
        thread serving many connections then wakes once per batch instead of once per
        reply.
        """
        for mc in ready:
            if not mc.registered:
                continue
            out, mc.out = mc.out, b""
            try:
                sent = mc.sock.send(out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._hand_over(mc, _WORK_CLOSE)
                continue
            if sent < len(out):
                mc.out = out[sent:]
                self._hand_over(mc, _WORK_SEND)
            elif mc.closing_after:
                self._hand_over(mc, _WORK_CLOSE)
        ready.clear()

    # -- timeouts -------------------------------------------------------------------------------

    async def _sweep(self) -> None:
        limits = self._limits
        idle_timeout = limits.idle_timeout
        command_timeout = limits.command_timeout
        while True:
            await trio.sleep(self._tick)
            now = trio.current_time()
            wall = time.monotonic()  # CLIENT LIST's clock (Trio's may be a test clock)
            expired: list[_MuxConn] = []
            for mc in self._conns.values():
                if now >= mc.login_deadline:
                    # Checked once: a connection that has not authenticated by now is an
                    # idle-connection flood's, not a client's (clients AUTH or HELLO at once).
                    if mc.conn.principal is None:
                        expired.append(mc)
                        continue
                    mc.login_deadline = math.inf
                if mc.active:
                    mc.active = False
                    mc.idle_since = now
                    mc.conn.idle_since = wall
                if mc.parser.has_partial:
                    # The command timeout runs from the first tick that saw this command
                    # unfinished (``done`` tells a new partial command from the old one).
                    if mc.partial_seq != mc.done:
                        mc.partial_seq = mc.done
                        mc.partial_since = now
                    elif now - mc.partial_since >= command_timeout:
                        expired.append(mc)
                        continue
                else:
                    mc.partial_seq = -1
                if now - mc.idle_since >= idle_timeout and not math.isinf(idle_timeout):
                    expired.append(mc)
            for mc in expired:
                self.stats.timeouts += 1
                self._hand_over(mc, _WORK_CLOSE)
