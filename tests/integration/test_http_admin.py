"""Admin API ``/admin/v1`` over real HTTP (03 §4.1, §4.2, §4.4-§4.7; §8 checks 23-26, 30-32).

The node's global allow-list is ``127.0.0.0/29``: requests from ``127.0.0.9`` come from
outside it. Check 27 (rotation with a 1 s grace) lives in ``test_http_auth.py``; checks
28-29 (backups) belong to the backup issue.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.integration.http_asserts import (
    KEY_ID_RE,
    SECRET_RE,
    assert_error,
    assert_ok,
    client,
    key_id_of,
    make_key,
    now_ms,
    running_node,
)
from tests.support.server import ServerProcess

P = "/admin/v1"
OUTSIDE = "127.0.0.9"
KEY_FIELDS = {
    "key_id",
    "role",
    "status",
    "description",
    "allowedlist",
    "rate_limit",
    "created_at",
    "created_by",
    "expires_at",
    "last_used_at",
    "grace_period_end",
}
UNKNOWN_KID = "tmak-" + "0" * 26


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from running_node(
        tmp_path_factory, "http-admin", {"security": {"auth": {"allow_list": ["127.0.0.0/29"]}}}
    )


@pytest.fixture(scope="module")
def A(node: ServerProcess) -> Iterator[httpx.Client]:
    with client(node, node.admin_key) as c:
        yield c


@pytest.fixture(scope="module")
def issuer_key(A: httpx.Client) -> str:
    return make_key(A, "issuer")


def admin_requests(kid: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """One request per admin route (method, path, json)."""
    return [
        ("GET", f"{P}/status/summary", None),
        ("POST", f"{P}/gc/trigger", {"type": "memory"}),
        ("GET", f"{P}/keys", None),
        ("POST", f"{P}/keys", {"role": "validator"}),
        ("POST", f"{P}/keys/{kid}/status", {"status": "active"}),
        ("POST", f"{P}/keys/{kid}/rotate", None),
        ("GET", f"{P}/audit/logs", None),
        ("GET", f"{P}/cluster/status", None),
        ("GET", f"{P}/cluster/nodes", None),
        ("POST", f"{P}/cluster/rebalance", None),
        ("POST", f"{P}/cluster/leave", None),
        ("POST", f"{P}/cluster/nodes/tmnd-x/remove", None),
        ("POST", f"{P}/cluster/reset", {"force": True, "confirm": "RESET_CONFIRM"}),
    ]


def metric_value(text: str, name: str) -> float:
    """The value of an unlabelled sample ``name`` in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


# --- check 23: admin authentication and ACL ---------------------------------------------------


def test_admin_routes_reject_non_admins(node: ServerProcess, issuer_key: str) -> None:
    reqs = admin_requests(UNKNOWN_KID)
    with client(node, issuer_key) as i:
        for method, path, body in reqs:
            assert_error(i.request(method, path, json=body), 403, "TM-ADMIN-4030")
    with client(node, source="127.0.0.2") as anon:
        for method, path, body in reqs:
            assert_error(anon.request(method, path, json=body), 401, "TM-AUTH-4010")


def test_admin_routes_reject_bad_credentials(node: ServerProcess) -> None:
    reqs = admin_requests(UNKNOWN_KID)
    assert node.admin_key
    kid = key_id_of(node.admin_key)
    # Two client addresses: ten counted failures from one address would start a block.
    for n, (method, path, body) in enumerate(reqs):
        source = "127.0.0.3" if n % 2 else "127.0.0.4"
        with client(node, f"{kid}:tmas_{'b' * 43}", source=source) as bad:
            assert_error(bad.request(method, path, json=body), 401, "TM-AUTH-4011")


def test_admin_from_outside_allow_list(node: ServerProcess) -> None:
    with client(node, node.admin_key, source=OUTSIDE) as out:
        for method, path, body in admin_requests(UNKNOWN_KID):
            assert_error(out.request(method, path, json=body), 403, "TM-ADMIN-4031")
    with client(node, node.admin_key, source="127.0.0.5") as inside:
        assert_ok(inside.get(f"{P}/keys"))


# --- check 24: status summary and GC ----------------------------------------------------------


def test_status_summary(A: httpx.Client, node: ServerProcess, issuer_key: str) -> None:
    with client(node, issuer_key) as i:
        for n in range(3):
            assert_ok(i.post("/sessions", json={"user_id": f"status-u{n}"}), 201)
    d = assert_ok(A.get(f"{P}/status/summary"))
    top = {
        "uptime_seconds",
        "version",
        "build_time",
        "node_id",
        "cluster_state",
        "total_sessions",
        "memory_usage_mb",
        "current_qps",
        "metrics",
    }
    assert top <= set(d)
    assert {
        "total_sessions",
        "active_sessions",
        "memory_usage_mb",
        "current_qps",
        "goroutines",
    } <= set(d["metrics"])
    assert isinstance(d["uptime_seconds"], int) and d["uptime_seconds"] >= 0
    assert isinstance(d["version"], str) and d["version"]
    datetime.fromisoformat(d["build_time"].replace("Z", "+00:00"))  # RFC 3339 stamp
    assert re.match(r"^tmnd-[a-z0-9][a-z0-9-]*$", d["node_id"])
    assert d["cluster_state"] == "healthy"
    assert d["total_sessions"] >= 3 and d["metrics"]["total_sessions"] == d["total_sessions"]
    assert d["metrics"]["goroutines"] > 0
    metrics = A.get("/metrics")
    assert metrics.status_code == 200
    assert metric_value(metrics.text, "tokmesh_sessions_active_total") == d["total_sessions"]


def test_gc_trigger_and_throttle(A: httpx.Client) -> None:
    d = assert_ok(A.post(f"{P}/gc/trigger"))  # default type expired_sessions
    assert set(d) == {"cleaned_count", "duration_ms", "freed_memory_mb"}
    assert isinstance(d["cleaned_count"], int) and d["cleaned_count"] >= 0
    assert d["duration_ms"] >= 0 and d["freed_memory_mb"] >= 0
    # The alias "expired" is the same type: throttled.
    for body in ({"type": "expired"}, {"type": "expired_sessions"}, {}):
        r = A.post(f"{P}/gc/trigger", json=body)
        assert_error(r, 429, "TM-ADMIN-4291")
        assert 1 <= int(r.headers["retry-after"]) <= 60
    assert set(assert_ok(A.post(f"{P}/gc/trigger", json={"type": "all"}))) == {
        "cleaned_count",
        "duration_ms",
        "freed_memory_mb",
    }
    assert_error(A.post(f"{P}/gc/trigger", json={"type": "all"}), 429, "TM-ADMIN-4291")
    assert_error(A.post(f"{P}/gc/trigger", json={"type": "disk"}), 400, "TM-ARG-1001")
    assert_error(A.post(f"{P}/gc/trigger", json={"kind": "all"}), 400, "TM-SYS-4000")


# --- check 25: create and list keys -----------------------------------------------------------


def test_create_key(A: httpx.Client, node: ServerProcess) -> None:
    before = now_ms()
    d = assert_ok(A.post(f"{P}/keys", json={"role": "validator"}), 201)
    assert {"key_id", "key_secret", "role", "created_at", "expires_at"} <= set(d)
    assert set(d) <= {"key_id", "key_secret", "role", "created_at", "expires_at", "warning"}
    assert KEY_ID_RE.match(d["key_id"]) and SECRET_RE.match(d["key_secret"])
    assert d["role"] == "validator" and d["expires_at"] == 0
    assert before <= d["created_at"] <= now_ms()
    assert "warning" in d  # never expiring = valid for more than a year
    with client(node, f"{d['key_id']}:{d['key_secret']}") as v:
        assert_error(v.get("/sessions/tmss-" + "0" * 26), 404, "TM-SESS-4040")  # it works
    d = assert_ok(
        A.post(f"{P}/keys", json={"role": "issuer", "expires_at": now_ms() + 86_400_000}), 201
    )
    assert "warning" not in d


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"role": "root"}, 400, "TM-ARG-1001"),
        ({}, 400, "TM-ARG-1002"),
        ({"description": "x"}, 400, "TM-ARG-1002"),
        ({"role": "issuer", "name": "n"}, 400, "TM-SYS-4000"),
        ({"role": "issuer", "rate_limit": "10"}, 400, "TM-SYS-4000"),
        ({"role": "issuer", "rate_limit": 0}, 400, "TM-ARG-1001"),
        ({"role": "issuer", "rate_limit": 1_000_001}, 400, "TM-ARG-1001"),
        ({"role": "issuer", "description": "d" * 257}, 400, "TM-ARG-1001"),
        ({"role": "issuer", "allowedlist": ["not-an-ip"]}, 400, "TM-ARG-1001"),
        (
            {"role": "issuer", "allowedlist": [f"10.0.0.{i}" for i in range(101)]},
            400,
            "TM-ARG-1001",
        ),
    ],
)
def test_create_key_errors(A: httpx.Client, body: dict[str, Any], status: int, code: str) -> None:
    assert_error(A.post(f"{P}/keys", json=body), status, code)


def test_create_key_accepts_bounds(A: httpx.Client) -> None:
    d = assert_ok(
        A.post(
            f"{P}/keys",
            json={
                "role": "metrics",
                "description": "d" * 256,
                "rate_limit": 1_000_000,
                "allowedlist": ["10.0.0.0/8", "2001:db8::1"] + [f"10.1.0.{i}" for i in range(98)],
            },
        ),
        201,
    )
    assert d["role"] == "metrics"


def test_list_keys(A: httpx.Client) -> None:
    make_key(A, "metrics", description="list-me", rate_limit=77)
    r = A.get(f"{P}/keys", params={"size": 100})
    d = assert_ok(r)
    assert set(d) == {"items", "total_items", "page", "size"}
    assert (d["page"], d["size"]) == (1, 100) and d["total_items"] == len(d["items"])
    for item in d["items"]:
        assert set(item) == KEY_FIELDS, item
    mine = [i for i in d["items"] if i["description"] == "list-me"]
    assert len(mine) == 1 and mine[0]["rate_limit"] == 77 and mine[0]["status"] == "active"
    assert "tmas_" not in r.text and "$argon2" not in r.text
    d = assert_ok(A.get(f"{P}/keys", params={"role": "metrics"}))
    assert d["items"] and all(i["role"] == "metrics" for i in d["items"])
    d = assert_ok(A.get(f"{P}/keys", params={"size": 1, "page": 2}))
    assert len(d["items"]) == 1 and d["page"] == 2
    body = assert_error(A.get(f"{P}/keys", params={"size": 0}), 400, "TM-ARG-1001")
    assert body["details"]["max_size"] == 100


# --- check 26: enable / disable ---------------------------------------------------------------


def test_disable_enable(A: httpx.Client, node: ServerProcess) -> None:
    key = make_key(A, "validator")
    kid = key_id_of(key)
    sid_path = "/sessions/tmss-" + "0" * 26
    with client(node, key, source="127.0.0.6") as v:
        assert_error(v.get(sid_path), 404, "TM-SESS-4040")  # authenticated and cached
        d = assert_ok(A.post(f"{P}/keys/{kid}/status", json={"status": "disabled"}))
        assert d["key_id"] == kid and d["status"] == "disabled"
        assert abs(d["updated_at"] - now_ms()) < 60_000
        assert_error(v.get(sid_path), 401, "TM-AUTH-4012")  # immediately, despite the cache
        # Same status again is a no-op.
        assert_ok(A.post(f"{P}/keys/{kid}/status", json={"status": "disabled"}))
        listed = assert_ok(A.get(f"{P}/keys", params={"size": 100}))["items"]
        assert [i["status"] for i in listed if i["key_id"] == kid] == ["disabled"]
        d = assert_ok(A.post(f"{P}/keys/{kid.upper()}/status", json={"status": "active"}))
        assert d["status"] == "active" and d["key_id"] == kid
        assert_error(v.get(sid_path), 404, "TM-SESS-4040")


def test_status_errors(A: httpx.Client) -> None:
    kid = key_id_of(make_key(A, "validator"))
    assert_error(
        A.post(f"{P}/keys/{UNKNOWN_KID}/status", json={"status": "disabled"}), 404, "TM-ADMIN-4041"
    )
    assert_error(A.post(f"{P}/keys/{kid}/status", json={"status": "paused"}), 400, "TM-ARG-1001")
    assert_error(A.post(f"{P}/keys/{kid}/status", json={}), 400, "TM-ARG-1002")
    assert_error(A.post(f"{P}/keys/{kid}/status", json={"enabled": True}), 400, "TM-SYS-4000")


# --- check 30: audit --------------------------------------------------------------------------


def _audit(A: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while True:
        items: list[dict[str, Any]] = assert_ok(
            A.get(f"{P}/audit/logs", params={"size": 100, **params})
        )["items"]
        if items or time.monotonic() > deadline:
            return items
        time.sleep(0.05)


def test_audit_key_lifecycle(A: httpx.Client, node: ServerProcess) -> None:
    assert node.admin_key
    operator = key_id_of(node.admin_key)
    start = now_ms()
    created = assert_ok(A.post(f"{P}/keys", json={"role": "issuer"}), 201)
    kid = created["key_id"]
    assert_ok(A.post(f"{P}/keys/{kid}/status", json={"status": "disabled"}))
    assert_ok(A.post(f"{P}/keys/{kid}/status", json={"status": "active"}))
    rotated = assert_ok(A.post(f"{P}/keys/{kid}/rotate"))
    for action in ("KEY_CREATED", "KEY_DISABLED", "KEY_ENABLED", "KEY_ROTATED"):
        items = _audit(A, action=action, start_time=start)
        mine = [i for i in items if i["resource"] == kid]
        assert len(mine) == 1, (action, items)
        rec = mine[0]
        assert {
            "id",
            "timestamp",
            "operator_id",
            "action",
            "resource",
            "ip_address",
            "tcp_remote_ip",
            "user_agent",
            "details",
            "result",
        } <= set(rec)
        assert rec["operator_id"] == operator and rec["action"] == action
        assert rec["result"] == "SUCCESS"
        assert rec["ip_address"] == rec["tcp_remote_ip"] == "127.0.0.1"
        assert isinstance(rec["timestamp"], int) and rec["timestamp"] >= start
        assert rec["id"].startswith("audit-")
    r = A.get(f"{P}/audit/logs", params={"size": 100})
    assert created["key_secret"] not in r.text and rotated["new_key_secret"] not in r.text
    assert "tmas_" not in r.text
    # Filters: operator and time window.
    assert all(i["operator_id"] == operator for i in _audit(A, operator_id=operator))
    assert _audit(A, action="KEY_CREATED", end_time=start - 10**6) == []


def test_audit_records_every_admin_request(A: httpx.Client) -> None:
    start = now_ms()
    assert_ok(A.get(f"{P}/status/summary"))
    items = _audit(A, start_time=start)
    assert any(i["resource"] == f"{P}/status/summary" for i in items), items


def test_audit_emergency_key_by_local_admin(A: httpx.Client) -> None:
    items = _audit(A, action="EMERGENCY_KEY_CREATED")
    assert items and all(i["operator_id"] == "LOCAL_ADMIN" for i in items)


def test_audit_bad_params(A: httpx.Client) -> None:
    assert_error(A.get(f"{P}/audit/logs", params={"size": 101}), 400, "TM-ARG-1001")
    assert_error(A.get(f"{P}/audit/logs", params={"start_time": "soon"}), 400, "TM-ARG-1001")


# --- check 31: configuration routes (03 §4.6) -------------------------------------------------


def _route_or_skip(r: httpx.Response, what: str) -> None:
    if r.status_code == 404 and r.headers.get("x-error-code") == "TM-SYS-4040":
        pytest.skip(f"{what} is not implemented on this server yet (404 TM-SYS-4040)")


def test_config_apply_and_get(A: httpx.Client) -> None:
    r = A.get(f"{P}/config")
    _route_or_skip(r, "GET /admin/v1/config")
    assert assert_ok(r)["telemetry"]["logging"]["level"] == "info"
    d = assert_ok(A.post(f"{P}/config/apply", json={"telemetry": {"logging": {"level": "debug"}}}))
    assert d["updated"] == ["telemetry.logging.level"] and d["rejected"] == []
    assert assert_ok(A.get(f"{P}/config"))["telemetry"]["logging"]["level"] == "debug"
    d = assert_ok(
        A.post(f"{P}/config/apply", json={"server": {"http": {"address": "127.0.0.1:1"}}})
    )
    assert d["rejected"] == ["server.http.address"] and d["updated"] == []
    # An invalid value: 400 TM-CFG-1001 or 1002 (03 §4.6), nothing applied.
    r = A.post(f"{P}/config/apply", json={"telemetry": {"logging": {"level": "loud"}}})
    assert_error(r, 400, r.headers.get("x-error-code", ""))
    assert r.headers["x-error-code"] in ("TM-CFG-1001", "TM-CFG-1002")
    assert assert_ok(A.get(f"{P}/config"))["telemetry"]["logging"]["level"] == "debug"
    assert_ok(A.post(f"{P}/config/apply", json={"telemetry": {"logging": {"level": "info"}}}))
    merged = A.get(f"{P}/config", params={"merged": "true"})
    assert "server" in assert_ok(merged)


def test_config_validate(A: httpx.Client) -> None:
    r = A.post(
        f"{P}/config/validate",
        json={"config_yaml": "server:\n  http:\n    address: 127.0.0.1:70000\n"},
    )
    _route_or_skip(r, "POST /admin/v1/config/validate")
    d = assert_ok(r)
    assert d["valid"] is False
    assert any(e["code"] == "TM-CFG-1002" and e.get("field") for e in d["errors"]), d
    d = assert_ok(A.post(f"{P}/config/validate", json={"config_yaml": "{}\n"}))
    assert d == {"valid": True, "errors": []}


def test_config_reload(A: httpx.Client) -> None:
    r = A.post(f"{P}/config/reload")
    _route_or_skip(r, "POST /admin/v1/config/reload")
    d = assert_ok(r)
    assert isinstance(d["updated"], list) and isinstance(d["ignored"], list)


# --- check 32: WAL and cluster routes ---------------------------------------------------------


def test_wal_status_and_logs(A: httpx.Client) -> None:
    r = A.get(f"{P}/wal/status")
    _route_or_skip(r, "GET /admin/v1/wal/status")
    d = assert_ok(r)
    assert {
        "enabled",
        "sync_mode",
        "current_segment",
        "total_segments",
        "total_size_bytes",
        "oldest_entry_time",
        "newest_entry_time",
        "last_offset",
    } <= set(d)
    assert d["sync_mode"] in ("sync", "batch")


def test_wal_logs(A: httpx.Client) -> None:
    r = A.get(f"{P}/wal/logs", params={"offset": 0, "limit": 16})
    _route_or_skip(r, "GET /admin/v1/wal/logs")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/octet-stream")
    assert 0 < len(r.content) <= 16 and r.headers.get("x-request-id")
    assert_error(A.get(f"{P}/wal/logs", params={"offset": -1}), 400, "TM-ARG-1001")
    assert_error(A.get(f"{P}/wal/logs", params={"limit": 0}), 400, "TM-ARG-1001")


def test_cluster_routes_not_implemented(
    A: httpx.Client, node: ServerProcess, issuer_key: str
) -> None:
    cluster = [
        ("GET", f"{P}/cluster/status", None),
        ("GET", f"{P}/cluster/nodes", None),
        ("POST", f"{P}/cluster/rebalance", None),
        ("POST", f"{P}/cluster/leave", None),
        ("POST", f"{P}/cluster/nodes/tmnd-abc/remove", None),
        ("POST", f"{P}/cluster/reset", {"force": True, "confirm": "RESET_CONFIRM"}),
    ]
    with client(node, issuer_key) as i:
        for method, path, body in cluster:
            doc = assert_error(A.request(method, path, json=body), 501, "TM-SYS-5010")
            assert doc["message"] == "cluster mode is not enabled on this node"
            assert_error(i.request(method, path, json=body), 403, "TM-ADMIN-4030")


# --- check 26 (last): disabling the last admin key ------------------------------------------------


def test_disable_last_admin_key_warns_then_emergency_recovers(
    A: httpx.Client, node: ServerProcess
) -> None:
    """Runs last in this module: it leaves the node without an active admin key."""
    spare = make_key(A, "admin")
    spare_kid = key_id_of(spare)
    with client(node, spare) as s:
        admins = assert_ok(
            s.get(f"{P}/keys", params={"role": "admin", "status": "active", "size": 100})
        )["items"]
        for item in admins:
            if item["key_id"] != spare_kid:
                d = assert_ok(
                    s.post(f"{P}/keys/{item['key_id']}/status", json={"status": "disabled"})
                )
                assert "warning" not in d  # the spare is still active
        d = assert_ok(s.post(f"{P}/keys/{spare_kid}/status", json={"status": "disabled"}))
        assert d["status"] == "disabled" and d["warning"]
        assert_error(s.get(f"{P}/keys"), 401, "TM-AUTH-4012")
    assert_error(A.get(f"{P}/keys"), 401, "TM-AUTH-4012")
    # The local socket is the way back in (03 §6).
    with client(node, node.create_admin_key()) as again:
        assert_ok(again.get(f"{P}/status/summary"))
