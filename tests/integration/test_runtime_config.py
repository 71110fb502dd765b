"""05 §17 loading, validation and audit checks with the real ``tokmesh-server`` binary.

Library-level config tests live in ``tests/config``; these run the console script with a
chosen environment, flags and files, and look at exit codes, stderr, the JSON log on
stdout and the sockets the process really listens on.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import yaml

from tests.integration.runtime_support import (
    RuntimeServer,
    clean_env,
    listening_tcp,
    parse_log,
    port_is_free,
    run_cli,
    server_exe,
    unwritable_dir,
    wait_exit,
    write_leaf,
)
from tests.support.server import free_port

NO_FILE_WARN = "No configuration file found, using built-in defaults"
HTTPS_OFF_WARN = (
    "HTTPS is disabled (enable server.https.enabled and configure server.https.tls.* "
    "for production)"
)


def _messages(lines: list[dict[str, Any]], level: str | None = None) -> list[str]:
    return [
        str(d.get("message", d.get("raw", "")))
        for d in lines
        if level is None or d.get("level") == level
    ]


def _config_loaded(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in lines if d.get("event") == "config_loaded"]


def _write_yaml(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def _leaf_files(root: Path) -> tuple[Path, Path]:
    """A valid 127.0.0.1 certificate/key pair under ``root/certs``."""
    certs = root / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    cert, key = certs / "server.crt", certs / "server.key"
    write_leaf(trustme.CA(), cert, key)
    return cert, key


# --- check 1 and 35: zero configuration ----------------------------------------------------------


def test_zero_config_binds_only_loopback_5080(tmp_path: Path) -> None:
    """Check 1: no file, no env → only 127.0.0.1:5080; no-file and HTTPS WARNs.
    Check 35: standalone logs nothing about seeds or joining."""
    if not port_is_free(5080):
        pytest.skip("port 5080 is busy on this machine")
    if Path("/etc/tokmesh-server/config.yaml").exists():
        pytest.skip("/etc/tokmesh-server/config.yaml exists: not a zero-config machine")
    run_dir = Path("/var/run/tokmesh-server")
    had_run_dir = run_dir.exists()
    env = clean_env({"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)})
    log_path = tmp_path / "out.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [server_exe()], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get("http://127.0.0.1:5080/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        assert listening_tcp(proc.pid) == {("127.0.0.1", 5080)}
        proc.terminate()
        assert wait_exit(proc, 40) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if not had_run_dir:
            # the default socket directory the zero-config run created (05 §3.1)
            with contextlib.suppress(OSError):
                (run_dir / "tokmesh-server.sock").unlink(missing_ok=True)
                run_dir.rmdir()
    lines = parse_log(log_path.read_text())
    warns = _messages(lines, "WARN")
    assert NO_FILE_WARN in warns, warns
    assert HTTPS_OFF_WARN in warns, warns
    (loaded,) = _config_loaded(lines)
    assert loaded["config_source"]["file"] is None
    assert loaded["config_summary"]["server_http"] == {
        "enabled": True,
        "address": "127.0.0.1:5080",
    }
    assert loaded["config_summary"]["cluster"] == {"enabled": False}
    text = log_path.read_text().lower()
    # 05 §1: standalone mode has no join or seed log lines.
    assert "seed" not in text and "join" not in text, text[-3000:]


# --- check 2: precedence file < env < flag ------------------------------------------------------


def test_precedence_file_env_flag(tmp_path: Path) -> None:
    """Check 2: the env address beats the file, a flag beats both; enabled stays the file's."""
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    node = RuntimeServer(
        tmp_path / "n",
        {"server": {"http": {"enabled": True, "address": f"127.0.0.1:{file_port}"}}},
        env={"TOKMESH_SERVER_HTTP_ADDRESS": f"127.0.0.1:{env_port}"},
    )
    node.http_port = env_port
    try:
        node.start()
        assert node.listening() == {("127.0.0.1", env_port)}
        node.stop()
        node.http_port = flag_port
        node.start(extra_args=[f"--server.http.address=127.0.0.1:{flag_port}"])
        assert node.listening() == {("127.0.0.1", flag_port)}
    finally:
        node.stop()
    first, second = _config_loaded(node.log_lines())
    assert first["config_source"]["env_overrides"] == ["TOKMESH_SERVER_HTTP_ADDRESS"]
    assert first["config_source"]["cli_overrides"] == []
    assert second["config_source"]["cli_overrides"] == ["--server.http.address"]
    for loaded in (first, second):
        assert loaded["config_summary"]["server_http"]["enabled"] is True
    assert first["config_summary"]["server_http"]["address"] == f"127.0.0.1:{env_port}"
    assert second["config_summary"]["server_http"]["address"] == f"127.0.0.1:{flag_port}"
    # Env values never reach the log; only names do (05 §2.4, §6).
    assert f"127.0.0.1:{env_port}" not in str(first["config_source"])


# --- checks 6 and 7: bad and legacy environment variables ---------------------------------------


def test_bad_and_legacy_env_vars_warn_and_are_ignored(tmp_path: Path) -> None:
    """Check 6: ``TOKMESH_CLUSTER_ENABLED=maybe`` → WARN naming the variable, not the value.
    Check 7: ``TOKMESH_SERVER_HTTP_ADDR`` → WARN hinting ``TOKMESH_SERVER_HTTP_ADDRESS``;
    the address is unchanged."""
    node = RuntimeServer(
        tmp_path / "n",
        env={"TOKMESH_CLUSTER_ENABLED": "maybe", "TOKMESH_SERVER_HTTP_ADDR": "0.0.0.0:1"},
    )
    try:
        node.start()
        assert node.listening() == {("127.0.0.1", node.http_port)}
        assert httpx.get(node.base_url + "/ready").status_code == 200
    finally:
        node.stop()
    lines = node.log_lines()
    warns = _messages(lines, "WARN")
    bad = [w for w in warns if "TOKMESH_CLUSTER_ENABLED" in w]
    assert bad and all("maybe" not in w for w in bad), warns
    legacy = [w for w in warns if "TOKMESH_SERVER_HTTP_ADDR" in w]
    assert any("TOKMESH_SERVER_HTTP_ADDRESS" in w for w in legacy), warns
    assert "maybe" not in node.log_text() and "0.0.0.0:1" not in node.log_text()
    (loaded,) = _config_loaded(lines)
    assert loaded["config_summary"]["cluster"] == {"enabled": False}
    assert loaded["config_source"]["env_overrides"] == []


# --- checks 8, 9, 10, 13: fatal starts ------------------------------------------------------------


def test_missing_explicit_config_file_exits_1(tmp_path: Path) -> None:
    """Check 8: ``--config`` or ``TOKMESH_SERVER_CONFIG_FILE`` naming a missing file → 1003."""
    nope = tmp_path / "nope.yaml"
    by_flag = run_cli(["--config", str(nope)], cwd=tmp_path)
    by_env = run_cli([], cwd=tmp_path, env={"TOKMESH_SERVER_CONFIG_FILE": str(nope)})
    for r in (by_flag, by_env):
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "TM-CFG-1003" in r.stderr, r.stderr
        assert str(nope) in r.stderr


def test_missing_explicit_config_file_creates_nothing(tmp_path: Path) -> None:
    """A start refused for a missing main file must not create the default data dirs."""
    r = run_cli(["--config", str(tmp_path / "nope.yaml")], cwd=tmp_path)
    assert r.returncode == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """Check 9: a YAML error on line 7 → exit 1, the message has the path and line 7."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "server:\n"
        "  http:\n"
        "    enabled: true\n"
        "telemetry:\n"
        "  logging:\n"
        "    level: info\n"
        "  metrics: [unclosed\n"
    )
    r = run_cli(["--config", str(bad)], cwd=tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert str(bad) in r.stderr, r.stderr
    assert "line 7" in r.stderr, r.stderr


def test_flags_parse_and_unknown_flag_exits_2(tmp_path: Path) -> None:
    """Check 10: ``--server.http.enabled=false --server.https.enabled`` parses (bare flag =
    true); ``--bogus.flag=1`` is a usage error, exit 2."""
    cert, key = _leaf_files(tmp_path)
    cfg = _write_yaml(
        tmp_path / "config.yaml",
        {
            "server": {
                "https": {
                    "address": f"127.0.0.1:{free_port()}",
                    "tls": {"cert_file": str(cert), "key_file": str(key)},
                },
                "local": {"socket_path": str(tmp_path / "s.sock")},
            },
            "storage": {"wal": {"dir": "./d/wal"}, "snapshot": {"dir": "./d/snap"}},
        },
    )
    ok = run_cli(
        ["--config", str(cfg), "--test", "--server.http.enabled=false", "--server.https.enabled"],
        cwd=tmp_path,
    )
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    assert "--server.http.enabled" in ok.stdout and "--server.https.enabled" in ok.stdout
    # The bare flag really means true: without certificates it makes validation fail,
    # while an explicit =false keeps HTTPS off.
    nocert = _write_yaml(tmp_path / "nocert.yaml", {"storage": {"wal": {"dir": "./d/w"}}})
    on = run_cli(["--config", str(nocert), "--test", "--server.https.enabled"], cwd=tmp_path)
    assert on.returncode == 1 and "server.https.tls.cert_file" in on.stdout, on.stdout
    off = run_cli(["--config", str(nocert), "--test", "--server.https.enabled=false"], cwd=tmp_path)
    assert off.returncode == 0, (off.stdout, off.stderr)
    bogus = run_cli(["--config", str(cfg), "--bogus.flag=1"], cwd=tmp_path)
    assert bogus.returncode == 2, (bogus.stdout, bogus.stderr)
    assert "bogus" in bogus.stderr


def test_range_error_report_on_stderr(tmp_path: Path) -> None:
    """Check 13: ``server.http.address: 127.0.0.1:99999`` → exit 1; stderr carries
    ``TM-CFG-1002``, the dotted path and the env-var solution."""
    cfg = _write_yaml(
        tmp_path / "config.yaml", {"server": {"http": {"address": "127.0.0.1:99999"}}}
    )
    r = run_cli(["--config", str(cfg)], cwd=tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    err = r.stderr
    assert "[FATAL] Configuration validation failed at startup" in err, err
    assert "Error 1/1: TM-CFG-1002" in err, err
    assert "Path: server.http.address" in err
    assert "Value: 127.0.0.1:99999" in err
    assert "export TOKMESH_SERVER_HTTP_ADDRESS=" in err
    assert "Exit code: 1" in err
    # Nothing started: no listener, no JSON log line of a running server.
    assert "tokmesh-server ready" not in r.stdout and "listening" not in r.stdout


# --- check 12: config.d fragments ---------------------------------------------------------------


def test_config_d_fragment_overrides_file_and_env_overrides_fragment(tmp_path: Path) -> None:
    """Check 12: ``config.d/10-a.yaml`` overrides the main file; env overrides the fragment.
    Also check 24's default form: exactly one ``config_loaded`` line with ``config_summary``
    and the env names (never values)."""
    node = RuntimeServer(
        tmp_path / "n",
        {"telemetry": {"logging": {"level": "info"}, "metrics": {"auth_enabled": True}}},
        env={"TOKMESH_TELEMETRY_METRICS_AUTH_ENABLED": "true"},
    )
    frag = _write_yaml(
        node.root / "config.d" / "10-a.yaml",
        {"telemetry": {"logging": {"level": "debug"}, "metrics": {"auth_enabled": False}}},
    )
    try:
        node.start()
        # The env's auth_enabled=true beat the fragment's false: /metrics wants a key.
        r = httpx.get(node.base_url + "/metrics")
        assert r.status_code == 401 and r.json()["code"] == "TM-AUTH-4010"
        admin = node.create_admin_key()
        with node.client(admin) as c:
            level = c.get("/admin/v1/config").json()["data"]["telemetry"]["logging"]["level"]
        assert level == "debug"
    finally:
        node.stop()
    (loaded,) = _config_loaded(node.log_lines())
    assert loaded["level"] == "INFO"
    src = loaded["config_source"]
    assert src["file"] == str(node.config_path)
    assert [Path(f).name for f in src["fragments"]] == [frag.name]
    assert src["env_overrides"] == ["TOKMESH_TELEMETRY_METRICS_AUTH_ENABLED"]
    summary = loaded["config_summary"]
    assert summary["telemetry"]["logging.level"] == "debug"
    assert summary["telemetry"]["metrics.auth_enabled"] is True
    assert "effective_config" not in loaded


# --- check 22: --test -----------------------------------------------------------------------------


def test_test_mode_exit_codes_bind_nothing_create_nothing(tmp_path: Path) -> None:
    """Check 22: ``--test`` valid → 0, invalid → 1 with the full report; no port bound, no
    directory or socket created."""
    port = free_port()
    sock_path = tmp_path / "adm.sock"
    base = {
        "server": {
            "http": {"address": f"127.0.0.1:{port}"},
            "local": {"socket_path": str(sock_path)},
        },
        "storage": {"wal": {"dir": "./data/wal"}, "snapshot": {"dir": "./data/snapshots"}},
    }
    good = _write_yaml(tmp_path / "good.yaml", base)
    bad_doc = yaml.safe_load(yaml.safe_dump(base))
    bad_doc["server"]["https"] = {"enabled": True, "address": f"127.0.0.1:{free_port()}"}
    bad_doc["session"] = {"ttl": {"default": "30s"}}
    bad = _write_yaml(tmp_path / "bad.yaml", bad_doc)
    # Hold the configured port: a run that tried to bind it could not pass.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen(1)
        ok = run_cli(["--config", str(good), "--test"], cwd=tmp_path)
        fail = run_cli(["--config", str(bad), "--test"], cwd=tmp_path)
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    assert "[OK] Configuration is valid" in ok.stdout
    assert f"Configuration file: {good}" in ok.stdout
    assert fail.returncode == 1, (fail.stdout, fail.stderr)
    report = fail.stdout + fail.stderr
    assert "Error 1/3:" in report and "Error 3/3:" in report, report
    assert "server.https.tls.key_file" in report
    assert "TM-CFG-1006" in report and "server.https.tls.cert_file" in report
    assert "TM-CFG-1002" in report and "session.ttl.default" in report
    assert not (tmp_path / "data").exists()
    assert not sock_path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "good.yaml"]


# --- check 23: unwritable WAL directory ---------------------------------------------------------


def test_unwritable_wal_dir_is_1004(tmp_path: Path) -> None:
    """Check 23: an existing but unwritable ``storage.wal.dir`` → exit 1, ``TM-CFG-1004``."""
    with unwritable_dir(tmp_path / "ro") as ro:
        cfg = _write_yaml(
            tmp_path / "config.yaml",
            {
                "server": {
                    "http": {"address": f"127.0.0.1:{free_port()}"},
                    "local": {"socket_path": str(tmp_path / "s.sock")},
                },
                "storage": {"wal": {"dir": str(ro)}, "snapshot": {"dir": "./snap"}},
            },
        )
        r = run_cli(["--config", str(cfg)], cwd=tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "TM-CFG-1004" in r.stderr and "Path: storage.wal.dir" in r.stderr, r.stderr


# --- checks 24 and 25: config_loaded dump, no secret anywhere -------------------------------------


def test_dump_config_redacts_and_secrets_never_printed(tmp_path: Path) -> None:
    """Check 24: one ``config_loaded`` line; with ``dump_config`` its ``effective_config``
    shows ``wal_encryption_key`` as ``***REDACTED***`` and the ``key_file`` path.
    Check 25: the key value and ``PRIVATE KEY`` blocks never appear in stdout, stderr or
    the admin config API."""
    wal_key = os.urandom(32).hex()
    root = tmp_path / "n"
    cert, key = _leaf_files(root)
    https_port = free_port()
    node = RuntimeServer(
        root,
        {
            "server": {
                "https": {
                    "enabled": True,
                    "address": f"127.0.0.1:{https_port}",
                    "tls": {"cert_file": str(cert), "key_file": str(key)},
                }
            }
        },
        env={"TOKMESH_SECURITY_STORAGE_WAL_ENCRYPTION_KEY": wal_key},
    )
    try:
        node.start(extra_args=["--telemetry.logging.dump-config"])
        admin = node.create_admin_key()
        with node.client(admin) as c:
            merged = c.get("/admin/v1/config", params={"merged": "true"})
            hot = c.get("/admin/v1/config")
        assert merged.status_code == 200 and hot.status_code == 200
        data = merged.json()["data"]
        assert data["security"]["storage"]["wal_encryption_key"] == "***REDACTED***"
        assert data["server"]["https"]["tls"]["key_file"] == str(key)
    finally:
        node.stop()
    lines = node.log_lines()
    (loaded,) = _config_loaded(lines)
    src = loaded["config_source"]
    assert src["env_overrides"] == ["TOKMESH_SECURITY_STORAGE_WAL_ENCRYPTION_KEY"]
    assert src["cli_overrides"] == ["--telemetry.logging.dump-config"]
    eff = loaded["effective_config"]
    assert "config_summary" not in loaded
    assert eff["security"]["storage"]["wal_encryption_key"] == "***REDACTED***"
    assert eff["server"]["https"]["tls"]["key_file"] == str(key)
    assert eff["server"]["https"]["tls"]["cert_file"] == str(cert)
    assert eff["telemetry"]["logging"]["dump_config"] is True
    # 05 §4: dump_config=true is one of the startup WARNs.
    assert any("dump_config" in w for w in _messages(lines, "WARN")), _messages(lines, "WARN")
    everything = node.log_text() + merged.text + hot.text + node.audit_text()
    for needle in (wal_key, wal_key.upper(), "PRIVATE KEY", key.read_text().splitlines()[1]):
        assert needle not in everything, needle
