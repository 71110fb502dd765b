"""The REPL (06 §6): banner, prompt, history, completion, Ctrl+C/Ctrl+D handling.

On a terminal it runs on prompt-toolkit; with a non-TTY stdin (``printf … | tokmesh-cli -i``)
it reads one command per line without prompts, so it can be scripted and tested. Ctrl+C
discards the typed line or cancels the running command, never the REPL.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import signal
import sys
from typing import Any

from tokmesh.cli.errors import CliError
from tokmesh.cli.history import HistoryFile, redact
from tokmesh.cli.state import CliState, stdin_is_tty
from tokmesh.cli.version import VERSION

#: flags of the process command line that make no sense per REPL line
_PROCESS_ONLY = ("interactive",)


def banner() -> str:
    """The three banner lines."""
    return f"TokMesh CLI v{VERSION}\nType 'help' for available commands, 'exit' to quit.\n"


def prompt_text(state: CliState) -> str:
    """``tokmesh> `` or ``tokmesh:<label>> ``."""
    conn = state.connection
    return f"tokmesh:{conn.label}> " if conn is not None else "tokmesh> "


class _Quit(Exception):
    pass


async def execute_line(state: CliState, line: str) -> int:
    """Run one REPL line; errors are printed, never raised. ``_Quit`` on exit/quit."""
    from tokmesh.cli import app

    try:
        words = shlex.split(line)
    except ValueError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        return 64
    if not words:
        return 0
    if words[0] in ("exit", "quit"):
        raise _Quit()
    import anyio

    state.reset_line()
    loop = asyncio.get_running_loop()
    code = 0
    with anyio.CancelScope() as scope:
        # pragma: no cover - a non-main thread cannot take signals
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, scope.cancel)
        try:
            code = await app.run(words, state)
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
    if scope.cancelled_caught:
        sys.stderr.write("\nCancelled.\n")
        code = 2
    sys.stdout.flush()
    return code


async def _auto_connect(state: CliState, target: str | None) -> None:
    """Connect first when ``-t`` or ``$TOKMESH_TARGET`` is given; warn on failure."""
    from tokmesh.cli.cmd_local import _connected_lines, _open, install

    if not target:
        return
    state.reset_line()
    try:
        conn = await _open(state, target, prompt=True)
    except CliError as exc:
        sys.stderr.write(f"Warning: {exc.message}\n")
        return
    await install(state, conn)
    for line in _connected_lines(conn, False):
        print(line)


async def run_repl(state: CliState) -> int:
    """Run the REPL until exit/quit/EOF; returns 0."""
    state.in_repl = True
    target = state.flags.get("target") or state.env.get("TOKMESH_TARGET")
    # -i applies to the process; -t auto-connects once and must not re-target every line
    state.base_flags = {k: v for k, v in state.flags.items() if k not in (*_PROCESS_ONLY, "target")}
    print(banner())
    hist = HistoryFile.default(state.env)
    try:
        await _auto_connect(state, str(target) if target else None)
        if stdin_is_tty():
            await _tty_loop(state, hist)
        else:
            await _pipe_loop(state, hist)
    finally:
        if state.connection is not None:
            await state.connection.aclose()
            state.connection = None
    print("Goodbye!")
    return 0


async def _pipe_loop(state: CliState, hist: HistoryFile) -> None:
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        if not line.strip():
            continue
        with contextlib.suppress(OSError):
            hist.append(line.strip())
        try:
            await execute_line(state, line)
        except _Quit:
            return


async def _tty_loop(state: CliState, hist: HistoryFile) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import History

    from tokmesh.cli.completion import Candidates, prompt_completer
    from tokmesh.cli.tree import build_root

    class _ReplHistory(History):
        """prompt-toolkit history over :class:`HistoryFile` (redacted in memory too)."""

        def load_history_strings(self) -> Any:
            yield from reversed(hist.entries())

        def store_string(self, string: str) -> None:
            with contextlib.suppress(OSError):
                hist.append(string)

        def append_string(self, string: str) -> None:
            self._loaded_strings.insert(0, redact(string))
            self.store_string(string)

        def forget(self) -> None:
            self._loaded_strings = []

    history = _ReplHistory()
    state.repl_history = history  # type: ignore[attr-defined]
    session: PromptSession[str] = PromptSession(
        history=history,
        completer=prompt_completer(Candidates(build_root(), state)),
        complete_while_typing=False,
    )
    state.tty_repl = session
    while True:
        try:
            line = await session.prompt_async(prompt_text(state))
        except KeyboardInterrupt:
            continue
        except EOFError:
            return
        try:
            await execute_line(state, line)
        except _Quit:
            return
