"""A compact multi-map from a key (user id, device id) to the session ids filed under it.

Why not ``dict[str, set[str]]``: a CPython set costs at least 216 bytes even for one
element and ~730 bytes once it holds five, while real identity providers see one to three
sessions per user. At a million sessions the per-user sets were ~140 B of each session's
~760 B. Here the value stored for a key is, by the number of ids it holds:

- 1: the id string itself (no container at all; the id is already in the primary map);
- 2 .. :data:`SMALL_MAX`: a tuple of the ids (56 + 8 per id bytes), rebuilt on every add
  and discard, which at that size costs about as much as a set insertion;
- more: a set, so that a key with thousands of ids keeps O(1) add and discard.

A key whose last id is discarded is deleted. The representation depends only on the
number of ids, never on the history (a set shrinking to :data:`SMALL_MAX` becomes a tuple
again). Tuples keep insertion order, which no caller relies on: readers treat the ids as
an unordered collection.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator

from tokmesh import accel
from tokmesh.actors.segmented_map import MASK, SegmentedMap

#: Most ids kept in a tuple; a key holding more keeps a set.
SMALL_MAX = 8

_EMPTY: tuple[str, ...] = ()

_Ids = str | tuple[str, ...] | set[str]


class IdIndex:
    """Key -> ids multi-map with a compact value per key (see the module docstring)."""

    __slots__ = ("_count", "_map")

    def __init__(self) -> None:
        # Segmented like the store's primary map: a user index of a million keys would
        # otherwise stop the loop for its table's rebuilds (see segmented_map).
        self._map: SegmentedMap[str, _Ids] = SegmentedMap()
        self._count = 0

    # -- mutation ----------------------------------------------------------------------

    def add(self, key: str, sid: str) -> None:
        """File ``sid`` under ``key``; nothing happens if it is already there."""
        m = self._map.segments[hash(key) & MASK]
        cur = m.get(key)
        if cur is None:
            m[key] = sid
        elif isinstance(cur, str):
            if cur == sid:
                return
            m[key] = (cur, sid)
        elif isinstance(cur, tuple):
            if sid in cur:
                return
            m[key] = (*cur, sid) if len(cur) < SMALL_MAX else {*cur, sid}
        else:
            if sid in cur:
                return
            cur.add(sid)
        self._count += 1

    def discard(self, key: str, sid: str) -> None:
        """Remove ``sid`` from ``key``'s ids if it is there; drop the key when it empties."""
        m = self._map.segments[hash(key) & MASK]
        cur = m.get(key)
        if cur is None:
            return
        if isinstance(cur, str):
            if cur != sid:
                return
            del m[key]
        elif isinstance(cur, tuple):
            if sid not in cur:
                return
            rest = tuple([x for x in cur if x != sid])
            m[key] = rest[0] if len(rest) == 1 else rest
        else:
            if sid not in cur:
                return
            cur.discard(sid)
            if len(cur) <= SMALL_MAX:
                m[key] = tuple(cur)
        self._count -= 1

    def load(self, keys: Iterable[str], ids: Iterable[str]) -> None:
        """File each of ``ids`` under the key at the same position of ``keys`` (recovery:
        once per snapshot chunk; both must have the same length).

        Same result as :meth:`add` for each pair, in one loop with the lookups bound
        locally: it runs a million times during a cold start (the compiled
        accelerator's ``index_load`` when it is built, the same loop in C).
        """
        if accel.index_load is not None:
            self._count += accel.index_load(self._map.segments, keys, ids, SMALL_MAX)
            return
        segments = self._map.segments
        mask = MASK
        hash_ = hash
        added = 0
        for key, sid in zip(keys, ids, strict=True):
            m = segments[hash_(key) & mask]
            cur = m.get(key)
            if cur is None:
                m[key] = sid
            elif isinstance(cur, str):
                if cur == sid:
                    continue
                m[key] = (cur, sid)
            elif isinstance(cur, tuple):
                if sid in cur:
                    continue
                m[key] = (*cur, sid) if len(cur) < SMALL_MAX else {*cur, sid}
            else:
                if sid in cur:
                    continue
                cur.add(sid)
            added += 1
        self._count += added

    def clear(self) -> None:
        """Drop every key."""
        self._map.clear()
        self._count = 0

    # -- reads -------------------------------------------------------------------------

    def get(self, key: str) -> Collection[str]:
        """The ids filed under ``key`` (an empty collection for an unknown key).

        Read-only: for a large key this is the index's own set, so iterate it before the
        index changes (readers run synchronously on the event loop) or copy it.
        """
        cur = self._map.segments[hash(key) & MASK].get(key)
        if cur is None:
            return _EMPTY
        if isinstance(cur, str):
            return (cur,)
        return cur

    def count(self) -> int:
        """Number of ids under all keys together (O(1))."""
        return self._count

    def __iter__(self) -> Iterator[str]:
        """The keys holding at least one id."""
        return iter(self._map)

    def items(self) -> Iterator[tuple[str, Collection[str]]]:
        """``(key, ids)`` for every key, the ids as :meth:`get` returns them."""
        for key, cur in self._map.items():
            yield key, ((cur,) if isinstance(cur, str) else cur)

    def as_dict(self) -> dict[str, frozenset[str]]:
        """The contents as plain sets (tests and diagnostics; O(number of ids))."""
        return {key: frozenset(ids) for key, ids in self.items()}

    def __len__(self) -> int:
        """Number of keys."""
        return len(self._map)

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def __eq__(self, other: object) -> bool:
        """Same keys with the same ids (tuples compare regardless of their order)."""
        if not isinstance(other, IdIndex):
            return NotImplemented
        return self._count == other._count and self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"IdIndex({len(self._map)} keys, {self._count} ids)"
