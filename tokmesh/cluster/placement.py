"""Where data lives: the shard of a key and the bounded-load placement of shards on nodes.

Everything here is a pure function of its arguments (murmur3 hashes, never Python's
per-process randomised ``hash()``), so every node, every process and every restart computes
the same answer. The coordinator runs :func:`place` and writes the result to etcd with a
version; nodes route with that written map, never with their own recomputation, so a rule
change here cannot make two nodes disagree about a live map.

The rule:

* A session lives in shard ``murmur3_x86_32(utf8(session_id), seed 0) mod 256``. 256 is
  fixed for the life of a cluster: changing it would move every session.
* Each node has 256 virtual nodes on a 64-bit ring; virtual node ``i`` of node ``n`` sits at
  the first 64 bits of ``murmur3_x64_128(utf8(n) + uint32_be(i), seed 0)``. Many small arcs
  per node keep the ring even and make a join or leave take a little from everyone.
* Shard ``s`` sits at the first 64 bits of ``murmur3_x64_128(uint32_be(s))``. Walking the
  ring clockwise from there, its owner is the first node that owns fewer than
  ``ceil(256 / nodes)`` shards so far (bounded-load consistent hashing); plain ring placement
  gives 3 nodes 77/78/101 shards, the bound gives 85/85/86. Backups are the next distinct
  nodes on the same walk, preferring nodes on another host.
"""

from __future__ import annotations

import bisect
import functools
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import mmh3

from tokmesh.domain.shards import SHARDS, shard_of

__all__ = [
    "SHARDS",
    "VNODES_PER_NODE",
    "Placement",
    "Ring",
    "place",
    "ring_hash",
    "shard_of",
    "shard_position",
    "vnode_positions",
]

#: Virtual nodes per physical node on the ring.
VNODES_PER_NODE = 256

_U32_BE = struct.Struct(">I")


def ring_hash(data: bytes) -> int:
    """The first (low) unsigned 64 bits of murmur3 x64 128-bit of ``data``, seed 0."""
    return int(mmh3.hash64(data, seed=0, x64arch=True, signed=False)[0])


@functools.lru_cache(maxsize=4096)
def vnode_positions(node_id: str) -> tuple[int, ...]:
    """The ring positions of the 256 virtual nodes of ``node_id`` (index = vnode number)."""
    prefix = node_id.encode("utf-8")
    return tuple(ring_hash(prefix + _U32_BE.pack(i)) for i in range(VNODES_PER_NODE))


def shard_position(shard: int) -> int:
    """The ring position of ``shard``."""
    return ring_hash(_U32_BE.pack(shard))


@dataclass(frozen=True, slots=True)
class Ring:
    """The virtual nodes of a set of nodes, sorted by position.

    Two virtual nodes at the same position (a 64-bit collision, practically never) are
    ordered by node id so the ring does not depend on the order nodes were given in.
    """

    positions: tuple[int, ...]
    nodes: tuple[str, ...]

    @classmethod
    def of(cls, node_ids: Iterable[str]) -> Ring:
        """The ring of ``node_ids`` (duplicates count once)."""
        points = sorted((pos, node) for node in set(node_ids) for pos in vnode_positions(node))
        return cls(tuple(p for p, _ in points), tuple(n for _, n in points))

    def index_at(self, target: int) -> int:
        """Index of the first virtual node at or after ``target``, wrapping to 0."""
        if not self.positions:
            raise ValueError("empty ring")
        i = bisect.bisect_left(self.positions, target)
        return 0 if i == len(self.positions) else i

    def lookup(self, target: int) -> str:
        """The node of the first virtual node at or after ``target`` (plain ring lookup)."""
        return self.nodes[self.index_at(target)]


@dataclass(frozen=True, slots=True)
class Placement:
    """An immutable shard map: the owner and backups of each of the 256 shards.

    The version under which it is published is the caller's business (etcd's).
    """

    owners: tuple[str, ...]
    backups: tuple[tuple[str, ...], ...]

    def owner(self, shard: int) -> str:
        """The node that owns ``shard``."""
        return self.owners[shard]

    def replicas(self, shard: int) -> tuple[str, ...]:
        """Owner first, then the backups of ``shard``."""
        return (self.owners[shard], *self.backups[shard])

    def shards_of(self, node_id: str) -> list[int]:
        """The shards ``node_id`` owns, ascending."""
        return shards_owned(self.owners, node_id)

    def counts(self) -> dict[str, int]:
        """Number of shards owned per node (nodes owning none are absent)."""
        return owner_counts(self.owners)


def shards_owned(owners: Sequence[str], node_id: str) -> list[int]:
    """The shards (indexes of ``owners``) that ``node_id`` owns, ascending."""
    return [s for s, owner in enumerate(owners) if owner == node_id]


def owner_counts(owners: Sequence[str]) -> dict[str, int]:
    """Shards owned per node in an owner-per-shard list (nodes owning none are absent)."""
    out: dict[str, int] = {}
    for owner in owners:
        out[owner] = out.get(owner, 0) + 1
    return out


def place(
    node_ids: Iterable[str],
    *,
    replication_factor: int = 1,
    hosts: Mapping[str, str] | None = None,
) -> Placement:
    """Bounded-load consistent-hash placement of the 256 shards on ``node_ids``.

    ``replication_factor`` counts the owner (1 = no backups); it is capped at the number of
    nodes. ``hosts`` maps a node id to its host (IP); when given, backups prefer a host that
    holds none of the shard's replicas yet, so one machine failing loses no shard.
    Shards are placed in ascending order; the result depends only on the set of nodes.
    """
    ring = Ring.of(node_ids)
    count = len(set(ring.nodes))
    if count == 0:
        raise ValueError("placement needs at least one node")
    if replication_factor < 1:
        raise ValueError("replication_factor must be at least 1")
    backups_wanted = min(replication_factor, count) - 1
    bound = math.ceil(SHARDS / count)
    size = len(ring.nodes)
    load: dict[str, int] = {}
    owners: list[str] = []
    backups: list[tuple[str, ...]] = []
    for shard in range(SHARDS):
        start = ring.index_at(shard_position(shard))
        # The bound times the node count is at least 256, so some node is below it and the
        # walk ends within one turn of the ring.
        for step in range(size):
            node = ring.nodes[(start + step) % size]
            if load.get(node, 0) < bound:
                break
        load[node] = load.get(node, 0) + 1
        owners.append(node)
        backups.append(_backups(ring, (start + step) % size, node, backups_wanted, hosts))
    return Placement(tuple(owners), tuple(backups))


def _backups(
    ring: Ring, at: int, owner: str, wanted: int, hosts: Mapping[str, str] | None
) -> tuple[str, ...]:
    """The next ``wanted`` distinct nodes clockwise after index ``at`` (the owner's vnode).

    With ``hosts``, a first turn takes only nodes on a host not yet used by this shard and
    a second turn fills what is still missing from any node.
    """
    if wanted == 0:
        return ()
    chosen = [owner]
    size = len(ring.nodes)
    turns = (True, False) if hosts else (False,)
    for new_host_only in turns:
        used_hosts = {hosts.get(n, n) for n in chosen} if hosts else set()
        for step in range(1, size):
            node = ring.nodes[(at + step) % size]
            if node in chosen:
                continue
            if new_host_only and hosts is not None:
                host = hosts.get(node, node)
                if host in used_hosts:
                    continue
                used_hosts.add(host)
            chosen.append(node)
            if len(chosen) > wanted:
                return tuple(chosen[1:])
    return tuple(chosen[1:])
