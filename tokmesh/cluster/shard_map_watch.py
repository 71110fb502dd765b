"""Every node's copy of the shard map: read ``<prefix>shardmap``, then follow it.

The request path routes with :attr:`ShardMapWatcher.current` and never waits on etcd; this
task is the only thing that replaces it. A stored value that does not decode is refused
with an ERROR naming the key and the reason, and the last good map stays in force: a bad
write (a tool, a bug, a corrupted restore) must not take routing down with it. A map
whose version is lower than the one in force is ignored, because versions only grow under
the coordinator's compare-and-swap and an older one can only come from a stale writer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from tokmesh.cluster import etcd_wire as wire
from tokmesh.cluster.etcd import Backoff, EtcdClient, EtcdError, WatchEvents, WatchUpdate
from tokmesh.cluster.shard_map import ShardMap, ShardMapError

__all__ = ["SHARDMAP_KEY", "ShardMapWatcher"]

log = logging.getLogger("tokmesh.cluster.shard_map")

# The key's name under the cluster prefix.
SHARDMAP_KEY = "shardmap"


class ShardMapWatcher:
    """Keeps :attr:`current`, the newest good shard map in etcd (None until one exists).

    ``on_map(map)`` is called on the Trio thread, in order, for each map put in force.
    """

    def __init__(
        self,
        client: EtcdClient,
        prefix: str = "/tokmesh/",
        *,
        on_map: Callable[[ShardMap], None] | None = None,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
    ) -> None:
        self.client = client
        self.key = (prefix + SHARDMAP_KEY).encode()
        self.current: ShardMap | None = None
        # etcd revision of the value in force (0 = none yet).
        self.revision = 0
        self._on_map = on_map
        self._retry = (retry_initial, retry_max)
        self._changed = trio.Event()

    def offer(self, kv: wire.KeyValue) -> bool:
        """Consider one stored value; True if it is now the map in force."""
        try:
            fresh = ShardMap.decode(kv.value)
        except ShardMapError as exc:
            log.error(
                "refusing undecodable shard map at %s (revision %d): %s; keeping version %s",
                self.key.decode(), kv.mod_revision, exc,
                self.current.version if self.current else "none",
            )  # fmt: skip
            return False
        held = self.current
        if held is not None and fresh.version <= held.version:
            if fresh.version < held.version:
                log.warning(
                    "ignoring shard map version %d at %s: version %d is already in force",
                    fresh.version, self.key.decode(), held.version,
                )  # fmt: skip
            return False
        self.current = fresh
        self.revision = kv.mod_revision
        log.info(
            "shard map version %d in force (%d nodes own shards)",
            fresh.version, len(fresh.counts()),
        )  # fmt: skip
        if self._on_map is not None:
            self._on_map(fresh)
        self._changed.set()
        self._changed = trio.Event()
        return True

    async def wait_for_version(self, version: int) -> ShardMap:
        """Wait until a map of at least ``version`` is in force and return it."""
        while self.current is None or self.current.version < version:
            await self._changed.wait()
        return self.current

    async def _apply(self, update: WatchUpdate) -> None:
        if isinstance(update, WatchEvents):
            for event in update.events:
                if event.type == "DELETE":
                    # Routing needs some map; an old one is better than none.
                    log.warning(
                        "shard map key %s was deleted; keeping the map in force", self.key.decode()
                    )
                else:
                    self.offer(event.kv)
        else:
            for kv in update.kvs:
                self.offer(kv)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the map, then follow it; ``task_status.started`` after the first read.

        Until etcd answers, the read is retried with backoff (each failure logged), and
        :attr:`current` stays None.
        """
        backoff = Backoff(*self._retry)
        while True:
            try:
                first = await self.client.range(self.key)
                break
            except EtcdError as exc:
                delay = backoff.next_delay()
                log.warning("cannot read the shard map (%s); retrying in %.1fs", exc, delay)
                await trio.sleep(delay)
        for kv in first.kvs:
            self.offer(kv)
        task_status.started()
        await self.client.watch(
            self.key, None, self._apply, start_revision=first.header.revision + 1
        )
