"""``config cli {show, validate}`` and ``config server {show, test, reload}`` (alias ``cfg``),
06 §9.4."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncclick as click

from tokmesh.cli.app import TmGroup, leaf, state_of
from tokmesh.cli.common import dry_run, emit, where
from tokmesh.cli.errors import (
    EXIT_CONFIG,
    EXIT_GENERAL,
    CliError,
    data_error,
    not_available_error,
    usage_error,
)


def register(root: TmGroup) -> None:
    """Add ``config`` and the top-level alias ``cfg`` (= ``config server``)."""
    root.add_command(config)
    root.add_alias("cfg", "_cfg")
    root.add_command(cfg)


@click.group(
    "config",
    cls=TmGroup,
    help="CLI configuration (cli) and server configuration "
    "(server, alias cfg). A subgroup is required.",
)
async def config() -> None:
    """Config commands."""


@click.group("cli", cls=TmGroup, help="This tool's own configuration file.")
async def config_cli() -> None:
    """CLI config commands."""


@click.group(
    "server",
    cls=TmGroup,
    aliases=("config server", "cfg"),
    help="The server's configuration: show, test a file, reload.",
)
async def config_server() -> None:
    """Server config commands."""


config.add_command(config_cli)
config.add_command(config_server)


# ============================================================================ config cli


@leaf(config_cli, "show", help="Show the effective CLI config (api_key values redacted).")
@click.pass_context
async def cli_show(ctx: click.Context) -> None:
    """The file (or built-in defaults) with env and flags applied."""
    state = state_of(ctx)
    printer = state.printer()
    cfg = state.config()
    opts = printer.opts
    shown = cfg.to_display()
    shown["defaults"]["output"] = opts.output
    shown["defaults"]["timeout"] = f"{opts.timeout_s:g}s"
    shown["defaults"]["no_color"] = bool(
        state.flag("no_color") or state.env.get("NO_COLOR") or cfg.no_color
    )
    if opts.target:
        shown["default"] = opts.target
    data = {"config_file": cfg.path, "config": shown}

    def human() -> None:
        import yaml

        if cfg.path:
            printer.out(f"Config file: {cfg.path}")
        else:
            printer.out("(no config file found; using built-in defaults)")
        printer.out()
        printer.out(str(yaml.safe_dump(shown, default_flow_style=False, sort_keys=False)).rstrip())

    emit(printer, data, human)


@leaf(config_cli, "validate", help="Check the CLI config file (syntax, rules, permissions).")
@click.option("-c", "--config", "path", help="The file to check (default: the one in use)")
@click.pass_context
async def cli_validate(ctx: click.Context, path: str | None) -> None:
    """Syntax + 06 §3.2 rules + permission warning; invalid → 78."""
    from tokmesh.cli import cliconfig
    from tokmesh.cli.output import Printer

    state = state_of(ctx)
    # not state.printer(): that would load (and reject) the file before it is reported on
    printer = Printer(state.options(None))
    file, explicit = cliconfig.locate(path or state.flag("config"), state.env)
    if file is None or not file.is_file():
        if explicit and file is not None:
            from tokmesh.cli.errors import config_error

            raise config_error(f"config file not found: {file}")
        shown = cliconfig.search_paths(state.env)[0]
        emit(
            printer,
            {"valid": True, "config_file": None},
            lambda: printer.lines(
                [f"No configuration file found at {shown}", "Using default settings."]
            ),
        )
        return
    cfg, errors = cliconfig.load_file(file)
    for line in cfg.warnings:
        printer.err(line)
    if errors:
        from tokmesh.domain.errors import E

        err = CliError(
            f"Configuration is invalid: {file}",
            code=E.CLI_CONFIG.code,
            exit_code=EXIT_CONFIG,
            details={"errors": errors},
        )
        if printer.structured:
            printer.error(err)
        else:
            printer.err(f"✗ Configuration is invalid: {file}")
            for e in errors:
                printer.err(f"  - {e}")
        raise click.exceptions.Exit(EXIT_CONFIG)
    emit(
        printer,
        {"valid": True, "config_file": str(file)},
        lambda: printer.out(printer.paint(f"✓ Configuration is valid: {file}", "ok")),
    )


# ============================================================================ config server


async def _server_call(conn: Any, what: str, method: str, path: str, **kw: Any) -> Any:
    """An admin config route; 404 ``TM-SYS-4040`` means this server does not have it."""
    assert conn.http is not None
    try:
        return await conn.http.call(method, path, **kw)
    except CliError as exc:
        if exc.code == "TM-SYS-4040":
            raise not_available_error(what) from None
        raise


@leaf(config_server, "show", help="Show the server configuration (GET /admin/v1/config).")
@click.option("--merged", is_flag=True, help="The effective config (env and flags applied)")
@click.pass_context
async def server_show(ctx: click.Context, merged: bool) -> None:
    """``GET /admin/v1/config[?merged=true]``; table mode prints YAML."""
    from tokmesh.cli.connection import remote

    state = state_of(ctx)
    printer = state.printer()
    async with remote(state, "config server show") as conn:
        data = await _server_call(
            conn,
            "config server show",
            "GET",
            "/admin/v1/config",
            params={"merged": "true"} if merged else None,
        )

    def human() -> None:
        import yaml

        printer.out(str(yaml.safe_dump(data, default_flow_style=False, sort_keys=False)).rstrip())

    emit(printer, data, human)


@leaf(
    config_server,
    "test",
    help="Test a server config file: locally (default) or on the connected server (--remote).",
    examples=(
        "tokmesh-cli config server test /etc/tokmesh-server/config.yaml",
        "tokmesh-cli -t prod cfg test new.yaml --remote",
    ),
)
@click.argument("file")
@click.option("--remote", "use_remote", is_flag=True, help="Validate on the connected server")
@click.pass_context
async def server_test(ctx: click.Context, file: str, use_remote: bool) -> None:
    """Local: YAML syntax (65) + the server's schema checks (1). Remote: ``POST …/validate``."""
    state = state_of(ctx)
    printer = state.printer()
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise usage_error(f"cannot read {file}: {exc.strerror or exc}") from None
    if use_remote:
        from tokmesh.cli.connection import remote

        async with remote(state, "config server test --remote") as conn:
            printer.hint(where(conn), f"Testing configuration on {conn.label}...")
            report = await _server_call(
                conn,
                "config server test --remote",
                "POST",
                "/admin/v1/config/validate",
                body={"config_yaml": text},
            )
            version = None
            if report.get("valid"):
                try:
                    info = await conn.summary()
                    version = (info or {}).get("version")
                except CliError:
                    version = None
        _report(printer, report, remote_version=version or "unknown", remote=True)
        return
    printer.hint(None, "Testing configuration syntax...")
    import yaml

    try:
        yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where_ = f" at line {mark.line + 1}" if mark is not None else ""
        raise data_error(f"YAML syntax error in {file}{where_}") from None
    from tokmesh.config.validate import validate_yaml_text

    result = validate_yaml_text(text, base_dir=Path(file).resolve().parent)
    _report(printer, result.to_api(), remote_version=None, remote=False)


def _report(
    printer: Any, report: dict[str, Any], *, remote_version: str | None, remote: bool
) -> None:
    errors = list(report.get("errors") or [])
    if report.get("valid"):
        msg = (
            f"✓ Configuration is compatible with server v{remote_version}."
            if remote
            else "✓ Configuration is valid."
        )
        emit(printer, report, lambda: printer.out(printer.paint(msg, "ok")))
        return
    if printer.structured:
        printer.envelope(report)
    elif not printer.quiet:
        printer.out(printer.paint("✗ Configuration validation failed:", "bad"))
        for e in errors:
            printer.out(f"  [{e.get('code')}] {e.get('field')}: {e.get('message')}")
    raise click.exceptions.Exit(EXIT_GENERAL)


@leaf(config_server, "reload", help="Re-read the server's config file and apply hot items.")
@click.pass_context
async def server_reload(ctx: click.Context) -> None:
    """``POST /admin/v1/config/reload`` (socket: ``RELOAD``)."""
    from tokmesh.cli.connection import remote

    state = state_of(ctx)
    printer = state.printer()
    async with remote(state, "config server reload", socket_ok=True) as conn:
        printer.hint(where(conn), "Reloading server configuration...")
        if dry_run(state, printer, "reload the server configuration"):
            return
        if conn.socket is not None:
            data = await conn.socket.command("RELOAD")
        else:
            data = await _server_call(
                conn, "config server reload", "POST", "/admin/v1/config/reload", body={}
            )

    def human() -> None:
        printer.out(printer.paint("Configuration reload triggered.", "ok"))
        if data.get("updated"):
            printer.out("Updated:")
            for k in data["updated"]:
                printer.out(f"  - {k}")
        if data.get("ignored"):
            printer.out("Ignored (Requires Restart):")
            for k in data["ignored"]:
                printer.out(f"  - {k}")

    emit(printer, data, human)


# ``cfg`` = ``config server``: a second group object sharing the same sub-commands.
cfg = TmGroup(
    "_cfg",
    aliases=("cfg", "config server"),
    hidden=True,
    help=config_server.help,
    commands=dict(config_server.commands),
)
