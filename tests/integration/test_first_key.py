"""A fresh node and its first admin key: the start-up hint on stderr, the log line of the
generated at-rest key, and the trail an emergency key leaves (log and audit, never the
secret). One node for the module; the last test restarts it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.runtime_support import SLOW, RuntimeServer, clean_env

_CLI = Path(sys.executable).with_name("tokmesh-cli")
CLI = str(_CLI) if _CLI.exists() else "tokmesh-cli"
HINT_PREFIX = "tokmesh-server: no API key exists yet"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeServer]:
    node = RuntimeServer(tmp_path_factory.mktemp("first-key") / "node")
    node.start()
    try:
        yield node
    finally:
        node.stop()


def _hint_lines(node: RuntimeServer) -> list[str]:
    return [line for line in node.log_text().splitlines() if line.startswith(HINT_PREFIX)]


def _wait_hint(node: RuntimeServer) -> list[str]:
    deadline = time.monotonic() + 10
    while not (lines := _hint_lines(node)):
        assert time.monotonic() < deadline, node.log_tail()
        time.sleep(0.05)
    return lines


def test_fresh_node_names_its_socket_and_the_first_key_command(fresh: RuntimeServer) -> None:
    command = f"tokmesh-cli -t socket:{fresh.socket_path} apikey create-emergency"
    assert _wait_hint(fresh) == [
        f"{HINT_PREFIX}; local admin socket: {fresh.socket_path}; "
        f"create the first admin key with: {command}"
    ]
    line = fresh.wait_for_log(lambda d: d.get("message") == "no API key exists yet")
    assert line["level"] == "WARN"
    assert line["socket_path"] == str(fresh.socket_path)
    assert line["commands"] == [command]


def test_generated_encryption_key_line_names_its_file(fresh: RuntimeServer) -> None:
    key_file = fresh.data_dir() / "wal" / ".encryption_key"
    line = fresh.wait_for_log(lambda d: "key_file" in d)
    assert line["level"] == "WARN"
    assert line["key_file"] == str(key_file) and str(key_file) in line["message"]
    assert key_file.is_file()


def test_emergency_key_is_logged_and_audited_never_its_secret(fresh: RuntimeServer) -> None:
    r = subprocess.run(
        [CLI, "-t", f"socket:{fresh.socket_path}", "apikey", "create-emergency", "-q"],
        capture_output=True,
        text=True,
        timeout=SLOW,
        env=clean_env({"HOME": str(fresh.root)}),
    )
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    key_id, secret = key.split(":")

    line = fresh.wait_for_log(lambda d: d.get("event") == "EMERGENCY_KEY_CREATED")
    assert line["key_id"] == key_id and line["role"] == "admin"
    assert line["socket_path"] == str(fresh.socket_path)
    assert line["peer_uid"] == os.getuid() and line["peer_pid"] > 0
    with fresh.client(key) as c:
        r2 = c.get("/admin/v1/audit/logs", params={"action": "EMERGENCY_KEY_CREATED"})
    assert r2.status_code == 200, r2.text
    (record,) = [i for i in r2.json()["data"]["items"] if i["details"].get("key_id") == key_id]
    assert record["operator_id"] == "LOCAL_ADMIN"
    details = record["details"]
    assert details["role"] == "admin" and details["peer_uid"] == os.getuid()
    assert details["socket_path"] == str(fresh.socket_path)

    # A restart flushes the audit file; a node with a key prints no hint the second time.
    assert fresh.terminate(SLOW) == 0
    fresh.start()
    time.sleep(0.5)
    assert len(_hint_lines(fresh)) == 1, fresh.log_tail()
    assert fresh.terminate(SLOW) == 0
    # The secret is in no log line and in no file the node wrote (log, audit, WAL, ...).
    needles = (secret.encode(), secret[5:].encode())
    files = [p for p in fresh.root.rglob("*") if p.is_file()]
    assert fresh.log_path in files and any(p.parent.name == "audit" for p in files), files
    for path in files:
        data = path.read_bytes()
        assert not any(n in data for n in needles), f"the key secret is in {path}"
