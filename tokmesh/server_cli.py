"""``tokmesh-server``: flags (05 §2.5), ``--test``, ``--version``, then run the node.

Exit codes: 0 clean stop (or ``--test`` passed), 1 invalid configuration / failed start /
unclean stop, 2 bad flag (click's usage error).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import asyncclick as click

from tokmesh import __version__

#: the 14 key flags of 05 §2.5 (plus --config): flag name -> is boolean
FLAGS: dict[str, bool] = {
    "server.http.address": False,
    "server.https.address": False,
    "server.http.enabled": True,
    "server.https.enabled": True,
    "cluster.enabled": True,
    "cluster.node-id": False,
    "cluster.listen-address": False,
    "cluster.advertise-address": False,
    "telemetry.logging.level": False,
    "telemetry.logging.dump-config": True,
    "telemetry.metrics.auth-enabled": True,
    "storage.wal.dir": False,
    "storage.snapshot.dir": False,
    "storage.wal.sync-mode": False,
}


def _param(flag: str) -> str:
    return flag.replace(".", "__").replace("-", "_")


def _version_text() -> str:
    try:
        from tokmesh import _build  # type: ignore[attr-defined]

        commit, built = _build.COMMIT, _build.BUILD_TIME
    except ImportError:
        commit, built = "unknown", "unknown"
    return f"tokmesh-server {__version__} (commit: {commit}, built: {built})"


def _print_version(ctx: click.Context, _param: Any, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(_version_text())
        raise click.exceptions.Exit(0)


def _options(func: Any) -> Any:
    for flag, is_bool in reversed(list(FLAGS.items())):
        if is_bool:
            func = click.option(
                f"--{flag}",
                _param(flag),
                is_flag=False,
                flag_value="true",
                default=None,
                type=click.Choice(["true", "false"], case_sensitive=False),
                help=f"Override {flag.replace('-', '_')} (bare flag = true).",
            )(func)
        else:
            func = click.option(
                f"--{flag}", _param(flag), default=None, help=f"Override {flag.replace('-', '_')}."
            )(func)
    return func


@click.command(context_settings={"help_option_names": ["--help", "-h"]})
@click.option("--config", "config_path", default=None, help="Main configuration file (YAML).")
@click.option("--test", "test_only", is_flag=True, help="Validate the configuration and exit.")
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print the version and exit.",
)
@_options
async def cli(config_path: str | None, test_only: bool, **flag_values: str | None) -> None:
    """TokMesh session and token server."""
    flags = {
        flag.replace("-", "_"): value
        for flag in FLAGS
        if (value := flag_values.get(_param(flag))) is not None
    }
    sys.exit(await run_cli(config_path, flags, test_only))


def main() -> None:
    """Console-script entry point: the CLI runs on Trio."""
    cli(_anyio_backend="trio")


async def run_cli(config_path: str | None, flags: dict[str, str], test_only: bool) -> int:
    """Load, validate, then ``--test`` report or run. Returns the exit code."""
    from tokmesh.config.dump import config_loaded_event, format_issues, format_test_report
    from tokmesh.config.validate import load_and_validate
    from tokmesh.telemetry.logging import setup_logging

    # Directories are created only for a real start with a configuration that loaded.
    result, report = load_and_validate(config_path, dict(os.environ), flags, Path.cwd())
    if not test_only and not report.errors:
        result, report = load_and_validate(
            config_path, dict(os.environ), flags, Path.cwd(), create_dirs=True
        )
    if test_only:
        print(format_test_report(result, report.errors, report.warnings))
        return 1 if report.errors else 0
    if report.errors:
        print(format_issues(report.errors), file=sys.stderr)
        return 1
    cfg = result.config
    setup_logging(cfg.telemetry.logging.level)
    log = logging.getLogger("tokmesh.server")
    for warning in report.warnings:
        log.warning(warning)
    log.info("config_loaded", extra=config_loaded_event(result))
    from tokmesh.domain.errors import TokMeshError
    from tokmesh.server import TokMeshServer

    try:
        server = TokMeshServer(cfg, config_file=result.source.file, flags=flags)
        return await server.run()
    except TokMeshError as exc:
        log.error("fatal: %s %s", exc.code, exc.message)
        print(f"tokmesh-server: fatal: {exc.code} {exc.message}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        fatal = _first_tokmesh_error(group)
        if fatal is None:
            raise
        log.error("fatal: %s %s", fatal.code, fatal.message)
        print(f"tokmesh-server: fatal: {fatal.code} {fatal.message}", file=sys.stderr)
        return 1


def _first_tokmesh_error(group: BaseException) -> Any:
    from tokmesh.domain.errors import TokMeshError

    if isinstance(group, TokMeshError):
        return group
    if isinstance(group, BaseExceptionGroup):
        for exc in group.exceptions:
            found = _first_tokmesh_error(exc)
            if found is not None:
                return found
    return None


if __name__ == "__main__":  # pragma: no cover
    main()
