"""Moving shards, with their data, to where placement puts them (the coordinator's job).

A move of shard S from owner A to node T has two phases:

1. **Copy.** The map gains T as one more backup of S. A sees it and seeds T: a full copy
   of S, then every later change, in one ordered stream (``replication``). Requests keep
   going to A meanwhile.
2. **Switch.** Once T reports a full copy of S at S's current epoch, A is asked to hand
   S over: it stops answering for S, lets the writes it already accepted commit, and
   waits until T confirmed everything queued for it. Then the map gives S to T with a
   new epoch (a compare-and-swap that also checks A still owned S at that epoch), and A
   stays a backup. Requests that reach A for S during the switch wait for the new map
   and are then sent to T, so reads and writes see a short pause, not an error. A
   switch that never comes (the coordinator died) is called off by A after checking etcd.

Shards move a few at a time (``concurrency``); the owner caps the bytes of full copies
at ``cluster.rebalance.max_rate``. One rebalance runs at a time; its progress is kept
for ``cluster status``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import trio

from tokmesh.cluster.placement import place
from tokmesh.cluster.shard_map import ReplicaPosition, ShardMap, switched, with_incoming
from tokmesh.domain.errors import TokMeshError
from tokmesh.domain.shards import SHARDS

if TYPE_CHECKING:
    from tokmesh.cluster.coordinator import Coordinator

__all__ = ["Rebalance", "RebalancePeers"]

log = logging.getLogger("tokmesh.cluster.rebalance")

#: Shards moved together.
CONCURRENCY = 8
#: How long a new copy may take to be reported complete before its shard is skipped.
SYNC_TIMEOUT = 60.0


class RebalancePeers(Protocol):
    """What a rebalance asks of the nodes (the cluster node implements it over RPC)."""

    async def positions(
        self, nodes: Collection[str]
    ) -> Mapping[str, Mapping[int, ReplicaPosition]]:
        """What each node holds per shard."""
        ...

    async def handover(self, owner: str, epochs: Mapping[int, int], to: str) -> None:
        """Ask ``owner`` to hand the shards (at these epochs) over to ``to``."""
        ...


class Rebalance:
    """One coordinator's rebalances (see the module doc)."""

    def __init__(
        self,
        coordinator: Coordinator,
        peers: RebalancePeers,
        *,
        concurrency: int = CONCURRENCY,
        sync_timeout: float = SYNC_TIMEOUT,
    ) -> None:
        self.coordinator = coordinator
        self.peers = peers
        self.concurrency = concurrency
        self.sync_timeout = sync_timeout
        self.running = False
        self.progress: dict[str, Any] = {"state": "idle"}

    async def run(self, live: Mapping[str, str], draining: Collection[str] = ()) -> dict[str, Any]:
        """Move every live owner's shard that placement over the live, non-draining
        nodes gives to another node; returns the final progress."""
        if self.running:
            return {"state": "already_running", **self.progress}
        self.running = True
        try:
            return await self._run(live, frozenset(draining))
        finally:
            self.running = False

    async def _run(self, live: Mapping[str, str], draining: frozenset[str]) -> dict[str, Any]:
        settings = self.coordinator.settings
        eligible = {node: host for node, host in live.items() if node not in draining}
        current = await self.coordinator.read_map()
        if current is None or not eligible:
            self.progress = {"state": "nothing_to_do"}
            return self.progress
        target = place(
            eligible.keys(), replication_factor=settings.replication_factor, hosts=eligible
        )
        moves = {
            shard: target.owners[shard]
            for shard in range(SHARDS)
            if current.owners[shard] in live and current.owners[shard] != target.owners[shard]
        }
        started = time.time()
        self.progress = {
            "state": "running",
            "total": len(moves),
            "moved": 0,
            "skipped": 0,
            "started_at": started,
        }
        log.info("rebalance: %d shards to move (draining: %s)", len(moves), sorted(draining))
        order = sorted(moves)
        for i in range(0, len(order), self.concurrency):
            batch = {shard: moves[shard] for shard in order[i : i + self.concurrency]}
            moved = await self._move(batch)
            self.progress["moved"] += moved
            self.progress["skipped"] += len(batch) - moved
        self.progress["state"] = "done"
        self.progress["elapsed_seconds"] = round(time.time() - started, 3)
        log.info("rebalance done: %s", self.progress)
        return self.progress

    async def _move(self, targets: dict[int, str]) -> int:
        """Move one batch; returns how many shards switched."""
        coordinator = self.coordinator
        await coordinator.update_map(_const(lambda m: with_incoming(m, targets) if m else None))
        ready = await self._wait_copied(targets)
        current = await coordinator.read_map()
        if current is None:
            return 0
        pairs: dict[tuple[str, str], dict[int, int]] = {}
        for shard in ready:
            owner = current.owners[shard]
            if owner == targets[shard]:
                continue
            pairs.setdefault((owner, targets[shard]), {})[shard] = current.epochs[shard]
        handed: dict[int, tuple[str, int, str]] = {}
        for (owner, to), epochs in pairs.items():
            try:
                await self.peers.handover(owner, epochs, to)
            except TokMeshError as exc:
                log.warning("rebalance: %s could not hand %s over: %s", owner, sorted(epochs), exc)
                continue
            for shard, epoch in epochs.items():
                handed[shard] = (owner, epoch, to)
        if not handed:
            return 0
        width = max(0, coordinator.settings.replication_factor - 1)
        written = await coordinator.update_map(
            _const(lambda m: switched(m, handed, width) if m else None)
        )
        if written is None:
            return 0
        return sum(1 for shard, (_, _, to) in handed.items() if written.owners[shard] == to)

    async def _wait_copied(self, targets: dict[int, str]) -> set[int]:
        """The shards whose target reports a full copy at the shard's current epoch."""
        deadline = trio.current_time() + self.sync_timeout
        ready: set[int] = set()
        while True:
            current = await self.coordinator.read_map()
            if current is None:
                return ready
            positions = await self.peers.positions(set(targets.values()))
            for shard, node in targets.items():
                pos = positions.get(node, {}).get(shard)
                if pos is not None and pos[2] and pos[0] == current.epochs[shard]:
                    ready.add(shard)
            if len(ready) == len(targets) or trio.current_time() >= deadline:
                if len(ready) < len(targets):
                    log.warning(
                        "rebalance: no complete copy of shards %s in time; skipped",
                        sorted(set(targets) - ready),
                    )
                return ready
            await trio.sleep(0.1)


def _const(
    compute: Callable[[ShardMap | None], ShardMap | None],
) -> Callable[[ShardMap | None], Awaitable[ShardMap | None]]:
    """An async ``compute`` for :meth:`Coordinator.update_map` from a plain one."""

    async def run(current: ShardMap | None) -> ShardMap | None:
        return compute(current)

    return run
