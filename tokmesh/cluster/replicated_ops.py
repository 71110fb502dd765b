"""Local session operations on a node whose shards have replicas: a write is answered
only once a replica has it, when it must be.

A revocation (one session or all of a user's) is acknowledged only after at least one
replica of its shard confirmed having written it to its own WAL: an owner that dies
right after answering cannot take the revocation with it, and the promoted replica
refuses the token as the owner did. Creates, renews, touches and updates are answered
after the owner's own commit and reach the replicas asynchronously (what a failover
can lose is bounded by the replication lag), unless ``cluster.replication.ack:
replica`` asks every write to wait the same way.

This subclass is the one place those waits live: forwarded operations and the ones
this node runs for its own fronts both call the local implementation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tokmesh.actors.session_store import SessionStore
from tokmesh.domain.clock import Clock
from tokmesh.domain.ids import normalize_session_id
from tokmesh.domain.session import Session
from tokmesh.domain.session_settings import SessionSettings
from tokmesh.domain.shards import shard_of
from tokmesh.services.session_ops import CreateResult, RequestContext
from tokmesh.services.sessions import SessionService

__all__ = ["ReplicatedSessions"]

#: ``wait(shard)`` returns once a replica of ``shard`` confirmed everything committed so
#: far (``shard`` None: every shard this node owns).
WaitReplicated = Callable[[int | None], Awaitable[None]]


def _shard(session_id: str) -> int:
    sid = normalize_session_id(session_id)
    return shard_of(sid if sid is not None else session_id)


class ReplicatedSessions(SessionService):
    """:class:`SessionService` whose writes wait for a replica as described above."""

    def __init__(
        self,
        store: SessionStore,
        settings: SessionSettings,
        clock: Clock,
        wait: WaitReplicated,
        *,
        every_write: bool = False,
    ) -> None:
        super().__init__(store, settings, clock, cluster=True)
        self._wait = wait
        self.every_write = every_write

    async def _written(self, shard: int | None) -> None:
        if self.every_write:
            await self._wait(shard)

    async def create(self, ctx: RequestContext, user_id: str | None, **kwargs: Any) -> CreateResult:
        """Create; with ``ack: replica`` answered once a replica has the session."""
        result = await super().create(ctx, user_id, **kwargs)
        await self._written(shard_of(result.session.id))
        return result

    async def validate_touch(self, ctx: RequestContext, token: str) -> Session:
        """Validate with touch; with ``ack: replica`` the touch is replicated first."""
        session = await super().validate_touch(ctx, token)
        await self._written(shard_of(session.id))
        return session

    async def touch(self, ctx: RequestContext, session_id: str) -> Session:
        """Touch; with ``ack: replica`` answered once a replica has it."""
        session = await super().touch(ctx, session_id)
        await self._written(shard_of(session.id))
        return session

    async def renew(
        self,
        ctx: RequestContext,
        session_id: str,
        ttl_seconds: int | None,
        expected_version: int | None = None,
    ) -> Session:
        """Renew; with ``ack: replica`` answered once a replica has it."""
        session = await super().renew(ctx, session_id, ttl_seconds, expected_version)
        await self._written(shard_of(session.id))
        return session

    async def update(self, ctx: RequestContext, session_id: str, **kwargs: Any) -> Session:
        """Update; with ``ack: replica`` answered once a replica has it."""
        session = await super().update(ctx, session_id, **kwargs)
        await self._written(shard_of(session.id))
        return session

    async def put(self, ctx: RequestContext, session_id: str, **kwargs: Any) -> bool:
        """Redis SET; with ``ack: replica`` answered once a replica has it."""
        created = await super().put(ctx, session_id, **kwargs)
        await self._written(_shard(session_id))
        return created

    async def revoke(self, ctx: RequestContext, session_id: str, *, sync: bool = False) -> bool:
        """Revoke, answered once a replica has the tombstone (also when this call found
        the session already revoked: the earlier tombstone may still be in flight)."""
        done = await super().revoke(ctx, session_id, sync=sync)
        await self._wait(_shard(session_id))
        return done

    async def revoke_user(
        self,
        ctx: RequestContext,
        user_id: str,
        except_session_id: str | None = None,
        *,
        sync: bool = False,
    ) -> int:
        """Revoke a user's sessions held here, answered once replicas have the tombstones."""
        count = await super().revoke_user(ctx, user_id, except_session_id, sync=sync)
        await self._wait(None)
        return count
