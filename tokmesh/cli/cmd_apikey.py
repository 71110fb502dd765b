"""``apikey`` (alias ``key``): create, list, disable, enable, rotate, create-emergency
(06 §9.3)."""

from __future__ import annotations

from typing import Any

import asyncclick as click

from tokmesh.cli.app import TmGroup, leaf, state_of
from tokmesh.cli.common import check_networks, dry_run, duration_ms, emit, typed_id, where
from tokmesh.cli.errors import CliError, arg_error, usage_error

ROLES = ("admin", "issuer", "validator", "metrics")
ALLOWLIST_NOTE = (
    "Note: This is per-key IP restriction. If the server also has a global "
    "security.auth.allow_list configured, both must match (intersection)."
)


def register(root: TmGroup) -> None:
    """Add the ``apikey`` group (and its alias ``key``) to ``root``."""
    root.add_command(apikey)
    root.add_alias("key", "apikey")


@click.group(
    "apikey",
    cls=TmGroup,
    aliases=("apikey", "key"),
    help="Manage API keys (admin), and create an emergency admin key over the local socket.",
)
async def apikey() -> None:
    """API key commands."""


def _not_found(exc: CliError, key_id: str) -> CliError:
    if exc.code == "TM-ADMIN-4041":
        exc.message = f"API Key '{key_id}' not found"
    elif exc.code == "TM-ADMIN-4030":
        exc.message = "Admin role required"
    return exc


@leaf(
    apikey,
    "create",
    help="Create an API key; the secret is shown only once.\n\n" + ALLOWLIST_NOTE,
    examples=("tokmesh-cli apikey create -r issuer -d 'SSO gateway' --expires-in 720h",),
)
@click.option("-r", "--role", help="admin|issuer|validator|metrics (required)")
@click.option("-d", "--description", help="Free text, up to 256 characters")
@click.option("--allowedlist", help="Comma-separated IPv4/IPv6 addresses or CIDRs")
@click.option("--rate-limit", type=int, help="Requests per second (default 1000)")
@click.option("--expires-in", help="Lifetime, e.g. 720h (default: never)")
@click.pass_context
async def key_create(
    ctx: click.Context,
    role: str | None,
    description: str | None,
    allowedlist: str | None,
    rate_limit: int | None,
    expires_in: str | None,
) -> None:
    """``POST /admin/v1/keys``."""
    from tokmesh.cli.connection import remote
    from tokmesh.cli.output import now_ms, rfc3339

    state = state_of(ctx)
    printer = state.printer()
    if not role or role.lower() not in ROLES:
        raise arg_error("Role must be one of: " + ", ".join(ROLES))
    body: dict[str, Any] = {"role": role.lower()}
    if description is not None:
        body["description"] = description
    if allowedlist is not None:
        body["allowedlist"] = check_networks(allowedlist)
    if rate_limit is not None:
        if not 1 <= rate_limit <= 1_000_000:
            raise arg_error("--rate-limit must be between 1 and 1000000")
        body["rate_limit"] = rate_limit
    if expires_in:
        body["expires_at"] = now_ms() + duration_ms(expires_in, "--expires-in")
    async with remote(state, "apikey create") as conn:
        printer.hint(where(conn), f"Creating API key with role '{body['role']}'...")
        if dry_run(state, printer, f"create an API key with role '{body['role']}'"):
            return
        assert conn.http is not None
        data = await conn.http.call("POST", "/admin/v1/keys", body=body)

    def human() -> None:
        exp = data.get("expires_at") or 0
        printer.out("CREATED API KEY")
        printer.out(f"  ID:          {data.get('key_id')}")
        printer.out(
            f"  Secret:      {data.get('key_secret')} (save it now; it will not be shown again)"
        )
        printer.out(f"  Role:        {data.get('role')}")
        printer.out(f"  Expires At:  {rfc3339(exp) if exp else 'Never'}")
        printer.out(f"  Warning:     {data.get('warning') or 'None'}")

    emit(
        printer, data, human, lambda: printer.out(f"{data.get('key_id')}:{data.get('key_secret')}")
    )


@leaf(apikey, "list", help="List API keys (all pages; secrets are never shown).")
@click.option("--role", type=click.Choice(list(ROLES)), help="Filter by role")
@click.option("--status", type=click.Choice(["active", "disabled"]), help="Filter by status")
@click.pass_context
async def key_list(ctx: click.Context, role: str | None, status: str | None) -> None:
    """``GET /admin/v1/keys``, every page of 100."""
    from tokmesh.cli.connection import remote

    state = state_of(ctx)
    printer = state.printer()
    params: dict[str, Any] = {"size": 100}
    if role:
        params["role"] = role
    if status:
        params["status"] = status
    items: list[dict[str, Any]] = []
    async with remote(state, "apikey list") as conn:
        assert conn.http is not None
        page = 1
        while True:
            data = await conn.http.call("GET", "/admin/v1/keys", params={**params, "page": page})
            batch = list(data.get("items") or [])
            items.extend(batch)
            if not batch or len(items) >= int(data.get("total_items") or 0):
                break
            page += 1
    result = {"items": items, "total_items": len(items), "page": 1, "size": len(items)}

    def human() -> None:
        if not items:
            if not printer.opts.no_headers:
                printer.out("No keys found.")
            return
        wide = printer.fmt == "wide"
        headers = ["KEY ID", "ROLE", "STATUS", "EXPIRES", "DESCRIPTION"]
        if wide:
            headers += ["CREATED AT", "LAST USED", "RATE LIMIT", "ALLOWEDLIST"]
        printer.table(
            headers,
            [_key_row(k, wide, printer.verbose) for k in items],
            footer=f"Total: {len(items)} keys",
        )

    emit(printer, result, human, lambda: printer.lines(str(k.get("key_id")) for k in items))


def _key_row(k: dict[str, Any], wide: bool, full: bool) -> list[tuple[str, str | None]]:
    from tokmesh.cli.output import list_time, truncate

    status = str(k.get("status", ""))
    exp = k.get("expires_at") or 0
    row: list[tuple[str, str | None]] = [
        (truncate(str(k.get("key_id", "")), full), "id"),
        (str(k.get("role", "")), None),
        (status, "ok" if status == "active" else "bad"),
        (list_time(exp) if exp else "Never", None),
        (truncate(str(k.get("description") or ""), full), None),
    ]
    if wide:
        used = k.get("last_used_at") or 0
        row += [
            (list_time(k.get("created_at")), None),
            (list_time(used) if used else "Never", None),
            (str(k.get("rate_limit", "")), None),
            (",".join(k.get("allowedlist") or []), None),
        ]
    return row


async def _set_status(ctx: click.Context, key_id: str, status: str, force: bool) -> None:
    from tokmesh.cli.connection import remote
    from tokmesh.cli.prompts import confirm, require_terminal

    state = state_of(ctx)
    printer = state.printer()
    kid = typed_id(key_id)
    if status == "disabled":
        require_terminal(force)
    verb = "Disabling" if status == "disabled" else "Enabling"
    async with remote(state, f"apikey {'disable' if status == 'disabled' else 'enable'}") as conn:
        printer.hint(where(conn), f"{verb} API key {kid}...")
        if dry_run(state, printer, f"set API key {kid} to {status}"):
            return
        if status == "disabled" and not force:
            await confirm(state, f"Are you sure you want to disable API key '{kid}'?")
        assert conn.http is not None
        try:
            data = await conn.http.call(
                "POST", f"/admin/v1/keys/{kid}/status", body={"status": status}
            )
        except CliError as exc:
            raise _not_found(exc, kid) from None

    def human() -> None:
        word = "disabled" if status == "disabled" else "enabled"
        printer.out(printer.paint(f"API key {kid} {word} successfully.", "ok"))
        if data.get("warning"):
            printer.err(f"Warning: {data['warning']}")
            printer.err(
                "         To recover admin access: tokmesh-cli -t local apikey create-emergency"
            )

    emit(printer, data, human)


@leaf(apikey, "disable", help="Disable an API key (immediate; asks for confirmation).")
@click.argument("key_id")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation")
@click.pass_context
async def key_disable(ctx: click.Context, key_id: str, force: bool) -> None:
    """``POST /admin/v1/keys/{id}/status {"status":"disabled"}``."""
    await _set_status(ctx, key_id, "disabled", force)


@leaf(apikey, "enable", help="Re-enable a disabled API key.")
@click.argument("key_id")
@click.pass_context
async def key_enable(ctx: click.Context, key_id: str) -> None:
    """``POST /admin/v1/keys/{id}/status {"status":"active"}``."""
    await _set_status(ctx, key_id, "active", True)


@leaf(apikey, "rotate", help="Issue a new secret; the old one stays valid for the grace period.")
@click.argument("key_id")
@click.pass_context
async def key_rotate(ctx: click.Context, key_id: str) -> None:
    """``POST /admin/v1/keys/{id}/rotate``."""
    from tokmesh.cli.connection import remote
    from tokmesh.cli.output import format_duration, now_ms, rfc3339

    state = state_of(ctx)
    printer = state.printer()
    kid = typed_id(key_id)
    async with remote(state, "apikey rotate") as conn:
        printer.hint(where(conn), f"Rotating API key {kid}...")
        if dry_run(state, printer, f"rotate API key {kid}"):
            return
        assert conn.http is not None
        try:
            data = await conn.http.call("POST", f"/admin/v1/keys/{kid}/rotate", body={})
        except CliError as exc:
            raise _not_found(exc, kid) from None

    def human() -> None:
        until = int(data.get("old_secret_valid_until") or 0)
        grace = format_duration(max(0, round((until - now_ms()) / 60_000) * 60)).replace(" 0m", "")
        printer.out("ROTATED API SECRET")
        printer.out(f"  Key ID:            {data.get('key_id')}")
        printer.out(f"  New Secret:        {data.get('new_key_secret')}")
        printer.out(f"  Old Secret Valid:  Until {rfc3339(until)} ({grace} grace period)")

    emit(
        printer,
        data,
        human,
        lambda: printer.out(f"{data.get('key_id')}:{data.get('new_key_secret')}"),
    )


@leaf(
    apikey,
    "create-emergency",
    help="Create an admin key over the local socket (no API key needed).",
    examples=("tokmesh-cli -t local apikey create-emergency -d 'ops recovery'",),
)
@click.option("-d", "--description", default="Emergency Admin Key", show_default=True)
@click.option("--local", "force_local", is_flag=True, help="Same as -t local")
@click.pass_context
async def key_create_emergency(ctx: click.Context, description: str, force_local: bool) -> None:
    """``EMERGENCY_CREATE_ADMIN_KEY <desc>`` on the local socket."""
    from tokmesh.cli.connection import remote
    from tokmesh.cli.output import detail_time

    state = state_of(ctx)
    printer = state.printer()
    desc = " ".join(description.split()) or "Emergency Admin Key"
    async with remote(
        state,
        "apikey create-emergency",
        socket_ok=True,
        need_key=False,
        target="local" if force_local else None,
    ) as conn:
        if conn.socket is None:
            raise usage_error("create-emergency requires a local socket connection (-t local)")
        printer.hint(where(conn), "Creating emergency admin key...")
        if dry_run(state, printer, "create an emergency admin key"):
            return
        data = await conn.socket.command(f"EMERGENCY_CREATE_ADMIN_KEY {desc}")

    def human() -> None:
        printer.out(printer.paint("⚠️  EMERGENCY ADMIN KEY CREATED", "warn"))
        printer.out(f"  Key ID:      {data.get('key_id')}")
        printer.out(f"  Secret:      {data.get('key_secret')}")
        printer.out(f"  Created At:  {detail_time(data.get('created_at'))}")
        printer.out()
        printer.out("WARNING: This key was created via emergency channel.")
        printer.out("         Please rotate it after normal access is restored.")

    emit(
        printer, data, human, lambda: printer.out(f"{data.get('key_id')}:{data.get('key_secret')}")
    )
