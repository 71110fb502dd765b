"""Wall-clock source in Unix milliseconds, injectable so tests can step time.

Everything that compares with an absolute time (session expiry, API-key validity, audit
timestamps) reads the wall clock through one :class:`Clock` object that the composition
root passes down. Durations and timeouts (the sweeper's tick, read deadlines, the
snapshot interval) use Trio's monotonic clock instead, so a wall clock that jumps moves
expiries and nothing else.
"""

from __future__ import annotations

import time


class Clock:
    """The real wall clock. Every operation reads it once (01 §2 "single now_ms")."""

    __slots__ = ()

    def now_ms(self) -> int:
        """Current Unix time in milliseconds."""
        return time.time_ns() // 1_000_000


class ManualClock(Clock):
    """A clock that only moves when told to (tests, simulations)."""

    __slots__ = ("_now",)

    def __init__(self, start_ms: int | None = None) -> None:
        self._now = time.time_ns() // 1_000_000 if start_ms is None else start_ms

    def now_ms(self) -> int:
        """The current manual time."""
        return self._now

    def set(self, ms: int) -> None:
        """Jump to ``ms`` (may go backwards, to test monotonic guards)."""
        self._now = ms

    def advance(self, ms: int) -> None:
        """Move forward (or backward with a negative value) by ``ms``."""
        self._now += ms


class OffsetClock(Clock):
    """The system wall clock shifted by an offset that may change while it is in use
    (fault tests of a real server process: :mod:`tokmesh.clock_hook`)."""

    __slots__ = ("offset_ms",)

    def __init__(self, offset_ms: int = 0) -> None:
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        """System time plus the current offset, in Unix milliseconds."""
        return time.time_ns() // 1_000_000 + self.offset_ms


SYSTEM_CLOCK = Clock()
