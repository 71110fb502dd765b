"""The RESP listener: a Trio stream handler around the sans-IO codec.

One loop per connection: read (under the idle timeout between commands, or the login
timeout until the connection has authenticated, the command timeout once a command has
started), parse every command the read completed, run each
through the :class:`~tokmesh.resp.commands.Dispatcher` in order (reads inline, mutations
awaited one after the other, so replies keep the order of the commands), and answer all
of them with ONE ``send_all`` under the write timeout. A framing fault answers the
commands before it, then ``-ERR protocol error...`` / ``-ERR protocol limit exceeded``,
then closes this connection only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import socket
import ssl
import time
from typing import Any, Protocol

import trio

from tokmesh.api.tls_handshake import server_handshake
from tokmesh.resp.codec import RespParser
from tokmesh.resp.commands import Dispatcher
from tokmesh.resp.connection import Connection, RespStats, format_addr
from tokmesh.resp.limits import RespLimits

log = logging.getLogger("tokmesh.resp")


class SocketLike(Protocol):
    """What is read from a socket (stdlib or Trio) to describe a connection."""

    def getpeername(self) -> Any:
        """The peer's address tuple."""
        ...

    def getsockname(self) -> Any:
        """Our end's address tuple."""
        ...

    def fileno(self) -> int:
        """The descriptor."""
        ...


def open_connection(dispatcher: Dispatcher, sock: SocketLike | None, peer: str) -> Connection:
    """Register a new connection with its addresses and descriptor (CLIENT LIST)."""
    addr, laddr, port, fd = "", "", 0, -1
    if sock is not None:
        try:
            addr, _ = format_addr(sock.getpeername())
            laddr, port = format_addr(sock.getsockname())
            fd = sock.fileno()
        except OSError:
            pass  # already gone: the connection ends at its first read
    return dispatcher.clients.open(peer, addr=addr, laddr=laddr, local_port=port, fd=fd)


def _socket_of(stream: trio.abc.Stream) -> SocketLike | None:
    """The socket under a (possibly TLS-wrapped) stream, or ``None`` (memory streams)."""
    inner: object = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    sock: SocketLike | None = getattr(inner, "socket", None)
    return sock


def peer_ip_of(stream: trio.abc.Stream) -> str:
    """The socket peer's IP (IPv4-mapped IPv6 shown as IPv4), or ``""`` if unknown."""
    sock = _socket_of(stream)
    if sock is None:
        return ""
    try:
        addr = sock.getpeername()
    except OSError:
        return ""
    if not isinstance(addr, tuple):
        return ""
    host = str(addr[0])
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


async def serve_resp_connection(
    stream: trio.abc.Stream,
    dispatcher: Dispatcher,
    limits: RespLimits,
    peer: str,
    stats: RespStats | None = None,
) -> None:
    """Serve one RESP connection until EOF, QUIT, a protocol fault or a timeout.

    Never raises for peer misbehaviour or transport errors; the stream is always
    closed on return.
    """
    stats = stats if stats is not None else dispatcher.stats
    stats.active += 1
    stats.total += 1
    conn = open_connection(dispatcher, _socket_of(stream), peer)
    try:
        if isinstance(stream, trio.SSLStream) and not await server_handshake(
            stream, limits.handshake_timeout
        ):
            stats.timeouts += 1
            return
        await _serve(stream, dispatcher, limits, conn, stats)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
        # The peer went away or spoke something that is not TLS: nothing to answer.
        pass
    finally:
        dispatcher.clients.close(conn)
        stats.active -= 1
        await close_stream(stream)


async def _serve(
    stream: trio.abc.Stream,
    dispatcher: Dispatcher,
    limits: RespLimits,
    conn: Connection,
    stats: RespStats,
) -> None:
    parser = RespParser(limits)
    run_inline = dispatcher.run_inline
    receive_some = stream.receive_some
    send_all = stream.send_all
    read_size = limits.read_size
    idle_timeout = limits.idle_timeout
    command_timeout = limits.command_timeout
    write_timeout = limits.write_timeout
    # The idle deadline is pushed back only once it is ``slack`` seconds stale, and is
    # set ``slack`` late, so the connection closes between idle_timeout and
    # idle_timeout + slack after its last command (never early) while a busy connection
    # moves its deadline about once a second instead of on every request.
    slack = min(1.0, idle_timeout / 100)
    current_time = trio.current_time
    command_deadline = 0.0
    # Until the connection has authenticated, the idle wait ends at the login deadline.
    login_deadline = current_time() + limits.login_timeout
    # When the idle deadline was last armed (-inf: another deadline is in force).
    idle_armed = -math.inf
    # One cancel scope for the connection's whole life; its deadline moves only when
    # the kind of wait changes or the idle deadline goes stale (see ``slack``).
    with trio.CancelScope() as scope:
        while True:
            if parser.has_partial:
                # 30 s to finish a started command, counted from its first byte.
                if command_deadline == 0.0:
                    command_deadline = current_time() + command_timeout
                if scope.deadline != command_deadline:
                    scope.deadline = command_deadline
                    idle_armed = -math.inf
            else:
                command_deadline = 0.0
                now = current_time()
                if now - idle_armed > slack:
                    deadline = now + idle_timeout + slack
                    if login_deadline < deadline:
                        if conn.principal is None:
                            deadline = login_deadline
                        else:
                            login_deadline = math.inf
                    scope.deadline = deadline
                    idle_armed = now
                    # CLIENT LIST's idle time, refreshed as seldom as the deadline.
                    conn.idle_since = time.monotonic()
            data = await receive_some(read_size)
            if not data:
                return  # EOF
            commands = parser.feed(data)
            replies: list[bytes] = []
            # Running the commands and writing every reply: the write timeout, armed
            # at the first await (a run of inline reads cannot time out).
            writing = False
            # Reads run inline: re-check the bound key once for this synchronous run.
            conn.checked = False
            i, pending = run_inline(conn, commands, 0, replies)
            if pending is not None:
                # A mutation: it awaits the store actors.
                writing = True
                scope.deadline = current_time() + write_timeout
                idle_armed = -math.inf
                await dispatcher.run_awaited(conn, commands, i, pending, replies)
            closing = end_of_read(conn, parser, replies, stats)
            if replies:
                if not writing:
                    scope.deadline = current_time() + write_timeout
                    idle_armed = -math.inf
                await send_all(replies[0] if len(replies) == 1 else b"".join(replies))
            if closing:
                return
    if scope.cancelled_caught:
        stats.timeouts += 1


def end_of_read(
    conn: Connection, parser: RespParser, replies: list[bytes], stats: RespStats
) -> bool:
    """Count a read's replies and add the framing fault's reply, if any (both loops).

    Returns True when the connection closes after sending them (QUIT or a fault).
    """
    stats.commands += len(replies)
    error = parser.error
    if error is not None and not conn.closing:
        stats.protocol_errors += 1
        replies.append(error.reply)
    return conn.closing or error is not None


def stdlib_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The non-blocking stdlib socket under a plain ``SocketStream`` (else ``None``)."""
    if type(stream) is not trio.SocketStream:
        return None
    sock = getattr(stream.socket, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


async def close_stream(stream: trio.abc.Stream) -> None:
    """Close without waiting on a stuck peer (TLS close_notify may block)."""
    with trio.move_on_after(1) as cs:
        cs.shield = True
        with contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError
        ):
            await stream.aclose()
    if cs.cancelled_caught:
        await trio.aclose_forcefully(stream)
