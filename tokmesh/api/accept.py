"""The accept loop of every listener: resource exhaustion is waited out, the cap refuses.

Every listener of the process (HTTP, HTTPS, RESP, RESP over TLS, the local admin socket)
accepts through :func:`accept_loop`, which follows ``trio.serve_listeners``: the errnos
that mean the process or the kernel is out of resources (:data:`ACCEPT_CAPACITY_ERRNOS`)
pause the loop :data:`ACCEPT_RETRY_SLEEP` seconds and it tries again, while connections
already open are served as before; any other error ends the server. Unlike Trio's loop it
does not log every retry (ten a second per listener, with a traceback each): running out
of descriptors is one condition of the whole process, so all loops share one
:class:`~tokmesh.telemetry.episodes.Episode` (a WARN when accepts start failing, an INFO
with the count when one succeeds again) and count each failure in
``tokmesh_accept_errors_total``.

The TCP listeners also share a :class:`ConnectionGate`, the ``server.max_connections``
cap. A connection beyond it is still accepted, so that it leaves the backlog and its
client learns at once, and then closed: after a short refusal on a plain socket (HTTP
503, RESP ``-ERR max number of clients reached`` as Redis says it), without a word on a
TLS one, where anything said would cost a handshake. The cap exists so that descriptors
stay free for what must not fail: WAL segments, snapshots, the audit log and the local
admin socket, which is not counted.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import trio

from tokmesh.telemetry import metrics
from tokmesh.telemetry.episodes import Episode

log = logging.getLogger("tokmesh.accept")

#: The errnos of accept(2) that mean "out of resources", not "broken": trio's own set.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: Seconds an accept loop waits after one of them (trio.serve_listeners' pause).
ACCEPT_RETRY_SLEEP = 0.100
#: Seconds without a failed accept (or a refusal) after which an episode is over. While
#: descriptors are short, a few accepts still get through (one freed for an instant, one
#: loop of several), so a single success does not prove anything; five rounds of retries
#: that all worked do.
ACCEPT_SETTLE = 0.5

_ACCEPT_ERRORS = {
    code: metrics.ACCEPT_ERRORS.labels(errno=errno.errorcode[code])
    for code in ACCEPT_CAPACITY_ERRNOS
}

#: Shared by every accept loop of the process (descriptor exhaustion is process-wide).
ACCEPT_OVERLOAD = Episode(
    log,
    "accept_overload",
    start=(
        "accept failing with {detail}: new connections wait in the listen backlog; "
        f"retrying every {ACCEPT_RETRY_SLEEP:g} s, open connections are still served"
    ),
    end="accepting connections again",
    unit="retries",
    settle=ACCEPT_SETTLE,
)

StreamT = TypeVar("StreamT", bound=trio.abc.AsyncResource)


class ConnectionGate:
    """The cap on open TCP connections, shared by all TCP listeners of one server.

    ``limit`` 0 means no cap. The count is exact: the accept loop admits before it
    starts the handler and the handler's end releases, all on the Trio thread.
    """

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        #: Connections admitted and not yet ended.
        self.open = 0
        self.full = Episode(
            log,
            "connection_limit",
            start=(
                f"connection limit of {limit} reached (server.max_connections), first "
                "refusal on {detail}: new connections are closed at once until some end"
            ),
            end="connection limit: accepting connections again",
            unit="refusals",
            settle=ACCEPT_SETTLE,
        )
        self._refused: dict[str, Any] = {}

    def admit(self, listener: str) -> bool:
        """Count one more connection; False (and one refusal counted) when at the cap."""
        if self.limit and self.open >= self.limit:
            counter = self._refused.get(listener)
            if counter is None:
                counter = self._refused[listener] = metrics.CONNECTIONS_REFUSED.labels(
                    listener=listener
                )
            counter.inc()
            self.full.failed(listener, listener=listener)
            return False
        self.open += 1
        self.full.succeeded()
        return True

    def release(self) -> None:
        """One admitted connection has ended."""
        self.open -= 1


def accept_failed(code: int) -> None:
    """Count and (once per episode) log a failed accept for lack of resources."""
    name = errno.errorcode.get(code, str(code))
    counter = _ACCEPT_ERRORS.get(code)
    if counter is not None:
        counter.inc()
    ACCEPT_OVERLOAD.failed(f"{name} ({os.strerror(code)})", errno=name)


def accept_succeeded() -> None:
    """An accept worked: an overload episode in progress ends."""
    ACCEPT_OVERLOAD.succeeded()


async def accept_loop(
    listener: trio.abc.Listener[StreamT],
    handler_nursery: trio.Nursery,
    handler: Callable[[StreamT], Awaitable[object]],
    *,
    gate: ConnectionGate | None = None,
    name: str = "",
    refusal: Callable[[], bytes] | None = None,
) -> NoReturn:
    """Accept on ``listener`` forever; each connection runs ``handler(stream)`` in
    ``handler_nursery`` and is closed afterwards.

    With a ``gate``, a connection over its cap is closed at once instead, after the
    bytes of ``refusal()`` when it is a plain socket; ``name`` labels its refusals.
    Owns the listener and closes it on the way out.
    """
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                accept_failed(exc.errno)
                _watch(ACCEPT_OVERLOAD, handler_nursery)
                await trio.sleep(ACCEPT_RETRY_SLEEP)
                continue
            ACCEPT_OVERLOAD.succeeded()
            if gate is None:
                handler_nursery.start_soon(_serve, handler, stream, None)
            elif gate.admit(name):
                handler_nursery.start_soon(_serve, handler, stream, gate)
            else:
                refuse(stream, refusal() if refusal is not None else b"")
                _watch(gate.full, handler_nursery)


# Episodes with a task waiting to end them once they settle (one task per episode).
_watched: set[Episode] = set()


def _watch(episode: Episode, nursery: trio.Nursery) -> None:
    """End ``episode`` once it has settled, even if no accept comes to say so."""
    if episode.active and episode not in _watched:
        _watched.add(episode)
        nursery.start_soon(_expire_when_settled, episode)


async def _expire_when_settled(episode: Episode) -> None:
    try:
        while episode.active:
            await trio.sleep(ACCEPT_SETTLE)
            episode.expire()
    finally:
        _watched.discard(episode)


async def _serve(
    handler: Callable[[StreamT], Awaitable[object]],
    stream: StreamT,
    gate: ConnectionGate | None,
) -> None:
    try:
        await handler(stream)
    finally:
        if gate is not None:
            gate.release()
        await trio.aclose_forcefully(stream)


def refuse(stream: trio.abc.AsyncResource, reply: bytes) -> None:
    """Close a just-accepted connection at once, saying ``reply`` first on a plain socket.

    Synchronous, so a flood of refusals costs the accept loop no task and no wait: the
    reply is one non-blocking write into an empty send buffer. What the client already
    sent is read away first, because closing a socket with unread input makes the kernel
    answer with a reset, which can reach the client before the reply does.
    """
    tls = isinstance(stream, trio.SSLStream)
    inner: object = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    sock: Any = getattr(inner, "socket", None)
    if sock is None:
        return  # not a socket stream (tests); nothing holds a descriptor
    fd = sock.fileno()
    if fd >= 0 and not tls and reply:
        with contextlib.suppress(OSError):
            _discard_input(fd)
            os.write(fd, reply)
    sock.close()


def _discard_input(fd: int) -> None:
    # A few reads at most: a client that streams more than that gets its reset.
    for _ in range(4):
        try:
            if not os.read(fd, 65536):
                return
        except BlockingIOError:
            return


class TrioAcceptLogFilter(logging.Filter):
    """Folds ``trio.serve_listeners``' per-retry ERROR lines into :data:`ACCEPT_OVERLOAD`.

    For the Hypercorn engine, whose accept loop is Trio's: it already sleeps and retries
    as ours does, but logs every retry with a traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop a capacity-errno accept record (counting it); keep everything else."""
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, OSError) and exc.errno in ACCEPT_CAPACITY_ERRNOS:
            accept_failed(exc.errno)
            return False
        return True


_TRIO_FILTER = TrioAcceptLogFilter()


def fold_trio_accept_errors() -> None:
    """Install :class:`TrioAcceptLogFilter` on Trio's accept logger (idempotent)."""
    logger = logging.getLogger("trio.serve_listeners")
    if _TRIO_FILTER not in logger.filters:
        logger.addFilter(_TRIO_FILTER)
