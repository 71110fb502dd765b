"""The ``session.*`` settings every layer that handles sessions reads (durations in ms)."""

from __future__ import annotations

import attrs


@attrs.frozen
class SessionSettings:
    """The ``session.*`` settings, in milliseconds."""

    ttl_default_ms: int = 2 * 3600 * 1000
    ttl_max_ms: int = 720 * 3600 * 1000
    max_per_user: int = 50
    quota_policy: str = "refuse"
    touch_min_interval_ms: int = 0
