"""Identifiers: monotonic ULIDs and the public ``tmss-`` / ``tmak-`` / ``tmnd-`` IDs (01 §1).

ULIDs are 48-bit Unix-ms time + 80 bits from the OS CSPRNG, encoded in lowercase Crockford
Base32 (26 chars). Within one millisecond the random part is incremented so that IDs made
by this process are strictly increasing (01 §1, D24).
"""

from __future__ import annotations

import os
import re
import threading
import time

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_DECODE = {c: i for i, c in enumerate(CROCKFORD)}
_RAND_BITS = 80
_RAND_MAX = (1 << _RAND_BITS) - 1

SESSION_PREFIX = "tmss-"
KEY_PREFIX = "tmak-"
NODE_PREFIX = "tmnd-"

_ULID_BODY = r"[0-7][0-9a-hjkmnp-tv-z]{25}"
SESSION_ID_RE = re.compile(rf"tmss-{_ULID_BODY}")
KEY_ID_RE = re.compile(rf"tmak-{_ULID_BODY}")


def encode_ulid(value: int) -> str:
    """Encode a 128-bit integer as 26 lowercase Crockford Base32 characters."""
    chars = [""] * 26
    for i in range(25, -1, -1):
        chars[i] = CROCKFORD[value & 31]
        value >>= 5
    return "".join(chars)


def decode_ulid(body: str) -> int:
    """Decode 26 Crockford characters to the 128-bit integer; ``ValueError`` if invalid."""
    if len(body) != 26:
        raise ValueError("ULID body must be 26 characters")
    value = 0
    for ch in body.lower():
        try:
            value = (value << 5) | _DECODE[ch]
        except KeyError:
            raise ValueError(f"invalid Crockford character {ch!r}") from None
    if value >> 128:
        raise ValueError("ULID overflows 128 bits")
    return value


def ulid_time_ms(body: str) -> int:
    """The millisecond timestamp embedded in a ULID body."""
    return decode_ulid(body) >> _RAND_BITS


class UlidGenerator:
    """Process-wide monotonic ULID source (thread-safe; the lock is uncontended in Trio)."""

    __slots__ = ("_last_ms", "_last_rand", "_lock")

    def __init__(self) -> None:
        self._last_ms = -1
        self._last_rand = 0
        self._lock = threading.Lock()

    def new(self) -> str:
        """Return a new ULID body, strictly greater than every earlier one of this process."""
        with self._lock:
            now = time.time_ns() // 1_000_000
            if now <= self._last_ms:
                # Same millisecond (or the wall clock stepped back): keep the last
                # timestamp and increment the random part, so order never breaks.
                if self._last_rand >= _RAND_MAX:
                    while now <= self._last_ms:
                        time.sleep(0.0001)
                        now = time.time_ns() // 1_000_000
                    self._last_ms = now
                    self._last_rand = int.from_bytes(os.urandom(10), "big")
                else:
                    self._last_rand += 1
            else:
                self._last_ms = now
                self._last_rand = int.from_bytes(os.urandom(10), "big")
            return encode_ulid((self._last_ms << _RAND_BITS) | self._last_rand)


_GENERATOR = UlidGenerator()


def new_ulid() -> str:
    """A new monotonic lowercase ULID body (26 chars)."""
    return _GENERATOR.new()


def new_session_id() -> str:
    """A new ``tmss-`` session ID (31 chars)."""
    return SESSION_PREFIX + _GENERATOR.new()


def new_key_id() -> str:
    """A new ``tmak-`` API key ID (31 chars)."""
    return KEY_PREFIX + _GENERATOR.new()


def new_node_id() -> str:
    """A new auto-generated ``tmnd-`` node ID (ruling R1: prefix + lowercase ULID)."""
    return NODE_PREFIX + _GENERATOR.new()


def normalize_session_id(value: str) -> str | None:
    """Lower-case ``value`` and return it if it is a valid session ID, else ``None``."""
    if len(value) != 31:
        return None
    low = value.lower()
    return low if SESSION_ID_RE.fullmatch(low) else None


def normalize_key_id(value: str) -> str | None:
    """Lower-case ``value`` and return it if it is a valid API key ID, else ``None``."""
    if len(value) != 31:
        return None
    low = value.lower()
    return low if KEY_ID_RE.fullmatch(low) else None


_NODE_ID_RE = re.compile(r"tmnd-[a-z0-9][a-z0-9-]{0,58}")


def is_valid_node_id(value: str) -> bool:
    """True when ``value`` is a ``tmnd-`` node ID (operator name or ULID body)."""
    return bool(_NODE_ID_RE.fullmatch(value))
