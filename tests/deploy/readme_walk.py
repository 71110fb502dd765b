"""Helpers of the README walk: the README's shell blocks, a workspace per user, a shell
session that runs one README line at a time, and the placeholders a walk must fill in.

The commands always come from README.md itself, so an edit there changes what the walk
runs. Only three things are adapted, and only where a reader would adapt them too:

* ``:5080`` becomes the walk's own port, so that two walks (and other tests) can run at
  once; the server is started with ``TOKMESH_SERVER_HTTP_ADDRESS`` to match.
* ``tmtk_...`` and ``tmss-...`` become the token and the session ID of the last session
  the walk created.
* Any other ``...`` or ``<placeholder>`` in a command line fails the walk: the README
  would be asking the reader for something the walk cannot know.
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
#: what ``pip install .`` needs from a checkout
SOURCES = ("pyproject.toml", "setup.py", "README.md", "tokmesh")
#: the sections whose command lines the walk runs after the server is up, in this order
WALKED_SECTIONS = ("First steps", "Command line")


def sh_blocks(text: str) -> dict[str, list[str]]:
    """The ```` ```sh ```` blocks of every ``## `` section of a Markdown text, in order."""
    sections: dict[str, list[str]] = {}
    current = ""
    block: list[str] | None = None
    for line in text.splitlines():
        if block is None and line.startswith("## "):
            current = line[3:].strip()
            sections.setdefault(current, [])
        elif block is None and line.strip() == "```sh":
            block = []
        elif block is not None and line.strip() == "```":
            sections.setdefault(current, []).append("\n".join(block))
            block = None
        elif block is not None:
            block.append(line)
    return sections


def server_block(sections: Mapping[str, list[str]]) -> str:
    """The quick start's block that installs and starts the server (the one whose last
    line runs ``tokmesh-server``)."""
    (block,) = [b for b in sections["Quick start"] if b.rstrip().endswith("tokmesh-server")]
    return block


def command_lines(sections: Mapping[str, list[str]]) -> list[str]:
    """Every command line of the walked sections (comments and blank lines left out)."""
    return [
        line
        for name in WALKED_SECTIONS
        for block in sections[name]
        for line in block.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def fill(line: str, port: int, session: Mapping[str, Any] | None) -> str:
    """``line`` with the walk's port and the last session's token and ID filled in."""
    line = line.replace(":5080", f":{port}")
    if "tmtk_..." in line or "tmss-..." in line:
        assert session is not None, f"no session created before: {line}"
        line = line.replace("tmtk_...", str(session["token"]))
        line = line.replace("tmss-...", str(session["session_id"]))
    unknown = re.search(r"\.\.\.|<[A-Za-z_]+>", line)
    assert unknown is None, f"README line has a placeholder the walk cannot fill: {line}"
    return line


def copy_sources(dest: Path) -> Path:
    """A checkout-like copy of what ``pip install .`` needs, readable by everyone."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(
                src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so")
            )
        else:
            shutil.copy2(src, dest / name)
    return dest


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give ``root`` and everything below it to ``uid:gid``."""
    os.chown(root, uid, gid)
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(base, name), uid, gid, follow_symlinks=False)


def stop_group(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, wait: float = 40) -> int:
    """Signal ``proc``'s process group (as Ctrl+C or a service manager would), SIGKILL it
    after ``wait`` seconds; the exit code (negative: killed by that signal)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            return proc.wait(wait)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(10)


class Shell:
    """The reader's second terminal: one bash session, one README line at a time, so that
    ``. .venv/bin/activate`` and ``KEY=$(...)`` carry over to the following lines."""

    def __init__(self, prefix: list[str], cwd: Path, env: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen(
            [*prefix, "bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            text=True,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def run(self, line: str, timeout: float = 120) -> tuple[int, str]:
        """Run one line (stdin closed, so nothing reads the lines that follow); its exit
        status and its output (stdout and stderr)."""
        assert self.proc.stdin is not None
        marker = f"__walk_{secrets.token_hex(8)}__"
        # A group, not a subshell: variables it sets stay in this shell.
        self.proc.stdin.write(f"{{\n{line}\n}} </dev/null\nprintf '\\n{marker} %s\\n' \"$?\"\n")
        self.proc.stdin.flush()
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                seen = "".join(out)
                raise AssertionError(f"no end of {line!r} in {timeout} s:\n{seen}") from None
            if item is None:
                raise AssertionError(f"the shell exited during {line!r}:\n{''.join(out)}")
            if item.startswith(marker):
                return int(item.split()[1]), "".join(out).strip()
            out.append(item)

    def close(self) -> None:
        """End the session and anything still running in it."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        stop_group(self.proc, signal.SIGKILL, wait=10)
