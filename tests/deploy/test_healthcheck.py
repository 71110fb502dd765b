"""The image's HEALTHCHECK command (deploy/container/healthcheck.py) against a real server."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.server import ServerProcess, free_port

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "container" / "healthcheck.py"


def load_script() -> ModuleType:
    """The script as a module (it is not part of the package)."""
    spec = importlib.util.spec_from_file_location("tokmesh_healthcheck", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("127.0.0.1:5080", "http://127.0.0.1:5080/health"),
        ("0.0.0.0:9999", "http://127.0.0.1:9999/health"),
        (":5080", "http://127.0.0.1:5080/health"),
        ("[::]:5080", "http://[::1]:5080/health"),
        ("[::1]:6000", "http://[::1]:6000/health"),
        ("10.1.2.3:5080", "http://10.1.2.3:5080/health"),
    ],
)
def test_health_url_follows_the_listen_address(address: str, url: str) -> None:
    assert load_script().health_url(address) == url


def run_script(env_address: str | None) -> subprocess.CompletedProcess[str]:
    """The script as the container runs it, with only the address variable set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKMESH_")}
    if env_address is not None:
        env["TOKMESH_SERVER_HTTP_ADDRESS"] = env_address
    return subprocess.run(
        [sys.executable, "-I", str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_healthy_against_a_running_server_and_unhealthy_after_it_stopped(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "node")
    server.start()
    try:
        proc = run_script(f"0.0.0.0:{server.http_port}")
        assert proc.returncode == 0, proc.stdout
        assert proc.stdout.startswith("healthy: ")
    finally:
        assert server.terminate() == 0
    proc = run_script(f"127.0.0.1:{server.http_port}")
    assert proc.returncode == 1
    assert proc.stdout.startswith("unhealthy: ")


def test_unhealthy_when_nothing_listens() -> None:
    proc = run_script(f"127.0.0.1:{free_port()}")
    assert proc.returncode == 1
    assert "unhealthy" in proc.stdout
