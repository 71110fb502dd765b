"""Sanitized dumps and reports (spec 05 §4, §6; 02 §17): secrets never shown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tokmesh.config.dump import (
    config_loaded_event,
    config_summary,
    config_tree,
    format_issues,
    format_test_report,
    sanitized_config,
)
from tokmesh.config.loader import load_config, load_yaml_text
from tokmesh.config.schema import build_config, config_to_flat, default_config

KEY = "0123456789abcdef" * 4


def test_tree_is_file_form_and_reloads_to_the_same_config(tmp_path: Path) -> None:
    cfg = build_config(
        {
            "session.ttl.default": 5400.0,
            "cluster.rebalance.max_rate": 8 * 1024 * 1024 * 2,
            "security.auth.allow_list": ("10.0.0.0/8",),
            "storage.wal.dir": str(tmp_path / "w"),
            "storage.snapshot.dir": str(tmp_path / "s"),
        }
    )
    tree = config_tree(cfg)
    assert tree["session"]["ttl"]["default"] == "1h30m"
    assert tree["server"]["http"]["max_body_size"] == "100MB"
    assert tree["cluster"]["rebalance"]["max_rate"] == "2MBps"
    assert tree["security"]["auth"]["allow_list"] == ["10.0.0.0/8"]
    reloaded = load_yaml_text(yaml.safe_dump(tree), base_dir=tmp_path)
    assert reloaded.errors == []
    assert config_to_flat(reloaded.config) == config_to_flat(cfg)


def test_sanitized_config_redacts_the_key_and_keeps_file_paths() -> None:
    cfg = build_config(
        {
            "security.storage.wal_encryption_key": KEY,
            "server.https.tls.key_file": "/etc/tokmesh-server/certs/server.key",
            "cluster.tls.key_file": "/etc/tokmesh-server/certs/node.key",
        }
    )
    tree = sanitized_config(cfg)
    assert tree["security"]["storage"]["wal_encryption_key"] == "***REDACTED***"
    assert tree["server"]["https"]["tls"]["key_file"] == "/etc/tokmesh-server/certs/server.key"
    assert tree["cluster"]["tls"]["key_file"] == "/etc/tokmesh-server/certs/node.key"
    assert tree["telemetry"]["metrics"]["auth_enabled"] is True
    assert KEY not in json.dumps(tree)
    empty = sanitized_config(default_config())
    assert empty["security"]["storage"]["wal_encryption_key"] == ""


def test_config_loaded_event_summary_and_effective_config(tmp_path: Path) -> None:
    """05 §17 check 24 (library part)."""
    env = {
        "TOKMESH_SECURITY_STORAGE_WAL_ENCRYPTION_KEY": KEY,
        "TOKMESH_SERVER_HTTP_ADDRESS": "127.0.0.1:7001",
    }
    result = load_config(None, env, {"--cluster.enabled": "false"}, tmp_path, search_paths=[])
    event = config_loaded_event(result)
    assert event["event"] == "config_loaded"
    assert event["config_source"] == {
        "file": None,
        "fragments": [],
        "env_overrides": [
            "TOKMESH_SECURITY_STORAGE_WAL_ENCRYPTION_KEY",
            "TOKMESH_SERVER_HTTP_ADDRESS",
        ],
        "cli_overrides": ["--cluster.enabled"],
    }
    assert event["config_summary"] == config_summary(result.config)
    assert event["config_summary"]["server_http"] == {"enabled": True, "address": "127.0.0.1:7001"}
    assert "effective_config" not in event

    env["TOKMESH_TELEMETRY_LOGGING_DUMP_CONFIG"] = "true"
    result = load_config(None, env, {}, tmp_path, search_paths=[])
    event = config_loaded_event(result)
    assert "config_summary" not in event
    effective = event["effective_config"]
    assert effective["security"]["storage"]["wal_encryption_key"] == "***REDACTED***"
    assert KEY not in json.dumps(event)


def test_bad_secret_is_reported_redacted(tmp_path: Path) -> None:
    """05 §17 check 25: the key value never appears, even when it is the error."""
    from tokmesh.config.validate import load_and_validate

    bad = KEY[:-1]
    conf = tmp_path / "config.yaml"
    conf.write_text(f"security:\n  storage:\n    wal_encryption_key: '{bad}'\n")
    result, report = load_and_validate(str(conf), {}, {}, tmp_path, search_paths=[])
    assert [(e.key, e.code.code) for e in report.errors] == [
        ("security.storage.wal_encryption_key", "TM-CFG-1001")
    ]
    text = format_issues(report.errors) + format_test_report(result, report.errors, report.warnings)
    assert "***REDACTED***" in text
    assert bad not in text
    assert bad not in json.dumps([e.to_api() for e in report.errors])


def test_env_values_never_appear_in_reports(tmp_path: Path) -> None:
    from tokmesh.config.validate import load_and_validate

    env = {
        "TOKMESH_SERVER_HTTP_ADDRESS": "127.0.0.1:99999",
        "TOKMESH_SECURITY_AUTH_ALLOW_LIST": "10.0.0.0/99",
        "TOKMESH_CLUSTER_ENABLED": "tmas_secretsecret",
    }
    result, report = load_and_validate(None, env, {}, tmp_path, search_paths=[])
    assert sorted((e.key, e.code.code) for e in report.errors) == [
        ("security.auth.allow_list[0]", "TM-CFG-1001"),
        ("server.http.address", "TM-CFG-1002"),
    ]
    text = format_issues(report.errors) + format_test_report(result, report.errors, report.warnings)
    for value in env.values():
        assert value not in text
    assert "(set by TOKMESH_SERVER_HTTP_ADDRESS, value not shown)" in text


def test_private_key_material_never_printed(certs: Any, tmp_path: Path) -> None:
    """Point cert_file at the key (not a certificate) and key_file at the cert."""
    from tokmesh.config.validate import load_and_validate

    conf = tmp_path / "config.yaml"
    conf.write_text(
        "server:\n  https:\n    enabled: true\n"
        f"    tls: {{cert_file: {certs.key}, key_file: {certs.cert}}}\n"
    )
    result, report = load_and_validate(str(conf), {}, {}, tmp_path, search_paths=[])
    assert {e.code.code for e in report.errors} == {"TM-CFG-1007"}
    text = format_issues(report.errors) + format_test_report(result, report.errors, report.warnings)
    assert "PRIVATE KEY" not in text
    assert "BEGIN" not in text


def test_test_report_ok_and_failed(tmp_path: Path) -> None:
    from tokmesh.config.validate import load_and_validate

    result, report = load_and_validate(None, {}, {}, tmp_path, search_paths=[])
    text = format_test_report(result, report.errors, report.warnings)
    assert "[OK] Configuration is valid" in text
    assert "[WARN] HTTPS is disabled" in text

    result, report = load_and_validate(
        None, {}, {"--storage.wal.sync-mode": "async"}, tmp_path, search_paths=[]
    )
    text = format_test_report(result, report.errors, report.warnings)
    assert "[OK]" not in text
    assert "Error 1/1: TM-CFG-1001" in text
    assert "Path: storage.wal.sync_mode" in text
    assert "Flag overrides: --storage.wal.sync-mode" in text


def test_load_text_unknown_key_is_a_warning(tmp_path: Path) -> None:
    result = load_yaml_text("server: {htp: {}}\n", base_dir=tmp_path)
    assert result.errors == []
    assert result.warnings == ["unknown configuration key 'server.htp' in config_yaml (ignored)"]
