"""Per-key token buckets (02 §10) and the per-IP failed-authentication guard (02 §12.1).

Both are node-local, synchronous and driven by an injected millisecond clock value, so
they run inline on the request path (no ``await``) and are tested with a manual clock.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import Final

from tokmesh.domain.errors import E, TokMeshError

# 02 §12.1: internal constants in v1.
BRUTE_FORCE_THRESHOLD: Final = 10
BRUTE_FORCE_WINDOW_MS: Final = 60_000
BRUTE_FORCE_BLOCK_MS: Final = 300_000
_MAX_TRACKED_IPS: Final = 100_000
_MAX_IDLE_BUCKETS: Final = 4096


class _Bucket:
    """Token bucket state: capacity = refill per second = ``limit``."""

    __slots__ = ("last_ms", "limit", "tokens")

    def __init__(self, limit: int, now_ms: int) -> None:
        self.limit = limit
        self.tokens = float(limit)
        self.last_ms = now_ms

    def refill(self, now_ms: int) -> None:
        # A clock stepping back never adds or removes tokens.
        elapsed = now_ms - self.last_ms
        if elapsed > 0:
            self.tokens = min(float(self.limit), self.tokens + elapsed * self.limit / 1000.0)
            self.last_ms = now_ms


class RateLimiter:
    """One token bucket per key_id; a changed ``rate_limit`` rebuilds the bucket."""

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key_id: str, limit: int, now_ms: int, n: int = 1) -> int:
        """Consume ``n`` tokens (all or none); 0 on success, else ms until one token exists."""
        bucket = self._buckets.get(key_id)
        if bucket is None or bucket.limit != limit:
            if len(self._buckets) >= _MAX_IDLE_BUCKETS:
                self._drop_full(now_ms)
            bucket = _Bucket(limit, now_ms)
            self._buckets[key_id] = bucket
        else:
            # _Bucket.refill, inlined: this runs once per request.
            elapsed = now_ms - bucket.last_ms
            if elapsed > 0:
                tokens = bucket.tokens + elapsed * limit / 1000.0
                bucket.tokens = tokens if tokens < limit else float(limit)
                bucket.last_ms = now_ms
        if bucket.tokens >= n:
            bucket.tokens -= n
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) * 1000.0 / limit))

    def check(self, key_id: str, limit: int, now_ms: int) -> None:
        """Consume one token or raise 429 ``TM-SYS-4290`` with the rate headers of 02 §10."""
        wait_ms = self.take(key_id, limit, now_ms)
        if wait_ms:
            raise TokMeshError(
                E.SYS_RATE_LIMITED,
                headers={
                    "Retry-After": str(max(1, math.ceil(wait_ms / 1000))),
                    "X-RateLimit-Limit": str(limit),
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(math.ceil((now_ms + wait_ms) / 1000)),
                },
            )

    def forget(self, key_id: str) -> None:
        """Drop a key's bucket (equivalent to a new, full one)."""
        self._buckets.pop(key_id, None)

    def _drop_full(self, now_ms: int) -> None:
        # Buckets that have refilled completely are equivalent to new ones (02 §10).
        for key_id, bucket in list(self._buckets.items()):
            bucket.refill(now_ms)
            if bucket.tokens >= bucket.limit:
                del self._buckets[key_id]


class BruteForceGuard:
    """Sliding-window count of failed authentications per client IP (02 §12.1).

    ``threshold`` failures within ``window_ms`` block the IP for ``block_ms``. While
    blocked, failures are not counted; when the block ends the count starts afresh.
    """

    __slots__ = ("_blocked", "_failures", "block_ms", "threshold", "window_ms")

    def __init__(
        self,
        threshold: int = BRUTE_FORCE_THRESHOLD,
        window_ms: int = BRUTE_FORCE_WINDOW_MS,
        block_ms: int = BRUTE_FORCE_BLOCK_MS,
    ) -> None:
        self.threshold = threshold
        self.window_ms = window_ms
        self.block_ms = block_ms
        self._failures: OrderedDict[str, deque[int]] = OrderedDict()
        self._blocked: dict[str, int] = {}

    def blocked_for_ms(self, ip: str, now_ms: int) -> int:
        """Remaining block time for ``ip`` in ms (0 = not blocked)."""
        until = self._blocked.get(ip)
        if until is None:
            return 0
        if now_ms >= until:
            del self._blocked[ip]
            return 0
        return until - now_ms

    def record_failure(self, ip: str, now_ms: int) -> bool | None:
        """Count one failure.

        Returns ``None`` when the IP is already blocked (not counted), ``True`` when this
        failure starts a block, ``False`` otherwise.
        """
        if self.blocked_for_ms(ip, now_ms):
            return None
        window = self._failures.get(ip)
        if window is None:
            if len(self._failures) >= _MAX_TRACKED_IPS:
                self._failures.popitem(last=False)
            window = deque()
            self._failures[ip] = window
        else:
            self._failures.move_to_end(ip)
        horizon = now_ms - self.window_ms
        while window and window[0] <= horizon:
            window.popleft()
        window.append(now_ms)
        if len(window) < self.threshold:
            return False
        del self._failures[ip]
        if len(self._blocked) >= _MAX_TRACKED_IPS:
            self._blocked = {k: v for k, v in self._blocked.items() if v > now_ms}
        self._blocked[ip] = now_ms + self.block_ms
        return True

    def failures(self, ip: str, now_ms: int) -> int:
        """Failures of ``ip`` inside the current window (diagnostics, tests)."""
        window = self._failures.get(ip)
        if window is None:
            return 0
        return sum(1 for t in window if t > now_ms - self.window_ms)
