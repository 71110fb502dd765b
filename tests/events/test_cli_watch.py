"""``tokmesh-cli session watch`` against a real server: one JSON object per event, a
resume after a server restart with nothing lost or repeated, Ctrl-C exits 0."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.cli.support import _EXE, clean_env
from tests.support.server import ServerProcess


class Lines:
    """The stdout lines of a process, read by a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append(line.rstrip("\n"))

    def wait(self, n: int, timeout: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.lines) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.lines) >= n, self.lines
        return self.lines


def create(node: ServerProcess, key: str, user: str) -> str:
    r = httpx.post(
        node.base_url + "/sessions",
        json={"user_id": user, "ttl_seconds": 600},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["data"]["session_id"])


def test_watch_prints_json_lines_resumes_after_restart_and_exits_0_on_ctrl_c(
    node_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    node = node_factory()
    key = node.admin_key
    assert key is not None
    proc = subprocess.Popen(
        [
            str(_EXE),
            "-t",
            node.base_url,
            "-k",
            key,
            "session",
            "watch",
            "--type",
            "created",
            "-o",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(tmp_path / "home"),
    )
    out = Lines(proc)
    try:
        # Live from now: create until the watch is connected (its first event arrives).
        deadline = time.monotonic() + 20
        while not out.lines and time.monotonic() < deadline:
            create(node, key, "carol")
            time.sleep(0.2)
        before = [create(node, key, "alice") for _ in range(3)]
        node.terminate()
        node.start()
        # Created while the watch was reconnecting: it resumes from its cursor.
        during = [create(node, key, "bob") for _ in range(3)]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ids = [json.loads(line)["session_id"] for line in out.lines]
            if set(before + during) <= set(ids):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
    events = [json.loads(line) for line in out.lines]
    ids = [e["session_id"] for e in events]
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    assert set(before + during) <= set(ids), (before, during, ids)
    assert len(ids) == len(set(ids)), "an event was printed twice"
    assert ids.index(during[0]) > ids.index(before[-1])
    assert all(e["type"] == "created" for e in events)
    cursors = [int(e["cursor"]) for e in events]
    assert cursors == sorted(cursors)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "resuming after cursor" in stderr
