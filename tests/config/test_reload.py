"""Reload diff and partial apply (05 §5, 03 §4.6 and its check 31)."""

from __future__ import annotations

from tokmesh.config.reload import apply_partial, reload_plan
from tokmesh.config.schema import build_config, default_config


def test_reload_plan_splits_hot_and_restart_keys() -> None:
    old = default_config()
    new = build_config(
        {
            "telemetry.logging.level": "debug",
            "server.http.address": "127.0.0.1:6000",
            "server.https.tls.cert_file": "/x/new.crt",
        }
    )
    updated, restart = reload_plan(old, new)
    assert updated == ["server.https.tls.cert_file", "telemetry.logging.level"]
    assert restart == ["server.http.address"]
    assert reload_plan(old, old) == ([], [])


def test_apply_level_is_updated_and_address_rejected() -> None:
    cfg = default_config()
    result = apply_partial(cfg, {"telemetry": {"logging": {"level": "debug"}}})
    assert result.errors == []
    assert result.updated == ["telemetry.logging.level"]
    assert result.rejected == []
    assert result.config.telemetry.logging.level == "debug"

    result = apply_partial(
        cfg,
        {"server": {"http": {"address": "0.0.0.0:1"}}, "telemetry": {"logging": {"level": "warn"}}},
    )
    assert result.rejected == ["server.http.address"]
    assert result.updated == ["telemetry.logging.level"]
    assert result.config.server.http.address == "127.0.0.1:5080"
    assert result.config.telemetry.logging.level == "warn"


def test_apply_invalid_value_applies_nothing() -> None:
    cfg = default_config()
    for bad in ("verbose", 3):
        result = apply_partial(cfg, {"telemetry": {"logging": {"level": bad}}})
        assert [(e.key, e.code.code) for e in result.errors] == [
            ("telemetry.logging.level", "TM-CFG-1001")
        ]
        assert result.updated == []
        assert result.config is cfg


def test_apply_unknown_paths_are_rejected() -> None:
    result = apply_partial(default_config(), {"bogus": {"x": 1}, "session": {"quota": 5}})
    assert result.errors == []
    assert result.rejected == ["bogus.x", "session.quota"]
    assert result.updated == []
