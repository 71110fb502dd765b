"""API keys in cluster mode: etcd holds them, every node follows them into its local store.

Keys live under ``<prefix>apikeys/<key_id>``; the value is the JSON of
:meth:`ApiKey.to_record`, the same record the WAL's ``KEY_PUT`` carries, so a secret only
ever appears as its Argon2id hash.

* :class:`KeyWatcher` (one per node) reads ``apikeys/`` at start and then watches it,
  applying every change to the node's own key store and dropping the key's cached grants,
  so the node's authenticator sees the change within the watch's latency (milliseconds).
  It applies through the local store's ``put_key``, i.e. through the local WAL: a node that
  restarts while etcd is down still knows every key it knew before.
* :class:`EtcdKeyRepository` is the ``KeyRepository`` the key service writes through in
  cluster mode. Reads come from the local store; a write is a compare-and-swap in etcd,
  then a wait until this node's watcher has applied it (read-your-writes on the node that
  made the change).

etcd has no "delete" for keys in TokMesh, but an operator may remove one by hand: a key
that disappears from etcd is disabled locally, never kept usable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Final

import attrs
import orjson
import trio

from tokmesh.cluster import etcd_wire as wire
from tokmesh.cluster.etcd import Backoff, EtcdClient, WatchEvents, WatchUpdate
from tokmesh.cluster.etcd_wire import EtcdError
from tokmesh.domain.apikey import STATUS_DISABLED, ApiKey
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.services.keys import KeyRepository

__all__ = ["APIKEYS_DIR", "EtcdKeyRepository", "KeyWatcher", "decode_key", "encode_key"]

log = logging.getLogger("tokmesh.cluster.keys")

APIKEYS_DIR: Final = "apikeys/"


def encode_key(key: ApiKey) -> bytes:
    """The etcd value of ``key``: its full record (hashes, never a plaintext secret)."""
    return orjson.dumps(key.to_record())


def decode_key(etcd_key: bytes, prefix: bytes, value: bytes) -> ApiKey:
    """The key stored at ``etcd_key``; ``ValueError`` naming what is wrong otherwise."""
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    try:
        key = ApiKey.from_record(record)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    if key.key_id != etcd_key[len(prefix) :].decode("utf-8", "replace"):
        raise ValueError(f"it names key {key.key_id}")
    return key


def _same_grant(old: ApiKey, new: ApiKey) -> bool:
    """True when only bookkeeping changed (``last_used``, ``version``).

    Such changes arrive from every node about once a minute per key in use; dropping the
    key's cached grants for them would send every node back to Argon2 for nothing.
    """
    return attrs.evolve(old, last_used=new.last_used, version=new.version) == new


class KeyWatcher:
    """Follows ``<prefix>apikeys/`` into the local key store (an actor; start :meth:`run`).

    ``invalidate(key_id)`` is the auth cache's ``invalidate``: it is called after a change
    that matters to authentication has been applied, so a disabled or rotated key is refused
    by this node as soon as the change is applied. A record that does not decode is refused
    with an ERROR naming its etcd key, and the last good version stays in force.
    """

    def __init__(
        self,
        client: EtcdClient,
        store: KeyRepository,
        invalidate: Callable[[str], object],
        prefix: str = "/tokmesh/",
        *,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
    ) -> None:
        self.client = client
        self.store = store
        self._invalidate = invalidate
        self.keys_prefix = (prefix + APIKEYS_DIR).encode()
        #: The etcd revision up to which every change of ``apikeys/`` has been applied.
        self.revision = 0
        #: etcd ``mod_revision`` of each key as last seen (the compare-and-swap operand).
        self.mod_revisions: dict[str, int] = {}
        self._advanced = trio.Event()
        #: True once the full set has been read and applied (for ``/ready``).
        self.synced = False
        self._retry = (retry_initial, retry_max)

    def etcd_key(self, key_id: str) -> bytes:
        """Where ``key_id`` lives in etcd."""
        return self.keys_prefix + key_id.encode()

    def _key_id(self, etcd_key: bytes) -> str:
        return etcd_key[len(self.keys_prefix) :].decode("utf-8", "replace")

    async def wait_applied(self, revision: int, timeout: float) -> bool:
        """Wait until changes up to ``revision`` are applied here; False if time ran out."""
        with trio.move_on_after(timeout):
            while self.revision < revision:
                await self._advanced.wait()
            return True
        return False

    def _advance(self, revision: int) -> None:
        if revision > self.revision:
            self.revision = revision
            self._advanced.set()
            self._advanced = trio.Event()

    async def _store(self, key: ApiKey) -> None:
        # Skipping a change the local store refused could leave a disabled key usable
        # here, so the watch waits (and later changes queue behind it) until it is stored.
        backoff = Backoff(*self._retry)
        while True:
            try:
                await self.store.put_key(key)
                return
            except TokMeshError as exc:
                delay = backoff.next_delay()
                log.error(
                    "cannot apply api key %s from etcd locally (%s); retrying in %.1fs",
                    key.key_id, exc.code, delay,
                )  # fmt: skip
                await trio.sleep(delay)

    async def _put(self, key: ApiKey) -> None:
        old = self.store.get_key(key.key_id)
        if old == key:
            return  # already known (a restart, a resync, or our own write): no WAL record
        await self._store(key)
        if old is None or not _same_grant(old, key):
            self._invalidate(key.key_id)

    async def _gone(self, key_id: str) -> None:
        self.mod_revisions.pop(key_id, None)
        old = self.store.get_key(key_id)
        if old is None or old.status == STATUS_DISABLED:
            return
        log.warning("api key %s was removed from etcd: disabling it on this node", key_id)
        await self._store(attrs.evolve(old, status=STATUS_DISABLED, version=old.version + 1))
        self._invalidate(key_id)

    async def _apply_kv(self, kv: wire.KeyValue) -> None:
        # Kept even for a refused record, so a write from this node may replace it.
        self.mod_revisions[self._key_id(kv.key)] = kv.mod_revision
        try:
            key = decode_key(kv.key, self.keys_prefix, kv.value)
        except ValueError as exc:
            log.error("refusing undecodable api key record at %s: %s", kv.key.decode(), exc)
            return
        await self._put(key)

    async def _apply_all(self, kvs: Iterable[wire.KeyValue]) -> None:
        seen: set[str] = set()
        for kv in kvs:
            seen.add(self._key_id(kv.key))
            await self._apply_kv(kv)
        for key in self.store.list_keys():
            if key.key_id not in seen:
                await self._gone(key.key_id)

    async def _apply(self, update: WatchUpdate) -> None:
        if isinstance(update, WatchEvents):
            for event in update.events:
                if event.type == "DELETE":
                    await self._gone(self._key_id(event.kv.key))
                else:
                    await self._apply_kv(event.kv)
            # The last event's revision, not the header's: a response that carries only
            # part of a long backlog may report a newer store revision than it delivered.
            self._advance(update.events[-1].kv.mod_revision)
        else:
            await self._apply_all(update.kvs)
            self._advance(update.revision)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply the full set, report started, then follow changes until cancelled.

        While etcd cannot be read the node keeps the keys of its local store and retries,
        logging each failed attempt.
        """
        backoff = Backoff(*self._retry)
        end = wire.prefix_range_end(self.keys_prefix)
        while True:
            try:
                first = await self.client.range(self.keys_prefix, end)
                break
            except EtcdError as exc:
                delay = backoff.next_delay()
                log.warning("cannot read api keys from etcd (%s); retrying in %.1fs", exc, delay)
                await trio.sleep(delay)
        await self._apply_all(first.kvs)
        self._advance(first.header.revision)
        self.synced = True
        task_status.started()
        await self.client.watch(
            self.keys_prefix, end, self._apply, start_revision=first.header.revision + 1
        )


class EtcdKeyRepository:
    """The ``KeyRepository`` of cluster mode: writes go to etcd, reads to the local store.

    A write is a compare-and-swap on the key's etcd revision as this node last saw it, so
    a change based on a stale copy (say a ``last_used`` update racing a disable made on
    another node) is refused with ``TM-ADMIN-4091`` instead of undoing the other change.
    It returns once this node's watcher has applied it, or fails with ``TM-CLST-5040``
    after ``timeout`` seconds (etcd unreachable, or the watch behind); in that case the
    change may still be applied later.
    """

    def __init__(self, client: EtcdClient, watcher: KeyWatcher, *, timeout: float = 5.0) -> None:
        self.client = client
        self.watcher = watcher
        self.timeout = timeout

    def get_key(self, key_id: str) -> ApiKey | None:
        """The key as this node last applied it."""
        return self.watcher.store.get_key(key_id)

    def list_keys(self) -> list[ApiKey]:
        """Every key this node knows."""
        return self.watcher.store.list_keys()

    async def put_key(self, key: ApiKey) -> None:
        """Write ``key`` to etcd and wait until this node has applied it."""
        deadline = trio.current_time() + self.timeout
        path = self.watcher.etcd_key(key.key_id)
        expected = self.watcher.mod_revisions.get(key.key_id, 0)
        try:
            result = await self.client.txn(
                [wire.compare(path, "MOD", "EQUAL", expected)],
                [wire.op_put(path, encode_key(key))],
                timeout=self.timeout,
            )
        except EtcdError as exc:
            raise TokMeshError(
                E.CLST_TIMEOUT, f"could not store api key {key.key_id} in etcd: {exc}"
            ) from exc
        if not result.succeeded:
            raise TokMeshError(
                E.ADMIN_CONFLICT,
                "api key was changed on another node; retry",
                details={"key_id": key.key_id},
            )
        left = max(0.0, deadline - trio.current_time())
        if not await self.watcher.wait_applied(result.header.revision, left):
            raise TokMeshError(
                E.CLST_TIMEOUT,
                f"api key {key.key_id} stored in etcd but not yet applied on this node",
            )
