"""Cluster membership in etcd: this node's leased member record, the cluster ID, the table.

Keys, all under a configurable prefix (default ``/tokmesh/``):

* ``cluster_id``: the cluster's UUID, created once by whichever node gets there first
  (a txn "create if absent"), and persisted by every node in its data directory. A node
  whose persisted ID differs from etcd's belongs to another cluster and refuses to join.
* ``members/<node_id>``: JSON ``{"node_id", "advertise_address", "version",
  "started_at"}`` attached to the node's lease (TTL 10 s by default, renewed every
  TTL/3). The key exists exactly while the node is alive in etcd's eyes: a node that
  stops renewing disappears after its TTL. A second node with the same ID is refused
  with ``TM-CLST-4090`` while the first one's key lives.

:class:`Membership` registers this node and keeps it registered (state ``connecting``,
``connected`` or ``lost``); :class:`MemberTable` watches ``members/`` and keeps a live
table of every member; :func:`parity` is the even-node check.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import orjson
import trio

from tokmesh.cluster import etcd_wire as wire
from tokmesh.cluster.etcd import (
    Backoff,
    EtcdClient,
    EtcdError,
    LeaseKeeper,
    WatchEvents,
    WatchUpdate,
)
from tokmesh.config.node_id import write_atomic
from tokmesh.domain.errors import E, TokMeshError

__all__ = [
    "CLUSTER_ID_FILE",
    "ClusterIdMismatch",
    "JoinRefused",
    "MemberRecord",
    "MemberTable",
    "Membership",
    "MembershipSettings",
    "MembershipState",
    "NodeIdConflict",
    "ParityReport",
    "log_parity",
    "parity",
]

log = logging.getLogger("tokmesh.cluster.membership")

CLUSTER_ID_FILE: Final = "cluster-id"
# The lease this node last attached its member key to, so a restarted node can tell its
# own leftover key (take it over) from another node using the same ID (refuse).
MEMBER_LEASE_FILE: Final = "cluster-member-lease"


# -- errors ---------------------------------------------------------------------------------


class JoinRefused(TokMeshError):
    """This node must not join the cluster; retrying will not help."""


class NodeIdConflict(JoinRefused):
    """Another live node already uses this node ID."""

    def __init__(self, node_id: str, holder: str) -> None:
        super().__init__(
            E.CLST_NODE_CONFLICT,
            f"node id {node_id} is already live in the cluster (advertised at {holder}); "
            "refusing to join",
            details={"node_id": node_id, "holder": holder},
        )


class ClusterIdMismatch(JoinRefused):
    """The cluster ID persisted here is not the one in etcd (or etcd's cannot be read)."""

    def __init__(self, expected: str, actual: str, key: str) -> None:
        super().__init__(
            E.CLST_INCONSISTENT,
            f"cluster ID mismatch - rejecting node: this node belongs to cluster {expected}, "
            f"etcd key {key} holds {actual!r}; wipe this node's cluster state to join",
            details={"expected_cluster_id": expected, "actual_cluster_id": actual, "key": key},
        )


# -- records and settings -------------------------------------------------------------------


@attrs.frozen(slots=True)
class MemberRecord:
    """What a node publishes about itself under ``members/<node_id>``."""

    node_id: str
    advertise_address: str
    version: str
    started_at: float  # Unix seconds

    def encode(self) -> bytes:
        """The JSON stored in etcd."""
        return orjson.dumps(attrs.asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> MemberRecord:
        """Parse a stored record; raises ``ValueError`` naming what is wrong."""
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError("not JSON") from exc
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        for name in ("node_id", "advertise_address", "version"):
            if not isinstance(doc.get(name), str) or not doc[name]:
                raise ValueError(f"{name} missing or not a string")
        started = doc.get("started_at")
        if isinstance(started, bool) or not isinstance(started, int | float):
            raise ValueError("started_at missing or not a number")
        return cls(doc["node_id"], doc["advertise_address"], doc["version"], float(started))


@attrs.frozen(slots=True)
class MembershipSettings:
    """What :class:`Membership` needs; the composition root maps ``cluster.*`` onto it."""

    node_id: str
    advertise_address: str
    data_dir: Path = attrs.field(converter=Path)
    version: str = "0.0.0"
    prefix: str = "/tokmesh/"
    lease_ttl: int = 10
    retry_initial: float = 0.2
    retry_max: float = 5.0

    @property
    def cluster_id_key(self) -> bytes:
        """Where the cluster ID lives in etcd."""
        return (self.prefix + "cluster_id").encode()

    @property
    def members_prefix(self) -> bytes:
        """The prefix of every member record."""
        return (self.prefix + "members/").encode()

    @property
    def member_key(self) -> bytes:
        """This node's member record."""
        return self.members_prefix + self.node_id.encode()


class MembershipState(enum.Enum):
    """Where this node stands with etcd (reported by ``/ready`` as ``checks.cluster``)."""

    CONNECTING = "connecting"  # never registered yet
    CONNECTED = "connected"  # member key live under a lease being renewed
    LOST = "lost"  # lease lost; re-registering


# -- parity ---------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class ParityReport:
    """The even-node check: an even member count risks losing quorum in a partition."""

    node_count: int
    even: bool
    health: str
    message: str


def parity(node_count: int) -> ParityReport:
    """Check the member count: even counts are DEGRADED (still running), odd ones OK."""
    if node_count > 0 and node_count % 2 == 0:
        return ParityReport(
            node_count,
            True,
            "DEGRADED",
            f"Cluster has even number of nodes ({node_count}). "
            "Network partition may cause quorum loss.",
        )
    return ParityReport(node_count, False, "OK", f"Cluster has {node_count} nodes.")


def log_parity(report: ParityReport) -> None:
    """Log the check: WARN with the recommendation for even counts, DEBUG otherwise."""
    fields = {"node_count": report.node_count, "health": report.health}
    if report.even:
        fields["recommendation"] = "use odd numbers (3, 5, 7)"
        log.warning(report.message, extra=fields)
    else:
        log.debug(report.message, extra=fields)


# -- local files ----------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    write_atomic(path, text)


def read_cluster_id(data_dir: Path) -> str | None:
    """The cluster ID persisted in ``data_dir``, or None if this node never joined one."""
    try:
        text = (data_dir / CLUSTER_ID_FILE).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    return text or None


def _valid_cluster_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


# -- this node's registration ---------------------------------------------------------------


class Membership:
    """Registers this node in etcd and keeps it registered.

    :meth:`run` retries while etcd is unreachable (logging the reason of each failed
    attempt), raises :class:`JoinRefused` when the node must not join, and otherwise
    keeps the member key alive, registering again under a new lease if the old one is
    lost (etcd down longer than the TTL, or the lease revoked).
    """

    def __init__(
        self,
        client: EtcdClient,
        settings: MembershipSettings,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.settings = settings
        self.state = MembershipState.CONNECTING
        self.state_reason = "not registered yet"
        self.cluster_id: str | None = None
        self.lease_id = 0
        self.granted_at = 0.0
        #: The keeper of the current lease (None before the first registration).
        self.keeper: LeaseKeeper | None = None
        self._leaving = False
        self.record = MemberRecord(
            settings.node_id, settings.advertise_address, settings.version, wall_clock()
        )
        self.connected = trio.Event()

    def lease_valid(self) -> bool:
        """Whether this node may still act on its lease: registered, and the lease's
        expiry, counted on this node's own clock from the sending of the last renewal
        etcd confirmed, is still ahead. etcd expires the lease no earlier, so once this
        is False no other node can have been given this node's role before it stopped
        (self-fencing; it holds across a paused process, whose clock jumps on resume)."""
        keeper = self.keeper
        return (
            self.state is MembershipState.CONNECTED
            and keeper is not None
            and keeper.lease_id == self.lease_id
            and trio.current_time() < keeper.expires_at
        )

    def _set_state(self, state: MembershipState, reason: str) -> None:
        self.state = state
        self.state_reason = reason
        if state is MembershipState.CONNECTED:
            self.connected.set()
        elif self.connected.is_set():
            self.connected = trio.Event()

    async def ensure_cluster_id(self) -> str:
        """Agree with etcd on the cluster ID: create it if absent, refuse a different one.

        A node that never joined adopts etcd's ID (or creates a new UUID); a node with a
        persisted ID offers it when etcd has none (an etcd rebuilt from nothing keeps the
        cluster's identity) and must find it there otherwise.
        """
        key = self.settings.cluster_id_key
        local = read_cluster_id(self.settings.data_dir)
        if local is not None and not _valid_cluster_id(local):
            path = self.settings.data_dir / CLUSTER_ID_FILE
            raise JoinRefused(E.CFG_TYPE, f"cluster ID file {path} holds no UUID: {local!r}")
        candidate = local or str(uuid.uuid4())
        res = await self.client.txn(
            [wire.compare(key, "CREATE", "EQUAL", 0)],
            [wire.op_put(key, candidate.encode())],
            [wire.op_range(key)],
        )
        if res.succeeded:
            remote = candidate
            log.info("created cluster ID %s in etcd", remote)
        else:
            found = res.responses[0]
            raw = found.kvs[0].value if isinstance(found, wire.RangeResult) and found.kvs else b""
            remote = raw.decode("utf-8", "replace")
            if not _valid_cluster_id(remote):
                log.error("etcd key %s holds no valid cluster ID: %r", key.decode(), raw[:80])
                raise ClusterIdMismatch(local or "(none)", remote, key.decode())
        if local is not None and local != remote:
            log.error(
                "cluster ID mismatch - rejecting node",
                extra={
                    "expected_cluster_id": local,
                    "actual_cluster_id": remote,
                    "action": "node_rejected",
                },
            )
            raise ClusterIdMismatch(local, remote, key.decode())
        if local is None:
            _write_atomic(self.settings.data_dir / CLUSTER_ID_FILE, remote + "\n")
        self.cluster_id = remote
        return remote

    def _remembered_lease(self) -> int:
        try:
            return int((self.settings.data_dir / MEMBER_LEASE_FILE).read_text().strip(), 16)
        except (FileNotFoundError, ValueError):
            return 0

    async def register(self) -> int:
        """Put this node's member key under a fresh lease; returns the lease's TTL.

        Raises :class:`NodeIdConflict` when the key is held by a lease this node never
        had. A key on a lease this node remembers is its own leftover (a restart within
        the TTL, or an earlier attempt whose answer was lost): that lease is revoked and
        the key written again.
        """
        key = self.settings.member_key
        previous = self._remembered_lease()
        self.granted_at = trio.current_time()
        grant = await self.client.lease_grant(self.settings.lease_ttl)
        # Remember the lease before using it, so an answer lost in transit cannot turn
        # our own key into a "conflict" on the next attempt.
        _write_atomic(self.settings.data_dir / MEMBER_LEASE_FILE, f"{grant.lease_id:x}\n")
        try:
            for _ in range(2):
                res = await self.client.txn(
                    [wire.compare(key, "CREATE", "EQUAL", 0)],
                    [wire.op_put(key, self.record.encode(), lease=grant.lease_id)],
                    [wire.op_range(key)],
                )
                if res.succeeded:
                    self.lease_id = grant.lease_id
                    return grant.ttl
                found = res.responses[0]
                if not isinstance(found, wire.RangeResult) or not found.kvs:
                    continue  # it vanished in between: try again
                held = found.kvs[0]
                if held.lease and held.lease == previous and held.lease != grant.lease_id:
                    # Our own key from before a restart, its lease still alive: move it to
                    # the new lease in place. Deleting it first would show the cluster a
                    # node that died and came back (a failover for a crash-restart).
                    log.info("taking over this node's own leftover member key %s", key.decode())
                    moved = await self.client.txn(
                        [wire.compare(key, "MOD", "EQUAL", held.mod_revision)],
                        [wire.op_put(key, self.record.encode(), lease=grant.lease_id)],
                    )
                    if not moved.succeeded:
                        continue  # it changed in between: look again
                    with contextlib.suppress(EtcdError):
                        await self.client.lease_revoke(previous, timeout=2.0)
                    self.lease_id = grant.lease_id
                    return grant.ttl
                if held.lease and held.lease == grant.lease_id:
                    # An earlier attempt of this very registration landed (its answer was
                    # lost): the key is already ours, on this lease.
                    self.lease_id = grant.lease_id
                    return grant.ttl
                try:
                    holder = MemberRecord.decode(held.value).advertise_address
                except ValueError:
                    holder = "(undecodable record)"
                raise NodeIdConflict(self.settings.node_id, holder)
            raise NodeIdConflict(self.settings.node_id, "(key keeps reappearing)")
        except BaseException:
            with trio.CancelScope(shield=True), contextlib.suppress(EtcdError):
                await self.client.lease_revoke(grant.lease_id, timeout=1.0)
            raise

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join, keep the registration alive, and re-register after a lost lease.

        ``task_status.started`` is called at once (the node serves while connecting);
        wait on :attr:`connected` for the first registration.
        """
        task_status.started()
        backoff = Backoff(self.settings.retry_initial, self.settings.retry_max)
        attempt = 0
        while True:
            try:
                if self.cluster_id is None:
                    await self.ensure_cluster_id()
                ttl = await self.register()
            except EtcdError as exc:
                attempt += 1
                delay = backoff.next_delay()
                reason = f"{type(exc).__name__}: {exc}"
                self._set_state(self.state, reason)
                log.warning(
                    "cannot register node %s in etcd (attempt %d): %s; retrying in %.1fs",
                    self.settings.node_id, attempt, reason, delay,
                )  # fmt: skip
                await trio.sleep(delay)
                continue
            attempt = 0
            backoff.reset()
            self._set_state(MembershipState.CONNECTED, f"lease {self.lease_id:x}")
            log.info(
                "node %s registered in cluster %s (lease %x, ttl %ds)",
                self.settings.node_id, self.cluster_id, self.lease_id, ttl,
            )  # fmt: skip
            keeper = LeaseKeeper(
                self.client,
                self.lease_id,
                ttl,
                renew_every=self.settings.lease_ttl / 3,
                granted_at=self.granted_at,
            )
            self.keeper = keeper
            await keeper.run()
            if self._leaving:
                self._set_state(MembershipState.LOST, "left the cluster")
                return
            self._set_state(MembershipState.LOST, keeper.lost_reason)

    async def leave(self) -> None:
        """Remove this node's member key now (revoking its lease) instead of waiting.

        A :meth:`run` still going then returns instead of registering again.
        """
        self._leaving = True
        if self.lease_id:
            await self.client.lease_revoke(self.lease_id, timeout=2.0)
            self.lease_id = 0


# -- everyone's records ---------------------------------------------------------------------


class MemberTable:
    """A live table of every registered member, kept by a watch of ``members/``.

    A record that does not decode is refused with an ERROR naming its key, and the last
    good record of that node stays in the table. After every change in the member count
    the even-node check runs. ``on_change(table)`` is called after each applied update.
    """

    def __init__(
        self,
        client: EtcdClient,
        prefix: str = "/tokmesh/",
        *,
        on_change: Callable[[Mapping[str, MemberRecord]], None] | None = None,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
    ) -> None:
        self.client = client
        self.members_prefix = (prefix + "members/").encode()
        self.members: dict[str, MemberRecord] = {}
        self.revision = 0
        self._on_change = on_change
        self._retry = (retry_initial, retry_max)
        self._last_count = -1

    def _node_id(self, key: bytes) -> str:
        return key[len(self.members_prefix) :].decode("utf-8", "replace")

    def _decode(self, kv: wire.KeyValue) -> MemberRecord | None:
        try:
            record = MemberRecord.decode(kv.value)
        except ValueError as exc:
            log.error("refusing undecodable member record at %s: %s", kv.key.decode(), exc)
            return None
        if record.node_id != self._node_id(kv.key):
            log.error(
                "refusing member record at %s: it names node %s", kv.key.decode(), record.node_id
            )
            return None
        return record

    def _load(self, kvs: tuple[wire.KeyValue, ...]) -> None:
        fresh: dict[str, MemberRecord] = {}
        for kv in kvs:
            node_id = self._node_id(kv.key)
            record = self._decode(kv)
            if record is None:
                record = self.members.get(node_id)
            if record is not None:
                fresh[node_id] = record
        self.members = fresh

    def _changed(self) -> None:
        count = len(self.members)
        if count != self._last_count:
            self._last_count = count
            log_parity(parity(count))
        if self._on_change is not None:
            self._on_change(self.members)

    async def _apply(self, update: WatchUpdate) -> None:
        if isinstance(update, WatchEvents):
            for event in update.events:
                node_id = self._node_id(event.kv.key)
                if event.type == "DELETE":
                    self.members.pop(node_id, None)
                else:
                    record = self._decode(event.kv)
                    if record is not None:
                        self.members[node_id] = record
        else:
            self._load(update.kvs)
        self.revision = update.revision
        self._changed()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the table, then follow it; ``task_status.started`` after the first read."""
        backoff = Backoff(*self._retry)
        end = wire.prefix_range_end(self.members_prefix)
        while True:
            try:
                first = await self.client.range(self.members_prefix, end)
                break
            except EtcdError as exc:
                delay = backoff.next_delay()
                log.warning("cannot read cluster members (%s); retrying in %.1fs", exc, delay)
                await trio.sleep(delay)
        self._load(first.kvs)
        self.revision = first.header.revision
        self._changed()
        task_status.started()
        await self.client.watch(
            self.members_prefix, end, self._apply, start_revision=self.revision + 1
        )


def member_table_snapshot(members: Mapping[str, MemberRecord]) -> list[dict[str, Any]]:
    """The table as JSON-able rows sorted by node ID (for status endpoints and logs)."""
    return [attrs.asdict(members[node_id]) for node_id in sorted(members)]
