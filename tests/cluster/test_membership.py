"""Membership against a real etcd: cluster ID, node ID conflicts, leases, the member table."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.cluster.conftest import EtcdMember
from tests.support.server import free_port
from tokmesh.cluster import etcd_wire as wire
from tokmesh.cluster.etcd import EtcdClient, EtcdSettings, WatchResync
from tokmesh.cluster.membership import (
    CLUSTER_ID_FILE,
    ClusterIdMismatch,
    MemberRecord,
    Membership,
    MembershipSettings,
    MembershipState,
    MemberTable,
    NodeIdConflict,
    log_parity,
    parity,
)


def _client(*endpoints: str, request_timeout: float = 2.0) -> EtcdClient:
    return EtcdClient(
        EtcdSettings(endpoints=endpoints, backoff_max=0.2, request_timeout=request_timeout)
    )


def _settings(
    data_dir: Path, prefix: bytes, node_id: str = "tmnd-a", ttl: int = 2
) -> MembershipSettings:
    return MembershipSettings(
        node_id=node_id,
        advertise_address=f"127.0.0.1:{free_port()}",
        data_dir=data_dir,
        version="9.9.9",
        prefix=prefix.decode(),
        lease_ttl=ttl,
        retry_initial=0.05,
        retry_max=0.3,
    )


async def _wait(cond: Callable[[], bool], timeout: float) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.05)


async def test_cluster_id_created_once_persisted_and_mismatch_refused(
    etcd: EtcdMember, etcd_prefix: bytes, tmp_path: Path
) -> None:
    async with _client(etcd.url) as c:
        first = Membership(c, _settings(tmp_path / "a", etcd_prefix))
        created = await first.ensure_cluster_id()
        assert (tmp_path / "a" / CLUSTER_ID_FILE).read_text().strip() == created
        second = Membership(c, _settings(tmp_path / "b", etcd_prefix, "tmnd-b"))
        assert await second.ensure_cluster_id() == created
        assert (tmp_path / "b" / CLUSTER_ID_FILE).read_text().strip() == created
        stranger_dir = tmp_path / "c"
        stranger_dir.mkdir()
        other = "0b7a6d35-1a55-4c1e-9d3e-2f86b8f3f6a1"
        (stranger_dir / CLUSTER_ID_FILE).write_text(other + "\n")
        stranger = Membership(c, _settings(stranger_dir, etcd_prefix, "tmnd-c"))
        with pytest.raises(ClusterIdMismatch) as info:
            await stranger.run()
        assert other in info.value.message and created in info.value.message
        assert stranger.state is MembershipState.CONNECTING
        stored = await c.get(etcd_prefix + b"cluster_id")
        assert stored is not None and stored.value.decode() == created
        assert await c.get(etcd_prefix + b"members/tmnd-c") is None


async def test_duplicate_live_node_id_refused_and_own_restart_accepted(
    etcd: EtcdMember, etcd_prefix: bytes, tmp_path: Path
) -> None:
    async with _client(etcd.url) as c, trio.open_nursery() as nursery:
        live = Membership(c, _settings(tmp_path / "live", etcd_prefix, "tmnd-dup"))
        nursery.start_soon(live.run)
        await _wait(lambda: live.state is MembershipState.CONNECTED, 5)
        twin = Membership(c, _settings(tmp_path / "twin", etcd_prefix, "tmnd-dup"))
        with pytest.raises(NodeIdConflict) as info:
            await twin.run()
        assert info.value.code == "TM-CLST-4090" and info.value.http_status == 409
        assert live.record.advertise_address in info.value.message
        # The refused twin left no lease behind and did not touch the live record.
        held = await c.get(etcd_prefix + b"members/tmnd-dup")
        assert held is not None and held.lease == live.lease_id
        # The same node restarting from its own data dir takes over its leftover key.
        nursery.cancel_scope.cancel()
    async with _client(etcd.url) as c, trio.open_nursery() as nursery:
        again = Membership(c, _settings(tmp_path / "live", etcd_prefix, "tmnd-dup"))
        nursery.start_soon(again.run)
        await _wait(lambda: again.state is MembershipState.CONNECTED, 5)
        held = await c.get(etcd_prefix + b"members/tmnd-dup")
        assert held is not None and held.lease == again.lease_id != live.lease_id
        # Leaving revokes the lease: the key goes at once, and run() ends, not re-registers.
        await again.leave()
        assert await c.get(etcd_prefix + b"members/tmnd-dup") is None
        await _wait(lambda: again.state is MembershipState.LOST, 3)
        await trio.sleep(1)
        assert await c.get(etcd_prefix + b"members/tmnd-dup") is None


async def test_member_table_sees_join_and_lease_expiry(
    etcd: EtcdMember, etcd_prefix: bytes, tmp_path: Path
) -> None:
    async with _client(etcd.url) as c, trio.open_nursery() as nursery:
        table = MemberTable(c, etcd_prefix.decode())
        await nursery.start(table.run)
        assert table.members == {}
        node = Membership(c, _settings(tmp_path / "n", etcd_prefix, "tmnd-n", ttl=2))
        async with trio.open_nursery() as node_nursery:
            node_nursery.start_soon(node.run)
            await _wait(lambda: "tmnd-n" in table.members, 5)
            assert table.members["tmnd-n"] == node.record
            # Alive past its TTL while the keepalive runs.
            await trio.sleep(3)
            assert "tmnd-n" in table.members
            node_nursery.cancel_scope.cancel()
        stopped = trio.current_time()
        await _wait(lambda: "tmnd-n" not in table.members, 6)
        # Gone after the TTL (2 s), not before it.
        assert trio.current_time() - stopped > 0.5
        nursery.cancel_scope.cancel()


async def test_member_table_refuses_undecodable_record_and_resyncs(
    etcd: EtcdMember, etcd_prefix: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    good = MemberRecord("tmnd-x", "10.0.0.1:5343", "1.0", 1.5)
    async with _client(etcd.url) as c, trio.open_nursery() as nursery:
        table = MemberTable(c, etcd_prefix.decode())
        await nursery.start(table.run)
        key = etcd_prefix + b"members/tmnd-x"
        await c.put(key, good.encode())
        await _wait(lambda: "tmnd-x" in table.members, 5)
        with caplog.at_level(logging.ERROR, logger="tokmesh.cluster.membership"):
            rev = (await c.put(key, b"{not json")).header.revision
            await _wait(lambda: table.revision >= rev, 5)
        assert table.members["tmnd-x"] == good  # the last good record stays
        assert any(key.decode() in r.getMessage() for r in caplog.records)
        # A resync replaces the table: members not in it are gone, bad ones keep last good.
        other = MemberRecord("tmnd-y", "10.0.0.2:5343", "1.0", 2.0)
        resync = WatchResync(
            (
                wire.KeyValue(key, b"garbage", 1, rev, 2, 0),
                wire.KeyValue(etcd_prefix + b"members/tmnd-y", other.encode(), 1, rev, 1, 0),
            ),
            rev,
        )
        await table._apply(resync)
        assert table.members == {"tmnd-x": good, "tmnd-y": other}
        nursery.cancel_scope.cancel()


async def test_unreachable_at_start_then_etcd_restart_re_grants_lease(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    member = EtcdMember(tmp_path / "etcd", "late", free_port(), free_port())
    try:
        async with (
            _client(member.url, request_timeout=0.5) as c,
            trio.open_nursery() as nursery,
        ):
            node = Membership(c, _settings(tmp_path / "n", b"/tokmesh/", "tmnd-r", ttl=2))
            with caplog.at_level(logging.WARNING, logger="tokmesh.cluster.membership"):
                nursery.start_soon(node.run)
                await trio.sleep(2.5)
                assert node.state is MembershipState.CONNECTING
                assert "unreachable" in node.state_reason
                failures = [r for r in caplog.records if "cannot register" in r.getMessage()]
                assert len(failures) >= 2
            await trio.to_thread.run_sync(member.start)
            await _wait(lambda: node.state is MembershipState.CONNECTED, 10)
            first_lease = node.lease_id
            # etcd down longer than the TTL: the node declares its lease lost ...
            await trio.to_thread.run_sync(member.stop)
            await _wait(lambda: node.state is MembershipState.LOST, 6)
            await trio.to_thread.run_sync(member.start)
            # ... and registers again under a new lease once etcd is back.
            await _wait(lambda: node.state is MembershipState.CONNECTED, 10)
            assert node.lease_id != first_lease
            held = await c.get(b"/tokmesh/members/tmnd-r")
            assert held is not None and held.lease == node.lease_id
            assert MemberRecord.decode(held.value) == node.record
            nursery.cancel_scope.cancel()
    finally:
        member.stop()


def test_parity(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="tokmesh.cluster.membership"):
        log_parity(parity(4))
        log_parity(parity(3))
    warn, debug = caplog.records
    assert warn.levelno == logging.WARNING and debug.levelno == logging.DEBUG
    assert warn.__dict__["node_count"] == 4 and warn.__dict__["health"] == "DEGRADED"
    assert warn.__dict__["recommendation"] == "use odd numbers (3, 5, 7)"
    assert debug.__dict__["health"] == "OK"
    even = parity(4)
    assert even.even and even.health == "DEGRADED"
    assert even.message == (
        "Cluster has even number of nodes (4). Network partition may cause quorum loss."
    )
    assert not parity(3).even and parity(3).health == "OK"
    assert not parity(1).even and not parity(0).even


def test_member_record_decode_refuses_bad_records() -> None:
    rec = MemberRecord("tmnd-a", "h:1", "1.0", 3.0)
    assert MemberRecord.decode(rec.encode()) == rec
    for raw in (b"[]", b"{}", b'{"node_id":"a","advertise_address":"h","version":"1"}', b"\xff"):
        with pytest.raises(ValueError):
            MemberRecord.decode(raw)
