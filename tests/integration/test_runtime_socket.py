"""The local emergency admin socket of a real node (03 §6, 05 §3.1 ``server.local``)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.runtime_support import RuntimeServer, wait_exit

EMERGENCY_WARNING = (
    "This key was created via emergency channel. Please rotate it after normal access is restored."
)
SUMMARY_FIELDS = {
    "uptime_seconds",
    "version",
    "build_time",
    "node_id",
    "cluster_state",
    "total_sessions",
    "memory_usage_mb",
    "current_qps",
    "metrics",
}


def _session(path: Path, lines: list[bytes]) -> list[dict[str, Any]]:
    """Send ``lines`` on one connection; return one decoded reply per command line."""
    expected = sum(1 for line in lines if line.strip(b"\r\n"))
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(str(path))
        s.sendall(b"".join(lines))
        buf = b""
        while buf.count(b"\n") < expected:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    replies = buf.split(b"\n")
    assert replies[-1] == b"", buf  # every reply ends with exactly one newline
    return [json.loads(r) for r in replies[:-1]]


def _stale_socket(path: Path) -> None:
    """Leave a socket file nobody listens on (a crashed server's leftover)."""
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeServer]:
    n = RuntimeServer(tmp_path_factory.mktemp("sock") / "node")
    _stale_socket(n.socket_path)  # 03 §6: a stale file is replaced at start
    n.start()
    try:
        yield n
    finally:
        n.stop()
        n.socket_path.unlink(missing_ok=True)


def test_emergency_key_is_a_working_admin_key(node: RuntimeServer) -> None:
    """``EMERGENCY_CREATE_ADMIN_KEY`` → an active admin key that works on the admin API;
    default description, the emergency warning, a custom description."""
    reply = node.socket_command("EMERGENCY_CREATE_ADMIN_KEY")
    assert reply["code"] == "OK" and reply["message"] == "Success", reply
    assert re.fullmatch(r"req-\S+", reply["request_id"]) and isinstance(reply["timestamp"], int)
    d = reply["data"]
    assert set(d) == {"key_id", "key_secret", "created_at", "warning"}
    assert re.fullmatch(r"tmak-[0-9a-z]{26}", d["key_id"])
    assert re.fullmatch(r"tmas_[0-9A-Za-z]+", d["key_secret"])
    assert d["warning"] == EMERGENCY_WARNING
    assert abs(d["created_at"] - time.time() * 1000) < 60_000
    key = f"{d['key_id']}:{d['key_secret']}"
    with node.client(key) as c:
        r = c.get("/admin/v1/status/summary")
        assert r.status_code == 200, r.text
        assert set(r.json()["data"]) >= SUMMARY_FIELDS
        reply2 = node.socket_command("emergency_create_admin_key night shift recovery")
        assert reply2["code"] == "OK", reply2
        items = c.get("/admin/v1/keys", params={"size": 100}).json()["data"]["items"]
    by_id = {i["key_id"]: i for i in items}
    first, second = by_id[d["key_id"]], by_id[reply2["data"]["key_id"]]
    assert first["role"] == "admin" and first["status"] == "active"
    assert first["description"] == "Emergency Admin Key"
    assert second["description"] == "night shift recovery"
    node.admin_key = key


def test_status_is_the_status_summary(node: RuntimeServer) -> None:
    """``STATUS`` → the data of ``GET /admin/v1/status/summary``; node id per ruling R1."""
    reply = node.socket_command("STATUS")
    assert reply["code"] == "OK", reply
    d = reply["data"]
    assert set(d) >= SUMMARY_FIELDS, d
    assert re.fullmatch(r"tmnd-[0-9a-z]{26}", d["node_id"]), d["node_id"]
    assert d["cluster_state"] == "healthy"
    admin = node.admin_key or node.create_admin_key()
    with node.client(admin) as c:
        summary = c.get("/admin/v1/status/summary").json()["data"]
    assert summary["node_id"] == d["node_id"] and summary["version"] == d["version"]


def test_framing_and_unknown_command(node: RuntimeServer) -> None:
    """One reply line per command, many commands per connection, optional ``\\r``,
    case-insensitive names; unknown command or bad argument → ``TM-ARG-1001``."""
    replies = _session(
        node.socket_path,
        [b"status\r\n", b"\n", b"FROBNICATE now\n", b"SHUTDOWN soon\n", b"Status\n"],
    )
    assert [r["code"] for r in replies] == ["OK", "TM-ARG-1001", "TM-ARG-1001", "OK"], replies
    assert replies[1]["message"].lower() == "unknown command: frobnicate", replies[1]
    # The refused SHUTDOWN did not stop anything.
    assert httpx.get(node.base_url + "/ready").status_code == 200


def test_socket_file_mode_and_not_on_tcp(node: RuntimeServer) -> None:
    """The socket file has mode 0660; the process listens on no TCP port but HTTP's."""
    st = node.socket_path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)
    assert node.listening() == {("127.0.0.1", node.http_port)}


def test_reload_command(node: RuntimeServer) -> None:
    """``RELOAD`` = ``POST /admin/v1/config/reload``: ``{updated, ignored}``."""
    reply = node.socket_command("RELOAD")
    assert reply["code"] == "OK", reply
    assert reply["data"] == {"updated": [], "ignored": []}


def test_commands_audited_as_local_admin(node: RuntimeServer) -> None:
    """Socket commands are audited with ``operator_id=LOCAL_ADMIN``; no secret in audit."""
    reply = node.socket_command("EMERGENCY_CREATE_ADMIN_KEY")
    secret = reply["data"]["key_secret"]
    key = f"{reply['data']['key_id']}:{secret}"
    with node.client(key) as c:
        r = c.get("/admin/v1/audit/logs", params={"operator_id": "LOCAL_ADMIN", "size": 100})
    assert r.status_code == 200, r.text
    items = r.json()["data"]["items"]
    assert items and all(i["operator_id"] == "LOCAL_ADMIN" for i in items)
    created = [i for i in items if i["action"] == "EMERGENCY_KEY_CREATED"]
    assert any(reply["data"]["key_id"] in json.dumps(i) for i in created), created
    assert secret not in r.text
    time.sleep(1.5)  # the audit writer flushes asynchronously
    assert secret not in node.audit_text()


def test_shutdown_command_exits_0(node: RuntimeServer) -> None:
    """``SHUTDOWN 1`` → ``{status:"shutting_down", grace_seconds:1}``, exit 0.
    Stops the module's node: only the next test may follow."""
    reply = node.socket_command("SHUTDOWN 1")
    assert reply["code"] == "OK", reply
    assert reply["data"]["status"] == "shutting_down"
    assert reply["data"]["grace_seconds"] == 1
    assert node.proc is not None
    started = time.monotonic()
    assert wait_exit(node.proc, 30) == 0, node.log_tail()
    assert time.monotonic() - started < 20  # server.shutdown.timeout of the test config
    node.proc = None


def test_socket_file_removed_at_stop(node: RuntimeServer) -> None:
    """03 §6: the socket file is removed when the server stops."""
    if node.proc is not None:
        node.socket_command("SHUTDOWN 1")
        assert wait_exit(node.proc, 30) == 0
        node.proc = None
    assert not node.socket_path.exists()


def test_unusable_socket_dir_falls_back_to_data_dir(tmp_path: Path) -> None:
    """A socket path whose parent cannot be created → WARN naming the fallback under the
    data directory, and the socket works there."""
    root = Path(f"/tmp/tmt-fb-{time.monotonic_ns() % 10**9}")  # short: sun_path is 108 bytes
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the socket directory should be")
    wanted = blocker / "run" / "tokmesh-server.sock"
    n = RuntimeServer(
        root,
        {
            "server": {"local": {"socket_path": str(wanted)}},
            "storage": {
                "wal": {"dir": str(root / "data" / "wal")},
                "snapshot": {"dir": str(root / "data" / "snapshots")},
            },
        },
    )
    fallback = root / "data" / "tokmesh-server.sock"
    try:
        n.start()
        warns = [d for d in n.log_lines() if d.get("level") == "WARN"]
        assert any(str(fallback) in json.dumps(w) for w in warns), warns
        n.socket_path = fallback
        assert n.socket_command("STATUS")["code"] == "OK"
        assert stat.S_IMODE(fallback.stat().st_mode) == 0o660
    finally:
        n.stop()
        shutil.rmtree(root, ignore_errors=True)
