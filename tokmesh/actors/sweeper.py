"""The TTL sweeper actor (01 §6): expiry wheel first, Redis-style sampling second.

Every ``gc_interval`` it takes the ids whose expiry second has passed from the
:class:`~tokmesh.actors.expiry.ExpiryWheel` (bounded per tick, so a mass expiry is spread
over several ticks instead of blocking the loop), then samples ``sample_size`` random
sessions and repeats the sample while more than 25 % were expired (at most 4 extra
rounds). Purges are sent to the owning shard, which logs a WAL ``DELETE`` for expired
sessions and silently drops tombstones past their original expiry.
"""

from __future__ import annotations

import logging

import trio

from tokmesh.actors.session_store import SessionStore
from tokmesh.domain.clock import SYSTEM_CLOCK, Clock
from tokmesh.services.sessions import purge

log = logging.getLogger("tokmesh.sweeper")

#: Upper bound of wheel entries inspected per tick (keeps one tick well under a few ms).
WHEEL_BUDGET = 5000


class TtlSweeper:
    """Purges expired sessions and tombstones in the background."""

    def __init__(
        self,
        store: SessionStore,
        interval: float = 0.1,
        sample_size: int = 20,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.interval = interval
        self.sample_size = sample_size
        self.clock = clock
        self.purged_total = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick forever (cancelled at shutdown)."""
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            try:
                await self.tick()
            except Exception:  # a failed WAL is reported by the writer; keep ticking
                log.exception("sweeper tick failed")

    def collect(self, now_ms: int) -> dict[str, list[str]]:
        """Ids to purge now, grouped by user (synchronous: one atomic look)."""
        state = self.store.state
        sessions = state.sessions
        by_user: dict[str, list[str]] = {}
        seen: set[str] = set()

        def consider(sid: str) -> bool:
            s = sessions.get(sid)
            if s is None or sid in seen:
                return False
            if s.is_deleted:
                due = s.expires_at != 0 and now_ms > s.expires_at
            else:
                due = s.is_expired(now_ms)
            if due:
                seen.add(sid)
                by_user.setdefault(s.user_id, []).append(sid)
                return True
            # Not due (e.g. renewed since it was scheduled): its new expiry has its own entry.
            return False

        for sid in state.wheel.pop_due(now_ms, WHEEL_BUDGET):
            consider(sid)
        for _ in range(5):
            sample = state.sample(self.sample_size)
            if not sample:
                break
            expired = sum(1 for s in sample if consider(s.id))
            if expired * 4 <= len(sample):
                break
        return by_user

    async def tick(self) -> int:
        """One sweep round; returns the number of sessions/tombstones purged."""
        now = self.clock.now_ms()
        by_user = self.collect(now)
        if not by_user:
            return 0
        count = await purge(self.store, by_user, now)
        self.purged_total += count
        return count
