"""Per-key token bucket (02 §10) and failed-auth IP guard (02 §12.1), unit level."""

from __future__ import annotations

import pytest

from tokmesh.domain.errors import TokMeshError
from tokmesh.services.auth_ratelimit import BruteForceGuard, RateLimiter

NOW = 1_700_000_000_000


def test_bucket_burst_then_429_with_headers() -> None:
    rl = RateLimiter()
    for _ in range(10):
        rl.check("k", 10, NOW)
    with pytest.raises(TokMeshError) as exc:
        rl.check("k", 10, NOW)
    err = exc.value
    assert err.code == "TM-SYS-4290" and err.http_status == 429
    assert err.headers is not None
    assert int(err.headers["Retry-After"]) >= 1
    assert err.headers["X-RateLimit-Limit"] == "10"
    assert err.headers["X-RateLimit-Remaining"] == "0"
    # Next token after 100 ms -> Reset is the Unix second containing NOW+100ms, rounded up.
    assert err.headers["X-RateLimit-Reset"] == str(-(-(NOW + 100) // 1000))


def test_refill_rate_and_cap() -> None:
    rl = RateLimiter()
    for _ in range(10):
        rl.check("k", 10, NOW)
    assert rl.take("k", 10, NOW + 50) == 50  # half a token: 50 ms to go
    assert rl.take("k", 10, NOW + 100) == 0
    # A long idle period refills only up to the burst size.
    t = NOW + 60_000
    passed = sum(1 for _ in range(20) if rl.take("k", 10, t) == 0)
    assert passed == 10


def test_buckets_are_per_key_and_rebuilt_on_limit_change() -> None:
    rl = RateLimiter()
    rl.check("a", 1, NOW)
    rl.check("b", 1, NOW)
    with pytest.raises(TokMeshError):
        rl.check("a", 1, NOW)
    rl.check("a", 5, NOW)  # new limit -> new, full bucket
    assert rl.take("a", 5, NOW) == 0


def test_clock_step_back_adds_nothing() -> None:
    rl = RateLimiter()
    rl.check("k", 1, NOW)
    assert rl.take("k", 1, NOW - 10_000) > 0


def test_guard_blocks_after_threshold_within_window() -> None:
    g = BruteForceGuard()
    for i in range(9):
        assert g.record_failure("1.2.3.4", NOW + i) is False
    assert g.blocked_for_ms("1.2.3.4", NOW + 9) == 0
    assert g.record_failure("1.2.3.4", NOW + 9) is True
    assert g.blocked_for_ms("1.2.3.4", NOW + 9) == 300_000
    assert g.record_failure("1.2.3.4", NOW + 10) is None  # inside a block: not counted
    assert g.blocked_for_ms("1.2.3.5", NOW + 10) == 0
    assert g.blocked_for_ms("1.2.3.4", NOW + 9 + 300_000) == 0
    assert g.failures("1.2.3.4", NOW + 9 + 300_000) == 0


def test_guard_window_slides() -> None:
    g = BruteForceGuard()
    for i in range(9):
        g.record_failure("ip", NOW + i * 1000)
    # The first failure leaves the 60 s window before the 10th arrives.
    assert g.record_failure("ip", NOW + 60_000) is False
    assert g.record_failure("ip", NOW + 60_001) is True
