"""Anti-replay for authenticated POSTs: ``X-Timestamp`` window and ``X-Nonce`` store (02 §11, R2).

Node-local and synchronous: the check-and-insert of a nonce has no ``await`` inside, so it
is atomic under Trio.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Final

from tokmesh.domain.errors import E, TokMeshError

MAX_NONCE_CHARS: Final = 256
_TS_RE = re.compile(r"-?[0-9]{1,19}")


class NonceStore:
    """LRU + TTL set of ``(key_id, nonce)``; expired entries are purged, LRU evicted when full."""

    __slots__ = ("_entries", "capacity", "ttl_ms")

    def __init__(self, capacity: int, ttl_ms: int) -> None:
        self.capacity = capacity
        self.ttl_ms = ttl_ms
        self._entries: OrderedDict[tuple[str, str], int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def check_and_insert(self, key_id: str, nonce: str, now_ms: int) -> bool:
        """Record the nonce; ``False`` if it was already seen and has not expired."""
        entries = self._entries
        # Insertion order is expiry order (constant TTL), so expired entries sit in front.
        while entries:
            first = next(iter(entries))
            if entries[first] > now_ms:
                break
            del entries[first]
        ident = (key_id, nonce)
        expiry = entries.get(ident)
        if expiry is not None:
            if expiry > now_ms:
                return False
            del entries[ident]
        entries[ident] = now_ms + self.ttl_ms
        while len(entries) > self.capacity:
            entries.popitem(last=False)
        return True


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return None if value is None else value.strip()


class ReplayGuard:
    """The §11 check, applied per R2.

    A POST carrying ``X-Timestamp`` or ``X-Nonce`` is always checked; with
    ``required=True`` every authenticated POST must carry both.
    """

    __slots__ = ("nonces", "required", "window_ms")

    def __init__(self, *, window_ms: int, nonce_ttl_ms: int, capacity: int, required: bool) -> None:
        self.window_ms = window_ms
        self.required = required
        self.nonces = NonceStore(capacity, nonce_ttl_ms)

    def check(self, key_id: str, method: str, headers: Mapping[str, str], now_ms: int) -> None:
        """Raise 401 ``TM-AUTH-4014`` / 400 ``TM-ARG-1001`` / 401 ``TM-AUTH-4015`` or pass.

        Order: timestamp first, then nonce format, then the atomic check-and-insert. Once
        recorded a nonce stays consumed even if the handler later fails.
        """
        if method.upper() != "POST":
            return
        ts_raw = _header(headers, "x-timestamp")
        nonce = _header(headers, "x-nonce")
        if ts_raw is None and nonce is None and not self.required:
            return
        if ts_raw is None or _TS_RE.fullmatch(ts_raw) is None:
            raise TokMeshError(E.AUTH_TIMESTAMP, "X-Timestamp missing or not an integer")
        if abs(now_ms - int(ts_raw)) > self.window_ms:
            raise TokMeshError(
                E.AUTH_TIMESTAMP,
                "X-Timestamp outside the allowed window",
                details={"server_time": now_ms, "window_ms": self.window_ms},
            )
        if nonce is None or not nonce or len(nonce) > MAX_NONCE_CHARS:
            raise TokMeshError(
                E.ARG_INVALID,
                "X-Nonce must be 1-256 characters",
                details={"field": "X-Nonce", "max_length": MAX_NONCE_CHARS},
            )
        if not self.nonces.check_and_insert(key_id, nonce, now_ms):
            raise TokMeshError(E.AUTH_NONCE_REUSED)
