"""Start-up recovery: newest valid snapshot + WAL replay (01 §10).

Blocking; the server runs :func:`recover` in a worker thread before it is ready. The
result is plain data (a primary map of sessions, the API keys and the WAL position); the
caller builds its indexes from it and then opens the WAL writer with
``SegmentWriter.open(wal_dir, min_position=state.wal_position)``.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

import attrs

from tokmesh.domain.session import Session
from tokmesh.storage.cipher import Cipher
from tokmesh.storage.snapshot_files import SnapshotInfo, load_newest_valid
from tokmesh.storage.wal_codec import RecordType, WalRecord, split_position
from tokmesh.storage.wal_files import WalReadStats, read_wal

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
    duration_ms: float = 0.0
    wal: WalReadStats = attrs.Factory(WalReadStats)


@attrs.define
class RecoveredState:
    """Everything the store needs to resume.

    ``wal_position`` is the end of the last replayed record, or the snapshot's
    ``wal_last_offset`` when nothing was replayed (0 for an empty node).
    """

    sessions: dict[str, Session]
    api_keys: dict[str, dict[str, Any]]
    wal_position: int
    snapshot: SnapshotInfo | None
    replayed: int
    stats: RecoveryStats
    warnings: list[str]


class Replayer:
    """The replay rules of 01 §10.2 over an in-memory primary map (sans-IO).

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
        sessions: dict[str, Session] | None = None,
        api_keys: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Start from ``sessions``/``api_keys`` (e.g. a snapshot's), evaluated at ``now_ms``."""
        self.now_ms = now_ms
        self.sessions: dict[str, Session] = sessions if sessions is not None else {}
        self.api_keys: dict[str, dict[str, Any]] = api_keys if api_keys is not None else {}
        self._key_versions: dict[str, int] = {
            kid: _key_version(body) for kid, body in self.api_keys.items()
        }
        self.stats = RecoveryStats()

    def apply(self, rec: WalRecord) -> bool:
        """Apply one record; True when the state changed."""
        self.stats.replayed += 1
        changed = self._apply(rec)
        if changed:
            self.stats.applied += 1
        else:
            self.stats.ignored += 1
        return changed

    def _apply(self, rec: WalRecord) -> bool:
        if rec.type == RecordType.KEY_PUT:
            return self._key_put(rec)
        sid = rec.entity_id
        stored = self.sessions.get(sid)
        if rec.type == RecordType.DELETE:
            if stored is None or stored.is_deleted:
                return False
            self.sessions[sid] = stored.evolve(is_deleted=True, version=stored.version + 1)
            return True
        if rec.type == RecordType.CREATE:
            eligible = stored is None or stored.is_deleted or rec.version >= stored.version
        elif stored is None:
            eligible = True
        else:
            eligible = not stored.is_deleted and rec.version >= stored.version
        if not eligible:
            return False
        assert rec.body is not None  # the codec guarantees a body for CREATE/UPDATE
        try:
            session = Session.from_record(rec.body)
        except (KeyError, ValueError, TypeError) as exc:
            self.stats.malformed += 1
            self.stats.wal.warn(
                f"WAL record for {sid} has a malformed session state ({type(exc).__name__}); "
                "skipped"
            )
            return False
        if session.is_expired(self.now_ms):
            self.stats.expired_records += 1
            return self.sessions.pop(sid, None) is not None
        self.sessions[sid] = session
        return True

    def _key_put(self, rec: WalRecord) -> bool:
        kid = rec.entity_id
        stored = self._key_versions.get(kid)
        if stored is not None and rec.version < stored:
            return False
        assert rec.body is not None
        self.api_keys[kid] = rec.body
        self._key_versions[kid] = rec.version
        return True

    def drop_expired(self) -> int:
        """Remove expired sessions and tombstones past their ``expires_at``; returns the count."""
        now = self.now_ms
        dead = [sid for sid, s in self.sessions.items() if s.expires_at != 0 and now > s.expires_at]
        for sid in dead:
            del self.sessions[sid]
        self.stats.dropped_expired += len(dead)
        return len(dead)


def _key_version(body: dict[str, Any]) -> int:
    value = body.get("version", 0)
    return value if isinstance(value, int) else 0


def recover(wal_dir: Path, snapshot_dir: Path, cipher: Cipher, now_ms: int) -> RecoveredState:
    """Load the newest valid snapshot, replay the WAL after it, drop what has expired.

    Raises ``StorageFatalError`` (``TM-SYS-5001``) on an AEAD failure (wrong key,
    tampering) or a plaintext file; corruption is handled per 01 §9.6/§10.2 with WARNs.
    Snapshot API-key records are keyed by their ``key_id`` field.
    """
    # Loading builds millions of long-lived objects; the cyclic GC would rescan them over
    # and over (2-3x slower). Nothing else runs before the node is ready, so pause it.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _recover(Path(wal_dir), Path(snapshot_dir), cipher, now_ms)
    finally:
        if gc_was_enabled:
            gc.enable()


def _recover(wal_dir: Path, snapshot_dir: Path, cipher: Cipher, now_ms: int) -> RecoveredState:
    started = time.perf_counter()
    loaded = load_newest_valid(snapshot_dir, cipher)
    sessions: dict[str, Session] = {}
    api_keys: dict[str, dict[str, Any]] = {}
    position = 0
    snapshot: SnapshotInfo | None = None
    pre_warnings: list[str] = []
    if loaded is not None:
        snapshot = loaded.info
        position = snapshot.wal_last_offset
        sessions = loaded.by_id
        for body in loaded.api_keys:
            kid = body.get("key_id")
            if isinstance(kid, str) and kid:
                api_keys[kid] = body
            else:
                pre_warnings.append(f"snapshot {snapshot.id}: API key record without key_id")
    replayer = Replayer(now_ms, sessions, api_keys)
    stats = replayer.stats
    stats.snapshot_sessions = len(sessions)
    stats.snapshot_keys = len(api_keys)
    for message in pre_warnings:
        stats.wal.warn(message)
    for pos, rec in read_wal(wal_dir, position, cipher, stats.wal):
        replayer.apply(rec)
        position = pos
    replayer.drop_expired()
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
    )
