"""The Trio etcd client against a real etcd: KV, txn, leases, watch, restarts, failover."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trustme

from tests.cluster.conftest import EtcdCluster, EtcdMember
from tests.support.server import free_port
from tokmesh.cluster import etcd_wire as wire
from tokmesh.cluster.etcd import (
    EtcdAuthError,
    EtcdClient,
    EtcdSettings,
    EtcdTLS,
    EtcdUnavailable,
    LeaseKeeper,
    WatchEvents,
    WatchResync,
    WatchUpdate,
)


def _client(*endpoints: str, **kw: object) -> EtcdClient:
    return EtcdClient(EtcdSettings(endpoints=endpoints, **kw))  # type: ignore[arg-type]


class _Collector:
    """Records watch updates and lets a test wait until a condition on them holds."""

    def __init__(self) -> None:
        self.updates: list[WatchUpdate] = []
        self._changed = trio.Event()

    async def __call__(self, update: WatchUpdate) -> None:
        self.updates.append(update)
        self._changed.set()
        self._changed = trio.Event()

    def put_values(self) -> list[bytes]:
        return [
            e.kv.value
            for u in self.updates
            if isinstance(u, WatchEvents)
            for e in u.events
            if e.type == "PUT"
        ]

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while not cond():
                await self._changed.wait()


async def test_put_get_prefix_delete(etcd: EtcdMember, etcd_prefix: bytes) -> None:
    async with _client(etcd.url) as c:
        put = await c.put(etcd_prefix + b"a", b"1")
        await c.put(etcd_prefix + b"b", b"\x00\xff")
        got = await c.get(etcd_prefix + b"a")
        assert got is not None and got.value == b"1" and got.mod_revision == put.header.revision
        assert await c.get(etcd_prefix + b"missing") is None
        res = await c.get_prefix(etcd_prefix)
        assert [(kv.key, kv.value) for kv in res.kvs] == [
            (etcd_prefix + b"a", b"1"),
            (etcd_prefix + b"b", b"\x00\xff"),
        ]
        deleted = await c.delete(etcd_prefix, wire.prefix_range_end(etcd_prefix))
        assert deleted.deleted == 2
        assert (await c.get_prefix(etcd_prefix)).kvs == ()


async def test_txn_compare_and_swap(etcd: EtcdMember, etcd_prefix: bytes) -> None:
    key = etcd_prefix + b"cas"
    absent = [wire.compare(key, "CREATE", "EQUAL", 0)]
    async with _client(etcd.url) as c:
        first = await c.txn(absent, [wire.op_put(key, b"one")], [wire.op_range(key)])
        assert first.succeeded
        second = await c.txn(absent, [wire.op_put(key, b"two")], [wire.op_range(key)])
        assert not second.succeeded
        current = second.responses[0]
        assert isinstance(current, wire.RangeResult) and current.kvs[0].value == b"one"
        rev = current.kvs[0].mod_revision
        stale = await c.txn([wire.compare(key, "MOD", "EQUAL", rev - 1)], [wire.op_put(key, b"x")])
        assert not stale.succeeded
        swap = await c.txn([wire.compare(key, "MOD", "EQUAL", rev)], [wire.op_put(key, b"three")])
        assert swap.succeeded
        by_value = await c.txn(
            [
                wire.compare(key, "VALUE", "EQUAL", b"three"),
                wire.compare(key, "VERSION", "EQUAL", 2),
            ],
            [wire.op_delete(key)],
        )
        assert by_value.succeeded and await c.get(key) is None


async def test_lease_expiry_keepalive_and_revoke(etcd: EtcdMember, etcd_prefix: bytes) -> None:
    async with _client(etcd.url) as c:
        kept = await c.lease_grant(2)
        dropped = await c.lease_grant(2)
        await c.put(etcd_prefix + b"kept", b"", lease=kept.lease_id)
        await c.put(etcd_prefix + b"dropped", b"", lease=dropped.lease_id)
        keeper = LeaseKeeper(c, kept.lease_id, kept.ttl)
        async with trio.open_nursery() as nursery:
            await nursery.start(keeper.run)
            await trio.sleep(kept.ttl + 1.5)
            assert await c.get(etcd_prefix + b"dropped") is None
            assert await c.get(etcd_prefix + b"kept") is not None
            assert not keeper.lost.is_set()
            # Revoking under the keeper's feet: its next renewal reports the loss.
            await c.lease_revoke(kept.lease_id)
            with trio.fail_after(kept.ttl):
                await keeper.lost.wait()
        assert "lease" in keeper.lost_reason
        assert await c.get(etcd_prefix + b"kept") is None
        assert await c.lease_ttl(kept.lease_id) == -1


async def test_watch_delivers_puts_and_deletes_in_order(
    etcd: EtcdMember, etcd_prefix: bytes
) -> None:
    seen = _Collector()
    async with _client(etcd.url) as c, trio.open_nursery() as nursery:
        end = wire.prefix_range_end(etcd_prefix)
        first_rev = await nursery.start(c.watch, etcd_prefix, end, seen)
        assert first_rev > 0
        await c.put(etcd_prefix + b"x", b"1")
        await c.put(etcd_prefix + b"x", b"2")
        await c.delete(etcd_prefix + b"x")
        await seen.wait_for(
            lambda: sum(len(u.events) for u in seen.updates if isinstance(u, WatchEvents)) == 3
        )
        kinds = [e.type for u in seen.updates if isinstance(u, WatchEvents) for e in u.events]
        assert kinds == ["PUT", "PUT", "DELETE"]
        assert seen.put_values() == [b"1", b"2"]
        nursery.cancel_scope.cancel()


async def test_watch_from_compacted_revision_resyncs(etcd: EtcdMember, etcd_prefix: bytes) -> None:
    seen = _Collector()
    async with _client(etcd.url) as c:
        old = (await c.put(etcd_prefix + b"a", b"1")).header.revision
        await c.put(etcd_prefix + b"b", b"1")
        await c.delete(etcd_prefix + b"a")
        last = (await c.put(etcd_prefix + b"c", b"1")).header.revision
        await c.compact(last)
        async with trio.open_nursery() as nursery:
            end = wire.prefix_range_end(etcd_prefix)
            nursery.start_soon(lambda: c.watch(etcd_prefix, end, seen, start_revision=old))
            await seen.wait_for(lambda: len(seen.updates) >= 1)
            resync = seen.updates[0]
            assert isinstance(resync, WatchResync)
            assert sorted(kv.key for kv in resync.kvs) == [etcd_prefix + b"b", etcd_prefix + b"c"]
            # After the resync the watch goes on from the resync's revision.
            await c.put(etcd_prefix + b"d", b"after")
            await seen.wait_for(lambda: seen.put_values() == [b"after"])
            nursery.cancel_scope.cancel()


async def test_unreachable_endpoint_fails_within_deadline() -> None:
    async with _client(f"http://127.0.0.1:{free_port()}", backoff_max=0.1) as c:
        start = trio.current_time()
        with pytest.raises(EtcdUnavailable, match="unreachable"):
            await c.get(b"k", timeout=0.6)
        assert trio.current_time() - start < 3.0


async def test_restart_client_reconnects_and_watch_resumes(
    etcd_factory: Callable[..., EtcdMember],
) -> None:
    member = etcd_factory("restart")
    seen = _Collector()
    async with _client(member.url, backoff_max=0.2) as c, trio.open_nursery() as nursery:
        await nursery.start(c.watch, b"/w/", wire.prefix_range_end(b"/w/"), seen)
        await c.put(b"/w/k", b"before")
        await seen.wait_for(lambda: seen.put_values() == [b"before"])
        await trio.to_thread.run_sync(member.stop)
        with pytest.raises(EtcdUnavailable):
            await c.get(b"/w/k", timeout=0.3)
        await trio.to_thread.run_sync(member.start)
        got = await c.get(b"/w/k", timeout=5)
        assert got is not None and got.value == b"before"
        await c.put(b"/w/k", b"after")
        # Resumed from the revision after the last event: no repeat of "before".
        await seen.wait_for(lambda: seen.put_values() == [b"before", b"after"])
        nursery.cancel_scope.cancel()


async def test_cluster_leader_killed_client_fails_over(etcd_cluster: EtcdCluster) -> None:
    leader = etcd_cluster.leader()
    # The leader first, so the client is talking to the member that dies.
    endpoints = [leader.url] + [m.url for m in etcd_cluster.members if m is not leader]
    seen = _Collector()
    async with _client(*endpoints, backoff_max=0.2) as c, trio.open_nursery() as nursery:
        await nursery.start(c.watch, b"/f/", wire.prefix_range_end(b"/f/"), seen)
        await c.put(b"/f/k", b"1")
        await seen.wait_for(lambda: seen.put_values() == [b"1"])
        await trio.to_thread.run_sync(leader.kill)
        # Reads are retried across endpoints until a member with a new leader answers. A
        # write sent while the election runs may time out with an unknown outcome, which
        # the client reports rather than repeats; so the test writes once reads work.
        got = await c.get(b"/f/k", timeout=10)
        assert got is not None and got.value == b"1"
        assert c.endpoint != leader.url
        put = await c.put(b"/f/k", b"2", timeout=5)
        got = await c.get(b"/f/k", timeout=5)
        assert got is not None and got.value == b"2" and got.mod_revision == put.header.revision
        await seen.wait_for(lambda: seen.put_values() == [b"1", b"2"])
        nursery.cancel_scope.cancel()


async def test_username_password(etcd_factory: Callable[..., EtcdMember]) -> None:
    member = etcd_factory("auth")

    def ctl(*args: str) -> None:
        subprocess.run(
            ["etcdctl", "--endpoints", member.url, *args],
            check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
        )  # fmt: skip

    ctl("user", "add", "root:rootpw", "--interactive=false")
    ctl("auth", "enable")
    async with _client(member.url, username="root", password="rootpw") as c:
        await c.put(b"/auth/k", b"v")
        got = await c.get(b"/auth/k")
        assert got is not None and got.value == b"v"
        seen = _Collector()
        async with trio.open_nursery() as nursery:
            await nursery.start(c.watch, b"/auth/k", None, seen)
            # A token the server no longer knows is replaced transparently.
            c._token = "stale.token"
            await c.put(b"/auth/k", b"w")
            await seen.wait_for(lambda: seen.put_values() == [b"w"])
            nursery.cancel_scope.cancel()
    async with _client(member.url, username="root", password="wrong") as bad:
        with pytest.raises(EtcdAuthError):
            await bad.get(b"/auth/k")


async def test_tls_with_client_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("tokmesh-node")
    files = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "server.pem",
        "key": tmp_path / "server.key",
        "ccert": tmp_path / "client.pem",
        "ckey": tmp_path / "client.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server_cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server_cert.private_key_pem.write_to_path(str(files["key"]))
    client_cert.cert_chain_pems[0].write_to_path(str(files["ccert"]))
    client_cert.private_key_pem.write_to_path(str(files["ckey"]))
    tls = EtcdTLS(str(files["ca"]), str(files["ccert"]), str(files["ckey"]))
    member = EtcdMember(tmp_path / "etcd", "tls", free_port(), free_port())
    member.use_tls(str(files["cert"]), str(files["key"]), str(files["ca"]), tls.context())
    try:
        await trio.to_thread.run_sync(member.start)
        async with _client(member.url, tls=tls) as c:
            await c.put(b"/tls/k", b"v")
            got = await c.get(b"/tls/k")
            assert got is not None and got.value == b"v"
        # Without the client certificate etcd refuses the handshake.
        async with _client(member.url, tls=EtcdTLS(str(files["ca"])), backoff_max=0.1) as anon:
            with pytest.raises(EtcdUnavailable):
                await anon.get(b"/tls/k", timeout=0.5)
    finally:
        member.stop()


async def test_watch_leaves_a_hung_member(etcd_cluster: EtcdCluster) -> None:
    leader = etcd_cluster.leader()
    hung = next(m for m in etcd_cluster.members if m is not leader)
    others = [m.url for m in etcd_cluster.members if m is not hung]
    seen = _Collector()
    watcher = _client(
        hung.url, *others, watch_check_interval=0.3, attempt_timeout=0.5, backoff_max=0.2
    )
    async with watcher, _client(*others) as writer, trio.open_nursery() as nursery:
        await nursery.start(watcher.watch, b"/h/", wire.prefix_range_end(b"/h/"), seen)
        assert watcher.endpoint == hung.url
        assert hung.proc is not None
        # A stopped member keeps its connections open and sends nothing: only the
        # watch's health check can tell it from a quiet key range.
        os.kill(hung.proc.pid, signal.SIGSTOP)
        try:
            await writer.put(b"/h/k", b"while-hung")
            await seen.wait_for(lambda: seen.put_values() == [b"while-hung"], timeout=8)
            assert watcher.endpoint != hung.url
        finally:
            os.kill(hung.proc.pid, signal.SIGCONT)
        nursery.cancel_scope.cancel()
