"""The audit log: append-only JSON lines, daily files, retention, query.

Records are written to ``<directory>/audit-YYYYMMDD.jsonl`` (UTC day of the record's
timestamp), apart from data and application logs. Appending never blocks or fails the
request that is audited: the caller encodes the record to its JSON line (on the Trio
thread, a few µs) and appends it to an in-memory buffer; the Trio task
:meth:`AuditLog.run` takes the whole buffer at once and writes it with one ``write`` per
day file in a worker thread, at most once per :data:`WRITE_INTERVAL_S` while records keep
coming. A full buffer or a write error loses records, bumps
``tokmesh_audit_dropped_total`` and logs at ERROR; it never raises to the caller. Every
record is redacted (both rules of :mod:`tokmesh.telemetry.redact`) before it reaches the
disk, so ``details`` may be passed as the handler has them.

Request-level records (every business write, every admin call) take
:meth:`AuditLog.append_write`, which is built for a write path doing 10,000 of them a
second: no record object, an id from a counter instead of a fresh random ULID, and a
line whose values are checked once for anything redaction could change instead of
being redacted field by field (see :func:`encode_write`). What reaches the disk is byte for
byte what :func:`encode_record` writes for the same :class:`AuditRecord`.

Files older than ``retention_days`` (whole UTC days) are purged at start and hourly.
:meth:`AuditLog.query` reads the files back, newest first, with the filters and paging of
``GET /admin/v1/audit/logs``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import attrs
import orjson
import trio

from tokmesh.domain.clock import SYSTEM_CLOCK, Clock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.ids import CountingUlids, new_ulid
from tokmesh.telemetry import metrics
from tokmesh.telemetry.episodes import Episode
from tokmesh.telemetry.redact import redact

__all__ = [
    "ACTIONS",
    "LOCAL_ADMIN",
    "RESULT_FAILURE",
    "RESULT_SUCCESS",
    "AuditLog",
    "AuditRecord",
    "admin_action",
    "encode_record",
    "encode_write",
]

_log = logging.getLogger("tokmesh.audit")

RESULT_SUCCESS: Final = "SUCCESS"
RESULT_FAILURE: Final = "FAILURE"
LOCAL_ADMIN: Final = "LOCAL_ADMIN"

KEY_CREATED: Final = "KEY_CREATED"
KEY_DISABLED: Final = "KEY_DISABLED"
KEY_ENABLED: Final = "KEY_ENABLED"
KEY_ROTATED: Final = "KEY_ROTATED"
SNAPSHOT_CREATED: Final = "SNAPSHOT_CREATED"
RESTORE_STARTED: Final = "RESTORE_STARTED"
RESTORE_COMPLETED: Final = "RESTORE_COMPLETED"
CONFIG_UPDATED: Final = "CONFIG_UPDATED"
NODE_REMOVED: Final = "NODE_REMOVED"
NODE_RESET: Final = "NODE_RESET"
EMERGENCY_KEY_CREATED: Final = "EMERGENCY_KEY_CREATED"
AUTH_FAILED: Final = "AUTH_FAILED"
AUTH_IP_BLOCKED: Final = "AUTH_IP_BLOCKED"
# The named actions; any other admin call is audited as "<METHOD> <route template>".
ACTIONS: Final = frozenset(
    {
        KEY_CREATED,
        KEY_DISABLED,
        KEY_ENABLED,
        KEY_ROTATED,
        SNAPSHOT_CREATED,
        RESTORE_STARTED,
        RESTORE_COMPLETED,
        CONFIG_UPDATED,
        NODE_REMOVED,
        NODE_RESET,
        EMERGENCY_KEY_CREATED,
        AUTH_FAILED,
        AUTH_IP_BLOCKED,
    }
)

MAX_PAGE_SIZE: Final = 100
_DAY_MS: Final = 86_400_000
_FILE_RE: Final = re.compile(r"audit-(\d{8})\.jsonl")
#: While records keep coming, the writer writes at most once per interval. Each write is
#: a round trip to a worker thread, and waking that thread and handing it the GIL costs
#: 0.1-0.9 ms of CPU here (measured on the two shared cores): at 10,000 records/s,
#: 100 writes a second cost 12.5 µs per record in all and 20 writes 5-7.6 µs
#: (``bench/audit_cost.py``). An isolated record is still written at once. The price is
#: that a process killed outright loses up to this much of the log still in memory; a
#: power loss already loses up to a second (lines are fsynced once a second, below).
WRITE_INTERVAL_S: Final = 0.05
# The longest an audit query waits for buffered records to reach the files first.
QUERY_FLUSH_WAIT_S: Final = 2.0
_FSYNC_INTERVAL_S: Final = 1.0
_DROP_LOG_INTERVAL_S: Final = 10.0


def admin_action(method: str, route_template: str) -> str:
    """The action of an admin call without a named action: ``"POST /admin/v1/gc/trigger"``."""
    return f"{method.upper()} {route_template}"


@attrs.frozen(slots=True, kw_only=True)
class AuditRecord:
    """One audit entry. Request-level records also carry method, route, status (and duration).

    ``operator_id`` is the caller's key_id, :data:`LOCAL_ADMIN`, or the presented key_id
    (or ``None``) on an authentication failure. ``details`` is redacted and encoded by
    :meth:`AuditLog.append` itself, so the caller may reuse it afterwards.
    """

    id: str
    timestamp: int
    action: str
    result: str = RESULT_SUCCESS
    operator_id: str | None = None
    operator_role: str | None = None
    resource: str = ""
    ip_address: str | None = None
    tcp_remote_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    details: Mapping[str, Any] = attrs.field(factory=dict)
    method: str | None = None
    route: str | None = None
    status: int | None = None
    duration_ms: float | None = None

    @classmethod
    def new(cls, action: str, *, clock: Clock = SYSTEM_CLOCK, **fields: Any) -> AuditRecord:
        """A record with a fresh ``audit-<ulid>`` ID and the current time in Unix ms."""
        return cls(id="audit-" + new_ulid(), timestamp=clock.now_ms(), action=action, **fields)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (unredacted); the business-write fields appear only when set."""
        out: dict[str, Any] = {
            "id": self.id,
            "timestamp": self.timestamp,
            "operator_id": self.operator_id,
            "operator_role": self.operator_role,
            "action": self.action,
            "resource": self.resource,
            "ip_address": self.ip_address,
            "tcp_remote_ip": self.tcp_remote_ip,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "details": dict(self.details),
            "result": self.result,
        }
        if self.method is not None:
            out["method"] = self.method
        if self.route is not None:
            out["route"] = self.route
        if self.status is not None:
            out["status"] = self.status
        if self.duration_ms is not None:
            out["duration_ms"] = self.duration_ms
        return out


def _day_of(timestamp_ms: int) -> str:
    return time.strftime("%Y%m%d", time.gmtime(timestamp_ms // 1000))


def _day_start_ms(day: str) -> int:
    dt = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1000


def _json_default(obj: Any) -> Any:
    # Objects JSON has no type for are written as their text, redacted like any text.
    return redact(str(obj))


def encode_record(record: AuditRecord) -> bytes:
    """The stored form of ``record``: its JSON object, redacted, as one ``\\n``-ended line."""
    return orjson.dumps(redact(record.to_dict()), default=_json_default) + b"\n"


def encode_write(
    record_id: str,
    timestamp: int,
    action: str,
    result: str,
    operator_id: str | None,
    operator_role: str | None,
    resource: str,
    ip_address: str | None,
    tcp_remote_ip: str | None,
    user_agent: str | None,
    request_id: str | None,
    method: str | None,
    route: str | None,
    status: int | None,
) -> bytes:
    """:func:`encode_record` of a request-level record with empty ``details``, cheaply.

    Byte for byte the same line. With no ``details``, the name rule of redaction has
    nothing to act on (no field of a record has a secret-sounding name, a test checks
    it), so redaction can only change a text value, and only one that passes the gate
    :func:`~tokmesh.telemetry.redact.redact_value` opens before it masks anything: a
    credential prefix in the lower-cased text. The values are checked with that gate all
    at once (joined by NUL, which no prefix contains, so no match spans two values, and
    skipped outright when there is no ``_`` at all, as in most records); when it stays
    shut, redaction would return the record unchanged and the dict is encoded as it is.
    Otherwise, or if a value is not text, :func:`encode_record` does the whole work.
    """
    try:
        text = "\0".join(
            (
                record_id,
                action,
                result,
                operator_id or "",
                operator_role or "",
                resource,
                ip_address or "",
                tcp_remote_ip or "",
                user_agent or "",
                request_id or "",
                method or "",
                route or "",
            )
        ).lower()
        plain = "_" not in text or not ("tmtk_" in text or "tmas_" in text or "tmth_" in text)
    except TypeError:  # a value that is not text: the general encoder takes any type
        plain = False
    if plain:
        # The fields and their order of AuditRecord.to_dict.
        data = {
            "id": record_id,
            "timestamp": timestamp,
            "operator_id": operator_id,
            "operator_role": operator_role,
            "action": action,
            "resource": resource,
            "ip_address": ip_address,
            "tcp_remote_ip": tcp_remote_ip,
            "user_agent": user_agent,
            "request_id": request_id,
            "details": {},
            "result": result,
        }
        if method is not None:
            data["method"] = method
        if route is not None:
            data["route"] = route
        if status is not None:
            data["status"] = status
        return orjson.dumps(data, default=_json_default) + b"\n"
    return encode_record(
        AuditRecord(
            id=record_id,
            timestamp=timestamp,
            action=action,
            result=result,
            operator_id=operator_id,
            operator_role=operator_role,
            resource=resource,
            ip_address=ip_address,
            tcp_remote_ip=tcp_remote_ip,
            user_agent=user_agent,
            request_id=request_id,
            method=method,
            route=route,
            status=status,
        )
    )


class AuditLog:
    """The asynchronous, bounded, append-only audit store of one node.

    Start :meth:`run` in the server nursery (``await nursery.start(audit.run)``); call
    :meth:`append` and :meth:`append_write` from the Trio thread only; :meth:`aclose` (or
    cancelling :meth:`run`) writes what is still buffered, within a grace period, before
    the files are closed. ``queue_size`` bounds the records buffered and not yet written.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        retention_days: int = 90,
        *,
        queue_size: int = 10_000,
        clock: Clock = SYSTEM_CLOCK,
        purge_interval_s: float = 3600.0,
        close_grace_s: float = 5.0,
    ) -> None:
        if retention_days < 1:
            raise ValueError("retention_days must be >= 1")
        self.directory = Path(directory)
        self.retention_days = retention_days
        self._clock = clock
        self._purge_interval_s = purge_interval_s
        self._close_grace_s = close_grace_s
        self._queue_size = queue_size
        self._write_interval_s = WRITE_INTERVAL_S
        # Encoded lines waiting for the writer, by UTC day; touched on the Trio thread only
        # (the writer swaps the whole dict out and hands it to its worker thread).
        self._buffer: dict[str, list[bytes]] = {}
        self._buffered = 0
        # The day of the latest record, [start, end) in Unix ms, and its list in _buffer:
        # records come in time order, so the day is worked out when it changes (and once
        # per batch), not per record.
        self._day_start = 0
        self._day_end = 0
        self._day_lines: list[bytes] = []
        self._wakeup = trio.Event()
        self._closed = False
        self._ids = CountingUlids()
        self._enqueued = 0
        self._done = 0  # records written or lost after they left the buffer
        self._progress = trio.Event()
        self._last_drop_log = 0.0
        self._drops_since_log = 0
        # File state, touched only from worker threads, serialised by this lock.
        self._io_lock = threading.Lock()
        self._fh: Any = None
        self._fh_day = ""
        self._last_fsync = 0.0
        self._writing = False  # run() is active: flush() can make progress
        # A full or broken disk fails every batch for as long as it lasts: one ERROR when
        # that starts and one INFO when writes work again, not an ERROR per batch; the
        # lost records are counted by tokmesh_audit_dropped_total{reason="write_error"}.
        self._write_errors = Episode(
            _log,
            "audit_write_failed",
            start="audit write failed, records lost: {detail}; later records are retried",
            end="audit writes work again",
            unit="failed_writes",
            level=logging.ERROR,
        )

    # ------------------------------------------------------------------ producer side

    def append(self, record: AuditRecord) -> bool:
        """Queue ``record`` for writing; never blocks, never raises.

        Returns ``False`` when the record was dropped (buffer full, log closed, or a value
        that cannot be encoded); that is counted in ``tokmesh_audit_dropped_total`` and
        logged at ERROR (rate-limited).
        """
        try:
            line = encode_record(record)
        except Exception as exc:  # an unencodable record is lost, never the caller
            self._lost_unencodable(exc)
            return False
        return self._add(record.timestamp, line, record.action)

    def append_write(
        self,
        action: str,
        *,
        resource: str,
        operator_id: str | None,
        operator_role: str | None,
        ip_address: str | None,
        tcp_remote_ip: str | None,
        user_agent: str | None,
        request_id: str | None,
        method: str | None,
        route: str | None,
        status: int | None,
        result: str = RESULT_SUCCESS,
    ) -> bool:
        """Audit one request (a business write or an admin call), stamped now.

        The same record as ``append(AuditRecord.new(action, ...))`` with these fields and
        no ``details``, at a fraction of the cost (see :func:`encode_write`); the id is
        ``audit-`` and a ULID of this log's counter. ``method``, ``route`` and ``status``
        are left out of the record when ``None`` (a request that is not HTTP). Returns
        like :meth:`append`.
        """
        timestamp = self._clock.now_ms()
        try:
            line = encode_write(
                "audit-" + self._ids.new(timestamp),
                timestamp,
                action,
                result,
                operator_id,
                operator_role,
                resource,
                ip_address,
                tcp_remote_ip,
                user_agent,
                request_id,
                method,
                route,
                status,
            )
        except Exception as exc:  # an unencodable record is lost, never the caller
            self._lost_unencodable(exc)
            return False
        return self._add(timestamp, line, action)

    def _add(self, timestamp: int, line: bytes, action: str) -> bool:
        if self._closed:
            metrics.AUDIT_DROPPED_CLOSED.inc()
            self._log_drop("audit log closed, record dropped", action)
            return False
        if self._buffered >= self._queue_size:
            metrics.AUDIT_DROPPED_QUEUE_FULL.inc()
            self._log_drop("audit queue full, record dropped", action)
            return False
        if self._day_start <= timestamp < self._day_end:
            lines = self._day_lines
        else:
            self._day_start = timestamp - timestamp % _DAY_MS
            self._day_end = self._day_start + _DAY_MS
            lines = self._day_lines = self._buffer.setdefault(_day_of(timestamp), [])
        lines.append(line)
        self._enqueued += 1
        self._buffered += 1
        if self._buffered == 1:
            self._wakeup.set()
        return True

    def _lost_unencodable(self, exc: Exception) -> None:
        metrics.AUDIT_DROPPED_WRITE_ERROR.inc()
        _log.error(
            "audit write failed, records lost",
            extra={
                "lost": 1,
                "error": f"encode: {type(exc).__name__}",
                "directory": str(self.directory),
            },
        )

    def _log_drop(self, message: str, action: str) -> None:
        # One ERROR line per interval: a flood of drops must not become a flood of logs.
        self._drops_since_log += 1
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL_S:
            _log.error(message, extra={"action": action, "dropped": self._drops_since_log})
            self._last_drop_log = now
            self._drops_since_log = 0

    async def flush(self) -> None:
        """Wait until every record appended so far has been written (or lost)."""
        target = self._enqueued
        while self._done < target:
            await self._progress.wait()

    async def aclose(self) -> None:
        """Stop accepting records; :meth:`run` writes the rest and returns."""
        self._closed = True
        self._wakeup.set()

    # ------------------------------------------------------------------ writer task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Create the directory, purge old files, then write queued records until closed."""
        await trio.to_thread.run_sync(self._prepare)
        task_status.started()
        self._writing = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._purge_loop)
                await self._write_loop()
                nursery.cancel_scope.cancel()
        finally:
            self._writing = False
            with trio.CancelScope(shield=True), trio.move_on_after(self._close_grace_s):
                await self._drain_remaining()
            with self._io_lock:
                self._close_file()

    def _prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._purge_sync()

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()  # before the swap: a later record sets the new one
            batch, count = self._take()
            if count:
                # Once taken, a batch is written even if shutdown cancels us meanwhile.
                with trio.CancelScope(shield=True):
                    await self._write_batch(batch, count)
            if self._closed and not self._buffered:
                return
            await trio.sleep(self._write_interval_s)

    def _take(self) -> tuple[dict[str, list[bytes]], int]:
        """The buffered lines and their count; the buffer starts empty again."""
        batch, count = self._buffer, self._buffered
        self._buffer = {}
        self._buffered = 0
        self._day_end = 0  # the cached day list belonged to the old buffer
        return batch, count

    async def _drain_remaining(self) -> None:
        batch, count = self._take()
        if count:
            await self._write_batch(batch, count)

    async def _write_batch(self, batch: dict[str, list[bytes]], count: int) -> None:
        try:
            lost, error = await trio.to_thread.run_sync(self._write_sync, batch)
        finally:
            self._done += count
            self._progress.set()
            self._progress = trio.Event()
        if lost:
            metrics.AUDIT_DROPPED_WRITE_ERROR.inc(lost)
            self._write_errors.failed(error, lost=lost, error=error, directory=str(self.directory))
        else:
            self._write_errors.succeeded()

    def _write_sync(self, batch: dict[str, list[bytes]]) -> tuple[int, str]:
        """Append each day's lines to its file; returns (records lost, last error text)."""
        lost = 0
        error = ""
        with self._io_lock:
            for day, lines in batch.items():
                try:
                    fh = self._file_for(day)
                    fh.write(b"".join(lines))
                    fh.flush()
                except OSError as exc:
                    lost += len(lines)
                    error = f"{type(exc).__name__}: {exc.strerror or exc}"
                    self._close_file()
            now = time.monotonic()
            if self._fh is not None and now - self._last_fsync >= _FSYNC_INTERVAL_S:
                # fsync at most once a second: audit lines are flushed to the OS on every
                # batch; per-line fsync is not required (it would cost ~200 µs each).
                try:
                    os.fsync(self._fh.fileno())
                except OSError as exc:
                    error = f"fsync: {exc.strerror or exc}"
                    _log.error("audit fsync failed", extra={"error": error})
                self._last_fsync = now
        return lost, error

    def _file_for(self, day: str) -> Any:
        if self._fh is not None and self._fh_day == day:
            return self._fh
        self._close_file()
        path = self.directory / f"audit-{day}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fh = os.fdopen(fd, "ab")
        self._fh_day = day
        return self._fh

    def _close_file(self) -> None:
        fh, self._fh, self._fh_day = self._fh, None, ""
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(OSError):
                fh.close()

    # ------------------------------------------------------------------ retention

    async def _purge_loop(self) -> None:
        while True:
            await trio.sleep(self._purge_interval_s)
            await self.purge()

    async def purge(self) -> list[str]:
        """Delete day files wholly older than the retention period; returns their names."""
        return await trio.to_thread.run_sync(self._purge_sync)

    def _purge_sync(self) -> list[str]:
        cutoff_ms = self._clock.now_ms() - self.retention_days * _DAY_MS
        removed: list[str] = []
        with self._io_lock:
            for day, path in self._day_files():
                # A day file holds [day 00:00, next day 00:00); it goes once all of that
                # is older than the cutoff.
                if _day_start_ms(day) + _DAY_MS > cutoff_ms:
                    continue
                if day == self._fh_day:
                    self._close_file()
                try:
                    path.unlink()
                    removed.append(path.name)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    _log.error("audit purge failed", extra={"file": path.name, "error": str(exc)})
        if removed:
            _log.info("audit files purged", extra={"files": removed})
        return removed

    def _day_files(self) -> list[tuple[str, Path]]:
        """``(YYYYMMDD, path)`` of every audit file, newest day first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        files = []
        for name in names:
            m = _FILE_RE.fullmatch(name)
            if m:
                files.append((m.group(1), self.directory / name))
        files.sort(reverse=True)
        return files

    # ------------------------------------------------------------------ query

    async def query(
        self,
        *,
        start_time: int | None = None,
        end_time: int | None = None,
        operator_id: str | None = None,
        action: str | None = None,
        page: int = 1,
        size: int = 20,
    ) -> tuple[list[dict[str, Any]], int]:
        """Matching records, newest first: (the page's items, total matching).

        ``start_time``/``end_time`` are inclusive Unix ms bounds; ``operator_id`` and
        ``action`` must match exactly. ``page`` ≥ 1, ``size`` 1..100, else
        ``TokMeshError(TM-ARG-1001)`` with ``details.max_size``. Items are the stored
        (already redacted) JSON objects; a page past the end is empty.
        """
        if page < 1 or size < 1 or size > MAX_PAGE_SIZE:
            raise TokMeshError(
                E.ARG_INVALID,
                "page must be >= 1 and size between 1 and 100",
                details={"max_size": MAX_PAGE_SIZE},
            )
        if self._writing and self._buffered:
            # Records wait up to one write interval in memory; an operator who reads the
            # log right after acting must see that action. A stuck disk delays the answer
            # by a bounded wait, never indefinitely.
            self._wakeup.set()
            with trio.move_on_after(QUERY_FLUSH_WAIT_S):
                await self.flush()
        return await trio.to_thread.run_sync(
            self._query_sync, start_time, end_time, operator_id, action, page, size
        )

    def _query_sync(
        self,
        start_time: int | None,
        end_time: int | None,
        operator_id: str | None,
        action: str | None,
        page: int,
        size: int,
    ) -> tuple[list[dict[str, Any]], int]:
        first = (page - 1) * size
        last = first + size
        total = 0
        items: list[dict[str, Any]] = []
        # A record lives in the file of its own timestamp's day, so walking the files
        # newest first and sorting within each file orders the whole result.
        for day, path in self._day_files():
            day_start = _day_start_ms(day)
            if end_time is not None and day_start > end_time:
                continue
            if start_time is not None and day_start + _DAY_MS <= start_time:
                continue
            try:
                raw = path.read_bytes()
            except OSError:
                continue  # purged meanwhile
            matches: list[dict[str, Any]] = []
            for line in raw.splitlines():
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # torn tail of a crash, or a line being written right now
                if not isinstance(entry, dict):
                    continue
                ts = entry.get("timestamp")
                if not isinstance(ts, int):
                    continue
                if start_time is not None and ts < start_time:
                    continue
                if end_time is not None and ts > end_time:
                    continue
                if operator_id is not None and entry.get("operator_id") != operator_id:
                    continue
                if action is not None and entry.get("action") != action:
                    continue
                matches.append(entry)
            if not matches:
                continue
            if total < last and total + len(matches) > first:
                matches.sort(key=lambda e: (e["timestamp"], str(e.get("id", ""))), reverse=True)
                lo = max(0, first - total)
                hi = min(len(matches), last - total)
                items.extend(matches[lo:hi])
            total += len(matches)
        return items, total
