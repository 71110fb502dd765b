"""One task reading every plain-TCP HTTP connection through its own epoll set.

Why: with one Trio task per connection, every keep-alive request costs a task wake-up
(scheduler pass, cancel-scope bookkeeping, a checkpoint) and a chain of awaits on top
of the read and the write, and at 10,000 requests/s on two shared cores that overhead
is what makes the queue, and the P99, long. Here idle connections sit in a private
``select.epoll`` whose own descriptor Trio watches: one wake-up of the mux task reads
every connection that became readable, answers the requests that need no waiting
(``NativeFront.now``: ``POST /tokens/validate`` with a cached API key, session reads,
health, 404/405) and, once the whole batch is read, writes each connection's answers
with one ``write``. Same design as the RESP mux (:mod:`tokmesh.resp.mux`); measured
with ``bench/http_validate.py``.

Division of work:

* **The mux task** (:meth:`HttpMux.run`) reads, feeds the connection's parser
  (:meth:`HttpConnection.feed`, so parsing rules and limits are the same), calls
  ``now(req)`` for each completed request and queues the answers
  (:meth:`HttpConnection.append_response`), then writes.
* **Commit callbacks** answer the session writes: for those ``now(req)`` returns a
  :class:`~tokmesh.api.http_types.Deferred` that the WAL writer's commit completes
  (:meth:`HttpMux._completed`). The requests behind it wait, any input arriving
  meanwhile stays in the socket (the descriptor is paused in the epoll set), and the
  answers of one group commit are written together once the writer yields.
* **The connection's task** (:meth:`HttpMux.serve`, called from
  ``HttpConnection._loop``) sleeps while the mux serves it. The mux wakes it, with the
  connection exactly as if the task had fed that read itself, for anything else: a
  request that must wait (an awaiting route, an API-key cache miss, the ASGI bridge, a
  streamed body, an upgrade), a parse error or closing request, ``100-continue``, an
  answer the kernel did not take at once, EOF. The task alone closes the socket.
* **Timeouts** stay with the server's reaper: the mux publishes each connection's
  ``deadline``/``waiting`` after every read (:meth:`HttpConnection.arm_read`), and a
  cancelled connection scope wakes the task, which unregisters and answers 408 or
  closes, as without the mux.
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import trio

from tokmesh.api.http_types import Deferred, HttpRequest, HttpResponse

if TYPE_CHECKING:
    from tokmesh.api.http_connection import HttpConnection

LOGGER = logging.getLogger("tokmesh.api.http")

MAX_BATCH = 256

NowApp = Callable[[HttpRequest], "HttpResponse | Deferred | None"]
"""``app.now``: the answer to a request without waiting, a :class:`Deferred` that a
commit completes, or None when it must wait."""


class HttpMux:
    """The fast path for plain HTTP connections of one listener; see the module doc."""

    # How a connection is handed back to its task (``HttpMux.serve``'s result).
    HAND_WORK = 0
    """State as after a read the task fed itself: send ``pending`` if set, run the
    queue, then the checks."""
    HAND_EOF = 1
    """The peer closed (or a draining server reads no more): end without answering."""
    HAND_CLOSE = 2
    """Answers queued in ``out`` end the connection: send them, then linger and close."""
    HAND_SEND = 3
    """``out`` holds what the kernel did not take at once: send it, then come back."""
    HAND_BROKEN = 4
    """Read or write failed (or serving it raised): close without answering."""

    def __init__(self, now: NowApp, read_size: int) -> None:
        self._now = now
        self._read_size = read_size
        self._epoll = select.epoll()
        self._conns: dict[int, HttpConnection] = {}
        self._ready: list[tuple[int, HttpConnection]] = []
        self._flush_scheduled = False
        self._token = trio.lowlevel.current_trio_token()

    # -- the connection's task ------------------------------------------------------------

    async def serve(self, conn: HttpConnection) -> int:
        """Let the mux read ``conn`` until it hands it back; returns a ``HAND_*`` value."""
        if not conn.arm_read(trio.current_time()):
            return self.HAND_EOF
        if self._epoll.closed:
            raise trio.ClosedResourceError("the HTTP mux has stopped")
        fd = conn.tsock.fileno()
        self._conns[fd] = conn
        conn.paused = False
        self._epoll.register(fd, select.EPOLLIN)
        try:
            await conn.wake.wait()
        finally:
            # Also on cancellation (the reaper's timeout, drain): stop reading it.
            self._unregister(fd)
        conn.wake = trio.Event()
        return conn.handed

    def _unregister(self, fd: int) -> None:
        if self._conns.pop(fd, None) is not None and not self._epoll.closed:
            self._epoll.unregister(fd)

    def _hand_over(self, fd: int, conn: HttpConnection, how: int) -> None:
        self._unregister(fd)
        # The task owns the deadline from here (the stale idle one must not fire while
        # it runs a handler, and drain must not take it for an idle connection).
        conn.mark_busy()
        conn.handed = how
        conn.wake.set()

    # -- the mux task ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve readable connections until cancelled."""
        try:
            task_status.started()
            poll = self._epoll.poll
            efd = self._epoll.fileno()
            conns = self._conns
            on_readable = self._on_readable
            wait_readable = trio.lowlevel.wait_readable
            while True:
                await wait_readable(efd)
                # At most MAX_BATCH connections per wake-up, so that thousands of busy
                # connections cannot keep the other tasks (store actors, WAL acks) waiting
                # for long; the rest stay readable and come in the next batch.
                ready = self._ready
                for fd, _events in poll(0, MAX_BATCH):
                    conn = conns.get(fd)
                    if conn is None:
                        continue  # handed back earlier in this batch
                    try:
                        on_readable(fd, conn)
                    except Exception:
                        # A bug serving one connection closes that connection, not the mux.
                        LOGGER.exception("HTTP connection failed")
                        if fd in conns:
                            self._hand_over(fd, conn, self.HAND_BROKEN)
                if ready:
                    self._answer_ready(ready)
        finally:
            self._epoll.close()

    def _on_readable(self, fd: int, conn: HttpConnection) -> None:
        """Read once and answer what needs no waiting (written after the batch); else
        hand the connection back."""
        if conn.scope.cancel_called:
            # Timed out or drained: its task is about to see the cancellation.
            self._unregister(fd)
            return
        if conn.deferred or conn.out:
            # More input (a pipelined request, EOF) behind an answer still waiting for
            # its commit or its write: leave it in the socket until that answer is out
            # (_answer_ready watches the socket again).
            conn.paused = True
            self._epoll.modify(fd, 0)
            return
        try:
            data = os.read(fd, self._read_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._hand_over(fd, conn, self.HAND_BROKEN)
            return
        if not data:
            self._hand_over(fd, conn, self.HAND_EOF)
            return
        conn.feed(data)
        self._serve_queue(fd, conn)

    def _serve_queue(self, fd: int, conn: HttpConnection) -> None:
        """Answer the parsed requests of ``conn`` in order, until one must wait."""
        queue = conn.queue
        now = self._now
        while queue:
            req = queue[0]
            if req.stream is not None or req is conn.upgrade_req:
                self._hand_over(fd, conn, self.HAND_WORK)
                return
            try:
                resp = now(req)
            except Exception as exc:
                resp = conn.handler_failed(req, exc)
            if resp is None:
                self._hand_over(fd, conn, self.HAND_WORK)
                return
            queue.popleft()
            if isinstance(resp, Deferred):
                # A mutation in the WAL's hands: answered from its commit callback, and
                # the requests behind it wait for that (answers go out in order).
                conn.mark_busy()
                conn.deferred = True
                if conn.out:
                    self._ready.append((fd, conn))  # the answers before it go out now
                resp.then(partial(self._completed, fd, conn, req))
                return
            if resp.body_iter is not None:
                conn.pending = (req, resp)  # streaming is the task's job
                self._hand_over(fd, conn, self.HAND_WORK)
                return
            if not conn.append_response(req, resp)[3]:
                self._write(fd, conn, self.HAND_CLOSE)
                return
        if conn.error is not None or conn.stop_parsing or conn.must_close or conn.continue_pending:
            self._hand_over(fd, conn, self.HAND_WORK)
            return
        self._ready.append((fd, conn))  # written after the batch (_answer_ready)

    def _completed(
        self, fd: int, conn: HttpConnection, req: HttpRequest, answer: HttpResponse | BaseException
    ) -> None:
        """A deferred answer is there: queue it, serve what came behind it, write."""
        conn.deferred = False
        if self._conns.get(fd) is not conn:
            return  # timed out or drained meanwhile: its task closes it
        try:
            if not isinstance(answer, HttpResponse):
                # The pipeline renders every error; anything else is a bug.
                answer = conn.handler_failed(req, answer)  # type: ignore[arg-type]
            if not conn.append_response(req, answer)[3]:
                self._write(fd, conn, self.HAND_CLOSE)
                return
            self._serve_queue(fd, conn)
        except Exception:
            LOGGER.exception("HTTP connection failed")
            if fd in self._conns:
                self._hand_over(fd, conn, self.HAND_BROKEN)
        if self._ready and not self._flush_scheduled:
            # Written once the current task (the WAL writer, answering a whole group
            # commit) yields: every answer of the batch goes out back to back, so a
            # client thread serving many connections wakes once for all of them.
            self._flush_scheduled = True
            self._token.run_sync_soon(self._flush_completed)

    def _flush_completed(self) -> None:
        """Write the answers completed since the last flush (a ``run_sync_soon`` callback:
        it must not raise)."""
        self._flush_scheduled = False
        try:
            if self._ready:
                self._answer_ready(self._ready)
        except Exception:  # pragma: no cover - _answer_ready handles its connections
            LOGGER.exception("HTTP mux flush failed")

    def _answer_ready(self, ready: list[tuple[int, HttpConnection]]) -> None:
        """Write the answers of the batch, one ``write`` per connection, back to back.

        Writing after the whole batch rather than after each read lets a client thread
        that serves many connections wake once and find many answers, instead of being
        woken (a cross-CPU wake-up) for every single one: on the shared two cores that
        halved the load generator's CPU per request in ``bench/http_validate.py``.
        """
        conns = self._conns
        for fd, conn in ready:
            if conns.get(fd) is not conn:
                continue
            try:
                if not self._write(fd, conn, None) or conn.deferred:
                    # Handed back, or its next answer still waits for its commit: not
                    # reading yet, so no deadline until that answer is out.
                    continue
                if conn.paused:
                    conn.paused = False
                    self._epoll.modify(fd, select.EPOLLIN)
                if not conn.arm_read(conn.now):
                    self._hand_over(fd, conn, self.HAND_EOF)
            except Exception:
                LOGGER.exception("HTTP connection failed")
                if fd in conns:
                    self._hand_over(fd, conn, self.HAND_BROKEN)
        ready.clear()

    def _write(self, fd: int, conn: HttpConnection, then: int | None) -> bool:
        """Write ``conn.out`` once; True when it all went and ``then`` is None.

        Otherwise hands the connection back: ``then`` when given, ``HAND_SEND`` with the
        rest left in ``out``, ``HAND_BROKEN`` on a write error.
        """
        out = conn.out
        if out:
            try:
                sent = os.write(fd, out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._hand_over(fd, conn, self.HAND_BROKEN)
                return False
            if sent < len(out):
                del out[:sent]
                self._hand_over(fd, conn, self.HAND_SEND if then is None else then)
                return False
            out.clear()
        if then is not None:
            self._hand_over(fd, conn, then)
            return False
        return True
