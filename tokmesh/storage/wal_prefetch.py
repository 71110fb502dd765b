"""Decoding the WAL tail in a worker process while the snapshot loads.

The decode may run in parallel as long as the records are applied in order. At a
cold start the main process spends its time building the snapshot's records (bound to
one core by the GIL), while reading, CRC-checking, Base64-decoding, decrypting and
parsing each WAL record costs ~12 µs. On a second core a worker process does that
meanwhile, starting at the position the newest snapshot claims (or, for a tail much
longer than the snapshot, at a later segment: the main process decodes the segments
before it itself, see :func:`tokmesh.storage.recovery.recover`).

The worker hands back every record, in WAL order, as JSON documents of 10,000 records
each (the parent applies one while the worker decodes the next), whose session
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
import fcntl
import logging
import os
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from tokmesh.domain.session import Session
from tokmesh.storage.cipher import Cipher, StorageFatalError
from tokmesh.storage.session_columns import ColumnDecoder, encode_columns
from tokmesh.storage.wal_codec import RecordType, WalRecord
from tokmesh.storage.wal_files import WalReadStats, read_wal

_log = logging.getLogger("tokmesh.storage")

#: ``src`` of a record: no state (DELETE), the next decoded session, the next raw body
#: (API keys, and session states the worker could not decode: the replayer then reports
#: them as malformed exactly as in a serial replay).
_SRC_NONE, _SRC_SESSION, _SRC_BODY = 0, 1, 2
_SESSION_TYPES = (RecordType.CREATE, RecordType.UPDATE)
_COUNTERS = ("segments_read", "records", "segments_skipped", "bytes_dropped")
#: Records per part of the worker's output: ~2.6 MB of JSON, applied in ~40 ms.
PART_RECORDS = 10_000
#: Each part goes out behind its length.
_LEN = struct.Struct(">Q")
#: Size asked for the worker's output pipe, and of one read from it.
_PIPE_BYTES = 1 << 20

#: ``(position_after, type, entity_id, version, body, session)`` of one record: what
#: :func:`~tokmesh.storage.wal_files.read_wal` yields, taken apart, with the session
#: state already decoded when the worker could (``body`` is then ``None``).
DecodedRecord = tuple[int, RecordType, str, int, dict[str, Any] | None, Session | None]


def decode_tail(wal_dir: Path, position: int, cipher: Cipher) -> bytes:
    """The records of the WAL from ``position`` on, as the JSON document the parent reads
    with :func:`parse_tail` (what the worker sends, in one part; callable in-process)."""
    return list(decode_tail_parts(wal_dir, position, cipher, sys.maxsize))[-1]


def decode_tail_parts(
    wal_dir: Path, position: int, cipher: Cipher, part_records: int = PART_RECORDS
) -> Iterator[bytes]:
    """:func:`decode_tail`'s document cut into parts of ``part_records`` records, each a
    document of the same form: the parent applies a part while the worker decodes the
    next. The warnings go with the part they were found in; the counters and a fatal
    error only with the last part (intermediate ones carry zeros)."""
    stats = WalReadStats(quiet=True)
    part = _Part()
    warned = 0
    fatal: dict[str, Any] | None = None
    try:
        for pos, rec in read_wal(wal_dir, position, cipher, stats):
            part.add(pos, rec)
            if len(part.positions) >= part_records:
                yield part.dump(stats.warnings[warned:], None, None)
                warned = len(stats.warnings)
                part = _Part()
    except StorageFatalError as exc:
        # A serial replay would stop here too: the parent raises the same error.
        fatal = {"message": exc.message, "details": exc.details}
    yield part.dump(stats.warnings[warned:], stats, fatal)


class _Part:
    """The columns of one part of the worker's output."""

    def __init__(self) -> None:
        self.positions: list[int] = []
        self.types: list[int] = []
        self.stamps: list[int] = []
        self.versions: list[int] = []
        self.ids: list[str] = []
        self.sources: list[int] = []
        self.sessions: list[Session] = []
        self.bodies: list[dict[str, Any] | None] = []

    def add(self, pos: int, rec: WalRecord) -> None:
        self.positions.append(pos)
        self.types.append(int(rec.type))
        self.stamps.append(rec.ts)
        self.versions.append(rec.version)
        self.ids.append(rec.entity_id)
        if rec.type in _SESSION_TYPES:
            try:
                self.sessions.append(Session.from_record(rec.body or {}))
                self.sources.append(_SRC_SESSION)
                return
            except (KeyError, ValueError, TypeError):
                pass
        if rec.body is None:
            self.sources.append(_SRC_NONE)
        else:
            self.bodies.append(rec.body)
            self.sources.append(_SRC_BODY)

    def dump(
        self, warnings: list[str], stats: WalReadStats | None, fatal: dict[str, Any] | None
    ) -> bytes:
        return orjson.dumps(
            {
                "pos": self.positions,
                "type": self.types,
                "ts": self.stamps,
                "ver": self.versions,
                "id": self.ids,
                "src": self.sources,
                "sessions": encode_columns(self.sessions),
                "bodies": self.bodies,
                "warnings": warnings,
                "stats": {name: getattr(stats, name) if stats else 0 for name in _COUNTERS},
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


class PrefetchFailed(Exception):
    """The worker did not deliver all of its output (it exited with an error, or its
    output stopped mid-part); what it did deliver is good."""


class WalPrefetch:
    """A worker process decoding the WAL from ``position`` while the caller does other
    work; :meth:`parts` collects its output part by part, :meth:`cancel` abandons it.

    A thread reads the worker's output as it comes: a worker blocked on a full pipe
    while the caller is still loading the snapshot would be a worker doing nothing.
    """

    def __init__(self, wal_dir: Path, position: int, cipher: Cipher, base: int = -1) -> None:
        """Start the worker (``OSError`` if it cannot be started).

        ``base`` is where the caller's replay starts (``position`` when omitted); the
        caller decodes ``[base, position)`` itself, ``position`` being a segment start.
        """
        self.position = position
        self.base = position if base < 0 else base
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
        #: parts as they arrive; ``None`` ends them (the worker's output is complete
        #: when it exited 0 and the last part arrived whole)
        self._parts: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._complete = False
        self._reader = threading.Thread(target=self._read, name="tokmesh-wal-prefetch", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout: IO[bytes] | None = self._proc.stdout
        assert stdout is not None
        fd = stdout.fileno()
        # This thread needs the GIL after every read, and the caller's snapshot load
        # holds it for up to the switch interval (5 ms) at a time: with the default
        # 64 KiB pipe the worker spent more time blocked on a full pipe than decoding
        # (measured: its 35 MB of output arrived ~1 s later). A 1 MiB pipe absorbs that.
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        buf = bytearray()
        try:
            while True:
                chunk = os.read(fd, _PIPE_BYTES)
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= _LEN.size:
                    (size,) = _LEN.unpack_from(buf)
                    end = _LEN.size + size
                    if len(buf) < end:
                        break
                    self._parts.put(bytes(buf[_LEN.size : end]))
                    del buf[:end]
            self._complete = self._proc.wait() == 0 and not buf
            if buf:
                _log.warning("WAL prefetch output cut short; decoding the rest serially")
            elif not self._complete:
                _log.warning(
                    "WAL prefetch worker exited with status %d; decoding the rest serially",
                    self._proc.returncode,
                )
        except OSError as exc:
            _log.warning("WAL prefetch worker unreadable (%s); decoding serially", exc)
        finally:
            with contextlib.suppress(OSError):
                stdout.close()
            self._parts.put(None)

    def parts(self) -> Iterator[bytes]:
        """The worker's output parts, in order, as they arrive; raises
        :class:`PrefetchFailed` after the last good one if the output is incomplete."""
        while True:
            part = self._parts.get()
            if part is None:
                break
            yield part
        self._reader.join()
        if not self._complete:
            self.cancel()
            raise PrefetchFailed("WAL prefetch worker output incomplete")

    def cancel(self) -> None:
        """Stop the worker and reap it."""
        with contextlib.suppress(OSError):
            self._proc.kill()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc.wait()


def iter_serial(
    wal_dir: Path,
    position: int,
    cipher: Cipher,
    stats: WalReadStats,
    before_segment: int | None = None,
) -> Iterator[DecodedRecord]:
    """The in-process equivalent of a prefetch: what :func:`read_wal` yields (up to
    ``before_segment``, exclusive, when given), taken apart, with no pre-decoded session."""
    for pos, rec in read_wal(wal_dir, position, cipher, stats, before_segment):
        yield pos, rec.type, rec.entity_id, rec.version, rec.body, None


def _main() -> None:
    request = orjson.loads(sys.stdin.buffer.read())
    cipher = Cipher(bytes.fromhex(request["key"]), request["alg"])
    out = sys.stdout.buffer
    for part in decode_tail_parts(Path(request["wal_dir"]), int(request["position"]), cipher):
        out.write(_LEN.pack(len(part)))
        out.write(part)
        out.flush()


if __name__ == "__main__":
    _main()
