"""Committed in-memory state of the session store: the primary map and every index.

All shards share one :class:`StoreState`. Reads (validate, get, list) run inline against it
from any task: Trio is single-threaded and no method here awaits, so each call is atomic
(DESIGN §3). Mutations of the committed state happen only in WAL-commit callbacks of the
owning shard and in recovery, through :meth:`StoreState.put` / :meth:`StoreState.remove`,
which keep the primary map, token index, user and device indexes, the expiry wheel and the
sampling array consistent in one step (01 §5 index atomicity).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from tokmesh.actors.expiry import BUCKET_MS, ExpiryWheel
from tokmesh.actors.id_index import IdIndex
from tokmesh.actors.recent_keys import RecentKeys
from tokmesh.actors.segmented_map import MASK, SegmentedMap
from tokmesh.domain.session import Session

if TYPE_CHECKING:
    from tokmesh.domain.apikey import ApiKey


#: How many purged expired sessions are remembered at least for precise error codes.
EXPIRED_MEMORY = 100_000
#: Sampling-array entries checked per :meth:`StoreState.prune_samples` call at most.
PRUNE_BUDGET = 2_000


class StoreState:
    """The committed sessions, their indexes and the API keys."""

    __slots__ = (
        "_prune_at",
        "_retired",
        "_sample_ids",
        "by_device",
        "by_token",
        "by_user",
        "expired_ids",
        "expired_tokens",
        "foreign",
        "keys",
        "pending_tokens",
        "position",
        "sessions",
        "wheel",
    )

    def __init__(self) -> None:
        #: Session id -> record. Segmented, as the token index, so that their growth never
        #: stops the loop for a rebuild of a million-entry table (see segmented_map).
        self.sessions: SegmentedMap[str, Session] = SegmentedMap()
        #: raw SHA-256 digest of the token -> session id (tombstones keep their entry so a
        #: revoked token answers TM-TOKN-4012 until the tombstone is purged).
        self.by_token: SegmentedMap[bytes, str] = SegmentedMap()
        #: user id -> ids of non-revoked sessions (expired-unswept ones included; readers
        #: filter with the clock). Compact values: one id is kept as the bare string, a
        #: few as a tuple (see :mod:`tokmesh.actors.id_index`).
        self.by_user = IdIndex()
        #: device id -> ids of non-revoked sessions with that device id.
        self.by_device = IdIndex()
        self.keys: dict[str, ApiKey] = {}
        #: token digests of creates in flight in any shard (global token uniqueness).
        self.pending_tokens: dict[bytes, str] = {}
        #: WAL position (segment << 32 | offset) just after the last committed record.
        self.position = 0
        self.wheel = ExpiryWheel()
        #: In a cluster with replicas: true for the id of a session this node holds only
        #: as a replica (its shard is owned elsewhere). Such copies take no part in a
        #: user's quota, revoke-by-user or listings here; their owner answers for them.
        #: ``None`` on a single node (everything held is owned).
        self.foreign: Callable[[str], bool] | None = None
        # Sessions the sweeper purged after they expired, remembered (bounded, in memory)
        # so reads keep answering "expired" (TM-SESS-4041 / TM-TOKN-4011) rather than
        # "unknown" for a while after the record itself is gone. Fingerprints only: the
        # purged records' own strings would keep their memory from being given back.
        self.expired_ids = RecentKeys(EXPIRED_MEMORY)
        self.expired_tokens = RecentKeys(EXPIRED_MEMORY)
        # Ids in insertion order for O(1) random sampling by the sweeper; entries of
        # removed sessions are dropped when sampled or by :meth:`prune_samples`
        # (swap-remove), whose scan resumes at ``_prune_at``.
        self._sample_ids: list[str] = []
        self._prune_at = 0
        #: A replaced sampling array, freed a slice at a time by :meth:`prune_samples`.
        self._retired: list[str] = []

    # -- mutation (commit callbacks and recovery only) -------------------------------

    def put(self, new: Session) -> None:
        """Insert or replace a session record, updating every index atomically."""
        sid = new.id
        # The segment dicts themselves: this runs in every commit, and a SegmentedMap
        # method call per access would cost ~0.2 us each.
        records = self.sessions.segments[hash(sid) & MASK]
        old = records.get(sid)
        records[sid] = new
        if old is None:
            self._sample_ids.append(sid)
            self.by_token.segments[hash(new.token_hash) & MASK][new.token_hash] = sid
        elif old.token_hash != new.token_hash:  # pragma: no cover - tokens never rotate
            if self.by_token.get(old.token_hash) == sid:
                del self.by_token[old.token_hash]
            self.by_token[new.token_hash] = sid
        else:
            # An expired holder may have lost the token to a newer session; the newest
            # record that is written for a token owns it.
            self.by_token[new.token_hash] = sid
        if old is not None and not old.is_deleted:
            if old.device_id != new.device_id or new.is_deleted:
                self.by_device.discard(old.device_id, sid)
            if new.is_deleted:
                self.by_user.discard(old.user_id, sid)
        if not new.is_deleted:
            self.by_user.add(new.user_id, sid)
            if new.device_id:
                self.by_device.add(new.device_id, sid)
        expiry = new.effective_expiry()
        if expiry and (old is None or old.effective_expiry() != expiry):
            self.wheel.add(sid, expiry)

    def remove(self, sid: str) -> Session | None:
        """Remove a session and all its index entries; returns the removed record."""
        old = self.sessions.segments[hash(sid) & MASK].pop(sid, None)
        if old is None:
            return None
        tokens = self.by_token.segments[hash(old.token_hash) & MASK]
        if tokens.get(old.token_hash) == sid:
            del tokens[old.token_hash]
        if not old.is_deleted:
            self.by_user.discard(old.user_id, sid)
            if old.device_id:
                self.by_device.discard(old.device_id, sid)
        return old

    def note_expired(self, session: Session) -> None:
        """Remember a purged expired session (not a revoked one: its token must turn
        ``TM-TOKN-4010`` once the tombstone ends)."""
        self.expired_ids.add(session.id)
        self.expired_tokens.add(session.token_hash)

    def schedule_recheck(self, sid: str, now_ms: int) -> None:
        """Have the sweeper look at ``sid`` again within a second (its wheel entry was
        taken while a newer version was in flight)."""
        self.wheel.add(sid, now_ms)

    def reserve(self, count: int) -> None:
        """Make room for ``count`` sessions in the primary map and the token index of an
        empty state (a snapshot about to be loaded; see :meth:`SegmentedMap.reserve`)."""
        self.sessions.reserve(count)
        self.by_token.reserve(count)

    def load(self, sessions: Iterable[Session], position: int | None = None) -> None:
        """Bulk-load records whose ids are not in the state yet (snapshot chunks).

        Start-up path for a million records, called once per snapshot chunk while its
        records are still hot in the CPU cache: the primary map, token index and sampling
        array are filled by C loops (the accelerator's ``fill_segments``, ``zip``), the
        user/device indexes by :meth:`IdIndex.load` and the expiry wheel by one tight loop
        (same resulting indexes as :meth:`put`).
        ``ValueError`` when an id repeats or is already present; the state is then
        inconsistent and must be :meth:`clear`-ed.
        """
        records = sessions if isinstance(sessions, list) else list(sessions)
        ids = [s.id for s in records]
        by_id = self.sessions
        before = len(by_id)
        by_id.update(zip(ids, records, strict=True))
        if len(by_id) != before + len(records):
            raise ValueError("a session id repeats in the loaded records")
        self.by_token.update(zip([s.token_hash for s in records], ids, strict=True))
        self._sample_ids.extend(ids)
        # user/device indexes: non-revoked records only (as in :meth:`put`)
        live = [s for s in records if not s.is_deleted]
        self.by_user.load([s.user_id for s in live], [s.id for s in live])
        with_device = [s for s in live if s.device_id]
        if with_device:
            self.by_device.load([s.device_id for s in with_device], [s.id for s in with_device])
        buckets = self.wheel.bulk_buckets()
        new_buckets: list[int] = []
        added = 0
        # The bucket of the previous record, as the range of expiries it holds: records
        # come in creation order, so most expire in the same second as the one before and
        # skip the division and the dict lookup.
        low = high = -1
        in_bucket: list[str] = []
        for s in records:
            sid = s.id
            expiry = s.effective_expiry() if s.idle_timeout else s.expires_at
            if expiry:
                added += 1
                if not low < expiry <= high:
                    # bucket b holds expiries in ((b-1)*1000, b*1000], see ExpiryWheel.add
                    bucket = (expiry + BUCKET_MS - 1) // BUCKET_MS
                    high = bucket * BUCKET_MS
                    low = high - BUCKET_MS
                    found = buckets.get(bucket)
                    if found is None:
                        buckets[bucket] = found = []
                        new_buckets.append(bucket)
                    in_bucket = found
                in_bucket.append(sid)
        self.wheel.bulk_done(new_buckets, added)
        if position is not None:
            self.position = position

    def adopt(self, other: StoreState) -> None:
        """Take over the sessions, indexes and position of ``other`` (built off the event
        loop at start-up) in one synchronous step; ``other`` must not be used afterwards.
        API keys and the expired-session memory stay as they are."""
        self.sessions = other.sessions
        self.by_token = other.by_token
        self.by_user = other.by_user
        self.by_device = other.by_device
        self.wheel = other.wheel
        self._sample_ids = other._sample_ids
        self._prune_at = 0
        self.position = other.position
        # ``other`` may live on in its builder's frame; left as it is, it would keep
        # whatever this state later replaces (the sampling array once it is rebuilt:
        # every id ever created until then, and the memory around them).
        other.sessions = SegmentedMap()
        other.by_token = SegmentedMap()
        other.by_user = IdIndex()
        other.by_device = IdIndex()
        other.wheel = ExpiryWheel()
        other._sample_ids = []

    def clear(self) -> None:
        """Drop everything (restore replaces the whole state)."""
        self.sessions.clear()
        self.by_token.clear()
        self.by_user.clear()
        self.by_device.clear()
        self.keys.clear()
        self.expired_ids.clear()
        self.expired_tokens.clear()
        self.position = 0
        self.wheel = ExpiryWheel()
        self._sample_ids = []
        self._prune_at = 0
        self._retired = []

    # -- reads ------------------------------------------------------------------------

    def sample(self, count: int) -> list[Session]:
        """Up to ``count`` random present sessions, O(1) per pick."""
        ids = self._sample_ids
        sessions = self.sessions
        out: list[Session] = []
        attempts = 0
        while ids and len(out) < count and attempts < count * 4:
            attempts += 1
            i = random.randrange(len(ids))
            sid = ids[i]
            s = sessions.get(sid)
            if s is None:
                # Lazily drop dead ids: swap with the last and pop.
                ids[i] = ids[-1]
                ids.pop()
                continue
            out.append(s)
        return out

    def prune_samples(self, budget: int = PRUNE_BUDGET) -> int:
        """Drop entries of removed sessions from the sampling array, looking at no more
        than ``budget`` entries; returns how many were dropped.

        Sampling alone drops dead entries too slowly when sessions come and go fast,
        and rebuilding the array from the primary map holds the loop for milliseconds
        at a million sessions; so the sweeper calls this on every tick and it resumes
        where it stopped. It does nothing while dead entries are under about 1/16 of
        the array. An id re-created after its purge can be listed twice; the scan keeps
        such duplicates (both name a present session), so when the array is over twice
        the sessions (plus a margin) it is rebuilt from the primary map, at a cost in
        proportion to the fewer live sessions.
        """
        retired = self._retired
        if retired:
            # A replaced array is freed a slice per call: it may hold the last reference
            # to each of its ids (a mass expiry), and freeing 50,000 scattered strings in
            # one go held the loop for 2.5 ms.
            del retired[-budget:]
            return 0
        ids = self._sample_ids
        sessions = self.sessions
        dead = len(ids) - len(sessions)
        if dead <= (len(ids) >> 4) + 64:
            return 0
        if len(ids) > 2 * len(sessions) + 1024:
            self._retired = ids
            self._sample_ids = list(sessions)
            self._prune_at = 0
            return dead
        dropped = 0
        i = self._prune_at
        for _ in range(budget):
            if i >= len(ids):
                i = 0
                if not ids:
                    break
            if ids[i] in sessions:
                i += 1
            else:
                ids[i] = ids[-1]
                ids.pop()
                dropped += 1
        self._prune_at = i
        return dropped

    def live_count(self, now_ms: int | None = None) -> int:
        """Number of non-revoked sessions (expired-unswept included when ``now_ms`` is None)."""
        if now_ms is None:
            return self.by_user.count()
        return sum(1 for s in self.sessions.values() if s.is_live(now_ms))
