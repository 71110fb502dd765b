"""Validation (spec 05 §4, §17 checks 13-23): codes, keys, all errors collected, files."""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tokmesh.config.dump import format_issues
from tokmesh.config.schema import build_config
from tokmesh.config.validate import (
    HTTPS_DISABLED_WARNING,
    validate,
    validate_config,
    validate_yaml_text,
)


def test_defaults_are_valid(load: Any) -> None:
    _, report = load()
    assert report.errors == []
    assert HTTPS_DISABLED_WARNING in report.warnings
    assert not any("exposed" in w for w in report.warnings)


def test_port_out_of_range_report(load: Any, codes: Any) -> None:
    """05 §17 check 13: code, path and an env-var solution."""
    _, report = load("server:\n  http:\n    address: 127.0.0.1:99999\n")
    assert codes(report) == [("server.http.address", "TM-CFG-1002")]
    issue = report.errors[0]
    assert issue.value == "127.0.0.1:99999"
    assert issue.problem == "port number out of range"
    assert "export TOKMESH_SERVER_HTTP_ADDRESS=127.0.0.1:5080" in issue.solution
    text = format_issues(report.errors)
    assert "Error 1/1: TM-CFG-1002" in text
    assert "Path: server.http.address" in text
    assert "Exit code: 1" in text


def test_https_without_cert_is_1006(load: Any, codes: Any) -> None:
    """05 §17 check 14."""
    _, report = load("server:\n  https:\n    enabled: true\n")
    assert codes(report) == [
        ("server.https.tls.cert_file", "TM-CFG-1006"),
        ("server.https.tls.key_file", "TM-CFG-1006"),
    ]
    assert HTTPS_DISABLED_WARNING not in report.warnings


@pytest.mark.parametrize(
    ("http", "redis"),
    [
        ("127.0.0.1:5080", "127.0.0.1:5080"),
        ("0.0.0.0:5080", "127.0.0.1:5080"),
        (":5080", "[::1]:5080"),
    ],
)
def test_port_clash_names_both_keys(load: Any, codes: Any, http: str, redis: str) -> None:
    """05 §17 check 15."""
    _, report = load(
        f"server:\n  http: {{address: '{http}'}}\n  redis: {{enabled: true, address: '{redis}'}}\n"
    )
    assert codes(report) == [("server.redis.address", "TM-CFG-1005")]
    assert "server.http.address" in report.errors[0].problem


def test_different_hosts_same_port_do_not_clash(load: Any) -> None:
    _, report = load(
        "server:\n  http: {address: '127.0.0.1:5080'}\n"
        "  redis: {enabled: true, address: '127.0.0.2:5080'}\n"
    )
    assert report.errors == []
    assert any("plaintext Redis" in w for w in report.warnings)


def test_disabled_listener_never_clashes_and_is_not_checked(load: Any) -> None:
    _, report = load("server:\n  redis: {enabled: false, address: '127.0.0.1:5080'}\n")
    assert report.errors == []
    _, report = load("server:\n  https: {enabled: false, address: 'garbage'}\n")
    assert report.errors == []


def test_cluster_listener_takes_part_in_clash_check(load: Any, codes: Any, certs: Any) -> None:
    _, report = load(
        "cluster:\n  enabled: true\n  listen_address: 0.0.0.0:5080\n"
        "  advertise_address: 10.0.0.1:5080\n"
        "  etcd: {endpoints: ['http://127.0.0.1:2379']}\n"
        f"  tls: {{cert_file: {certs.cert}, key_file: {certs.key}, client_ca_file: {certs.ca}}}\n"
    )
    assert codes(report) == [("cluster.listen_address", "TM-CFG-1005")]


def test_tls_pair_ok(load: Any, certs: Any) -> None:
    _, report = load(
        "server:\n  https:\n    enabled: true\n"
        f"    tls: {{cert_file: {certs.cert}, key_file: {certs.key}, client_ca_file: {certs.ca}}}\n"
    )
    assert report.errors == []
    assert not any("expire" in w for w in report.warnings)


def test_cert_key_mismatch_is_1007(load: Any, codes: Any, certs: Any) -> None:
    """05 §17 check 16, first half."""
    _, report = load(
        "server:\n  https:\n    enabled: true\n"
        f"    tls: {{cert_file: {certs.cert}, key_file: {certs.other_key}}}\n"
    )
    assert codes(report) == [("server.https.tls.key_file", "TM-CFG-1007")]
    assert "PRIVATE KEY" not in format_issues(report.errors)


def test_expired_matching_pair_only_warns(load: Any, expired_certs: Any) -> None:
    """05 §17 check 16, second half."""
    _, report = load(
        "server:\n  https:\n    enabled: true\n"
        f"    tls: {{cert_file: {expired_certs.cert}, key_file: {expired_certs.key}}}\n"
    )
    assert report.errors == []
    assert any("server.https.tls.cert_file expired" in w for w in report.warnings)


def test_cert_expiring_within_30_days_warns(certs: Any, tmp_path: Path) -> None:
    cfg = build_config(
        {
            "server.https.enabled": True,
            "server.https.tls.cert_file": str(certs.cert),
            "server.https.tls.key_file": str(certs.key),
            "storage.wal.dir": str(tmp_path / "w"),
            "storage.snapshot.dir": str(tmp_path / "s"),
        }
    )
    # trustme leaves are valid for years; move the clock to 10 days before expiry.
    from cryptography import x509

    not_after = x509.load_pem_x509_certificate(certs.cert.read_bytes()).not_valid_after_utc
    report = validate_config(cfg, now=not_after - dt.timedelta(days=10))
    assert report.errors == []
    assert any("within 30 days" in w for w in report.warnings)


def test_tls_file_problems(load: Any, codes: Any, certs: Any, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    encrypted = tmp_path / "enc.key"
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    _, report = load(
        "server:\n"
        "  https:\n    enabled: true\n"
        f"    tls: {{cert_file: {tmp_path / 'missing.crt'}, key_file: {garbage}, "
        f"client_ca_file: {tmp_path / 'missing-ca.crt'}}}\n"
        "  redis_tls:\n    enabled: true\n"
        f"    tls: {{cert_file: {garbage}, key_file: {encrypted}, client_ca_file: {garbage}}}\n"
    )
    assert codes(report) == [
        ("server.https.tls.cert_file", "TM-CFG-1003"),
        ("server.https.tls.key_file", "TM-CFG-1007"),
        ("server.https.tls.client_ca_file", "TM-CFG-1003"),
        ("server.redis_tls.tls.cert_file", "TM-CFG-1007"),
        ("server.redis_tls.tls.key_file", "TM-CFG-1007"),
        ("server.redis_tls.tls.client_ca_file", "TM-CFG-1007"),
    ]


def test_unreadable_key_is_1004(
    nobody_dir: Path, as_nobody: Callable[..., Any], certs: Any
) -> None:
    key = nobody_dir / "server.key"
    key.write_bytes(certs.key.read_bytes())
    os.chmod(key, 0o600)
    cert = nobody_dir / "server.crt"
    cert.write_bytes(certs.cert.read_bytes())
    os.chmod(cert, 0o644)
    cfg = build_config(
        {
            "server.https.enabled": True,
            "server.https.tls.cert_file": str(cert),
            "server.https.tls.key_file": str(key),
            "storage.wal.dir": str(nobody_dir / "w"),
            "storage.snapshot.dir": str(nobody_dir / "s"),
        }
    )
    os.chmod(nobody_dir, 0o777)

    def probe() -> list[tuple[str, str]]:
        return [(e.key, e.code.code) for e in validate(cfg)]

    assert as_nobody(probe) == [("server.https.tls.key_file", "TM-CFG-1004")]


def test_seeds_without_cluster(load: Any, codes: Any) -> None:
    """05 §17 check 17."""
    _, report = load("cluster:\n  discovery:\n    seeds: ['10.0.0.1:5343']\n")
    assert codes(report) == [("cluster.discovery.seeds", "TM-CFG-1006")]
    assert "cluster.enabled" in report.errors[0].problem


def test_cluster_without_advertise_and_ca_is_two_errors(load: Any, codes: Any, certs: Any) -> None:
    """05 §17 check 18: one report with Error 1/2 and Error 2/2."""
    _, report = load(
        f"cluster:\n  enabled: true\n  tls: {{cert_file: {certs.cert}, key_file: {certs.key}}}\n"
        "  etcd: {endpoints: ['http://127.0.0.1:2379']}\n"
    )
    assert codes(report) == [
        ("cluster.advertise_address", "TM-CFG-1006"),
        ("cluster.tls.client_ca_file", "TM-CFG-1006"),
    ]
    text = format_issues(report.errors)
    assert "Error 1/2: TM-CFG-1006" in text
    assert "Error 2/2: TM-CFG-1006" in text
    assert any("loopback" in w for w in report.warnings)


def test_cluster_advertise_wildcard_is_1002(load: Any, codes: Any, certs: Any) -> None:
    _, report = load(
        "cluster:\n  enabled: true\n  listen_address: 10.0.0.1:5343\n"
        "  advertise_address: 0.0.0.0:5343\n"
        "  etcd: {endpoints: ['http://127.0.0.1:2379']}\n"
        f"  tls: {{cert_file: {certs.cert}, key_file: {certs.key}, client_ca_file: {certs.ca}}}\n"
    )
    assert codes(report) == [("cluster.advertise_address", "TM-CFG-1002")]


def test_cluster_etcd_settings(load: Any, codes: Any, certs: Any) -> None:
    """The cluster needs at least one well-formed etcd URL, a /-delimited prefix, and the
    etcd TLS files and credentials in pairs; none of it is checked with the cluster off."""
    base = (
        "cluster:\n  enabled: true\n  listen_address: 10.0.0.1:5343\n"
        "  advertise_address: 10.0.0.1:5343\n"
        f"  tls: {{cert_file: {certs.cert}, key_file: {certs.key}, client_ca_file: {certs.ca}}}\n"
    )
    _, report = load(base)
    assert codes(report) == [("cluster.etcd.endpoints", "TM-CFG-1006")]
    bad = (
        "  etcd:\n    endpoints: ['http://10.0.0.5:2379', '10.0.0.6:2379', 'ftp://x:1']\n"
        "    prefix: /tokmesh\n    tls: {cert_file: " + str(certs.cert) + "}\n"
        "    username: root\n"
    )
    _, report = load(base + bad)
    assert codes(report) == [
        ("cluster.etcd.endpoints[1]", "TM-CFG-1001"),
        ("cluster.etcd.endpoints[2]", "TM-CFG-1001"),
        ("cluster.etcd.prefix", "TM-CFG-1001"),
        ("cluster.etcd.tls.key_file", "TM-CFG-1006"),
        ("cluster.etcd.password", "TM-CFG-1006"),
    ]
    _, report = load(base + "  etcd: {endpoints: ['https://[::1]:2379'], prefix: /a/b/}\n")
    assert report.errors == []
    _, report = load("cluster:\n  etcd: {endpoints: ['nonsense'], prefix: x}\n")
    assert report.errors == []


def test_cluster_ranges_only_when_enabled(load: Any, codes: Any) -> None:
    text = "cluster:\n  raft: {snapshot_threshold: 5}\n  shutdown: {timeout: 1s}\n"
    _, report = load(text)
    assert report.errors == []
    _, report = load(text + "  enabled: true\n")
    assert ("cluster.raft.snapshot_threshold", "TM-CFG-1002") in codes(report)
    assert ("cluster.shutdown.timeout", "TM-CFG-1002") in codes(report)


@pytest.mark.parametrize(
    ("yaml_text", "key", "code"),
    [
        ("session: {ttl: {default: 30s}}", "session.ttl.default", "TM-CFG-1002"),
        ("storage: {wal: {sync_mode: async}}", "storage.wal.sync_mode", "TM-CFG-1001"),
        ("storage: {wal: {batch_size: 2KB}}", "storage.wal.batch_size", "TM-CFG-1002"),
        (
            "cluster: {enabled: true, rebalance: {max_rate: 100MB}}",
            "cluster.rebalance.max_rate",
            "TM-CFG-1001",
        ),
        (
            "security: {storage: {wal_encryption_key: '" + "a" * 63 + "'}}",
            "security.storage.wal_encryption_key",
            "TM-CFG-1001",
        ),
        (
            "security: {auth: {allow_list: ['10.0.0.0/33']}}",
            "security.auth.allow_list[0]",
            "TM-CFG-1001",
        ),
        (
            "server: {shutdown: {grace_period: 40s, timeout: 30s}}",
            "server.shutdown.grace_period",
            "TM-CFG-1002",
        ),
        ("telemetry: {tracing: {enabled: true}}", "telemetry.tracing.endpoint", "TM-CFG-1006"),
        ("session: {ttl: {default: 7200}}", "session.ttl.default", "TM-CFG-1001"),
        ("session: {ttl: {max: 9000h}}", "session.ttl.max", "TM-CFG-1002"),
        ("session: {ttl: {default: 3h, max: 2h}}", "session.ttl.default", "TM-CFG-1002"),
        ("server: {http: {max_body_size: 512KB}}", "server.http.max_body_size", "TM-CFG-1002"),
        ("server: {http: {engine: twisted}}", "server.http.engine", "TM-CFG-1001"),
        ("session: {quota_policy: random}", "session.quota_policy", "TM-CFG-1001"),
        ("telemetry: {logging: {level: trace}}", "telemetry.logging.level", "TM-CFG-1001"),
        (
            "security: {network: {trusted_proxies: [10.0.0.1, nope]}}",
            "security.network.trusted_proxies[1]",
            "TM-CFG-1001",
        ),
        ("storage: {badger: {gc_threshold: 0.2}}", "storage.badger.gc_threshold", "TM-CFG-1002"),
        ("storage: {badger: {cache_size: 8MB}}", "storage.badger.cache_size", "TM-CFG-1002"),
        (
            "telemetry: {tracing: {enabled: true, endpoint: 'ftp://x'}}",
            "telemetry.tracing.endpoint",
            "TM-CFG-1001",
        ),
        (
            "telemetry: {tracing: {enabled: true, endpoint: 'http://x', sampling_ratio: 1.5}}",
            "telemetry.tracing.sampling_ratio",
            "TM-CFG-1002",
        ),
        (
            "security: {auth: {argon2: {memory: 4096}}}",
            "security.auth.argon2.memory",
            "TM-CFG-1002",
        ),
        ("cluster: {enabled: true, node_id: 'bad id'}", "cluster.node_id", "TM-CFG-1001"),
    ],
)
def test_boundaries(load: Any, codes: Any, yaml_text: str, key: str, code: str) -> None:
    """05 §17 checks 20 and 21 (plus neighbours)."""
    _, report = load(yaml_text + "\n")
    assert (key, code) in codes(report)


@pytest.mark.parametrize(
    "yaml_text",
    [
        "session: {ttl: {default: 1m, max: 8760h}}",
        "storage: {wal: {batch_size: 4KB, sync_interval: 1ms}}",
        "storage: {wal: {batch_size: 64MB, sync_interval: 10s}}",
        "server: {shutdown: {grace_period: 30s, timeout: 30s}}",
        "server: {shutdown: {grace_period: 0s, timeout: 5s}}",
        "security: {storage: {wal_encryption_key: '" + "A0" * 32 + "'}}",
        "security: {auth: {allow_list: ['10.0.0.0/8', '::1', '192.168.1.7']}}",
        "storage: {wal: {sync_mode: sync, sync_interval: 1h}}",
        "telemetry: {tracing: {enabled: false, sampling_ratio: 7.0}}",
    ],
)
def test_boundary_values_are_accepted(load: Any, yaml_text: str) -> None:
    _, report = load(yaml_text + "\n")
    assert report.errors == []


def test_all_errors_are_collected_each_naming_its_key(load: Any, codes: Any) -> None:
    _, report = load(
        "server:\n"
        "  http: {address: '127.0.0.1:99999'}\n"
        "  https: {enabled: true}\n"
        "  shutdown: {timeout: 1s}\n"
        "session:\n  ttl: {default: 30s, gc_interval: 5m}\n  quota: {max_per_user: 0}\n"
        "security:\n  auth: {allow_list: [x, '10.0.0.0/8', y]}\n"
        "storage:\n  wal: {sync_mode: async, batch_count: 0}\n"
        "  snapshot: {retention_days: 400}\n"
        "telemetry:\n  audit: {retention_days: 0}\n"
    )
    expected = {
        ("server.http.address", "TM-CFG-1002"),
        ("server.https.tls.cert_file", "TM-CFG-1006"),
        ("server.https.tls.key_file", "TM-CFG-1006"),
        ("server.shutdown.timeout", "TM-CFG-1002"),
        ("server.shutdown.grace_period", "TM-CFG-1002"),
        ("session.ttl.default", "TM-CFG-1002"),
        ("session.ttl.gc_interval", "TM-CFG-1002"),
        ("session.quota.max_per_user", "TM-CFG-1002"),
        ("security.auth.allow_list[0]", "TM-CFG-1001"),
        ("security.auth.allow_list[2]", "TM-CFG-1001"),
        ("storage.wal.sync_mode", "TM-CFG-1001"),
        ("storage.wal.batch_count", "TM-CFG-1002"),
        ("storage.snapshot.retention_days", "TM-CFG-1002"),
        ("telemetry.audit.retention_days", "TM-CFG-1002"),
    }
    assert set(codes(report)) == expected
    assert len(report.errors) == len(expected)
    for issue in report.errors:
        assert issue.problem and issue.expected and issue.solution


# ---------------------------------------------------------------------------- directories


def test_validate_only_creates_nothing(load: Any, tmp_path: Path) -> None:
    """05 §17 check 22 (library part) / D25."""
    _, report = load("storage: {wal: {dir: a/b/wal}, snapshot: {dir: a/b/snap}}\n")
    assert report.errors == []
    assert not (tmp_path / "etc" / "a").exists()


def test_start_creates_dirs_0750_and_probes(load: Any, tmp_path: Path) -> None:
    _, report = load("storage: {wal: {dir: a/b/wal}}\n", create_dirs=True)
    assert report.errors == []
    for p in (tmp_path / "etc" / "a", tmp_path / "etc" / "a" / "b" / "wal"):
        assert p.is_dir()
        assert stat.S_IMODE(p.stat().st_mode) == 0o750
    assert not (tmp_path / "etc" / "a" / "b" / "wal" / ".write_test").exists()
    assert (tmp_path / "etc" / "data" / "snapshots").is_dir()


def test_wal_dir_that_is_a_file(load: Any, codes: Any, tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc" / "afile").write_text("x")
    _, report = load("storage: {wal: {dir: afile}, snapshot: {dir: afile/snap}}\n")
    assert codes(report) == [
        ("storage.wal.dir", "TM-CFG-1001"),
        ("storage.snapshot.dir", "TM-CFG-1003"),
    ]


def test_unwritable_wal_dir_is_1004(nobody_dir: Path, as_nobody: Callable[..., Any]) -> None:
    """05 §17 check 23, as an unprivileged user (root writes everywhere)."""
    wal = nobody_dir / "wal"
    wal.mkdir(mode=0o755)  # owned by root: not writable by nobody
    snap = nobody_dir / "snap"
    snap.mkdir()
    os.chmod(snap, 0o777)
    cfg = build_config({"storage.wal.dir": str(wal), "storage.snapshot.dir": str(snap)})

    def probe() -> list[tuple[str, str]]:
        checked = validate(cfg) + validate(cfg, create_dirs=True)
        return [(e.key, e.code.code) for e in checked]

    assert as_nobody(probe) == [
        ("storage.wal.dir", "TM-CFG-1004"),
        ("storage.wal.dir", "TM-CFG-1004"),
    ]


def test_uncreatable_dir_is_1003(nobody_dir: Path, as_nobody: Callable[..., Any]) -> None:
    cfg = build_config(
        {
            "storage.wal.dir": str(nobody_dir / "wal"),
            "storage.snapshot.dir": str(nobody_dir / "snap"),
        }
    )

    def probe() -> list[tuple[str, str]]:
        checked = validate(cfg) + validate(cfg, create_dirs=True)
        return [(e.key, e.code.code) for e in checked]

    assert (
        as_nobody(probe)
        == [
            ("storage.wal.dir", "TM-CFG-1003"),
            ("storage.snapshot.dir", "TM-CFG-1003"),
        ]
        * 2
    )


# ---------------------------------------------------------------------------- warnings


def test_startup_warnings(load: Any) -> None:
    _, report = load(
        "server:\n  http: {address: '0.0.0.0:5080'}\n  redis: {enabled: true}\n"
        "security: {anti_replay: {timestamp_window: 60s, nonce_ttl: 60s}}\n"
        "telemetry: {logging: {dump_config: true}}\n"
    )
    assert report.errors == []
    text = "\n".join(report.warnings)
    assert "server.http.address 0.0.0.0:5080 is explicitly exposed" in text
    assert "plaintext Redis" in text
    assert "nonce_ttl" in text
    assert "dump_config" in text
    assert HTTPS_DISABLED_WARNING in report.warnings


def test_unresolvable_host_only_warns(load: Any) -> None:
    _, report = load("server: {http: {address: 'no-such-host.invalid:5080'}}\n", resolve_hosts=True)
    assert report.errors == []
    assert any("does not resolve" in w for w in report.warnings)


# ---------------------------------------------------------------------------- API entry


def test_validate_yaml_text_for_the_admin_api(tmp_path: Path) -> None:
    """03 §17 check 31: port 70000 -> 200 valid:false with TM-CFG-1002 and its field."""
    report = validate_yaml_text("server:\n  http:\n    address: 0.0.0.0:70000\n", base_dir=tmp_path)
    body = report.to_api()
    assert body["valid"] is False
    assert body["errors"] == [
        {
            "code": "TM-CFG-1002",
            "field": "server.http.address",
            "message": report.errors[0].message,
        }
    ]
    assert validate_yaml_text("{}", base_dir=tmp_path).to_api() == {"valid": True, "errors": []}
    broken = validate_yaml_text("server: [", base_dir=tmp_path).to_api()
    assert broken["valid"] is False and broken["errors"][0]["code"] == "TM-CFG-1001"
    assert not (tmp_path / "data").exists()
