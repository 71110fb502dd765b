"""Per-process CLI state and the effective global options of one command (06 §2).

Precedence of every global option: flag > environment > config file > default. Global
flags may be given before or after the command path; each occurrence is stored in
:attr:`CliState.flags` by the option callbacks of :mod:`tokmesh.cli.app`, later ones win.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokmesh.cli.cliconfig import OUTPUT_FORMATS, CliConfig
from tokmesh.cli.errors import CliError, usage_error

if TYPE_CHECKING:
    from tokmesh.cli.connection import Connection
    from tokmesh.cli.output import Printer


@dataclass(frozen=True)
class Options:
    """The effective global options of one command."""

    output: str
    verbose: bool
    quiet: bool
    no_headers: bool
    color: bool
    timeout_s: float
    tls_ca: str | None
    target: str | None
    api_key: str | None
    dry_run: bool
    watch: bool


class CliState:
    """State shared by every command of one process (and every line of the REPL)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env: dict[str, str] = dict(os.environ if env is None else env)
        #: global flags of the command being parsed (the REPL resets them per line)
        self.flags: dict[str, Any] = {}
        #: global flags given on the process command line (apply to every REPL line)
        self.base_flags: dict[str, Any] = {}
        self.in_repl = False
        #: the REPL's prompt-toolkit session when stdin is a terminal (prompts go through it)
        self.tty_repl: Any = None
        self.connection: Connection | None = None
        self._config: CliConfig | None = None
        self._config_key: str | None = None
        self._printer: Printer | None = None

    # -- flags -------------------------------------------------------------------------------

    def flag(self, name: str) -> Any:
        """The value of a global flag given on this command line (``None`` if absent)."""
        return self.flags.get(name)

    def reset_line(self) -> None:
        """Start a new REPL line: only the process-level flags remain."""
        self.flags = dict(self.base_flags)
        self._printer = None

    # -- config ------------------------------------------------------------------------------

    def config(self) -> CliConfig:
        """The CLI config (loaded once per explicit path; warnings printed at each load)."""
        from tokmesh.cli import cliconfig

        explicit = self.flag("config")
        key = str(explicit or self.env.get("TOKMESH_CLI_CONFIG") or "")
        if self._config is None or key != self._config_key:
            cfg = cliconfig.load(explicit, self.env)
            for line in cfg.warnings:
                print(line, file=sys.stderr)
            self._config, self._config_key = cfg, key
        return self._config

    # -- effective options -------------------------------------------------------------------

    def output_format(self, cfg: CliConfig | None) -> str:
        """``-o`` > ``$TOKMESH_OUTPUT`` > ``defaults.output`` > ``table``; 64 if unknown."""
        value = self.flag("output") or self.env.get("TOKMESH_OUTPUT") or None
        if value is None:
            value = cfg.output if cfg is not None else "table"
        value = str(value).lower()
        if value not in OUTPUT_FORMATS:
            raise usage_error(f'invalid output format "{value}" (use table, json, yaml or wide)')
        return value

    def options(self, cfg: CliConfig | None = None) -> Options:
        """Resolve and check every global option; usage errors (64) for bad values."""
        from tokmesh.cli.durations import parse_duration_ms

        verbose = bool(self.flag("verbose"))
        quiet = bool(self.flag("quiet"))
        if verbose and quiet:
            raise usage_error("--quiet and --verbose cannot be used together")
        output = self.output_format(cfg)
        raw_timeout = self.flag("timeout") or self.env.get("TOKMESH_TIMEOUT")
        if raw_timeout:
            try:
                timeout_ms = parse_duration_ms(str(raw_timeout))
            except ValueError as exc:
                raise usage_error(f"invalid --timeout: {exc}") from None
        else:
            timeout_ms = cfg.timeout_ms if cfg is not None else 30_000
        no_color = (
            bool(self.flag("no_color"))
            or bool(self.env.get("NO_COLOR"))
            or (cfg.no_color if cfg is not None else False)
        )
        color = not no_color and output in ("table", "wide") and _isatty(sys.stdout)
        target = self.flag("target") or self.env.get("TOKMESH_TARGET") or None
        api_key = self.flag("api_key") or self.env.get("TOKMESH_API_KEY") or None
        return Options(
            output=output,
            verbose=verbose,
            quiet=quiet,
            no_headers=bool(self.flag("no_headers")),
            color=color,
            timeout_s=timeout_ms / 1000,
            tls_ca=self.flag("tls_ca") or self.env.get("TOKMESH_TLS_CA") or None,
            target=target,
            api_key=api_key,
            dry_run=bool(self.flag("dry_run")),
            watch=bool(self.flag("watch")),
        )

    def printer(self) -> Printer:
        """The output printer of the current command (config loaded on first use)."""
        if self._printer is None:
            from tokmesh.cli.output import Printer

            cfg = self.config()
            self._printer = Printer(self.options(cfg))
        return self._printer

    def fallback_printer(self) -> Printer:
        """A printer for errors raised before the config or options could be resolved."""
        from tokmesh.cli.output import Printer

        if self._printer is not None:
            return self._printer
        try:
            fmt = self.output_format(None)
        except CliError:
            fmt = "table"
        return Printer(
            Options(
                output=fmt,
                verbose=bool(self.flag("verbose")),
                quiet=False,
                no_headers=False,
                color=False,
                timeout_s=30.0,
                tls_ca=None,
                target=None,
                api_key=None,
                dry_run=False,
                watch=False,
            )
        )


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def stdin_is_tty() -> bool:
    """True when standard input is a terminal."""
    return _isatty(sys.stdin)
