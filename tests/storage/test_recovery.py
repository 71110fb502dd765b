"""Recovery: snapshot + WAL replay with the version-guarded rules of 01 §10.2."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from tokmesh.actors.state import StoreState
from tokmesh.domain.errors import E
from tokmesh.domain.session import Session
from tokmesh.storage.cipher import ALG_AES, Cipher, StorageFatalError
from tokmesh.storage.recovery import Replayer, recover
from tokmesh.storage.snapshot_files import write_snapshot
from tokmesh.storage.wal_codec import RecordType, WalRecord, encode_record, split_position
from tokmesh.storage.wal_files import SegmentWriter, WalReadStats, read_wal, segment_name
from tokmesh.storage.wal_prefetch import decode_tail, parse_tail

from .conftest import HOUR_MS, NOW_MS, MakeSession


class ModelStore:
    """What the real store does, reduced to its WAL output: every mutation is logged as
    full state, a revoke tombstones with version+1 and logs a bare DELETE."""

    def __init__(self, wal_dir: Path, cipher: Cipher, **limits: int) -> None:
        self.cipher = cipher
        self.writer = SegmentWriter.open(wal_dir, **limits)
        self.sessions: dict[str, Session] = {}
        self.keys: dict[str, dict[str, Any]] = {}
        self.position = self.writer.position

    def _log(self, rec: WalRecord) -> None:
        self.position = self.writer.append(encode_record(rec, self.cipher), 1)

    def create(self, s: Session) -> Session:
        self._log(WalRecord(RecordType.CREATE, NOW_MS, s.id, s.version, s.to_record()))
        self.sessions[s.id] = s
        return s

    def update(self, sid: str, **changes: Any) -> Session:
        s = self.sessions[sid]
        s = s.evolve(version=s.version + 1, **changes)
        self._log(WalRecord(RecordType.UPDATE, NOW_MS, sid, s.version, s.to_record()))
        self.sessions[sid] = s
        return s

    def revoke(self, sid: str) -> None:
        s = self.sessions[sid]
        self._log(WalRecord(RecordType.DELETE, NOW_MS, sid, 0, None))
        self.sessions[sid] = s.evolve(is_deleted=True, version=s.version + 1)

    def put_key(self, body: dict[str, Any]) -> None:
        self._log(WalRecord(RecordType.KEY_PUT, NOW_MS, body["key_id"], body["version"], body))
        self.keys[body["key_id"]] = body


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "wal", tmp_path / "snapshots"


def test_empty_node(dirs: tuple[Path, Path], aes: Cipher) -> None:
    state = recover(dirs[0], dirs[1], aes, NOW_MS)
    assert state.sessions == {} and state.api_keys == {}
    assert state.wal_position == 0 and state.snapshot is None and state.replayed == 0


def test_mixed_history_is_reproduced_exactly(
    dirs: tuple[Path, Path], cipher: Cipher, make_session: MakeSession
) -> None:
    rng = random.Random(7)
    store = ModelStore(dirs[0], cipher, max_segment_records=25)
    live: list[str] = []
    for step in range(300):
        op = rng.random()
        if op < 0.35 or not live:
            live.append(store.create(make_session(user_id=f"user-{step % 7}")).id)
        elif op < 0.8:
            sid = rng.choice(live)
            store.update(
                sid,
                last_active=NOW_MS + step,
                expires_at=NOW_MS + HOUR_MS + step,
                data={"n": str(step)},
            )
        else:
            sid = live.pop(rng.randrange(len(live)))
            store.revoke(sid)
        if step % 100 == 0:
            store.put_key({"key_id": f"tmak-{step}", "version": 1, "status": "active"})
    store.put_key({"key_id": "tmak-0", "version": 2, "status": "disabled"})
    store.writer.close()  # crash without sealing
    state = recover(dirs[0], dirs[1], cipher, NOW_MS)
    assert state.sessions == store.sessions  # versions and tombstones included
    assert state.api_keys == store.keys and state.api_keys["tmak-0"]["status"] == "disabled"
    assert state.replayed == 300 + 4
    assert state.wal_position == store.position
    assert state.warnings == []


def test_snapshot_plus_wal_tail(
    dirs: tuple[Path, Path], aes: Cipher, make_session: MakeSession
) -> None:
    store = ModelStore(dirs[0], aes, max_segment_records=4)
    a = store.create(make_session())
    b = store.create(make_session())
    store.update(a.id, last_active=NOW_MS + 1)
    store.put_key({"key_id": "tmak-k", "version": 1})
    store.writer.fsync()
    info = write_snapshot(
        dirs[1],
        list(store.sessions.values()),
        list(store.keys.values()),
        store.position,
        "n",
        aes,
        NOW_MS,
    )
    c = store.create(make_session())
    store.revoke(b.id)
    store.update(a.id, last_active=NOW_MS + 2)
    store.writer.close()
    state = recover(dirs[0], dirs[1], aes, NOW_MS)
    assert state.snapshot == info
    assert state.replayed == 3  # only the tail after the snapshot
    assert state.sessions == store.sessions
    assert state.sessions[b.id].is_deleted and state.sessions[c.id].version == 1
    assert state.api_keys == {"tmak-k": {"key_id": "tmak-k", "version": 1}}
    assert state.wal_position == store.position


def test_corrupt_newest_snapshot_falls_back_and_replays_from_older(
    dirs: tuple[Path, Path], aes: Cipher, make_session: MakeSession
) -> None:
    store = ModelStore(dirs[0], aes, max_segment_records=3)
    for _ in range(4):
        store.create(make_session())
    write_snapshot(
        dirs[1], list(store.sessions.values()), [], store.position, "n", aes, NOW_MS - 2000
    )
    for sid in list(store.sessions)[:2]:
        store.update(sid, last_active=NOW_MS + 5)
    store.create(make_session())
    newest = write_snapshot(
        dirs[1], list(store.sessions.values()), [], store.position, "n", aes, NOW_MS - 1000
    )
    store.revoke(next(iter(store.sessions)))
    store.writer.close()
    raw = bytearray(newest.path.read_bytes())
    raw[-1] ^= 0xFF  # break the trailer
    newest.path.write_bytes(bytes(raw))
    state = recover(dirs[0], dirs[1], aes, NOW_MS)
    assert state.snapshot is not None and state.snapshot.id != newest.id
    assert state.sessions == store.sessions
    assert state.replayed == 4


def test_flipped_byte_mid_segment_loses_only_that_segment_rest(
    dirs: tuple[Path, Path], aes: Cipher, make_session: MakeSession
) -> None:
    store = ModelStore(dirs[0], aes, max_segment_records=3)
    created = [store.create(make_session()) for _ in range(9)]
    store.writer.close()
    path = dirs[0] / segment_name(2)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # inside the 2nd record of segment 2
    path.write_bytes(bytes(raw))
    state = recover(dirs[0], dirs[1], aes, NOW_MS)
    expected = [s.id for i, s in enumerate(created) if i not in (4, 5)]
    assert sorted(state.sessions) == sorted(expected)
    assert len(state.warnings) == 1 and "wal-00000002.log" in state.warnings[0]


def test_wrong_key_fails_startup(
    dirs: tuple[Path, Path], aes: Cipher, make_session: MakeSession
) -> None:
    store = ModelStore(dirs[0], aes)
    store.create(make_session())
    store.writer.close()
    with pytest.raises(StorageFatalError) as info:
        recover(dirs[0], dirs[1], Cipher(os.urandom(32), ALG_AES), NOW_MS)
    assert info.value.error is E.SYS_STORAGE and info.value.code == "TM-SYS-5001"


def test_wrong_key_on_snapshot_fails_startup(
    dirs: tuple[Path, Path], aes: Cipher, make_session: MakeSession
) -> None:
    write_snapshot(dirs[1], [make_session()], [], 0, "n", aes, NOW_MS)
    with pytest.raises(StorageFatalError):
        recover(dirs[0], dirs[1], Cipher(os.urandom(32), ALG_AES), NOW_MS)


def test_torn_tail_then_restart_appends_after_recovered_position(
    dirs: tuple[Path, Path], aes: Cipher, make_session: MakeSession
) -> None:
    store = ModelStore(dirs[0], aes)
    a = store.create(make_session())
    pos_a = store.position
    store.create(make_session())
    store.writer.close()
    os.truncate(dirs[0] / segment_name(1), split_position(store.position)[1] - 3)
    state = recover(dirs[0], dirs[1], aes, NOW_MS)
    assert list(state.sessions) == [a.id] and state.wal_position == pos_a
    w = SegmentWriter.open(dirs[0], min_position=state.wal_position)
    assert w.position == pos_a
    c = make_session()
    w.append(encode_record(WalRecord(RecordType.CREATE, 1, c.id, 1, c.to_record()), aes), 1)
    w.close()
    assert set(recover(dirs[0], dirs[1], aes, NOW_MS).sessions) == {a.id, c.id}


# ---- the replay rules themselves -------------------------------------------------------


def cu(rtype: RecordType, s: Session) -> WalRecord:
    body = s.to_record()
    del body["is_deleted"]
    return WalRecord(rtype, 0, s.id, s.version, body)


def delete(sid: str) -> WalRecord:
    return WalRecord(RecordType.DELETE, 0, sid, 0, None)


def test_create_rules(make_session: MakeSession) -> None:
    s = make_session(version=3)
    r = Replayer(NOW_MS)
    assert r.apply(cu(RecordType.CREATE, s)) and r.sessions[s.id] == s
    assert not r.apply(cu(RecordType.CREATE, s.evolve(version=2)))  # older: ignored
    assert r.apply(cu(RecordType.CREATE, s.evolve(version=3, user_agent="x")))  # ver >= stored
    assert r.sessions[s.id].user_agent == "x"
    r.sessions[s.id] = s.evolve(version=9, is_deleted=True)
    assert r.apply(cu(RecordType.CREATE, s.evolve(version=1)))  # over a tombstone
    assert r.sessions[s.id].version == 1 and not r.sessions[s.id].is_deleted


def test_update_rules(make_session: MakeSession) -> None:
    s = make_session(version=2)
    r = Replayer(NOW_MS)
    assert r.apply(cu(RecordType.UPDATE, s))  # insert if absent
    assert not r.apply(cu(RecordType.UPDATE, s.evolve(version=1)))
    assert r.apply(cu(RecordType.UPDATE, s.evolve(version=5)))
    r.sessions[s.id] = s.evolve(version=6, is_deleted=True)
    assert not r.apply(cu(RecordType.UPDATE, s.evolve(version=7)))  # ignored on a tombstone
    assert r.sessions[s.id].is_deleted


def test_delete_rules(make_session: MakeSession) -> None:
    s = make_session(version=4)
    r = Replayer(NOW_MS, {s.id: s})
    assert not r.apply(delete("tmss-absent"))
    assert r.apply(delete(s.id))
    assert r.sessions[s.id] == s.evolve(is_deleted=True, version=5)
    assert not r.apply(delete(s.id))  # already a tombstone
    assert r.sessions[s.id].version == 5


def test_expired_record_acts_as_removal(make_session: MakeSession) -> None:
    long_lived = make_session(version=1, expires_at=NOW_MS + 100 * HOUR_MS)
    r = Replayer(NOW_MS, {long_lived.id: long_lived})
    shortened = long_lived.evolve(version=2, expires_at=NOW_MS - 1)  # renew that shortened it
    assert r.apply(cu(RecordType.UPDATE, shortened))
    assert long_lived.id not in r.sessions  # the older, longer-lived version must not stay
    assert r.stats.expired_records == 1
    # Same guards: an expired but older record does not remove a newer session.
    newer = make_session(version=5)
    r.sessions[newer.id] = newer
    assert not r.apply(cu(RecordType.UPDATE, newer.evolve(version=4, expires_at=NOW_MS - 1)))
    assert r.sessions[newer.id] == newer
    # Valid exactly at expires_at.
    edge = make_session(expires_at=NOW_MS)
    assert r.apply(cu(RecordType.CREATE, edge)) and edge.id in r.sessions


def test_expired_sessions_and_tombstones_are_dropped(make_session: MakeSession) -> None:
    live = make_session()
    forever = make_session(expires_at=0, is_deleted=True)
    dead_tomb = make_session(expires_at=NOW_MS - 1, is_deleted=True)
    dead = make_session(expires_at=NOW_MS - 1)
    fresh_tomb = make_session(is_deleted=True)
    r = Replayer(NOW_MS, {s.id: s for s in (live, forever, dead_tomb, dead, fresh_tomb)})
    assert r.drop_expired() == 2
    assert set(r.sessions) == {live.id, forever.id, fresh_tomb.id}


def test_key_put_rules() -> None:
    r = Replayer(NOW_MS, api_keys={"tmak-a": {"key_id": "tmak-a", "version": 3}})
    assert not r.apply(
        WalRecord(RecordType.KEY_PUT, 0, "tmak-a", 2, {"key_id": "tmak-a", "version": 2})
    )
    assert r.apply(
        WalRecord(RecordType.KEY_PUT, 0, "tmak-a", 3, {"key_id": "tmak-a", "version": 3, "s": 1})
    )
    assert r.api_keys["tmak-a"]["s"] == 1
    assert r.apply(WalRecord(RecordType.KEY_PUT, 0, "tmak-b", 1, {"key_id": "tmak-b"}))
    assert set(r.api_keys) == {"tmak-a", "tmak-b"}


def test_replaying_records_already_in_the_snapshot_is_harmless(
    dirs: tuple[Path, Path], aes: Cipher, make_session: MakeSession
) -> None:
    store = ModelStore(dirs[0], aes)
    a = store.create(make_session())
    store.update(a.id, last_active=NOW_MS + 1)
    store.revoke(a.id)
    store.writer.close()
    # A snapshot claiming position 0 but already holding the final state: full replay
    # over it must change nothing (idempotent, version-guarded).
    write_snapshot(dirs[1], list(store.sessions.values()), [], 0, "n", aes, NOW_MS)
    state = recover(dirs[0], dirs[1], aes, NOW_MS)
    assert state.sessions == store.sessions
    assert state.sessions[a.id].version == 3 and state.sessions[a.id].is_deleted


# ---- decoding the WAL tail in a worker process (tokmesh.storage.wal_prefetch) ---------


def _history_with_snapshot(
    dirs: tuple[Path, Path], cipher: Cipher, make_session: MakeSession
) -> ModelStore:
    """A snapshot, then a tail of every kind of record over several segments: creates,
    updates, revokes, key puts, an update that expires its session, a CREATE over a
    tombstone and a record whose decrypted state is malformed."""
    rng = random.Random(11)
    store = ModelStore(dirs[0], cipher, max_segment_records=40)
    live = [store.create(make_session(user_id=f"user-{i % 9}")).id for i in range(30)]
    store.writer.fsync()
    write_snapshot(
        dirs[1], list(store.sessions.values()), [], store.position, "n", cipher, NOW_MS - 10
    )
    for step in range(200):
        op = rng.random()
        if op < 0.3:
            live.append(store.create(make_session(user_id=f"user-{step % 9}")).id)
        elif op < 0.7:
            store.update(rng.choice(live), last_active=NOW_MS + step, data={"n": str(step)})
        elif op < 0.85:
            store.revoke(live.pop(rng.randrange(len(live))))
        else:
            store.put_key({"key_id": f"tmak-{step % 4}", "version": step, "s": step})
    gone = live.pop()
    store.update(gone, expires_at=NOW_MS - 1)  # acts as a removal at replay
    del store.sessions[gone]
    bad = make_session().to_record()
    bad["token_hash"] = "tmth_" + "zz" * 32  # authenticates, but is not a session state
    store._log(WalRecord(RecordType.CREATE, NOW_MS, bad["id"], 1, bad))
    store.writer.close()
    return store


def _same(a: Any, b: Any) -> None:
    assert a.sessions == b.sessions
    assert a.api_keys == b.api_keys
    assert a.wal_position == b.wal_position
    assert a.warnings == b.warnings
    for name in ("replayed", "applied", "ignored", "expired_records", "malformed"):
        assert getattr(a.stats, name) == getattr(b.stats, name), name
    for name in ("segments_read", "records", "segments_skipped", "bytes_dropped"):
        assert getattr(a.stats.wal, name) == getattr(b.stats.wal, name), name


def test_worker_decoded_tail_gives_the_serial_result(
    dirs: tuple[Path, Path], cipher: Cipher, make_session: MakeSession
) -> None:
    store = _history_with_snapshot(dirs, cipher, make_session)
    serial = recover(dirs[0], dirs[1], cipher, NOW_MS, parallel_wal=False)
    parallel = recover(dirs[0], dirs[1], cipher, NOW_MS, parallel_wal=True)
    assert serial.stats.prefetched == 0
    assert parallel.stats.prefetched == parallel.stats.replayed == 202
    _same(parallel, serial)
    assert parallel.sessions == store.sessions
    assert parallel.api_keys == store.keys
    assert parallel.stats.malformed == 1 and parallel.stats.expired_records == 1


def test_worker_reports_corruption_like_a_serial_read(
    dirs: tuple[Path, Path], aes: Cipher, make_session: MakeSession
) -> None:
    _history_with_snapshot(dirs, aes, make_session)
    # a flipped byte in the middle of the second segment and a torn tail in the last one
    segments = sorted(dirs[0].glob("wal-*.log"))
    raw = bytearray(segments[1].read_bytes())
    raw[len(raw) // 2] ^= 0x40
    segments[1].write_bytes(bytes(raw))
    with segments[-1].open("r+b") as fh:
        fh.truncate(segments[-1].stat().st_size - 7)
    serial = recover(dirs[0], dirs[1], aes, NOW_MS, parallel_wal=False)
    parallel = recover(dirs[0], dirs[1], aes, NOW_MS, parallel_wal=True)
    assert len(serial.warnings) == 2 and parallel.stats.prefetched > 0
    _same(parallel, serial)


def test_worker_wrong_key_is_fatal(
    dirs: tuple[Path, Path], aes: Cipher, make_session: MakeSession
) -> None:
    _history_with_snapshot(dirs, aes, make_session)
    # The snapshot decrypts (the same key), but a WAL record after it was written under
    # another key: the worker's AEAD failure must stop recovery as a serial one does.
    other = Cipher(os.urandom(32), ALG_AES)
    writer = SegmentWriter.open(dirs[0])
    s = make_session()
    writer.append(encode_record(WalRecord(RecordType.CREATE, 0, s.id, 1, s.to_record()), other), 1)
    writer.close()
    for parallel in (False, True):
        with pytest.raises(StorageFatalError) as info:
            recover(dirs[0], dirs[1], aes, NOW_MS, parallel_wal=parallel)
        assert info.value.error is E.SYS_STORAGE
        assert "cannot decrypt" in info.value.message


def test_worker_result_from_a_corrupt_newest_snapshot_is_discarded(
    dirs: tuple[Path, Path], aes: Cipher, make_session: MakeSession
) -> None:
    """The worker starts from the newest snapshot's position before that snapshot is
    verified; when it fails and an older one is used, the tail is read from there."""
    store = _history_with_snapshot(dirs, aes, make_session)
    newer = write_snapshot(
        dirs[1], list(store.sessions.values())[:3], [], store.position, "n", aes, NOW_MS
    )
    raw = bytearray(newer.path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    newer.path.write_bytes(bytes(raw))
    parallel = recover(dirs[0], dirs[1], aes, NOW_MS, parallel_wal=True)
    serial = recover(dirs[0], dirs[1], aes, NOW_MS, parallel_wal=False)
    assert parallel.snapshot is not None and parallel.snapshot.id != newer.id
    assert parallel.stats.prefetched == 0  # decoded again, from the older position
    _same(parallel, serial)
    assert parallel.sessions == store.sessions


def test_prefetch_document_round_trip_and_rejection(
    dirs: tuple[Path, Path], aes: Cipher, make_session: MakeSession
) -> None:
    """In-process: what the worker writes parses back to what a serial read yields; a
    document that does not add up is rejected without touching the caller's counters."""
    _history_with_snapshot(dirs, aes, make_session)
    blob = decode_tail(dirs[0], 0, aes)
    stats = WalReadStats()
    parsed = parse_tail(blob, stats)
    serial = list(read_wal(dirs[0], 0, aes))
    assert [p[:4] for p in parsed] == [(p, r.type, r.entity_id, r.version) for p, r in serial]
    for (_, _, _, _, body, session), (_, want) in zip(parsed, serial, strict=True):
        if session is not None:
            assert body is None and want.body is not None
            assert session == Session.from_record(want.body)
        else:
            assert body == want.body
    assert stats.records == len(serial)
    doc = orjson.loads(blob)
    doc["src"][0] = 2 if doc["src"][0] == 1 else 1
    untouched = WalReadStats()
    with pytest.raises((ValueError, TypeError, KeyError, StopIteration)):
        parse_tail(orjson.dumps(doc), untouched)
    assert untouched.records == 0 and untouched.warnings == []


def test_only_snapshot_expired_ids_need_a_second_look(
    dirs: tuple[Path, Path], aes: Cipher, make_session: MakeSession
) -> None:
    """drop_expired looks only at ids the snapshot held already expired: renewed ones
    stay, revoked ones (a tombstone keeps the expiry) go, and nothing expired is left."""
    store = ModelStore(dirs[0], aes)
    renewed = store.create(make_session(expires_at=NOW_MS - 5))
    revoked = store.create(make_session(expires_at=NOW_MS - 5))
    dead = store.create(make_session(expires_at=NOW_MS - 5))
    live = store.create(make_session())
    store.writer.fsync()
    write_snapshot(dirs[1], list(store.sessions.values()), [], store.position, "n", aes, NOW_MS)
    store.update(renewed.id, expires_at=NOW_MS + HOUR_MS)
    store.revoke(revoked.id)
    store.writer.close()
    state = recover(dirs[0], dirs[1], aes, NOW_MS)
    assert set(state.sessions) == {renewed.id, live.id}
    assert state.stats.dropped_expired == 2 and dead.id not in state.sessions
    assert Replayer(NOW_MS, dict(state.sessions)).drop_expired() == 0  # a full scan agrees


def test_a_worker_part_applied_in_runs_equals_record_by_record(
    make_session: MakeSession,
) -> None:
    """``apply_decoded`` loads runs of new, live creates in bulk and applies every other
    record on its own: the same sessions, indexes and counts as ``apply_parts`` one by
    one, whatever breaks a run (an id already held or already in the run, an expired
    state, a revoke or renew of a session of the run, a key, a state not yet decoded)."""
    held = make_session(user_id="carol", device_id="")
    seq = iter(range(1, 1000))

    def new(**fields: Any) -> Session:
        n = next(seq)
        return make_session(
            user_id=f"user-{n % 3}", device_id=f"dev-{n % 2}" if n % 4 else "", **fields
        )

    first = [new() for _ in range(5)]
    second = [new() for _ in range(3)]
    last = [new() for _ in range(4)]
    expired = new(expires_at=NOW_MS - 1)
    not_decoded = new()
    records: list[Any] = []

    def add(rtype: RecordType, s: Session | None, sid: str = "", body: Any = None) -> None:
        eid = s.id if s is not None else sid
        version = s.version if s is not None else 0
        records.append((len(records) + 1, rtype, eid, version, body, s))

    for s in first:
        add(RecordType.CREATE, s)
    add(RecordType.CREATE, held.evolve(version=2, user_agent="renewed"))  # id already held
    for s in second:
        add(RecordType.CREATE, s)
    add(RecordType.CREATE, second[0].evolve(version=2, data={"n": "2"}))  # id already in run
    add(RecordType.CREATE, expired)
    add(RecordType.DELETE, None, first[1].id)  # revokes a session of the first run
    add(RecordType.UPDATE, first[2].evolve(version=3, last_active=NOW_MS + 5))
    key = {"key_id": "tmak-k", "version": 1}
    records.append((len(records) + 1, RecordType.KEY_PUT, "tmak-k", 1, key, None))
    body = not_decoded.to_record()
    del body["is_deleted"]
    add(RecordType.CREATE, None, not_decoded.id, body)
    for s in last:
        add(RecordType.CREATE, s)

    def replayed(bulk: bool) -> tuple[Replayer, StoreState]:
        state = StoreState()
        state.load([held])
        r = Replayer(NOW_MS, state)
        if bulk:
            r.apply_decoded(records)
        else:
            for _, rtype, eid, version, body, session in records:
                r.apply_parts(rtype, eid, version, body, session)
        return r, state

    (bulk, bulk_state), (one, one_state) = replayed(True), replayed(False)
    assert bulk_state.sessions == one_state.sessions
    assert list(bulk_state.sessions) == list(one_state.sessions)  # insertion order too
    assert bulk_state.by_token == one_state.by_token
    assert bulk_state.by_user == one_state.by_user
    assert bulk_state.by_device == one_state.by_device
    assert bulk_state.wheel.bulk_buckets() == one_state.wheel.bulk_buckets()
    assert len(bulk_state.wheel) == len(one_state.wheel)
    assert bulk.api_keys == one.api_keys == {"tmak-k": key}
    for name in ("replayed", "applied", "ignored", "expired_records", "malformed"):
        assert getattr(bulk.stats, name) == getattr(one.stats, name), name
    assert bulk.stats.replayed == len(records)
    assert bulk_state.sessions[first[1].id].is_deleted
    assert bulk_state.sessions[second[0].id].data == {"n": "2"}
    assert expired.id not in bulk_state.sessions
