"""A run of the same failure logged as one episode: a WARN when it starts, an INFO when it ends.

Why: some conditions make one operation fail many times a second for as long as they
last. Out of file descriptors, every accept loop retries every 100 ms; a periodic actor
fails on every tick. A line per failure buries the rest of the log and costs I/O at the
worst moment, so an :class:`Episode` says once that the failures began (with the first
error) and once that they ended (with how many there were and for how long).

Where successes and failures interleave while the condition lasts (several accept loops
share one episode; a descriptor freed for an instant lets one accept through), a success
ends the episode only once ``settle`` seconds have passed without a failure, and
:meth:`Episode.expire` ends a settled episode without waiting for a success (a timer
calls it). A failure after such a quiet gap starts a new episode.

A condition that comes and goes would still make two lines per flap, so the WARN is also
rate-limited: an episode that begins less than ``quiet`` seconds after the last WARN is
counted but not logged (neither its start nor its end), and the next WARN says how many
episodes and failures went unlogged. An unlogged episode that is still going once
``quiet`` seconds have passed gets its WARN then. At most two lines per ``quiet`` seconds,
whatever the failure rate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

#: Seconds between two WARN lines of the same episode kind.
DEFAULT_QUIET = 60.0


class Episode:
    """Logs a run of failures of one kind (see the module doc).

    Call :meth:`failed` on every failure and :meth:`succeeded` on every success; the
    second costs one attribute test while nothing is failing, so it may sit on a hot path.
    """

    __slots__ = (
        "_clock",
        "_end",
        "_event",
        "_extra",
        "_last_failure",
        "_last_warn",
        "_level",
        "_log",
        "_quiet",
        "_reported",
        "_settle",
        "_start",
        "_started_at",
        "_unit",
        "_unlogged_episodes",
        "_unlogged_failures",
        "active",
        "count",
    )

    def __init__(
        self,
        logger: logging.Logger,
        event: str,
        *,
        start: str,
        end: str,
        unit: str = "failures",
        settle: float = 0.0,
        quiet: float = DEFAULT_QUIET,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
    ) -> None:
        """``start`` is the WARN text (``{detail}`` is replaced by :meth:`failed`'s
        argument); ``end`` begins the INFO text, which goes on ``after N <unit> in X s``.
        ``level`` is the start line's level, for failures that lose data (ERROR)."""
        self._level = level
        self._settle = settle
        self._last_failure = 0.0
        self._log = logger
        self._event = event
        self._start = start
        self._end = end
        self._unit = unit
        self._quiet = quiet
        self._clock = clock
        self._last_warn = -float("inf")
        self._started_at = 0.0
        self._reported = False
        self._unlogged_episodes = 0
        self._unlogged_failures = 0
        self._extra: dict[str, Any] = {}
        #: True between the first failure of an episode and the next success.
        self.active = False
        #: Failures of the current (or last) episode.
        self.count = 0

    def failed(self, detail: str, **extra: Any) -> None:
        """One more failure; the first of an episode may log the WARN (rate-limited)."""
        now = self._clock()
        if self.active and now - self._last_failure > self._settle > 0:
            self._end_episode(self._last_failure)  # a gap: that one was over
        self._last_failure = now
        if not self.active:
            self.active = True
            self._started_at = now
            self.count = 0
            self._extra = extra
        self.count += 1
        if not self._reported and now - self._last_warn >= self._quiet:
            self._reported = True
            self._last_warn = now
            fields: dict[str, Any] = {"event": self._event, **self._extra, "detail": detail}
            message = self._start.format(detail=detail)
            if self._unlogged_episodes:
                message += (
                    f" ({self._unlogged_episodes} shorter episodes with "
                    f"{self._unlogged_failures} {self._unit} since the last report were not "
                    "logged)"
                )
                fields["unlogged_episodes"] = self._unlogged_episodes
                fields["unlogged_" + self._unit] = self._unlogged_failures
                self._unlogged_episodes = 0
                self._unlogged_failures = 0
            self._log.log(self._level, message, extra=fields)

    def succeeded(self) -> None:
        """The operation worked: an episode in progress ends (its INFO, if its WARN was
        logged), once it has settled."""
        if self.active:
            self.expire()

    def expire(self) -> None:
        """End the episode in progress if no failure came for ``settle`` seconds."""
        now = self._clock()
        if self.active and now - self._last_failure >= self._settle:
            # With a settle time the failures repeat while the condition lasts, so the
            # last one marks its end; without, the success does.
            self._end_episode(self._last_failure if self._settle else now)

    def _end_episode(self, ended_at: float) -> None:
        self.active = False
        if not self._reported:
            self._unlogged_episodes += 1
            self._unlogged_failures += self.count
            return
        self._reported = False
        seconds = round(ended_at - self._started_at, 1)
        self._log.info(
            f"{self._end} after {self.count} {self._unit} in {seconds} s",
            extra={
                "event": self._event + "_ended",
                **self._extra,
                self._unit: self.count,
                "seconds": seconds,
            },
        )
