"""Configuration hot reload on a running node: SIGHUP (05 §17 checks 28-29, 05 §5) and the
admin configuration routes (03 §8 check 31, 03 §4.6)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.runtime_support import RuntimeServer
from tests.support.server import free_port

P = "/admin/v1"


class ReloadNode:
    """A running node, its admin client and the file it was started with."""

    def __init__(self, node: RuntimeServer, admin: str) -> None:
        self.node = node
        self.admin_key = admin
        self.admin = node.client(admin)
        self.base = yaml.safe_load(node.config_path.read_text())

    def write(self, mutate: Any = None) -> dict[str, Any]:
        """Rewrite the main file from the startup content, changed by ``mutate(doc)``."""
        doc: dict[str, Any] = yaml.safe_load(yaml.safe_dump(self.base))
        if mutate is not None:
            mutate(doc)
        self.node.config_path.write_text(yaml.safe_dump(doc))
        return doc

    def level(self) -> str:
        """The live log level from ``GET /admin/v1/config``."""
        r = self.admin.get(f"{P}/config")
        assert r.status_code == 200, r.text
        return str(r.json()["data"]["telemetry"]["logging"]["level"])

    def reset(self) -> None:
        """Startup file content and level ``info``."""
        self.write()
        r = self.admin.post(f"{P}/config/apply", json={"telemetry": {"logging": {"level": "info"}}})
        assert r.status_code == 200, r.text
        assert self.level() == "info"

    def sighup(self) -> int:
        """Send SIGHUP; returns the log index to search from."""
        since = len(self.node.log_lines())
        self.node.signal(signal.SIGHUP)
        return since


@pytest.fixture(scope="module")
def rn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReloadNode]:
    node = RuntimeServer(tmp_path_factory.mktemp("reload") / "node")
    node.start()
    try:
        r = ReloadNode(node, node.create_admin_key())
        yield r
        r.admin.close()
    finally:
        node.stop()


def _set_debug_and_move(doc: dict[str, Any], port: int) -> None:
    doc["telemetry"]["logging"]["level"] = "debug"
    doc["server"]["http"]["address"] = f"127.0.0.1:{port}"


def _reloaded(d: dict[str, Any]) -> bool:
    return d.get("message") == "config_reloaded" or d.get("event") == "config_reloaded"


def test_sighup_applies_level_and_keeps_port(rn: ReloadNode) -> None:
    """Check 28: edit ``level: debug`` and ``server.http.address``, SIGHUP → the level is
    applied, the port is unchanged and the new address is not bound."""
    rn.reset()
    new_port = free_port()
    rn.write(lambda d: _set_debug_and_move(d, new_port))
    since = rn.sighup()
    line = rn.node.wait_for_log(_reloaded, 10, since)
    assert line["updated"] == ["telemetry.logging.level"], line
    assert line["ignored"] == ["server.http.address"], line
    assert rn.node.listening() == {("127.0.0.1", rn.node.http_port)}
    assert rn.node.proc is not None and rn.node.proc.poll() is None
    # Only the level in the file (from a running level of info): applied and visible.
    rn.reset()
    rn.write(lambda d: d["telemetry"]["logging"].update(level="debug"))
    since = rn.sighup()
    line = rn.node.wait_for_log(_reloaded, 10, since)
    assert line["updated"] == ["telemetry.logging.level"] and line["ignored"] == [], line
    assert rn.level() == "debug"
    rn.reset()


def test_sighup_level_visible_when_restart_keys_changed_too(rn: ReloadNode) -> None:
    """Check 28: after SIGHUP with ``level: debug`` plus a changed address, the running
    config reports ``debug`` at once."""
    rn.reset()
    rn.write(lambda d: _set_debug_and_move(d, free_port()))
    since = rn.sighup()
    rn.node.wait_for_log(_reloaded, 10, since)
    try:
        assert rn.level() == "debug"
    finally:
        rn.reset()


def test_sighup_warns_restart_required(rn: ReloadNode) -> None:
    """Check 28: the changed restart-only keys are listed in a "restart required" WARN."""
    rn.reset()
    rn.write(lambda d: _set_debug_and_move(d, free_port()))
    since = rn.sighup()
    rn.node.wait_for_log(_reloaded, 10, since)
    rn.reset()
    warns = [
        d
        for d in rn.node.log_lines()[since:]
        if d.get("level") == "WARN" and "restart required" in str(d).lower()
    ]
    assert warns and "server.http.address" in str(warns[0]), warns


def test_sighup_with_invalid_file_keeps_old_config(rn: ReloadNode) -> None:
    """Check 29: SIGHUP with an invalid file → ERROR, nothing applied (not even the valid
    hot key in the same file), the process keeps serving."""
    rn.reset()

    def broken(d: dict[str, Any]) -> None:
        d["telemetry"]["logging"]["level"] = "debug"
        d["server"]["http"]["address"] = "127.0.0.1:99999"

    rn.write(broken)
    since = rn.sighup()
    err = rn.node.wait_for_log(lambda d: d.get("level") == "ERROR", 10, since)
    assert "server.http.address" in str(err), err
    assert rn.level() == "info"
    assert rn.node.listening() == {("127.0.0.1", rn.node.http_port)}
    # YAML that does not parse is refused the same way.
    rn.node.config_path.write_text("server: [unclosed\n")
    since = rn.sighup()
    rn.node.wait_for_log(lambda d: d.get("level") == "ERROR", 10, since)
    assert rn.level() == "info"
    assert httpx.get(rn.node.base_url + "/ready").status_code == 200
    rn.reset()


def test_config_routes(rn: ReloadNode) -> None:
    """03 §8 check 31: apply ``debug`` → ``updated`` and effective at once; apply an address
    → ``rejected``; validate port 70000 → 200 ``valid:false`` with ``TM-CFG-1002`` and the
    field; reload → ``{updated, ignored}``; apply is audited ``CONFIG_UPDATED``."""
    rn.reset()
    a = rn.admin
    # reload = SIGHUP: a restart-only change is listed in "ignored" ...
    rn.write(lambda doc: doc["server"]["http"].update(address=f"127.0.0.1:{free_port()}"))
    r = a.post(f"{P}/config/reload")
    assert r.status_code == 200, r.text
    assert r.json()["data"] == {"updated": [], "ignored": ["server.http.address"]}
    # ... and a level change in the file is applied and listed in "updated".
    rn.write(lambda doc: doc["telemetry"]["logging"].update(level="warn"))
    r = a.post(f"{P}/config/reload")
    assert r.status_code == 200, r.text
    assert r.json()["data"] == {"updated": ["telemetry.logging.level"], "ignored": []}
    assert rn.level() == "warn"

    rn.reset()
    r = a.post(f"{P}/config/apply", json={"telemetry": {"logging": {"level": "debug"}}})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["updated"] == ["telemetry.logging.level"]
    assert r.json()["data"]["rejected"] == []
    assert rn.level() == "debug"
    r = a.post(f"{P}/config/apply", json={"server": {"http": {"address": "127.0.0.1:1"}}})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["rejected"] == ["server.http.address"]
    assert r.json()["data"]["updated"] == []
    assert rn.node.listening() == {("127.0.0.1", rn.node.http_port)}

    r = a.post(
        f"{P}/config/validate",
        json={"config_yaml": "server:\n  http:\n    address: 127.0.0.1:70000\n"},
    )
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert d["valid"] is False
    assert any(
        e["code"] == "TM-CFG-1002" and e["field"] == "server.http.address" for e in d["errors"]
    ), d

    admin_id = rn.admin_key.split(":", 1)[0]
    r = a.get(f"{P}/audit/logs", params={"action": "CONFIG_UPDATED"})
    assert r.status_code == 200, r.text
    items = r.json()["data"]["items"]
    assert items and all(i["operator_id"] == admin_id for i in items), items
    rn.reset()
