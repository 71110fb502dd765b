"""The schema holds every key of spec 05 §3 with its default, env name and reload flag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from tokmesh.config.loader import load_config
from tokmesh.config.schema import (
    ENV_TO_KEY,
    FLAG_KEYS,
    KEYS,
    Config,
    Kind,
    build_config,
    changed_keys,
    config_to_flat,
    default_config,
)

MB = 1024 * 1024

# The 71 keys of 05 §3 with their defaults in canonical form (seconds, bytes, bits/s).
SPEC_DEFAULTS: dict[str, Any] = {
    "server.http.enabled": True,
    "server.http.address": "127.0.0.1:5080",
    "server.http.max_body_size": 100 * MB,
    "server.https.enabled": False,
    "server.https.address": "127.0.0.1:5443",
    "server.https.tls.cert_file": "",
    "server.https.tls.key_file": "",
    "server.https.tls.client_ca_file": "",
    "server.redis.enabled": False,
    "server.redis.address": "127.0.0.1:6379",
    "server.redis_tls.enabled": False,
    "server.redis_tls.address": "127.0.0.1:6380",
    "server.redis_tls.tls.cert_file": "",
    "server.redis_tls.tls.key_file": "",
    "server.redis_tls.tls.client_ca_file": "",
    "server.shutdown.timeout": 30.0,
    "server.shutdown.grace_period": 5.0,
    "server.local.socket_path": "/var/run/tokmesh-server/tokmesh-server.sock",
    "cluster.enabled": False,
    "cluster.node_id": "",
    "cluster.listen_address": "127.0.0.1:5343",
    "cluster.advertise_address": "",
    "cluster.tls.cert_file": "",
    "cluster.tls.key_file": "",
    "cluster.tls.client_ca_file": "",
    "cluster.discovery.seeds": (),
    "cluster.bootstrap.expect_nodes": 1,
    "cluster.data.replication_factor": 1,
    "cluster.raft.snapshot_threshold": 10000,
    "cluster.raft.trailing_logs": 1000,
    "cluster.rebalance.max_rate": 20_000_000,
    "cluster.rebalance.min_ttl": 60.0,
    "cluster.shutdown.timeout": 60.0,
    "cluster.shutdown.force_leave": False,
    "session.ttl.default": 7200.0,
    "session.ttl.max": 720 * 3600.0,
    "session.ttl.gc_interval": 0.1,
    "session.ttl.sample_size": 20,
    "session.quota.max_per_user": 50,
    "security.auth.allow_list": (),
    "security.auth.rotation_grace": 3600.0,
    "security.auth.cache_capacity": 10000,
    "security.auth.cache_ttl": 60.0,
    "security.auth.argon2.memory": 16384,
    "security.auth.argon2.iterations": 2,
    "security.auth.argon2.parallelism": 2,
    "security.anti_replay.timestamp_window": 30.0,
    "security.anti_replay.nonce_ttl": 60.0,
    "security.anti_replay.nonce_cache_size": 100000,
    "security.storage.wal_encryption_key": "",
    "security.network.trusted_proxies": (),
    "storage.wal.dir": "./data/wal",
    "storage.wal.sync_mode": "batch",
    "storage.wal.sync_interval": 1.0,
    "storage.wal.batch_count": 100,
    "storage.wal.batch_size": MB,
    "storage.snapshot.dir": "./data/snapshots",
    "storage.snapshot.interval": 3600.0,
    # 1GB in the spec; issue 17 chose 100MB from a restart measurement (docs/decisions.md).
    "storage.snapshot.threshold": 100 * MB,
    "storage.snapshot.retention_count": 5,
    "storage.snapshot.retention_days": 7,
    "storage.badger.gc_interval": 300.0,
    "storage.badger.gc_threshold": 0.7,
    "storage.badger.cache_size": 64 * MB,
    "telemetry.metrics.auth_enabled": True,
    "telemetry.logging.level": "info",
    "telemetry.logging.dump_config": False,
    "telemetry.tracing.enabled": False,
    "telemetry.tracing.endpoint": "",
    "telemetry.tracing.sampling_ratio": 0.01,
    "telemetry.audit.retention_days": 90,
}

# Keys added beyond 05 §3 (00-README "Beyond the original documents", R2, HTTP engine).
ADDED_DEFAULTS: dict[str, Any] = {
    "server.http.engine": "native",
    "server.http.header_timeout": 10.0,
    "server.redis.login_timeout": 10.0,
    "server.max_connections": 0,
    "session.quota_policy": "refuse",
    "session.touch_min_interval": 0.0,
    "security.anti_replay.required": False,
    "security.tls.ciphers": "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20",
    # The control plane is etcd (ruling R9).
    "cluster.etcd.endpoints": (),
    "cluster.etcd.prefix": "/tokmesh/",
    "cluster.etcd.username": "",
    "cluster.etcd.password": "",
    "cluster.etcd.lease_ttl": 5.0,
    "cluster.replication.ack": "revoke",
    "cluster.etcd.request_timeout": 5.0,
    "cluster.etcd.tls.ca_file": "",
    "cluster.etcd.tls.cert_file": "",
    "cluster.etcd.tls.key_file": "",
    # The dashboard and the event stream (issues 16 and 14).
    "server.http.ui.enabled": True,
    "events.include_touch": False,
}

HOT = {
    "server.https.tls.cert_file",
    "server.https.tls.key_file",
    "server.https.tls.client_ca_file",
    "server.redis_tls.tls.cert_file",
    "server.redis_tls.tls.key_file",
    "server.redis_tls.tls.client_ca_file",
    "cluster.tls.cert_file",
    "cluster.tls.key_file",
    "cluster.tls.client_ca_file",
    "telemetry.logging.level",
}


def test_spec_has_71_keys_and_schema_has_them_all() -> None:
    assert len(SPEC_DEFAULTS) == 71
    assert set(KEYS) == set(SPEC_DEFAULTS) | set(ADDED_DEFAULTS)


@pytest.mark.parametrize("key", sorted({**SPEC_DEFAULTS, **ADDED_DEFAULTS}))
def test_default_value(key: str) -> None:
    expected = {**SPEC_DEFAULTS, **ADDED_DEFAULTS}[key]
    assert KEYS[key].default == expected
    assert config_to_flat(default_config())[key] == expected


def test_nested_attribute_access() -> None:
    cfg = Config()
    assert cfg.server.http.address == "127.0.0.1:5080"
    assert cfg.server.https.tls.cert_file == ""
    assert cfg.session.ttl.default == 7200.0
    assert cfg.storage.wal.sync_mode == "batch"
    assert cfg.security.auth.cache_ttl == 60.0
    assert cfg.telemetry.logging.level == "info"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.server.http.address = "x"  # type: ignore[misc]


def test_hot_reload_flags() -> None:
    assert {k for k, s in KEYS.items() if s.hot} == HOT


def test_env_names_follow_the_rule_and_do_not_collide() -> None:
    assert KEYS["server.https.tls.cert_file"].env == "TOKMESH_SERVER_HTTPS_TLS_CERT_FILE"
    assert ENV_TO_KEY["TOKMESH_SERVER_REDIS_TLS_ADDRESS"] == "server.redis_tls.address"
    assert len(ENV_TO_KEY) == len(KEYS)
    for key, spec in KEYS.items():
        assert spec.env == "TOKMESH_" + key.upper().replace(".", "_")


def test_flag_keys_are_the_14_of_the_spec() -> None:
    assert len(FLAG_KEYS) == 14
    assert set(FLAG_KEYS) <= set(KEYS)


def test_badger_keys_are_marked_no_effect() -> None:
    badger = {k for k in KEYS if k.startswith("storage.badger.")}
    assert badger == {k for k, s in KEYS.items() if s.no_effect}


def _sample_env_value(key: str) -> tuple[str, Any]:
    """A non-default env text for each key and the canonical value it must produce."""
    spec = KEYS[key]
    kind = spec.kind
    if kind is Kind.BOOL:
        return ("false", False) if spec.default else ("true", True)
    if kind is Kind.INT:
        return "1234", 1234
    if kind is Kind.FLOAT:
        return "0.75", 0.75
    if kind is Kind.DURATION:
        return "90s", 90.0
    if kind is Kind.SIZE:
        return "2MB", 2 * MB
    if kind is Kind.RATE:
        return "5Mbps", 5_000_000
    if kind is Kind.ENUM:
        choice = next(c for c in spec.choices if c != spec.default)
        return choice, choice
    if kind in (Kind.STR_LIST, Kind.ADDR_LIST):
        return "10.0.0.1:1, 10.0.0.2:2", ("10.0.0.1:1", "10.0.0.2:2")
    if kind is Kind.PATH:
        return "/srv/x/" + key, "/srv/x/" + key
    if kind is Kind.ADDR:
        return "10.9.8.7:4321", "10.9.8.7:4321"
    if kind is Kind.SECRET:
        return "ab" * 32, "ab" * 32
    return "value-for-" + key.replace(".", "-"), "value-for-" + key.replace(".", "-")


@pytest.mark.parametrize("key", sorted(KEYS))
def test_every_key_settable_by_its_env_name(key: str, tmp_path: Path) -> None:
    """05 §17 check 4: each key is settable through TOKMESH_<KEY>."""
    text, expected = _sample_env_value(key)
    result = load_config(None, {KEYS[key].env: text}, {}, tmp_path, search_paths=[])
    assert result.errors == []
    assert config_to_flat(result.config)[key] == expected
    assert result.source.env_overrides == (KEYS[key].env,)
    assert result.origins[key] == "env"


def test_build_and_diff() -> None:
    base = default_config()
    changed = build_config({"telemetry.logging.level": "debug", "server.http.address": ":1"})
    assert changed_keys(base, changed) == ["server.http.address", "telemetry.logging.level"]
    assert changed_keys(base, base) == []
