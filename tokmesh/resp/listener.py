"""Accepting RESP connections: the plain and the TLS listener.

Plain TCP connections are served by the :class:`~tokmesh.resp.mux.RespMux` (one task
for all of them); TLS connections, and any stream that is not a plain socket, by the
per-connection loop of :func:`~tokmesh.resp.handler.serve_resp_connection`. Accepting is
the shared loop of :mod:`tokmesh.api.accept` (resource exhaustion waited out and logged
once per episode, the ``server.max_connections`` cap).
"""

from __future__ import annotations

import functools
import ssl

import trio

from tokmesh.api.accept import ConnectionGate, accept_loop
from tokmesh.resp.commands import Dispatcher
from tokmesh.resp.connection import RespStats
from tokmesh.resp.handler import peer_ip_of, serve_resp_connection, stdlib_socket
from tokmesh.resp.limits import RespLimits
from tokmesh.resp.mux import RespMux

#: What Redis answers a connection beyond ``maxclients`` before closing it; client
#: libraries recognise the text (redis-py raises its ConnectionError for it).
MAX_CLIENTS_REPLY = b"-ERR max number of clients reached\r\n"


def _max_clients_reply() -> bytes:
    return MAX_CLIENTS_REPLY


async def serve_resp(
    listeners: list[trio.SocketListener],
    dispatcher: Dispatcher,
    limits: RespLimits | None = None,
    ssl_context: ssl.SSLContext | None = None,
    *,
    stats: RespStats | None = None,
    handler_nursery: trio.Nursery | None = None,
    gate: ConnectionGate | None = None,
    task_status: trio.TaskStatus[list[trio.abc.Listener[trio.abc.Stream]]] = (
        trio.TASK_STATUS_IGNORED
    ),
) -> None:
    """Accept RESP connections on ``listeners`` (plain, or TLS with ``ssl_context``).

    Runs until cancelled. ``task_status.started`` reports the (possibly TLS-wrapped)
    listeners once they accept. Accept errors such as EMFILE pause accepting instead
    of crashing, so a connection flood slows accepting but never stops the server. A
    ``gate`` caps the open connections (shared with other listeners); beyond it a plain
    connection gets ``-ERR max number of clients reached`` and is closed, a TLS one is
    closed.
    """
    limits = limits or RespLimits()
    stats = stats if stats is not None else dispatcher.stats
    wrapped: list[trio.abc.Listener[trio.abc.Stream]] = []
    for listener in listeners:
        if ssl_context is not None:
            # The handshake runs in the handler, under its own timeout.
            wrapped.append(trio.SSLListener(listener, ssl_context, https_compatible=False))
        else:
            wrapped.append(listener)

    async with trio.open_nursery() as nursery:
        mux: RespMux | None = None
        if ssl_context is None:
            mux = RespMux(dispatcher, limits, stats)
            await nursery.start(mux.run)

        async def handle(stream: trio.abc.Stream) -> None:
            peer = peer_ip_of(stream)
            if mux is not None and stdlib_socket(stream) is not None:
                assert isinstance(stream, trio.SocketStream)
                await mux.serve(stream, peer)
                return
            await serve_resp_connection(stream, dispatcher, limits, peer, stats)

        handlers = handler_nursery if handler_nursery is not None else nursery
        name = "redis_tls" if ssl_context is not None else "redis"
        for each in wrapped:
            nursery.start_soon(
                functools.partial(
                    accept_loop,
                    each,
                    handlers,
                    handle,
                    gate=gate,
                    name=name,
                    refusal=_max_clients_reply,
                )
            )
        task_status.started(wrapped)
