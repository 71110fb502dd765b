"""Coordinator election, shard map writes and the shard map watcher against a real etcd."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.cluster.conftest import EtcdMember
from tests.support.server import free_port
from tokmesh.cluster import etcd_wire as wire
from tokmesh.cluster.coordinator import Coordinator, CoordinatorSettings, leave
from tokmesh.cluster.etcd import EtcdClient, EtcdSettings, EtcdUnavailable
from tokmesh.cluster.membership import MemberRecord, Membership, MembershipSettings, MemberTable
from tokmesh.cluster.shard_map import ShardMap, next_map
from tokmesh.cluster.shard_map_watch import ShardMapWatcher

TTL = 2
A, B, C = "tmnd-a", "tmnd-b", "tmnd-c"


def _client(url: str) -> EtcdClient:
    return EtcdClient(EtcdSettings(endpoints=(url,), backoff_max=0.2, request_timeout=2.0))


def _membership(c: EtcdClient, data_dir: Path, prefix: bytes, node_id: str) -> Membership:
    return Membership(
        c,
        MembershipSettings(
            node_id=node_id,
            advertise_address=f"127.0.0.1:{free_port()}",
            data_dir=data_dir / node_id,
            prefix=prefix.decode(),
            lease_ttl=TTL,
            retry_initial=0.05,
            retry_max=0.3,
        ),
    )


def _coordinator(
    c: EtcdClient, prefix: bytes, membership: Membership, expect_nodes: int = 1
) -> Coordinator:
    settings = CoordinatorSettings(
        node_id=membership.settings.node_id,
        prefix=prefix.decode(),
        expect_nodes=expect_nodes,
        settle=0,
        retry_initial=0.05,
        retry_max=0.3,
    )
    return Coordinator(c, settings, membership)


def _records(*nodes: str) -> Mapping[str, MemberRecord]:
    return {n: MemberRecord(n, f"10.0.0.{i + 1}:5343", "1.0", 1.0) for i, n in enumerate(nodes)}


async def _wait(cond: Callable[[], bool], timeout: float) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.05)


async def _stored_map(c: EtcdClient, prefix: bytes) -> ShardMap | None:
    kv = await c.get(prefix + b"shardmap")
    return None if kv is None else ShardMap.decode(kv.value)


async def test_one_coordinator_and_takeover_after_the_winner_dies(
    etcd: EtcdMember, etcd_prefix: bytes, tmp_path: Path
) -> None:
    async with _client(etcd.url) as c, trio.open_nursery() as outer:
        nodes = {}
        for node_id in (A, B):
            m = _membership(c, tmp_path, etcd_prefix, node_id)
            co = _coordinator(c, etcd_prefix, m)
            scope = trio.CancelScope()
            nodes[node_id] = (m, co, scope)

            async def run_node(m: Membership, co: Coordinator, scope: trio.CancelScope) -> None:
                with scope:
                    async with trio.open_nursery() as n:
                        n.start_soon(m.run)
                        n.start_soon(co.run)

            outer.start_soon(run_node, m, co, scope)
        coords = [co for _, co, _ in nodes.values()]
        await _wait(lambda: all(co.coordinator_id is not None for co in coords), 5)
        winners = [co for co in coords if co.is_coordinator]
        assert len(winners) == 1
        winner = winners[0].settings.node_id
        loser = nodes[B if winner == A else A][1]
        assert loser.coordinator_id == winner and not loser.is_coordinator
        held = await c.get(etcd_prefix + b"coordinator")
        assert held is not None and held.value == winner.encode()
        assert held.lease == nodes[winner][0].lease_id

        # Kill the winner: no resignation, its lease just stops being renewed.
        nodes[winner][2].cancel()
        killed_at = trio.current_time()
        await trio.sleep(TTL / 2)
        assert not loser.is_coordinator and loser.coordinator_id == winner
        await _wait(lambda: loser.is_coordinator, TTL + 3)
        assert trio.current_time() - killed_at >= TTL / 2
        held = await c.get(etcd_prefix + b"coordinator")
        assert held is not None and held.value == loser.settings.node_id.encode()
        outer.cancel_scope.cancel()


async def test_first_map_waits_for_expected_nodes(
    etcd: EtcdMember, etcd_prefix: bytes, tmp_path: Path
) -> None:
    seen: list[int] = []
    async with _client(etcd.url) as c, trio.open_nursery() as n:
        ma, mb, mc = (_membership(c, tmp_path, etcd_prefix, x) for x in (A, B, C))
        co = _coordinator(c, etcd_prefix, ma, expect_nodes=3)
        table = MemberTable(c, etcd_prefix.decode(), on_change=co.members_changed)
        watcher = ShardMapWatcher(c, etcd_prefix.decode(), on_map=lambda m: seen.append(m.version))
        for task in (ma.run, mb.run, co.run):
            n.start_soon(task)
        await n.start(table.run)
        await n.start(watcher.run)
        await _wait(lambda: co.is_coordinator and len(table.members) == 2, 5)
        # Two of three expected nodes: the coordinator has had time to act and wrote nothing.
        await trio.sleep(0.5)
        assert await c.get(etcd_prefix + b"shardmap") is None
        assert watcher.current is None and seen == []

        n.start_soon(mc.run)
        with trio.fail_after(5):
            first = await watcher.wait_for_version(1)
        assert first.version == 1 and set(first.epochs) == {1}
        counts = first.counts()
        assert set(counts) == {A, B, C} and all(84 <= k <= 86 for k in counts.values())
        assert await _stored_map(c, etcd_prefix) == first == co.last_written
        assert seen == [1]
        n.cancel_scope.cancel()


async def test_departed_node_shards_move_and_others_keep_owner_and_epoch(
    etcd: EtcdMember, etcd_prefix: bytes, tmp_path: Path
) -> None:
    initial = next_map(None, [A, B, C])
    assert initial is not None
    async with _client(etcd.url) as c, trio.open_nursery() as n:
        await c.put(etcd_prefix + b"shardmap", initial.encode())
        ma = _membership(c, tmp_path, etcd_prefix, A)
        co = _coordinator(c, etcd_prefix, ma)
        co.members_changed(_records(A, B, C))
        watcher = ShardMapWatcher(c, etcd_prefix.decode())
        n.start_soon(ma.run)
        n.start_soon(co.run)
        await n.start(watcher.run)
        await _wait(lambda: co.is_coordinator, 5)
        await trio.sleep(0.3)
        # Three live nodes, nobody departed: nothing to change.
        assert watcher.current == initial

        await leave(c, C, prefix=etcd_prefix.decode())
        with trio.fail_after(5):
            moved = await watcher.wait_for_version(2)
        assert C not in moved.counts()
        for shard in range(256):
            if initial.owner(shard) == C:
                assert moved.owner(shard) in (A, B) and moved.epoch(shard) == 2
            else:
                assert (moved.owner(shard), moved.epoch(shard)) == (initial.owner(shard), 1)
        n.cancel_scope.cancel()


async def test_watcher_refuses_garbage_and_ignores_a_lower_version(
    etcd: EtcdMember, etcd_prefix: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    base = next_map(None, [A, B])
    assert base is not None
    v2, v1, v3 = (dataclasses.replace(base, version=v) for v in (2, 1, 3))
    key = etcd_prefix + b"shardmap"
    seen: list[int] = []
    async with _client(etcd.url) as c, trio.open_nursery() as n:
        watcher = ShardMapWatcher(c, etcd_prefix.decode(), on_map=lambda m: seen.append(m.version))
        await n.start(watcher.run)
        assert watcher.current is None
        with caplog.at_level(logging.INFO, logger="tokmesh.cluster.shard_map"):
            await c.put(key, v2.encode())
            with trio.fail_after(5):
                await watcher.wait_for_version(2)
            await c.put(key, b'{"format": 1, "version": "x"')
            await c.put(key, v1.encode())
            # Events arrive in order: once v3 is in force the two before it were handled.
            await c.put(key, v3.encode())
            with trio.fail_after(5):
                await watcher.wait_for_version(3)
        assert seen == [2, 3] and watcher.current == v3
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and key.decode() in errors[0] and "not JSON" in errors[0]
        assert "keeping version 2" in errors[0]
        ignored = [
            r.getMessage()
            for r in caplog.records
            if "ignoring shard map version 1" in r.getMessage()
        ]
        assert len(ignored) == 1
        n.cancel_scope.cancel()


class _HookedClient(EtcdClient):
    """Runs ``hook(client, result_of_real_call)`` around the first txn that writes the map."""

    def __init__(self, url: str, map_key: bytes, before: bool) -> None:
        super().__init__(EtcdSettings(endpoints=(url,), backoff_max=0.2, request_timeout=2.0))
        self.map_key = wire.b64(map_key)
        self.before = before
        self.hook: Callable[[], Awaitable[None]] | None = None
        self.map_writes = 0

    async def txn(
        self,
        compares: Sequence[Mapping[str, Any]],
        success: Sequence[Mapping[str, Any]],
        failure: Sequence[Mapping[str, Any]] = (),
        *,
        timeout: float | None = None,
    ) -> wire.TxnResult:
        writes_map = any(op.get("request_put", {}).get("key") == self.map_key for op in success)
        hook, self.hook = (self.hook, None) if writes_map else (None, self.hook)
        if writes_map:
            self.map_writes += 1
        if hook is not None and self.before:
            await hook()
        res = await super().txn(compares, success, failure, timeout=timeout)
        if hook is not None and not self.before:
            await hook()
        return res


async def test_cas_race_with_another_writer_ends_in_one_consistent_map(
    etcd: EtcdMember, etcd_prefix: bytes, tmp_path: Path
) -> None:
    v1 = next_map(None, [A, B, C])
    assert v1 is not None
    key = etcd_prefix + b"shardmap"
    c = _HookedClient(etcd.url, key, before=True)
    async with c, trio.open_nursery() as n:
        first = await c.put(key, v1.encode())
        ma = _membership(c, tmp_path, etcd_prefix, A)
        co = _coordinator(c, etcd_prefix, ma)
        co.members_changed(_records(A, B, C))
        rival_maps: list[ShardMap] = []

        async def rival() -> None:
            # A stale writer that saw B depart: it wins the race with its own v2.
            await leave(c, B, prefix=etcd_prefix.decode())
            v2 = next_map(v1, [A, B, C], departed=[B])
            assert v2 is not None
            rival_maps.append(v2)
            res = await c.txn(
                [wire.compare(key, "MOD", "EQUAL", first.header.revision)],
                [wire.op_put(key, v2.encode())],
            )
            assert res.succeeded

        c.hook = rival
        n.start_soon(ma.run)
        n.start_soon(co.run)
        await _wait(lambda: co.is_coordinator, 5)
        await leave(c, C, prefix=etcd_prefix.decode())
        await _wait(lambda: co.last_written is not None, 5)
        final = await _stored_map(c, etcd_prefix)
        # The coordinator lost its first CAS to the rival's (the second map write), re-read
        # the rival's v2 and built v3 on it.
        assert c.map_writes == 3 and final == co.last_written
        assert final is not None and final.version == 3
        assert final.counts() == {A: 256}
        (v2,) = rival_maps
        for shard in range(256):
            # Shards keep the epoch of v2 unless v3 moved them (C's, some of them B's once).
            expected = 3 if v2.owner(shard) == C else v2.epoch(shard)
            assert final.epoch(shard) == expected
        assert {final.epoch(s) for s in range(256)} == {1, 2, 3}
        n.cancel_scope.cancel()


async def test_write_of_unknown_outcome_is_re_read_not_repeated(
    etcd: EtcdMember, etcd_prefix: bytes, tmp_path: Path
) -> None:
    key = etcd_prefix + b"shardmap"
    c = _HookedClient(etcd.url, key, before=False)
    async with c, trio.open_nursery() as n:
        ma = _membership(c, tmp_path, etcd_prefix, A)
        co = _coordinator(c, etcd_prefix, ma, expect_nodes=2)

        async def lost_answer() -> None:
            raise EtcdUnavailable("no answer in time (outcome unknown)")

        c.hook = lost_answer
        n.start_soon(ma.run)
        n.start_soon(co.run)
        co.members_changed(_records(A, B))
        await _wait(lambda: co.last_written is not None, 5)
        stored = await _stored_map(c, etcd_prefix)
        assert c.map_writes == 1 and stored == co.last_written
        assert stored is not None and stored.version == 1
        n.cancel_scope.cancel()


async def test_even_node_warning_on_gaining_the_role(
    etcd: EtcdMember, etcd_prefix: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with _client(etcd.url) as c, trio.open_nursery() as n:
        ma = _membership(c, tmp_path, etcd_prefix, A)
        co = _coordinator(c, etcd_prefix, ma, expect_nodes=5)
        co.members_changed(_records(A, B, C, "tmnd-d"))
        with caplog.at_level(logging.WARNING, logger="tokmesh.cluster.membership"):
            n.start_soon(ma.run)
            n.start_soon(co.run)
            await _wait(lambda: co.is_coordinator, 5)
            await _wait(lambda: any("even number" in r.getMessage() for r in caplog.records), 2)
        warned = [r for r in caplog.records if "even number of nodes (4)" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        n.cancel_scope.cancel()


async def test_lost_lease_drops_the_role_and_the_node_campaigns_again_on_its_new_lease(
    etcd: EtcdMember, etcd_prefix: bytes, tmp_path: Path
) -> None:
    async with _client(etcd.url) as c, trio.open_nursery() as n:
        ma = _membership(c, tmp_path, etcd_prefix, A)
        co = _coordinator(c, etcd_prefix, ma)
        n.start_soon(ma.run)
        n.start_soon(co.run)
        await _wait(lambda: co.is_coordinator, 5)
        old_lease = ma.lease_id
        await c.lease_revoke(old_lease)
        await _wait(lambda: not co.is_coordinator, 2)
        await _wait(lambda: co.is_coordinator and ma.lease_id != old_lease, TTL + 3)
        held = await c.get(etcd_prefix + b"coordinator")
        assert held is not None and held.lease == ma.lease_id != old_lease
        n.cancel_scope.cancel()


async def test_resign_hands_the_role_over_without_waiting_for_the_lease(
    etcd: EtcdMember, etcd_prefix: bytes, tmp_path: Path
) -> None:
    async with _client(etcd.url) as c, trio.open_nursery() as n:
        ma, mb = (_membership(c, tmp_path, etcd_prefix, x) for x in (A, B))
        ca, cb = (_coordinator(c, etcd_prefix, m) for m in (ma, mb))
        n.start_soon(ma.run)
        await ma.connected.wait()
        a_scope = trio.CancelScope()

        async def run_a() -> None:
            with a_scope:
                await ca.run()

        n.start_soon(run_a)
        await _wait(lambda: ca.is_coordinator, 5)
        n.start_soon(mb.run)
        n.start_soon(cb.run)
        await _wait(lambda: cb.coordinator_id == A, 5)
        a_scope.cancel()
        await trio.sleep(0)
        resigned_at = trio.current_time()
        await ca.resign()
        # Well inside A's lease TTL, which keeps running.
        await _wait(lambda: cb.is_coordinator, TTL / 2)
        assert trio.current_time() - resigned_at < TTL / 2
        assert not ca.is_coordinator
        n.cancel_scope.cancel()


class _Lease:
    """A lease holder the test controls (``Membership`` in production)."""

    def __init__(self, lease_id: int) -> None:
        self.lease_id = lease_id
        self.connected = trio.Event()
        self.connected.set()


async def test_role_dropped_when_membership_reports_its_lease_lost_even_if_etcd_is_silent(
    etcd: EtcdMember, etcd_prefix: bytes
) -> None:
    async with _client(etcd.url) as c, trio.open_nursery() as n:
        grant = await c.lease_grant(30)
        holder = _Lease(grant.lease_id)
        settings = CoordinatorSettings(node_id=A, prefix=etcd_prefix.decode(), settle=0)
        co = Coordinator(c, settings, holder)
        n.start_soon(co.run)
        await _wait(lambda: co.is_coordinator, 5)
        # The membership gave the lease up for lost (etcd unreachable, say); etcd itself
        # still holds the key, so only the coordinator's own check can notice.
        holder.connected = trio.Event()
        await _wait(lambda: not co.is_coordinator, 2)
        assert await c.get(etcd_prefix + b"coordinator") is not None
        # Back on the same lease: its key is recognised as its own and the role resumed.
        holder.connected.set()
        await _wait(lambda: co.is_coordinator, 2)
        await c.lease_revoke(grant.lease_id)
        n.cancel_scope.cancel()
