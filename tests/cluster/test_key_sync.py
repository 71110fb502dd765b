"""API keys in cluster mode against a real etcd and two real in-process nodes.

Each node is a real storage engine (WAL on disk), auth-cache actor, key service and
authenticator, wired the way the server wires them in cluster mode: the key service writes
through :class:`EtcdKeyRepository`, and a :class:`KeyWatcher` applies etcd's keys to the
node's store.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import orjson
import pytest
import trio

from tests.cluster.conftest import EtcdMember
from tests.core.conftest import engine_settings
from tokmesh.actors.auth_cache import AuthCache
from tokmesh.actors.engine import StorageEngine
from tokmesh.actors.session_store import SessionStore
from tokmesh.cluster.etcd import EtcdClient, EtcdSettings
from tokmesh.cluster.key_sync import EtcdKeyRepository, KeyWatcher
from tokmesh.domain.clock import ManualClock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.services.auth import Authenticator, AuthSettings
from tokmesh.services.keys import KeyService

IP = "127.0.0.1"
FAST = AuthSettings(argon2_memory_kib=8192, argon2_iterations=1, argon2_parallelism=1)


@attrs.define
class Node:
    engine: StorageEngine
    store: SessionStore
    cache: AuthCache
    watcher: KeyWatcher
    keys: KeyService
    auth: Authenticator
    watch_scope: trio.CancelScope


async def _start_watcher(nursery: trio.Nursery, watcher: KeyWatcher) -> trio.CancelScope:
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await watcher.run(task_status=task_status)

    await nursery.start(run)
    return scope


async def _node(
    nursery: trio.Nursery, root: Path, client: EtcdClient, prefix: bytes, clock: ManualClock
) -> Node:
    engine = StorageEngine(engine_settings(root), clock=clock)
    await nursery.start(engine.run)
    assert engine.store is not None
    cache = AuthCache(clock=clock, argon2=FAST.argon2_params(), concurrency=2)
    await nursery.start(cache.run)
    watcher = KeyWatcher(client, engine.store, cache.invalidate, prefix.decode(), retry_max=0.3)
    scope = await _start_watcher(nursery, watcher)
    repo = EtcdKeyRepository(client, watcher, timeout=5.0)
    keys = KeyService(repo, FAST.key_settings(), clock, cache, cache.invalidate)
    auth = Authenticator(FAST, repo, cache, clock)
    return Node(engine, engine.store, cache, watcher, keys, auth, scope)


async def _within(seconds: float, cond: Callable[[], bool]) -> None:
    with trio.fail_after(seconds):
        while not cond():
            await trio.sleep(0.01)


async def _refused(node: Node, key_id: str, secret: str) -> str | None:
    try:
        await node.auth.authenticate(key_id, secret, IP, "business")
    except TokMeshError as exc:
        return exc.code
    return None


@pytest.fixture
async def cluster(
    nursery: trio.Nursery, etcd: EtcdMember, etcd_prefix: bytes, tmp_path: Path
) -> AsyncIterator[tuple[Node, Node, EtcdClient]]:
    async with EtcdClient(EtcdSettings(endpoints=(etcd.url,), backoff_max=0.2)) as client:
        clock = ManualClock(1_750_000_000_000)
        a = await _node(nursery, tmp_path / "a", client, etcd_prefix, clock)
        b = await _node(nursery, tmp_path / "b", client, etcd_prefix, clock)
        yield a, b, client
        for node in (a, b):
            node.watch_scope.cancel()
            await node.engine.stop()
            with trio.fail_after(10):
                await node.engine.wait_stopped()


async def test_key_created_on_a_works_on_b_and_disable_on_b_reaches_a(
    cluster: tuple[Node, Node, EtcdClient], etcd_prefix: bytes
) -> None:
    a, b, client = cluster
    key, secret, _ = await a.keys.create("issuer", description="shared")
    # Read-your-writes on the node that made the change.
    assert a.store.get_key(key.key_id) == key
    start = trio.current_time()
    await _within(1.0, lambda: b.store.get_key(key.key_id) is not None)
    principal = await b.auth.authenticate(key.key_id, secret, IP, "business")
    assert principal.key_id == key.key_id and trio.current_time() - start < 1.0
    # etcd holds the Argon2 hash, never the secret.
    stored = await client.get(etcd_prefix + b"apikeys/" + key.key_id.encode())
    assert stored is not None and secret.encode() not in stored.value
    assert orjson.loads(stored.value)["secret_hash"] == key.secret_hash

    # A caches the grant; the disable made on B must still reach A's cache.
    await a.auth.authenticate(key.key_id, secret, IP, "business")
    assert len(a.cache) == 1
    await b.keys.set_status(key.key_id, "disabled")
    start = trio.current_time()
    with trio.fail_after(1.0):
        while (code := await _refused(a, key.key_id, secret)) is None:
            await trio.sleep(0.01)
    assert code == E.AUTH_DISABLED.code and trio.current_time() - start < 1.0


async def test_undecodable_record_is_refused_and_the_last_good_one_stays(
    cluster: tuple[Node, Node, EtcdClient],
    etcd_prefix: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b, client = cluster
    key, secret, _ = await a.keys.create("validator")
    await _within(1.0, lambda: b.store.get_key(key.key_id) is not None)
    path = etcd_prefix + b"apikeys/" + key.key_id.encode()
    with caplog.at_level(logging.ERROR, logger="tokmesh.cluster.keys"):
        await client.put(path, b"{not json")
        # The watcher goes on: a key created after the bad record still arrives.
        later, _, _ = await a.keys.create("validator")
        await _within(1.0, lambda: b.store.get_key(later.key_id) is not None)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert sum(path.decode() in m for m in errors) == 2  # once on each node
    for node in (a, b):
        assert node.store.get_key(key.key_id) == key
        assert (await node.auth.authenticate(key.key_id, secret, IP, "business")).role == (
            "validator"
        )
    # A write from a node replaces the bad record (its revision was recorded).
    await b.keys.set_status(key.key_id, "disabled")
    await _within(1.0, lambda: a.store.get_key(key.key_id).status == "disabled")  # type: ignore[union-attr]


async def test_restarted_watcher_resyncs_and_stale_writes_conflict(
    nursery: trio.Nursery, cluster: tuple[Node, Node, EtcdClient], etcd_prefix: bytes
) -> None:
    a, b, client = cluster
    kept, _, _ = await a.keys.create("issuer")
    removed, removed_secret, _ = await a.keys.create("issuer")
    await _within(1.0, lambda: b.store.get_key(removed.key_id) is not None)
    b.watch_scope.cancel()
    await a.keys.set_status(kept.key_id, "disabled")
    await client.delete(etcd_prefix + b"apikeys/" + removed.key_id.encode())
    # B's copy is stale now: its write must not undo A's disable.
    with pytest.raises(TokMeshError) as info:
        await b.keys.rotate(kept.key_id)
    assert info.value.error is E.ADMIN_CONFLICT
    stored = await client.get(etcd_prefix + b"apikeys/" + kept.key_id.encode())
    assert stored is not None and orjson.loads(stored.value)["status"] == "disabled"

    watcher = KeyWatcher(client, b.store, b.cache.invalidate, etcd_prefix.decode())
    scope = await _start_watcher(nursery, watcher)
    # The full read at start is applied before ``started``.
    assert watcher.synced
    assert b.store.get_key(kept.key_id).status == "disabled"  # type: ignore[union-attr]
    assert b.store.get_key(removed.key_id).status == "disabled"  # type: ignore[union-attr]
    assert await _refused(b, removed.key_id, removed_secret) == E.AUTH_DISABLED.code
    scope.cancel()
