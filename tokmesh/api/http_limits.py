"""Limits and timeouts of the HTTP front, one frozen record per listener."""

from __future__ import annotations

import attrs

DEFAULT_MAX_BODY_SIZE = 100 * 1024 * 1024
"""``server.http.max_body_size`` default (05 §3): 100MB."""


@attrs.frozen(slots=True)
class HttpLimits:
    """What one HTTP connection may cost the server.

    Timeouts are seconds. ``header_timeout`` bounds the whole request head from its first
    byte (so a client trickling one byte per second cannot hold a connection open);
    ``body_timeout`` bounds a buffered body from the end of the head, and every single
    read of a streamed body; ``idle_timeout`` is the keep-alive wait for the first byte
    of the next request, while a fresh connection waits for its first byte no longer
    than ``header_timeout`` (an idle-connection flood must not hold descriptors for the
    keep-alive time); ``write_timeout`` bounds each send
    to a client that does not read; ``linger_timeout`` is how long a closing connection
    keeps draining input so that the client sees our last response instead of a reset.
    Deadlines are checked every ``timer_resolution`` seconds by one timer task for all
    connections, so each fires up to that much late.
    """

    max_header_bytes: int = 64 * 1024
    max_header_count: int = 100
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    idle_timeout: float = 75.0
    write_timeout: float = 30.0
    handshake_timeout: float = 10.0
    linger_timeout: float = 2.0
    read_size: int = 64 * 1024
    flush_threshold: int = 256 * 1024
    timer_resolution: float = 0.25
