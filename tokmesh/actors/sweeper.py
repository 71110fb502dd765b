"""The TTL sweeper actor: purges expired sessions in short passes that never hold the loop.

Every ``gc_interval`` (100 ms by default) the sweeper runs a *pass*: it takes due ids from
the :class:`~tokmesh.actors.expiry.ExpiryWheel` (each session is listed under the second
in which it expires), then samples ``sample_size`` random sessions Redis-style and samples
again while more than a quarter of a sample was expired, at most four more times. Expired
sessions are purged by their owning shards with a WAL ``DELETE``; tombstones past their
original expiry are dropped without a record.

A pass stops early once it has used :data:`PASS_BUDGET` of loop time or gathered
:data:`PASS_LIMIT` sessions, so no step of it holds the event loop for more than about a
millisecond. It hands each shard its share in one message, and a shard submits all its
``DELETE`` records to the WAL writer as one run (they share group commits, with no
``await`` per record). While the WAL commits them the loop serves requests; if the wheel
still had due entries, the next pass follows at once instead of after the interval.
So a mass expiry (a million sessions created in the same minute, a wall clock that
jumped forward, a process resumed after a long ``SIGSTOP``) is worked off at full speed
in slices of about a millisecond, instead of one pass that stalls every request behind
it.

Expiry follows the wall clock (``Clock.now_ms``: sessions expire at an absolute time);
the tick itself is a Trio sleep on the monotonic clock, so a wall clock that jumps
neither stops nor races the sweeper.

After large purges the sweeper asks glibc to return freed heap pages to the system
(:class:`~tokmesh.actors.memory.MemoryReturn`), at most once a minute, in a worker thread.
"""

from __future__ import annotations

import logging
import time

import trio

from tokmesh.actors import messages as m
from tokmesh.actors.memory import MemoryReturn
from tokmesh.actors.periodic import ActorErrors
from tokmesh.actors.reply import Reply
from tokmesh.actors.session_store import SessionStore
from tokmesh.domain.clock import SYSTEM_CLOCK, Clock
from tokmesh.domain.errors import TokMeshError
from tokmesh.domain.session import Session

log = logging.getLogger("tokmesh.sweeper")

#: Loop time the sweeper's own step of a pass may take (seconds). The shards' steps and
#: the WAL commit that follow it are bounded by :data:`PASS_LIMIT` records each.
PASS_BUDGET = 0.0007
#: Sessions one pass purges at most (a shard prepares its share of them in one step,
#: about 3 µs each; the WAL writer commits them in batches of ``batch_count``).
PASS_LIMIT = 256
#: Wheel entries taken between two looks at the clock.
CHECK_EVERY = 32
#: Sampling rounds per tick: one, then up to four more while a quarter was expired.
SAMPLE_ROUNDS = 5


def is_due(s: Session, now_ms: int) -> bool:
    """Whether the sweeper purges ``s`` now: an expired session, or a tombstone whose
    original expiry has passed (a revoked session answers "revoked" until then)."""
    if s.is_deleted:
        return s.expires_at != 0 and now_ms > s.expires_at
    return s.is_expired(now_ms)


class ExpiryPass:
    """The sessions one pass purges, grouped by owning shard."""

    __slots__ = ("by_shard", "count", "now_ms", "seen", "store")

    def __init__(self, store: SessionStore, now_ms: int) -> None:
        self.store = store
        self.now_ms = now_ms
        self.by_shard: dict[int, list[str]] = {}
        self.seen: set[str] = set()
        self.count = 0

    def consider(self, sid: str, listed: bool) -> bool:
        """Add ``sid`` if it is due; returns whether it was. ``listed``: the id comes from
        the wheel (its entry is gone now), not from a random sample."""
        state = self.store.state
        s = state.sessions.get(sid)
        if s is None or sid in self.seen:
            return False
        if not is_due(s, self.now_ms):
            if listed and s.is_deleted and s.expires_at > self.now_ms:
                # A tombstone ends at its original expiry, which an idle timeout may have
                # put after the entry just taken; nothing else would list it again.
                state.wheel.add(sid, s.expires_at)
            # A live session renewed since it was listed has an entry for its new expiry.
            return False
        self.seen.add(sid)
        index = self.store.shard_for(s.user_id).index
        self.by_shard.setdefault(index, []).append(sid)
        self.count += 1
        return True

    def take_due(self, deadline: float) -> bool:
        """Take due wheel entries until the limit or ``deadline`` (``perf_counter``);
        returns whether due entries are left."""
        wheel = self.store.state.wheel
        while self.count < PASS_LIMIT:
            if time.perf_counter() >= deadline:
                return wheel.has_due(self.now_ms)
            chunk = wheel.pop_due(self.now_ms, min(CHECK_EVERY, PASS_LIMIT - self.count))
            if not chunk:
                return False
            for sid in chunk:
                self.consider(sid, listed=True)
        return wheel.has_due(self.now_ms)

    def sample(self, size: int, deadline: float) -> None:
        """Redis-style sampling rounds, within the same limits."""
        state = self.store.state
        for _ in range(SAMPLE_ROUNDS):
            if self.count >= PASS_LIMIT or time.perf_counter() >= deadline:
                return
            sample = state.sample(size)
            if not sample:
                return
            expired = sum(1 for s in sample if self.consider(s.id, listed=False))
            if expired * 4 <= len(sample):
                return

    async def purge(self) -> int:
        """Send every shard its share at once, then wait until all are committed."""
        shards = self.store.shards
        replies: list[Reply[int]] = []
        for index, sids in self.by_shard.items():
            reply: Reply[int] = Reply()
            await shards[index].send(m.Purge(sids=tuple(sids), now_ms=self.now_ms, reply=reply))
            replies.append(reply)
        total = 0
        for reply in replies:
            total += await reply.wait()
        return total


async def purge_due(store: SessionStore, clock: Clock, *, sample_size: int = 0) -> int:
    """Purge everything due now in bounded passes; returns how many were purged.

    The sweeper's tick, and the manual GC: the expiry wheel lists every session with an
    expiry, so draining its due entries purges every expired session and tombstone.
    ``sample_size`` > 0 adds the sampling rounds to the first pass.
    """
    total = 0
    while True:
        now = clock.now_ms()
        work = ExpiryPass(store, now)
        deadline = time.perf_counter() + PASS_BUDGET
        more = work.take_due(deadline)
        if sample_size:
            work.sample(sample_size, deadline)
            sample_size = 0
        if work.count:
            state = store.state
            state.expired_ids.reserve()
            state.expired_tokens.reserve()
            total += await work.purge()
        if not more:
            return total
        # Due entries are left: the next pass right away (the purge above awaited the
        # commit, so requests were served in between; a pass without purges did not).
        if not work.count:
            await trio.sleep(0)


class TtlSweeper:
    """Purges expired sessions and tombstones in the background."""

    def __init__(
        self,
        store: SessionStore,
        interval: float = 0.1,
        sample_size: int = 20,
        clock: Clock = SYSTEM_CLOCK,
        memory: MemoryReturn | None = None,
    ) -> None:
        self.store = store
        self.interval = interval
        self.sample_size = sample_size
        self.clock = clock
        self.memory = memory if memory is not None else MemoryReturn()
        self.purged_total = 0
        self.errors = ActorErrors("ttl_sweeper")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick forever (cancelled at shutdown)."""
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            try:
                await self.tick()
            except Exception as exc:
                # Keep ticking. A failed WAL or a full disk fails every tick for as long as
                # it lasts: one WARN per episode (the writer reports the WAL itself), not a
                # traceback ten times a second. Anything else is a bug: its traceback once.
                if not isinstance(exc, OSError | TokMeshError) and not self.errors.failing:
                    log.exception("sweeper tick failed")
                self.errors.failed(exc)
            else:
                self.errors.succeeded()

    async def tick(self) -> int:
        """One tick: purge what is due (in as many passes as it takes), tidy the sampling
        array, return freed memory after large purges. Returns the number purged."""
        count = await purge_due(self.store, self.clock, sample_size=self.sample_size)
        self.purged_total += count
        self.store.state.prune_samples()
        self.memory.note_freed(count)
        await self.memory.maybe_return()
        return count
