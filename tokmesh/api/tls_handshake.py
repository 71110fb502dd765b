"""The server side of a TLS handshake, shared by the HTTPS and RESP TLS listeners.

When OpenSSL refuses a handshake (a protocol version below the minimum, no shared cipher
suite, a missing client certificate) it writes a TLS alert that tells the client why.
``trio.SSLStream`` raises on the failure without sending what OpenSSL left in its outgoing
buffer, so the client saw only a closed connection ("unexpected EOF") and could not tell
a policy refusal from a network fault. :func:`server_handshake` sends that alert.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

import trio

#: how long the alert may take to leave; the connection is being dropped anyway
_ALERT_TIMEOUT = 1.0


async def server_handshake(stream: trio.SSLStream[Any], timeout: float) -> bool:
    """Complete the handshake on ``stream`` within ``timeout`` seconds: True when done,
    False on timeout. A refused handshake sends its alert, then raises
    ``trio.BrokenResourceError`` as ``do_handshake`` does."""
    with trio.move_on_after(timeout):
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            if isinstance(exc.__cause__, ssl.SSLError):
                await _send_pending_alert(stream)
            raise
        return True
    return False


async def _send_pending_alert(stream: trio.SSLStream[Any]) -> None:
    # trio keeps OpenSSL's outgoing bytes in a private MemoryBIO; without it (another trio
    # version) the client gets the plain close it got before.
    outgoing = getattr(stream, "_outgoing", None)
    if not isinstance(outgoing, ssl.MemoryBIO):
        return
    pending = outgoing.read()
    if not pending:
        return
    with (
        trio.move_on_after(_ALERT_TIMEOUT),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
    ):
        await stream.transport_stream.send_all(pending)
