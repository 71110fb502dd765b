"""The storage engine: recovery, then the WAL writer, shards, sweeper and snapshotter.

Start order (01 §10, 05 §15): the caller starts its listeners first, which answer
``/ready`` 503 while :meth:`StorageEngine.run` recovers; only after the snapshot load, WAL
replay and index rebuild are done does readiness flip to ``ready``. Shutdown reverses it:
shards stop taking messages and commit what they have, the WAL writer drains, fsyncs and
seals its segment.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from tokmesh.actors.commit_stream import CommitStream
from tokmesh.actors.session_store import SessionStore
from tokmesh.actors.snapshotter import SnapshotSettings, Snapshotter
from tokmesh.actors.state import StoreState
from tokmesh.actors.sweeper import TtlSweeper
from tokmesh.actors.wal_writer import WalSettings, WalWriter, describe_failure
from tokmesh.domain.clock import SYSTEM_CLOCK, Clock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.session import Session
from tokmesh.domain.session_settings import SessionSettings
from tokmesh.readiness import Phase, Readiness
from tokmesh.storage.cipher import Cipher, load_or_create_key
from tokmesh.storage.recovery import recover
from tokmesh.telemetry import metrics

log = logging.getLogger("tokmesh.engine")


#: seconds between two freezes of surviving objects (see StorageEngine._freeze_survivors)
FREEZE_INTERVAL = 30.0
FIRST_FREEZE_DELAY = 2.0
#: collections of the middle generation between two full ones (CPython's default: 10)
FULL_COLLECTION_EVERY = 1000
#: seconds a thread waits at most for the GIL while the event loop holds it (CPython's
#: default: 0.005); see tuned_interpreter
GIL_SWITCH_INTERVAL = 0.001


@attrs.frozen
class EngineSettings:
    """Everything the storage engine needs, extracted from the server config."""

    wal_dir: Path
    snapshot_dir: Path
    encryption_key_hex: str = ""
    node_id: str = ""
    wal: WalSettings = attrs.field(factory=WalSettings)
    snapshot: SnapshotSettings = attrs.field(factory=SnapshotSettings)
    sessions: SessionSettings = attrs.field(factory=SessionSettings)
    gc_interval: float = 0.1
    sample_size: int = 20
    shard_count: int = 4


@contextlib.contextmanager
def tuned_interpreter() -> Iterator[None]:
    """The collector and GIL settings the running engine needs, restored when it stops
    (an engine run in a larger process, such as a test run, leaves both as it found
    them)."""
    # Full collections made rare. CPython runs one after every 10 collections of
    # the middle generation unless the objects waiting for it are under a quarter
    # of the old generation, and frozen objects do not count in that quarter: with
    # everything frozen, a full collection ran 2-3 times a second under write load,
    # each walking every record created since the last freeze, up to 33 ms with
    # the loop stopped (bench/write_path.py creates, measured with a loop-lag probe):
    # that was the P99 of writes. Records hold no cycles, so what the rarer full
    # collections find is only the cyclic garbage that reached the old generation.
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], FULL_COLLECTION_EVERY)
    # The GIL handed back to a thread within 1 ms rather than 5. A worker thread
    # whose system call returned (a sync-mode WAL write + fdatasync, the periodic
    # fsync, a snapshot's writes) waits for the GIL while the busy loop holds it, up
    # to the switch interval, and every record of a sync-mode batch waits with it:
    # bench/write_path.py creates-sync gave 7,302 / 8,422 / 8,739 creates/s at 5 ms
    # and 8,195 / 9,130 / 9,137/s at 1 ms, alternating in the same half hour. The
    # loop is the only thread running Python most of the time, so the shorter
    # interval costs nothing until a thread wants the GIL.
    switch_before = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        sys.setswitchinterval(switch_before)


class StorageEngine:
    """Owns the store actors for one node.

    The session operations on top of it live in ``tokmesh.services`` (built over
    :attr:`store` once :meth:`run` has started it): the actors never call up into them.
    """

    def __init__(
        self,
        settings: EngineSettings,
        clock: Clock = SYSTEM_CLOCK,
        readiness: Readiness | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.readiness = readiness or Readiness()
        self.state = StoreState()
        #: Every committed change in WAL order (metrics, events and replication subscribe
        #: here; subscribing before :meth:`run` misses nothing after recovery).
        self.commits = CommitStream()
        self.cipher: Cipher | None = None
        self.wal: WalWriter | None = None
        self.store: SessionStore | None = None
        self.sweeper: TtlSweeper | None = None
        self.snapshotter: Snapshotter | None = None
        self.recovery_info: dict[str, Any] = {}
        self._stopped = trio.Event()
        self._done = trio.Event()
        #: called with the ids of every API key before and after a restore (cache purge)
        self.restore_hooks: list[Any] = []
        self._cancel: trio.CancelScope | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover, start the actors, report started once READY, run until :meth:`stop`."""
        s = self.settings
        self.readiness.set(Phase.RECOVERING)
        started = time.monotonic()
        # Recovery allocates millions of long-lived objects: generational collections
        # during it only rescan them. Off until everything is loaded and frozen below.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            key = await trio.to_thread.run_sync(load_or_create_key, s.wal_dir, s.encryption_key_hex)
            cipher = self.cipher = Cipher(key)
            log.info("encryption at rest: %s", cipher.alg)
            # Recovery fills a private state off the event loop, indexes included, and
            # the live one takes it over in one step: readers of the live state (metrics,
            # status) never see it half-built or changing under them from another thread.
            fresh = StoreState()
            recovered = await trio.to_thread.run_sync(
                recover, s.wal_dir, s.snapshot_dir, cipher, self.clock.now_ms(), fresh
            )
            self._load_keys(recovered.api_keys.values())
            self.state.adopt(fresh)
            self.state.position = recovered.wal_position
        except BaseException:
            if gc_was_enabled:
                gc.enable()
            self.readiness.set(Phase.FAILED, "recovery failed")
            raise
        elapsed = time.monotonic() - started
        self.recovery_info = {
            "sessions": len(self.state.sessions),
            "api_keys": len(self.state.keys),
            "replayed_records": recovered.replayed,
            "snapshot": recovered.snapshot.id if recovered.snapshot else None,
            "duration_ms": int(elapsed * 1000),
        }
        log.info("recovery complete", extra=self.recovery_info)
        if elapsed > 5:
            log.warning("recovery took %.1f s (target 5 s)", elapsed)
        # Everything loaded so far is long-lived: keep it out of the GC's young
        # generations so a full collection does not walk a million records.
        gc.freeze()
        if gc_was_enabled:
            gc.enable()

        wal = self.wal = WalWriter(
            s.wal_dir,
            cipher,
            s.wal,
            on_failure=self._on_wal_failure,
            on_batch=lambda records, nbytes, seconds: metrics.WAL_WRITE_BYTES.inc(nbytes),
        )
        await wal.open(self.state.position)
        store = self.store = SessionStore(
            self.state, wal, shard_count=s.shard_count, commits=self.commits
        )
        self.sweeper = TtlSweeper(store, s.gc_interval, s.sample_size, self.clock)
        self.snapshotter = Snapshotter(
            store, s.snapshot_dir, s.wal_dir, cipher, s.node_id, s.snapshot, self.clock
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(wal.run)
            await nursery.start(store.run)
            with tuned_interpreter():
                async with trio.open_nursery() as periodic:
                    self._cancel = periodic.cancel_scope
                    await periodic.start(self.sweeper.run)
                    await periodic.start(self.snapshotter.run)
                    await periodic.start(self._freeze_survivors)
                    # A WAL that could not be opened for lack of space leaves the node failed
                    # (reads only) rather than ready.
                    if wal.failed is None:
                        self.readiness.set(Phase.READY)
                    task_status.started()
                    await self._stopped.wait()
                    periodic.cancel_scope.cancel()
            # Shutdown: periodic actors stop, shards commit their queue, the WAL drains.
            await store.close()
            await wal.close()
            # Then a snapshot of the final state, so the next start loads it instead of
            # replaying the WAL (bounded; a failure is logged and loses nothing).
            await self.snapshotter.final()
        self._done.set()

    async def _freeze_survivors(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep long-lived records out of full collections (DESIGN §3).

        Sessions created after start-up end up in the oldest generation, and a full
        collection walks every one of them (about a second at a million sessions,
        during which nothing else runs). Every ``FREEZE_INTERVAL`` seconds the young
        generations are collected and the survivors moved to the permanent generation.
        Session records hold no reference cycles, so reference counting still frees
        them when they are purged; only cyclic garbage that outlives a freeze stays.
        """
        task_status.started()
        # The first freeze soon after start-up: by then the listeners are open and the
        # modules they import lazily (the web app, its routes) are loaded; left young,
        # those objects would make the first full collections cost tens of milliseconds.
        delay = FIRST_FREEZE_DELAY
        while True:
            await trio.sleep(delay)
            gc.collect(1)
            gc.freeze()
            delay = FREEZE_INTERVAL

    async def wait_stopped(self) -> None:
        """Wait until :meth:`run` has drained, fsynced and sealed everything."""
        await self._done.wait()

    def _load_keys(self, api_keys: Iterable[dict[str, Any]]) -> None:
        from tokmesh.domain.apikey import ApiKey

        for rec in api_keys:
            key = ApiKey.from_record(rec)
            self.state.keys[key.key_id] = key

    async def _load(
        self, records: Sequence[Session], api_keys: Iterable[dict[str, Any]], position: int
    ) -> None:
        """Rebuild the state and its indexes from records, yielding to the loop often."""
        state = self.state
        # Keys first: during a restore, requests must never see sessions without keys.
        self._load_keys(api_keys)
        step = 50_000
        for i in range(0, len(records), step):
            state.load(records[i : i + step])
            await trio.sleep(0)  # let listeners answer /ready 503 meanwhile
        state.position = position

    async def restore(self, source: Path) -> dict[str, Any]:
        """Replace the whole state with the snapshot file ``source`` (admin restore, 01 §10).

        Verify → safety snapshot of the current state → maintenance (``/ready`` 503,
        writes ``TM-ADMIN-5031``) → wait for in-flight writes → write ``source``'s content
        as the newest snapshot at the current WAL position (the atomic rename is the
        commit point: a crash before it restarts with the old state, after it with the
        new one, never a mix) → load that content, which is what a recovery from the new
        snapshot would produce → ready.
        Raises ``SnapshotCorrupt`` / ``StorageFatalError`` before anything changes when
        ``source`` is unreadable, tampered or encrypted with another key.
        """
        from tokmesh.storage import snapshot_files

        cipher = self.cipher
        store = self.store
        wal = self.wal
        if cipher is None or store is None or wal is None or self.snapshotter is None:
            raise TokMeshError(E.SYS_UNAVAILABLE, "service not ready")
        loaded = await trio.to_thread.run_sync(snapshot_files.read_snapshot, source, cipher)
        safety = await self.snapshotter.take("pre-restore")
        old_keys = set(self.state.keys)
        self.readiness.set(Phase.RESTORING)
        try:
            await store.barrier()
            await wal.sync_now()
            position = self.state.position
            s = self.settings
            now = self.clock.now_ms()
            restored = await trio.to_thread.run_sync(
                lambda: snapshot_files.write_snapshot(
                    s.snapshot_dir,
                    loaded.sessions,
                    loaded.api_keys,
                    position,
                    s.node_id,
                    cipher,
                    now,
                )
            )
            # The barrier left no WAL record past ``position``, so the verified content
            # is exactly what a recovery from the new snapshot would load: use it as is.
            self.state.clear()
            await self._load(loaded.sessions, loaded.api_keys, position)
            for hook in self.restore_hooks:
                hook(old_keys | set(self.state.keys))
        except BaseException:
            self.readiness.set(Phase.FAILED, "restore failed")
            raise
        self.readiness.set(Phase.READY)
        return {
            "sessions": len(self.state.sessions),
            "api_keys": len(self.state.keys),
            "safety_snapshot": safety.id,
            "snapshot": restored.id,
        }

    def _on_wal_failure(self, exc: BaseException) -> None:
        metrics.WAL_FSYNC_FAILED.inc()
        self.readiness.set(Phase.FAILED, f"write-ahead log failure: {describe_failure(exc)}")

    async def stop(self) -> None:
        """Graceful stop: flush and fsync everything acknowledged, seal the WAL."""
        if self.readiness.phase is not Phase.FAILED:
            self.readiness.set(Phase.STOPPING)
        if self._cancel is not None:
            self._cancel.cancel()
        self._stopped.set()
