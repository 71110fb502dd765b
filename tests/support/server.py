"""A real ``tokmesh-server`` subprocess for integration tests (real sockets, real files)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

# Ports are drawn below the kernel's ephemeral range (32768-60999 by default): a port the
# kernel handed out (bind to 0) is free only until the kernel hands it out again, to an
# outgoing connection of this or a parallel test run, before the server under test binds
# it. Below that range only explicit binds compete, and each process starts at its own
# random offset and never hands a port out twice.
_PORT_LOW, _PORT_HIGH = 20_000, 32_000
_handed_out: set[int] = set()
_next_port = [random.Random(os.getpid() ^ time.monotonic_ns()).randrange(_PORT_LOW, _PORT_HIGH)]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and not handed out before by this process."""
    for _ in range(_PORT_HIGH - _PORT_LOW):
        port = _next_port[0]
        _next_port[0] = _PORT_LOW + (port + 1 - _PORT_LOW) % (_PORT_HIGH - _PORT_LOW)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free TCP port left in 20000-32000")


def short_socket_path(tag: str) -> Path:
    """A Unix socket path short enough for sun_path (108 bytes)."""
    return Path(f"/tmp/tmt-{os.getpid()}-{tag}-{time.monotonic_ns() % 10**9}.sock")


class ServerProcess:
    """Start/stop/kill a TokMesh node with a generated config file."""

    def __init__(self, root: Path, overrides: dict[str, Any] | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()
        self.socket_path = short_socket_path("adm")
        self.config: dict[str, Any] = {
            "server": {
                "http": {"address": f"127.0.0.1:{self.http_port}"},
                "local": {"socket_path": str(self.socket_path)},
                "shutdown": {"timeout": "20s", "grace_period": "2s"},
            },
            "storage": {
                "wal": {"dir": str(root / "data" / "wal"), "sync_mode": "sync"},
                "snapshot": {"dir": str(root / "data" / "snapshots")},
            },
            "security": {"auth": {"argon2": {"memory": 8192, "iterations": 1, "parallelism": 1}}},
            "telemetry": {"logging": {"level": "info"}},
        }
        engine = os.environ.get("TOKMESH_TEST_HTTP_ENGINE")
        if engine:  # run a whole suite against another HTTP engine (issue 3, acceptance 5)
            self.config["server"]["http"]["engine"] = engine
        if overrides:
            _merge(self.config, overrides)
        self.config_path = root / "config.yaml"
        self.log_path = root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_key: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, wait_ready: bool = True, extra_args: list[str] | None = None) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))
        exe = Path(sys.executable).with_name("tokmesh-server")
        cmd = [str(exe) if exe.exists() else "tokmesh-server", "--config", str(self.config_path)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd + (extra_args or []), stdout=log, stderr=subprocess.STDOUT, cwd=self.root
            )
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=1) as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if client.get("/ready").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(f"server not ready:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def socket_command(self, line: str) -> dict[str, Any]:
        """One command on the local admin socket; returns the decoded envelope."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.socket_path))
            s.sendall(line.encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return dict(json.loads(buf))

    def create_admin_key(self) -> str:
        reply = self.socket_command("EMERGENCY_CREATE_ADMIN_KEY test admin")
        assert reply["code"] == "OK", reply
        data = reply["data"]
        self.admin_key = f"{data['key_id']}:{data['key_secret']}"
        return self.admin_key

    def create_key(self, role: str, **fields: Any) -> str:
        """A new API key of ``role`` created through the admin API."""
        admin = self.admin_key or self.create_admin_key()
        r = httpx.post(
            self.base_url + "/admin/v1/keys",
            json={"role": role, **fields},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert r.status_code == 201, r.text
        d = r.json()["data"]
        return f"{d['key_id']}:{d['key_secret']}"

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(30)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.proc = None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
