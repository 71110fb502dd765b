"""One-shot reply slot used by request/reply actor messages (DESIGN §1).

A caller creates a :class:`Reply`, puts it in a message, and awaits :meth:`Reply.wait`.
The actor resolves it exactly once with :meth:`set` or :meth:`fail`; resolving is
synchronous so it can happen inside a WAL-ack callback without an ``await``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Reply(Generic[T]):
    """A single-use future on top of :class:`trio.Event`."""

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        """True once resolved."""
        return self._event.is_set()

    def set(self, value: T) -> None:
        """Resolve with a value (ignored if already resolved)."""
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def fail(self, error: BaseException) -> None:
        """Resolve with an exception that :meth:`wait` re-raises."""
        if not self._event.is_set():
            self._error = error
            self._event.set()

    async def wait(self) -> T:
        """Wait for the resolution; re-raise the actor's error if it failed."""
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class Callback(Reply[T]):
    """A reply that calls a function instead of waking a task.

    For callers that cannot await (the HTTP and RESP multiplexers answering a mutation
    when its group commit lands): ``then(value)`` or ``failed(error)`` runs exactly once,
    synchronously, where the actor resolves the reply (usually inside the WAL writer's
    commit callbacks). No :class:`trio.Event` is made, and :meth:`wait` is not for it.
    """

    __slots__ = ("_failed", "_resolved", "_then")

    def __init__(self, then: Callable[[T], None], failed: Callable[[BaseException], None]) -> None:
        self._then = then
        self._failed = failed
        self._resolved = False

    @property
    def done(self) -> bool:
        """True once resolved."""
        return self._resolved

    def set(self, value: T) -> None:
        """Resolve with a value: call ``then`` (ignored if already resolved)."""
        if not self._resolved:
            self._resolved = True
            self._then(value)

    def fail(self, error: BaseException) -> None:
        """Resolve with an error: call ``failed`` (ignored if already resolved)."""
        if not self._resolved:
            self._resolved = True
            self._failed(error)

    async def wait(self) -> T:  # pragma: no cover - a programming error
        """Not supported: a callback reply has no waiter."""
        raise RuntimeError("a Callback reply calls back; nothing waits for it")
