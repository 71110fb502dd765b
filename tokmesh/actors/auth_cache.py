"""The auth-cache actor: the API-key validation cache and the Argon2id executor (02 §7-§8).

It owns
- the node-local LRU + TTL cache ``SHA-256(key_id ‖ secret) -> Grant`` with a
  ``key_id -> digests`` index for per-key invalidation,
- per-key invalidation generations (a verification that started before a key changed
  never caches its stale snapshot),
- the ``trio.CapacityLimiter`` that bounds concurrent Argon2 jobs (default: CPU count),
  so memory stays ≤ 16 MiB × limit and the event loop never runs Argon2.

Messages (frozen ``attrs`` classes) go through a bounded memory channel: :class:`Verify`,
:class:`HashSecret`, :class:`Invalidate`. Two operations are deliberately synchronous
methods instead (DESIGN §1/§3 exception for speed): :meth:`AuthCache.lookup`, the cache-hit
path (no ``await``, a few microseconds), and :meth:`AuthCache.invalidate`, which must take
effect *at once* when a key is disabled or rotated. Both run on the Trio thread with no
``await`` inside, so they are atomic with respect to the actor.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import attrs
import trio
from argon2 import PasswordHasher

from tokmesh.actors.reply import Reply
from tokmesh.domain.apikey import ApiKey
from tokmesh.domain.argon2_hash import (
    Argon2Params,
    hash_secret_blocking,
    make_password_hasher,
    verify_any_blocking,
)
from tokmesh.domain.clock import Clock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.grants import Grant, make_grant

T = TypeVar("T")


@attrs.frozen(slots=True)
class Verify:
    """Verify ``secret`` against ``key``'s hashes; cache the grant if ``generation`` is current."""

    key: ApiKey
    secret: str = attrs.field(repr=False)
    digest: bytes = attrs.field(repr=False)
    generation: int
    reply: Reply[Grant | None] = attrs.field(repr=False, eq=False)


@attrs.frozen(slots=True)
class HashSecret:
    """Hash a new secret (key creation, rotation)."""

    secret: str = attrs.field(repr=False)
    reply: Reply[str] = attrs.field(repr=False, eq=False)


@attrs.frozen(slots=True)
class Invalidate:
    """Drop every cached grant of ``key_id`` (remote ``KEY_INVALIDATE`` broadcasts)."""

    key_id: str


Message = Verify | HashSecret | Invalidate


@attrs.define(slots=True)
class AuthCacheStats:
    """Counters for metrics (``tokmesh_auth_cache_*``) and tests."""

    hits: int = 0
    misses: int = 0
    verify_runs: int = 0
    hash_runs: int = 0
    inserts: int = 0
    evictions: int = 0
    invalidations: int = 0

    def hit_rate(self) -> float:
        """Hits / lookups since start (0.0 before the first lookup)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def _timed_verify(
    hasher: PasswordHasher, hashes: list[str], secret: str
) -> tuple[int | None, float]:
    start = time.perf_counter()
    result = verify_any_blocking(hasher, hashes, secret)
    return result, time.perf_counter() - start


class AuthCache:
    """The actor. Start :meth:`run` in a nursery before :meth:`verify` / :meth:`hash_secret`."""

    def __init__(
        self,
        *,
        clock: Clock,
        capacity: int = 10_000,
        ttl_ms: int = 60_000,
        argon2: Argon2Params | None = None,
        concurrency: int | None = None,
        password_hasher: PasswordHasher | None = None,
        on_argon2_seconds: Callable[[float], None] | None = None,
        queue_size: int = 1024,
        reply_timeout_s: float = 30.0,
    ) -> None:
        self._clock = clock
        self.capacity = capacity
        self.ttl_ms = ttl_ms
        self._hasher = password_hasher or make_password_hasher(argon2 or Argon2Params())
        self.limiter = trio.CapacityLimiter(concurrency or os.cpu_count() or 1)
        self._on_argon2 = on_argon2_seconds
        self._reply_timeout = reply_timeout_s
        self._entries: OrderedDict[bytes, Grant] = OrderedDict()
        self._by_key: dict[str, set[bytes]] = {}
        self._generations: dict[str, int] = {}
        # Identical concurrent misses share one Argon2 run (thundering herd after TTL).
        self._inflight: dict[tuple[bytes, int, int], list[Reply[Grant | None]]] = {}
        self._send, self._recv = trio.open_memory_channel[Message](queue_size)
        self.stats = AuthCacheStats()

    # --- synchronous fast paths ---------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, digest: bytes, now_ms: int) -> Grant | None:
        """The hit path: a live grant for ``digest`` or ``None``. Never awaits, never hashes."""
        grant = self._entries.get(digest)
        if grant is None:
            self.stats.misses += 1
            return None
        if now_ms >= grant.valid_until:
            self._remove(digest, grant.key_id)
            self.stats.misses += 1
            return None
        self._entries.move_to_end(digest)
        self.stats.hits += 1
        return grant

    def generation(self, key_id: str) -> int:
        """Current invalidation generation of ``key_id``."""
        return self._generations.get(key_id, 0)

    def invalidate(self, key_id: str) -> int:
        """Drop every grant of ``key_id`` now and bump its generation; returns the count."""
        self._generations[key_id] = self._generations.get(key_id, 0) + 1
        digests = self._by_key.pop(key_id, None)
        self.stats.invalidations += 1
        if not digests:
            return 0
        for digest in digests:
            self._entries.pop(digest, None)
        return len(digests)

    def clear(self) -> None:
        """Drop everything (e.g. after a restore replaced the key store)."""
        for key_id in list(self._by_key):
            self.invalidate(key_id)
        self._entries.clear()

    def post_invalidate(self, key_id: str) -> None:
        """Queue an :class:`Invalidate` message (for remote broadcasts; never blocks)."""
        try:
            self._send.send_nowait(Invalidate(key_id))
        except trio.WouldBlock:
            # Queue full: invalidating inline is equally correct and immediate.
            self.invalidate(key_id)

    def _remove(self, digest: bytes, key_id: str) -> None:
        self._entries.pop(digest, None)
        digests = self._by_key.get(key_id)
        if digests is not None:
            digests.discard(digest)
            if not digests:
                del self._by_key[key_id]

    def _insert(self, digest: bytes, grant: Grant, generation: int) -> bool:
        if generation != self._generations.get(grant.key_id, 0):
            return False  # the key changed while Argon2 ran: the snapshot is stale
        if grant.valid_until <= self._clock.now_ms():
            return False
        old = self._entries.pop(digest, None)
        if old is not None and old.key_id != grant.key_id:
            self._remove(digest, old.key_id)
        self._entries[digest] = grant
        self._by_key.setdefault(grant.key_id, set()).add(digest)
        self.stats.inserts += 1
        while len(self._entries) > self.capacity:
            victim, evicted = next(iter(self._entries.items()))
            self._remove(victim, evicted.key_id)
            self.stats.evictions += 1
        return True

    # --- message API ----------------------------------------------------------------------

    async def _ask(self, message: Message, reply: Reply[T]) -> T:
        try:
            with trio.fail_after(self._reply_timeout):
                await self._send.send(message)
                return await reply.wait()
        except trio.TooSlowError:
            raise TokMeshError(E.SYS_UNAVAILABLE, "authentication backend busy") from None

    async def verify(
        self, key: ApiKey, secret: str, digest: bytes, generation: int
    ) -> Grant | None:
        """Verify ``secret`` in a worker thread; on success cache and return the grant."""
        reply: Reply[Grant | None] = Reply()
        return await self._ask(Verify(key, secret, digest, generation, reply), reply)

    async def hash_secret(self, secret: str) -> str:
        """Argon2id PHC string for ``secret``, computed in a worker thread."""
        reply: Reply[str] = Reply()
        return await self._ask(HashSecret(secret, reply), reply)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The actor loop: dispatch messages; Argon2 jobs run as child tasks under the limiter."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            async for message in self._recv:
                if isinstance(message, Invalidate):
                    self.invalidate(message.key_id)
                elif isinstance(message, Verify):
                    ident = (message.digest, message.generation, message.key.version)
                    waiters = self._inflight.get(ident)
                    if waiters is not None:
                        waiters.append(message.reply)
                        continue
                    self._inflight[ident] = [message.reply]
                    nursery.start_soon(self._verify_job, message, ident)
                else:
                    nursery.start_soon(self._hash_job, message)

    async def _verify_job(self, message: Verify, ident: tuple[bytes, int, int]) -> None:
        try:
            key = message.key
            now = self._clock.now_ms()
            hashes = [key.secret_hash]
            # Verify against both hashes during grace, without early exit (02 §12.2).
            if key.old_secret_hash is not None and key.in_grace(now):
                hashes.append(key.old_secret_hash)
            matched, seconds = await trio.to_thread.run_sync(
                _timed_verify, self._hasher, hashes, message.secret, limiter=self.limiter
            )
            self.stats.verify_runs += 1
            if self._on_argon2 is not None:
                self._on_argon2(seconds)
            grant: Grant | None = None
            if matched is not None:
                grant = make_grant(key, matched == 1, self._clock.now_ms(), self.ttl_ms)
                self._insert(message.digest, grant, message.generation)
            for reply in self._inflight.pop(ident, ()):
                reply.set(grant)
        except Exception as exc:  # reported to every waiter; the actor keeps serving
            for reply in self._inflight.pop(ident, ()):
                reply.fail(
                    TokMeshError(
                        E.SYS_INTERNAL, f"api key verification failed: {type(exc).__name__}"
                    )
                )
        finally:
            self._inflight.pop(ident, None)

    async def _hash_job(self, message: HashSecret) -> None:
        try:
            phc = await trio.to_thread.run_sync(
                hash_secret_blocking, self._hasher, message.secret, limiter=self.limiter
            )
            self.stats.hash_runs += 1
            message.reply.set(phc)
        except Exception as exc:
            message.reply.fail(
                TokMeshError(E.SYS_INTERNAL, f"api key hashing failed: {type(exc).__name__}")
            )
