"""One-shot reply slot used by request/reply actor messages (DESIGN §1).

A caller creates a :class:`Reply`, puts it in a message, and awaits :meth:`Reply.wait`.
The actor resolves it exactly once with :meth:`set` or :meth:`fail`; resolving is
synchronous so it can happen inside a WAL-ack callback without an ``await``.
"""

from __future__ import annotations

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
