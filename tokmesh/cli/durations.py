"""Go-style durations (``30s``, ``168h``, ``1h30m``, ``250ms``) and RFC 3339 times (06 §2).

Units are ``ms``, ``s``, ``m`` and ``h``; there is no ``d``. A bad value is a usage error
(exit 64) raised by the caller.
"""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def parse_duration_ms(text: str) -> int:
    """Milliseconds of a Go-style duration; ``ValueError`` if malformed or not > 0."""
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r} (use e.g. 30s, 1h30m, 168h)")
        total += float(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    ms = round(total)
    if ms <= 0:
        raise ValueError(f"duration must be greater than zero: {text!r}")
    return ms


def parse_rfc3339_ms(text: str) -> int:
    """Unix milliseconds of an RFC 3339 timestamp (``2025-01-02T03:04:05Z``); ``ValueError``."""
    import datetime as dt

    s = text.strip()
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|z|[+-]\d\d:\d\d)", s):
        raise ValueError(f"invalid RFC3339 time {text!r} (e.g. 2025-01-02T15:04:05Z)")
    value = dt.datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    return int(value.timestamp() * 1000)
