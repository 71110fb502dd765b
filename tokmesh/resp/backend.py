"""The real :class:`~tokmesh.resp.deps.RespBackend`: the services HTTP uses, adapted.

:class:`ServiceBackend` binds the RESP command layer to the Authenticator (scope
``redis``: 02 §6.1 steps 2-7 on AUTH, then ``recheck`` / ``check_rate`` per command) and
to the session operations. :class:`SortedIdScanner` pages ``SCAN`` over the committed
sessions of this node.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tokmesh.actors.state import StoreState
from tokmesh.domain.clock import Clock
from tokmesh.domain.ids import SESSION_PREFIX, decode_ulid, encode_ulid
from tokmesh.domain.session import Session
from tokmesh.resp.deps import NodeFacts, RespPrincipal, SessionScanner
from tokmesh.services.auth import SCOPE_REDIS, Authenticator
from tokmesh.services.session_ops import SessionOperations

# A cursor is ``(t << 16) | k``: continue at the k-th id (in sorted order) among the ids
# whose ULID time is the millisecond ``t``. Ids sort by time first, so the millisecond
# part is a value, not a position: rebuilding the sorted snapshot between pages never
# loses the place. It fits the unsigned 64-bit cursors redis-cli parses (48 + 16 bits).
_TIME_CHARS = 10  # 10 Crockford chars = the 48-bit time (top 2 bits zero)
_OFFSET_BITS = 16
_OFFSET_MAX = (1 << _OFFSET_BITS) - 1
_PREFIX_LEN = len(SESSION_PREFIX) + _TIME_CHARS


def _time_prefix(ms: int) -> str:
    return SESSION_PREFIX + encode_ulid(ms << 80)[:_TIME_CHARS]


def _time_of(sid: str) -> int:
    return decode_ulid(sid[len(SESSION_PREFIX) : _PREFIX_LEN] + "0" * 16) >> 80


class SortedIdScanner:
    """``SCAN`` over a live mapping ``session id -> Session``, in session-id order.

    The sorted id list is a snapshot, rebuilt when a scan starts (cursor 0) or when it is
    older than ``refresh_ms``. Ids present for the whole scan are returned once, unless
    ids of the very millisecond a page stopped in are added or removed meanwhile.
    """

    __slots__ = ("_built_at", "_clock", "_ids", "_refresh_ms", "_sessions")

    def __init__(
        self, sessions: Mapping[str, Session], clock: Clock, refresh_ms: int = 30_000
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._refresh_ms = refresh_ms
        self._ids: list[str] = []
        self._built_at: int | None = None

    def scan(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One page: ``(next_cursor, live ids)``; see :class:`SessionScanner`."""
        now = self._clock.now_ms()
        if cursor == 0 or self._built_at is None or now - self._built_at > self._refresh_ms:
            self._ids = sorted(self._sessions)
            self._built_at = now
        ids = self._ids
        n = len(ids)
        if cursor == 0:
            start = 0
        else:
            ms, k = cursor >> _OFFSET_BITS, cursor & _OFFSET_MAX
            start = min(bisect.bisect_left(ids, _time_prefix(ms)) + k, n)
        stop = min(start + max(count, 1), n)
        next_cursor = 0
        while stop < n:
            ms = _time_of(ids[stop])
            k = stop - bisect.bisect_left(ids, _time_prefix(ms), 0, stop + 1)
            if k <= _OFFSET_MAX:
                next_cursor = (ms << _OFFSET_BITS) | k
                break
            stop += 1  # > 65535 ids in one millisecond: finish that millisecond here
        live: list[str] = []
        sessions = self._sessions
        for sid in ids[start:stop]:
            s = sessions.get(sid)
            if s is not None and s.is_live(now):
                live.append(sid)
        return next_cursor, live


def _never() -> bool:
    return False


class _Recheck(Protocol):
    def __call__(self, principal: Any, now_ms: int | None = None) -> RespPrincipal: ...


class _TakeRate(Protocol):
    def __call__(self, principal: Any, n: int, now_ms: int | None = None) -> bool: ...


class ServiceBackend:
    """RESP backend over the Authenticator and the session operations.

    ``state`` is this node's committed store state: ``SCAN`` pages and INFO counts the
    sessions held here.

    The per-command checks are the Authenticator's own bound methods (no adapter hop
    on the hot path): ``check_principal`` = ``recheck`` (03 §5.2 step 3, no Argon2),
    ``rate_limit`` = ``check_rate`` (02 §10), ``take_rate`` = ``take_rate``, and
    ``in_maintenance`` is the phase check the server passes.
    """

    __slots__ = (
        "_auth",
        "_max_clients",
        "_node_id",
        "_scanner",
        "_sessions",
        "_started_at",
        "_state",
        "check_principal",
        "in_maintenance",
        "rate_limit",
        "take_rate",
    )

    def __init__(
        self,
        authenticator: Authenticator,
        sessions: SessionOperations,
        state: StoreState,
        in_maintenance: Callable[[], bool] | None = None,
        scanner: SessionScanner | None = None,
        *,
        node_id: str = "",
        started_at: float | None = None,
        max_clients: int = 0,
    ) -> None:
        self._auth = authenticator
        self._node_id = node_id
        self._max_clients = max_clients
        self._started_at = time.time() if started_at is None else started_at
        self._sessions = sessions
        self._state = state
        #: True while a restore runs (the phase check itself: no adapter hop per read).
        self.in_maintenance: Callable[[], bool] = in_maintenance or _never
        self._scanner = scanner or SortedIdScanner(state.sessions, sessions.clock)
        # The principals handed to these are always the Authenticator's own (they come
        # from authenticate() below), so its methods take them as they are.
        self.check_principal: _Recheck = authenticator.recheck
        self.rate_limit: Callable[[Any], None] = authenticator.check_rate
        self.take_rate: _TakeRate = authenticator.take_rate

    @property
    def sessions(self) -> SessionOperations:
        """The session operations (the same object the HTTP routes call)."""
        return self._sessions

    @property
    def scanner(self) -> SessionScanner:
        """``SCAN`` paging."""
        return self._scanner

    async def authenticate(self, key_id: str, secret: str, peer_ip: str) -> RespPrincipal:
        """AUTH: 02 §6.1 steps 2-7 with the socket peer as client IP (02 §5)."""
        return await self._auth.authenticate(key_id, secret, peer_ip, SCOPE_REDIS)

    def node_facts(self) -> NodeFacts:
        """Node id, start time, the store's count of non-revoked sessions, the client cap."""
        return NodeFacts(
            self._node_id, self._started_at, self._state.live_count(), self._max_clients
        )
