"""Framing limits and timeouts of the RESP listener (03 §5.1)."""

from __future__ import annotations

import math

import attrs


@attrs.frozen(slots=True)
class RespLimits:
    """Numbers that bound one RESP connection.

    The first three are the contract of 03 §5.1 (exceeding one answers
    ``-ERR protocol limit exceeded`` and closes). ``max_command_bytes`` is our own guard:
    1,024 elements of 512 KiB would let one command hold 512 MiB, and no TokMesh command
    has a use for more than a few hundred KiB, so no command may be longer than this,
    whether it is still arriving or already complete (same reply and close; complete
    ones too, so the outcome does not depend on how the stream was cut into reads).
    """

    #: Elements of one multibulk command (``*N``).
    max_elements: int = 1024
    #: Bytes of one bulk string (``$L``) or simple-string argument.
    max_bulk: int = 512 * 1024
    #: Bytes of one inline command line, excluding the line terminator.
    max_inline: int = 4 * 1024
    #: Bytes of one command, unfinished or complete.
    max_command_bytes: int = 16 * 1024 * 1024
    #: Seconds a connection may stay silent between commands.
    idle_timeout: float = 300.0
    #: Seconds after opening by which a connection must have authenticated, or it is
    #: closed (once authenticated, only ``idle_timeout`` applies, as in Redis). The
    #: server sets it from ``server.redis.login_timeout``; unlimited here.
    login_timeout: float = math.inf
    #: Seconds allowed to finish receiving a command once its first byte arrived.
    command_timeout: float = 30.0
    #: Seconds allowed for one reply write (one ``send_all``).
    write_timeout: float = 30.0
    #: Seconds allowed for a TLS handshake.
    handshake_timeout: float = 30.0
    #: ``receive_some`` size: every command parsed from one read is answered in one write.
    read_size: int = 64 * 1024
