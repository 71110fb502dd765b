"""A bounded memory of recently seen keys that holds no reference to them.

The store remembers the ids and token digests of sessions the sweeper purged, so reads
keep answering "expired" rather than "unknown" for a while (see
:class:`~tokmesh.actors.state.StoreState`). Keeping the purged records' own ``str`` and
``bytes`` objects for that (as dict keys) pinned memory: each one kept alive the 1 MiB
allocator arena it was born in, among the records being freed. After 300,000 sessions
expired, a memory of the last 100,000 kept 95 of 137 arenas and the process gave back
6 MB of 156; without it, 122 MB (docs/performance.md). Copies do not help: they land in
the holes the freed records leave in those same arenas.

So the memory keeps 64-bit fingerprints (the key's ``hash()``) in flat
``array('Q')`` open-addressing tables: two generations of fixed size, the older one
dropped whole when the newer one is full, so nothing is ever deleted from a table.
A table is one block outside the small-object arenas, returned to the system when it is
dropped. Two different keys share a fingerprint with a probability of about 2**-64 per
pair; the cost of that is one "expired" answer where "unknown" was due.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable

_MASK = (1 << 64) - 1


class RecentKeys:
    """Remembers at least the last ``size`` keys added (at most ``2 * size``)."""

    __slots__ = ("_count", "_current", "_mask", "_older", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        # Each table stays at most half full, so a probe sequence is short.
        capacity = 1 << max(4, (2 * size - 1).bit_length())
        self._mask = capacity - 1
        # Allocated on the first add: a node that never purges pays nothing for it.
        self._current: array[int] | None = None
        self._older: array[int] | None = None
        self._count = 0

    def _empty(self) -> array[int]:
        return array("Q", [0]) * (self._mask + 1)

    def reserve(self) -> None:
        """Allocate the current table now if it is not yet (its first use costs a 2 MiB
        zeroed block, about a millisecond; the sweeper takes that in its own step before
        it hands the first purge to the shards, rather than in a commit batch's step)."""
        if self._current is None:
            self._current = self._empty()

    def add(self, key: Hashable) -> None:
        """Remember ``key``."""
        fp = hash(key) & _MASK or 1  # 0 marks an empty slot
        table = self._current
        if table is None:
            table = self._current = self._empty()
        mask = self._mask
        i = fp & mask
        while True:
            slot = table[i]
            if slot == 0:
                break
            if slot == fp:
                return
            i = (i + 1) & mask
        table[i] = fp
        self._count += 1
        if self._count >= self._size:
            self._older = table
            self._current = self._empty()
            self._count = 0

    def __contains__(self, key: object) -> bool:
        try:
            fp = hash(key) & _MASK or 1
        except TypeError:
            return False
        mask = self._mask
        for table in (self._current, self._older):
            if table is None:
                continue
            i = fp & mask
            while True:
                slot = table[i]
                if slot == fp:
                    return True
                if slot == 0:
                    break
                i = (i + 1) & mask
        return False

    def clear(self) -> None:
        """Forget everything."""
        self._current = None
        self._older = None
        self._count = 0
