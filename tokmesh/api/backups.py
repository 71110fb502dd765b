"""Backup, restore and WAL admin routes (03 §4.3, §4.7; ruling R14).

- ``POST/GET /admin/v1/backups/snapshots``: snapshot on demand, catalogue listing.
- ``GET /admin/v1/backups/snapshots/{snapshot_id}/file``: the ``.bak`` download, streamed
  from disk one chunk at a time, with single ``Range`` support (206 / 416).
- ``POST /admin/v1/backups/restores``: JSON ``{"snapshot_id"}`` or a ``multipart/form-data``
  upload (part ``file``) streamed to a temp file; ``GET …/restores/{job_id}``.
- ``GET /admin/v1/wal/status``, ``GET /admin/v1/wal/logs``, ``POST /admin/v1/wal/compact``.

The download and the restore routes are ``hot``: the native front serves them inline, so
the download's ``body_iter`` goes straight to the socket and the upload arrives as
``req.stream`` when the server passes :func:`streams_request_body` as its
``streaming_predicate``. Under another engine they still work with a buffered body.
"""

from __future__ import annotations

import re
import weakref
from typing import Any, Final

import trio

from tokmesh.api.envelope import int_param, ok, parse_body
from tokmesh.api.http_errors import error_response
from tokmesh.api.http_types import HttpResponse
from tokmesh.api.routes import SCOPE_ADMIN, Call, Route
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.services.backups import (
    BackupService,
    BakReader,
    RangeNotSatisfiable,
    UploadFile,
    WalLogReader,
    body_chunks,
    parse_range,
)
from tokmesh.telemetry import audit as audit_mod

P: Final = "/admin/v1"
RESTORES_PATH: Final = f"{P}/backups/restores"
#: A JSON restore request is tiny; a larger one is refused before it is buffered.
MAX_JSON_BODY: Final = 64 * 1024
#: Bound on one multipart part's header block and on a non-file form field.
MAX_PART_HEADER: Final = 16 * 1024
MAX_FIELD: Final = 1024

_services: weakref.WeakKeyDictionary[Any, BackupService] = weakref.WeakKeyDictionary()


def backup_service(deps: Any) -> BackupService:
    """The one :class:`BackupService` of ``deps`` (an ``ApiDeps``), created on first use.

    The composition root should start its :meth:`BackupService.run` in the server's
    nursery: ``await nursery.start(backup_service(self.deps).run)``.
    """
    svc = _services.get(deps)
    if svc is None:
        svc = BackupService(deps.engine, deps.audit)
        _services[deps] = svc
    return svc


def streams_request_body(method: str, path: str) -> bool:
    """``serve_http(streaming_predicate=...)``: the restore upload is streamed to disk."""
    return method == "POST" and path == RESTORES_PATH


def _audit(call: Call, action: str, resource: str, **details: Any) -> None:
    log = call.deps.audit
    if log is None:
        return
    log.append(
        audit_mod.AuditRecord.new(action, **_operator(call), resource=resource, details=details)
    )


def _operator(call: Call) -> dict[str, Any]:
    p = call.principal
    return {
        "operator_id": p.key_id if p else None,
        "operator_role": p.role if p else None,
        "ip_address": call.client_ip,
        "tcp_remote_ip": call.req.peer_ip,
        "request_id": call.rid,
    }


# ---------------------------------------------------------------------------- snapshots


async def create_snapshot(call: Call) -> HttpResponse:
    """``POST /admin/v1/backups/snapshots`` ``{"description"?}``."""
    body = parse_body(call.req.body, {"description": (str, False)})
    svc = backup_service(call.deps)
    entry = await svc.create_snapshot(body.get("description") or "")
    _audit(call, audit_mod.SNAPSHOT_CREATED, entry.snapshot_id, size_bytes=entry.size_bytes)
    return ok(call.rid, entry.to_public())


async def list_snapshots(call: Call) -> HttpResponse:
    """``GET /admin/v1/backups/snapshots?page&size``."""
    page = int_param(call.query, "page", 1, 1)
    size = int_param(call.query, "size", 20, 1, 100)
    items, total = await backup_service(call.deps).list_snapshots(page, size)
    return ok(
        call.rid,
        {"items": [e.to_public() for e in items], "total_items": total, "page": page, "size": size},
    )


async def download_snapshot(call: Call) -> HttpResponse:
    """``GET …/snapshots/{snapshot_id}/file``: the ``.bak``, streamed, ``Range``-aware."""
    entry = await backup_service(call.deps).find(call.params["snapshot_id"], with_checksum=False)
    total = entry.size_bytes
    raw_range = call.req.get_header(b"range")
    try:
        span = parse_range(raw_range.decode("latin-1") if raw_range else None, total)
    except RangeNotSatisfiable:
        return error_response(
            call.rid,
            E.ARG_INVALID,
            "requested range not satisfiable",
            details={"size_bytes": total},
            status=416,
            headers={"Content-Range": f"bytes */{total}", "Accept-Ranges": "bytes"},
        )
    first, last = span if span is not None else (0, total - 1)
    try:
        reader = await BakReader.open(entry.path, first, last)
    except FileNotFoundError:
        raise TokMeshError(
            E.ADMIN_NOT_FOUND, "snapshot not found", {"snapshot_id": entry.snapshot_id}
        ) from None
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("X-Request-ID", call.rid),
        ("Content-Disposition", f'attachment; filename="{entry.snapshot_id}.bak"'),
        ("Accept-Ranges", "bytes"),
        ("Content-Length", str(last - first + 1)),
    ]
    status = 200
    if span is not None:
        status = 206
        headers.append(("Content-Range", f"bytes {first}-{last}/{total}"))
    return HttpResponse(status, headers, body_iter=reader)


# ---------------------------------------------------------------------------- restores


class MultipartError(TokMeshError):
    """A malformed ``multipart/form-data`` body: 400 ``TM-SYS-4000``."""

    def __init__(self, message: str) -> None:
        super().__init__(E.SYS_BAD_REQUEST, message)


class MultipartParser:
    """Sans-IO streaming ``multipart/form-data`` parser (RFC 7578), bounded memory.

    :meth:`feed` returns events: ``("part", name, filename)`` when a part's headers are
    complete, ``("data", bytes)`` for its content (in pieces), ``("end",)`` when it ends.
    At most the delimiter length plus one read stays buffered between calls.
    :attr:`complete` is set by the closing delimiter; epilogue bytes are ignored.
    """

    _PREAMBLE, _AFTER_DELIM, _HEADERS, _BODY, _DONE = range(5)

    def __init__(self, boundary: bytes) -> None:
        self._delim = b"\r\n--" + boundary
        # Prefixing CRLF makes the first boundary look like every later one.
        self._buf = bytearray(b"\r\n")
        self._state = self._PREAMBLE
        self.complete = False

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        """Consume ``data``; :class:`MultipartError` on a malformed body."""
        if self._state == self._DONE:
            return []
        self._buf += data
        events: list[tuple[Any, ...]] = []
        buf = self._buf
        delim = self._delim
        while True:
            if self._state in (self._PREAMBLE, self._BODY):
                idx = buf.find(delim)
                if idx < 0:
                    keep = len(delim) - 1
                    if self._state == self._BODY and len(buf) > keep:
                        events.append(("data", bytes(buf[: len(buf) - keep])))
                    if len(buf) > keep:
                        del buf[: len(buf) - keep]
                    return events
                if self._state == self._BODY:
                    if idx:
                        events.append(("data", bytes(buf[:idx])))
                    events.append(("end",))
                del buf[: idx + len(delim)]
                self._state = self._AFTER_DELIM
            elif self._state == self._AFTER_DELIM:
                if len(buf) < 2:
                    return events
                if buf[:2] == b"--":
                    self._state = self._DONE
                    self.complete = True
                    buf.clear()
                    return events
                # Transport padding (RFC 2046 §5.1.1) may precede the CRLF.
                eol = buf.find(b"\r\n")
                if eol < 0:
                    if len(buf) > 256:
                        raise MultipartError("malformed multipart boundary line")
                    return events
                if buf[:eol].strip(b" \t"):
                    raise MultipartError("malformed multipart boundary line")
                del buf[: eol + 2]
                self._state = self._HEADERS
            elif self._state == self._HEADERS:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_PART_HEADER:
                        raise MultipartError("multipart part headers too large")
                    return events
                name, filename = _part_disposition(bytes(buf[:end]))
                del buf[: end + 4]
                events.append(("part", name, filename))
                self._state = self._BODY
            else:
                return events


_PARAM_RE: Final = re.compile(rb';\s*([A-Za-z0-9_*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


def _part_disposition(block: bytes) -> tuple[str, str | None]:
    """``(name, filename)`` from a part's ``Content-Disposition: form-data`` header."""
    for line in block.split(b"\r\n"):
        key, sep, value = line.partition(b":")
        if not sep or key.strip().lower() != b"content-disposition":
            continue
        if not value.strip().lower().startswith(b"form-data"):
            raise MultipartError("multipart part is not form-data")
        params = {
            m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
            for m in _PARAM_RE.finditer(value)
        }
        name = params.get(b"name")
        if name is None:
            break
        filename = params.get(b"filename")
        return (
            name.decode("utf-8", "replace"),
            filename.decode("utf-8", "replace") if filename is not None else None,
        )
    raise MultipartError("multipart part without a Content-Disposition name")


def _boundary(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/form-data`` content type, else ``None``."""
    mtype, _, rest = content_type.partition(";")
    if mtype.strip().lower() != "multipart/form-data":
        return None
    m = re.search(r'boundary\s*=\s*(?:"([^"]{1,70})"|([^;\s]{1,70}))', rest, re.IGNORECASE)
    if m is None:
        raise MultipartError("multipart/form-data without a boundary")
    return (m.group(1) or m.group(2)).encode("latin-1")


async def start_restore(call: Call) -> HttpResponse:
    """``POST /admin/v1/backups/restores``: from ``snapshot_id`` or an uploaded ``.bak``."""
    svc = backup_service(call.deps)
    svc.claim()  # 409 before reading (possibly) hundreds of MB
    try:
        # Holding the slot, no other upload can be in progress: drop crash leftovers.
        await trio.to_thread.run_sync(svc.catalogue.clean_uploads)
        ctype = call.req.get_header(b"content-type")
        boundary = _boundary(ctype.decode("latin-1")) if ctype else None
        if boundary is None:
            job = await _restore_from_json(call, svc)
        else:
            job = await _restore_from_upload(call, svc, boundary)
    except BaseException:
        svc.release()
        raise
    _audit(call, audit_mod.RESTORE_STARTED, job.snapshot_id, job_id=job.job_id)
    return ok(
        call.rid,
        {
            "job_id": job.job_id,
            "status": job.status,
            "progress": job.progress,
            "message": job.message,
        },
    )


async def _restore_from_json(call: Call, svc: BackupService) -> Any:
    raw = bytearray(call.req.body)
    async for chunk in body_chunks(call.req.stream, b""):
        raw += chunk
        if len(raw) > MAX_JSON_BODY:
            raise TokMeshError(E.SYS_BAD_REQUEST, "restore request body too large for JSON")
    body = parse_body(bytes(raw), {"snapshot_id": (str, False)})
    snapshot_id = body.get("snapshot_id")
    if not snapshot_id:
        raise TokMeshError(
            E.ARG_MISSING,
            "either snapshot_id or a multipart file is required",
            {"field": "snapshot_id"},
        )
    return await svc.start_from_snapshot(snapshot_id, _operator(call))


async def _restore_from_upload(call: Call, svc: BackupService, boundary: bytes) -> Any:
    parser = MultipartParser(boundary)
    upload: UploadFile | None = None
    file_seen = False
    snapshot_id: bytearray | None = None
    current: str | None = None
    try:
        async for chunk in body_chunks(call.req.stream, call.req.body):
            for event in parser.feed(chunk):
                kind = event[0]
                if kind == "part":
                    current = event[1]
                    if current == "file":
                        if file_seen:
                            raise MultipartError("more than one file part")
                        file_seen = True
                        label = (event[2] or "").rsplit("/", 1)[-1].removesuffix(".bak")
                        upload = UploadFile(svc.catalogue.new_upload_path(), label or None)
                        await upload.open()
                    elif current == "snapshot_id":
                        snapshot_id = bytearray()
                    else:
                        raise MultipartError(f"unknown multipart part {current!r}")
                elif kind == "data":
                    if current == "file" and upload is not None:
                        await upload.write(event[1])
                    elif snapshot_id is not None:
                        snapshot_id += event[1]
                        if len(snapshot_id) > MAX_FIELD:
                            raise MultipartError("snapshot_id field too long")
                else:
                    current = None
        if not parser.complete:
            raise MultipartError("multipart body incomplete")
        if file_seen and snapshot_id is not None:
            raise TokMeshError(E.ARG_CONFLICT, "give either snapshot_id or a file, not both")
        if upload is None:
            if snapshot_id:
                return await svc.start_from_snapshot(
                    snapshot_id.decode("utf-8", "replace"), _operator(call)
                )
            raise TokMeshError(
                E.ARG_MISSING, "multipart part 'file' is required", {"field": "file"}
            )
        await upload.finish()
        job = await svc.start_from_upload(upload, _operator(call))
        upload = None  # the job owns (and later deletes) the file now
        return job
    finally:
        if upload is not None:
            await upload.discard()


async def restore_status(call: Call) -> HttpResponse:
    """``GET /admin/v1/backups/restores/{job_id}``."""
    job = backup_service(call.deps).job(call.params["job_id"])
    return ok(call.rid, job.to_public())


# ---------------------------------------------------------------------------- WAL


async def wal_status(call: Call) -> HttpResponse:
    """``GET /admin/v1/wal/status``."""
    return ok(call.rid, await backup_service(call.deps).wal_status())


async def wal_logs(call: Call) -> HttpResponse:
    """``GET /admin/v1/wal/logs?offset&limit&follow``: raw (encrypted) WAL bytes.

    ``offset`` is a WAL position as in ``last_offset`` of the status (0 = oldest byte);
    an offset past the end answers 200 with an empty body.
    """
    q = call.query
    offset = int_param(q, "offset", 0, 0, (1 << 64) - 1)
    limit = int_param(q, "limit", 1 << 20, 1)
    raw_follow = q.get("follow", "false").lower()
    if raw_follow not in _BOOLS:
        raise TokMeshError(E.ARG_INVALID, "follow must be true or false", {"field": "follow"})
    follow = _BOOLS[raw_follow]
    reader = WalLogReader(call.deps.engine.settings.wal_dir, offset, limit, follow)
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("X-Request-ID", call.rid),
        ("X-WAL-Start-Offset", str(offset)),
    ]
    return HttpResponse(200, headers, body_iter=reader)


_BOOLS: Final = {"true": True, "1": True, "false": False, "0": False, "": False}


async def wal_compact(call: Call) -> HttpResponse:
    """``POST /admin/v1/wal/compact`` (R14): snapshot, then drop the segments it covers."""
    parse_body(call.req.body, {})
    entry, removed, freed = await backup_service(call.deps).compact_wal()
    _audit(call, audit_mod.SNAPSHOT_CREATED, entry.snapshot_id, reason="wal-compact")
    return ok(
        call.rid,
        {
            "snapshot_id": entry.snapshot_id,
            "removed_segments": len(removed),
            "removed_files": removed,
            "freed_bytes": freed,
        },
    )


def backup_routes() -> list[Route]:
    """The backup, restore and WAL admin routes."""
    a = SCOPE_ADMIN
    return [
        Route("POST", f"{P}/backups/snapshots", create_snapshot, a, summary="Take a snapshot now"),
        Route("GET", f"{P}/backups/snapshots", list_snapshots, a, summary="List snapshots"),
        Route(
            "GET",
            f"{P}/backups/snapshots/{{snapshot_id}}/file",
            download_snapshot,
            a,
            hot=True,
            summary="Download a snapshot as a .bak backup file",
        ),
        Route(
            "POST",
            RESTORES_PATH,
            start_restore,
            a,
            hot=True,
            summary="Restore from a snapshot or an uploaded backup",
        ),
        Route(
            "GET",
            f"{P}/backups/restores/{{job_id}}",
            restore_status,
            a,
            summary="Restore job status",
        ),
        Route("GET", f"{P}/wal/status", wal_status, a, summary="WAL status"),
        Route("GET", f"{P}/wal/logs", wal_logs, a, hot=True, summary="Raw WAL bytes"),
        Route(
            "POST",
            f"{P}/wal/compact",
            wal_compact,
            a,
            summary="Snapshot and delete the WAL segments it covers",
        ),
    ]


__all__ = [
    "MultipartParser",
    "backup_routes",
    "backup_service",
    "streams_request_body",
]
