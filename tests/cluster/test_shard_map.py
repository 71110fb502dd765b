"""The shard map: its stored form, its checks, and what the coordinator writes next."""

from __future__ import annotations

import re

import orjson
import pytest

from tokmesh.cluster.shard_map import ShardMap, ShardMapError, next_map
from tokmesh.domain.shards import SHARDS, shard_of

NODES = ["tmnd-a", "tmnd-b", "tmnd-c"]


def test_first_map_waits_for_the_expected_nodes() -> None:
    assert next_map(None, NODES[:2], expect_nodes=3) is None
    first = next_map(None, NODES, expect_nodes=3)
    assert first is not None
    assert first.version == 1 and set(first.epochs) == {1}
    assert sorted(first.counts().values()) in ([85, 85, 86], [84, 86, 86])
    # Deterministic: any node computing it from the same members gets the same map.
    assert next_map(None, list(reversed(NODES)), expect_nodes=3) == first


def test_a_down_node_keeps_its_shards() -> None:
    first = next_map(None, NODES)
    assert first is not None
    # tmnd-c's lease expired but it did not leave: nothing else holds its data.
    after = next_map(first, NODES[:2], replication_factor=1)
    assert after is None or (after.owners == first.owners and after.epochs == first.epochs)


def test_departed_owner_shards_move_with_a_new_epoch_and_nothing_else_moves() -> None:
    first = next_map(None, NODES)
    assert first is not None
    second = next_map(first, NODES[:2], departed=["tmnd-c"])
    assert second is not None and second.version == 2
    for shard in range(SHARDS):
        if first.owner(shard) == "tmnd-c":
            assert second.owner(shard) in ("tmnd-a", "tmnd-b")
            assert second.epoch(shard) == 2
        else:
            assert second.owner(shard) == first.owner(shard)
            assert second.epoch(shard) == 1
    assert "tmnd-c" not in second.counts()
    # Nothing more to do: the next call writes nothing.
    assert next_map(second, NODES[:2], departed=["tmnd-c"]) is None


def test_backups_follow_the_live_nodes_and_never_repeat_the_owner() -> None:
    first = next_map(None, NODES, replication_factor=2)
    assert first is not None
    assert all(len(b) == 1 and b[0] != first.owner(s) for s, b in enumerate(first.backups))


def test_encode_decode_round_trip_and_routing() -> None:
    first = next_map(None, NODES, replication_factor=2)
    assert first is not None
    again = ShardMap.decode(first.encode())
    assert again == first
    sid = "tmss-01jf8y3k5m6nqp8r0s2w4x6z8b"
    assert shard_of(sid) == 177
    assert again.owner_of(sid) == first.owner(177)


def _doc() -> dict[str, object]:
    first = next_map(None, NODES)
    assert first is not None
    doc = orjson.loads(first.encode())
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d.update(format=2), "unknown format"),
        (lambda d: d.update(version=0), "version"),
        (lambda d: d.update(version="3"), "version"),
        (lambda d: d.update(owners=d["owners"][:-1]), "owners is not a list of 256"),
        (lambda d: d["owners"].__setitem__(7, ""), "owners[7]"),
        (lambda d: d["epochs"].__setitem__(3, True), "epochs[3]"),
        (lambda d: d["epochs"].__setitem__(3, 9), "shard 3: epoch 9 is newer"),
        (lambda d: d["backups"].__setitem__(5, [d["owners"][5]]), "shard 5"),
        (lambda d: d.pop("backups"), "backups"),
    ],
)
def test_a_bad_stored_map_is_refused_with_its_reason(change: object, reason: str) -> None:
    doc = _doc()
    change(doc)  # type: ignore[operator]
    with pytest.raises(ShardMapError, match=re.escape(reason)):
        ShardMap.decode(orjson.dumps(doc))


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b'"map"'])
def test_not_a_map_at_all(raw: bytes) -> None:
    with pytest.raises(ShardMapError):
        ShardMap.decode(raw)
