"""The configuration profiles of 05 §8 and the packaged config of 05 §9, through ``--test``.

Each profile passes ``tokmesh-server --test`` once the files it references exist
(throwaway certificates from trustme, written where the profile expects them); without
them the only errors are "file does not exist" (``TM-CFG-1003``) on exactly those paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "configs" / "server"
PACKAGED = REPO / "deploy" / "systemd" / "config.yaml"

#: profile -> {config key: certificate file the profile points at}
CERT_FILES: dict[str, dict[str, str]] = {
    "minimal": {},
    "https-public": {
        "server.https.tls.cert_file": "certs/server.crt",
        "server.https.tls.key_file": "certs/server.key",
    },
    "cluster-minimal": {
        "cluster.tls.cert_file": "certs/node.crt",
        "cluster.tls.key_file": "certs/node.key",
        "cluster.tls.client_ca_file": "certs/ca.crt",
    },
}
CERT_FILES["cluster-full"] = CERT_FILES["cluster-minimal"]


def server_exe() -> str:
    """The ``tokmesh-server`` console script of this interpreter."""
    exe = Path(sys.executable).with_name("tokmesh-server")
    return str(exe) if exe.exists() else "tokmesh-server"


def run_test(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``tokmesh-server --config <config> --test`` with no TOKMESH_* variables around."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKMESH_")}
    return subprocess.run(
        [server_exe(), "--config", str(config), "--test"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


def load(path: Path) -> dict[str, Any]:
    """A YAML file as a dict."""
    return dict(yaml.safe_load(path.read_text()))


def get(doc: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted key."""
    node: Any = doc
    for part in dotted.split("."):
        node = node[part]
    return node


def write_certs(root: Path, names: list[str]) -> None:
    """A throwaway CA and one leaf pair, written under every name the profile uses."""
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", "10.0.0.10", "10.0.0.11", "10.0.0.12")
    for name in names:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("ca.crt"):
            ca.cert_pem.write_to_path(str(target))
        elif name.endswith(".key"):
            leaf.private_key_pem.write_to_path(str(target))
            target.chmod(0o600)
        else:
            leaf.cert_chain_pems[0].write_to_path(str(target))


@pytest.mark.parametrize("profile", sorted(CERT_FILES))
def test_profile_passes_test_when_its_files_exist(profile: str, tmp_path: Path) -> None:
    shutil.copy(PROFILES / profile / "config.yaml", tmp_path / "config.yaml")
    write_certs(tmp_path, sorted(set(CERT_FILES[profile].values())))
    # Run from elsewhere: relative paths must resolve against the file's directory.
    proc = run_test(tmp_path / "config.yaml", cwd=Path("/"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[OK] Configuration is valid" in proc.stdout
    assert not (tmp_path / "data").exists(), "--test must create no directory"


@pytest.mark.parametrize("profile", sorted(p for p in CERT_FILES if CERT_FILES[p]))
def test_profile_without_its_files_fails_only_on_missing_files(
    profile: str, tmp_path: Path
) -> None:
    shutil.copy(PROFILES / profile / "config.yaml", tmp_path / "config.yaml")
    proc = run_test(tmp_path / "config.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    expected = CERT_FILES[profile]
    errors = [line for line in proc.stdout.splitlines() if line.startswith("Error ")]
    assert len(errors) == len(expected), proc.stdout
    assert all(line.endswith("TM-CFG-1003") for line in errors), proc.stdout
    for key, rel in expected.items():
        assert f"  Path: {key}\n  Value: {tmp_path / rel}\n  Problem: file does not exist" in (
            proc.stdout
        )


def test_minimal_profile_matches_spec() -> None:
    doc = load(PROFILES / "minimal" / "config.yaml")
    expected = {
        "server.http.enabled": True,
        "server.http.address": "127.0.0.1:5080",
        "server.https.enabled": False,
        "server.https.address": "127.0.0.1:5443",
        "server.https.tls.cert_file": "",
        "server.https.tls.key_file": "",
        "telemetry.metrics.auth_enabled": True,
        "telemetry.logging.level": "info",
        "telemetry.logging.dump_config": False,
        "telemetry.tracing.enabled": False,
        "telemetry.tracing.endpoint": "",
        "telemetry.tracing.sampling_ratio": 0.01,
        "storage.wal.dir": "./data/wal",
        "storage.wal.sync_mode": "batch",
        "storage.wal.sync_interval": "1s",
        "storage.wal.batch_count": 64,
        "storage.wal.batch_size": "1MB",
        "storage.snapshot.dir": "./data/snapshots",
        "storage.snapshot.interval": "1h",
        "storage.snapshot.threshold": "100MB",
        "security.auth.allow_list": [],
    }
    assert {k: get(doc, k) for k in expected} == expected


def test_https_public_profile_matches_spec() -> None:
    doc = load(PROFILES / "https-public" / "config.yaml")
    expected = {
        "server.http.address": "127.0.0.1:5080",
        "server.https.enabled": True,
        "server.https.address": "0.0.0.0:5443",
        "server.https.tls.cert_file": "./certs/server.crt",
        "server.https.tls.key_file": "./certs/server.key",
        "server.https.tls.client_ca_file": "",
        "server.redis.enabled": False,
        "server.redis.address": "127.0.0.1:6379",
        "server.redis_tls.enabled": False,
        "server.redis_tls.address": "127.0.0.1:6380",
        "cluster.enabled": False,
        "cluster.discovery.seeds": [],
    }
    assert {k: get(doc, k) for k in expected} == expected
    text = (PROFILES / "https-public" / "config.yaml").read_text()
    assert "PUBLIC EXPOSURE WARNINGS" in text


@pytest.mark.parametrize("profile", ["cluster-minimal", "cluster-full"])
def test_cluster_profiles_match_spec(profile: str) -> None:
    doc = load(PROFILES / profile / "config.yaml")
    etcd = ["http://10.0.0.5:2379", "http://10.0.0.6:2379", "http://10.0.0.7:2379"]
    expected: dict[str, Any] = {
        "server.http.address": "127.0.0.1:5080",
        "server.https.enabled": False,
        "cluster.enabled": True,
        "cluster.listen_address": "10.0.0.10:5343",
        "cluster.advertise_address": "10.0.0.10:5343",
        "cluster.tls.cert_file": "./certs/node.crt",
        "cluster.tls.key_file": "./certs/node.key",
        "cluster.tls.client_ca_file": "./certs/ca.crt",
        "cluster.etcd.endpoints": etcd,
        "cluster.bootstrap.expect_nodes": 3,
        "cluster.data.replication_factor": 2,
    }
    if profile == "cluster-full":
        expected |= {
            "cluster.raft.snapshot_threshold": 10000,
            "cluster.raft.trailing_logs": 1000,
            "cluster.rebalance.max_rate": "20Mbps",
            "cluster.rebalance.min_ttl": "60s",
            "cluster.shutdown.timeout": "60s",
            "cluster.shutdown.force_leave": False,
            "cluster.etcd.prefix": "/tokmesh/",
            "cluster.etcd.lease_ttl": "5s",
            "cluster.replication.ack": "revoke",
        }
    assert {k: get(doc, k) for k in expected} == expected
    # With etcd as the control plane, seeds are not needed (and would only be ignored).
    assert "node_id" not in doc["cluster"] and "discovery" not in doc["cluster"]


def test_packaged_config_is_minimal_with_absolute_storage(tmp_path: Path) -> None:
    minimal = load(PROFILES / "minimal" / "config.yaml")
    packaged = load(PACKAGED)
    minimal["storage"]["wal"]["dir"] = "/var/lib/tokmesh-server/wal"
    minimal["storage"]["snapshot"]["dir"] = "/var/lib/tokmesh-server/snapshots"
    assert packaged == minimal
    # It validates wherever it is placed (its storage paths are absolute): point them at a
    # writable place only because /var/lib may not be writable here.
    text = PACKAGED.read_text().replace("/var/lib/tokmesh-server", str(tmp_path / "state"))
    (tmp_path / "config.yaml").write_text(text)
    proc = run_test(tmp_path / "config.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
