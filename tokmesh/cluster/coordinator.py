"""The cluster coordinator: one node, elected through etcd, that writes the shard map.

Election. ``<prefix>coordinator`` holds the coordinator's node ID and is attached to that
node's membership lease, so it vanishes when the node dies (its lease expires) or leaves
(its lease is revoked). Every node campaigns with a transaction "create if absent"; the
losers watch the key and campaign again as soon as it is deleted. The key is the whole
election: no extra lease, no etcd election API, and a coordinator can never outlive its
membership.

The coordinator's job. At gaining the role and after every change of the live member
table or of ``<prefix>departed/``, it reads the stored map and the departed nodes, asks
:func:`~tokmesh.cluster.shard_map.next_map` what to write next, and writes it with a
compare-and-swap: the map key's ``mod_revision`` must be the one it read (another writer
loses nothing), and the coordinator key must still name this node (a coordinator that
lost the role without noticing yet cannot write). A lost race is re-read and recomputed.
A write whose outcome is unknown (etcd did not answer in time) is never blindly repeated:
the next pass reads the map first and sees whether it landed.

``<prefix>departed/<node_id>`` records a node that left for good (:func:`leave`); its
shards move to live nodes. A node that is merely down keeps its shards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Protocol

import attrs
import orjson
import trio

from tokmesh.cluster import etcd_wire as wire
from tokmesh.cluster.etcd import (
    Backoff,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    WatchEvents,
    WatchUpdate,
)
from tokmesh.cluster.membership import MemberRecord, log_parity, parity
from tokmesh.cluster.rebalance import Rebalance, RebalancePeers
from tokmesh.cluster.shard_map import ReplicaPosition, ShardMap, ShardMapError, next_map
from tokmesh.cluster.shard_map_watch import SHARDMAP_KEY

__all__ = [
    "Coordinator",
    "CoordinatorSettings",
    "LeaseHolder",
    "leave",
    "read_departed",
]

log = logging.getLogger("tokmesh.cluster.coordinator")


class LeaseHolder(Protocol):
    """What the coordinator needs of this node's membership (``Membership`` fits).

    ``connected`` is set while ``lease_id`` is a live lease holding the member key.
    """

    lease_id: int
    connected: trio.Event


@attrs.frozen(slots=True)
class CoordinatorSettings:
    """What :class:`Coordinator` needs; the composition root maps ``cluster.*`` onto it."""

    node_id: str
    prefix: str = "/tokmesh/"
    expect_nodes: int = 1
    replication_factor: int = 1
    # After taking over an existing map, wait this long before changing it, so the
    # member table can settle (a new coordinator's first view may still be moving).
    settle: float = 1.0
    # How often the coordinator checks that its membership lease is still the one it
    # campaigned with (etcd deletes the key on expiry, but an unreachable etcd says nothing).
    lease_check_interval: float = 0.25
    retry_initial: float = 0.2
    retry_max: float = 5.0

    @property
    def coordinator_key(self) -> bytes:
        """The election key: the coordinator's node ID, on its membership lease."""
        return (self.prefix + "coordinator").encode()

    @property
    def shardmap_key(self) -> bytes:
        """Where the shard map lives."""
        return (self.prefix + SHARDMAP_KEY).encode()

    @property
    def departed_prefix(self) -> bytes:
        """The prefix of the records of nodes that left for good."""
        return (self.prefix + "departed/").encode()

    @property
    def draining_prefix(self) -> bytes:
        """The prefix of the keys of nodes moving their shards away (on their lease)."""
        return (self.prefix + "draining/").encode()


#: ``positions(nodes)`` -> what each of ``nodes`` reports holding per shard (nodes that
#: do not answer are left out: they cannot be promoted).
PositionsOf = Callable[[Collection[str]], Awaitable[Mapping[str, Mapping[int, ReplicaPosition]]]]


class _NotCoordinator(Exception):
    """A write found the coordinator key naming another node (or nobody)."""


async def leave(
    client: EtcdClient,
    node_id: str,
    *,
    prefix: str = "/tokmesh/",
    wall_clock: Callable[[], float] = time.time,
) -> None:
    """Record that ``node_id`` left the cluster for good; the coordinator moves its shards.

    Only the record is written: the node's lease and member key are left alone (a node
    leaving gracefully revokes its own lease; a dead one's expires).
    """
    key = (prefix + "departed/").encode() + node_id.encode()
    value = orjson.dumps({"node_id": node_id, "left_at": wall_clock()})
    # Writing the record twice is harmless, so a write of unknown outcome is repeated.
    for attempt in range(3):
        try:
            await client.put(key, value)
            break
        except EtcdUnavailable:
            if attempt == 2:
                raise
            await trio.sleep(0.2)
    log.info("node %s recorded as departed at %s", node_id, key.decode())


async def read_departed(client: EtcdClient, prefix: str = "/tokmesh/") -> frozenset[str]:
    """The IDs of every node recorded as departed."""
    start = (prefix + "departed/").encode()
    res = await client.range(start, wire.prefix_range_end(start))
    return frozenset(kv.key[len(start) :].decode("utf-8", "replace") for kv in res.kvs)


def _host(address: str) -> str:
    """The host part of ``host:port`` (``[v6]:port`` too), for placing backups apart."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host.strip("[]")


class Coordinator:
    """Campaigns for the coordinator role and, while holding it, keeps the shard map right.

    Feed it the live member table through :meth:`members_changed` (the ``on_change`` of a
    :class:`~tokmesh.cluster.membership.MemberTable`); until the first table arrives the
    coordinator writes nothing. :attr:`coordinator_id` is the current coordinator as this
    node knows it (None while unknown), :attr:`is_coordinator` whether it is this node.
    """

    def __init__(
        self,
        client: EtcdClient,
        settings: CoordinatorSettings,
        lease: LeaseHolder,
        positions: PositionsOf | None = None,
        peers: RebalancePeers | None = None,
    ) -> None:
        self.client = client
        #: Moves shards with their data (None: shards cannot move, replication is off).
        self.rebalance: Rebalance | None = Rebalance(self, peers) if peers is not None else None
        self._rebalance_wanted = trio.Event()
        #: Asks replicas what they hold, before a failover picks the heir of a shard.
        self.positions = positions
        self.settings = settings
        self.lease = lease
        self.coordinator_id: str | None = None
        self.is_coordinator = False
        # The last map this node wrote (None if it never wrote one).
        self.last_written: ShardMap | None = None
        # Live node -> host; None until the member table reported once.
        self._live: dict[str, str] | None = None
        self._wake = trio.Event()
        self._node = settings.node_id.encode()
        #: Nodes moving their shards away before they stop or leave: placement and
        #: failover give them nothing (``<prefix>draining/<node_id>``).
        self.draining: frozenset[str] = frozenset()

    # -- inputs ---------------------------------------------------------------------------

    def members_changed(self, members: Mapping[str, MemberRecord]) -> None:
        """Take the live member table; a coordinator reconsiders the map."""
        self._live = {node: _host(rec.advertise_address) for node, rec in members.items()}
        self._wake.set()

    # -- election -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Campaign, lead or follow, forever; ``task_status.started`` at once.

        etcd errors are logged and retried with backoff (this node is then neither
        coordinator nor sure who is).
        """
        task_status.started()
        backoff = Backoff(self.settings.retry_initial, self.settings.retry_max)
        while True:
            try:
                await self._campaign()
                backoff.reset()
            except EtcdError as exc:
                self._set_role(False, None)
                delay = backoff.next_delay()
                log.warning(
                    "coordinator election on %s failed (%s: %s); retrying in %.1fs",
                    self.settings.coordinator_key.decode(), type(exc).__name__, exc, delay,
                )  # fmt: skip
                await trio.sleep(delay)

    def _set_role(self, leading: bool, holder: str | None) -> None:
        self.is_coordinator = leading
        self.coordinator_id = holder

    async def _campaign(self) -> None:
        """One round: try to take the key, then lead or follow until the round ends."""
        await self.lease.connected.wait()
        lease = self.lease.lease_id
        key = self.settings.coordinator_key
        res = await self.client.txn(
            [wire.compare(key, "CREATE", "EQUAL", 0)],
            [wire.op_put(key, self._node, lease=lease)],
            [wire.op_range(key)],
        )
        if res.succeeded:
            await self._lead(lease, res.header.revision)
            return
        found = res.responses[0]
        held = found.kvs[0] if isinstance(found, wire.RangeResult) and found.kvs else None
        if held is None:
            return  # deleted in between: campaign again
        if held.value == self._node:
            if held.lease == lease:
                # An earlier attempt of ours landed although its answer was lost.
                await self._lead(lease, res.header.revision)
                return
            # Ours, from a lease this node no longer holds: clear it rather than wait
            # for that lease to expire.
            await self.client.txn(
                [wire.compare(key, "MOD", "EQUAL", held.mod_revision)], [wire.op_delete(key)]
            )
            return
        await self._follow(held, res.header.revision)

    async def _follow(self, held: wire.KeyValue, revision: int) -> None:
        """Watch the key until it is deleted, tracking who holds it."""
        self._set_role(False, held.value.decode("utf-8", "replace"))
        gone = trio.Event()

        async def on_update(update: WatchUpdate) -> None:
            kvs = (
                [e.kv for e in update.events if e.type == "PUT"]
                if isinstance(update, WatchEvents)
                else list(update.kvs)
            )
            deleted = isinstance(update, WatchEvents) and update.events[-1].type == "DELETE"
            if deleted or not kvs:
                self.coordinator_id = None
                gone.set()
            else:
                self.coordinator_id = kvs[-1].value.decode("utf-8", "replace")

        await self._watch_until(self.settings.coordinator_key, None, on_update, revision + 1, gone)

    async def _watch_until(
        self,
        key: bytes,
        range_end: bytes | None,
        on_update: Callable[[WatchUpdate], Awaitable[None]],
        start_revision: int,
        done: trio.Event,
    ) -> None:
        """Run a watch until ``done`` is set; an error the watch gives up on is raised."""
        failure: EtcdError | None = None

        async def watch() -> None:
            nonlocal failure
            try:
                await self.client.watch(key, range_end, on_update, start_revision=start_revision)
            except EtcdError as exc:
                failure = exc
                done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await done.wait()
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    # -- leading --------------------------------------------------------------------------

    async def _lead(self, lease: int, revision: int) -> None:
        """Hold the role until the key, the lease or a write says it is gone."""
        self._set_role(True, self.settings.node_id)
        log.info(
            "node %s is now the cluster coordinator (key %s, lease %x)",
            self.settings.node_id, self.settings.coordinator_key.decode(), lease,
        )  # fmt: skip
        lost = trio.Event()
        reason = ["unknown"]

        def lose(why: str) -> None:
            if not lost.is_set():
                reason[0] = why
                lost.set()

        async def on_key(update: WatchUpdate) -> None:
            if isinstance(update, WatchEvents):
                last = update.events[-1]
                if last.type == "DELETE":
                    lose("the coordinator key was deleted (lease expired or revoked)")
                elif last.kv.value != self._node:
                    lose(f"the coordinator key now names {last.kv.value!r}")
            elif not any(kv.value == self._node for kv in update.kvs):
                lose("the coordinator key no longer names this node")

        async def on_departed(update: WatchUpdate) -> None:
            self._wake.set()

        async def on_draining(update: WatchUpdate) -> None:
            await self._read_draining()
            self.want_rebalance()

        async def rebalance_forever() -> None:
            try:
                await self._rebalance_loop()
            except _NotCoordinator as exc:
                lose(str(exc))
            except EtcdError as exc:
                lose(f"rebalance could not use etcd: {exc}")

        async def check_lease() -> None:
            while self.lease.connected.is_set() and self.lease.lease_id == lease:
                await trio.sleep(self.settings.lease_check_interval)
            lose("this node's membership lease is gone")

        async def reconcile_forever() -> None:
            try:
                await self._reconcile_loop()
            except _NotCoordinator as exc:
                lose(str(exc))
            except EtcdError as exc:
                lose(f"cannot read the shard map: {exc}")

        async def watch(
            key: bytes, end: bytes | None, on_update: Callable[[WatchUpdate], Awaitable[None]]
        ) -> None:
            try:
                await self.client.watch(key, end, on_update, start_revision=revision + 1)
            except EtcdError as exc:
                lose(f"the watch on {key.decode()} failed: {exc}")

        departed = self.settings.departed_prefix
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(check_lease)
                nursery.start_soon(reconcile_forever)
                nursery.start_soon(watch, self.settings.coordinator_key, None, on_key)
                nursery.start_soon(watch, departed, wire.prefix_range_end(departed), on_departed)
                if self.rebalance is not None:
                    draining = self.settings.draining_prefix
                    await self._read_draining()
                    nursery.start_soon(
                        watch, draining, wire.prefix_range_end(draining), on_draining
                    )
                    nursery.start_soon(rebalance_forever)
                await lost.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._set_role(False, None)
        log.warning(
            "node %s is no longer the cluster coordinator: %s", self.settings.node_id, reason[0]
        )

    async def _reconcile_loop(self) -> None:
        """Reconcile at once, then after every wake-up; etcd errors are retried."""
        while self._live is None:
            await self._wake.wait()
            self._wake = trio.Event()
        # The even-node check on gaining the role (the member table runs it on changes).
        log_parity(parity(len(self._live)))
        if self.settings.settle > 0 and await self.client.get(self.settings.shardmap_key):
            await trio.sleep(self.settings.settle)
        backoff = Backoff(self.settings.retry_initial, self.settings.retry_max)
        while True:
            # A fresh event before reading: a change during the pass triggers another.
            self._wake = trio.Event()
            try:
                written = await self.reconcile()
                backoff.reset()
                if self.rebalance is not None and self._idle_nodes(written, await self.read_map()):
                    self.want_rebalance()
            except EtcdError as exc:
                delay = backoff.next_delay()
                log.warning("shard map reconcile failed (%s); retrying in %.1fs", exc, delay)
                await trio.sleep(delay)
                continue
            await self._wake.wait()

    async def reconcile(self) -> ShardMap | None:
        """One pass: read the map and departed nodes, write the next map if there is one.

        Returns the map written (None when nothing changes). Raises :class:`_NotCoordinator`
        when the write finds another coordinator, :class:`EtcdError` on other failures.
        """
        settings = self.settings

        async def compute(current: ShardMap | None) -> ShardMap | None:
            live = dict(self._live or {})
            departed = await read_departed(self.client, settings.prefix)
            positions = await self._heir_positions(current, live)
            return next_map(
                current,
                live,
                departed=departed,
                expect_nodes=settings.expect_nodes,
                replication_factor=settings.replication_factor,
                hosts=live,
                positions=positions,
            )

        return await self.update_map(compute)

    # -- moving shards ----------------------------------------------------------------------

    def want_rebalance(self) -> None:
        """Ask for a rebalance (run by the coordinator as soon as the current one ends)."""
        self._rebalance_wanted.set()

    async def _read_draining(self) -> None:
        start = self.settings.draining_prefix
        res = await self.client.range(start, wire.prefix_range_end(start))
        self.draining = frozenset(kv.key[len(start) :].decode("utf-8", "replace") for kv in res.kvs)

    async def _rebalance_loop(self) -> None:
        """Run a rebalance whenever one is wanted: asked for, a node draining, or a live
        node owning nothing (it joined, or came back after its shards failed over)."""
        assert self.rebalance is not None
        while True:
            await self._rebalance_wanted.wait()
            self._rebalance_wanted = trio.Event()
            live = dict(self._live or {})
            await self.rebalance.run(live, self.draining)

    def _idle_nodes(self, written: ShardMap | None, current: ShardMap | None) -> bool:
        shard_map = written or current
        if shard_map is None or self._live is None:
            return False
        owning = set(shard_map.owners)
        return any(n not in owning and n not in self.draining for n in self._live)

    async def read_map(self) -> ShardMap | None:
        """The shard map stored in etcd (None if there is none or it does not decode)."""
        stored = await self.client.get(self.settings.shardmap_key)
        if stored is None:
            return None
        try:
            return ShardMap.decode(stored.value)
        except ShardMapError:
            return None

    async def update_map(
        self, compute: Callable[[ShardMap | None], Awaitable[ShardMap | None]]
    ) -> ShardMap | None:
        """Read the map, ``compute`` the next one and write it with a compare-and-swap;
        a lost race is recomputed from the map that won. Returns the map written (None
        when ``compute`` says nothing changes)."""
        settings = self.settings
        key = settings.shardmap_key
        backoff = Backoff(0.05, settings.retry_max)
        pending: ShardMap | None = None
        while True:
            stored = await self.client.get(key)
            if pending is not None and stored is not None and stored.value == pending.encode():
                # The write whose answer was lost did land.
                return self._wrote(pending)
            current: ShardMap | None = None
            if stored is not None:
                try:
                    current = ShardMap.decode(stored.value)
                except ShardMapError as exc:
                    # Overwriting would lose the epochs every node fences with; a human
                    # must restore a good map (nodes keep routing with their last one).
                    log.error(
                        "shard map at %s does not decode (%s); the coordinator will not "
                        "overwrite it",
                        key.decode(), exc,
                    )  # fmt: skip
                    return None
            nxt = await compute(current)
            if nxt is None:
                return None
            try:
                res = await self.client.txn(
                    [
                        wire.compare(key, "MOD", "EQUAL", stored.mod_revision if stored else 0),
                        wire.compare(settings.coordinator_key, "VALUE", "EQUAL", self._node),
                    ],
                    [wire.op_put(key, nxt.encode())],
                    [wire.op_range(settings.coordinator_key)],
                )
            except EtcdUnavailable as exc:
                pending = nxt
                delay = backoff.next_delay()
                log.warning(
                    "shard map version %d write outcome unknown (%s); re-reading in %.2fs",
                    nxt.version, exc, delay,
                )  # fmt: skip
                await trio.sleep(delay)
                continue
            if res.succeeded:
                return self._wrote(nxt)
            found = res.responses[0]
            holder = (
                found.kvs[0].value if isinstance(found, wire.RangeResult) and found.kvs else b""
            )
            if holder != self._node:
                raise _NotCoordinator(f"the coordinator key names {holder!r}, not this node")
            pending = None
            log.info("shard map changed while computing version %d; re-reading", nxt.version)
            await trio.sleep(backoff.next_delay())

    async def _heir_positions(
        self, current: ShardMap | None, live: Mapping[str, str]
    ) -> Mapping[str, Mapping[int, ReplicaPosition]] | None:
        """What the live backups of shards with a gone owner hold (None: nobody to ask)."""
        if current is None or self.positions is None:
            return None
        candidates = {
            node
            for shard, owner in enumerate(current.owners)
            if owner not in live
            for node in current.backups[shard]
            if node in live
        }
        if not candidates:
            return None
        return await self.positions(candidates)

    def _wrote(self, written: ShardMap) -> ShardMap:
        self.last_written = written
        log.info(
            "wrote shard map version %d to %s (owners: %s)",
            written.version, self.settings.shardmap_key.decode(), written.counts(),
        )  # fmt: skip
        return written

    async def resign(self) -> None:
        """Give the role up now (graceful shutdown): another node takes over at once.

        Cancel :meth:`run` first, or this node may campaign again. Deletes the key only
        if it still names this node.
        """
        key = self.settings.coordinator_key
        await self.client.txn(
            [wire.compare(key, "VALUE", "EQUAL", self._node)], [wire.op_delete(key)]
        )
        self._set_role(False, None)
