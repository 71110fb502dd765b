"""Placement: the exact hash vectors, ring lookup, bounded-load balance and determinism."""

from __future__ import annotations

import random
import struct
from typing import Any, cast

import mmh3
import pytest

from tokmesh.actors.session_store import SessionStore
from tokmesh.actors.state import StoreState
from tokmesh.cluster import placement
from tokmesh.cluster.placement import SHARDS, Ring, place, ring_hash, shard_of


def test_hash_vectors() -> None:
    assert mmh3.hash("hello", 0, signed=False) == 613153351
    assert mmh3.hash("", 0, signed=False) == 0
    assert ring_hash(b"hello") == 14688674573012802306
    assert ring_hash(b"tmnd-node1" + b"\x00\x00\x00\x00") == 12349064777156111237
    assert placement.vnode_positions("tmnd-node1")[0] == 12349064777156111237
    assert shard_of("tmss-01jf8y3k5m6nqp8r0s2w4x6z8b") == 177


def test_vnode_position_uses_big_endian_index() -> None:
    expected = ring_hash(b"tmnd-node1" + struct.pack(">I", 1))
    assert placement.vnode_positions("tmnd-node1")[1] == expected
    assert placement.shard_position(1) == ring_hash(b"\x00\x00\x00\x01")


def test_ring_lookup_first_at_or_after_and_wraps() -> None:
    ring = Ring.of(["tmnd-a", "tmnd-b"])
    first, last = ring.positions[0], ring.positions[-1]
    assert ring.index_at(first) == 0
    assert ring.index_at(first + 1) == 1
    assert ring.index_at(last + 1) == 0
    assert ring.lookup(last) == ring.nodes[-1]


def test_three_nodes_own_84_to_86_shards_each() -> None:
    counts = place(["tmnd-node1", "tmnd-node2", "tmnd-node3"]).counts()
    assert sorted(counts) == ["tmnd-node1", "tmnd-node2", "tmnd-node3"]
    assert all(84 <= c <= 86 for c in counts.values()), counts
    assert sum(counts.values()) == SHARDS


def test_placement_independent_of_input_order() -> None:
    nodes = [f"tmnd-n{i}" for i in range(7)]
    shuffled = nodes[:]
    random.Random(5).shuffle(shuffled)
    assert place(nodes, replication_factor=3) == place(shuffled, replication_factor=3)


def test_backups_are_distinct_and_prefer_another_host() -> None:
    nodes = ["tmnd-a1", "tmnd-a2", "tmnd-b1", "tmnd-b2"]
    hosts = {"tmnd-a1": "10.0.0.1", "tmnd-a2": "10.0.0.1", "tmnd-b1": "10.0.0.2"}
    hosts["tmnd-b2"] = "10.0.0.2"
    result = place(nodes, replication_factor=2, hosts=hosts)
    for shard in range(SHARDS):
        owner, backup = result.replicas(shard)
        assert owner != backup
        assert hosts[owner] != hosts[backup]


def test_replication_factor_capped_at_node_count() -> None:
    result = place(["tmnd-a", "tmnd-b"], replication_factor=3)
    assert all(len(result.replicas(s)) == 2 for s in range(SHARDS))


def test_one_join_moves_few_shards() -> None:
    before = place([f"tmnd-n{i}" for i in range(5)])
    after = place([f"tmnd-n{i}" for i in range(6)])
    moved = sum(a != b for a, b in zip(before.owners, after.owners, strict=True))
    # The newcomer must take about 1/6 of the shards; far more would mean a reshuffle.
    assert SHARDS // 6 - 5 <= moved <= SHARDS // 3


def test_store_actor_of_a_user_is_the_murmur3_shard_in_every_process() -> None:
    # Python's hash() of a str changes with PYTHONHASHSEED; the store must not use it.
    store = SessionStore(StoreState(), cast(Any, None), shard_count=4)
    users = [f"user-{i}" for i in range(64)]
    assert [store.shard_for(u).index for u in users] == [shard_of(u) % 4 for u in users]


def test_store_shard_count_must_divide_256() -> None:
    with pytest.raises(ValueError, match="divide 256"):
        SessionStore(StoreState(), cast(Any, None), shard_count=3)
