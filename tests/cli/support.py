"""Helpers of the CLI tests: run the real ``tokmesh-cli`` executable, record HTTP requests."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.server import free_port

_EXE = Path(sys.executable).with_name("tokmesh-cli")
EXE = str(_EXE) if _EXE.exists() else "tokmesh-cli"
ANSI = "\x1b["


@dataclass
class Result:
    """Exit code and captured output of one CLI run."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The process environment without TOKMESH_*/NO_COLOR/XDG, with ``HOME=home``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TOKMESH_") and k not in ("NO_COLOR", "XDG_CONFIG_HOME")
    }
    env.update(HOME=str(home), PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm")
    env.update(extra)
    return env


class Cli:
    """Runs ``tokmesh-cli`` as a subprocess with an isolated HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(self.home, **extra)

    def run(
        self,
        *args: str,
        stdin: str | None = "",
        timeout: float = 30,
        cwd: Path | None = None,
        **env: str,
    ) -> Result:
        extra: dict[str, Any] = {"stdin": subprocess.DEVNULL} if stdin is None else {"input": stdin}
        p = subprocess.run(
            [EXE, *args],
            capture_output=True,
            text=True,
            env=self.env(**env),
            timeout=timeout,
            cwd=cwd,
            **extra,
        )
        return Result(p.returncode, p.stdout, p.stderr)


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening."""
    return free_port()


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@contextmanager
def recording_server(
    status: int = 200, reply: dict[str, Any] | None = None, hang: bool = False
) -> Iterator[tuple[str, list[Recorded]]]:
    """A stand-in HTTP endpoint that records what the CLI sends on the wire.

    It is not a TokMesh server: it answers every request with ``status`` and a §2.2
    envelope around ``reply`` (or never answers with ``hang``), so that tests can assert
    the exact headers and bodies the CLI puts on the wire, and error statuses a healthy
    real server never produces (``/health`` 503).
    """
    seen: list[Recorded] = []
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def _handle(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            seen.append(Recorded(self.command, self.path, dict(self.headers.items()), body))
            if hang:
                stop.wait(30)
                return
            if status < 400:
                doc: dict[str, Any] = {
                    "code": "OK",
                    "message": "Success",
                    "request_id": "req-test",
                    "timestamp": 0,
                    "data": reply or {},
                }
            else:
                doc = {
                    "code": (reply or {}).get("code", "TM-SYS-5030"),
                    "message": (reply or {}).get("message", "Service not ready"),
                    "request_id": "req-test",
                    "timestamp": 0,
                }
                if (reply or {}).get("details"):
                    doc["details"] = reply["details"]  # type: ignore[index]
            raw = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = _handle

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    finally:
        stop.set()
        srv.shutdown()
        srv.server_close()
