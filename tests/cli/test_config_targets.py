"""06 §12 checks 3, 4, 5, 8, 9, 21, 22: config file, targets, TLS, wire headers, probes."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests.cli.support import Cli, closed_port, recording_server
from tests.support.server import ServerProcess


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_config_search_order_first_file_only(cli: Cli, tmp_path: Path) -> None:
    xdg = cli.home / ".config" / "tokmesh-cli" / "cli.yaml"
    legacy = cli.home / ".tokmesh" / "cli.yaml"
    env_file = tmp_path / "env.yaml"
    _write(legacy, "defaults: {output: yaml}\n")
    assert cli.run("config", "cli", "show", "-o", "json").json()["data"]["config_file"] == str(
        legacy
    )
    _write(xdg, "defaults: {output: wide}\n")
    r = cli.run("config", "cli", "show", "-o", "json")
    assert r.json()["data"]["config_file"] == str(xdg)
    # files are never merged: the legacy file's output is not visible
    assert r.json()["data"]["config"]["defaults"]["output"] == "json"
    _write(env_file, "defaults: {timeout: 5s}\n")
    r = cli.run("config", "cli", "show", "-o", "json", TOKMESH_CLI_CONFIG=str(env_file))
    assert r.json()["data"]["config_file"] == str(env_file)


def test_config_errors_exit_78_and_permission_warning(cli: Cli, tmp_path: Path) -> None:
    r = cli.run("-c", str(tmp_path / "missing.yaml"), "version")
    assert r.code == 78 and "Code: TM-CLI-1001" in r.err
    both = _write(tmp_path / "both.yaml", "targets:\n  x: {url: 'http://h:1', socket: /tmp/s}\n")
    assert cli.run("-c", str(both), "version").code == 78
    r = cli.run("config", "cli", "validate", "-c", str(both))
    assert r.code == 78 and "exactly one of 'url' or 'socket'" in r.err
    dangling = _write(tmp_path / "d.yaml", "default: nope\n")
    assert cli.run("-c", str(dangling), "version").code == 78
    unpaired = _write(
        tmp_path / "u.yaml", "targets:\n  p: {url: 'https://h', tls: {cert_file: c.pem}}\n"
    )
    assert cli.run("-c", str(unpaired), "version").code == 78
    loose = _write(tmp_path / "loose.yaml", "defaults: {output: table}\n", 0o644)
    r = cli.run("-c", str(loose), "version")
    assert r.code == 0 and r.out.startswith("tokmesh-cli version ")
    assert f"Warning: Config file {loose} has insecure permissions (0644)." in r.err
    assert f"         Recommended: chmod 600 {loose}" in r.err
    r = cli.run("config", "cli", "validate", "-c", str(loose))
    assert r.code == 0 and r.out.strip() == f"✓ Configuration is valid: {loose}"


def test_show_redacts_keys_and_output_precedence(cli: Cli, tmp_path: Path) -> None:
    cfg = _write(
        tmp_path / "c.yaml",
        (
            "default: dev\n"
            "targets:\n  dev: {url: 'http://127.0.0.1:5080', api_key: 'tmak-x:tmas_SECRETVALUE'}\n"
            "defaults: {output: wide}\n"
        ),
    )
    r = cli.run("-c", str(cfg), "config", "cli", "show")
    assert "***REDACTED***" in r.out and "SECRETVALUE" not in r.out + r.err
    assert r.out.startswith(f"Config file: {cfg}")
    # -o yaml > TOKMESH_OUTPUT=json > defaults.output: wide
    assert cli.run("-c", str(cfg), "version").out.startswith("tokmesh-cli version")
    assert cli.run("-c", str(cfg), "version", TOKMESH_OUTPUT="json").json()["success"] is True
    r = cli.run("-c", str(cfg), "version", "-o", "yaml", TOKMESH_OUTPUT="json")
    assert r.out.startswith("success: true\n")


def test_default_ports_and_local_socket(cli: Cli, node: ServerProcess, tmp_path: Path) -> None:
    r = cli.run("-t", "http://127.0.0.1", "system", "health")
    assert r.code == 69 and "127.0.0.1:5080" in r.err
    r = cli.run("-t", "https://127.0.0.1", "system", "health")
    assert r.code == 69 and "127.0.0.1:5443" in r.err
    r = cli.run("-t", "local", "system", "status")  # no config: the built-in socket
    assert r.code == 69 and "/var/run/tokmesh-server/tokmesh-server.sock" in r.err
    assert "Code: TM-CLI-1002" in r.err
    r = cli.run("-t", "local", "session", "list")
    assert r.code == 64 and "not available over the local socket" in r.err
    r = cli.run("-t", f"socket:{node.socket_path}", "system", "status", "-o", "json")
    assert r.code == 0 and r.json()["data"]["node_id"].startswith("tmnd-")
    # a configured alias "local" with a url wins over the built-in socket
    assert node.admin_key
    cfg = _write(
        tmp_path / "l.yaml",
        f"targets:\n  local: {{url: '{node.base_url}', api_key: '{node.admin_key}'}}\n",
    )
    r = cli.run("-c", str(cfg), "-t", "local", "session", "list", "-q")
    assert r.code == 0, r.err
    assert cli.run("-t", "nope", "system", "status").code == 64


def test_no_target_and_no_key_without_tty(cli: Cli, node: ServerProcess, tmp_path: Path) -> None:
    cfg = _write(tmp_path / "empty.yaml", "targets: {}\n")
    r = cli.run("-c", str(cfg), "session", "list")
    assert r.code == 64 and r.err.startswith("Error: no target specified")
    r = cli.run("-t", node.base_url, "session", "list")
    assert r.code == 64 and "API key required for HTTP(S) target" in r.err


def test_wire_headers_on_get_and_post(cli: Cli) -> None:
    with recording_server(
        reply={
            "items": [],
            "total_items": 0,
            "page": 1,
            "size": 20,
            "cleaned_count": 0,
            "duration_ms": 1,
            "freed_memory_mb": 0,
        }
    ) as (url, seen):
        assert cli.run("-t", url, "-k", "TMAK-ABC:tmas_Sec", "session", "list").code == 0
        before = time.time_ns() // 1_000_000
        assert cli.run("-t", url, "-k", "tmak-abc:tmas_Sec", "system", "gc").code == 0
        assert cli.run("-t", url, "system", "health").code == 0
    get, post, health = seen
    assert get.method == "GET" and get.path.startswith("/sessions?")
    assert get.headers["Authorization"] == "Bearer tmak-abc:tmas_Sec"  # ID lower-cased only
    assert re.fullmatch(r"tokmesh-cli/\S+", get.headers["User-Agent"])
    assert get.headers["Accept"] == "application/json"
    assert "X-Nonce" not in get.headers and "X-Timestamp" not in get.headers
    assert post.method == "POST" and post.path == "/admin/v1/gc/trigger"
    assert json.loads(post.body) == {"type": "expired_sessions"}
    assert post.headers["Content-Type"] == "application/json"
    assert abs(int(post.headers["X-Timestamp"]) - before) < 10_000
    assert re.fullmatch(r"[0-9a-f]{16,}", post.headers["X-Nonce"])
    assert health.path == "/health" and "Authorization" not in health.headers


def test_anti_replay_required_server_accepts_cli_posts(
    cli: Cli, admin: tuple[str, str], node: ServerProcess
) -> None:
    url, key = admin
    # the node demands X-Timestamp/X-Nonce on every authenticated POST (R2)
    with node.client(key) as raw:
        assert raw.post("/sessions", json={"user_id": "r2"}).json()["code"] == "TM-AUTH-4014"
    r = cli.run("-t", url, "-k", key, "session", "create", "-u", "r2", "-q")
    assert r.code == 0, r.err


def test_health_ready_and_gc_type(cli: Cli, admin: tuple[str, str]) -> None:
    url, key = admin
    assert cli.run("-t", url, "system", "health").out == "OK\n"
    assert cli.run("-t", url, "system", "ready").code == 0
    with recording_server(status=503) as (bad, _):
        r = cli.run("-t", bad, "system", "health")
        assert r.code == 1 and r.err.startswith("Error: ")
    with recording_server(status=503, reply={"details": {"checks": {"storage": "restoring"}}}) as (
        bad,
        _,
    ):
        r = cli.run("-t", bad, "system", "ready")
        assert (r.code, r.err) == (1, "NOT READY: storage=restoring\n")
    assert cli.run("-t", f"http://127.0.0.1:{closed_port()}", "system", "health").code == 69
    assert cli.run("-t", url, "-k", key, "system", "gc", "--type", "bogus").code == 64


def test_tls_private_ca(cli: Cli, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = tmp_path / "ca.crt", tmp_path / "s.crt", tmp_path / "s.key"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    from tests.support.server import free_port

    port = free_port()
    node = ServerProcess(
        tmp_path / "tls",
        {
            "server": {
                "https": {
                    "enabled": True,
                    "address": f"127.0.0.1:{port}",
                    "tls": {"cert_file": str(cert_file), "key_file": str(key_file)},
                }
            }
        },
    )
    node.start()
    try:
        url = f"https://127.0.0.1:{port}"
        r = cli.run("-t", url, "system", "health")
        assert r.code == 69 and "Code: TM-CLI-1003" in r.err and "--tls-ca" in r.err
        assert cli.run("-t", url, "--tls-ca", str(ca_file), "system", "health").out == "OK\n"
        assert cli.run("-t", url, "system", "health", TOKMESH_TLS_CA=str(ca_file)).code == 0
        cfg = _write(
            tmp_path / "c.yaml", f"targets:\n  s: {{url: '{url}', tls: {{ca_file: ca.crt}}}}\n"
        )
        assert cli.run("-c", str(cfg), "-t", "s", "system", "ready").code == 0
    finally:
        node.stop()


def test_config_server_test_local_and_remote(cli: Cli, tmp_path: Path, node: ServerProcess) -> None:
    bad = _write(tmp_path / "bad.yaml", "server: [unclosed\n")
    dead = f"http://127.0.0.1:{closed_port()}"
    r = cli.run("-t", dead, "config", "server", "test", str(bad))
    assert r.code == 65 and r.out.startswith("[LOCAL] Testing configuration syntax...")
    assert cli.run("config", "server", "test", str(tmp_path / "none.yaml")).code == 64
    invalid = _write(tmp_path / "inv.yaml", "server:\n  http:\n    address: '127.0.0.1:70000'\n")
    r = cli.run("cfg", "test", str(invalid))
    assert r.code == 1 and "✗ Configuration validation failed:" in r.out
    assert re.search(r"  \[TM-CFG-\d{4}\] server\.http\.address: ", r.out)
    good = _write(tmp_path / "good.yaml", "telemetry:\n  logging:\n    level: debug\n")
    r = cli.run("config", "server", "test", str(good))
    assert (r.code, r.out.splitlines()[-1]) == (0, "✓ Configuration is valid.")
    with recording_server(
        reply={
            "valid": False,
            "errors": [
                {"code": "TM-CFG-1002", "field": "server.http.address", "message": "bad port"}
            ],
        }
    ) as (url, seen):
        r = cli.run(
            "-t", url, "-k", "tmak-a:tmas_b", "config", "server", "test", str(good), "--remote"
        )
    assert r.code == 1 and r.out.startswith(f"[REMOTE: {url.split('//')[1]}] Testing")
    assert "  [TM-CFG-1002] server.http.address: bad port" in r.out
    assert seen[0].path == "/admin/v1/config/validate"
    assert json.loads(seen[0].body) == {"config_yaml": good.read_text()}
    r = cli.run("-t", f"socket:{node.socket_path}", "config", "server", "reload")
    assert r.code == 0 and "Configuration reload triggered." in r.out
