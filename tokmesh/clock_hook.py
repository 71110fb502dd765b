"""Test hook: a real server process whose wall clock a fault test moves from outside.

When the environment variable ``TOKMESH_TEST_WALL_OFFSET_FILE`` names a file, the server
reads the wall clock through an :class:`~tokmesh.domain.clock.OffsetClock` whose offset
is the file's content: an integer number of milliseconds, negative to go back. A daemon
thread re-reads the file every :data:`POLL_SECONDS`. Session expiry and everything else
that compares with an absolute time then follows the shifted wall time, while timeouts
keep following the monotonic clock; the clock-jump fault tests check exactly that.

This is not a configuration setting and is not meant for operators: it exists for the
fault tests only, and the server logs a WARN at start when it is set. Without the
variable the server reads the system clock directly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from tokmesh.domain.clock import SYSTEM_CLOCK, Clock, OffsetClock

ENV_VAR = "TOKMESH_TEST_WALL_OFFSET_FILE"
POLL_SECONDS = 0.02

log = logging.getLogger("tokmesh.server")


def wall_clock(environ: Mapping[str, str]) -> Clock:
    """The clock the server reads wall time from: the system clock, or the test hook's."""
    path = environ.get(ENV_VAR)
    if not path:
        return SYSTEM_CLOCK
    offset_file = Path(path)
    clock = OffsetClock(_read_offset(offset_file, 0))
    log.warning(
        "test hook %s is set: the wall clock is shifted by the offset in %s (tests only)",
        ENV_VAR,
        offset_file,
    )
    threading.Thread(
        target=_follow, args=(clock, offset_file), name="tokmesh-test-clock", daemon=True
    ).start()
    return clock


def _read_offset(path: Path, current: int) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):  # absent or half-written: keep the offset we have
        return current


def _follow(clock: OffsetClock, path: Path) -> None:
    while True:
        time.sleep(POLL_SECONDS)
        clock.offset_ms = _read_offset(path, clock.offset_ms)
