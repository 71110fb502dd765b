"""The root command and the command tree of ``tokmesh-cli`` (06 §9.1)."""

from __future__ import annotations

import asyncclick as click

from tokmesh.cli.app import TmGroup, state_of
from tokmesh.cli.errors import usage_error

_ROOT: TmGroup | None = None


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from tokmesh.cli.version import VERSION

        click.echo(f"tokmesh-cli version {VERSION}")
        raise click.exceptions.Exit(0)


@click.group(
    "tokmesh-cli",
    cls=TmGroup,
    invoke_without_command=True,
    help="Operate TokMesh nodes: sessions, API keys, configuration and status. Without a "
    "command on a terminal (or with -i) it starts an interactive shell.",
    examples=(
        "tokmesh-cli -t http://127.0.0.1:5080 -k $KEY session list -u alice",
        "tokmesh-cli -t local system status",
        "tokmesh-cli -i -t prod",
    ),
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print the version and exit",
)
@click.pass_context
async def root(ctx: click.Context) -> None:
    """No command: the REPL (with -i or a terminal on stdin), else usage error 64."""
    state = state_of(ctx)
    if ctx.invoked_subcommand is not None:
        return
    if state.in_repl:
        raise usage_error("no command given")
    from tokmesh.cli.state import stdin_is_tty

    if state.flag("interactive") or stdin_is_tty():
        from tokmesh.cli.repl import run_repl

        code = await run_repl(state)
        raise click.exceptions.Exit(code)
    raise usage_error("no command specified (use -i to force interactive mode)")


def build_root() -> TmGroup:
    """The root group with every command registered (built once per process)."""
    global _ROOT
    if _ROOT is None:
        from tokmesh.cli import (
            cmd_apikey,
            cmd_backup,
            cmd_cluster,
            cmd_config,
            cmd_local,
            cmd_session,
            cmd_system,
        )

        cmd_local.register(root)
        cmd_session.register(root)
        cmd_apikey.register(root)
        cmd_config.register(root)
        cmd_system.register(root)
        cmd_backup.register(root)
        cmd_cluster.register(root)
        _ROOT = root
    return _ROOT
