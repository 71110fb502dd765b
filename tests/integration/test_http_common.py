"""HTTP common rules against a real server (03 §2.1-§2.3, §8 checks 1-4 and 9; 02 §21 #36).

One node per module; every request goes over a real socket with httpx.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.http_asserts import (
    REQUEST_ID_RE,
    assert_error,
    assert_ok,
    client,
    make_key,
    running_node,
)
from tests.support.server import ServerProcess

ONE_MB = 1024 * 1024


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # The smallest allowed body limit (1MB) keeps the 413 check cheap.
    yield from running_node(
        tmp_path_factory, "http-common", {"server": {"http": {"max_body_size": "1MB"}}}
    )


@pytest.fixture(scope="module")
def admin(node: ServerProcess) -> Iterator[httpx.Client]:
    with client(node, node.admin_key) as c:
        yield c


@pytest.fixture(scope="module")
def issuer(node: ServerProcess, admin: httpx.Client) -> Iterator[httpx.Client]:
    with client(node, make_key(admin, "issuer")) as c:
        yield c


@pytest.fixture(scope="module")
def session_id(issuer: httpx.Client) -> str:
    d = assert_ok(issuer.post("/sessions", json={"user_id": "common-u1"}), 201)
    return str(d["session_id"])


# --- check 1: unknown route ------------------------------------------------------------------


def test_unknown_route_is_404_envelope_before_auth(node: ServerProcess) -> None:
    with client(node) as anon:
        body = assert_error(anon.get("/nope"), 404, "TM-SYS-4040")
    assert REQUEST_ID_RE.match(body["request_id"])


def test_unknown_route_with_credentials_is_404(admin: httpx.Client) -> None:
    assert_error(admin.get("/nope"), 404, "TM-SYS-4040")
    assert_error(admin.post("/nope", json={}), 404, "TM-SYS-4040")


def test_no_trailing_slash_normalisation(admin: httpx.Client) -> None:
    assert_error(admin.get("/health/"), 404, "TM-SYS-4040")
    assert_error(admin.get("/sessions/"), 404, "TM-SYS-4040")


def test_cli_doc_only_admin_routes_are_404(admin: httpx.Client) -> None:
    """03 §4.8: ``GET keys/{id}`` is not in the contract. The cluster routes are (issue 12
    wins over 03 there): a standalone node answers them 501."""
    kid = admin.headers["authorization"].split()[1].partition(":")[0]
    assert kid.startswith("tmak-")
    assert_error(admin.get(f"/admin/v1/keys/{kid}"), 404, "TM-SYS-4040")
    assert_error(admin.get("/admin/v1/cluster/status"), 501, "TM-SYS-5010")
    assert_error(admin.post("/admin/v1/cluster/rebalance"), 501, "TM-SYS-5010")
    assert_error(admin.post("/admin/v1/cluster/leave"), 501, "TM-SYS-5010")


# --- check 2: 405 ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["DELETE", "PATCH", "PUT", "OPTIONS"])
def test_wrong_method_is_405_with_allow(node: ServerProcess, session_id: str, method: str) -> None:
    with client(node) as anon:  # routing precedes auth: no credentials needed for a 405
        r = anon.request(method, f"/sessions/{session_id}")
    assert_error(r, 405, "TM-SYS-4050")
    allow = {m.strip() for m in r.headers["allow"].split(",")}
    assert allow == {"GET"}


def test_405_allow_lists_get_and_post_of_the_path(admin: httpx.Client) -> None:
    r = admin.request("DELETE", "/sessions")
    assert_error(r, 405, "TM-SYS-4050")
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "POST"}
    r = admin.get("/tokens/validate")
    assert_error(r, 405, "TM-SYS-4050")
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"POST"}
    r = admin.request("OPTIONS", "/admin/v1/keys")
    assert_error(r, 405, "TM-SYS-4050")
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "POST"}


def test_method_override_headers_are_ignored(admin: httpx.Client, session_id: str) -> None:
    r = admin.get(f"/sessions/{session_id}", headers={"X-HTTP-Method-Override": "DELETE"})
    assert assert_ok(r)["id"] == session_id
    r = admin.post(f"/sessions/{session_id}", headers={"X-HTTP-Method-Override": "GET"}, json={})
    assert_error(r, 405, "TM-SYS-4050")


# --- check 3: request id ----------------------------------------------------------------------


def test_client_request_id_is_echoed(admin: httpx.Client, session_id: str) -> None:
    r = admin.get(f"/sessions/{session_id}", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert assert_ok(r) and r.json()["request_id"] == "abc-123"
    r = admin.get("/nope", headers={"X-Request-ID": "abc-123"})
    assert assert_error(r, 404, "TM-SYS-4040")["request_id"] == "abc-123"


def test_request_id_generated_when_absent_or_invalid(admin: httpx.Client) -> None:
    r = admin.get("/health")
    assert REQUEST_ID_RE.match(r.headers["x-request-id"])
    assert assert_ok(r) and r.json()["request_id"] == r.headers["x-request-id"]
    for bad in ("x" * 129, "tab\there"):
        r = admin.get("/health", headers={"X-Request-ID": bad})
        assert REQUEST_ID_RE.match(r.headers["x-request-id"]), r.headers["x-request-id"]
        assert r.json()["request_id"] == r.headers["x-request-id"]
    r = admin.get("/health", headers={"X-Request-ID": "y" * 128})
    assert r.headers["x-request-id"] == "y" * 128


def test_request_id_on_every_response_kind(node: ServerProcess, admin: httpx.Client) -> None:
    with client(node) as anon:
        for r in (
            anon.get("/health"),
            anon.get("/ready"),
            anon.get("/metrics"),  # 401
            anon.get("/nope"),  # 404
            anon.put("/health"),  # 405
            anon.post("/sessions", json={"user_id": "x"}),  # 401
        ):
            assert r.headers.get("x-request-id"), (r.status_code, r.headers)
    r = admin.get("/metrics")
    assert r.status_code == 200 and r.headers.get("x-request-id")


# --- check 4: strict bodies -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"user_id":"u1","unknown_field":1}',
        b"{",
        b'{"user_id":"u1","ttl_seconds":"10"}',
        b"[]",
        b'"u1"',
        b'{"user_id":"u1","data":{"k":1}}',
        b'{"user_id":"u1","data":["a"]}',
        b'{"user_id":"u1","ttl_seconds":true}',
        b'{"user_id":"u1","ttl_seconds":10.5}',
    ],
)
def test_strict_body_is_400_sys_4000(issuer: httpx.Client, raw: bytes) -> None:
    r = issuer.post("/sessions", content=raw, headers={"Content-Type": "application/json"})
    assert_error(r, 400, "TM-SYS-4000")


def test_body_parsed_as_json_regardless_of_content_type(issuer: httpx.Client) -> None:
    r = issuer.post(
        "/sessions", content=b'{"user_id":"ct-u1"}', headers={"Content-Type": "text/plain"}
    )
    assert assert_ok(r, 201)["session"]["user_id"] == "ct-u1"


def test_empty_body_is_empty_object(issuer: httpx.Client) -> None:
    # {} lacks the required user_id: the same answer for an empty body.
    body = assert_error(issuer.post("/sessions", content=b""), 400, "TM-ARG-1002")
    assert body["details"]["field"] == "user_id"
    assert_error(issuer.post("/sessions", json={}), 400, "TM-ARG-1002")


def test_unknown_query_parameters_are_ignored(admin: httpx.Client, session_id: str) -> None:
    assert assert_ok(admin.get(f"/sessions/{session_id}?whatever=1"))["id"] == session_id


# --- check 9: body limit ----------------------------------------------------------------------


def test_oversized_body_is_413(issuer: httpx.Client) -> None:
    big = b'{"user_id":"' + b"a" * ONE_MB + b'"}'
    assert_error(issuer.post("/sessions", content=big), 413, "TM-ADMIN-4130")


def test_oversized_chunked_body_is_413(issuer: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"user_id":"'
        for _ in range(17):
            yield b"a" * 65536
        yield b'"}'

    assert_error(issuer.post("/sessions", content=chunks()), 413, "TM-ADMIN-4130")


def test_body_just_under_limit_is_parsed(issuer: httpx.Client) -> None:
    # A body below the limit reaches the strict parser (unknown field -> 4000, not 413).
    body = b'{"user_id":"u1","pad":"' + b"a" * (ONE_MB - 64) + b'"}'
    assert_error(issuer.post("/sessions", content=body), 400, "TM-SYS-4000")


def test_oversized_admin_body_is_413(admin: httpx.Client) -> None:
    big = b'{"role":"' + b"a" * ONE_MB + b'"}'
    assert_error(admin.post("/admin/v1/keys", content=big), 413, "TM-ADMIN-4130")


# --- 02 §21 #36: status per catalogue, X-Error-Code equals code --------------------------------


def test_error_status_follows_catalogue(issuer: httpx.Client) -> None:
    """TM-SESS-4002 is 429 (not 400 by suffix heuristics); 4040 is 404."""
    for _ in range(50):
        assert_ok(issuer.post("/sessions", json={"user_id": "quota-u"}), 201)
    assert_error(issuer.post("/sessions", json={"user_id": "quota-u"}), 429, "TM-SESS-4002")
    assert_error(issuer.get("/sessions/tmss-nothere"), 404, "TM-SESS-4040")
