"""REPL history (06 §6): ``~/.tokmesh/history``, one entry per line, last 1000, secrets
redacted before anything is written (values of ``-k``/``--api-key``/``--token``, and of
``-t`` under ``session validate``)."""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path

REDACTED = "***REDACTED***"
MAX_ENTRIES = 1000
_SECRET_FLAGS = ("-k", "--api-key", "--token")


def redact(line: str) -> str:
    """``line`` with secret flag values replaced by ``***REDACTED***``."""
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    secret_flags = set(_SECRET_FLAGS)
    if len(words) >= 2 and words[0] in ("session", "sess") and words[1] == "validate":
        secret_flags.add("-t")
    out: list[str] = []
    changed = False
    redact_next = False
    for w in words:
        if redact_next:
            out.append(REDACTED)
            changed = True
            redact_next = False
            continue
        name, eq, _value = w.partition("=")
        if eq and name in secret_flags:
            out.append(f"{name}={REDACTED}")
            changed = True
        elif w in secret_flags:
            out.append(w)
            redact_next = True
        elif w.startswith("-k") and len(w) > 2 and not w.startswith("--"):
            out.append(f"-k{REDACTED}")
            changed = True
        else:
            out.append(w)
    if not changed:
        return line.strip()
    return " ".join(w if REDACTED in w else shlex.quote(w) for w in out)


class HistoryFile:
    """The history file: directory 0700, file 0600, at most :data:`MAX_ENTRIES` lines."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def default(cls, env: Mapping[str, str]) -> HistoryFile:
        """``$HOME/.tokmesh/history``."""
        home = Path(env.get("HOME") or os.path.expanduser("~"))
        return cls(home / ".tokmesh" / "history")

    def entries(self) -> list[str]:
        """Entries, oldest first."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()]

    def append(self, line: str) -> str:
        """Store one entry (redacted, trimmed to the last 1000); returns what was stored."""
        entry = redact(line).replace("\n", " ").strip()
        if not entry:
            return entry
        entries = [*self.entries(), entry][-MAX_ENTRIES:]
        self._write(entries)
        return entry

    def clear(self) -> None:
        """Empty the history."""
        self._write([])

    def _write(self, entries: Iterable[str]) -> None:
        parent = self.path.parent
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(parent, 0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for e in entries:
                fh.write(e + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
