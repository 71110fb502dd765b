"""The WAL writer's lean write path and its non-blocking APIs (issue 17).

Real segment files in a temporary directory, real fsync, the real cipher and codec.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tokmesh.actors.wal_writer import Append, WalSettings, WalWriter
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.storage.cipher import Cipher
from tokmesh.storage.wal_codec import RecordType, WalRecord
from tokmesh.storage.wal_files import SegmentWriter, read_wal, sync_handle_and_close

NOW = 1_750_000_000_000


def _delete(i: int, *, note: bool = False) -> WalRecord:
    """A DELETE record; with ``note`` it carries an event note, which is encrypted."""
    event = {"cause": "revoke", "by": "", "user_id": "u", "device_id": "", "version": 1}
    return WalRecord(
        type=RecordType.DELETE,
        ts=NOW + i,
        entity_id=f"sid-{i}",
        version=0,
        event=event if note else None,
    )


def _unencodable(i: int) -> WalRecord:
    """A CREATE without its session state: the codec refuses to encode it."""
    return WalRecord(type=RecordType.CREATE, ts=NOW + i, entity_id=f"sid-{i}", version=1)


def _logged_ids(wal_dir: Path, cipher: Cipher) -> list[str]:
    return [rec.entity_id for _, rec in read_wal(wal_dir, 0, cipher)]


class ThreadNotingCipher(Cipher):
    """The real cipher, noting which thread each encryption ran in."""

    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        self.threads: list[int] = []

    def encrypt(self, plaintext: bytes) -> bytes:
        self.threads.append(threading.get_ident())
        return super().encrypt(plaintext)


class Recorder:
    """Appends whose callbacks, and the batch listener, note what happened in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.committed: list[int] = []
        self.failed: list[tuple[int, str]] = []
        self.batches = 0
        self.changed = trio.Event()

    def item(self, i: int, record: WalRecord | None = None) -> Append:
        def on_commit(position: int) -> None:
            self.events.append(("commit", i))
            self.committed.append(i)
            self._poke()

        def on_fail(err: TokMeshError) -> None:
            self.events.append(("fail", i))
            self.failed.append((i, err.code))
            self._poke()

        return Append(record if record is not None else _delete(i), on_commit, on_fail)

    def listener(self) -> None:
        self.batches += 1
        self.events.append(("batch", self.batches))
        self._poke()

    def _poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, n_callbacks: int) -> None:
        with trio.fail_after(10):
            while len(self.committed) + len(self.failed) < n_callbacks:
                await self.changed.wait()


async def test_encoding_runs_on_the_loop_and_writing_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cipher = ThreadNotingCipher(os.urandom(32))
    writer_threads: list[int] = []
    real_append = SegmentWriter.append

    def noting_append(self: SegmentWriter, frames: bytes, n: int, *, sync: bool = False) -> int:
        writer_threads.append(threading.get_ident())
        return real_append(self, frames, n, sync=sync)

    monkeypatch.setattr(SegmentWriter, "append", noting_append)
    wal = WalWriter(tmp_path, cipher, WalSettings(sync_mode="sync", batch_count=4))
    await wal.open()
    rec = Recorder()
    wal.add_batch_listener(rec.listener)
    loop_thread = threading.get_ident()
    async with trio.open_nursery() as nursery:
        await nursery.start(wal.run)
        await wal.append_many([rec.item(i, _delete(i, note=True)) for i in range(10)])
        await rec.wait_for(10)
        await wal.close()
    assert rec.committed == list(range(10))
    assert len(cipher.threads) == 10
    assert set(cipher.threads) == {loop_thread}
    assert len(writer_threads) == 3  # batches of 4 + 4 + 2
    assert loop_thread not in writer_threads
    # What was encoded on the loop reads back, event notes included.
    logged = list(read_wal(tmp_path, 0, Cipher(cipher.secret())))
    assert [r.entity_id for _, r in logged] == [f"sid-{i}" for i in range(10)]
    # Positions handed to on_commit are the ends of the records' frames.
    assert wal.position == logged[-1][0]


async def test_positions_follow_frame_ends(tmp_path: Path) -> None:
    cipher = Cipher(os.urandom(32))
    wal = WalWriter(tmp_path, cipher, WalSettings(sync_mode="batch", batch_count=5))
    await wal.open()
    positions: list[int] = []
    done = trio.Event()

    def item(i: int) -> Append:
        def on_commit(position: int) -> None:
            positions.append(position)
            if len(positions) == 12:
                done.set()

        return Append(_delete(i, note=i % 2 == 0), on_commit, lambda err: None)

    async with trio.open_nursery() as nursery:
        await nursery.start(wal.run)
        await wal.append_many([item(i) for i in range(12)])
        with trio.fail_after(10):
            await done.wait()
        await wal.close()
    assert positions == [pos for pos, _ in read_wal(tmp_path, 0, cipher)]
    assert wal.stats.records == 12 and wal.stats.batches == 3


async def test_encoding_failure_fails_the_batch_and_latches(tmp_path: Path) -> None:
    cipher = Cipher(os.urandom(32))
    latched: list[BaseException] = []
    wal = WalWriter(tmp_path, cipher, WalSettings(sync_mode="sync", batch_count=10), latched.append)
    await wal.open()
    rec = Recorder()
    wal.add_batch_listener(rec.listener)
    async with trio.open_nursery() as nursery:
        await nursery.start(wal.run)
        await wal.append_many([rec.item(0), rec.item(1, _unencodable(1)), rec.item(2)])
        await rec.wait_for(3)
        assert isinstance(wal.failed, ValueError)
        assert latched == [wal.failed]
        with pytest.raises(TokMeshError) as info:
            await wal.append(_delete(3), lambda position: None, lambda err: None)
        assert info.value.error is E.SYS_STORAGE
        nursery.cancel_scope.cancel()
    # Every record of the batch failed, then the listener ran once; nothing was written.
    assert rec.events == [("fail", 0), ("fail", 1), ("fail", 2), ("batch", 1)]
    assert {code for _, code in rec.failed} == {E.SYS_STORAGE.code}
    assert _logged_ids(tmp_path, cipher) == []


async def test_batch_listener_runs_once_per_batch_after_its_callbacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cipher = Cipher(os.urandom(32))
    wal = WalWriter(tmp_path, cipher, WalSettings(sync_mode="sync", batch_count=3))
    await wal.open()
    rec = Recorder()
    broken_calls = 0

    def broken() -> None:
        nonlocal broken_calls
        broken_calls += 1
        raise RuntimeError("listener bug")

    wal.add_batch_listener(broken)  # added first: must not keep the others from running
    wal.add_batch_listener(rec.listener)
    with caplog.at_level(logging.ERROR, logger="tokmesh.wal"):
        async with trio.open_nursery() as nursery:
            await nursery.start(wal.run)
            await wal.append_many([rec.item(i) for i in range(7)])
            await rec.wait_for(7)
            # The writer goes on after a listener raised.
            last = rec.item(7)
            await wal.append(last.record, last.on_commit, last.on_fail)
            await rec.wait_for(8)
            await wal.close()
    assert rec.events == [
        ("commit", 0),
        ("commit", 1),
        ("commit", 2),
        ("batch", 1),
        ("commit", 3),
        ("commit", 4),
        ("commit", 5),
        ("batch", 2),
        ("commit", 6),
        ("batch", 3),
        ("commit", 7),
        ("batch", 4),
    ]
    assert wal.stats.batches == 4 and wal.failed is None
    assert broken_calls == 4
    failures = [r for r in caplog.records if "batch listener" in r.getMessage()]
    assert len(failures) == 4
    assert all(r.exc_info is not None for r in failures)
    assert _logged_ids(tmp_path, cipher) == [f"sid-{i}" for i in range(8)]


async def test_try_append_many_queues_in_order(tmp_path: Path) -> None:
    cipher = Cipher(os.urandom(32))
    wal = WalWriter(tmp_path, cipher, WalSettings(sync_mode="sync", batch_count=4))
    await wal.open()
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(wal.run)
        assert wal.try_append_many([]) is True
        assert wal.try_append_many([rec.item(i) for i in range(5)]) is True
        fifth = rec.item(5)
        await wal.append(fifth.record, fifth.on_commit, fifth.on_fail)
        assert wal.try_append_many([rec.item(6), rec.item(7)]) is True
        await rec.wait_for(8)
        await wal.close()
    assert rec.committed == list(range(8))
    assert _logged_ids(tmp_path, cipher) == [f"sid-{i}" for i in range(8)]


async def test_try_append_many_on_a_full_mailbox_queues_nothing(tmp_path: Path) -> None:
    cipher = Cipher(os.urandom(32))
    wal = WalWriter(tmp_path, cipher, WalSettings(sync_mode="sync", batch_count=20_000))
    await wal.open()  # not running yet: nothing drains the mailbox
    capacity = int(wal._send.statistics().max_buffer_size)
    rec = Recorder()
    for i in range(capacity):
        assert wal.try_append_many([rec.item(i)]) is True
    rejected = Recorder()
    assert wal.try_append_many([rejected.item(-1)]) is False
    async with trio.open_nursery() as nursery:
        # A sender blocked on the full mailbox keeps its place: the non-blocking call does
        # not get in before it.
        blocked = rec.item(capacity)
        nursery.start_soon(wal.append, blocked.record, blocked.on_commit, blocked.on_fail)
        await trio.testing.wait_all_tasks_blocked()
        assert wal._send.statistics().tasks_waiting_send == 1
        assert wal.try_append_many([rejected.item(-2)]) is False
        await nursery.start(wal.run)
        await rec.wait_for(capacity + 1)
        await wal.close()
    assert rec.committed == list(range(capacity + 1))
    assert rejected.events == []
    assert _logged_ids(tmp_path, cipher) == [f"sid-{i}" for i in range(capacity + 1)]


async def test_try_append_many_raises_when_failed_or_closing(tmp_path: Path) -> None:
    cipher = Cipher(os.urandom(32))
    wal = WalWriter(tmp_path / "a", cipher, WalSettings(sync_mode="sync"))
    await wal.open()
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(wal.run)
        # A record the codec refuses latches the writer failed, as a write error would.
        assert wal.try_append_many([rec.item(0, _unencodable(0))]) is True
        await rec.wait_for(1)
        assert wal.failed is not None
        with pytest.raises(TokMeshError) as info:
            wal.try_append_many([rec.item(1)])
        assert info.value.error is E.SYS_STORAGE
        # Nothing to queue, nothing to refuse (as append_many([]) does).
        assert wal.try_append_many([]) is True
        nursery.cancel_scope.cancel()

    other = WalWriter(tmp_path / "b", cipher, WalSettings(sync_mode="sync"))
    await other.open()
    async with trio.open_nursery() as nursery:
        await nursery.start(other.run)
        await other.close()
    with pytest.raises(TokMeshError) as info:
        other.try_append_many([rec.item(2)])
    assert info.value.error is E.SYS_UNAVAILABLE
    assert [i for i, _ in rec.failed] == [0]


async def test_batch_mode_writes_on_the_loop_and_rotations_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch mode: a batch goes to the page cache from the loop (no thread hop, no wait
    for the GIL); a batch that rotates the segment (fsync, seal, new file) goes to a
    worker thread."""
    threads: list[int] = []
    real_append = SegmentWriter.append

    def noting_append(self: SegmentWriter, frames: bytes, n: int, *, sync: bool = False) -> int:
        threads.append(threading.get_ident())
        return real_append(self, frames, n, sync=sync)

    monkeypatch.setattr(SegmentWriter, "append", noting_append)
    cipher = Cipher(os.urandom(32))
    settings = WalSettings(sync_mode="batch", batch_count=4, segment_max_records=9)
    wal = WalWriter(tmp_path, cipher, settings)
    await wal.open()
    rec = Recorder()
    loop_thread = threading.get_ident()
    async with trio.open_nursery() as nursery:
        await nursery.start(wal.run)
        await wal.append_many([rec.item(i) for i in range(12)])
        await rec.wait_for(12)
        await wal.close()
    assert rec.committed == list(range(12))
    # Batches of 4: two fit the segment (8 records), the third rotates it (12 > 9).
    assert threads[:2] == [loop_thread, loop_thread]
    assert threads[2] != loop_thread
    assert [r.entity_id for _, r in read_wal(tmp_path, 0, cipher)] == [
        f"sid-{i}" for i in range(12)
    ]


async def test_the_periodic_fsync_does_not_hold_up_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch-mode fsync runs in a thread on a duplicate descriptor: records keep
    being written and answered while a slow fdatasync is in progress."""
    from tokmesh.actors import wal_writer as module

    started = trio.Event()
    token = trio.lowlevel.current_trio_token()
    real = sync_handle_and_close

    def slow_sync(fd: int) -> None:
        token.run_sync_soon(started.set)
        threading.Event().wait(1.0)  # a slow disk
        real(fd)

    monkeypatch.setattr(module, "sync_handle_and_close", slow_sync)
    wal = WalWriter(tmp_path, Cipher(os.urandom(32)), WalSettings(sync_interval=0.05))
    await wal.open()
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(wal.run)
        await wal.append(*_parts(rec.item(0)))
        await rec.wait_for(1)
        with trio.fail_after(5):
            await started.wait()
        before = trio.current_time()
        await wal.append_many([rec.item(i) for i in range(1, 6)])
        await rec.wait_for(6)
        assert trio.current_time() - before < 0.5  # not behind the 1 s fsync
        await wal.close()
    assert wal.failed is None and wal.stats.fsyncs >= 1


async def test_a_failed_periodic_fsync_latches_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tokmesh.actors import wal_writer as module

    def failing_sync(fd: int) -> None:
        os.close(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(module, "sync_handle_and_close", failing_sync)
    wal = WalWriter(tmp_path, Cipher(os.urandom(32)), WalSettings(sync_interval=0.02))
    await wal.open()
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(wal.run)
        await wal.append(*_parts(rec.item(0)))
        await rec.wait_for(1)
        with trio.fail_after(5):
            while wal.failed is None:
                await trio.sleep(0.01)
        with pytest.raises(TokMeshError) as refused:
            await wal.append(*_parts(rec.item(1)))
        assert refused.value.error is E.SYS_STORAGE
        nursery.cancel_scope.cancel()


def _parts(item: Append) -> tuple[WalRecord, Any, Any]:
    return item.record, item.on_commit, item.on_fail
