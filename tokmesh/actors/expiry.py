"""Expiry-ordered schedule for the TTL sweeper: a coarse timer wheel with lazy deletion.

Pure sampling cannot purge 99 % of expired sessions within 5 minutes at 1M sessions with
a low expired ratio, so the sweeper also keeps every session id in the bucket of
the second in which it expires. An entry is only a hint: when its bucket comes due the
sweeper re-reads the session and skips it if it was renewed, revoked or removed since.
Entries reference the existing id strings, so each costs one list slot (8 bytes).
"""

from __future__ import annotations

import heapq

BUCKET_MS = 1000


class ExpiryWheel:
    """Buckets of session ids keyed by the second after which they expire."""

    __slots__ = ("_buckets", "_heap", "entries")

    def __init__(self) -> None:
        self._buckets: dict[int, list[str]] = {}
        self._heap: list[int] = []
        self.entries = 0

    def add(self, sid: str, expires_at_ms: int) -> None:
        """Schedule ``sid`` to be looked at once ``expires_at_ms`` has passed."""
        # Bucket b holds ids expiring in ((b-1)*1000, b*1000]; due when now > b*1000.
        bucket = -(-expires_at_ms // BUCKET_MS)
        ids = self._buckets.get(bucket)
        if ids is None:
            self._buckets[bucket] = ids = []
            heapq.heappush(self._heap, bucket)
        ids.append(sid)
        self.entries += 1

    def bulk_buckets(self) -> dict[int, list[str]]:
        """The bucket map for a bulk load; call :meth:`bulk_done` afterwards."""
        return self._buckets

    def bulk_done(self, new_buckets: list[int], added: int) -> None:
        """Account for a bulk load into the buckets: ``added`` ids, in buckets that include
        the newly created ``new_buckets``. A load runs once per snapshot chunk, so this is
        proportional to the chunk, never to the whole wheel."""
        heap = self._heap
        for bucket in new_buckets:
            heapq.heappush(heap, bucket)
        self.entries += added

    def pop_due(self, now_ms: int, limit: int) -> list[str]:
        """Take up to ``limit`` ids whose bucket is entirely in the past."""
        out: list[str] = []
        heap = self._heap
        while heap and heap[0] * BUCKET_MS < now_ms and len(out) < limit:
            bucket = heap[0]
            ids = self._buckets[bucket]
            room = limit - len(out)
            if len(ids) <= room:
                out.extend(ids)
                heapq.heappop(heap)
                del self._buckets[bucket]
            else:
                out.extend(ids[-room:])
                del ids[-room:]
        self.entries -= len(out)
        return out

    def has_due(self, now_ms: int) -> bool:
        """Whether :meth:`pop_due` would return anything at ``now_ms``."""
        heap = self._heap
        return bool(heap) and heap[0] * BUCKET_MS < now_ms

    def __len__(self) -> int:
        return self.entries
