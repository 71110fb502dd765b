"""``scripts/cluster-demo.sh`` does what docs/cluster.md says: three ready nodes, one key
for all, a session made through node 1 and validated through node 3."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_demo_script(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    env = dict(os.environ)
    # The script finds tokmesh-server on PATH, as a user who installed TokMesh has it.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    try:
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "cluster-demo.sh"), str(demo)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count('"cluster":"ok"') == 3, done.stdout
        cli = [str(Path(sys.executable).with_name("tokmesh-cli"))]
        key = subprocess.run(
            [*cli, "-t", f"socket:{demo}/node1/tokmesh.sock", "apikey", "create-emergency", "-q"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        ).stdout.strip()
        made = subprocess.run(
            [
                *cli,
                "-t",
                "http://127.0.0.1:5081",
                "-k",
                key,
                "-o",
                "json",
                "session",
                "create",
                "-u",
                "alice",
                "--ttl",
                "1h",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        ).stdout
        token = json.loads(made)["data"]["token"]
        r = httpx.post(
            "http://127.0.0.1:5083/tokens/validate",
            json={"token": token},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
    finally:
        for pid_file in [*demo.glob("node*/pid"), demo / "etcd.pid"]:
            if pid_file.exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid_file.read_text()), signal.SIGTERM)
