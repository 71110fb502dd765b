"""The systemd unit (05 §10), the install scripts' shell syntax, and the build context."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tokmesh.config.schema import KEYS
from tokmesh.config.types import parse_duration

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "tokmesh-server.service"

#: 05 §10, directive by directive
EXPECTED: dict[str, dict[str, str]] = {
    "Unit": {
        "Description": "TokMesh Server - Session/Token Cache Service",
        "After": "network-online.target",
        "Wants": "network-online.target",
        "StartLimitIntervalSec": "60s",
        "StartLimitBurst": "5",
    },
    "Service": {
        "Type": "simple",
        "User": "tokmesh",
        "Group": "tokmesh",
        "Environment": "PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1",
        "ExecStart": "/usr/local/bin/tokmesh-server --config /etc/tokmesh-server/config.yaml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "KillSignal": "SIGTERM",
        "TimeoutStopSec": "100s",
        "Restart": "on-failure",
        "RestartSec": "5s",
        "LimitNOFILE": "65535",
        "LimitNPROC": "4096",
        "WorkingDirectory": "/var/lib/tokmesh-server",
        "RuntimeDirectory": "tokmesh-server",
        "StateDirectory": "tokmesh-server",
        "ConfigurationDirectory": "tokmesh-server",
        "LogsDirectory": "tokmesh-server",
        "RuntimeDirectoryMode": "0750",
        "StateDirectoryMode": "0750",
        "ConfigurationDirectoryMode": "0750",
        "LogsDirectoryMode": "0750",
        "NoNewPrivileges": "true",
        "PrivateTmp": "true",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "ReadWritePaths": "/var/lib/tokmesh-server /var/run/tokmesh-server",
        "ProtectKernelTunables": "true",
        "ProtectKernelModules": "true",
        "ProtectControlGroups": "true",
        "RestrictRealtime": "true",
        "RestrictNamespaces": "true",
        "LockPersonality": "true",
        "MemoryDenyWriteExecute": "true",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter": "@system-service",
        "SystemCallErrorNumber": "EPERM",
    },
    "Install": {"WantedBy": "multi-user.target"},
}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as section -> directive -> values (directives may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if m := re.fullmatch(r"\[(\w+)\]", line):
            current = sections.setdefault(m.group(1), {})
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_has_every_directive_of_the_spec_and_nothing_unknown() -> None:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == set(EXPECTED)
    for section, directives in EXPECTED.items():
        for key, value in directives.items():
            assert unit[section].get(key) == [value], (section, key, unit[section].get(key))
        extra = set(unit[section]) - set(directives) - {"Documentation"}
        assert not extra, (section, extra)


def test_stop_timeout_covers_server_and_cluster_shutdown() -> None:
    # 05 §10: TimeoutStopSec >= server.shutdown.timeout + cluster.shutdown.timeout + 10 s.
    unit = parse_unit(UNIT.read_text())
    stop = parse_duration(unit["Service"]["TimeoutStopSec"][0])
    server = parse_duration(KEYS["server.shutdown.timeout"].default_text)
    cluster = parse_duration(KEYS["cluster.shutdown.timeout"].default_text)
    assert stop >= server + cluster + 10


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    target = tmp_path / "tokmesh-server.service"
    target.write_text(UNIT.read_text())
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(target)], capture_output=True, text=True, check=False
    )
    # verify complains about the missing binary on a build machine; nothing else may appear.
    problems = [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and "/usr/local/bin/tokmesh-server" not in line
    ]
    assert not problems, proc.stderr


@pytest.mark.parametrize("script", ["install-linux.sh", "uninstall-linux.sh"])
def test_install_scripts_are_valid_bash(script: str) -> None:
    path = REPO / "scripts" / script
    assert path.stat().st_mode & 0o111, "must be executable"
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_install_script_refuses_non_root() -> None:
    script = str(REPO / "scripts" / "install-linux.sh")
    if os.geteuid() != 0:
        cmd = ["bash", script]
    elif shutil.which("setpriv"):
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-s"]
    else:
        pytest.skip("running as root without setpriv to drop privileges")
    # As root the script is fed on stdin: user 65534 may not be able to open the checkout.
    stdin = Path(script).read_text() if cmd[-1] == "-s" else None
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "run as root" in proc.stderr


def test_build_context_keeps_only_what_the_image_needs() -> None:
    ignore = [
        line.strip()
        for line in (REPO / ".containerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for excluded in (".git", "tests", "docs", "configs", "deploy", "scripts"):
        assert excluded in ignore
    for kept in ("!configs/server/minimal", "!deploy/container"):
        assert kept in ignore
    # Everything the Containerfile copies from the context is present in the repository.
    copies = re.findall(r"^COPY (?!--from)(\S+) ", (REPO / "Containerfile").read_text(), re.M)
    assert copies
    for src in copies:
        assert (REPO / src).exists(), src
