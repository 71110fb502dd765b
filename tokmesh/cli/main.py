"""Entry point of ``tokmesh-cli`` (console script ``tokmesh.cli.main:main``).

Startup is kept small: only asyncclick and the command tree are imported here; httpx,
rich, prompt_toolkit and yaml load inside the commands that need them. Commands that do
no I/O (``--help``, ``--version``, ``version`` without a target, ``completion``) are driven
without an event loop, which spares the import of asyncio (and ssl). Everything else runs
on a plain asyncio loop with Python's default SIGINT handling, so Ctrl+C aborts a direct
command (even inside a blocking prompt) and the process exits 2, never 130.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Coroutine
from typing import Any

_NO_IO_WORDS = frozenset({"version", "completion", "help"})
_VALUE_FLAGS = frozenset({"-o", "--output", "-c", "--config", "--timeout", "--tls-ca"})


class _NeedsLoop(Exception):
    """The coroutine wanted an event loop after all."""


def _is_no_io(argv: list[str]) -> bool:
    """True for invocations that certainly do no network I/O and no prompting."""
    if any(a in ("-h", "--help", "--version") for a in argv):
        return True
    if os.environ.get("TOKMESH_TARGET"):
        return False
    words: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in _VALUE_FLAGS:
            skip = True
        elif a.startswith("-"):
            if a in ("-t", "--target", "-i", "--interactive") or a.startswith("--target="):
                return False
        else:
            words.append(a)
    return bool(words) and words[0] in _NO_IO_WORDS


def _drive(coro: Coroutine[Any, Any, int]) -> int:
    """Run a coroutine that never suspends; :class:`_NeedsLoop` if it tries to."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return int(stop.value or 0)
    except RuntimeError as exc:  # e.g. "no running event loop"
        if "event loop" in str(exc):
            raise _NeedsLoop() from None
        raise
    coro.close()
    raise _NeedsLoop()


def run_argv(argv: list[str]) -> int:
    """Run one ``tokmesh-cli`` invocation and return its exit code."""
    from tokmesh.cli.app import run
    from tokmesh.cli.errors import EXIT_INTERRUPT
    from tokmesh.cli.state import CliState

    if _is_no_io(argv):
        try:
            return _drive(run(argv, CliState()))
        except _NeedsLoop:
            pass
        except KeyboardInterrupt:
            return EXIT_INTERRUPT
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(run(argv, CliState()))
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_INTERRUPT
    finally:
        with contextlib.suppress(RuntimeError):  # still running after an interrupt
            loop.close()


def main() -> None:
    """``tokmesh-cli``: parse ``sys.argv``, run, exit with the code of 06 §8.2."""
    code = run_argv(sys.argv[1:])
    with contextlib.suppress(BrokenPipeError, ValueError):
        sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
