"""``backup`` (snapshot, list, download, restore, status; 06 §9.5) and ``system wal``
(status, compact; 06 §9.6).

Downloads and uploads stream: the ``.bak`` goes to disk chunk by chunk (hashed on the
way, SHA-256 checked against the catalogue's checksum) and an uploaded file is read in
chunks into a hand-built ``multipart/form-data`` body, so neither is ever held in memory.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncclick as click

from tokmesh.cli.app import TmGroup, leaf, state_of
from tokmesh.cli.common import dry_run, emit, where
from tokmesh.cli.errors import EXIT_GENERAL, CliError, usage_error

if TYPE_CHECKING:
    from tokmesh.cli.connection import Connection
    from tokmesh.cli.output import Printer

P = "/admin/v1"
CHUNK = 256 * 1024
POLL_S = 1.0
RESTORE_WARNING = [
    "⚠️  WARNING: This operation will:",
    "   - Stop accepting new requests",
    "   - Replace all current data",
    "   - Cause brief service interruption",
]
#: Server codes → the messages of 06 §9.5.
_MESSAGES = {
    "TM-ADMIN-4041": "Snapshot not found",
    "TM-ADMIN-4091": "Restore already in progress",
    "TM-ADMIN-4221": "Invalid backup file format",
    "TM-ADMIN-4130": "File size exceeds limit",
}
#: Job states that end a restore: ``IDLE`` is the server's "finished OK" (03 §4.3);
#: ``COMPLETED`` is the name 06 uses for the same outcome.
DONE_STATES = ("IDLE", "COMPLETED")


def register(root: TmGroup) -> None:
    """Add the ``backup`` group to ``root``."""
    root.add_command(backup)


@click.group(
    "backup",
    cls=TmGroup,
    help="Snapshots on demand, backup download, restore from a snapshot or a .bak file (admin).",
    see_also=("tokmesh-cli system wal --help",),
)
async def backup() -> None:
    """Backup commands."""


def _friendly(exc: CliError, **override: str) -> CliError:
    """``exc`` with the 06 §9.5 message of its code (``override`` maps code → message)."""
    message = override.get(exc.code or "") or _MESSAGES.get(exc.code or "")
    if message:
        exc.message = message
        exc.args = (message,)
    if exc.code == "TM-ADMIN-4130":
        exc.suggestion = (
            "Restore from a snapshot stored on the server instead: "
            "tokmesh-cli backup restore --id <snapshot_id>"
        )
    return exc


# ============================================================================ snapshot


@leaf(
    backup,
    "snapshot",
    help="Take a snapshot now (the server answers when it is written).",
    examples=("tokmesh-cli backup snapshot -d 'before upgrade'",),
)
@click.option("-d", "--description", default="", help="Free text, up to 256 characters")
@click.option("--wait", is_flag=True, help="Wait for completion (always: the call is synchronous)")
@click.pass_context
async def backup_snapshot(ctx: click.Context, description: str, wait: bool) -> None:
    """``POST /admin/v1/backups/snapshots {description}``."""
    from tokmesh.cli.connection import remote
    from tokmesh.cli.output import format_bytes
    from tokmesh.cli.progress import Spinner, animated

    del wait  # the server replies once the snapshot is durable: nothing to poll
    state = state_of(ctx)
    printer = state.printer()
    body = {"description": description} if description else {}
    async with remote(state, "backup snapshot") as conn:
        printer.hint(where(conn), "Creating snapshot...")
        if dry_run(state, printer, "create a snapshot"):
            return
        assert conn.http is not None
        async with Spinner("Creating snapshot...", enabled=animated(printer)) as sp:
            try:
                data = await conn.http.call("POST", f"{P}/backups/snapshots", body=body)
            except CliError as exc:
                await sp.fail("Snapshot failed.")
                raise _friendly(exc) from None
            shown = await sp.succeed("Snapshot created successfully.")

    def human() -> None:
        if not shown:
            printer.out(printer.paint("✓ Snapshot created successfully.", "ok"))
        printer.out(f"  {'ID:':<11}{data.get('snapshot_id')}")
        printer.out(f"  {'Size:':<11}{format_bytes(int(data.get('size_bytes') or 0))}")
        printer.out(f"  {'Checksum:':<11}{data.get('checksum')}")

    emit(printer, data, human)


# ============================================================================ list


async def _all_snapshots(conn: Connection) -> list[dict[str, Any]]:
    """Every catalogue entry (pages of 100)."""
    assert conn.http is not None
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        data = await conn.http.call(
            "GET", f"{P}/backups/snapshots", params={"page": page, "size": 100}
        )
        batch = list(data.get("items") or [])
        items.extend(batch)
        if not batch or len(items) >= int(data.get("total_items") or 0):
            return items
        page += 1


@leaf(backup, "list", help="List the snapshots on the node (newest first).")
@click.pass_context
async def backup_list(ctx: click.Context) -> None:
    """``GET /admin/v1/backups/snapshots``, every page."""
    from tokmesh.cli.connection import remote

    state = state_of(ctx)
    printer = state.printer()
    async with remote(state, "backup list") as conn:
        items = await _all_snapshots(conn)
    result = {"items": items, "total_items": len(items), "page": 1, "size": len(items)}

    def human() -> None:
        if not items:
            if not printer.opts.no_headers:
                printer.out("No snapshots found.")
            return
        wide = printer.fmt == "wide"
        headers = ["SNAPSHOT ID", "CREATED", "SIZE", "DESCRIPTION"]
        if wide:
            headers += ["TYPE", "ENCRYPTED", "CHECKSUM"]
        printer.table(
            headers,
            [snapshot_row(s, wide, printer.verbose) for s in items],
            footer=f"Total: {len(items)} snapshots",
        )

    emit(printer, result, human, lambda: printer.lines(str(s.get("snapshot_id")) for s in items))


def snapshot_row(s: dict[str, Any], wide: bool, full: bool) -> list[tuple[str, str | None]]:
    """One ``backup list`` table row (06 §7.2).

    The snapshot ID is never shortened, unlike other long values: it is what
    ``backup download`` and ``backup restore --id`` take, and at 20-odd characters it
    fits a terminal anyway.
    """
    from tokmesh.cli.output import format_bytes, list_time, truncate

    row: list[tuple[str, str | None]] = [
        (str(s.get("snapshot_id", "")), "id"),
        (list_time(s.get("created_at")), None),
        (format_bytes(int(s.get("size_bytes") or 0)), None),
        (truncate(str(s.get("description") or ""), full), None),
    ]
    if wide:
        row += [
            (str(s.get("type") or ""), None),
            ("yes" if s.get("encrypted") else "no", None),
            (truncate(str(s.get("checksum") or ""), full), None),
        ]
    return row


# ============================================================================ download


@leaf(
    backup,
    "download",
    help="Download a snapshot as a .bak file (streamed to disk, SHA-256 verified).",
    examples=(
        "tokmesh-cli backup download snap-20250101-120000",
        "tokmesh-cli backup download snap-20250101-120000 -o /backups/ --resume",
    ),
)
@click.argument("snapshot_id")
@click.option(
    "-o", "--output", "output_path", metavar="PATH", help="File or directory (default <id>.bak)"
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted download from <path>.part (HTTP Range); keep it on failure",
)
@click.pass_context
async def backup_download(
    ctx: click.Context, snapshot_id: str, output_path: str | None, resume: bool
) -> None:
    """``GET /admin/v1/backups/snapshots/{id}/file`` into ``<path>.part``, then renamed."""
    from tokmesh.cli.connection import remote

    state = state_of(ctx)
    printer = state.printer()
    sid = snapshot_id.strip()
    target = Path(output_path) if output_path else Path(f"{sid}.bak")
    if target.is_dir():
        target = target / f"{sid}.bak"
    if not target.parent.is_dir():
        raise usage_error(f"output directory does not exist: {target.parent}")
    async with remote(state, "backup download") as conn:
        entry = next((s for s in await _all_snapshots(conn) if s.get("snapshot_id") == sid), None)
        if entry is None:
            from tokmesh.domain.errors import E

            raise CliError(
                "Snapshot not found", code=E.ADMIN_NOT_FOUND.code, details={"snapshot_id": sid}
            )
        size = await _download(conn, printer, entry, target, resume)
    data = {
        "snapshot_id": sid,
        "path": str(target),
        "size_bytes": size,
        "checksum": entry.get("checksum"),
        "verified": True,
    }

    def human() -> None:
        from tokmesh.cli.output import format_bytes

        printer.out(f"Downloaded to: {target}")
        printer.out(f"  {'Size:':<11}{format_bytes(size)}")
        printer.out(f"  {'Checksum:':<11}{entry.get('checksum')} (verified)")

    emit(printer, data, human)


async def _download(
    conn: Connection, printer: Printer, entry: dict[str, Any], target: Path, resume: bool
) -> int:
    """Stream the ``.bak`` to ``<target>.part``, verify size and SHA-256, rename it."""
    import hashlib

    from tokmesh.cli.progress import ProgressBar, animated

    assert conn.http is not None
    sid = str(entry["snapshot_id"])
    total = int(entry.get("size_bytes") or 0)
    expected = str(entry.get("checksum") or "")
    part = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    have = 0
    if resume and part.exists():
        have = part.stat().st_size
        if have > total:  # not a prefix of this snapshot: start over
            have = 0
        else:
            with open(part, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    digest.update(chunk)
    headers = {"Range": f"bytes={have}-"} if 0 < have < total else {}
    done = False
    try:
        with open(part, "r+b" if have else "wb") as fh:
            fh.seek(have)
            fh.truncate()
            if have < total:
                async with conn.http.stream(
                    "GET",
                    f"{P}/backups/snapshots/{sid}/file",
                    headers=headers,
                    ok_statuses=(200, 206),
                ) as resp:
                    if resp.status_code == 200 and have:  # the server ignored the Range
                        fh.seek(0)
                        fh.truncate()
                        digest, have = hashlib.sha256(), 0
                    bar = ProgressBar("Downloading", total, enabled=animated(printer), start=have)
                    try:
                        async for chunk in resp.aiter_raw(CHUNK):
                            fh.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
                    finally:
                        bar.close()
            fh.flush()
            os.fsync(fh.fileno())
            got = fh.tell()
        actual = "sha256:" + digest.hexdigest()
        if got != total or not _same(actual, expected):
            part.unlink(missing_ok=True)  # corrupt: never resume from it
            raise CliError(
                "checksum mismatch: the downloaded file does not match the snapshot",
                exit_code=EXIT_GENERAL,
                details={"expected": expected, "actual": actual, "size_bytes": got},
            )
        os.replace(part, target)
        done = True
        return got
    except CliError as exc:
        raise _friendly(exc) from None
    finally:
        if not done and not resume:
            part.unlink(missing_ok=True)


def _same(actual: str, expected: str) -> bool:
    import hmac

    return hmac.compare_digest(actual.lower(), expected.lower())


# ============================================================================ restore


@leaf(
    backup,
    "restore",
    help="Restore the node from a snapshot on the server (--id) or a .bak file (--file). "
    "The node refuses traffic while it restores.",
    examples=(
        "tokmesh-cli backup restore --id snap-20250101-120000",
        "tokmesh-cli backup restore --file ./snap-20250101-120000.bak -f",
    ),
)
@click.option("--id", "snapshot_id", metavar="SNAPSHOT_ID", help="A snapshot on the server")
@click.option("--file", "file_path", metavar="FILE", help="A .bak file to upload")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation")
@click.pass_context
async def backup_restore(
    ctx: click.Context, snapshot_id: str | None, file_path: str | None, force: bool
) -> None:
    """``POST /admin/v1/backups/restores``, then poll the job every second."""
    from tokmesh.cli.connection import remote
    from tokmesh.cli.prompts import confirm_typed, require_terminal

    state = state_of(ctx)
    printer = state.printer()
    if not snapshot_id and not file_path:
        raise usage_error("either --id or --file is required")
    if snapshot_id and file_path:
        raise usage_error("cannot specify both --id and --file")
    size = 0
    if file_path:
        try:
            size = os.stat(file_path).st_size
            with open(file_path, "rb"):
                pass
        except OSError as exc:
            raise usage_error(f"cannot read {file_path}: {exc.strerror or exc}") from None
        if not Path(file_path).is_file():
            raise usage_error(f"cannot read {file_path}: not a regular file")
    source = f"snapshot {snapshot_id}" if snapshot_id else f"file {file_path}"
    if not state.flag("dry_run"):
        require_terminal(force)  # fail (64) before connecting, not after
    async with remote(state, "backup restore") as conn:
        printer.hint(where(conn), f"⚠️  Restoring from {source}...")
        if dry_run(state, printer, f"restore the node from {source}"):
            return
        if not force:
            await confirm_typed(state, RESTORE_WARNING, "RESTORE")
        assert conn.http is not None
        try:
            if snapshot_id:
                job = await conn.http.call(
                    "POST", f"{P}/backups/restores", body={"snapshot_id": snapshot_id}
                )
            else:
                assert file_path is not None
                job = await _upload(conn, printer, Path(file_path), size)
        except CliError as exc:
            raise _friendly(exc) from None
        job_id = str(job.get("job_id"))
        if printer.human:
            printer.out(f"Restore started (job {job_id}).")
        final = await _follow(conn, printer, job_id)
    status = str(final.get("status"))
    if status not in DONE_STATES:
        raise CliError(
            f"restore failed: {final.get('message') or status}",
            exit_code=EXIT_GENERAL,
            details={"job_id": job_id, "status": status},
        )
    emit(printer, final, lambda: None)


async def _follow(conn: Connection, printer: Printer, job_id: str) -> dict[str, Any]:
    """Poll ``GET …/restores/{job_id}`` every second until the job ends."""
    import asyncio

    from tokmesh.cli.progress import Spinner, animated

    assert conn.http is not None
    async with Spinner("Restoring... (0%)", enabled=animated(printer)) as sp:
        while True:
            try:
                job = await conn.http.call("GET", f"{P}/backups/restores/{job_id}")
            except CliError as exc:
                await sp.fail("Restore status unavailable.")
                missing = f"Restore job '{job_id}' not found"
                raise _friendly(exc, **{"TM-ADMIN-4041": missing}) from None
            status = str(job.get("status"))
            sp.text = f"Restoring... ({int(job.get('progress') or 0)}%)"
            if status in DONE_STATES:
                if not await sp.succeed("Restore completed successfully.") and printer.human:
                    printer.out(printer.paint("✓ Restore completed successfully.", "ok"))
                return dict(job)
            if status != "RUNNING":
                await sp.fail(f"Restore {status.lower()}.")
                return dict(job)
            await asyncio.sleep(POLL_S)


async def _upload(conn: Connection, printer: Printer, path: Path, size: int) -> Any:
    """POST ``path`` as the multipart part ``file``, streamed from disk with a progress bar."""
    import json
    import secrets

    from tokmesh.cli.progress import ProgressBar, animated
    from tokmesh.cli.transport import error_from_envelope

    assert conn.http is not None
    boundary = "tokmesh-" + secrets.token_hex(16)
    name = path.name.replace("\\", "_").replace('"', "%22").replace("\r", "").replace("\n", "")
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    bar = ProgressBar("Uploading", size, enabled=animated(printer))

    async def body() -> AsyncIterator[bytes]:
        yield head
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                bar.update(len(chunk))
                yield chunk
        bar.close()
        yield tail

    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(head) + size + len(tail)),
    }
    async with conn.http.stream(
        "POST", f"{P}/backups/restores", headers=headers, content=body()
    ) as resp:
        raw = await resp.aread()
    try:
        doc = json.loads(raw)
    except ValueError:
        raise error_from_envelope(resp.status_code, None) from None
    return doc.get("data") if isinstance(doc, dict) and "data" in doc else doc


# ============================================================================ status


def job_rows(job: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``backup status`` detail lines."""
    from tokmesh.cli.output import detail_time

    finished = job.get("finished_at") or 0
    return [
        ("Job ID", str(job.get("job_id", "-"))),
        ("Status", str(job.get("status", "-"))),
        ("Progress", f"{int(job.get('progress') or 0)}%"),
        ("Message", str(job.get("message") or "-")),
        ("Snapshot ID", str(job.get("snapshot_id") or "-")),
        ("Started At", detail_time(job.get("started_at"))),
        ("Finished At", detail_time(finished) if finished else "-"),
    ]


@leaf(backup, "status", help="Status of a restore job (exit 1 when it FAILED).")
@click.argument("job_id")
@click.pass_context
async def backup_status(ctx: click.Context, job_id: str) -> None:
    """``GET /admin/v1/backups/restores/{job_id}``."""
    from tokmesh.cli.connection import remote

    state = state_of(ctx)
    printer = state.printer()
    jid = job_id.strip()
    async with remote(state, "backup status") as conn:
        assert conn.http is not None
        try:
            job = await conn.http.call("GET", f"{P}/backups/restores/{jid}")
        except CliError as exc:
            raise _friendly(exc, **{"TM-ADMIN-4041": f"Restore job '{jid}' not found"}) from None

    def human() -> None:
        printer.detail("Restore Job", job_rows(job))

    emit(printer, job, human, lambda: printer.out(str(job.get("status"))))
    if job.get("status") == "FAILED":
        raise click.exceptions.Exit(EXIT_GENERAL)


# ============================================================================ system wal


@click.group("wal", cls=TmGroup, help="Write-ahead log status and compaction (admin).")
async def wal() -> None:
    """WAL commands (registered under ``system``)."""


def wal_rows(d: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``WAL Status`` detail lines."""
    from tokmesh.cli.output import detail_time, format_bytes

    return [
        ("Enabled", "yes" if d.get("enabled") else "no"),
        ("Sync Mode", str(d.get("sync_mode") or "-")),
        ("Segment", str(d.get("current_segment_file") or d.get("current_segment") or "-")),
        ("Segments", str(d.get("total_segments", 0))),
        ("Size", format_bytes(int(d.get("total_size_bytes") or 0))),
        ("Oldest Entry", detail_time(d.get("oldest_entry_time"))),
        ("Newest Entry", detail_time(d.get("newest_entry_time"))),
        ("Last Offset", str(d.get("last_offset", 0))),
    ]


@leaf(wal, "status", help="WAL segments, size and last offset.")
@click.pass_context
async def wal_status(ctx: click.Context) -> None:
    """``GET /admin/v1/wal/status``."""
    from tokmesh.cli.connection import remote

    state = state_of(ctx)
    printer = state.printer()
    async with remote(state, "system wal status") as conn:
        assert conn.http is not None
        data = await conn.http.call("GET", f"{P}/wal/status")
    emit(
        printer,
        data,
        lambda: printer.detail("WAL Status", wal_rows(data)),
        lambda: printer.out(str(data.get("last_offset", 0))),
    )


@leaf(wal, "compact", help="Take a snapshot and delete the WAL segments it covers.")
@click.pass_context
async def wal_compact(ctx: click.Context) -> None:
    """``POST /admin/v1/wal/compact`` (ruling R14)."""
    from tokmesh.cli.connection import remote
    from tokmesh.cli.output import format_bytes

    state = state_of(ctx)
    printer = state.printer()
    async with remote(state, "system wal compact") as conn:
        printer.hint(where(conn), "Compacting the WAL...")
        if dry_run(state, printer, "snapshot the node and delete the WAL segments it covers"):
            return
        assert conn.http is not None
        data = await conn.http.call("POST", f"{P}/wal/compact", body={})

    def human() -> None:
        printer.out(printer.paint("✓ WAL compaction completed.", "ok"))
        printer.out(f"  {'Snapshot ID:':<18}{data.get('snapshot_id')}")
        printer.out(f"  {'Removed Segments:':<18}{data.get('removed_segments', 0)}")
        printer.out(f"  {'Freed:':<18}{format_bytes(int(data.get('freed_bytes') or 0))}")

    emit(printer, data, human)
