"""/metrics exposition: every metric of 04 §16 with its type, labels and buckets."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tokmesh.telemetry import metrics as m

# 04 §16.3 / §16.4 / 01 §12, transcribed independently of the module under test.
SPEC: dict[str, tuple[str, tuple[str, ...]]] = {
    "tokmesh_sessions_active_total": ("gauge", ()),
    "tokmesh_session_create_total": ("counter", ()),
    "tokmesh_token_validate_calls_total": ("counter", ("result",)),
    "tokmesh_api_request_duration_seconds": ("histogram", ("method", "path", "status")),
    "tokmesh_cluster_nodes_total": ("gauge", ("status",)),
    "tokmesh_cluster_nodes_parity": ("gauge", ()),
    "tokmesh_cluster_quorum_lost": ("gauge", ()),
    "tokmesh_gossip_propagation_lag_seconds": ("histogram", ()),
    "tokmesh_shard_keys_count": ("gauge", ("node_id",)),
    "tokmesh_replication_lag_seconds": ("gauge", ("from_node", "to_node")),
    "tokmesh_session_revoke_propagation_lag_seconds": ("histogram", ()),
    "tokmesh_cpu_usage_ratio": ("gauge", ()),
    "tokmesh_mem_usage_bytes": ("gauge", ()),
    "tokmesh_mem_limit_bytes": ("gauge", ()),
    "tokmesh_wal_write_bytes_total": ("counter", ()),
    "tokmesh_wal_fsync_failed_total": ("counter", ()),
    "tokmesh_auth_cache_hits_total": ("counter", ()),
    "tokmesh_auth_cache_misses_total": ("counter", ()),
    "tokmesh_auth_failures_total": ("counter", ("reason",)),
    "tokmesh_tls_reload_failures_total": ("counter", ()),
    "tokmesh_service_requests_total": ("counter", ("service", "method", "status")),
    "tokmesh_session_version_conflicts_total": ("counter", ("method",)),
    "tokmesh_session_quota_exceeded_total": ("counter", ()),
    "tokmesh_service_request_duration_seconds": ("histogram", ("service", "method")),
    "tokmesh_auth_argon2_duration_seconds": ("histogram", ()),
    "tokmesh_auth_cache_hit_rate": ("gauge", ("key",)),
    "tokmesh_cluster_under_replicated_shards": ("gauge", ()),
}

SPEC_BUCKETS = {
    "tokmesh_api_request_duration_seconds": [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    "tokmesh_gossip_propagation_lag_seconds": [0.01, 0.05, 0.1, 0.5, 1, 2, 5],
    "tokmesh_session_revoke_propagation_lag_seconds": [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10],
    "tokmesh_service_request_duration_seconds": [
        0.001,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
    ],
}


@pytest.fixture(autouse=True)
def _reset_providers() -> Iterator[None]:
    yield
    for name in ("tokmesh_sessions_active_total", "tokmesh_cluster_quorum_lost"):
        m.register_gauge_provider(name, None)
    m.register_gauge_provider("tokmesh_auth_cache_hit_rate", None, {"key": "apikey"})
    for name in (
        "tokmesh_cluster_nodes_total",
        "tokmesh_shard_keys_count",
        "tokmesh_replication_lag_seconds",
    ):
        m.register_gauge_family_provider(name, None)
    m.set_memory_limit(None)


def scrape() -> tuple[str, dict[str, str], list[Sample]]:
    """Render /metrics; return the text, {name: TYPE} from the TYPE lines, all samples."""
    body, content_type = m.render()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))
    samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
    return text, types, samples


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The value of the one sample called ``name`` with exactly ``labels``."""
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_module_list_matches_the_spec() -> None:
    assert {k: t for k, (t, _) in SPEC.items()} == m.METRIC_NAMES


def test_every_spec_metric_is_exposed_with_its_type() -> None:
    m.set_memory_limit(2 * 1024**3)  # the limit is omitted when unknown; make it known
    _, types, samples = scrape()
    for name, (kind, _) in SPEC.items():
        assert types.get(name) == kind, name
    for name, kind in m.EXTRA_METRIC_NAMES.items():
        assert types.get(name) == kind, name
    # Every unlabeled metric has a sample right away (labeled ones once a child exists).
    names_with_samples = {s.name for s in samples}
    for name, (kind, labels) in SPEC.items():
        if not labels:
            expected = name + "_count" if kind == "histogram" else name
            assert expected in names_with_samples, name


def test_label_names_and_no_forbidden_labels() -> None:
    # Give each labeled metric one child, then read the label names back.
    m.observe_api_request("POST", "/tokens/validate", 200, 0.002)
    m.CLUSTER_NODES.labels(status="active").set(3)
    m.SHARD_KEYS_COUNT.labels(node_id="tmnd-a").set(10)
    m.REPLICATION_LAG.labels(from_node="tmnd-a", to_node="tmnd-b").set(0.1)
    m.observe_service_request("session", "create", "ok", 0.001)
    m.SESSION_VERSION_CONFLICTS.labels(method="renew").inc()
    m.AUTH_CACHE_HIT_RATE_APIKEY.set(0.97)
    m.set_memory_limit(2 * 1024**3)
    _, _, samples = scrape()
    for name, (kind, labels) in SPEC.items():
        series = name + "_bucket" if kind == "histogram" else name
        seen = {tuple(sorted(set(s.labels) - {"le"})) for s in samples if s.name == series}
        assert seen, name
        assert seen == {tuple(sorted(labels))}, (name, seen)
    for s in samples:
        assert not (set(s.labels) & m.FORBIDDEN_LABELS), s


def test_histogram_buckets_are_exact() -> None:
    m.observe_api_request("GET", "/sessions/{session_id}", 200, 0.003)
    m.observe_service_request("token", "validate", "ok", 0.0001)
    _, _, samples = scrape()
    for name, buckets in SPEC_BUCKETS.items():
        les = {s.labels["le"] for s in samples if s.name == name + "_bucket"}
        assert {float(le) for le in les} == {*map(float, buckets), math.inf}, name


def test_enumerated_label_values_exist_from_the_start() -> None:
    _, _, samples = scrape()
    for result in ("valid", "invalid", "error"):
        value(samples, "tokmesh_token_validate_calls_total", result=result)
    for reason in ("invalid_key", "expired", "ip_blocked"):
        value(samples, "tokmesh_auth_failures_total", reason=reason)


def test_counters_and_hot_path_helpers_count() -> None:
    _, _, before = scrape()
    m.SESSION_CREATE.inc()
    m.TOKEN_VALIDATE_INVALID.inc()
    m.WAL_WRITE_BYTES.inc(4096)
    m.WAL_FSYNC_FAILED.inc()
    m.observe_api_request("POST", "/sessions", 201, 0.02)
    m.observe_api_request("POST", "/sessions", "201", 0.3)
    m.observe_service_request("session", "revoke", "ok", 0.001)
    m.observe_service_request("session", "revoke", "TM-SESS-4040", 0.001)
    _, _, after = scrape()

    def delta(name: str, **labels: str) -> float:
        old = [s.value for s in before if s.name == name and s.labels == labels]
        return value(after, name, **labels) - (old[0] if old else 0.0)

    assert delta("tokmesh_session_create_total") == 1
    assert delta("tokmesh_token_validate_calls_total", result="invalid") == 1
    assert delta("tokmesh_wal_write_bytes_total") == 4096
    assert delta("tokmesh_wal_fsync_failed_total") == 1
    labels = {"method": "POST", "path": "/sessions", "status": "201"}
    assert delta("tokmesh_api_request_duration_seconds_count", **labels) == 2
    assert delta("tokmesh_api_request_duration_seconds_bucket", le="0.025", **labels) == 1
    assert delta("tokmesh_api_request_duration_seconds_bucket", le="0.5", **labels) == 2
    assert (
        delta("tokmesh_service_requests_total", service="session", method="revoke", status="ok")
        == 1
    )
    assert (
        delta("tokmesh_service_request_duration_seconds_count", service="session", method="revoke")
        == 2
    )


def test_value_providers_are_pulled_at_render() -> None:
    count = [5]
    m.register_gauge_provider("tokmesh_sessions_active_total", lambda: count[0])
    m.register_gauge_provider("tokmesh_auth_cache_hit_rate", lambda: 0.5, {"key": "apikey"})
    _, _, samples = scrape()
    assert value(samples, "tokmesh_sessions_active_total") == 5
    assert value(samples, "tokmesh_auth_cache_hit_rate", key="apikey") == 0.5
    count[0] = 7
    _, _, samples = scrape()
    assert value(samples, "tokmesh_sessions_active_total") == 7
    with pytest.raises(KeyError):
        m.register_gauge_provider("tokmesh_no_such_gauge", lambda: 1)


def test_family_provider_replaces_the_series_set() -> None:
    nodes: dict[tuple[str, ...], float] = {("active",): 3.0, ("down",): 1.0}
    m.register_gauge_family_provider("tokmesh_cluster_nodes_total", lambda: nodes)
    _, _, samples = scrape()
    assert value(samples, "tokmesh_cluster_nodes_total", status="active") == 3
    assert value(samples, "tokmesh_cluster_nodes_total", status="down") == 1
    nodes = {("active",): 4.0}
    _, _, samples = scrape()
    assert value(samples, "tokmesh_cluster_nodes_total", status="active") == 4
    assert not [s for s in samples if s.labels == {"status": "down"}]


def test_failing_provider_does_not_break_the_scrape() -> None:
    def broken() -> float:
        raise RuntimeError("store gone")

    m.CLUSTER_QUORUM_LOST.set(1)
    m.register_gauge_provider("tokmesh_cluster_quorum_lost", broken)
    m.register_gauge_family_provider("tokmesh_shard_keys_count", lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    _, types, samples = scrape()
    assert value(samples, "tokmesh_cluster_quorum_lost") == 1  # last value kept
    assert types["tokmesh_shard_keys_count"] == "gauge"


def test_resource_gauges() -> None:
    m.set_memory_limit(None)
    _, _, samples = scrape()
    assert 0.0 <= value(samples, "tokmesh_cpu_usage_ratio") <= 1.0
    assert value(samples, "tokmesh_mem_usage_bytes") > 1_000_000
    m.set_memory_limit(512 * 1024 * 1024)
    _, _, samples = scrape()
    assert value(samples, "tokmesh_mem_limit_bytes") == 512 * 1024 * 1024
    # Standard process collectors are present too.
    assert any(s.name == "process_resident_memory_bytes" for s in samples)


def test_no_created_series() -> None:
    text, _, _ = scrape()
    assert "_created" not in text


def test_plain_histogram_exposition_matches_prometheus_histogram() -> None:
    # The lock-free request histogram must expose exactly what prometheus_client's
    # Histogram would for the same observations (bucket edges included).
    values = [0.0, 0.001, 0.0010001, 0.004, 0.5, 0.75, 1.0, 3.0, 0.02]
    ref_registry = CollectorRegistry()
    ref = Histogram("h_seconds", "doc", ["a"], buckets=m.API_BUCKETS, registry=ref_registry)
    plain_registry = CollectorRegistry()
    plain = m.PlainHistogramFamily("h_seconds", "doc", ["a"], m.API_BUCKETS)
    plain_registry.register(plain)
    for v in values:
        ref.labels("x").observe(v)
        plain.observe(plain.child("x"), v)
    assert generate_latest(plain_registry) == generate_latest(ref_registry)
