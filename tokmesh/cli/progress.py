"""Spinner and progress bar on stderr (06 §7.3).

- Spinner: ``⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏`` redrawn every 100 ms, ending with ``✓ msg`` or ``✗ msg``.
- Progress bar: ``\\r<Title> [████░░…] NN% (<cur>/<total>)`` with 40 cells.

Both are shown only when stderr is a terminal and the output is table/wide without
``-q``; otherwise they print nothing, and the command prints its result on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokmesh.cli.output import Printer

FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
FRAME_S = 0.1
CELLS = 40
#: Bar redraws are throttled: one per 100 ms (and always the final 100 %).
REDRAW_S = 0.1
_CLEAR = "\r\033[K"


def stderr_is_tty() -> bool:
    """True when standard error is a terminal."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def animated(printer: Printer) -> bool:
    """True when spinners and bars may be drawn: table/wide, not ``-q``, stderr a TTY."""
    return printer.human and stderr_is_tty()


def bar_line(title: str, cur: int, total: int) -> str:
    """One progress-bar line (without the leading ``\\r``); sizes in formatBytes form."""
    from tokmesh.cli.output import format_bytes

    frac = 1.0 if total <= 0 else min(1.0, max(0.0, cur / total))
    filled = int(frac * CELLS)
    bar = "█" * filled + "░" * (CELLS - filled)
    return f"{title} [{bar}] {int(frac * 100)}% ({format_bytes(cur)}/{format_bytes(total)})"


class ProgressBar:
    """A byte-count progress bar; :meth:`update` is cheap (redraws are throttled)."""

    def __init__(self, title: str, total: int, *, enabled: bool, start: int = 0) -> None:
        self.title = title
        self.total = total
        self.cur = start
        self.enabled = enabled
        self._last = 0.0

    def update(self, n: int) -> None:
        """Count ``n`` more bytes."""
        self.cur += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= REDRAW_S or self.cur >= self.total:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        sys.stderr.write("\r" + bar_line(self.title, self.cur, self.total))
        sys.stderr.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()


class Spinner:
    """An animated spinner on stderr, run by an asyncio task while the work awaits.

    ``async with Spinner(text, enabled=…) as sp:`` … ``sp.text = "…"`` updates the message;
    :meth:`succeed` / :meth:`fail` end it with ``✓``/``✗``. Leaving the block without
    either (an exception) erases the spinner line, so an error display starts clean.
    """

    def __init__(self, text: str, *, enabled: bool) -> None:
        self.text = text
        self.enabled = enabled
        self._task: asyncio.Task[None] | None = None
        self._ended = False

    async def __aenter__(self) -> Spinner:
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._spin())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._stop()
        if self.enabled and not self._ended:
            sys.stderr.write(_CLEAR)
            sys.stderr.flush()

    async def _spin(self) -> None:
        i = 0
        while True:
            sys.stderr.write(f"{_CLEAR}{FRAMES[i % len(FRAMES)]} {self.text}")
            sys.stderr.flush()
            i += 1
            await asyncio.sleep(FRAME_S)

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def succeed(self, message: str) -> bool:
        """End with ``✓ message``; False (nothing drawn) when the spinner is disabled."""
        return await self._end("✓", message)

    async def fail(self, message: str) -> bool:
        """End with ``✗ message``; False (nothing drawn) when the spinner is disabled."""
        return await self._end("✗", message)

    async def _end(self, mark: str, message: str) -> bool:
        await self._stop()
        if not self.enabled or self._ended:
            return False
        self._ended = True
        sys.stderr.write(f"{_CLEAR}{mark} {message}\n")
        sys.stderr.flush()
        return True
