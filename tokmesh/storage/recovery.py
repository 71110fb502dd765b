"""Start-up recovery: newest valid snapshot + WAL replay (01 §10).

Blocking; the server runs :func:`recover` in a worker thread before it is ready. The
sessions go into a :class:`SessionTable`: the engine passes a fresh ``StoreState``, so the
indexes are built chunk by chunk during the snapshot load and kept in step by the replay
(no second pass over a million records), and adopts it on the event loop afterwards. The
caller then opens the WAL writer with
``SegmentWriter.open(wal_dir, min_position=state.wal_position)``.

Cold-start budget (01 §10: snapshot < 2 s, WAL < 1 s, indexes < 1 s for 1M sessions and
100k records): snapshot chunks are column objects decoded mostly in C
(:mod:`tokmesh.storage.session_columns`), and a long WAL tail is decoded by a worker
process on another core while the snapshot loads (:mod:`tokmesh.storage.wal_prefetch`).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections.abc import Iterable
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
from tokmesh.storage.wal_codec import RecordType, WalRecord, split_position
from tokmesh.storage.wal_files import WalReadStats, wal_bytes_after
from tokmesh.storage.wal_prefetch import DecodedRecord, WalPrefetch, iter_serial, parse_tail

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

    sessions: dict[str, Session]
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

    sessions: dict[str, Session]

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
    """The replay rules of 01 §10.2 over a :class:`SessionTable` (sans-IO).

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
    def sessions(self) -> dict[str, Session]:
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


#: Smallest WAL tail (bytes after the snapshot's position) decoded by a worker process:
#: below it (~10,000 records) starting the worker costs more than it saves.
PARALLEL_WAL_MIN_BYTES = 8 << 20
#: Rough size of one WAL record (a full encrypted session state in Base64 and JSON).
_WAL_RECORD_BYTES = 700


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

    The sessions end up in ``table`` (a new :class:`PlainTable` when ``None``). When a
    snapshot exists, the WAL tail after it may be decoded by a worker process while the
    snapshot loads (:mod:`tokmesh.storage.wal_prefetch`): ``parallel_wal=None`` decides
    (two CPUs or more, a tail of :data:`PARALLEL_WAL_MIN_BYTES` or more, and a snapshot
    large enough to hide the worker), ``True`` forces it, ``False`` never. The records
    are applied in WAL order either way, with the same result.

    Raises ``StorageFatalError`` (``TM-SYS-5001``) on an AEAD failure (wrong key,
    tampering) or a plaintext file; corruption is handled per 01 §9.6/§10.2 with WARNs.
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
    """A worker decoding the WAL from the newest snapshot's position, when worth it.

    The position is read from the newest snapshot's header before that snapshot is
    verified: should it turn out corrupt, the caller discards the worker's result.
    """
    if parallel is False or (parallel is None and _usable_cpus() < 2):
        return None
    paths = list_snapshots(snapshot_dir)
    if not paths:
        return None  # nothing to overlap with: a serial replay is as fast
    try:
        newest = peek_snapshot_info(paths[0])
    except (SnapshotCorrupt, StorageFatalError):
        return None
    position = newest.wal_last_offset
    if parallel is None:
        tail = wal_bytes_after(wal_dir, position)
        # The worker only pays off while the snapshot load hides it: per record it saves
        # the main process ~13 µs of decoding but costs ~1.5 µs of parsing, plus ~0.3 s to
        # start. With a tail much longer than the snapshot (est. records > half its
        # sessions) the main process would mostly wait, and a serial replay is faster.
        if tail < PARALLEL_WAL_MIN_BYTES or tail / _WAL_RECORD_BYTES > newest.session_count / 2:
            return None
    if not sys.executable:
        return None  # embedded interpreter: no python to start
    try:
        return WalPrefetch(wal_dir, position, cipher)
    except OSError as exc:
        _log.warning("cannot start the WAL prefetch worker (%s); decoding serially", exc)
        return None


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
    records: Iterable[DecodedRecord] | None = None
    if prefetch is not None:
        if prefetch.position == position:
            records = _prefetched(prefetch, stats.wal)
            stats.prefetched = len(records) if records is not None else 0
        else:
            prefetch.cancel()  # decoded from a snapshot that did not verify
    if records is None:
        records = iter_serial(wal_dir, position, cipher, stats.wal)
    apply = replayer.apply_parts
    for pos, rtype, eid, version, state, session in records:
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


def _prefetched(prefetch: WalPrefetch, stats: WalReadStats) -> list[DecodedRecord] | None:
    blob = prefetch.result()
    if blob is None:
        return None
    try:
        return parse_tail(blob, stats)
    except (KeyError, ValueError, TypeError, StopIteration) as exc:
        # Not a result we understand (it cannot be a WAL problem: those are in it as
        # warnings): fall back to reading the WAL here.
        _log.warning("WAL prefetch result unusable (%s); decoding serially", type(exc).__name__)
        return None
