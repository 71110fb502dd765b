"""Interactive prompts on stderr / the terminal: confirmations, API key, token (06 §8.1).

A confirmation needs a terminal on stdin: without one (and without ``--force``) the command
fails with exit 64. Inside the REPL on a terminal, prompts go through prompt-toolkit so that
Ctrl+C cancels the command and never the REPL.
"""

from __future__ import annotations

import sys

from tokmesh.cli.errors import Cancelled, usage_error
from tokmesh.cli.state import CliState, stdin_is_tty

NOT_A_TTY = "confirmation required but stdin is not a terminal; re-run with --force"


async def _ask(state: CliState, message: str, *, secret: bool) -> str:
    if state.tty_repl is not None:
        from prompt_toolkit import PromptSession

        try:
            answer: str = await PromptSession[str]().prompt_async(message, is_password=secret)
        except (KeyboardInterrupt, EOFError):
            raise Cancelled() from None
        return answer
    if secret:
        import getpass

        try:
            return getpass.getpass(message, stream=sys.stderr)
        except EOFError:
            return ""
    sys.stderr.write(message)
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        return ""
    return line.rstrip("\r\n")


def require_terminal(force: bool) -> None:
    """Fail early (64) when a confirmation will be needed but stdin is not a terminal."""
    if not force and not stdin_is_tty():
        raise usage_error(NOT_A_TTY)


async def confirm(state: CliState, message: str) -> None:
    """Ask ``<message> [y/N]: ``; anything but y/yes raises :class:`Cancelled`."""
    if not stdin_is_tty():
        raise usage_error(NOT_A_TTY)
    answer = await _ask(state, f"{message} [y/N]: ", secret=False)
    if answer.strip().lower() not in ("y", "yes"):
        raise Cancelled()


async def confirm_typed(state: CliState, lines: list[str], expected: str) -> None:
    """Print ``lines`` and require the exact word ``expected``; else :class:`Cancelled`."""
    if not stdin_is_tty():
        raise usage_error(NOT_A_TTY)
    for line in lines:
        sys.stderr.write(line + "\n")
    answer = await _ask(state, f"Type '{expected}' to confirm: ", secret=False)
    if answer.strip() != expected:
        raise Cancelled()


async def ask_secret(state: CliState, message: str) -> str:
    """A no-echo prompt (``API Key: ``, ``Token: ``); the caller checks stdin is a TTY."""
    return (await _ask(state, message, secret=True)).strip()
