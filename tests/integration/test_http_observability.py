"""``/health``, ``/ready`` and ``/metrics`` over real HTTP.

03 §3.7, §8 checks 21-22; 02 §21 #15.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.integration.http_asserts import (
    assert_error,
    assert_ok,
    client,
    key_id_of,
    make_key,
    now_ms,
    running_node,
)
from tests.support.server import ServerProcess

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from running_node(tmp_path_factory, "http-observability")


@pytest.fixture(scope="module")
def creds(node: ServerProcess) -> dict[str, str]:
    assert node.admin_key
    with client(node, node.admin_key) as a:
        out = {role: make_key(a, role) for role in ("issuer", "validator", "metrics")}
        # A metrics key with the smallest bucket: /metrics must not consume it.
        out["metrics_slow"] = make_key(a, "metrics", rate_limit=1)
    return out | {"admin": node.admin_key}


# --- check 21: liveness and readiness -------------------------------------------------------------


def test_health_open(node: ServerProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer tmak-nope:tmas_nope"}):
        with client(node, headers=headers, source="127.0.0.30") as c:
            before = now_ms()
            d = assert_ok(c.get("/health"))
            assert d["status"] == "healthy"
            assert type(d["timestamp"]) is int and before - 1000 <= d["timestamp"] <= now_ms()


def test_ready_open(node: ServerProcess) -> None:
    with client(node) as c:
        d = assert_ok(c.get("/ready"))
    assert d == {"status": "ready", "checks": {"storage": "ok", "cluster": "ok"}}


def test_probes_are_not_rate_limited(node: ServerProcess) -> None:
    with client(node) as c:
        assert all(c.get("/health").status_code == 200 for _ in range(50))
        assert all(c.get("/ready").status_code == 200 for _ in range(50))


def test_probes_post_is_405(node: ServerProcess) -> None:
    with client(node) as c:
        r = c.post("/health")
        assert_error(r, 405, "TM-SYS-4050")
        assert r.headers["allow"] == "GET"


# --- check 22: /metrics authorisation -------------------------------------------------------------


def test_metrics_requires_metrics_or_admin(node: ServerProcess, creds: dict[str, str]) -> None:
    with client(node, source="127.0.0.31") as anon:
        assert_error(anon.get("/metrics"), 401, "TM-AUTH-4010")
    for role in ("validator", "issuer"):
        with client(node, creds[role]) as c:
            assert_error(c.get("/metrics"), 403, "TM-AUTH-4030")
    for role in ("metrics", "admin"):
        with client(node, creds[role]) as c:
            r = c.get("/metrics")
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == PROMETHEUS_TEXT
            assert r.headers.get("x-request-id")
            assert "x-error-code" not in r.headers
            assert "tokmesh_sessions_active_total" in r.text


def test_metrics_bad_and_disabled_keys(node: ServerProcess, creds: dict[str, str]) -> None:
    kid = key_id_of(creds["metrics"])
    with client(node, f"{kid}:tmas_{'m' * 43}", source="127.0.0.32") as bad:
        assert_error(bad.get("/metrics"), 401, "TM-AUTH-4011")
    assert node.admin_key
    with client(node, node.admin_key) as a:
        key = make_key(a, "metrics")
        assert_ok(a.post(f"/admin/v1/keys/{key_id_of(key)}/status", json={"status": "disabled"}))
    with client(node, key, source="127.0.0.33") as c:
        assert_error(c.get("/metrics"), 401, "TM-AUTH-4012")


def test_metrics_not_rate_limited(node: ServerProcess, creds: dict[str, str]) -> None:
    with client(node, creds["metrics_slow"]) as c:
        assert all(c.get("/metrics").status_code == 200 for _ in range(5))


# --- startup readiness and metrics without auth (one extra node) ----------------------------------


def test_ready_503_during_startup_and_open_metrics(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """``/ready`` answers 503 ``TM-SYS-5030`` until recovery finished (03 §3.7), and with
    ``telemetry.metrics.auth_enabled: false`` ``/metrics`` needs no key."""
    s = server_factory(
        "startup", overrides={"telemetry": {"metrics": {"auth_enabled": False}}}, start=False
    )
    s.start(wait_ready=False)
    answers: list[httpx.Response] = []
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=s.base_url, timeout=2) as c:
        while time.monotonic() < deadline:
            assert s.proc is not None and s.proc.poll() is None, s.log_tail()
            try:
                r = c.get("/ready")
            except httpx.TransportError:
                time.sleep(0.002)  # not listening yet
                continue
            answers.append(r)
            if r.status_code == 200:
                break
        assert answers and answers[-1].status_code == 200, s.log_tail()
        not_ready = answers[:-1]
        # The listener opens before recovery (03 §3.7): the first answers are 503.
        assert not_ready, "no 503 seen before readiness"
        for r in not_ready:
            body = assert_error(r, 503, "TM-SYS-5030")
            assert body["details"]["status"] == "not_ready"
            assert body["details"]["checks"]["storage"] != "ok"
        assert_ok(answers[-1])
        # Metrics auth disabled: open to anyone, and to any role.
        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"] == PROMETHEUS_TEXT
    admin = s.create_admin_key()
    with client(s, admin) as a, client(s, make_key(a, "validator")) as v:
        assert v.get("/metrics").status_code == 200
