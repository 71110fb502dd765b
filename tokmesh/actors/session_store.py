"""The session store: shards + shared committed state + the API-key repository.

This is the object services talk to. Reads go straight to :class:`StoreState`; mutations
are routed to the shard that owns the session's user (``hash(user_id) % shards``) and
awaited through their :class:`Reply`. API keys are few and low-rate: they are logged as
``KEY_PUT`` records straight through the WAL writer and applied on commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from tokmesh.actors.messages import Barrier, Message
from tokmesh.actors.reply import Reply
from tokmesh.actors.state import StoreState
from tokmesh.actors.store import ChangeHook, SessionShard
from tokmesh.actors.wal_writer import WalWriter
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.storage.wal_codec import RecordType, WalRecord

if TYPE_CHECKING:
    from tokmesh.domain.apikey import ApiKey


class SessionStore:
    """Routes mutations to shard actors; implements the ``KeyRepository`` protocol."""

    def __init__(
        self,
        state: StoreState,
        wal: WalWriter,
        shard_count: int = 4,
        on_change: ChangeHook | None = None,
    ) -> None:
        self.state = state
        self.wal = wal
        self.shards = [SessionShard(i, state, wal, on_change) for i in range(shard_count)]
        self._n = shard_count

    # -- actors ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every shard actor until :meth:`close`."""
        async with trio.open_nursery() as nursery:
            for shard in self.shards:
                await nursery.start(shard.run)
            task_status.started()

    async def close(self) -> None:
        """Stop the shards after their queued messages are committed."""
        for shard in self.shards:
            await shard.close()

    def shard_for(self, user_id: str) -> SessionShard:
        """The shard that owns every session of ``user_id``."""
        return self.shards[hash(user_id) % self._n]

    async def call(self, user_id: str, msg: Message) -> Any:
        """Send ``msg`` to the owner of ``user_id`` and wait for its reply."""
        await self.shard_for(user_id).send(msg)
        return await msg.reply.wait()  # type: ignore[union-attr]

    async def barrier(self) -> None:
        """Wait until everything sent to any shard so far has been committed."""
        for shard in self.shards:
            reply: Reply[None] = Reply()
            await shard.send(Barrier(reply))
            await reply.wait()

    # -- KeyRepository -------------------------------------------------------------------

    def get_key(self, key_id: str) -> ApiKey | None:
        """The committed API key, or ``None``."""
        return self.state.keys.get(key_id)

    def list_keys(self) -> list[ApiKey]:
        """Every API key (committed)."""
        return list(self.state.keys.values())

    async def put_key(self, key: ApiKey) -> None:
        """Durably upsert an API key (WAL ``KEY_PUT``), then apply it."""
        reply: Reply[None] = Reply()
        keys = self.state.keys
        state = self.state

        def on_commit(position: int) -> None:
            keys[key.key_id] = key
            state.position = position
            reply.set(None)

        record = WalRecord(
            type=RecordType.KEY_PUT,
            ts=key.created_at,
            entity_id=key.key_id,
            version=key.version,
            body=key.to_record(),
        )
        try:
            await self.wal.append(record, on_commit, reply.fail)
        except TokMeshError as err:
            reply.fail(err)
        try:
            await reply.wait()
        except TokMeshError as err:
            if err.error is E.SYS_UNAVAILABLE:
                raise
            raise TokMeshError(E.SYS_STORAGE, "could not persist api key") from err
