"""Decoding the WAL tail in a worker process while the snapshot loads (01 §10.2).

01 §10.2 allows the decode to run in parallel as long as the apply stays in order. At a
cold start the main process spends its time building the snapshot's records (bound to
one core by the GIL), while reading, CRC-checking, Base64-decoding, decrypting and
parsing each WAL record costs ~12 µs. On a second core a worker process does that
meanwhile, starting at the position the newest snapshot claims.

The worker hands back every record, in WAL order, as one JSON document whose session
states use the snapshot column layout (:mod:`tokmesh.storage.session_columns`): the main
process parses it in C and builds the records in the same tight loop as snapshot chunks,
~1.5 µs a record. Pickled records were measured first: unpickling 100,000 of them cost
~5 µs each here, most of what the worker had saved.

The worker runs ``python -m tokmesh.storage.wal_prefetch``. Its input (directory,
position, key) arrives on stdin, never on the command line or in the environment; its
stdout carries only the result. Nothing it produces reaches a disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from tokmesh.domain.session import Session
from tokmesh.storage.cipher import Cipher, StorageFatalError
from tokmesh.storage.session_columns import ColumnDecoder, encode_columns
from tokmesh.storage.wal_codec import RecordType
from tokmesh.storage.wal_files import WalReadStats, read_wal

_log = logging.getLogger("tokmesh.storage")

#: ``src`` of a record: no state (DELETE), the next decoded session, the next raw body
#: (API keys, and session states the worker could not decode: the replayer then reports
#: them as malformed exactly as in a serial replay).
_SRC_NONE, _SRC_SESSION, _SRC_BODY = 0, 1, 2
_SESSION_TYPES = (RecordType.CREATE, RecordType.UPDATE)
_COUNTERS = ("segments_read", "records", "segments_skipped", "bytes_dropped")

#: ``(position_after, type, entity_id, version, body, session)`` of one record: what
#: :func:`~tokmesh.storage.wal_files.read_wal` yields, taken apart, with the session
#: state already decoded when the worker could (``body`` is then ``None``).
DecodedRecord = tuple[int, RecordType, str, int, dict[str, Any] | None, Session | None]


def decode_tail(wal_dir: Path, position: int, cipher: Cipher) -> bytes:
    """The records of the WAL from ``position`` on, as the JSON document the parent reads
    with :func:`parse_tail` (the worker's whole job; also callable in-process)."""
    stats = WalReadStats(quiet=True)
    positions: list[int] = []
    types: list[int] = []
    stamps: list[int] = []
    versions: list[int] = []
    ids: list[str] = []
    sources: list[int] = []
    sessions: list[Session] = []
    bodies: list[dict[str, Any] | None] = []
    fatal: dict[str, Any] | None = None
    try:
        for pos, rec in read_wal(wal_dir, position, cipher, stats):
            positions.append(pos)
            types.append(int(rec.type))
            stamps.append(rec.ts)
            versions.append(rec.version)
            ids.append(rec.entity_id)
            if rec.type in _SESSION_TYPES:
                try:
                    sessions.append(Session.from_record(rec.body or {}))
                    sources.append(_SRC_SESSION)
                    continue
                except (KeyError, ValueError, TypeError):
                    pass
            if rec.body is None:
                sources.append(_SRC_NONE)
            else:
                bodies.append(rec.body)
                sources.append(_SRC_BODY)
    except StorageFatalError as exc:
        # A serial replay would stop here too: the parent raises the same error.
        fatal = {"message": exc.message, "details": exc.details}
    return orjson.dumps(
        {
            "pos": positions,
            "type": types,
            "ts": stamps,
            "ver": versions,
            "id": ids,
            "src": sources,
            "sessions": encode_columns(sessions),
            "bodies": bodies,
            "warnings": stats.warnings,
            "stats": {name: getattr(stats, name) for name in _COUNTERS},
            "fatal": fatal,
        }
    )


def parse_tail(blob: bytes, stats: WalReadStats) -> list[DecodedRecord]:
    """Every record in :func:`decode_tail`'s output, in WAL order. The worker's warnings
    and counters are added to ``stats`` (and logged here, in the parent). Raises the
    worker's :class:`StorageFatalError`, and ``ValueError``/``TypeError``/``KeyError``/
    ``StopIteration`` for a document that is not one of ours."""
    doc = orjson.loads(blob)
    if type(doc) is not dict:
        raise TypeError("WAL prefetch result is not a JSON object")
    warnings = [str(message) for message in doc["warnings"]]
    counters = {name: int(doc["stats"][name]) for name in _COUNTERS}

    def merge() -> None:
        # Only once the document is known to be good: on a bad one the caller reads the
        # WAL itself, and its warnings must not be counted twice.
        for message in warnings:
            stats.warn(message)
        for name, value in counters.items():
            setattr(stats, name, getattr(stats, name) + value)

    fatal = doc["fatal"]
    if fatal is not None:
        merge()
        raise StorageFatalError(str(fatal["message"]), fatal.get("details"))
    _, sessions = ColumnDecoder().decode(doc["sessions"])
    if doc["src"].count(_SRC_SESSION) != len(sessions):
        raise ValueError("WAL prefetch result does not add up")
    next_session = iter(sessions).__next__
    next_body = iter(doc["bodies"]).__next__
    out: list[DecodedRecord] = []
    append = out.append
    kinds = {int(t): t for t in RecordType}
    columns = (doc["pos"], doc["type"], doc["ver"], doc["id"], doc["src"])
    for pos, rtype, version, eid, src in zip(*columns, strict=True):
        kind = kinds[rtype]
        if type(pos) is not int or type(version) is not int or type(eid) is not str:
            raise TypeError("WAL prefetch result malformed")
        if src == _SRC_SESSION:
            session = next_session()
            if session.id != eid:
                raise ValueError("WAL prefetch result out of order")
            append((pos, kind, eid, version, None, session))
        elif src == _SRC_BODY:
            append((pos, kind, eid, version, next_body(), None))
        else:
            append((pos, kind, eid, version, None, None))
    merge()
    return out


class WalPrefetch:
    """A worker process decoding the WAL from ``position`` while the caller does other
    work; :meth:`result` collects it, :meth:`cancel` abandons it."""

    def __init__(self, wal_dir: Path, position: int, cipher: Cipher) -> None:
        """Start the worker (``OSError`` if it cannot be started)."""
        self.position = position
        # The child must import this very tokmesh, wherever it was found.
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tokmesh.storage.wal_prefetch"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        request = {
            "wal_dir": str(wal_dir),
            "position": position,
            "key": cipher.secret().hex(),
            "alg": cipher.alg,
        }
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(orjson.dumps(request))
            stdin.close()
        except OSError:
            self.cancel()
            raise

    def result(self) -> bytes | None:
        """The worker's output, or ``None`` when it failed (the caller then decodes the
        WAL itself; the worker's own error went to stderr)."""
        stdout: IO[bytes] | None = self._proc.stdout
        assert stdout is not None
        try:
            blob = stdout.read()
        except OSError as exc:
            _log.warning("WAL prefetch worker unreadable (%s); decoding serially", exc)
            self.cancel()
            return None
        finally:
            stdout.close()
        code = self._proc.wait()
        if code != 0:
            _log.warning("WAL prefetch worker exited with status %d; decoding serially", code)
            return None
        return blob

    def cancel(self) -> None:
        """Stop the worker and reap it."""
        with contextlib.suppress(OSError):
            self._proc.kill()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc.wait()


def iter_serial(
    wal_dir: Path, position: int, cipher: Cipher, stats: WalReadStats
) -> Iterator[DecodedRecord]:
    """The in-process equivalent of a prefetch: what :func:`read_wal` yields, taken
    apart, with no pre-decoded session."""
    for pos, rec in read_wal(wal_dir, position, cipher, stats):
        yield pos, rec.type, rec.entity_id, rec.version, rec.body, None


def _main() -> None:
    request = orjson.loads(sys.stdin.buffer.read())
    cipher = Cipher(bytes.fromhex(request["key"]), request["alg"])
    blob = decode_tail(Path(request["wal_dir"]), int(request["position"]), cipher)
    sys.stdout.buffer.write(blob)
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _main()
