"""Completion: shell scripts (``completion bash|zsh|fish|powershell``) and the REPL's
completer (commands, aliases, flags, enum values, config aliases, session and key IDs)."""

from __future__ import annotations

import shlex
import time
from collections.abc import AsyncGenerator, Iterable
from typing import Any

import asyncclick as click

from tokmesh.cli.cliconfig import OUTPUT_FORMATS
from tokmesh.cli.state import CliState

PROG = "tokmesh-cli"
COMPLETE_VAR = "_TOKMESH_CLI_COMPLETE"

_POWERSHELL = r"""
Register-ArgumentCompleter -Native -CommandName tokmesh-cli -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)
    $env:COMP_WORDS = $commandAst.ToString()
    $env:COMP_CWORD = $commandAst.CommandElements.Count
    if ($wordToComplete -ne '') { $env:COMP_CWORD = $env:COMP_CWORD - 1 }
    $env:_TOKMESH_CLI_COMPLETE = 'bash_complete'
    tokmesh-cli | ForEach-Object {
        $kind, $value = $_ -split ',', 2
        [System.Management.Automation.CompletionResult]::new(
            $value, $value, 'ParameterValue', $value)
    }
    Remove-Item Env:_TOKMESH_CLI_COMPLETE, Env:COMP_WORDS, Env:COMP_CWORD
}
""".strip()

#: commands whose first argument is a session / API key ID (dynamic completion)
SESSION_ID_COMMANDS = {("session", "get"), ("session", "renew"), ("session", "revoke")}
KEY_ID_COMMANDS = {("apikey", "disable"), ("apikey", "enable"), ("apikey", "rotate")}
REPL_ONLY = ("exit", "quit")


async def shell_script(root: click.Command, shell: str) -> str:
    """The completion script for ``shell`` (click's protocol; PowerShell uses bash's)."""
    if shell == "powershell":
        return _POWERSHELL
    from asyncclick.shell_completion import ShellComplete, get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    comp = cls(root, {}, PROG, COMPLETE_VAR)
    return ShellComplete.source(comp)  # skip bash's version probe (a subprocess)


def _split(text: str) -> tuple[list[str], str]:
    """(complete words, the word being typed)."""
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    if text and not text[-1].isspace() and words:
        return words[:-1], words[-1]
    return words, ""


def _option_of(cmd: click.Command, flag: str) -> click.Option | None:
    for p in cmd.params:
        if isinstance(p, click.Option) and flag in (*p.opts, *p.secondary_opts):
            return p
    return None


class Candidates:
    """Pure completion logic over the click tree (the prompt-toolkit class wraps it)."""

    def __init__(self, root: click.Group, state: CliState) -> None:
        self.root = root
        self.state = state
        self._id_cache: dict[str, tuple[float, list[str]]] = {}

    def _aliases(self) -> list[str]:
        try:
            return [*self.state.config().targets]
        except Exception:  # a broken config must not break completion
            return []

    def walk(self, words: list[str]) -> tuple[click.Command, list[str], list[str]]:
        """(deepest command, its canonical path, positional words after it)."""
        cmd: click.Command = self.root
        path: list[str] = []
        positional: list[str] = []
        ctx = click.Context(self.root, info_name=PROG)
        skip = False
        for w in words:
            if skip:
                skip = False
                continue
            if w.startswith("-"):
                opt = _option_of(cmd, w.split("=", 1)[0])
                skip = opt is not None and not opt.is_flag and "=" not in w
                continue
            if isinstance(cmd, click.Group) and not positional:
                sub = cmd.get_command(ctx, w)
                if sub is not None:
                    cmd = sub
                    path.append(sub.name or w)
                    continue
            positional.append(w)
        return cmd, path, positional

    async def complete(self, text: str) -> list[str]:
        """Candidate words for the word being typed at the end of ``text``."""
        words, partial = _split(text)
        cmd, path, positional = self.walk(words)
        prev = words[-1] if words else ""
        values = self._option_values(cmd, prev) if prev.startswith("-") else None
        if values is not None:
            return [v for v in values if v.startswith(partial)]
        if partial.startswith("-"):
            flags = sorted(
                {
                    o
                    for p in cmd.params
                    if isinstance(p, click.Option)
                    for o in (*p.opts, *p.secondary_opts)
                }
                | {"--help"}
            )
            return [f for f in flags if f.startswith(partial)]
        if isinstance(cmd, click.Group) and not positional:
            names = list(getattr(cmd, "command_names", lambda: list(cmd.commands))())
            names = [n for n in names if not n.startswith("_")]
            if cmd is self.root:
                names += list(REPL_ONLY)
            return sorted(n for n in set(names) if n.startswith(partial))
        if path in (["connect"], ["use"]) and not positional:
            return [a for a in [*self._aliases(), "local"] if a.startswith(partial)]
        if not positional and tuple(path) in SESSION_ID_COMMANDS:
            return [i for i in await self._ids("session") if i.startswith(partial.lower())]
        if not positional and tuple(path) in KEY_ID_COMMANDS:
            return [i for i in await self._ids("key") if i.startswith(partial.lower())]
        return []

    def _option_values(self, cmd: click.Command, flag: str) -> list[str] | None:
        opt = _option_of(cmd, flag)
        if opt is None or opt.is_flag:
            return None
        if isinstance(opt.type, click.Choice):
            return [str(c) for c in opt.type.choices]
        if opt.name == "output":
            return list(OUTPUT_FORMATS)
        if opt.name == "target":
            return [*self._aliases(), "local"]
        if opt.name == "role":
            from tokmesh.cli.cmd_apikey import ROLES

            return list(ROLES)
        return []

    async def _ids(self, kind: str) -> list[str]:
        """Session or key IDs of the connected node (cached 5 s; empty on any failure)."""
        cached = self._id_cache.get(kind)
        if cached and time.monotonic() - cached[0] < 5:
            return cached[1]
        conn = self.state.connection
        if conn is None or conn.http is None:
            return []
        path = "/sessions" if kind == "session" else "/admin/v1/keys"
        field = "id" if kind == "session" else "key_id"
        try:
            data = await conn.http.call("GET", path, params={"size": 100})
        except Exception:  # completion never raises into the prompt
            return []
        ids = [str(i.get(field)) for i in data.get("items") or [] if i.get(field)]
        self._id_cache[kind] = (time.monotonic(), ids)
        return ids


def prompt_completer(candidates: Candidates) -> Any:
    """A prompt-toolkit completer over :class:`Candidates`."""
    from prompt_toolkit.completion import CompleteEvent, Completer, Completion
    from prompt_toolkit.document import Document

    class ReplCompleter(Completer):
        def get_completions(
            self, document: Document, complete_event: CompleteEvent
        ) -> Iterable[Completion]:
            return []

        async def get_completions_async(
            self, document: Document, complete_event: CompleteEvent
        ) -> AsyncGenerator[Completion, None]:
            text = document.text_before_cursor
            _, partial = _split(text)
            for word in await candidates.complete(text):
                yield Completion(word, start_position=-len(partial))

    return ReplCompleter()
