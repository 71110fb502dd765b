"""The shard map: which node owns each of the 256 shards, under which fencing epoch.

The coordinator computes a map with :func:`next_map` and writes it to etcd under a
compare-and-swap; every node watches that key and routes with the map it last decoded.
Nodes never recompute placement themselves, so two nodes can disagree about ownership only
for as long as one of them has not yet seen the latest write.

Epochs. Each shard carries the map version at which its owner last changed. Map versions
only grow (each write is a compare-and-swap on the previous one), so a shard's epoch grows
with every change of its owner and never repeats: it is the fencing token that data-plane
messages carry, and a receiver that knows a newer epoch for a shard refuses the older one.
(The etcd revision of the write cannot be stored inside the value it versions; the map
version is the same order without that circularity.)

What changes ownership: the first map (once the expected number of nodes is live), and
shards whose owner is gone (its lease expired, or it left for good), which go to an
in-sync replica when there is one (failover). With one copy of each shard, a node that is
merely down keeps its shards: they answer ``TM-CLST-5030`` until it returns with its
write-ahead log, because nothing else holds their data. Moving live shards with their
data is the rebalance's job and builds on the same epochs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tokmesh.cluster.placement import owner_counts, place, shards_owned
from tokmesh.domain.shards import SHARDS, shard_of

__all__ = ["ReplicaPosition", "ShardMap", "ShardMapError", "next_map", "switched", "with_incoming"]

_FORMAT = 1


class ShardMapError(ValueError):
    """A stored shard map that does not decode; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class ShardMap:
    """One version of the shard map (immutable; a new version is a new object)."""

    version: int
    owners: tuple[str, ...]
    epochs: tuple[int, ...]
    backups: tuple[tuple[str, ...], ...]

    def owner(self, shard: int) -> str:
        """The node that owns ``shard``."""
        return self.owners[shard]

    def owner_of(self, session_id: str) -> str:
        """The node that owns the shard of ``session_id``."""
        return self.owners[shard_of(session_id)]

    def epoch(self, shard: int) -> int:
        """The fencing epoch of ``shard``: the map version at which its owner last changed."""
        return self.epochs[shard]

    def shards_of(self, node_id: str) -> list[int]:
        """The shards ``node_id`` owns, ascending."""
        return shards_owned(self.owners, node_id)

    def counts(self) -> dict[str, int]:
        """Shards owned per node (nodes that own none are absent)."""
        return owner_counts(self.owners)

    def encode(self) -> bytes:
        """The JSON stored in etcd."""
        return orjson.dumps(
            {
                "format": _FORMAT,
                "version": self.version,
                "owners": self.owners,
                "epochs": self.epochs,
                "backups": self.backups,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> ShardMap:
        """Parse and check a stored map; :class:`ShardMapError` names the first problem.

        A map that fails here is never used: the caller keeps the last good one.
        """
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ShardMapError(f"not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise ShardMapError("not a JSON object")
        if doc.get("format") != _FORMAT:
            raise ShardMapError(f"unknown format {doc.get('format')!r} (expected {_FORMAT})")
        version: Any = doc.get("version")
        if not _positive_int(version):
            raise ShardMapError("version is not a positive integer")
        owners = _list_of(doc, "owners", lambda v: isinstance(v, str) and v != "")
        epochs = _list_of(doc, "epochs", _positive_int)
        backups = _list_of(
            doc,
            "backups",
            lambda v: isinstance(v, list) and all(isinstance(n, str) and n for n in v),
        )
        for shard, epoch in enumerate(epochs):
            if epoch > version:
                raise ShardMapError(f"shard {shard}: epoch {epoch} is newer than the map")
        for shard, (owner, extra) in enumerate(zip(owners, backups, strict=True)):
            if owner in extra or len(set(extra)) != len(extra):
                raise ShardMapError(f"shard {shard}: a node is listed twice among its replicas")
        return cls(
            version=version,
            owners=tuple(owners),
            epochs=tuple(epochs),
            backups=tuple(tuple(b) for b in backups),
        )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _list_of(doc: Mapping[str, Any], field: str, valid: Any) -> list[Any]:
    items = doc.get(field)
    if not isinstance(items, list) or len(items) != SHARDS:
        raise ShardMapError(f"{field} is not a list of {SHARDS} entries")
    for shard, item in enumerate(items):
        if not valid(item):
            raise ShardMapError(f"{field}[{shard}] is not valid")
    return items


#: What a replica reports of one shard: (epoch, sequence applied, holds a full copy).
ReplicaPosition = tuple[int, int, bool]


def next_map(
    current: ShardMap | None,
    live: Collection[str],
    *,
    departed: Collection[str] = (),
    expect_nodes: int = 1,
    replication_factor: int = 1,
    hosts: Mapping[str, str] | None = None,
    positions: Mapping[str, Mapping[int, ReplicaPosition]] | None = None,
) -> ShardMap | None:
    """The map the coordinator should write next, or ``None`` when nothing changes.

    ``live`` are the members whose lease is alive; ``departed`` the nodes that left for
    good. With no map yet, the first one is written once at least ``expect_nodes`` nodes
    are live: bounded-load placement over them, every epoch 1.

    After that, a shard whose owner is gone (its lease expired, or it departed) is given
    to the most up-to-date of its live backups that holds a full copy of the shard at
    the current epoch (``positions``: what each backup reported); the new version becomes
    the shard's epoch, which fences the old owner. A backup that is not in sync (it
    restarted, or it has not finished its first copy) is never promoted: the shard then
    stays with its dead owner (answering ``TM-CLST-5030``) rather than serving stale
    data, unless the owner departed for good: then it goes where placement over the live
    nodes puts it (without its data, which left with its owner). Every other shard keeps
    its owner and epoch. Backups follow placement over the live nodes (keeping the live
    ones a shard already has); a new backup is seeded by its owner.
    """
    live_set = set(live) - set(departed)
    if not live_set:
        return None
    target = place(live_set, replication_factor=replication_factor, hosts=hosts)
    if current is None:
        if len(live_set) < expect_nodes:
            return None
        return ShardMap(1, target.owners, (1,) * SHARDS, target.backups)
    gone = set(departed)
    version = current.version + 1
    owners = list(current.owners)
    epochs = list(current.epochs)
    moved = False
    for shard, owner in enumerate(current.owners):
        if owner in live_set:
            continue
        heir = _heir(shard, current, live_set, positions or {})
        if heir is None and owner in gone:
            heir = target.owners[shard]
        if heir is not None:
            owners[shard] = heir
            epochs[shard] = version
            moved = True
    width = len(target.backups[0])
    backups = tuple(
        tuple(n for n in target.replicas(shard) if n != owners[shard])[:width]
        for shard in range(SHARDS)
    )
    backups = tuple(
        _keep_heirs(current.backups[shard], backups[shard], owners[shard], live_set, width)
        for shard in range(SHARDS)
    )
    if not moved and backups == current.backups:
        return None
    return ShardMap(version, tuple(owners), tuple(epochs), backups)


def _heir(
    shard: int,
    current: ShardMap,
    live: set[str],
    positions: Mapping[str, Mapping[int, ReplicaPosition]],
) -> str | None:
    """The live, in-sync backup of ``shard`` that applied the most, or None."""
    best: tuple[int, int] | None = None
    heir = None
    for node in current.backups[shard]:
        if node not in live:
            continue
        pos = positions.get(node, {}).get(shard)
        if pos is None:
            continue
        epoch, seq, in_sync = pos
        if not in_sync or epoch != current.epochs[shard]:
            continue
        if best is None or (epoch, seq) > best:
            best, heir = (epoch, seq), node
    return heir


def _keep_heirs(
    old: tuple[str, ...], placed: tuple[str, ...], owner: str, live: set[str], width: int
) -> tuple[str, ...]:
    """Backups for a shard: every live one it already had (they hold its data, so
    keeping them avoids a copy; a shard being moved has one more than ``width`` until
    the move switches it), then placement's choices up to ``width``."""
    out = [n for n in old if n in live and n != owner]
    for node in placed:
        if len(out) >= width:
            break
        if node not in out and node != owner:
            out.append(node)
    return tuple(out)


def with_incoming(current: ShardMap, targets: Mapping[int, str]) -> ShardMap | None:
    """The first step of moving shards: each target joins its shard's backups (its
    owner then seeds it with a full copy and streams every later change). None when
    every target already is one."""
    backups = list(current.backups)
    changed = False
    for shard, node in targets.items():
        if node != current.owners[shard] and node not in backups[shard]:
            backups[shard] = (*backups[shard], node)
            changed = True
    if not changed:
        return None
    return ShardMap(current.version + 1, current.owners, current.epochs, tuple(backups))


def switched(
    current: ShardMap,
    moves: Mapping[int, tuple[str, int, str]],
    width: int,
) -> ShardMap | None:
    """The second step: each shard in ``moves`` (``shard -> (from, epoch, to)``) whose
    owner and epoch are still ``from`` and ``epoch`` gets owner ``to`` with the new
    version as its epoch; the old owner stays a backup (it holds the data) and the
    backups are trimmed back to ``width``. Shards that changed meanwhile are left alone.
    None when nothing switches."""
    version = current.version + 1
    owners = list(current.owners)
    epochs = list(current.epochs)
    backups = list(current.backups)
    changed = False
    for shard, (old, epoch, new) in moves.items():
        if owners[shard] != old or epochs[shard] != epoch:
            continue
        owners[shard] = new
        epochs[shard] = version
        rest = [n for n in backups[shard] if n not in (new, old)]
        backups[shard] = tuple([old, *rest][:width]) if width else ()
        changed = True
    if not changed:
        return None
    return ShardMap(version, tuple(owners), tuple(epochs), tuple(backups))
