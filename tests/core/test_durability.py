"""01 §15.3 durability checks through the real engine: restart, snapshots, compaction,
wrong key, write failure, readiness during recovery."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio

from tokmesh.actors import wal_writer
from tokmesh.actors.engine import StorageEngine
from tokmesh.actors.snapshotter import SnapshotSettings
from tokmesh.actors.wal_writer import WalSettings
from tokmesh.domain.clock import ManualClock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.session import Session
from tokmesh.readiness import Phase
from tokmesh.services.sessions import SessionService, SessionSettings, local_sessions

from .conftest import CTX, EngineRunner, engine_settings


def svc(engine: StorageEngine) -> SessionService:
    return local_sessions(engine)


def snapshot_of(engine: StorageEngine) -> dict[str, Session]:
    return dict(engine.state.sessions)


async def mixed_workload(s: SessionService, clock: ManualClock) -> list[str]:
    tokens = []
    for i in range(60):
        r = await s.create(CTX, f"user-{i % 7}", device_id=f"dev-{i % 3}", data={"i": str(i)})
        tokens.append(r.token)
        if i % 3 == 0:
            await s.renew(CTX, r.session.id, 600)
        if i % 4 == 0:
            await s.touch(CTX, r.session.id)
        if i % 5 == 0:
            await s.revoke(CTX, r.session.id)
        clock.advance(3)
    return tokens


async def test_restart_reproduces_state(runner: EngineRunner, clock: ManualClock) -> None:
    engine = await runner.start()
    tokens = await mixed_workload(svc(engine), clock)
    before = snapshot_of(engine)
    by_user = {k: set(v) for k, v in engine.state.by_user.items()}
    engine = await runner.restart()
    assert snapshot_of(engine) == before
    assert {k: set(v) for k, v in engine.state.by_user.items()} == by_user
    for i, tok in enumerate(tokens):
        if i % 5 == 0:
            with pytest.raises(TokMeshError) as info:
                svc(engine).validate(tok)
            assert info.value.error is E.TOKN_REVOKED
        else:
            assert svc(engine).validate(tok).version >= 1


async def test_revoked_after_restart_snapshot_and_compaction(
    runner: EngineRunner, clock: ManualClock, tmp_path: Path
) -> None:
    small = WalSettings(sync_mode="sync", segment_max_records=20)
    engine = await runner.start(wal=small)
    s = svc(engine)
    victim = await s.create(CTX, "victim")
    await s.revoke(CTX, victim.session.id)
    for i in range(200):  # many segments
        await s.create(CTX, f"filler-{i}")
    engine = await runner.restart(wal=small)
    with pytest.raises(TokMeshError) as info:
        svc(engine).validate(victim.token)
    assert info.value.error is E.TOKN_REVOKED
    # two snapshots so that compaction (cut from the second-newest) removes segments
    assert engine.snapshotter is not None
    await engine.snapshotter.take("manual")
    removed = list(engine.snapshotter.last_compaction.removed_segments)
    for i in range(60):
        await svc(engine).create(CTX, f"more-{i}")
    await engine.snapshotter.take("manual")
    removed += engine.snapshotter.last_compaction.removed_segments
    assert removed, "compaction should delete WAL segments covered by the snapshot"
    assert "wal-00000001.log" in removed
    assert len(list((tmp_path / "wal").glob("wal-*.log"))) >= 3
    engine = await runner.restart(wal=small)
    with pytest.raises(TokMeshError) as info:
        svc(engine).validate(victim.token)
    assert info.value.error is E.TOKN_REVOKED
    assert len([x for x in engine.state.sessions.values() if not x.is_deleted]) == 260


async def test_snapshot_during_writes_loses_nothing(
    runner: EngineRunner, clock: ManualClock
) -> None:
    engine = await runner.start()
    s = svc(engine)
    created: list[str] = []

    async def writer(n: int) -> None:
        for i in range(100):
            r = await s.create(CTX, f"w{n}-{i % 10}")
            created.append(r.session.id)

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(writer, n)
        await trio.sleep(0.01)
        assert engine.snapshotter is not None
        await engine.snapshotter.take("manual")
    before = snapshot_of(engine)
    engine = await runner.restart()
    assert snapshot_of(engine) == before
    assert len(created) == 400 and all(c in engine.state.sessions for c in created)


async def test_wrong_key_refuses_to_start(
    nursery: trio.Nursery, tmp_path: Path, clock: ManualClock
) -> None:
    k1 = "11" * 32
    k2 = "22" * 32
    eng = StorageEngine(engine_settings(tmp_path, encryption_key_hex=k1), clock=clock)
    await nursery.start(eng.run)
    await local_sessions(eng).create(CTX, "U1")
    await eng.stop()
    await eng.wait_stopped()
    bad = StorageEngine(engine_settings(tmp_path, encryption_key_hex=k2), clock=clock)
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as n2:
            await n2.start(bad.run)
    errors = info.value.subgroup(lambda e: isinstance(e, TokMeshError))
    assert errors is not None
    err = errors.exceptions[0]
    while isinstance(err, BaseExceptionGroup):
        err = err.exceptions[0]
    assert isinstance(err, TokMeshError) and err.code == "TM-SYS-5001"
    assert "wrong encryption key" in err.message
    assert bad.readiness.phase is Phase.FAILED
    assert bad.store is None  # nothing served


async def test_generated_key_file(runner: EngineRunner, tmp_path: Path) -> None:
    await runner.start()
    key_file = tmp_path / "wal" / ".encryption_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    content = key_file.read_text().strip()
    assert len(content) == 64 and int(content, 16) >= 0
    await runner.restart()
    assert key_file.read_text().strip() == content


async def test_write_failure_fails_stop(runner: EngineRunner, clock: ManualClock) -> None:
    engine = await runner.start()
    s = svc(engine)
    ok = await s.create(CTX, "U1")
    assert engine.wal is not None and engine.wal._segment is not None
    # Inject a real OS-level failure: the segment's descriptor goes away under it.
    fd = engine.wal._segment._fd
    assert fd is not None
    os.close(fd)
    with pytest.raises(TokMeshError) as info:
        await s.create(CTX, "U1")
    assert info.value.code == "TM-SYS-5001"
    assert engine.readiness.phase is Phase.FAILED
    assert engine.wal.stats.fsync_failures == 1
    # memory unchanged: only the acknowledged session exists
    assert list(engine.state.sessions) == [ok.session.id]
    with pytest.raises(TokMeshError) as info:
        await s.renew(CTX, ok.session.id, 60)
    assert info.value.code == "TM-SYS-5001"
    assert s.get(ok.session.id).version == 1
    # reuse of the closed fd number by the test runner must not be written to
    runner.engine = None


async def test_readiness_during_recovery(
    nursery: trio.Nursery, tmp_path: Path, clock: ManualClock
) -> None:
    eng = StorageEngine(engine_settings(tmp_path), clock=clock)
    await nursery.start(eng.run)
    for i in range(3000):
        await local_sessions(eng).create(CTX, f"u{i}")
    await eng.stop()
    await eng.wait_stopped()
    eng2 = StorageEngine(engine_settings(tmp_path), clock=clock)
    seen: list[Phase] = [eng2.readiness.phase]

    async def watch() -> None:
        while eng2.readiness.phase is not Phase.READY:
            seen.append(eng2.readiness.phase)
            with pytest.raises(TokMeshError) as info:
                eng2.readiness.require_ready()
            assert info.value.code == "TM-SYS-5030"
            await trio.sleep(0)

    nursery.start_soon(watch)
    await nursery.start(eng2.run)
    assert Phase.RECOVERING in seen
    assert eng2.readiness.ready and len(eng2.state.sessions) == 3000
    await eng2.stop()
    await eng2.wait_stopped()


async def test_batch_mode_acks_without_fsync_each(runner: EngineRunner, clock: ManualClock) -> None:
    engine = await runner.start(wal=WalSettings(sync_mode="batch", sync_interval=0.05))
    s = svc(engine)
    for i in range(50):
        await s.create(CTX, f"u{i}")
    assert engine.wal is not None
    fsyncs_before = engine.wal.stats.fsyncs
    assert fsyncs_before < 50
    await trio.sleep(0.2)
    assert engine.wal.stats.fsyncs >= fsyncs_before + 1
    engine = await runner.restart(wal=WalSettings(sync_mode="batch"))
    assert len(engine.state.sessions) == 50


async def test_snapshot_retention(runner: EngineRunner, tmp_path: Path) -> None:
    engine = await runner.start(snapshot=SnapshotSettings(retention_count=2, retention_days=1))
    assert engine.snapshotter is not None
    for _ in range(4):
        await svc(engine).create(CTX, "U1")
        await engine.snapshotter.take("manual")
    snaps = sorted((tmp_path / "snapshots").glob("*.snap"))
    # all were created "now" (within retention_days) so the union keeps them all
    assert len(snaps) == 4
    assert not list((tmp_path / "snapshots").glob("*.tmp"))


async def test_sessions_settings_quota_survives_restart(runner: EngineRunner) -> None:
    engine = await runner.start(sessions=SessionSettings(max_per_user=2))
    s = svc(engine)
    await s.create(CTX, "U1")
    await s.create(CTX, "U1")
    engine = await runner.restart(sessions=SessionSettings(max_per_user=2))
    with pytest.raises(TokMeshError) as info:
        await svc(engine).create(CTX, "U1")
    assert info.value.error is E.SESS_QUOTA


async def test_restore_replaces_state_atomically(runner: EngineRunner, tmp_path: Path) -> None:
    engine = await runner.start()
    s = svc(engine)
    kept = await s.create(CTX, "before")
    revoked = await s.create(CTX, "before")
    await s.revoke(CTX, revoked.session.id)
    assert engine.snapshotter is not None
    backup = await engine.snapshotter.take("manual")
    backup_copy = tmp_path / "backup.snap"
    backup_copy.write_bytes(backup.path.read_bytes())
    expected = snapshot_of(engine)
    # changes after the backup must disappear with the restore
    later = await s.create(CTX, "after")
    await s.renew(CTX, kept.session.id, 60)
    seen: list[Phase] = []
    engine.restore_hooks.append(lambda ids: seen.append(engine.readiness.phase))
    result = await engine.restore(backup_copy)
    assert seen == [Phase.RESTORING] and engine.readiness.ready
    assert result["sessions"] == 2 and snapshot_of(engine) == expected
    with pytest.raises(TokMeshError) as info:
        s.get(later.session.id)
    assert info.value.error is E.SESS_NOT_FOUND
    with pytest.raises(TokMeshError) as info:
        s.validate(revoked.token)
    assert info.value.error is E.TOKN_REVOKED
    # writes work after the restore and everything survives a restart
    newer = await svc(engine).create(CTX, "post")
    engine = await runner.restart()
    assert newer.session.id in engine.state.sessions
    assert later.session.id not in engine.state.sessions
    assert engine.state.sessions[kept.session.id].version == 1


async def test_restore_rejects_tampered_file_untouched(
    runner: EngineRunner, tmp_path: Path
) -> None:
    from tokmesh.storage.snapshot_codec import SnapshotCorrupt

    engine = await runner.start()
    s = svc(engine)
    await s.create(CTX, "u")
    assert engine.snapshotter is not None
    info = await engine.snapshotter.take("manual")
    raw = bytearray(info.path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    bad = tmp_path / "bad.snap"
    bad.write_bytes(bytes(raw))
    before = snapshot_of(engine)
    with pytest.raises(SnapshotCorrupt):
        await engine.restore(bad)
    assert snapshot_of(engine) == before and engine.readiness.ready


def _no_space(*_: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_start_on_a_full_disk_serves_reads_and_refuses_writes(
    runner: EngineRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await runner.start()
    kept = await svc(engine).create(CTX, "U1")
    await runner.stop()
    # The WAL directory cannot take a byte: the node still starts, failed but serving.
    monkeypatch.setattr(wal_writer, "probe_write", _no_space)
    engine = await runner.start()
    assert engine.readiness.phase is Phase.FAILED
    assert engine.readiness.checks() == {
        "storage": "failed",
        "cluster": "ok",
        "storage_reason": "write-ahead log failure: No space left on device",
    }
    assert engine.wal is not None and engine.wal.stats.fsync_failures == 1
    assert svc(engine).validate(kept.token).id == kept.session.id
    with pytest.raises(TokMeshError) as info:
        await svc(engine).create(CTX, "U2")
    assert info.value.code == "TM-SYS-5001"
    with pytest.raises(TokMeshError) as info:
        await svc(engine).revoke(CTX, kept.session.id)
    assert info.value.code == "TM-SYS-5001"
    # Restarted with space, it is ready and nothing refused was kept.
    monkeypatch.undo()
    engine = await runner.restart()
    assert engine.readiness.ready
    assert list(engine.state.sessions) == [kept.session.id]
    assert not engine.state.sessions[kept.session.id].is_deleted


async def test_start_with_another_wal_error_still_fails(
    runner: EngineRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(*_: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(wal_writer, "probe_write", denied)
    with pytest.raises(PermissionError):
        await runner.start()
    runner.engine = None
