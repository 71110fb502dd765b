"""Start-up recovery: newest valid snapshot + WAL replay.

Blocking; the server runs :func:`recover` in a worker thread before it is ready. The
sessions go into a :class:`SessionTable`: the engine passes a fresh ``StoreState``, so the
indexes are built chunk by chunk during the snapshot load and kept in step by the replay
(no second pass over a million records), and adopts it on the event loop afterwards. The
caller then opens the WAL writer with
``SegmentWriter.open(wal_dir, min_position=state.wal_position)``.

Cold-start budget (snapshot < 2 s, WAL < 1 s, indexes < 1 s for 1M sessions and 100k
records): snapshot chunks are column objects decoded mostly in C
(:mod:`tokmesh.storage.session_columns`), and a long WAL tail is decoded partly by a
worker process on another core while the snapshot loads and this process decodes the
tail's first segments (:mod:`tokmesh.storage.wal_prefetch`).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, Protocol

import attrs

from tokmesh.domain.session import Session
from tokmesh.storage.cipher import Cipher, StorageFatalError
from tokmesh.storage.snapshot_codec import SnapshotCorrupt
from tokmesh.storage.snapshot_files import (
    SnapshotInfo,
    list_snapshots,
    load_newest_valid,
    peek_snapshot_info,
)
from tokmesh.storage.wal_codec import RecordType, WalRecord, make_position, split_position
from tokmesh.storage.wal_files import WalReadStats, list_segments, wal_bytes_after
from tokmesh.storage.wal_prefetch import (
    DecodedRecord,
    PrefetchFailed,
    WalPrefetch,
    iter_serial,
    parse_tail,
)

_log = logging.getLogger("tokmesh.storage")


@attrs.define
class RecoveryStats:
    """Counters of one recovery run."""

    snapshot_sessions: int = 0
    snapshot_keys: int = 0
    #: WAL records read and handed to the replay rules.
    replayed: int = 0
    #: Records that changed state.
    applied: int = 0
    #: Records the version/tombstone guards ignored.
    ignored: int = 0
    #: CREATE/UPDATE records already expired at replay time, applied as removals.
    expired_records: int = 0
    #: Records whose decrypted state was malformed (skipped with a WARN).
    malformed: int = 0
    #: Expired sessions and tombstones dropped after replay.
    dropped_expired: int = 0
    #: WAL records decoded by the prefetch worker process (0: decoded in-process).
    prefetched: int = 0
    duration_ms: float = 0.0
    wal: WalReadStats = attrs.Factory(WalReadStats)


@attrs.define
class RecoveredState:
    """Everything the store needs to resume.

    ``wal_position`` is the end of the last replayed record, or the snapshot's
    ``wal_last_offset`` when nothing was replayed (0 for an empty node). ``table`` is
    where the sessions were recovered into (``sessions`` is its primary map).
    """

    sessions: MutableMapping[str, Session]
    api_keys: dict[str, dict[str, Any]]
    wal_position: int
    snapshot: SnapshotInfo | None
    replayed: int
    stats: RecoveryStats
    warnings: list[str]
    table: SessionTable | None = None


class SessionTable(Protocol):
    """Where recovery puts sessions: a bare map (:class:`PlainTable`), or the store's
    state, whose indexes are then built during the load instead of in a second pass."""

    @property
    def sessions(self) -> MutableMapping[str, Session]:
        """The primary map: id -> record."""

    def reserve(self, count: int) -> None:
        """Make room for ``count`` records before a snapshot's load (a hint)."""

    def load(self, sessions: list[Session]) -> None:
        """Add records whose ids are new (a snapshot chunk); ``ValueError`` if one repeats."""

    def put(self, new: Session) -> None:
        """Insert or replace one record."""

    def remove(self, sid: str) -> Session | None:
        """Remove one record; the removed record, or ``None``."""

    def clear(self) -> None:
        """Forget everything."""


class PlainTable:
    """A primary map without indexes."""

    __slots__ = ("sessions",)

    def __init__(self, sessions: dict[str, Session] | None = None) -> None:
        """Wrap ``sessions`` (a new map when ``None``)."""
        self.sessions: dict[str, Session] = sessions if sessions is not None else {}

    def reserve(self, count: int) -> None:
        """A plain dict grows as it goes."""

    def load(self, sessions: list[Session]) -> None:
        """Add records whose ids are new; ``ValueError`` if an id repeats."""
        before = len(self.sessions)
        self.sessions.update((s.id, s) for s in sessions)
        if len(self.sessions) != before + len(sessions):
            raise ValueError("a session id repeats in the loaded records")

    def put(self, new: Session) -> None:
        """Insert or replace one record."""
        self.sessions[new.id] = new

    def remove(self, sid: str) -> Session | None:
        """Remove one record."""
        return self.sessions.pop(sid, None)

    def clear(self) -> None:
        """Forget everything."""
        self.sessions.clear()


class Replayer:
    """The replay rules over a :class:`SessionTable` (sans-IO).

    Every record carries full state, so applying is an idempotent, version-guarded upsert:

    - CREATE → insert if the id is absent or tombstoned, else replace when ``ver ≥ stored``;
    - UPDATE → insert if absent, replace when ``ver ≥ stored``, ignored on a tombstone;
    - a CREATE/UPDATE already expired at replay time removes the id (same guards), so an
      older, longer-lived version can never resurface;
    - DELETE → tombstone a present session (``is_deleted=True``, ``version+1``, as the
      store does on revoke), else ignore;
    - KEY_PUT → upsert the API key when ``ver ≥ stored``.
    """

    def __init__(
        self,
        now_ms: int,
        sessions: dict[str, Session] | SessionTable | None = None,
        api_keys: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Start from ``sessions``/``api_keys`` (e.g. a snapshot's), evaluated at ``now_ms``.

        ``sessions`` is a plain map or a table that keeps its own indexes in step.
        """
        self.now_ms = now_ms
        if sessions is None or isinstance(sessions, dict):
            self.table: SessionTable = PlainTable(sessions)
        else:
            self.table = sessions
        self.api_keys: dict[str, dict[str, Any]] = api_keys if api_keys is not None else {}
        self._key_versions: dict[str, int] = {
            kid: _key_version(body) for kid, body in self.api_keys.items()
        }
        self.stats = RecoveryStats()

    @property
    def sessions(self) -> MutableMapping[str, Session]:
        """The table's primary map."""
        return self.table.sessions

    def apply(self, rec: WalRecord, session: Session | None = None) -> bool:
        """Apply one record; True when the state changed.

        ``session`` is the record's state when it was already decoded (by the prefetch
        worker); ``rec.body`` is then not read.
        """
        return self.apply_parts(rec.type, rec.entity_id, rec.version, rec.body, session)

    def apply_parts(
        self,
        rtype: RecordType,
        eid: str,
        version: int,
        body: dict[str, Any] | None,
        session: Session | None = None,
    ) -> bool:
        """:meth:`apply` for a record given as its parts (no ``WalRecord`` built)."""
        self.stats.replayed += 1
        if rtype == RecordType.KEY_PUT:
            changed = self._key_put(eid, version, body)
        else:
            changed = self._apply(rtype, eid, version, body, session)
        if changed:
            self.stats.applied += 1
        else:
            self.stats.ignored += 1
        return changed

    def apply_decoded(self, records: list[DecodedRecord]) -> None:
        """Apply the prefetch worker's records in WAL order, as :meth:`apply_parts` would
        one by one.

        Most of a crash's tail is creates of sessions the snapshot does not hold. A run of
        those (live at replay time, each id new to the table and to the run) goes to the
        table's bulk :meth:`SessionTable.load`, the snapshot's path: the same indexes as
        one ``put`` each, at about two thirds of the cost. Any other record ends the run
        and is applied on its own, so the order of the WAL holds for every id.
        """
        sessions = self.table.sessions
        now = self.now_ms
        create = RecordType.CREATE
        run: list[Session] = []
        ids: set[str] = set()
        for _pos, rtype, eid, version, state, session in records:
            if (
                rtype is create
                and session is not None
                and eid not in sessions
                and eid not in ids
                and not session.is_expired(now)
            ):
                run.append(session)
                ids.add(eid)
                continue
            if run:
                self._load_run(run)
                run = []
                ids.clear()
            self.apply_parts(rtype, eid, version, state, session)
        if run:
            self._load_run(run)

    def _load_run(self, run: list[Session]) -> None:
        self.table.load(run)
        stats = self.stats
        stats.replayed += len(run)
        stats.applied += len(run)

    def _apply(
        self,
        rtype: RecordType,
        sid: str,
        version: int,
        body: dict[str, Any] | None,
        session: Session | None,
    ) -> bool:
        table = self.table
        stored = table.sessions.get(sid)
        if rtype == RecordType.DELETE:
            if stored is None or stored.is_deleted:
                return False
            table.put(stored.evolve(is_deleted=True, version=stored.version + 1))
            return True
        if rtype == RecordType.CREATE:
            eligible = stored is None or stored.is_deleted or version >= stored.version
        elif stored is None:
            eligible = True
        else:
            eligible = not stored.is_deleted and version >= stored.version
        if not eligible:
            return False
        if session is None:
            assert body is not None  # the codec guarantees a body for CREATE/UPDATE
            try:
                session = Session.from_record(body)
            except (KeyError, ValueError, TypeError) as exc:
                self.stats.malformed += 1
                self.stats.wal.warn(
                    f"WAL record for {sid} has a malformed session state "
                    f"({type(exc).__name__}); skipped"
                )
                return False
        if session.is_expired(self.now_ms):
            self.stats.expired_records += 1
            return table.remove(sid) is not None
        table.put(session)
        return True

    def _key_put(self, kid: str, version: int, body: dict[str, Any] | None) -> bool:
        stored = self._key_versions.get(kid)
        if stored is not None and version < stored:
            return False
        assert body is not None
        self.api_keys[kid] = body
        self._key_versions[kid] = version
        return True

    def drop_expired(self, candidates: Iterable[str] | None = None) -> int:
        """Remove expired sessions and tombstones past their ``expires_at``; returns the count.

        ``candidates`` limits the look to those ids (see :class:`_ExpiredInSnapshot`); by
        default every session is looked at.
        """
        now = self.now_ms
        sessions = self.sessions
        if candidates is None:
            dead = [sid for sid, s in sessions.items() if s.expires_at != 0 and now > s.expires_at]
        else:
            dead = []
            for sid in candidates:
                s = sessions.get(sid)
                if s is not None and s.expires_at != 0 and now > s.expires_at:
                    dead.append(sid)
        remove = self.table.remove
        for sid in dead:
            remove(sid)
        self.stats.dropped_expired += len(dead)
        return len(dead)


class _ExpiredInSnapshot:
    """A snapshot sink that passes the records on to the table and notes the ids already
    expired, while each chunk is in the CPU cache.

    After the replay only those ids can be expired: a record the replay put was live at
    replay time (an expired one removes its id), and a tombstone keeps the expiry of the
    record it replaces. So :meth:`Replayer.drop_expired` looks at them instead of at a
    million records again.
    """

    __slots__ = ("ids", "now_ms", "table")

    def __init__(self, table: SessionTable, now_ms: int) -> None:
        self.table = table
        self.now_ms = now_ms
        self.ids: list[str] = []

    def reserve(self, count: int) -> None:
        self.table.reserve(count)

    def load(self, sessions: list[Session]) -> None:
        self.table.load(sessions)
        now = self.now_ms
        self.ids.extend([s.id for s in sessions if s.expires_at != 0 and now > s.expires_at])

    def clear(self) -> None:
        self.table.clear()
        self.ids.clear()


def _key_version(body: dict[str, Any]) -> int:
    value = body.get("version", 0)
    return value if isinstance(value, int) else 0


#: Smallest WAL part decoded by a worker process: below it (~10,000 records) starting
#: the worker costs more than it saves.
PARALLEL_WAL_MIN_BYTES = 8 << 20
#: Rough size of one WAL record (a full encrypted session state in Base64 and JSON).
_WAL_RECORD_BYTES = 750
#: Costs on the 2-core reference machine (seconds), used to split the WAL between this
#: process and the worker: reading, decoding and applying a record here; decoding one in
#: the worker (its records are applied here as they arrive, ~3 µs each, overlapping its
#: work); loading one snapshot session; and starting the worker.
_SERIAL_S = 13e-6
_WORKER_S = 13e-6
_SNAPSHOT_S = 2.5e-6
_WORKER_START_S = 0.3


def recover(
    wal_dir: Path,
    snapshot_dir: Path,
    cipher: Cipher,
    now_ms: int,
    table: SessionTable | None = None,
    *,
    parallel_wal: bool | None = None,
) -> RecoveredState:
    """Load the newest valid snapshot, replay the WAL after it, drop what has expired.

    The sessions end up in ``table`` (a new :class:`PlainTable` when ``None``). A long
    WAL tail is partly decoded by a worker process (:mod:`tokmesh.storage.wal_prefetch`)
    while this one loads the snapshot and decodes the tail's first segments:
    ``parallel_wal=None`` decides (two CPUs or more, :data:`PARALLEL_WAL_MIN_BYTES` or
    more for the worker), ``True`` uses a worker whenever it can (tests), ``False``
    never. The records are applied in WAL order either way, with the same result.

    Raises ``StorageFatalError`` (``TM-SYS-5001``) on an AEAD failure (wrong key,
    tampering) or a plaintext file; corruption is reported with WARNs (a bad snapshot:
    the next older one is loaded; a bad frame: the rest of its segment is dropped).
    Snapshot API-key records are keyed by their ``key_id`` field.
    """
    # Loading builds millions of long-lived objects; the cyclic GC would rescan them over
    # and over (2-3x slower). Nothing else runs before the node is ready, so pause it.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _recover(
            Path(wal_dir),
            Path(snapshot_dir),
            cipher,
            now_ms,
            table if table is not None else PlainTable(),
            parallel_wal,
        )
    finally:
        if gc_was_enabled:
            gc.enable()


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _start_prefetch(
    wal_dir: Path, snapshot_dir: Path, cipher: Cipher, parallel: bool | None
) -> WalPrefetch | None:
    """A worker decoding the later part of the WAL tail, when worth it.

    The tail starts at the newest snapshot's position (0 without one), read from its
    header before that snapshot is verified: should it turn out corrupt, the caller
    discards the worker's result. This process meanwhile loads the snapshot and then
    decodes the first part of the tail itself; the worker takes the rest, from a segment
    boundary chosen so that both finish about together (:func:`_split_position`).
    """
    if parallel is False or (parallel is None and _usable_cpus() < 2):
        return None
    base = 0
    sessions = 0
    paths = list_snapshots(snapshot_dir)
    if paths:
        try:
            newest = peek_snapshot_info(paths[0])
        except (SnapshotCorrupt, StorageFatalError):
            return None  # it will not load: which tail the replay needs is unknown
        base = newest.wal_last_offset
        sessions = newest.session_count
    if parallel is True and paths:
        start: int | None = base  # forced: the worker takes the whole tail, as it can
    else:
        start = _split_position(wal_dir, base, sessions, force=parallel is True)
    if start is None or not sys.executable:
        return None  # not worth it, or an embedded interpreter: no python to start
    try:
        return WalPrefetch(wal_dir, start, cipher, base=base)
    except OSError as exc:
        _log.warning("cannot start the WAL prefetch worker (%s); decoding serially", exc)
        return None


def _split_position(wal_dir: Path, base: int, sessions: int, *, force: bool) -> int | None:
    """Where the worker should start decoding a replay from ``base`` after a snapshot of
    ``sessions`` sessions: ``base`` itself, the start of a later segment, or ``None`` for
    no worker at all.

    The worker pays off while this process is busy with something else. With a large
    snapshot that is the snapshot load, and the worker takes the whole tail. Without one
    (or with a tail much longer than the snapshot) this process decodes the first
    segments itself while the worker decodes the last ones, then applies those. ``force``
    (tests, no snapshot) splits at any segment boundary, however short the parts.
    """
    segments = [(sid, p) for sid, p in list_segments(wal_dir) if sid >= split_position(base)[0]]
    sizes: list[tuple[int, int]] = []
    for sid, path in segments:
        try:
            sizes.append((sid, path.stat().st_size))
        except FileNotFoundError:
            continue
    tail = wal_bytes_after(wal_dir, base)
    if not force and tail < PARALLEL_WAL_MIN_BYTES:
        return None
    records = tail / _WAL_RECORD_BYTES
    # Records this process should decode itself so that it is done (snapshot + its
    # part) when the worker is (start + its part): beyond that it would apply the
    # worker's records only after waiting for them.
    mine = (_WORKER_START_S + records * _WORKER_S - sessions * _SNAPSHOT_S) / (
        _SERIAL_S + _WORKER_S
    )
    if mine <= 0:
        return base
    # The segment boundary nearest to that many records' bytes (or the tail's start),
    # among segments whose predecessor is present (a hole just before the worker's start
    # would go unreported).
    want = mine * _WAL_RECORD_BYTES
    offset = -split_position(base)[1]
    best: tuple[float, int] | None = None if force else (want, 0)
    previous = None
    for sid, size in sizes:
        if previous is not None and previous == sid - 1 and offset > 0:
            rest = tail - offset
            if force or rest >= PARALLEL_WAL_MIN_BYTES:
                distance = abs(offset - want)
                if best is None or distance < best[0]:
                    best = (distance, sid)
        offset += size
        previous = sid
    if best is None or best[1] == 0:
        return base
    return make_position(best[1], 0)


def _recover(
    wal_dir: Path,
    snapshot_dir: Path,
    cipher: Cipher,
    now_ms: int,
    table: SessionTable,
    parallel_wal: bool | None,
) -> RecoveredState:
    started = time.perf_counter()
    prefetch = _start_prefetch(wal_dir, snapshot_dir, cipher, parallel_wal)
    sink = _ExpiredInSnapshot(table, now_ms)
    try:
        loaded = load_newest_valid(snapshot_dir, cipher, into=sink)
    except BaseException:
        if prefetch is not None:
            prefetch.cancel()
        raise
    api_keys: dict[str, dict[str, Any]] = {}
    position = 0
    snapshot: SnapshotInfo | None = None
    pre_warnings: list[str] = []
    if loaded is not None:
        snapshot = loaded.info
        position = snapshot.wal_last_offset
        for body in loaded.api_keys:
            kid = body.get("key_id")
            if isinstance(kid, str) and kid:
                api_keys[kid] = body
            else:
                pre_warnings.append(f"snapshot {snapshot.id}: API key record without key_id")
    replayer = Replayer(now_ms, table, api_keys)
    stats = replayer.stats
    stats.snapshot_sessions = len(table.sessions)
    stats.snapshot_keys = len(api_keys)
    for message in pre_warnings:
        stats.wal.warn(message)
    apply = replayer.apply_parts
    #: where this process still has to read the WAL itself (None: nowhere)
    serial_from: int | None = position
    if prefetch is not None and prefetch.base != position:
        prefetch.cancel()  # decoded from a snapshot that did not verify
    elif prefetch is not None:
        try:
            if prefetch.position != position:
                # The first part of the tail is this process's own (see _split_position).
                before = split_position(prefetch.position)[0]
                for pos, rtype, eid, version, state, session in iter_serial(
                    wal_dir, position, cipher, stats.wal, before
                ):
                    apply(rtype, eid, version, state, session)
                    position = pos
            # Until the worker has delivered all of its part, that part is still ours.
            serial_from = prefetch.position
            for records in _prefetched_parts(prefetch, stats.wal):
                if records is None:
                    break
                replayer.apply_decoded(records)
                if records:
                    position = records[-1][0]
                    serial_from = position
                stats.prefetched += len(records)
            else:
                serial_from = None
        except BaseException:
            prefetch.cancel()
            raise
    if serial_from is not None:
        for pos, rtype, eid, version, state, session in iter_serial(
            wal_dir, serial_from, cipher, stats.wal
        ):
            apply(rtype, eid, version, state, session)
            position = pos
    replayer.drop_expired(sink.ids)
    stats.duration_ms = (time.perf_counter() - started) * 1000.0
    seg, off = split_position(position)
    _log.info(
        "recovery: %d sessions, %d keys (snapshot %s, %d WAL records replayed) "
        "up to segment %d offset %d in %.0f ms",
        len(replayer.sessions),
        len(replayer.api_keys),
        snapshot.id if snapshot else "none",
        stats.replayed,
        seg,
        off,
        stats.duration_ms,
    )
    return RecoveredState(
        sessions=replayer.sessions,
        api_keys=replayer.api_keys,
        wal_position=position,
        snapshot=snapshot,
        replayed=stats.replayed,
        stats=stats,
        warnings=list(stats.wal.warnings),
        table=table,
    )


def _prefetched_parts(
    prefetch: WalPrefetch, stats: WalReadStats
) -> Iterator[list[DecodedRecord] | None]:
    """The worker's records, part by part as they arrive, then a ``None`` if its output
    could not be used in full: the caller reads the rest of the WAL itself, from after
    the last record it applied. A fatal storage error in the worker's part is raised."""
    try:
        for blob in prefetch.parts():
            yield parse_tail(blob, stats)
    except PrefetchFailed:
        yield None
    except (KeyError, ValueError, TypeError, StopIteration) as exc:
        # Not a result we understand (it cannot be a WAL problem: those are in it as
        # warnings): fall back to reading the WAL here.
        _log.warning("WAL prefetch result unusable (%s); decoding serially", type(exc).__name__)
        prefetch.cancel()
        yield None
