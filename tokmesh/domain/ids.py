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

from tokmesh.domain.shards import first_in_shard

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


# Every pair of Crockford characters (10 bits), so that encoding takes one table lookup
# per two characters instead of a loop step per character (~0.9 µs instead of ~3 µs).
_PAIRS = tuple(a + b for a in CROCKFORD for b in CROCKFORD)


def encode_ulid(value: int) -> str:
    """Encode a 128-bit integer as 26 lowercase Crockford Base32 characters."""
    p = _PAIRS
    return (
        CROCKFORD[(value >> 125) & 31]
        + p[(value >> 115) & 1023]
        + p[(value >> 105) & 1023]
        + p[(value >> 95) & 1023]
        + p[(value >> 85) & 1023]
        + p[(value >> 75) & 1023]
        + p[(value >> 65) & 1023]
        + p[(value >> 55) & 1023]
        + p[(value >> 45) & 1023]
        + p[(value >> 35) & 1023]
        + p[(value >> 25) & 1023]
        + p[(value >> 15) & 1023]
        + p[(value >> 5) & 1023]
        + CROCKFORD[value & 31]
    )


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

    def new_in_shard(self, prefix: str, shard: int) -> str:
        """``prefix`` + a new ULID body such that the whole id is in ``shard``.

        The cluster keeps all sessions of a user in the user's shard, and a session's
        shard is a hash of its id: so the id is searched for. The next free block of 1,024
        random values (its low 10 bits clear) shares every character but the last two;
        the first value of the block whose id hashes into ``shard`` is taken (about 256
        tries, ~15 µs), and ids stay strictly increasing. A block without a match (about
        2 % of them) is skipped for the next one.
        """
        with self._lock:
            while True:
                now = time.time_ns() // 1_000_000
                if now > self._last_ms:
                    self._last_ms = now
                    self._last_rand = int.from_bytes(os.urandom(10), "big")
                block = (self._last_rand | 1023) + 1
                if block + 1023 > _RAND_MAX:
                    # The random part would overflow within this millisecond: wait for
                    # the next one, as new() does.
                    while now <= self._last_ms:
                        time.sleep(0.0001)
                        now = time.time_ns() // 1_000_000
                    self._last_ms = now
                    self._last_rand = int.from_bytes(os.urandom(10), "big")
                    continue
                head = prefix + encode_ulid((self._last_ms << _RAND_BITS) | block)[:-2]
                low = first_in_shard(head, _PAIRS, shard)
                if low >= 0:
                    self._last_rand = block + low
                    return head + _PAIRS[low]
                self._last_rand = block + 1023


_GENERATOR = UlidGenerator()


class CountingUlids:
    """Monotonic ULIDs for high-rate records whose ids need to be unique, not secret.

    One random 80-bit base is drawn when the generator is made; every id adds one to it,
    so the random part is a counter (the ULID rule for ids made within one millisecond,
    here applied across milliseconds too). Ids of one generator are strictly increasing
    and never repeat; two processes start from unrelated random bases. The time part is
    the caller's timestamp (it has one already: no second clock read), kept from going
    backwards. Text is cached per millisecond and per high half of the counter, so an id
    costs a few table lookups. Not thread-safe: one generator per thread (the audit log
    uses its own on the Trio thread).
    """

    __slots__ = ("_count", "_high", "_high_text", "_ms", "_ms_text")

    def __init__(self) -> None:
        # Half the range as headroom: 2**79 ids from any base never overflow 80 bits.
        self._count = int.from_bytes(os.urandom(10), "big") >> 1
        self._high = -1
        self._high_text = ""
        self._ms = -1
        self._ms_text = ""

    def new(self, ms: int) -> str:
        """The next ULID body for a record made at Unix time ``ms``."""
        p = _PAIRS
        if ms > self._ms:
            self._ms = ms
            self._ms_text = (
                p[(ms >> 40) & 1023]
                + p[(ms >> 30) & 1023]
                + p[(ms >> 20) & 1023]
                + p[(ms >> 10) & 1023]
                + p[ms & 1023]
            )
        count = self._count = self._count + 1
        high = count >> 40
        if high != self._high:
            self._high = high
            self._high_text = (
                p[(high >> 30) & 1023] + p[(high >> 20) & 1023] + p[(high >> 10) & 1023]
            ) + p[high & 1023]
        return (
            self._ms_text
            + self._high_text
            + p[(count >> 30) & 1023]
            + p[(count >> 20) & 1023]
            + p[(count >> 10) & 1023]
            + p[count & 1023]
        )


def new_ulid() -> str:
    """A new monotonic lowercase ULID body (26 chars)."""
    return _GENERATOR.new()


def new_session_id() -> str:
    """A new ``tmss-`` session ID (31 chars)."""
    return SESSION_PREFIX + _GENERATOR.new()


def new_session_id_in_shard(shard: int) -> str:
    """A new ``tmss-`` session ID whose shard (murmur3 of the id, mod 256) is ``shard``."""
    return _GENERATOR.new_in_shard(SESSION_PREFIX, shard)


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
