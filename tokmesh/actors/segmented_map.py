"""A mapping kept as many small dicts, so that no single insert pays for a huge rehash.

A CPython dict grows by rebuilding its whole table when it fills up (and rebuilds it again
when deleted entries have used up its room, as sessions expiring and being created do).
For the session store's maps that rebuild ran on the event loop inside one create: on this
machine kind the insert that took the store past 699,050 sessions stopped the loop for
74 ms and past 1,398,101 for 189 ms (the maps grow in step, so they rebuilt in the same
call; ``bench/map_growth.py``), and every validation in flight waited that long. Redis
rehashes incrementally for the same reason.

Here the keys are spread over :data:`SEGMENTS` dicts by their hash, which CPython caches
in every ``str`` and ``bytes`` object, so picking the segment costs one ``&``. Each
rebuild now moves 1/64 of the entries (about 1 ms at a million sessions, 1/64 of the
stop), and the segments fill at slightly different moments, so the rebuilds are spread
over many loop iterations instead of stacking up in one. A read costs ~0.15 µs more than
a plain dict's; the compiled accelerator is given the dicts themselves
(:attr:`SegmentedMap.segments`).

Iteration goes segment by segment: the order is not the insertion order (no caller relies
on it; the sampling array keeps its own order).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from itertools import chain
from typing import TypeVar, overload

from tokmesh import accel

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")

#: Number of dicts (a power of two: the segment is ``hash(key) & (SEGMENTS - 1)``; the
#: compiled accelerator relies on that).
SEGMENTS = 64
#: ``hash(key) & MASK`` is the segment of ``key``.
MASK = SEGMENTS - 1

_MISSING = object()


class SegmentedMap(MutableMapping[K, V]):
    """A ``dict``-like map over :data:`SEGMENTS` dicts (see the module docstring)."""

    __slots__ = ("segments",)

    def __init__(self, items: Iterable[tuple[K, V]] = ()) -> None:
        #: The dicts; key ``k`` lives in ``segments[hash(k) & (SEGMENTS - 1)]``.
        self.segments: list[dict[K, V]] = [{} for _ in range(SEGMENTS)]
        if items:
            self.update(items)

    def __getitem__(self, key: K) -> V:
        return self.segments[hash(key) & MASK][key]

    def __setitem__(self, key: K, value: V) -> None:
        self.segments[hash(key) & MASK][key] = value

    def __delitem__(self, key: K) -> None:
        del self.segments[hash(key) & MASK][key]

    def __contains__(self, key: object) -> bool:
        return key in self.segments[hash(key) & MASK]

    def __len__(self) -> int:
        return sum(map(len, self.segments))

    def __iter__(self) -> Iterator[K]:
        return chain.from_iterable(self.segments)

    def __repr__(self) -> str:
        return f"SegmentedMap({len(self)} entries)"

    @overload
    def get(self, key: K, /) -> V | None: ...
    @overload
    def get(self, key: K, default: V | D, /) -> V | D: ...
    def get(self, key: K, default: object = None, /) -> object:
        """The value of ``key``, or ``default``."""
        return self.segments[hash(key) & MASK].get(key, default)

    @overload
    def pop(self, key: K, /) -> V: ...
    @overload
    def pop(self, key: K, default: V | D, /) -> V | D: ...
    def pop(self, key: K, default: object = _MISSING, /) -> object:
        """Remove ``key`` and return its value (``default``, or ``KeyError``, if absent)."""
        seg = self.segments[hash(key) & MASK]
        if default is _MISSING:
            return seg.pop(key)
        return seg.pop(key, default)

    def keys(self) -> Iterator[K]:  # type: ignore[override]
        """The keys, segment by segment (an iterator, not a live view)."""
        return chain.from_iterable(self.segments)

    def values(self) -> Iterator[V]:  # type: ignore[override]
        """The values, segment by segment (an iterator, not a live view)."""
        return chain.from_iterable([seg.values() for seg in self.segments])

    def items(self) -> Iterator[tuple[K, V]]:  # type: ignore[override]
        """The ``(key, value)`` pairs, segment by segment (an iterator, not a live view)."""
        return chain.from_iterable([seg.items() for seg in self.segments])

    def update(self, items: Iterable[tuple[K, V]] = (), /) -> None:  # type: ignore[override]
        """Insert every ``(key, value)`` pair (later pairs win, as in ``dict.update``)."""
        fill_segments(self.segments, items)

    def clear(self) -> None:
        """Remove every entry (and give the tables' memory back)."""
        self.segments = [{} for _ in range(SEGMENTS)]

    def reserve(self, count: int) -> None:
        """Make room for ``count`` entries in an empty map, so that filling it rebuilds no
        table (recovery knows the snapshot's size up front: loading a million sessions
        then costs two thirds of a growing dict's time). Without the accelerator, or on
        a map that is not empty, nothing happens.
        """
        if accel.presized_dicts is None or count <= 0 or any(self.segments):
            return
        # The segments fill unevenly (a few standard deviations of sqrt(each)).
        each = count // SEGMENTS
        self.segments = accel.presized_dicts(SEGMENTS, each + each // 16 + 64)


def _fill_python(segments: list[dict[K, V]], items: Iterable[tuple[K, V]]) -> None:
    for key, value in items:
        segments[hash(key) & MASK][key] = value


def fill_segments(segments: list[dict[K, V]], items: Iterable[tuple[K, V]]) -> None:
    """Insert ``items`` into the segment dicts (the bulk path of recovery).

    The compiled accelerator's loop when it is built (the snapshot of a million sessions
    goes through here twice), else the same loop in Python.
    """
    fill = accel.fill_segments
    if fill is not None:
        fill(segments, items)
    else:
        _fill_python(segments, items)
