"""TokMesh's own HTTP/1.1 front on Trio: accept loop, TLS, graceful drain.

Usage::

    control = await nursery.start(serve_http, app, None)   # host/port keywords, or listeners
    ...
    clean = await control.drain(5.0)   # stop accepting, finish in-flight requests

The accept loop is the shared one of :mod:`tokmesh.api.accept` (EMFILE and friends
waited out as ``trio.serve_listeners`` does, logged once per episode; the
``server.max_connections`` cap answering 503 beyond it). Each connection runs
:class:`~tokmesh.api.http_connection.HttpConnection` in one task; see that module for
the parsing rules, limits and error answers; when the app has a ``now`` method (answer
without waiting, or None), plain connections are read by one
:class:`~tokmesh.api.http_mux.HttpMux` task while idle. Drain follows Hypercorn: move the handler
nursery's deadline, close idle keep-alive connections at once, answer in-flight
requests with ``Connection: close``.
"""

from __future__ import annotations

import functools
import logging
import math
import ssl
from collections.abc import Sequence
from typing import Any

import trio

from tokmesh.api.accept import ConnectionGate, accept_loop
from tokmesh.api.http_connection import (
    DIRECT_IO,
    WAIT_IDLE,
    WAIT_LINGER,
    HttpConnection,
    ServerHooks,
)
from tokmesh.api.http_errors import error_response
from tokmesh.api.http_limits import HttpLimits
from tokmesh.api.http_mux import HttpMux
from tokmesh.api.http_render import encode_head
from tokmesh.api.http_request_id import new_request_id
from tokmesh.api.http_types import HttpApp, StreamingPredicate, UpgradeHandler
from tokmesh.api.tls_handshake import server_handshake
from tokmesh.domain.errors import E

LOGGER = logging.getLogger("tokmesh.api.http")


def too_many_connections() -> bytes:
    """The whole answer to a connection over ``server.max_connections``: 503, closing."""
    resp = error_response(
        new_request_id(),
        E.SYS_UNAVAILABLE,
        "too many connections",
        details={"reason": "max_connections"},
        headers={"Retry-After": "1"},
    )
    head = encode_head(resp, request_id=None, keep_alive=False, http10=False, head_only=False)
    return head[0] + resp.body


class ServerControl:
    """Handle on a running :func:`serve_http`: counters and graceful shutdown."""

    def __init__(self) -> None:
        self.listeners: list[trio.SocketListener] = []
        self.connections = 0
        """Connections open right now."""
        self.accepted = 0
        """Connections accepted since start."""
        self.draining = False
        self.conns: set[HttpConnection] = set()
        """Connections past their TLS handshake; the reaper enforces their deadlines."""
        self._accept_scope = trio.CancelScope()
        self._handler_scope: trio.CancelScope | None = None
        self._drain_deadline = math.inf
        self._stopped = trio.Event()
        self._forced = False

    @property
    def ports(self) -> list[int]:
        """The bound TCP ports (one per listener)."""
        return [int(listener.socket.getsockname()[1]) for listener in self.listeners]

    @property
    def stopped(self) -> bool:
        """Whether :func:`serve_http` has returned."""
        return self._stopped.is_set()

    def begin_drain(self, timeout: float) -> None:
        """Start a drain without waiting (to drain several listeners at once).

        Stops accepting, closes idle keep-alive connections at once, lets in-flight
        requests finish (their answers carry ``Connection: close``) and cancels whatever
        still runs ``timeout`` seconds from now.
        """
        self.draining = True
        self._accept_scope.cancel()
        for conn in list(self.conns):
            if conn.waiting == WAIT_IDLE or conn.waiting == WAIT_LINGER:
                conn.scope.cancel()
        deadline = trio.current_time() + timeout
        self._drain_deadline = min(self._drain_deadline, deadline)
        if self._handler_scope is not None:
            self._handler_scope.deadline = min(self._handler_scope.deadline, deadline)

    async def wait_stopped(self) -> bool:
        """Wait until :func:`serve_http` has returned; True when nothing was cancelled."""
        await self._stopped.wait()
        return not self._forced

    async def drain(self, timeout: float) -> bool:
        """:meth:`begin_drain` then :meth:`wait_stopped`."""
        self.begin_drain(timeout)
        return await self.wait_stopped()


async def serve_http(
    app: HttpApp,
    listeners: Sequence[trio.SocketListener] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: HttpLimits | None = None,
    ssl_context: ssl.SSLContext | None = None,
    streaming_predicate: StreamingPredicate | None = None,
    upgrade_handler: UpgradeHandler | None = None,
    upgrade_paths: frozenset[str] = frozenset({"/events"}),
    control: ServerControl | None = None,
    gate: ConnectionGate | None = None,
    task_status: trio.TaskStatus[ServerControl] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTP/1.1 with ``app`` until cancelled or drained.

    Binds ``host:port`` (port 0 = ephemeral) unless ``listeners`` are given; takes
    ownership of the listeners and closes them. With ``ssl_context`` every connection
    is TLS (handshake bounded by ``limits.handshake_timeout``; a failed handshake closes
    only that connection). ``streaming_predicate(method, path)`` selects requests whose
    body reaches the handler as ``req.stream``. A WebSocket upgrade on one of
    ``upgrade_paths`` is handed to ``upgrade_handler``. A ``gate`` caps the open
    connections (shared with other listeners); beyond it a connection is answered 503
    (plain) or closed (TLS) at once. Reports the :class:`ServerControl` through
    ``task_status`` once listening.
    """
    limits = limits if limits is not None else HttpLimits()
    control = control if control is not None else ServerControl()
    if listeners is None:
        listeners = await trio.open_tcp_listeners(port, host=host)
    control.listeners = list(listeners)
    hooks = ServerHooks(
        app,
        limits,
        control,
        streaming_predicate=streaming_predicate,
        upgrade_handler=upgrade_handler,
        upgrade_paths=upgrade_paths,
    )
    now = getattr(app, "now", None)
    try:
        async with trio.open_nursery() as reaper_nursery:
            reaper_nursery.start_soon(_reaper, control, limits.timer_resolution)
            if now is not None and ssl_context is None and DIRECT_IO:
                # Plain TCP and an app that can answer without waiting: one task reads
                # all idle connections (tokmesh.api.http_mux). TLS keeps a task each.
                mux = HttpMux(now, limits.read_size)
                await reaper_nursery.start(mux.run)
                hooks.mux = mux
            async with trio.open_nursery() as handler_nursery:
                control._handler_scope = handler_nursery.cancel_scope
                handler_nursery.cancel_scope.deadline = control._drain_deadline
                handler = functools.partial(_run_connection, hooks=hooks, ssl_context=ssl_context)
                with control._accept_scope:
                    async with trio.open_nursery() as accept_nursery:
                        for listener in control.listeners:
                            accept_nursery.start_soon(
                                functools.partial(
                                    accept_loop,
                                    listener,
                                    handler_nursery,
                                    handler,
                                    gate=gate,
                                    name="https" if ssl_context is not None else "http",
                                    # TLS: a plaintext answer would be garbage to the client.
                                    refusal=too_many_connections if ssl_context is None else None,
                                )
                            )
                        task_status.started(control)
            control._forced = handler_nursery.cancel_scope.cancel_called
            reaper_nursery.cancel_scope.cancel()
    finally:
        control._stopped.set()


async def _reaper(control: ServerControl, resolution: float) -> None:
    """Enforce connection deadlines: one timer for all connections (see HttpConnection)."""
    while True:
        await trio.sleep(resolution)
        now = trio.current_time()
        for conn in list(control.conns):
            if conn.deadline <= now:
                conn.scope.cancel()


def _address(sock: Any, peer: bool) -> tuple[str, int]:
    try:
        addr = sock.getpeername() if peer else sock.getsockname()
    except OSError:
        return ("", 0)
    if isinstance(addr, tuple):
        return (str(addr[0]), int(addr[1]))
    return (str(addr), 0)


async def _run_connection(
    tcp: trio.SocketStream, hooks: ServerHooks, ssl_context: ssl.SSLContext | None
) -> None:
    control: ServerControl = hooks.control
    control.connections += 1
    control.accepted += 1
    stream: trio.abc.Stream = tcp
    try:
        if ssl_context is not None:
            tls = trio.SSLStream(tcp, ssl_context, server_side=True, https_compatible=True)
            stream = tls
            if not await server_handshake(tls, hooks.limits.handshake_timeout):
                return
        conn = HttpConnection(
            hooks,
            stream,
            peer=_address(tcp.socket, True),
            local=_address(tcp.socket, False),
            tls=ssl_context is not None,
        )
        await conn.serve()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away; nothing to answer
    except Exception:
        LOGGER.exception("HTTP connection failed")
    finally:
        control.connections -= 1
        await trio.aclose_forcefully(stream)
