"""Periodic actors outlive transient failures: logged once per episode, counted, retried.

A periodic actor (the snapshot schedule, audit retention, the certificate watch, the
``last_used`` writer) does I/O on its ticks: it lists a directory, opens a file. While the
process is out of descriptors, or a disk misbehaves for a moment, that I/O raises
``OSError``; an exception out of an actor would end the server's nursery and with it the
process, for a condition that passes by itself. So a failed tick is logged (one WARN
when the failures start, one INFO when a tick works again: an
:class:`~tokmesh.telemetry.episodes.Episode`), counted in
``tokmesh_actor_errors_total{actor}``, and the actor tries again on its next tick.

The write-ahead log is deliberately not one of these: a failed WAL write stays
fail-stop (the node refuses writes until restarted), because retrying it could
acknowledge a write that is not durable.

Two ways in: an actor whose loop is ours wraps each tick with :class:`ActorErrors`
(``failed`` / ``succeeded``); an actor whose loop is not is started through
:func:`keep_running`, which starts it again after a transient failure.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from tokmesh.domain.errors import TokMeshError
from tokmesh.telemetry import metrics
from tokmesh.telemetry.episodes import Episode

log = logging.getLogger("tokmesh.actors")

#: Seconds before :func:`keep_running` starts a failed actor again.
RESTART_DELAY = 1.0
#: Seconds a restarted actor must run without failing for its episode to be over.
SETTLE_TIME = 10.0


def describe(exc: BaseException) -> str:
    """One line for a log: ``[Errno 24] Too many open files: '/path'``, or a TokMesh
    error's code and message followed by the OS error behind it, if any."""
    if isinstance(exc, TokMeshError):
        text = f"{exc.error.code} {exc.message}"
        cause = exc.__cause__
        return f"{text} ({cause})" if isinstance(cause, OSError) else text
    return str(exc) or type(exc).__name__


class ActorErrors:
    """The failing ticks of one periodic actor (see the module doc)."""

    def __init__(self, actor: str) -> None:
        self.actor = actor
        # Bound now, so the series exists at 0 for rate() alerts before any failure.
        self._counter = metrics.ACTOR_ERRORS.labels(actor=actor)
        self.episode = Episode(
            log,
            "actor_error",
            start=f"{actor} failed: {{detail}}; it retries on its next tick",
            end=f"{actor} works again",
            unit="failures",
        )

    @property
    def failing(self) -> bool:
        """True from a failure until the next success."""
        return self.episode.active

    def failed(self, exc: BaseException) -> None:
        """Count one failed tick and log it if it starts an episode."""
        self._counter.inc()
        self.episode.failed(describe(exc), actor=self.actor, error=type(exc).__name__)

    def succeeded(self) -> None:
        """A tick worked: a failure episode in progress ends."""
        self.episode.succeeded()


class _StartedOnce:
    """Passes the first ``started()`` on: a restarted actor calls it again."""

    def __init__(self, inner: trio.TaskStatus[None]) -> None:
        self._inner = inner
        self._done = False

    def started(self, value: None = None) -> None:
        if not self._done:
            self._done = True
            self._inner.started(value)


async def keep_running(
    actor: str,
    run: Callable[..., Awaitable[None]],
    *,
    restart_delay: float = RESTART_DELAY,
    settle: float = SETTLE_TIME,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``run(task_status=...)``; after an ``OSError`` out of it, start it again.

    For an actor whose own loop does not guard its ticks. The failure is counted and
    logged as :class:`ActorErrors` does; the episode ends once a restarted run has gone
    ``settle`` seconds without failing. Anything other than an ``OSError`` still ends
    the server, as a bug should.
    """
    errors = ActorErrors(actor)
    status = _StartedOnce(task_status)
    while True:
        try:
            async with trio.open_nursery() as nursery:
                if errors.failing:
                    nursery.start_soon(_settled, errors, settle)
                await run(task_status=status)
                nursery.cancel_scope.cancel()
            return
        except* OSError as group:
            errors.failed(_first(group))
        await trio.sleep(restart_delay)


async def _settled(errors: ActorErrors, settle: float) -> None:
    await trio.sleep(settle)
    errors.succeeded()


def _first(group: BaseExceptionGroup[OSError]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
