"""``session`` (alias ``sess``): list, get, create, renew (extend), revoke, revoke-all,
validate (06 §9.2), watch (session events)."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from typing import Any

import asyncclick as click

from tokmesh.cli.app import TmGroup, leaf, state_of
from tokmesh.cli.common import (
    check_ip_or_cidr,
    dry_run,
    duration_ms,
    emit,
    rename_not_found,
    rfc3339_flag,
    typed_id,
    where,
)
from tokmesh.cli.errors import CliError, data_error, usage_error

MAX_BATCH = 1000


def register(root: TmGroup) -> None:
    """Add the ``session`` group (and its alias ``sess``) to ``root``."""
    root.add_command(session)
    root.add_alias("sess", "session")
    session.add_alias("extend", "renew")


@click.group(
    "session",
    cls=TmGroup,
    aliases=("session", "sess"),
    help="Manage sessions: list, inspect, create, renew, revoke and validate tokens.",
    see_also=("tokmesh-cli apikey --help",),
)
async def session() -> None:
    """Session commands."""


# ============================================================================ rendering


def _status_cell(_s: dict[str, Any]) -> tuple[str, str | None]:
    return ("active", "ok")


def session_rows(items: list[dict[str, Any]], wide: bool, full: bool) -> list[Any]:
    """Table rows for ``session list`` (06 §7.2)."""
    from tokmesh.cli.output import list_time, truncate

    rows = []
    for s in items:
        row: list[tuple[str, str | None]] = [
            (truncate(str(s.get("id", "")), full), "id"),
            (truncate(str(s.get("user_id", "")), full), None),
        ]
        if wide:
            row += [
                (truncate(str(s.get("device_id", "")), full), None),
                (truncate(str(s.get("created_by", "")), full), "id"),
            ]
        row += [(list_time(s.get("created_at")), None), (list_time(s.get("expires_at")), None)]
        if wide:
            data = s.get("data") or {}
            row += [
                _status_cell(s),
                (list_time(s.get("last_active")), None),
                (truncate(",".join(sorted(data)), full) if data else "-", None),
            ]
        rows.append(row)
    return rows


def session_detail_rows(s: dict[str, Any], show_data: bool) -> list[tuple[str, str]]:
    """The ``session get`` detail lines."""
    from tokmesh.cli.output import detail_time

    rows = [
        ("Session ID", str(s.get("id", "-"))),
        ("User ID", str(s.get("user_id") or "-")),
        ("Device ID", str(s.get("device_id") or "-")),
        ("IP Address", str(s.get("ip_address") or "-")),
        ("User Agent", str(s.get("user_agent") or "-")),
        ("Created At", detail_time(s.get("created_at"))),
        ("Expires At", detail_time(s.get("expires_at"))),
        ("Last Active", detail_time(s.get("last_active"))),
        ("Status", "active"),
        ("Created By", str(s.get("created_by") or "-")),
        ("Version", str(s.get("version", "-"))),
    ]
    if show_data:
        rows.append(("Data", json.dumps(s.get("data") or {}, ensure_ascii=False)))
    return rows


# ============================================================================ list


@leaf(
    session,
    "list",
    help="List live sessions (admin; an issuer must pass --user-id).",
    examples=("tokmesh-cli session list -u alice", "tokmesh-cli sess list -o json"),
    see_also=("tokmesh-cli session get --help",),
)
@click.option("-u", "--user-id", help="Filter by user ID")
@click.option("-d", "--device-id", help="Filter by device ID")
@click.option("--key-id", help="Filter by the creating API key")
@click.option("--ip", help="Filter by IP address or CIDR")
@click.option("--status", type=click.Choice(["active", "expired"]), help="active|expired")
@click.option("--created-after", help="RFC3339 lower bound on created_at")
@click.option("--created-before", help="RFC3339 upper bound on created_at")
@click.option("--active-after", help="RFC3339: last_active later than this")
@click.option("--sort-by", type=click.Choice(["created_at", "last_active"]), default=None)
@click.option("--sort-order", type=click.Choice(["desc", "asc"]), default=None)
@click.option("--page", type=int, default=1, show_default=True)
@click.option("--page-size", type=int, default=20, show_default=True, help="1-100")
@click.option("--fields", help="Comma-separated session fields to return")
@click.option("-a", "--all", "show_all", is_flag=True, help="Do not truncate values (= -v)")
@click.pass_context
async def session_list(ctx: click.Context, /, **kw: Any) -> None:
    """``GET /sessions``."""
    from tokmesh.cli.connection import remote

    state = state_of(ctx)
    printer = state.printer()
    params: dict[str, Any] = {}
    for flag, param in (
        ("user_id", "user_id"),
        ("device_id", "device_id"),
        ("key_id", "key_id"),
        ("fields", "fields"),
        ("sort_by", "sort_by"),
        ("sort_order", "sort_order"),
    ):
        if kw[flag]:
            params[param] = typed_id(kw[flag]) if flag == "key_id" else kw[flag]
    if kw["ip"]:
        params["ip_address"] = check_ip_or_cidr(kw["ip"], "--ip")
    for flag, param in (
        ("created_after", "time_range_start"),
        ("created_before", "time_range_end"),
        ("active_after", "active_after"),
    ):
        if kw[flag]:
            params[param] = rfc3339_flag(kw[flag], "--" + flag.replace("_", "-"))
    if kw["page"] < 1:
        raise usage_error("--page must be at least 1")
    size = kw["page_size"]
    if size <= 0:
        raise usage_error("--page-size must be greater than 0")
    if size > 100:
        printer.err("Warning: --page-size over 100 clamped to 100")
        size = 100
    params["page"], params["size"] = kw["page"], size
    full = printer.verbose or kw["show_all"]
    async with remote(state, "session list") as conn:
        while True:
            if kw["status"] == "expired":  # the server lists live sessions only
                data: dict[str, Any] = {
                    "items": [],
                    "total_items": 0,
                    "page": kw["page"],
                    "size": size,
                }
            else:
                assert conn.http is not None
                data = await conn.http.call("GET", "/sessions", params=params)
            _print_sessions(printer, data, full, size)
            if not printer.opts.watch:
                return
            import anyio

            await anyio.sleep(2)
            printer.out()


def _print_sessions(printer: Any, data: dict[str, Any], full: bool, size: int) -> None:
    items = list(data.get("items") or [])

    def human() -> None:
        if not items:
            if not printer.opts.no_headers:
                printer.out("No sessions found.")
            return
        wide = printer.fmt == "wide"
        headers = ["SESSION ID", "USER ID"]
        if wide:
            headers += ["DEVICE ID", "CREATED BY"]
        headers += ["CREATED", "EXPIRES"]
        if wide:
            headers += ["STATUS", "LAST ACCESS", "METADATA KEYS"]
        total = int(data.get("total_items") or 0)
        pages = max(1, math.ceil(total / max(1, int(data.get("size") or size))))
        printer.table(
            headers,
            session_rows(items, wide, full),
            footer=f"Total: {total} sessions (Page {data.get('page', 1)}/{pages})",
        )

    def quiet() -> None:
        for s in items:
            printer.out(str(s.get("id")))

    emit(printer, data, human, quiet)


# ============================================================================ get


@leaf(
    session,
    "get",
    help="Show one session (--touch updates last_active).",
    examples=("tokmesh-cli session get tmss-01j3n5x0p9k2c7h8d4f6g1m2n3",),
)
@click.argument("session_id")
@click.option("--touch", is_flag=True, help="POST /sessions/{id}/touch instead of a pure read")
@click.option("--show-data", is_flag=True, help="Show the data map in the table view")
@click.pass_context
async def session_get(ctx: click.Context, session_id: str, touch: bool, show_data: bool) -> None:
    """``GET /sessions/{id}`` or ``POST /sessions/{id}/touch``."""
    from tokmesh.cli.connection import remote

    state = state_of(ctx)
    printer = state.printer()
    sid = typed_id(session_id)
    async with remote(state, "session get") as conn:
        assert conn.http is not None
        try:
            if touch:
                data = await conn.http.call("POST", f"/sessions/{sid}/touch", body={})
            else:
                data = await conn.http.call("GET", f"/sessions/{sid}")
        except CliError as exc:
            raise _not_found(exc, sid) from None
    emit(
        printer,
        data,
        lambda: printer.detail("Session Details", session_detail_rows(data, show_data)),
        lambda: printer.out(str(data.get("id"))) if printer.verbose else None,
    )


def _not_found(exc: CliError, sid: str) -> CliError:
    exc = rename_not_found(exc, ("TM-SESS-4040",), f"Session '{sid}' not found")
    return rename_not_found(exc, ("TM-SESS-4041",), f"Session '{sid}' has expired")


# ============================================================================ create


@leaf(
    session,
    "create",
    help="Create a session; the token is shown only once.",
    examples=('tokmesh-cli session create -u alice --ttl 12h --data \'{"role":"ops"}\'',),
)
@click.option("-u", "--user-id", help="Owner of the session (required)")
@click.option("-d", "--device-id", help="Device ID")
@click.option("--ttl", help="Lifetime, e.g. 2h (default: the server's)")
@click.option("--token", help="Custom token tmtk_… (default: generated)")
@click.option("--data", "data_text", help="JSON object of string values")
@click.option("--data-file", type=click.Path(dir_okay=False), help="File with the JSON object")
@click.pass_context
async def session_create(
    ctx: click.Context,
    user_id: str | None,
    device_id: str | None,
    ttl: str | None,
    token: str | None,
    data_text: str | None,
    data_file: str | None,
) -> None:
    """``POST /sessions``."""
    from tokmesh.cli.connection import remote
    from tokmesh.cli.output import detail_time

    state = state_of(ctx)
    printer = state.printer()
    if not user_id:
        raise usage_error("Missing required flag: --user-id")
    if data_text is not None and data_file is not None:
        raise usage_error("--data and --data-file cannot be used together")
    body: dict[str, Any] = {"user_id": user_id}
    if device_id:
        body["device_id"] = device_id
    if ttl:
        body["ttl_seconds"] = max(1, duration_ms(ttl, "--ttl") // 1000)
    if token:
        body["token"] = token
    if data_file is not None:
        try:
            with open(data_file, encoding="utf-8") as fh:
                data_text = fh.read()
        except OSError as exc:
            raise usage_error(f"cannot read --data-file {data_file}: {exc.strerror}") from None
    if data_text is not None:
        try:
            obj = json.loads(data_text)
        except ValueError:
            raise data_error("--data is not valid JSON") from None
        if not isinstance(obj, dict):
            raise data_error("--data must be a JSON object")
        body["data"] = obj
    async with remote(state, "session create") as conn:
        printer.hint(where(conn), f"Creating session for user '{user_id}'...")
        if dry_run(state, printer, f"create a session for user '{user_id}'"):
            return
        assert conn.http is not None
        data = await conn.http.call("POST", "/sessions", body=body)

    def human() -> None:
        printer.out(printer.paint("Session created successfully!", "ok"))
        printer.detail(
            "Session Details",
            [
                ("Session ID", str(data.get("session_id"))),
                ("Session Token", str(data.get("token"))),
                ("User ID", str((data.get("session") or {}).get("user_id", user_id))),
                ("Expires At", detail_time(data.get("expires_at"))),
            ],
        )
        printer.out(printer.paint("⚠️  IMPORTANT: The Session Token is shown ONLY ONCE.", "warn"))
        printer.out("    Please copy and store it securely.")

    emit(printer, data, human, lambda: printer.out(str(data.get("token"))))


# ============================================================================ renew


@leaf(
    session,
    "renew",
    aliases=("renew", "extend"),
    help="Set a session's expiry to now + --ttl.",
    examples=("tokmesh-cli session renew tmss-01j3n5x0p9k2c7h8d4f6g1m2n3 --ttl 48h",),
)
@click.argument("session_id")
@click.option("--ttl", required=True, help="New lifetime from now, e.g. 12h")
@click.pass_context
async def session_renew(ctx: click.Context, session_id: str, ttl: str) -> None:
    """``POST /sessions/{id}/renew``."""
    from tokmesh.cli.connection import remote
    from tokmesh.cli.output import detail_time

    state = state_of(ctx)
    printer = state.printer()
    sid = typed_id(session_id)
    ttl_seconds = max(1, duration_ms(ttl, "--ttl") // 1000)
    async with remote(state, "session renew") as conn:
        assert conn.http is not None
        try:
            before = await conn.http.call("GET", f"/sessions/{sid}")
        except CliError as exc:
            raise _not_found(exc, sid) from None
        printer.hint(where(conn), f"Renewing session {sid}...")
        if dry_run(state, printer, f"renew session {sid} for {ttl_seconds} s"):
            return
        try:
            data = await conn.http.call(
                "POST", f"/sessions/{sid}/renew", body={"ttl_seconds": ttl_seconds}
            )
        except CliError as exc:
            raise _not_found(exc, sid) from None

    def human() -> None:
        printer.out(printer.paint("Session renewed successfully!", "ok"))
        printer.out(f"  {'Session ID:':<17}{sid}")
        printer.out(f"  {'New Expires At:':<17}{detail_time(data.get('new_expires_at'))}")
        printer.out(f"  {'Previous:':<17}{detail_time(before.get('expires_at'))}")

    emit(printer, data, human)


# ============================================================================ revoke


@leaf(
    session,
    "revoke",
    help="Revoke one session (idempotent).",
    examples=("tokmesh-cli session revoke tmss-01j3n5x0p9k2c7h8d4f6g1m2n3 -f",),
)
@click.argument("session_id")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation")
@click.option("--sync", is_flag=True, help="Wait for cluster-wide consistency")
@click.pass_context
async def session_revoke(ctx: click.Context, session_id: str, force: bool, sync: bool) -> None:
    """``POST /sessions/{id}/revoke``."""
    from tokmesh.cli.connection import remote
    from tokmesh.cli.output import detail_time, now_ms, truncate
    from tokmesh.cli.prompts import confirm, require_terminal

    state = state_of(ctx)
    printer = state.printer()
    sid = typed_id(session_id)
    require_terminal(force)
    async with remote(state, "session revoke") as conn:
        printer.hint(where(conn), f"⚠️  Revoking session {truncate(sid, printer.verbose)}")
        if dry_run(state, printer, f"revoke session {sid}"):
            return
        if not force:
            await confirm(state, f"Are you sure you want to revoke session '{sid}'?")
        assert conn.http is not None
        data = await conn.http.call("POST", f"/sessions/{sid}/revoke", body={"sync": sync})
    revoked_at = now_ms()

    def human() -> None:
        printer.out(printer.paint("Session revoked successfully.", "ok"))
        printer.out(f"  {'Session ID:':<14}{sid}")
        printer.out(f"  {'Revoked At:':<14}{detail_time(revoked_at)}")

    emit(printer, data, human)


# ============================================================================ revoke-all


@leaf(
    session,
    "revoke-all",
    help="Revoke every session matching the filters (at least one filter; max 1000).",
    examples=(
        "tokmesh-cli session revoke-all -u alice -f",
        "tokmesh-cli session revoke-all --device-id d1 --dry-run",
    ),
)
@click.argument("user_id_arg", metavar="[USER_ID]", required=False)
@click.option("-u", "--user-id", help="Revoke this user's sessions")
@click.option("-d", "--device-id", help="Only sessions of this device")
@click.option("--key-id", help="Only sessions created by this API key")
@click.option("--created-before", help="Only sessions created before this RFC3339 time")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation")
@click.option("--dry-run", "dry", is_flag=True, help="List what would be revoked")
@click.pass_context
async def session_revoke_all(
    ctx: click.Context,
    user_id_arg: str | None,
    user_id: str | None,
    device_id: str | None,
    key_id: str | None,
    created_before: str | None,
    force: bool,
    dry: bool,
) -> None:
    """``POST /users/{uid}/sessions/revoke``, or list + per-session revoke for other filters."""
    from tokmesh.cli.connection import remote
    from tokmesh.cli.output import list_time
    from tokmesh.cli.prompts import confirm_typed, require_terminal

    state = state_of(ctx)
    printer = state.printer()
    dry = dry or bool(state.flag("dry_run"))
    if not dry:
        require_terminal(force)
    if user_id and user_id_arg and user_id != user_id_arg:
        raise usage_error("USER_ID and --user-id disagree")
    uid = user_id or user_id_arg
    if created_before:
        created_before = rfc3339_flag(created_before, "--created-before")
    if not (uid or device_id or key_id or created_before):
        raise usage_error(
            "at least one filter is required: -u/--user-id (or USER_ID), -d/--device-id, "
            "--key-id or --created-before"
        )
    only_user = bool(uid) and not (device_id or key_id or created_before)
    started = time.perf_counter()
    async with remote(state, "session revoke-all") as conn:
        assert conn.http is not None
        params: dict[str, Any] = {"size": 100}
        if uid:
            params["user_id"] = uid
        if device_id:
            params["device_id"] = device_id
        if key_id:
            params["key_id"] = typed_id(key_id)
        if created_before:
            params["time_range_end"] = created_before
        matches: list[dict[str, Any]] = []
        if only_user and not dry:
            first = await conn.http.call("GET", "/sessions", params={**params, "size": 1})
            total = int(first.get("total_items") or 0)
        else:
            matches = await _collect(conn.http, params)
            total = len(matches)
        if total > MAX_BATCH:
            raise _batch_limit()
        if dry:
            _dry_run_listing(printer, matches, list_time)
            return
        printer.hint(where(conn), f"⚠️  Revoking {total} sessions...")
        if not force:
            if uid:
                await confirm_typed(
                    state, [f"This will revoke {total} sessions for user '{uid}'."], uid
                )
            else:
                await confirm_typed(state, [f"This will revoke {total} sessions."], "revoke-all")
        if only_user:
            try:
                data = await conn.http.call("POST", f"/users/{uid}/sessions/revoke", body={})
            except CliError as exc:
                if exc.code == "TM-SESS-4002":
                    raise _batch_limit() from None
                raise
            revoked = int(data.get("revoked_count") or 0)
        else:
            revoked = 0
            for s in matches:
                await conn.http.call("POST", f"/sessions/{s['id']}/revoke", body={})
                revoked += 1
            data = {"revoked_count": revoked}
    duration = (time.perf_counter() - started) * 1000

    def human() -> None:
        printer.out(printer.paint("Batch revoke completed.", "ok"))
        printer.out(f"  {'Total Revoked:':<16}{revoked}")
        if uid:
            printer.out(f"  {'User ID:':<16}{uid}")
        printer.out(f"  {'Duration:':<16}{duration:.0f}ms")

    emit(printer, data, human)


def _batch_limit() -> CliError:
    from tokmesh.domain.errors import E

    return CliError("Batch operation exceeds limit (1000)", code=E.SESS_QUOTA.code)


async def _collect(http: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every session matching ``params`` (paged, stops past the batch limit)."""
    out: list[dict[str, Any]] = []
    page = 1
    while True:
        data = await http.call("GET", "/sessions", params={**params, "page": page})
        items = list(data.get("items") or [])
        out.extend(items)
        if not items or len(out) >= int(data.get("total_items") or 0) or len(out) > MAX_BATCH:
            return out
        page += 1


def _dry_run_listing(printer: Any, matches: list[dict[str, Any]], list_time: Any) -> None:
    if printer.structured:
        printer.envelope({"dry_run": True, "would_revoke": [s.get("id") for s in matches]})
        return
    if printer.quiet:
        for s in matches:
            printer.out(str(s.get("id")))
        return
    printer.out(f"[DRY RUN] Would revoke {len(matches)} sessions:")
    for s in matches:
        printer.out(f"  - {s.get('id')}  (created {list_time(s.get('created_at'))})")


# ============================================================================ validate


@leaf(
    session,
    "validate",
    help="Validate a token (exit 0 valid, 1 invalid).",
    examples=(
        'if tokmesh-cli session validate -t "$T" --brief -q; then echo ok; fi',
        'echo "$T" | tokmesh-cli session validate --brief',
    ),
)
@click.option("-t", "--token", help="The token (default: first line of stdin)")
@click.option("--touch", is_flag=True, help="Also update last_active")
@click.option("--brief", is_flag=True, help="Print only valid/invalid")
@click.pass_context
async def session_validate(ctx: click.Context, token: str | None, touch: bool, brief: bool) -> None:
    """``POST /tokens/validate``; a 401 ``TM-TOKN-*`` is an invalid token (exit 1)."""
    from tokmesh.cli.connection import remote
    from tokmesh.cli.output import detail_time
    from tokmesh.cli.state import stdin_is_tty

    state = state_of(ctx)
    printer = state.printer()
    if token is None:
        if stdin_is_tty():
            from tokmesh.cli.prompts import ask_secret

            token = await ask_secret(state, "Token: ")
        elif not state.in_repl:
            token = sys.stdin.readline().strip()
    if not token:
        raise usage_error("a token is required (--token or the first line of stdin)")
    async with remote(state, "session validate") as conn:
        assert conn.http is not None
        try:
            data = await conn.http.call(
                "POST", "/tokens/validate", body={"token": token.strip(), "touch": touch}
            )
        except CliError as exc:
            if not (exc.code or "").startswith("TM-TOKN-"):
                raise
            _invalid(printer, exc, brief)
            raise click.exceptions.Exit(1) from None
    s = data.get("session") or {}

    def human() -> None:
        if brief:
            printer.out("valid")
            return
        printer.detail(
            "Token Validation Result",
            [
                ("Valid", printer.paint("✓ Yes", "ok")),
                ("Session ID", str(s.get("id", "-"))),
                ("User ID", str(s.get("user_id") or "-")),
                ("Device ID", str(s.get("device_id") or "-")),
                ("Expires At", detail_time(s.get("expires_at"))),
                ("Last Active", detail_time(s.get("last_active"))),
            ],
        )

    emit(printer, data, human)


def _invalid(printer: Any, exc: CliError, brief: bool) -> None:
    if printer.structured:
        printer.error(exc)
    elif printer.quiet:
        return
    elif brief:
        printer.out("invalid")
    else:
        printer.detail(
            "Token Validation Result",
            [
                ("Valid", printer.paint("✗ No", "bad")),
                ("Reason", f"{exc.message} ({exc.code})"),
            ],
        )


# ============================================================================ watch


@leaf(
    session,
    "watch",
    help="Follow session events (GET /events); resumes by itself after a disconnect.",
    examples=(
        "tokmesh-cli session watch",
        "tokmesh-cli session watch --user alice --type created,revoked -o json",
        "tokmesh-cli session watch --from 4294968748",
    ),
    see_also=("docs/events.md",),
)
@click.option("-u", "--user", help="Only events of this user ID")
@click.option(
    "--type",
    "types",
    multiple=True,
    help="Only these event types (created, renewed, touched, updated, revoked, expired); "
    "repeat or separate with commas",
)
@click.option("--from", "cursor", help="Resume after this event cursor (default: from now)")
@click.pass_context
async def session_watch(
    ctx: click.Context, user: str | None, types: tuple[str, ...], cursor: str | None
) -> None:
    """``GET /events`` over WebSocket until Ctrl-C (exit 0)."""
    import asyncio
    import signal
    import ssl

    from tokmesh.cli.connection import remote
    from tokmesh.cli.event_watch import WatchFailed, watch

    state = state_of(ctx)
    printer = state.printer()
    wanted = ",".join(t.strip() for part in types for t in part.split(",") if t.strip())
    if cursor is not None and not cursor.isdigit():
        raise usage_error(f'invalid cursor "{cursor}" (the "cursor" of an event)')
    async with remote(state, "session watch") as conn:
        endpoint = conn.endpoint
        assert conn.api_key is not None
        context: ssl.SSLContext | None = None
        if endpoint.address.startswith("https://"):
            ca = state.options(state.config()).tls_ca or endpoint.ca_file
            context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
            if endpoint.cert_file and endpoint.key_file:
                context.load_cert_chain(endpoint.cert_file, endpoint.key_file)

        def show(event: dict[str, Any]) -> None:
            if printer.structured:
                # One JSON object per line, whatever -o json/yaml says: a stream, not a
                # document.
                printer.out(json.dumps(event, separators=(",", ":")))
            else:
                printer.out(_event_line(event))

        def retry(code: int, last: str | None, pause: float) -> None:
            where_from = f"after cursor {last}" if last else "from now"
            printer.err(f"disconnected ({code}); resuming {where_from} in {pause:.1f}s")

        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        interrupted = False

        def interrupt() -> None:
            nonlocal interrupted
            interrupted = True
            if task is not None:
                task.cancel()

        # Without signal handlers here (not the main thread) Ctrl-C aborts as usual.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, interrupt)
        try:
            await watch(
                endpoint.address,
                conn.api_key,
                user=user,
                types=wanted or None,
                cursor=cursor,
                on_event=show,
                on_retry=retry,
                ssl_context=context,
            )
        except asyncio.CancelledError:
            if not interrupted:
                raise
            return  # Ctrl-C: a normal end of a watch, exit 0
        except WatchFailed as exc:
            if exc.code == 4400:
                raise usage_error(str(exc)) from None
            code = exc.body.get("code") if isinstance(exc.body, dict) else None
            suggestion = (
                "Events before that cursor are gone from the WAL: list sessions to resync, "
                "then watch from now."
                if exc.code == 4410
                else None
            )
            raise CliError(str(exc), code=code, suggestion=suggestion) from None
        finally:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signal.SIGINT)


def _event_line(event: dict[str, Any]) -> str:
    """One table line of ``session watch``: time, type, session, user, device, version, by."""
    import datetime as dt

    at = event.get("at")
    when = (
        dt.datetime.fromtimestamp(at / 1000).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        if isinstance(at, int)
        else "-"
    )
    return (
        f"{when}  {event.get('type', '?'):<8}  {event.get('session_id', '')}  "
        f"user={event.get('user_id') or '-'}  device={event.get('device_id') or '-'}  "
        f"v{event.get('version', '?')}  by={event.get('by', '-')}"
    )
