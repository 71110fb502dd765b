"""Local commands (06 §4.4, §5, §6, §9.7): version, completion, help, connect, disconnect,
status, use, history."""

from __future__ import annotations

from typing import Any

import asyncclick as click

from tokmesh.cli.app import TmGroup, command, state_of
from tokmesh.cli.common import emit
from tokmesh.cli.errors import CliError, usage_error

SHELLS = ("bash", "zsh", "fish", "powershell")


def register(root: TmGroup) -> None:
    """Add the local commands to ``root``."""
    for cmd in (version, completion, help_cmd, connect, disconnect, status, use, history):
        root.add_command(cmd)


@command("version", help="Print the CLI version (and the server's with a target).")
@click.pass_context
async def version(ctx: click.Context) -> None:
    """``tokmesh-cli version <v>`` + build lines; a ``Server:`` block with a target."""
    from tokmesh.cli.version import build_info

    state = state_of(ctx)
    printer = state.printer()
    info: dict[str, Any] = build_info()
    server: dict[str, Any] | None = None
    warning: str | None = None
    target = state.printer().opts.target if not state.in_repl else state.flag("target")
    if target or (state.in_repl and state.connection is not None):
        server, warning = await _server_block(state)
    data: dict[str, Any] = {"client": info}
    if server is not None:
        data["server"] = server

    def human() -> None:
        printer.out(f"tokmesh-cli version {info['version']}")
        printer.out(f"  Git Commit:      {info['git_commit']}")
        printer.out(f"  Build Date:      {info['build_date']}")
        printer.out(f"  Python Version:  {info['python_version']}")
        printer.out(f"  OS/Arch:         {info['os_arch']}")
        if server is not None:
            printer.out()
            printer.out("Server:")
            printer.out(f"  Address:  {server['address']}")
            printer.out(f"  Version:  {server.get('version') or 'unknown'}")
            printer.out(f"  Status:   {server.get('status') or 'unknown'}")

    if warning:
        printer.err(f"Warning: {warning}")
    emit(printer, data, human, lambda: printer.out(info["version"]))


async def _server_block(state: Any) -> tuple[dict[str, Any] | None, str | None]:
    from tokmesh.cli.connection import remote

    try:
        async with remote(state, "version", socket_ok=True) as conn:
            info = await conn.summary()
            block: dict[str, Any] = {"address": conn.address}
            if info is not None:
                block["version"] = info.get("version")
                block["status"] = info.get("cluster_state")
            else:
                block["status"] = "reachable (node info requires an admin key)"
            return block, None
    except CliError as exc:
        if exc.exit_code == 64 or exc.exit_code == 78:
            raise
        return None, f"server unreachable: {exc.message}"


@command(
    "completion",
    help="Print a shell completion script.",
    examples=(
        "source <(tokmesh-cli completion bash)",
        "tokmesh-cli completion fish > ~/.config/fish/completions/tokmesh-cli.fish",
    ),
)
@click.argument("shell")
@click.pass_context
async def completion(ctx: click.Context, shell: str) -> None:
    """``bash``, ``zsh``, ``fish`` or ``powershell``; anything else → 64."""
    from tokmesh.cli.completion import shell_script

    if shell not in SHELLS:
        raise usage_error(f"unsupported shell: {shell} (use {', '.join(SHELLS)})")
    root = ctx.find_root().command
    click.echo(await shell_script(root, shell))


@command("help", help="Show help for a command.")
@click.argument("words", nargs=-1)
@click.pass_context
async def help_cmd(ctx: click.Context, words: tuple[str, ...]) -> None:
    """``help [command…]``: the same text as ``<command> --help``."""
    root_ctx = ctx.find_root()
    cmd: Any = root_ctx.command
    cur = root_ctx
    for w in words:
        sub = cmd.get_command(cur, w) if isinstance(cmd, click.Group) else None
        if sub is None:
            raise usage_error(f"unknown command: {' '.join(words)}")
        cur = click.Context(sub, info_name=w, parent=cur)
        cmd = sub
    click.echo(cur.get_help())


def _connected_lines(conn: Any, uptime: bool) -> list[str]:
    return [f"Connected to {conn.label}", *conn.info_lines(uptime=uptime)]


async def _open(state: Any, target: str, *, prompt: bool) -> Any:
    """Resolve, authenticate and verify a connection (not yet installed)."""
    from tokmesh.cli.connection import Connection, credentials
    from tokmesh.cli.targets import resolve

    cfg = state.config()
    opts = state.options(cfg)
    endpoint = resolve(target, cfg)
    key = await credentials(state, endpoint, opts, prompt=prompt)
    conn = Connection(endpoint, key, opts)
    try:
        await conn.verify()
    except BaseException:
        await conn.aclose()
        raise
    return conn


async def install(state: Any, conn: Any) -> None:
    """Make ``conn`` the REPL's connection, dropping the previous one."""
    old = state.connection
    state.connection = conn
    if old is not None and old is not conn:
        await old.aclose()


@command(
    "connect",
    help="Connect to a node (REPL); verifies the connection.",
    examples=("connect http://127.0.0.1:5080 -k tmak-…:tmas_…", "connect prod", "connect local"),
)
@click.argument("target", required=False)
@click.pass_context
async def connect(ctx: click.Context, target: str | None) -> None:
    """``connect <target> [-k <key>]``."""
    state = state_of(ctx)
    printer = state.printer()
    target = target or (state.flag("target") if not state.in_repl else None)
    if not target:
        raise usage_error("connect needs a target: connect <url|alias|local|socket:<path>>")
    if printer.human:
        printer.out(f"Connecting to {target}...")
    if state.in_repl and state.connection is not None:
        await install(state, None)
    conn = await _open(state, target, prompt=True)
    if state.in_repl:
        await install(state, conn)
    data = {"label": conn.label, "address": conn.address, "node": conn.info}
    emit(printer, data, lambda: printer.lines(x for x in _connected_lines(conn, False)))
    if not state.in_repl:
        await conn.aclose()


@command("disconnect", help="Close the REPL's connection.")
@click.pass_context
async def disconnect(ctx: click.Context) -> None:
    """``Disconnected from <label>.`` or ``Not connected.``."""
    state = state_of(ctx)
    printer = state.printer()
    conn = state.connection
    if conn is None:
        printer.out("Not connected.")
        return
    label = conn.label
    await install(state, None)
    printer.out(f"Disconnected from {label}.")


@command("status", help="Show the current connection.")
@click.pass_context
async def status(ctx: click.Context) -> None:
    """``Connected to <label>`` + Address/Version/Uptime, or ``Not connected.``."""
    state = state_of(ctx)
    printer = state.printer()
    conn = state.connection
    opened = False
    if conn is None and not state.in_repl and state.printer().opts.target:
        conn = await _open(state, str(state.printer().opts.target), prompt=True)
        opened = True
    if conn is None:
        emit(
            printer,
            {"connected": False},
            lambda: printer.lines(
                ["Not connected.", "Use 'connect <target>' to connect to a node."]
            ),
        )
        return
    try:
        if not opened:
            try:
                conn.info = await conn.summary()
            except CliError as exc:
                printer.err(f"Warning: {exc.message}")
        data = {
            "connected": True,
            "label": conn.label,
            "address": conn.address,
            "node": conn.info,
        }
        emit(printer, data, lambda: printer.lines(x for x in _connected_lines(conn, True)))
    finally:
        if opened:
            await conn.aclose()


@command("use", help="Switch to a configured target alias (never prompts).")
@click.argument("alias")
@click.pass_context
async def use(ctx: click.Context, alias: str) -> None:
    """``Switched to <alias> (<address>)``; unknown alias → 64 with the alias list."""
    state = state_of(ctx)
    printer = state.printer()
    cfg = state.config()
    if alias not in cfg.targets:
        raise usage_error(
            f'unknown alias: "{alias}"',
            extra_lines=[
                "Available targets: " + (", ".join(cfg.targets) or "(none)"),
                "Use 'connect <url>' for direct connection",
            ],
        )
    try:
        conn = await _open(state, alias, prompt=False)
    except CliError as exc:
        if exc.exit_code == 64 and "API key required" in exc.message:
            raise usage_error(
                f"no API key for '{alias}'",
                suggestion=f"Use 'connect {alias}' to enter a key, or pass -k.",
            ) from None
        raise
    if state.in_repl:
        await install(state, conn)
    else:
        await conn.aclose()
    emit(
        printer,
        {"alias": alias, "address": conn.address},
        lambda: printer.out(f"Switched to {alias} ({conn.address})"),
    )


@command("history", help="List the REPL history, or clear it.")
@click.argument("action", required=False, type=click.Choice(["clear"]))
@click.pass_context
async def history(ctx: click.Context, action: str | None) -> None:
    """``history`` lists entries numbered oldest first; ``history clear`` empties them."""
    from tokmesh.cli.history import HistoryFile

    state = state_of(ctx)
    printer = state.printer()
    hist = HistoryFile.default(state.env)
    if action == "clear":
        hist.clear()
        repl_hist = getattr(state, "repl_history", None)
        if repl_hist is not None:
            repl_hist.forget()
        printer.out("History cleared.")
        return
    entries = hist.entries()
    emit(
        printer,
        {"items": entries},
        lambda: printer.lines(f"{i:5d}  {e}" for i, e in enumerate(entries, 1)),
    )
