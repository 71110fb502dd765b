"""``/metrics`` of a real node exposes every metric of 04 §16 (issue 7 acceptance 5)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.integration.runtime_support import RuntimeServer, metric_types, sample_value
from tokmesh.telemetry.metrics import EXTRA_METRIC_NAMES, FORBIDDEN_LABELS, METRIC_NAMES

#: 04 §16.3 and §16.4, written out again here so that a name dropped from the server's own
#: table is caught too (the table in tokmesh.telemetry.metrics is compared below as well)
SPEC_METRICS = {
    "tokmesh_sessions_active_total": "gauge",
    "tokmesh_session_create_total": "counter",
    "tokmesh_token_validate_calls_total": "counter",
    "tokmesh_api_request_duration_seconds": "histogram",
    "tokmesh_cluster_nodes_total": "gauge",
    "tokmesh_cluster_nodes_parity": "gauge",
    "tokmesh_cluster_quorum_lost": "gauge",
    "tokmesh_gossip_propagation_lag_seconds": "histogram",
    "tokmesh_shard_keys_count": "gauge",
    "tokmesh_replication_lag_seconds": "gauge",
    "tokmesh_session_revoke_propagation_lag_seconds": "histogram",
    "tokmesh_cpu_usage_ratio": "gauge",
    "tokmesh_mem_usage_bytes": "gauge",
    "tokmesh_mem_limit_bytes": "gauge",
    "tokmesh_wal_write_bytes_total": "counter",
    "tokmesh_wal_fsync_failed_total": "counter",
    "tokmesh_auth_cache_hits_total": "counter",
    "tokmesh_auth_cache_misses_total": "counter",
    "tokmesh_auth_failures_total": "counter",
    "tokmesh_tls_reload_failures_total": "counter",
    "tokmesh_service_requests_total": "counter",
    "tokmesh_session_version_conflicts_total": "counter",
    "tokmesh_session_quota_exceeded_total": "counter",
    "tokmesh_service_request_duration_seconds": "histogram",
    "tokmesh_auth_argon2_duration_seconds": "histogram",
    "tokmesh_auth_cache_hit_rate": "gauge",
    "tokmesh_cluster_under_replicated_shards": "gauge",
}


def test_metrics_expose_every_spec_metric(tmp_path: Path) -> None:
    """Scrape a real node with a metrics-role key after some traffic: every metric of
    04 §16 is declared with its type; no forbidden label; counters moved."""
    assert METRIC_NAMES == SPEC_METRICS
    node = RuntimeServer(tmp_path / "node")
    try:
        node.start()
        node.create_admin_key()
        metrics_key = node.create_key("metrics")
        issuer = node.create_key("issuer")
        with node.client(issuer) as c:
            created = c.post("/sessions", json={"user_id": "m1"})
            assert created.status_code == 201
            token = created.json()["data"]["token"]
            sid = created.json()["data"]["session_id"]
            assert c.get(f"/sessions/{sid}").status_code == 200
            assert c.post("/tokens/validate", json={"token": token}).status_code == 200
            assert c.post("/tokens/validate", json={"token": "tmtk_" + "A" * 43}).status_code == 401
        with httpx.Client(
            base_url=node.base_url, headers={"Authorization": "Bearer tmak-x:y"}
        ) as c:
            assert c.get("/sessions").status_code == 401
        r = httpx.get(node.base_url + "/metrics", headers={"X-API-Key": metrics_key})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = node.scrape(metrics_key)
    finally:
        node.stop()
    declared = metric_types(text)
    ours = {**SPEC_METRICS, **EXTRA_METRIC_NAMES}
    for name, kind in ours.items():
        assert declared.get(name) == kind, (name, declared.get(name))
    # No undocumented tokmesh_ family (standard process/python collectors are welcome).
    assert {n for n in declared if n.startswith("tokmesh_")} == set(ours)
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)=\"", line.split("}", 1)[0]))
        assert not labels & FORBIDDEN_LABELS, line
        assert "/sessions/tmss-" not in line, line  # paths are route templates
    assert sample_value(text, "tokmesh_session_create_total") >= 1
    assert sample_value(text, "tokmesh_sessions_active_total") == 1
    assert 'tokmesh_token_validate_calls_total{result="valid"} 1.0' in text
    assert 'tokmesh_token_validate_calls_total{result="invalid"} 1.0' in text
    assert sample_value(text, "tokmesh_wal_write_bytes_total") > 0
    # path is the route template, never the concrete session id (04 §16.2)
    assert (
        'tokmesh_api_request_duration_seconds_count{method="GET",'
        'path="/sessions/{session_id}",status="200"} 1.0'
    ) in text
    buckets = [
        re.search(r'le="([^"]+)"', line).group(1)  # type: ignore[union-attr]
        for line in text.splitlines()
        if line.startswith("tokmesh_api_request_duration_seconds_bucket{")
        and 'path="/sessions"' in line
        and 'method="POST"' in line
        and 'status="201"' in line
    ]
    assert buckets == [
        *("0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "+Inf")
    ]
