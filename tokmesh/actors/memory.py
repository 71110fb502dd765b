"""Giving freed heap memory back to the system after large purges (glibc ``malloc_trim``).

CPython keeps small objects (up to 512 bytes: session records, ids, token digests) in
1 MiB arenas of its own and unmaps an arena as soon as nothing in it is alive. Larger
blocks (dict and list tables, long strings, I/O buffers) come from the C library's
``malloc``; glibc keeps the ones freed for reuse and gives back to the system only what
lies at the top of its heap. So after a mass expiry part of the high-water mark stays
resident although nothing uses it. ``malloc_trim(0)`` hands every free page of the heap
back (``MADV_DONTNEED``); the pages come back, zeroed, when the heap grows again.

The call walks the whole heap while it holds the allocator's lock (0.7-5 ms after
300,000 sessions were purged here), so it runs in a worker thread (ctypes releases the
GIL), only after :attr:`MemoryReturn.min_freed` sessions were purged since the last
time, and at most once per :attr:`MemoryReturn.min_interval`: a few milliseconds of one
thread now and then, never on a request's path. Where the C library has no
``malloc_trim`` (musl, macOS) nothing is done: CPython's own arenas are returned anyway.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

import trio

from tokmesh.telemetry.metrics import read_rss_bytes

log = logging.getLogger("tokmesh.memory")

Trim = Callable[[int], int]


def _find_malloc_trim() -> Trim | None:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


MALLOC_TRIM: Trim | None = _find_malloc_trim()


class MemoryReturn:
    """Rate-limited ``malloc_trim(0)`` after large purges (see the module doc)."""

    def __init__(
        self,
        min_freed: int = 50_000,
        min_interval: float = 60.0,
        trim: Trim | None = MALLOC_TRIM,
    ) -> None:
        #: sessions purged since the last return before another one is worth it
        self.min_freed = min_freed
        #: seconds (monotonic) between two returns at least
        self.min_interval = min_interval
        self._trim = trim
        self._freed = 0
        self._last: float | None = None
        #: how many times memory was handed back (tests, status)
        self.returns = 0

    def note_freed(self, sessions: int) -> None:
        """Count purged sessions towards the next return."""
        self._freed += sessions

    async def maybe_return(self) -> bool:
        """Hand free heap pages back if enough was purged and the last time is long
        enough ago; returns whether it did."""
        trim = self._trim
        if trim is None or self._freed < self.min_freed:
            return False
        now = trio.current_time()
        if self._last is not None and now - self._last < self.min_interval:
            return False
        self._last = now
        freed = self._freed
        self._freed = 0
        before = read_rss_bytes()
        await trio.to_thread.run_sync(trim, 0)
        self.returns += 1
        after = read_rss_bytes()
        log.info(
            "freed memory returned to the system",
            extra={
                "sessions_purged": freed,
                "rss_before_mb": round(before / 2**20, 1),
                "rss_after_mb": round(after / 2**20, 1),
                "duration_ms": round((trio.current_time() - now) * 1000, 1),
            },
        )
        return True
