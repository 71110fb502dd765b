"""Counting the wall-clock readings of a piece of code (tests of "one reading per request")."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tokmesh.domain.clock import Clock


def count_clock_reads(monkeypatch: pytest.MonkeyPatch, cls: type[Clock]) -> Callable[[], int]:
    """From now on, count the calls of ``cls.now_ms`` (every instance, until the test ends);
    returns a function that gives the count so far."""
    reads = 0
    real_now = cls.now_ms

    def counting_now(self: Clock) -> int:
        nonlocal reads
        reads += 1
        return real_now(self)

    monkeypatch.setattr(cls, "now_ms", counting_now)
    return lambda: reads
