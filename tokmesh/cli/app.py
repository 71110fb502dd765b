"""The command tree's machinery: global flags everywhere, aliases, help layout, exit codes.

Global flags (06 §2) are attached to the root *and* to every group and command, so they
may come before or after the command path; a command's own flag with the same spelling
wins (``session validate -t`` is ``--token``). Each occurrence is stored in
:attr:`CliState.flags` by a callback; later occurrences override earlier ones.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import asyncclick as click

from tokmesh.cli.errors import EXIT_INTERRUPT, EXIT_USAGE, Cancelled, CliError, usage_error
from tokmesh.cli.state import CliState

#: (name, spellings, is_flag, metavar, help)
GLOBAL_OPTIONS: tuple[tuple[str, tuple[str, ...], bool, str, str], ...] = (
    ("interactive", ("-i", "--interactive"), True, "", "Force interactive mode (REPL)"),
    (
        "target",
        ("-t", "--target"),
        False,
        "TARGET",
        "URL | alias | local | socket:<path> [env TOKMESH_TARGET]",
    ),
    (
        "api_key",
        ("-k", "--api-key"),
        False,
        "KEY",
        "API key key_id:key_secret [env TOKMESH_API_KEY]",
    ),
    ("output", ("-o", "--output"), False, "FORMAT", "table|wide|json|yaml [env TOKMESH_OUTPUT]"),
    ("config", ("-c", "--config"), False, "PATH", "CLI config file [env TOKMESH_CLI_CONFIG]"),
    ("verbose", ("-v", "--verbose"), True, "", "Full values and request timings"),
    ("quiet", ("-q", "--quiet"), True, "", "Essential output only"),
    ("no_headers", ("--no-headers",), True, "", "Tables without header and footer"),
    ("no_color", ("--no-color",), True, "", "Disable colour [env NO_COLOR]"),
    (
        "timeout",
        ("--timeout",),
        False,
        "DURATION",
        "Per-request timeout, e.g. 30s [env TOKMESH_TIMEOUT]",
    ),
    ("tls_ca", ("--tls-ca",), False, "FILE", "CA certificate (PEM) [env TOKMESH_TLS_CA]"),
    ("watch", ("-w", "--watch"), True, "", "Watch a list (re-poll until Ctrl+C)"),
    ("dry_run", ("--dry-run",), True, "", "Preview without changing anything"),
)
GLOBAL_NAMES = frozenset(n for n, *_ in GLOBAL_OPTIONS)
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


class GlobalOption(click.Option):
    """A global flag attached to a command (shown under ``Global Flags``)."""


def _store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is None or value is False:
        return
    state = ctx.find_object(CliState)
    if state is not None and param.name:
        state.flags[param.name] = value


def attach_globals(cmd: click.Command) -> None:
    """Add every global flag whose spellings do not clash with ``cmd``'s own flags."""
    taken = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
    taken |= {opt for p in cmd.params for opt in getattr(p, "secondary_opts", [])}
    taken |= set(CONTEXT_SETTINGS["help_option_names"])
    own_names = {p.name for p in cmd.params}
    for name, spellings, is_flag, metavar, help_text in GLOBAL_OPTIONS:
        free = [s for s in spellings if s not in taken]
        if not free or name in own_names:
            continue
        cmd.params.append(
            GlobalOption(
                [name, *free],
                is_flag=is_flag,
                default=False if is_flag else None,
                metavar=metavar or None,
                help=help_text,
                expose_value=False,
                callback=_store,
                is_eager=False,
            )
        )


class _HelpMixin:
    """The help layout of 06 §9.1: Usage, Aliases, Description, Examples, Flags, Global Flags,
    See Also."""

    aliases: Sequence[str] = ()
    examples: Sequence[str] = ()
    see_also: Sequence[str] = ()

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        cmd: Any = self
        cmd.format_usage(ctx, formatter)
        aliases = list(self.aliases)
        if not aliases and ctx.parent is not None:
            aliases = list(getattr(ctx.parent.command, "aliases", ()))
        if aliases:
            formatter.write_paragraph()
            formatter.write_text("Aliases: " + ", ".join(aliases))
        if cmd.help:
            with formatter.section("Description"):
                formatter.write_text(cmd.help)
        if self.examples:
            with formatter.section("Examples"):
                for line in self.examples:
                    formatter.write_text(line)
        if isinstance(self, click.Group):
            rows = []
            for sub in self.list_commands(ctx):
                c = self.get_command(ctx, sub)
                if c is not None and not c.hidden:
                    rows.append((sub, c.get_short_help_str(70)))
            if rows:
                with formatter.section("Commands"):
                    formatter.write_dl(rows)
        own: list[tuple[str, str]] = []
        glob: list[tuple[str, str]] = []
        for p in cmd.get_params(ctx):
            rec = p.get_help_record(ctx)
            if rec is None:
                continue
            (glob if isinstance(p, GlobalOption) else own).append(rec)
        if own:
            with formatter.section("Flags"):
                formatter.write_dl(own)
        if glob:
            with formatter.section("Global Flags"):
                formatter.write_dl(glob)
        if self.see_also:
            with formatter.section("See Also"):
                for line in self.see_also:
                    formatter.write_text(line)


class TmCommand(_HelpMixin, click.Command):
    """A leaf command with aliases/examples/see-also for its help page."""

    def __init__(
        self,
        *args: Any,
        aliases: Sequence[str] = (),
        examples: Sequence[str] = (),
        see_also: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        kwargs.setdefault("options_metavar", "[flags]")
        super().__init__(*args, **kwargs)
        self.aliases, self.examples, self.see_also = aliases, examples, see_also
        attach_globals(self)


class TmGroup(_HelpMixin, click.Group):
    """A group whose sub-commands may have aliases (``sess``, ``key``, ``sys``, ``extend``)."""

    command_class = TmCommand

    def __init__(
        self,
        *args: Any,
        aliases: Sequence[str] = (),
        examples: Sequence[str] = (),
        see_also: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        kwargs.setdefault("options_metavar", "[flags]")
        super().__init__(*args, **kwargs)
        self.aliases, self.examples, self.see_also = aliases, examples, see_also
        self.alias_map: dict[str, str] = {}
        attach_globals(self)

    def add_alias(self, alias: str, name: str) -> None:
        """Make ``alias`` resolve to the sub-command ``name``."""
        self.alias_map[alias] = name

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, self.alias_map.get(cmd_name, cmd_name))

    def command_names(self) -> list[str]:
        """Sub-command names and aliases (for completion)."""
        return sorted([*self.commands, *self.alias_map])


TmGroup.group_class = TmGroup


def leaf(
    group: click.Group, name: str, **kwargs: Any
) -> Callable[[Callable[..., Any]], click.Command]:
    """``@leaf(group, "list", help=…)``: register a :class:`TmCommand` under ``group``."""
    return group.command(name, cls=TmCommand, **kwargs)


def state_of(ctx: click.Context) -> CliState:
    """The :class:`CliState` of the running command."""
    state = ctx.find_object(CliState)
    assert state is not None
    return state


async def run(argv: list[str], state: CliState) -> int:
    """Parse and run one command line; returns the exit code (errors already printed)."""
    from tokmesh.cli.tree import build_root

    root = build_root()
    state.flags = dict(state.base_flags) if state.in_repl else {}
    try:
        rv = await root.main(argv, prog_name="tokmesh-cli", standalone_mode=False, obj=state)
    except CliError as exc:
        state.fallback_printer().error(exc)
        return exc.exit_code
    except Cancelled:
        sys.stderr.write("Cancelled.\n")
        return EXIT_INTERRUPT
    except click.exceptions.NoArgsIsHelpError as exc:
        if exc.ctx is not None:
            sys.stderr.write(exc.ctx.get_help() + "\n")
        return EXIT_USAGE
    except click.UsageError as exc:
        hint = None
        if exc.ctx is not None:
            hint = f"Run '{exc.ctx.command_path} --help' for usage."
        state.fallback_printer().error(usage_error(exc.format_message(), suggestion=hint))
        return EXIT_USAGE
    except click.ClickException as exc:
        state.fallback_printer().error(usage_error(exc.format_message()))
        return EXIT_USAGE
    except click.Abort:
        sys.stderr.write("\n")
        return EXIT_INTERRUPT
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


def command(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """``@command("version", help=…)``: a stand-alone :class:`TmCommand`."""
    return click.command(name, cls=TmCommand, **kwargs)
