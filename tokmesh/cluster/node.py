"""One node's part in the cluster: the actors that make several processes one service.

:class:`ClusterNode` runs, next to the storage engine and the listeners:

* the **cluster port** (mTLS, :mod:`tokmesh.cluster.rpc_server`): forwarded session
  operations, client-token routes, the gossip prober's probes;
* the **etcd client** and this node's **membership** (a member key under a lease), the
  **member table** (everyone's keys, watched), the **coordinator** election (the
  coordinator writes the shard map) and the **shard-map watcher** (every node routes with
  the map it last decoded, never waiting on etcd on the request path);
* the **gossip prober**, which suspects a dead peer within a few seconds, before its lease
  expires; routing answers ``TM-CLST-5030`` for a suspect owner at once instead of waiting
  for a timeout.

It is the :class:`~tokmesh.cluster.forwarding.Routing` of forwarding, contributes the
``cluster`` check of ``/ready``, and answers the cluster admin routes (:meth:`status`,
:meth:`nodes`, :meth:`leave`, :meth:`rebalance`).

A node that cannot reach etcd at start still starts: its listeners answer, ``/ready`` says
``"cluster": "connecting"``, and every attempt is logged with its reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from tokmesh.actors import messages as m
from tokmesh.actors.reply import Reply
from tokmesh.actors.session_store import SessionStore
from tokmesh.cluster import etcd_wire as wire
from tokmesh.cluster import swim_wire
from tokmesh.cluster.coordinator import Coordinator, CoordinatorSettings
from tokmesh.cluster.coordinator import leave as record_departure
from tokmesh.cluster.etcd import EtcdClient, EtcdError, EtcdSettings, EtcdTLS
from tokmesh.cluster.forwarding import ClusterSessions, SessionHandlers, ShardMoving
from tokmesh.cluster.membership import (
    JoinRefused,
    MemberRecord,
    Membership,
    MembershipSettings,
    MembershipState,
    MemberTable,
    parity,
)
from tokmesh.cluster.placement import VNODES_PER_NODE
from tokmesh.cluster.prober import Prober, TransportError
from tokmesh.cluster.replicated_ops import ReplicatedSessions
from tokmesh.cluster.replication import ReplicaSide, Replicator, points_from, positions_from
from tokmesh.cluster.rpc_client import RpcClient
from tokmesh.cluster.rpc_server import RpcServer
from tokmesh.cluster.shard_map import ReplicaPosition, ShardMap
from tokmesh.cluster.shard_map_watch import ShardMapWatcher
from tokmesh.cluster.swim import Message, Status
from tokmesh.cluster.transport import ClusterTls, RpcError
from tokmesh.config.schema import Config
from tokmesh.config.types import parse_addr
from tokmesh.domain.clock import Clock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.session import Session
from tokmesh.domain.session_settings import SessionSettings
from tokmesh.domain.shards import shard_of
from tokmesh.services.sessions import SessionService
from tokmesh.telemetry import metrics

__all__ = ["ClusterNode", "ClusterSettings"]

log = logging.getLogger("tokmesh.cluster")

#: How long a forwarded call may take before the caller gets ``TM-CLST-5040``.
FORWARD_TIMEOUT = 5.0
#: How long a request for a shard being handed over waits for the new map.
HANDOVER_WAIT = 5.0
#: How long a hand-over may stay unconfirmed by a new map before this node checks etcd
#: and takes the shard back if the map still gives it to this node.
HANDOVER_TIMEOUT = 10.0
#: Seconds after the last map change before copies nobody needs any more are dropped.
CLEANUP_DELAY = 5.0
#: Sessions looked at between two checkpoints when routes are sent again.
ROUTE_SCAN_CHUNK = 5000
#: Attempts (and the pause between them) to reach a node that asked for its routes.
ROUTE_RETRIES = 60
ROUTE_RETRY_DELAY = 0.5


@attrs.frozen
class ClusterSettings:
    """The ``cluster.*`` settings one node needs, resolved (node id, data directory)."""

    node_id: str
    data_dir: Path
    version: str
    listen_address: str
    advertise_address: str
    cert_file: str
    key_file: str
    ca_file: str
    etcd: EtcdSettings
    prefix: str
    lease_ttl: int
    expect_nodes: int
    replication_factor: int
    #: ``cluster.replication.ack``: "revoke" or "replica".
    ack: str = "revoke"
    #: ``cluster.shutdown.*``: how long a leave or a stop may spend moving shards away,
    #: and whether a leave goes ahead when they did not all move.
    shutdown_timeout: float = 60.0
    force_leave: bool = False
    #: ``cluster.rebalance.*``: bits per second of full copies, and the remaining
    #: lifetime (seconds) below which a moving shard's sessions are not copied.
    rebalance_max_rate: int = 0
    rebalance_min_ttl: float = 60.0

    @classmethod
    def from_config(
        cls, cfg: Config, node_id: str, data_dir: Path, version: str
    ) -> ClusterSettings:
        """Map the validated configuration onto the settings."""
        c = cfg.cluster
        e = c.etcd
        tls = None
        if e.tls.ca_file or e.tls.cert_file:
            tls = EtcdTLS(
                ca_file=e.tls.ca_file or None,
                cert_file=e.tls.cert_file or None,
                key_file=e.tls.key_file or None,
            )
        return cls(
            node_id=node_id,
            data_dir=data_dir,
            version=version,
            listen_address=c.listen_address,
            advertise_address=c.advertise_address,
            cert_file=c.tls.cert_file,
            key_file=c.tls.key_file,
            ca_file=c.tls.client_ca_file,
            etcd=EtcdSettings(
                endpoints=e.endpoints,
                username=e.username or None,
                password=e.password or None,
                tls=tls,
                request_timeout=e.request_timeout,
            ),
            prefix=e.prefix,
            lease_ttl=max(1, round(e.lease_ttl)),
            expect_nodes=c.bootstrap.expect_nodes,
            replication_factor=c.data.replication_factor,
            ack=c.replication.ack,
            shutdown_timeout=c.shutdown.timeout,
            force_leave=c.shutdown.force_leave,
            rebalance_max_rate=c.rebalance.max_rate,
            rebalance_min_ttl=c.rebalance.min_ttl,
        )


class ClusterNode:
    """See the module doc. Start :meth:`run` in the server's nursery; once the storage
    engine is up, :meth:`attach` the local session operations."""

    def __init__(
        self, settings: ClusterSettings, on_refused: Callable[[str], None] | None = None
    ) -> None:
        self.settings = settings
        #: Called with the reason when this node must not join (another cluster's id
        #: persisted here, its node id live elsewhere): the server stops, exit code 1.
        self.on_refused = on_refused
        self.node_id = settings.node_id
        self.started_at = time.time()
        self.tls = ClusterTls(settings.cert_file, settings.key_file, settings.ca_file)
        self.rpc = RpcClient(self.tls, default_timeout=FORWARD_TIMEOUT)
        self.server = RpcServer(self.tls, settings.node_id)
        self.etcd = EtcdClient(settings.etcd)
        self.membership = Membership(
            self.etcd,
            MembershipSettings(
                node_id=settings.node_id,
                advertise_address=settings.advertise_address,
                data_dir=settings.data_dir,
                version=settings.version,
                prefix=settings.prefix,
                lease_ttl=settings.lease_ttl,
            ),
        )
        self.members: dict[str, MemberRecord] = {}
        self.table = MemberTable(self.etcd, settings.prefix, on_change=self._members_changed)
        self.coordinator = Coordinator(
            self.etcd,
            CoordinatorSettings(
                node_id=settings.node_id,
                prefix=settings.prefix,
                expect_nodes=settings.expect_nodes,
                replication_factor=settings.replication_factor,
            ),
            self.membership,
            positions=self.positions,
            peers=self if settings.replication_factor >= 2 else None,
        )
        self.watcher = ShardMapWatcher(self.etcd, settings.prefix, on_map=self._map_changed)
        # Routing reads the prober's beliefs directly (state_of); it logs the changes.
        self.prober = Prober(settings.node_id, self._probe)
        self.sessions: ClusterSessions | None = None
        #: Replication (replication factor >= 2): the owner side and the replica side.
        self.replicator: Replicator | None = None
        self.replica: ReplicaSide | None = None
        self._nursery: trio.Nursery | None = None
        self._root: trio.Nursery | None = None
        # The lease under which this node last read the shard map itself: until it has
        # done so under its current lease it serves nothing (after a lost lease its map
        # may be one that gave its shards away).
        self._map_confirmed_lease = 0
        self._last_map: ShardMap | None = None
        # Shards this node is handing to another owner: it answers for none of them from
        # its confirmation to the coordinator until the map that moves them is in force
        # here (or the hand-over is called off). Set when that happens.
        self._handing_over: dict[int, trio.Event] = {}
        # Dropping copies of shards this node no longer holds for anyone: due this long
        # after the last map change (a rebalance writes many maps in a row).
        self._cleanup_due = 0.0
        self._cleanup_running = False
        self.server.register("swim", self._on_probe)
        self.server.register("routes.resend", self._on_resend)
        self.server.register("cluster.rebalance", self._on_rebalance)
        self.server.register("cluster.rebalance_status", self._on_rebalance_status)

    # -- wiring ------------------------------------------------------------------------------

    def local_operations(
        self, store: SessionStore, settings: SessionSettings, clock: Clock
    ) -> SessionService:
        """The local session operations of this node: with replicas, the kind whose
        writes wait for a replica where they must (see ``replicated_ops``)."""
        if self.settings.replication_factor < 2:
            return SessionService(store, settings, clock, cluster=True)
        self.replica = ReplicaSide(self.settings.data_dir, store, clock, self.node_id)
        self.replicator = Replicator(
            self.node_id,
            store,
            store.commits,
            lambda: self.watcher.current,
            self._peer_address,
            self.call,
            replication_factor=self.settings.replication_factor,
            max_rate=self.settings.rebalance_max_rate // 8,  # configured in bits/s
            min_ttl_ms=int(self.settings.rebalance_min_ttl * 1000),
            now_ms=clock.now_ms,
            may_send=lambda: not self.fenced(),
            wal_dir=store.wal.wal_dir,
            resume_points=self._resume_points,
        )
        # Copies of shards owned elsewhere take no part in this node's by-user answers.
        store.state.foreign = self._foreign
        self.server.register("repl.apply", self.replica.apply)
        self.server.register("repl.positions", self._on_positions)
        self.server.register("repl.handover", self._on_handover)
        self.server.register("repl.resume_points", self._on_resume_points)
        replicator = self.replicator
        return ReplicatedSessions(
            store,
            settings,
            clock,
            replicator.wait_replicated,
            every_write=self.settings.ack == "replica",
        )

    def attach(self, local: SessionService) -> ClusterSessions:
        """Serve forwarded operations with ``local`` and return the operations the fronts
        call (they route every request to the owner of its shard)."""
        if self.replicator is not None and self._root is not None:
            self._root.start_soon(self.replicator.run)
            assert self.replica is not None
            self._root.start_soon(self.replica.run)
            if self.watcher.current is not None:
                self._map_changed(self.watcher.current)
        sessions = ClusterSessions(local, self)
        handlers = SessionHandlers(local, self, sessions)
        for method, handler in handlers.methods().items():
            self.server.register(method, handler)
        self.sessions = sessions
        return sessions

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the cluster port, then join through etcd in the background; started once
        the port listens (joining may take as long as etcd is unreachable)."""
        host, port = parse_addr(self.settings.listen_address)
        async with self.etcd, trio.open_nursery() as nursery:
            self._root = nursery
            await nursery.start(self.rpc.run)
            await nursery.start(self.server.serve, host or "0.0.0.0", port)
            await nursery.start(self.tls.run)
            log.info(
                "cluster port listening",
                extra={"address": self.settings.listen_address, "node_id": self.node_id},
            )
            task_status.started()
            nursery.start_soon(self._join)
            nursery.start_soon(self._follow)

    async def _join(self) -> None:
        """Membership, until this node is refused: then it says why and asks to stop."""
        try:
            await self.membership.run()
        except JoinRefused as exc:
            reason = f"{exc.error.code} {exc.message}"
            log.error("refusing to join the cluster: %s", reason)
            if self.on_refused is not None:
                self.on_refused(reason)

    async def _follow(self) -> None:
        """The actors that need etcd: started after the first registration, so a node that
        was refused (a different cluster id, its node id live elsewhere) starts none."""
        await self.membership.connected.wait()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.table.run)
            await nursery.start(self.watcher.run)
            await nursery.start(self.coordinator.run)
            await nursery.start(self.prober.run)
            nursery.start_soon(self._ask_for_routes)
            nursery.start_soon(self._confirm_map)

    async def _ask_for_routes(self) -> None:
        """Routes of client-chosen tokens live in their shard owner's memory: once this
        (re)started node has a map, the others send again those that belong here."""
        while self.watcher.current is None or self.sessions is None:
            await trio.sleep(0.1)
        for node, record in list(self.members.items()):
            if node == self.node_id:
                continue
            try:
                await self.rpc.call(
                    record.advertise_address, "routes.resend", {"node": self.node_id}, timeout=5
                )
            except RpcError as exc:
                log.warning("could not ask %s for token routes: %s", node, exc)

    async def _on_resend(self, peer: str, body: Any) -> Any:
        node = body.get("node") if isinstance(body, dict) else None
        if not isinstance(node, str) or self._nursery is None:
            raise TokMeshError(E.ARG_INVALID, "routes.resend needs a node id")
        self._nursery.start_soon(self._announce_routes, frozenset([node]))
        if self.replicator is not None:
            # It restarted: what it held of our shards may be stale, so it gets copies.
            self.replicator.resync(node)
        return True

    def _members_changed(self, members: Mapping[str, MemberRecord]) -> None:
        self.members = dict(members)
        self.coordinator.members_changed(members)
        self.prober.set_members(members)
        count = len(members)
        metrics.CLUSTER_NODES_PARITY.set(1 if parity(count).even else 0)

    def _map_changed(self, shard_map: ShardMap) -> None:
        previous, self._last_map = self._last_map, shard_map
        if self.replica is not None:
            self.replica.note_map(shard_map)
        if self.replicator is not None:
            self.replicator.map_changed(shard_map)
        if self.replicator is not None:
            self._cleanup_due = trio.current_time() + CLEANUP_DELAY
            if not self._cleanup_running and self._nursery is not None:
                self._cleanup_running = True
                self._nursery.start_soon(self._drop_copies)
        moved = [s for s in self._handing_over if shard_map.owner(s) != self.node_id]
        if moved:
            self._end_handover(moved, "the new map is in force")
        if previous is not None and self._nursery is not None:
            # Routes of client-chosen tokens live with their token shard's owner: the
            # new owners of moved shards get them from the sessions' owners.
            heirs = frozenset(
                new
                for old, new in zip(previous.owners, shard_map.owners, strict=True)
                if old != new
            )
            if heirs:
                self._nursery.start_soon(self._announce_routes, heirs)
        mine = len(shard_map.shards_of(self.node_id))
        log.info(
            "shard map in force",
            extra={"version": shard_map.version, "owned_shards": mine, "node_id": self.node_id},
        )

    async def _announce_routes(self, nodes: frozenset[str]) -> None:
        """Send the routes of this node's client-token sessions whose token shard one of
        ``nodes`` owns (a few thousand sessions per loop pass, so requests keep flowing)."""
        sessions = self.sessions
        shard_map = self.watcher.current
        if sessions is None or shard_map is None:
            return
        held = list(sessions.local.state.sessions.values())
        sent = 0
        for start in range(0, len(held), ROUTE_SCAN_CHUNK):
            for session in held[start : start + ROUTE_SCAN_CHUNK]:
                route = session.shard_id
                if session.is_deleted or shard_map.owner(route) not in nodes:
                    continue
                if shard_map.owner(shard_of(session.id)) != self.node_id:
                    continue  # a replica's copy: its owner announces it
                if route == shard_of(session.id):
                    continue
                if not await self._announce_one(session):
                    return
                sent += 1
            await trio.sleep(0)
        if sent:
            log.info("sent %d token routes to %s", sent, ", ".join(sorted(nodes)))

    async def _announce_one(self, session: Session) -> bool:
        """Send one route, retrying while its owner is still coming up (its membership and
        the prober's belief catch up within seconds); False when it never became
        reachable."""
        assert self.sessions is not None
        last = ""
        for _ in range(ROUTE_RETRIES):
            try:
                await self.sessions.announce_route(session)
                return True
            except TokMeshError as exc:
                last = exc.message
            await trio.sleep(ROUTE_RETRY_DELAY)
        log.warning("could not send token routes again: %s", last)
        return False

    # -- replication and fencing ------------------------------------------------------------

    def _peer_address(self, node: str) -> str | None:
        """Where to send ``node`` its replication stream; None while it is not a member."""
        record = self.members.get(node)
        return record.advertise_address if record is not None else None

    def _foreign(self, session_id: str) -> bool:
        """True for a session held here only as a replica (its shard is owned elsewhere)."""
        shard_map = self.watcher.current
        return shard_map is not None and shard_map.owners[shard_of(session_id)] != self.node_id

    async def _on_resume_points(self, peer: str, body: Any) -> Any:
        return self.replica.resume_from() if self.replica is not None else {}

    async def _resume_points(self, node: str) -> Mapping[int, tuple[int, int]]:
        """Up to where ``node`` holds each shard completely (empty when it cannot say)."""
        address = self._peer_address(node)
        if address is None:
            return {}
        answer = await self.rpc.call(address, "repl.resume_points", {}, timeout=2.0)
        return points_from(answer)

    async def _on_positions(self, peer: str, body: Any) -> Any:
        if self.replica is None:
            return {}
        return self.replica.positions()

    async def positions(
        self, nodes: Collection[str]
    ) -> Mapping[str, Mapping[int, ReplicaPosition]]:
        """What each of ``nodes`` holds per shard, asked in parallel (2 s each); nodes
        that do not answer are left out, so they cannot be promoted."""
        out: dict[str, Mapping[int, ReplicaPosition]] = {}

        async def ask(node: str) -> None:
            if node == self.node_id:
                if self.replica is not None:
                    out[node] = positions_from(self.replica.positions())
                return
            address = self._peer_address(node)
            if address is None:
                return
            try:
                answer = await self.rpc.call(address, "repl.positions", {}, timeout=2.0)
            except RpcError as exc:
                log.warning("replica %s did not report its positions: %s", node, exc)
                return
            out[node] = positions_from(answer)

        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(ask, node)
        return out

    async def _on_handover(self, peer: str, body: Any) -> Any:
        """The coordinator moves ``shards`` to ``to``: stop answering for them, make sure
        everything committed for them reached ``to``, then confirm. From here until the
        map that moves them is in force (or the hand-over is called off) requests for
        them wait, then go to the new owner."""
        if not isinstance(body, dict) or not isinstance(body.get("to"), str):
            raise TokMeshError(E.ARG_INVALID, "repl.handover needs shards, epochs and to")
        target: str = body["to"]
        try:
            wanted = {int(k): int(v) for k, v in dict(body.get("epochs", {})).items()}
        except (TypeError, ValueError):
            raise TokMeshError(E.ARG_INVALID, "repl.handover epochs are not integers") from None
        shard_map = self._map()
        replicator = self.replicator
        if replicator is None or self._nursery is None:
            raise TokMeshError(E.CLST_NO_NODES, "this node does not replicate")
        self._refuse_if_fenced()
        for shard, epoch in wanted.items():
            if shard_map.owner(shard) != self.node_id or shard_map.epoch(shard) != epoch:
                raise TokMeshError(
                    E.CLST_INCONSISTENT, f"shard {shard} at epoch {epoch} is not owned here"
                )
            if target not in shard_map.backups[shard]:
                raise TokMeshError(E.CLST_INCONSISTENT, f"{target} holds no copy of shard {shard}")
        for shard in wanted:
            self._handing_over.setdefault(shard, trio.Event())
        self._nursery.start_soon(self._handover_watchdog, dict(wanted))
        try:
            # Writes already accepted commit first; then everything queued for the new
            # owner up to that point must be confirmed by it.
            assert self.sessions is not None
            await self.sessions.local.store.barrier()
            await replicator.wait_peer(target)
        except BaseException:
            self._end_handover(wanted, "its new owner did not confirm the last changes")
            raise
        log.info("handing shards %s over to %s", sorted(wanted), target)
        return {"ok": True}

    def _end_handover(self, shards: Collection[int], why: str) -> None:
        for shard in shards:
            done = self._handing_over.pop(shard, None)
            if done is not None:
                done.set()
        log.info("hand-over of shards %s ended: %s", sorted(shards), why)

    async def _handover_watchdog(self, epochs: dict[int, int]) -> None:
        """Take the shards back if no map moved them in time and etcd still gives them to
        this node at the same epochs (the coordinator died or gave up); never before
        etcd says so, since a new owner may already serve them."""
        await trio.sleep(HANDOVER_TIMEOUT)
        while any(shard in self._handing_over for shard in epochs):
            try:
                stored = await self.etcd.get(self.watcher.key)
            except EtcdError as exc:  # ask again shortly
                log.info("cannot check a stalled hand-over yet: %s", exc)
                await trio.sleep(1.0)
                continue
            if stored is not None:
                self.watcher.offer(stored)
            shard_map = self._map()
            back = [
                shard
                for shard, epoch in epochs.items()
                if shard in self._handing_over
                and shard_map.owner(shard) == self.node_id
                and shard_map.epoch(shard) == epoch
            ]
            self._end_handover(back, "called off (no new map moved them), serving again")
            return

    async def handover(self, owner: str, epochs: Mapping[int, int], to: str) -> None:
        """Ask ``owner`` to hand shards over to ``to`` (the rebalance's switch)."""
        body = {"epochs": {str(k): v for k, v in epochs.items()}, "to": to}
        if owner == self.node_id:
            await self._on_handover(self.node_id, body)
            return
        address = self._peer_address(owner)
        if address is None:
            raise TokMeshError(E.CLST_NO_NODES, f"{owner} is not a member")
        try:
            await self.rpc.call(address, "repl.handover", body, timeout=HANDOVER_WAIT + 5)
        except RpcError as exc:
            raise TokMeshError(E.CLST_NO_NODES, f"{owner} did not hand over: {exc}") from None

    def fenced(self) -> bool:
        """True while this node must not act as the owner of its shards: its lease may
        have expired (counted on its own clock), or it has not yet read the shard map
        under its current lease (after a lost lease its map may be out of date)."""
        membership = self.membership
        return not membership.lease_valid() or self._map_confirmed_lease != membership.lease_id

    async def _confirm_map(self) -> None:
        """Read the shard map under each new lease before serving again (see
        :meth:`fenced`); a map newer than the watcher's is put in force at once."""
        while True:
            lease = self.membership.lease_id
            if lease and lease != self._map_confirmed_lease and self.membership.lease_valid():
                try:
                    stored = await self.etcd.get(self.watcher.key)
                except EtcdError as exc:  # try again shortly
                    log.info("cannot confirm the shard map yet: %s", exc)
                else:
                    if stored is not None:
                        self.watcher.offer(stored)
                    self._map_confirmed_lease = lease
                    if self.membership.lease_id == lease:
                        log.info("shard map confirmed under lease %x; serving", lease)
            await trio.sleep(0.05)

    def _refuse_if_fenced(self) -> None:
        if self.fenced():
            metrics.CLUSTER_FENCED_REFUSALS.inc()
            raise TokMeshError(
                E.CLST_NO_NODES,
                f"node {self.node_id} cannot confirm its etcd lease; it does not serve its "
                "shards until it can",
            )

    # -- gossip over the cluster port -------------------------------------------------------

    async def _probe(self, peer: str, message: Message) -> Message:
        record = self.members.get(peer)
        if record is None:
            raise TransportError(f"{peer} is not a member")
        body = {"from": self.node_id, "msg": swim_wire.encode(message)}
        try:
            reply = await self.rpc.call(record.advertise_address, "swim", body, timeout=1.0)
        except RpcError as exc:
            raise TransportError(str(exc)) from None
        try:
            return swim_wire.decode(reply)
        except ValueError as exc:
            raise TransportError(f"bad prober answer from {peer}: {exc}") from None

    async def _on_probe(self, peer: str, body: Any) -> Any:
        if not isinstance(body, dict) or not isinstance(body.get("from"), str):
            raise TokMeshError(E.ARG_INVALID, "a prober message needs its sender")
        try:
            message = swim_wire.decode(body.get("msg"))
        except ValueError as exc:
            raise TokMeshError(E.ARG_INVALID, f"bad prober message: {exc}") from None
        return swim_wire.encode(await self.prober.handle(body["from"], message))

    # -- routing (forwarding.Routing) -------------------------------------------------------

    def _map(self) -> ShardMap:
        shard_map = self.watcher.current
        if shard_map is None:
            raise TokMeshError(E.CLST_NO_NODES, "the cluster has no shard map yet")
        return shard_map

    def _address_of(self, node: str) -> str:
        record = self.members.get(node)
        if record is None:
            raise TokMeshError(E.CLST_NO_NODES, f"node {node}, owner of the data, is down")
        if self.prober.state_of(node) is Status.SUSPECT:
            raise TokMeshError(E.CLST_NO_NODES, f"node {node}, owner of the data, is not answering")
        return record.advertise_address

    def owner_address(self, shard: int) -> str | None:
        """``None`` when this node owns ``shard``, else the owner's cluster address.
        A fenced owner refuses (``TM-CLST-5030``) instead of answering for the shard,
        and an owner handing the shard over raises :class:`ShardMoving`."""
        owner = self._map().owner(shard)
        if owner == self.node_id:
            self._refuse_if_fenced()
            if shard in self._handing_over:
                raise ShardMoving(shard)
            return None
        return self._address_of(owner)

    async def wait_moved(self, shard: int) -> None:
        """Return once the hand-over of ``shard`` is over (see ``forwarding.Routing``)."""
        done = self._handing_over.get(shard)
        if done is None:
            return
        with trio.move_on_after(HANDOVER_WAIT):
            await done.wait()
            return
        raise TokMeshError(E.CLST_TIMEOUT, f"shard {shard} is still being handed over")

    def moved_to(self, shard: int) -> str | None:
        """The address of ``shard``'s owner in the map here when it is another node."""
        shard_map = self.watcher.current
        if shard_map is None or shard_map.owner(shard) == self.node_id:
            return None
        record = self.members.get(shard_map.owner(shard))
        return record.advertise_address if record is not None else None

    async def call_local(self, method: str, body: Any) -> Any:
        """Run cluster-port ``method`` on this node, as a peer's call would."""
        return await self.server.handlers[method](self.node_id, body)

    def owns(self, shard: int) -> bool:
        """True when the map in force here gives ``shard`` to this node and this node is
        not fenced."""
        shard_map = self.watcher.current
        return (
            shard_map is not None and shard_map.owner(shard) == self.node_id and not self.fenced()
        )

    def shard_owners(self) -> dict[str, str | None]:
        """Every node that owns shards -> its address (``None`` for this one)."""
        owners = self._map().counts()
        if self.node_id in owners:
            self._refuse_if_fenced()
        return {node: None if node == self.node_id else self._address_of(node) for node in owners}

    async def call(self, address: str, method: str, body: Any) -> Any:
        """One forwarded call under the forwarding deadline."""
        return await self.rpc.call(address, method, body, timeout=FORWARD_TIMEOUT)

    # -- readiness and operations -----------------------------------------------------------

    def readiness_check(self) -> str:
        """``checks.cluster`` of ``/ready``: ok once registered and a map is in force."""
        state = self.membership.state
        if state is MembershipState.CONNECTING:
            return "connecting"
        if state is MembershipState.LOST:
            return "lost"
        if self.watcher.current is None:
            return "initializing"
        if self.fenced():
            return "fenced"
        return "ok"

    def _node_status(self, node: str) -> str:
        if node not in self.members:
            return "down"
        if node != self.node_id and self.prober.state_of(node) is Status.SUSPECT:
            return "suspect"
        return "active"

    def nodes(self) -> list[dict[str, Any]]:
        """One entry per node that is a member or owns shards."""
        shard_map = self.watcher.current
        counts = shard_map.counts() if shard_map is not None else {}
        out = []
        now = time.time()
        for node in sorted(set(self.members) | set(counts)):
            record = self.members.get(node)
            out.append(
                {
                    "node_id": node,
                    "address": record.advertise_address if record else None,
                    "status": self._node_status(node),
                    "role": "leader" if node == self.coordinator.coordinator_id else "follower",
                    "version": record.version if record else None,
                    "uptime_seconds": int(now - record.started_at) if record else None,
                    "metrics": {"shards": counts.get(node, 0), "vnodes": VNODES_PER_NODE},
                }
            )
        return out

    def status(self) -> dict[str, Any]:
        """Topology, health and shard map of the cluster as this node sees it."""
        shard_map = self.watcher.current
        nodes = self.nodes()
        report = parity(len(self.members))
        return {
            "cluster_id": self.membership.cluster_id,
            "node_id": self.node_id,
            "leader_id": self.coordinator.coordinator_id,
            "state": self.readiness_check(),
            "membership": self.membership.state.value,
            "nodes": {
                "total": len(nodes),
                "active": sum(1 for n in nodes if n["status"] == "active"),
                "suspect": sum(1 for n in nodes if n["status"] == "suspect"),
                "down": sum(1 for n in nodes if n["status"] == "down"),
            },
            "parity": {"even": report.even, "health": report.health},
            "shard_map": None
            if shard_map is None
            else {"version": shard_map.version, "owners": shard_map.counts()},
            "replication_factor": self.settings.replication_factor,
            "under_replicated_shards": self.under_replicated(),
            "replication": self.replication_status(),
        }

    def under_replicated(self) -> list[int]:
        """Shards whose live copies (owner included) are fewer than the replication
        factor, as this node sees the members."""
        shard_map = self.watcher.current
        if shard_map is None:
            return []
        want = self.settings.replication_factor
        live = {n for n in self.members if self._node_status(n) == "active"}
        return [
            shard
            for shard in range(len(shard_map.owners))
            if (shard_map.owners[shard] in live) + sum(b in live for b in shard_map.backups[shard])
            < want
        ]

    def replication_status(self) -> dict[str, Any]:
        """This node's replication streams: per backup, what is queued and how late."""
        replicator = self.replicator
        if replicator is None:
            return {"ack": self.settings.ack, "peers": {}}
        return {
            "ack": self.settings.ack,
            "peers": {
                node: {
                    "queued": len(peer.queue),
                    "confirmed": peer.acked,
                    "lag_seconds": round(replicator.lag(node), 3),
                }
                for node, peer in sorted(replicator.peers.items())
            },
        }

    async def rebalance(self) -> dict[str, Any]:
        """Start a rebalance at the coordinator (shards move with their data)."""
        if self.coordinator.rebalance is None:
            return {
                "status": "not_started",
                "reason": "shards move with their data only with replication_factor >= 2",
            }
        if self.coordinator.is_coordinator:
            return self._start_rebalance()
        holder = self.coordinator.coordinator_id
        address = self._peer_address(holder) if holder else None
        if address is None:
            raise TokMeshError(E.CLST_NO_NODES, "no coordinator is known right now")
        try:
            answer = await self.rpc.call(address, "cluster.rebalance", {}, timeout=5)
        except RpcError as exc:
            raise TokMeshError(E.CLST_NO_NODES, f"the coordinator did not answer: {exc}") from None
        return dict(answer)

    def _start_rebalance(self) -> dict[str, Any]:
        rebalance = self.coordinator.rebalance
        assert rebalance is not None
        if rebalance.running:
            return {"status": "already_running", "progress": rebalance.progress}
        self.coordinator.want_rebalance()
        return {"status": "started", "coordinator": self.node_id}

    async def _on_rebalance(self, peer: str, body: Any) -> Any:
        if not self.coordinator.is_coordinator:
            raise TokMeshError(E.CLST_NO_NODES, f"{self.node_id} is not the coordinator")
        return self._start_rebalance()

    async def _on_rebalance_status(self, peer: str, body: Any) -> Any:
        rebalance = self.coordinator.rebalance
        return dict(rebalance.progress) if rebalance is not None else {"state": "unavailable"}

    async def rebalance_progress(self) -> dict[str, Any]:
        """The coordinator's rebalance progress (asked of it when it is another node)."""
        if self.coordinator.rebalance is None:
            return {"state": "unavailable"}
        if self.coordinator.is_coordinator:
            return dict(self.coordinator.rebalance.progress)
        holder = self.coordinator.coordinator_id
        address = self._peer_address(holder) if holder else None
        if address is None:
            return {"state": "unknown"}
        try:
            return dict(await self.rpc.call(address, "cluster.rebalance_status", {}, timeout=2))
        except RpcError:
            return {"state": "unknown"}

    async def drain(self, timeout: float) -> bool:
        """Move this node's shards to the others (with their data) and wait until it
        owns none, at most ``timeout`` seconds; True when it owns none. The draining
        mark is on this node's lease, so it goes away with the node."""
        if self.coordinator.rebalance is None or not self.membership.lease_valid():
            return False
        if not any(node != self.node_id for node in self.members):
            return False  # nobody to take them: the last node stops with its data
        key = (self.settings.prefix + "draining/" + self.node_id).encode()
        await self.etcd.put(key, b"{}", lease=self.membership.lease_id)
        log.info("draining: moving this node's shards to the others (up to %.0fs)", timeout)
        with trio.move_on_after(timeout):
            checked = trio.current_time()
            while True:
                shard_map = self.watcher.current
                if shard_map is not None and not shard_map.shards_of(self.node_id):
                    log.info("drained: this node owns no shards any more")
                    return True
                if trio.current_time() - checked >= 0.5:
                    checked = trio.current_time()
                    if not await self._someone_to_drain_to():
                        log.warning("drain stopped: every other node is stopping too")
                        return False
                await trio.sleep(0.1)
        log.warning("drain did not finish within %.0fs", timeout)
        return False

    async def _drop_copies(self) -> None:
        """Forget the sessions of shards this node neither owns nor backs up any more (a
        shard moved on, a backup was replaced): the old owner of a moved shard keeps its
        copy until the switch and as long as it stays a backup, and only then lets go."""
        try:
            while trio.current_time() < self._cleanup_due:
                await trio.sleep(self._cleanup_due - trio.current_time())
            shard_map = self.watcher.current
            sessions = self.sessions
            if shard_map is None or sessions is None:
                return
            mine = self.node_id
            keep = {
                shard
                for shard in range(len(shard_map.owners))
                if shard_map.owners[shard] == mine or mine in shard_map.backups[shard]
            }
            store = sessions.local.store
            if self.replica is not None:
                # Before the copies go: nobody may resume from what is being dropped.
                self.replica.forget(s for s in range(len(shard_map.owners)) if s not in keep)
            held = list(store.state.sessions.items())
            dropped = 0
            for start in range(0, len(held), ROUTE_SCAN_CHUNK):
                by_actor: dict[int, tuple[Any, list[str]]] = {}
                for sid, session in held[start : start + ROUTE_SCAN_CHUNK]:
                    if shard_of(sid) in keep:
                        continue
                    actor = store.shard_for(session.user_id)
                    by_actor.setdefault(id(actor), (actor, []))[1].append(sid)
                for actor, sids in by_actor.values():
                    reply: Reply[int] = Reply()
                    await actor.send(m.Drop(tuple(sids), reply))
                    dropped += await reply.wait()
                await trio.sleep(0)
            if dropped:
                log.info(
                    "dropped %d copies of sessions of shards this node no longer holds", dropped
                )
        finally:
            self._cleanup_running = False

    async def _someone_to_drain_to(self) -> bool:
        """Whether a member that is not draining itself can take this node's shards."""
        start = (self.settings.prefix + "draining/").encode()
        try:
            res = await self.etcd.range(start, wire.prefix_range_end(start))
        except EtcdError:
            return False
        draining = {kv.key[len(start) :].decode("utf-8", "replace") for kv in res.kvs}
        return any(node != self.node_id and node not in draining for node in self.members)

    async def leave(self) -> dict[str, Any]:
        """Leave the cluster for good. With replicas, the shards move away with their data
        first (up to ``cluster.shutdown.timeout``); a leave whose shards did not all move
        is refused unless ``cluster.shutdown.force_leave`` (then their replicas take over,
        or they move without data)."""
        drained = await self.drain(self.settings.shutdown_timeout)
        force = self.settings.force_leave
        if self.coordinator.rebalance is not None and not drained and not force:
            key = (self.settings.prefix + "draining/" + self.node_id).encode()
            await self.etcd.delete(key)
            raise TokMeshError(
                E.CLST_TIMEOUT,
                "this node's shards did not all move in time; it stays a member "
                "(cluster.shutdown.force_leave leaves anyway)",
            )
        await record_departure(self.etcd, self.node_id, prefix=self.settings.prefix)
        await self.membership.leave()
        answer: dict[str, Any] = {"status": "left", "node_id": self.node_id, "data_moved": drained}
        if not drained:
            answer["note"] = (
                "its shards go to the other nodes without their sessions"
                if self.coordinator.rebalance is None
                else "its shards did not all move in time; their replicas take over"
            )
        return answer
