"""OpenAPI 3.1 document and docs page against a real server; schemathesis fuzzes every route.

Acceptance of the "HTTP API" issue: ``GET /openapi.json`` describes every route, schema and
error; ``GET /docs`` lists the operations; schemathesis against the document finds no 5xx
and no response that violates the document. One node serves the whole module; the fuzz
runs once with an admin key and once with an issuer key (other roles' 403s included).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import OpenAPIV31SpecValidator
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.server import ServerProcess
from tokmesh.api.openapi_schemas import ERROR_CODE_PATTERN, OPERATIONS
from tokmesh.domain.errors import all_codes

# The routes of 03 §3.2, §3.7, §4.1, §4.2, §4.4, §4.5 and the two documentation routes.
CONTRACT_ROUTES = {
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("POST", "/sessions"),
    ("GET", "/sessions"),
    ("GET", "/sessions/{session_id}"),
    ("POST", "/sessions/{session_id}/touch"),
    ("POST", "/sessions/{session_id}/renew"),
    ("POST", "/sessions/{session_id}/revoke"),
    ("POST", "/users/{user_id}/sessions/revoke"),
    ("POST", "/tokens/validate"),
    ("GET", "/admin/v1/status/summary"),
    ("POST", "/admin/v1/gc/trigger"),
    ("POST", "/admin/v1/keys"),
    ("GET", "/admin/v1/keys"),
    ("POST", "/admin/v1/keys/{key_id}/status"),
    ("POST", "/admin/v1/keys/{key_id}/rotate"),
    ("GET", "/admin/v1/audit/logs"),
    ("GET", "/admin/v1/cluster/status"),
    ("GET", "/admin/v1/cluster/nodes"),
    ("POST", "/admin/v1/cluster/rebalance"),
    ("POST", "/admin/v1/cluster/leave"),
    ("POST", "/admin/v1/cluster/nodes/{node_id}/remove"),
    ("POST", "/admin/v1/cluster/reset"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # The smallest allowed body limit (1MB) keeps the 413 case cheap.
    s = ServerProcess(
        Path(tmp_path_factory.mktemp("openapi")) / "node",
        {"server": {"http": {"max_body_size": "1MB"}}},
    )
    try:
        s.start()
        s.create_admin_key()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def document(node: ServerProcess) -> dict[str, Any]:
    r = httpx.get(node.base_url + "/openapi.json", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-request-id"]
    doc: dict[str, Any] = r.json()
    return doc


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            yield method.upper(), path, op


def _resolve(doc: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in obj:
        return obj
    node: Any = doc
    for part in obj["$ref"].lstrip("#/").split("/"):
        node = node[part]
    return dict(node)


# --- the document --------------------------------------------------------------------------


def test_document_is_valid_openapi_31(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    errors = [str(e) for e in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors == []


def test_document_lists_every_route_with_exact_metadata(document: dict[str, Any]) -> None:
    served = {(m, p) for m, p, _ in _operations(document)}
    assert served >= CONTRACT_ROUTES
    # A route served without an entry in OPERATIONS would be documented only generically.
    assert served - set(OPERATIONS) == set()
    ids = [op["operationId"] for _, _, op in _operations(document)]
    assert len(ids) == len(set(ids))


def test_security_schemes(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http"
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["bearerAuth"]["bearerFormat"] == "<key_id>:<key_secret>"
    assert schemes["apiKeyAuth"] == {**schemes["apiKeyAuth"], "in": "header", "name": "X-API-Key"}
    open_routes = {"/health", "/ready", "/openapi.json", "/docs"}
    for _, path, op in _operations(document):
        if path in open_routes:
            assert op["security"] == []
        elif path.startswith("/oauth2/"):
            # OAuth clients send their credentials as HTTP Basic (RFC 6749 §2.3.1).
            assert op["security"] == [{"basicAuth": []}, {"bearerAuth": []}, {"apiKeyAuth": []}]
        else:
            assert op["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}], path


def test_error_envelope_schema(document: dict[str, Any]) -> None:
    env = document["components"]["schemas"]["ErrorEnvelope"]
    assert env["required"] == ["code", "message", "request_id", "timestamp"]
    assert env["additionalProperties"] is False
    assert env["properties"]["timestamp"]["type"] == "integer"
    assert env["properties"]["details"]["type"] == "object"
    code = _resolve(document, env["properties"]["code"])
    assert code["pattern"] == ERROR_CODE_PATTERN == r"^TM-[A-Z]+-[0-9]{4}$"


def _error_codes(document: dict[str, Any], op: dict[str, Any]) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    catalogue = all_codes()
    for status, resp in op["responses"].items():
        if status.startswith(("1", "2")):  # 101: GET /events switches to WebSocket
            continue
        assert set(resp["headers"]) >= {"X-Request-ID", "X-Error-Code"}
        schema = resp["content"]["application/json"]["schema"]
        if schema == {"$ref": "#/components/schemas/OAuth2Error"}:
            # The OAuth 2.0 routes answer RFC 6749 error bodies; the code is in the header.
            codes = set(resp["headers"]["X-Error-Code"]["schema"]["enum"])
            out[int(status)] = codes
            continue
        assert schema["allOf"][0] == {"$ref": "#/components/schemas/ErrorEnvelope"}
        codes = set(schema["allOf"][1]["properties"]["code"]["enum"])
        for code in codes:
            assert re.fullmatch(ERROR_CODE_PATTERN, code)
            # Every documented code is in the catalogue, under the status it is sent with
            # (416 is the one status HTTP imposes on a code: an unsatisfiable Range).
            assert catalogue[code].http_status == int(status) or (status, code) == (
                "416",
                "TM-ARG-1001",
            ), (code, status)
        out[int(status)] = codes
    return out


def test_every_operation_documents_its_errors(document: dict[str, Any]) -> None:
    for method, path, op in _operations(document):
        errors = _error_codes(document, op)
        assert "TM-SYS-5000" in errors[500]
        assert errors[405] == {"TM-SYS-4050"}
        if "{" in path:
            assert "TM-SYS-4040" in errors[404], path
        if op["security"]:
            assert {"TM-AUTH-4010", "TM-AUTH-4011", "TM-AUTH-4012"} <= errors[401], path
            assert "TM-SYS-4290" in errors[429]
            assert "TM-SYS-5030" in errors[503]
            assert 403 in errors
        if method == "POST" and op["security"]:
            assert {"TM-SYS-4000", "TM-ARG-1001"} <= errors[400], path
            assert errors[413] == {"TM-ADMIN-4130"}
            assert {"TM-AUTH-4014", "TM-AUTH-4015"} <= errors[401]
        if path.startswith("/admin/v1/"):
            assert errors[403] == {"TM-ADMIN-4030", "TM-ADMIN-4031"}, path


def test_route_specific_errors(document: dict[str, Any]) -> None:
    def codes(method: str, path: str) -> set[str]:
        errs = _error_codes(document, document["paths"][path][method])
        return set().union(*errs.values())

    assert {
        "TM-ARG-1002",
        "TM-SESS-4001",
        "TM-TOKN-4000",
        "TM-TOKN-4090",
        "TM-SESS-4090",
        "TM-SESS-4002",
    } <= codes("post", "/sessions")
    assert {"TM-SESS-4040", "TM-SESS-4041"} <= codes("get", "/sessions/{session_id}")
    assert "TM-SESS-4091" in codes("post", "/sessions/{session_id}/renew")
    assert {"TM-TOKN-4010", "TM-TOKN-4011", "TM-TOKN-4012"} <= codes("post", "/tokens/validate")
    assert "TM-ADMIN-4041" in codes("post", "/admin/v1/keys/{key_id}/rotate")
    assert "TM-ADMIN-4291" in codes("post", "/admin/v1/gc/trigger")
    assert "TM-SYS-5010" in codes("get", "/admin/v1/cluster/nodes")
    assert "TM-SYS-5010" in codes("get", "/admin/v1/cluster/status")
    assert {"TM-SYS-5010", "TM-CLST-5040"} <= codes("post", "/admin/v1/cluster/leave")
    assert codes("get", "/health") == {"TM-SYS-5000", "TM-SYS-4050"}
    assert "TM-SYS-5030" in codes("get", "/ready")
    metrics = _error_codes(document, document["paths"]["/metrics"]["get"])
    assert {"TM-AUTH-4010", "TM-AUTH-4011", "TM-AUTH-4012"} <= metrics[401]
    assert metrics[403] == {"TM-AUTH-4030"}


def test_request_bodies_are_strict(document: dict[str, Any]) -> None:
    for method, path, op in _operations(document):
        if method != "POST" or path.startswith("/oauth2/"):
            continue  # OAuth 2.0 forms: unknown parameters are ignored (RFC 6749 §3.2)
        schema = _resolve(document, op["requestBody"]["content"]["application/json"]["schema"])
        assert schema["type"] == "object"
        if path != "/admin/v1/config/apply":  # a partial config tree: any paths (03 §4.6)
            assert schema["additionalProperties"] is False, path
    schemas = document["components"]["schemas"]
    create = schemas["CreateSessionRequest"]
    assert create["required"] == ["user_id"]
    props = create["properties"]
    assert props["ttl_seconds"] == {**props["ttl_seconds"], "type": "integer", "minimum": 1}
    assert props["ttl_seconds"]["maximum"] == 2_592_000
    assert props["user_id"]["maxLength"] == 128
    assert props["token"]["pattern"] == r"^tmtk_[A-Za-z0-9_-]{43}$"
    assert schemas["ValidateRequest"]["required"] == ["token"]
    assert schemas["RenewRequest"]["required"] == ["ttl_seconds"]
    assert schemas["CreateKeyRequest"]["required"] == ["role"]
    assert schemas["Session"]["additionalProperties"] is False
    assert set(schemas["Session"]["required"]) == {
        "id",
        "user_id",
        "device_id",
        "ip_address",
        "user_agent",
        "last_access_ip",
        "last_access_ua",
        "created_by",
        "created_at",
        "expires_at",
        "last_active",
        "data",
        "version",
    }


def test_success_statuses_and_media(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert set(paths["/sessions"]["post"]["responses"]) >= {"201"}
    assert "200" not in paths["/sessions"]["post"]["responses"]
    assert "201" in paths["/admin/v1/keys"]["post"]["responses"]
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert "text/html" in paths["/docs"]["get"]["responses"]["200"]["content"]
    env = paths["/sessions/{session_id}"]["get"]["responses"]["200"]["content"]
    schema = env["application/json"]["schema"]
    assert schema["required"] == ["code", "message", "request_id", "timestamp", "data"]
    assert schema["properties"]["code"] == {"const": "OK"}


def test_docs_page_lists_every_operation(node: ServerProcess, document: dict[str, Any]) -> None:
    r = httpx.get(node.base_url + "/docs", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["x-request-id"]
    page = r.text
    assert page.startswith("<!doctype html>")
    for method, path, op in _operations(document):
        assert f'id="{op["operationId"]}"' in page
        assert f">{method} {path}</a>" in page
    assert 'id="schema-ErrorEnvelope"' in page
    # Self-contained: no scripts, no stylesheets or images fetched from anywhere.
    assert "<script" not in page
    assert re.search(r"""(src|href)=['"]?(https?:)?//""", page) is None
    assert "@import" not in page and "url(" not in page


def test_unknown_method_on_documented_path_is_405(node: ServerProcess) -> None:
    r = httpx.request("PUT", node.base_url + "/openapi.json", timeout=10)
    assert r.status_code == 405
    assert r.json()["code"] == "TM-SYS-4050"
    assert r.headers["allow"] == "GET"


# --- real responses of every kind, validated against the document -----------------------------

_UNSET: Any = object()


def _call(
    schema: Any,
    method: str,
    path: str,
    key: str | None,
    expect: int,
    *,
    params: dict[str, str] | None = None,
    query: dict[str, Any] | None = None,
    body: Any = _UNSET,
    headers: dict[str, str] | None = None,
) -> Any:
    """One hand-made request through schemathesis, checked like a generated one."""
    kwargs: dict[str, Any] = {} if body is _UNSET else {"body": body}
    case = schema[path][method].Case(path_parameters=params, query=query, headers=headers, **kwargs)
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    checks = [c for c in CHECKS if expect != 501 or c is not not_a_server_error]
    response = case.call_and_validate(headers=auth, checks=checks, timeout=30)
    assert response.status_code == expect, (method, path, response.text)
    return response


def test_real_responses_conform(node: ServerProcess, admin_schema: Any, issuer_key: str) -> None:
    """Successes and errors that random inputs rarely reach, each checked against the doc."""
    sc = admin_schema
    admin = node.admin_key
    validator = node.create_key("validator")
    metrics_key = node.create_key("metrics")
    created = _call(
        sc,
        "POST",
        "/sessions",
        issuer_key,
        201,
        body={
            "user_id": "oa-u1",
            "device_id": "d1",
            "ttl_seconds": 600,
            "data": {"k": "v"},
            "idle_timeout_seconds": 300,
        },
    ).json()["data"]
    sid, token = created["session_id"], created["token"]
    p = {"session_id": sid}
    # Reads, trimmed reads, touch, renew, validate with and without touch.
    assert _call(sc, "GET", "/sessions/{session_id}", validator, 200, params=p).json()["data"][
        "data"
    ] == {"k": "v"}
    trimmed = _call(
        sc, "GET", "/sessions/{session_id}", admin, 200, params=p, query={"fields": "user_id"}
    ).json()["data"]
    assert set(trimmed) == {"id", "user_id"}
    _call(
        sc, "POST", "/sessions/{session_id}/touch", validator, 200, params=p, query={"fields": "id"}
    )
    _call(
        sc,
        "POST",
        "/sessions/{session_id}/renew",
        issuer_key,
        200,
        params=p,
        body={"ttl_seconds": 300},
    )
    _call(sc, "POST", "/tokens/validate", validator, 200, body={"token": token})
    _call(sc, "POST", "/tokens/validate", validator, 200, body={"token": token, "touch": True})
    listed = _call(sc, "GET", "/sessions", issuer_key, 200, query={"user_id": "oa-u1"}).json()
    assert listed["data"]["total_items"] == 1
    _call(sc, "GET", "/sessions", admin, 200, query={"fields": "id,last_active", "size": 5})
    # Conflicts and quota-like errors.
    _call(sc, "POST", "/sessions", issuer_key, 409, body={"user_id": "oa-u2", "token": token})
    conflict = _call(
        sc,
        "POST",
        "/sessions/{session_id}/renew",
        issuer_key,
        409,
        params=p,
        body={"ttl_seconds": 300, "expected_version": 999},
    )
    assert conflict.json()["code"] == "TM-SESS-4091"
    # Validation errors, role and anti-replay failures.
    _call(sc, "POST", "/sessions", issuer_key, 400, body={"user_id": "x" * 129})
    _call(sc, "POST", "/sessions", validator, 403, body={"user_id": "oa-u3"})
    _call(sc, "GET", "/sessions", validator, 403)
    _call(sc, "GET", "/sessions/{session_id}", metrics_key, 403, params=p)
    _call(sc, "POST", "/tokens/validate", validator, 400, body={"token": "abc"})
    _call(sc, "POST", "/tokens/validate", validator, 401, body={"token": "tmtk_" + "A" * 43})
    _call(
        sc,
        "POST",
        "/sessions/{session_id}/revoke",
        issuer_key,
        401,
        params=p,
        headers={"X-Timestamp": "1000"},
    )
    big = {"user_id": "oa-u4", "data": {"k": "v" * (1024 * 1024 + 10)}}
    _call(sc, "POST", "/sessions", issuer_key, 413, body=big)
    # Revocation.
    _call(
        sc, "POST", "/sessions/{session_id}/revoke", issuer_key, 200, params=p, body={"sync": True}
    )
    revoked = _call(sc, "POST", "/tokens/validate", validator, 401, body={"token": token})
    assert revoked.json()["code"] == "TM-TOKN-4012"
    _call(sc, "GET", "/sessions/{session_id}", validator, 404, params=p)
    _call(
        sc, "POST", "/users/{user_id}/sessions/revoke", issuer_key, 200, params={"user_id": "oa-u1"}
    )
    # Observability.
    _call(sc, "GET", "/health", None, 200)
    _call(sc, "GET", "/ready", None, 200)
    _call(sc, "GET", "/metrics", metrics_key, 200)
    _call(sc, "GET", "/metrics", admin, 200)
    _call(sc, "GET", "/metrics", None, 401)
    _call(sc, "GET", "/metrics", issuer_key, 403)
    _call(sc, "GET", "/docs", None, 200)
    # Admin.
    _call(sc, "GET", "/admin/v1/status/summary", admin, 200)
    _call(sc, "GET", "/admin/v1/status/summary", issuer_key, 403)
    _call(sc, "GET", "/admin/v1/status/summary", None, 401)
    _call(sc, "GET", "/admin/v1/status/summary", "tmak-01aaaaaaaaaaaaaaaaaaaaaaaa:tmas_x", 401)
    _call(sc, "POST", "/admin/v1/gc/trigger", admin, 200, body={"type": "all"})
    throttled = _call(sc, "POST", "/admin/v1/gc/trigger", admin, 429, body={"type": "all"})
    assert int(throttled.headers["retry-after"][0]) >= 1
    made = _call(
        sc,
        "POST",
        "/admin/v1/keys",
        admin,
        201,
        body={"role": "validator", "description": "d", "allowedlist": ["10.0.0.0/8"]},
    ).json()["data"]
    kp = {"key_id": made["key_id"]}
    _call(sc, "POST", "/admin/v1/keys", admin, 400, body={"role": "root"})
    _call(sc, "GET", "/admin/v1/keys", admin, 200, query={"role": "validator", "size": 100})
    _call(
        sc,
        "POST",
        "/admin/v1/keys/{key_id}/status",
        admin,
        200,
        params=kp,
        body={"status": "disabled"},
    )
    _call(
        sc,
        "POST",
        "/admin/v1/keys/{key_id}/status",
        admin,
        200,
        params=kp,
        body={"status": "active"},
    )
    _call(sc, "POST", "/admin/v1/keys/{key_id}/rotate", admin, 200, params=kp)
    missing = {"key_id": "tmak-01aaaaaaaaaaaaaaaaaaaaaaaa"}
    _call(sc, "POST", "/admin/v1/keys/{key_id}/rotate", admin, 404, params=missing)
    _call(sc, "GET", "/admin/v1/audit/logs", admin, 200, query={"action": "KEY_CREATED"})
    _call(sc, "GET", "/admin/v1/audit/logs", admin, 400, query={"size": 101})
    _call(sc, "GET", "/admin/v1/cluster/nodes", admin, 501)
    _call(sc, "GET", "/admin/v1/cluster/status", admin, 501)
    _call(sc, "POST", "/admin/v1/cluster/leave", admin, 501)
    _call(
        sc,
        "POST",
        "/admin/v1/cluster/reset",
        admin,
        501,
        body={"force": True, "confirm": "RESET_CONFIRM"},
    )


def test_control_characters_in_path_parameters(node: ServerProcess, admin_schema: Any) -> None:
    """A path parameter may hold any character; the answer is still the documented 404."""
    sc, admin = admin_schema, node.admin_key
    odd = "a\nb"  # sent percent-encoded (%0A)
    _call(sc, "GET", "/sessions/{session_id}", admin, 404, params={"session_id": odd})
    # Admin routes are served through the Quart-Trio host: its routing must not answer
    # with its own HTML 404 (no envelope, no X-Error-Code) for a decoded newline.
    _call(sc, "POST", "/admin/v1/keys/{key_id}/rotate", admin, 404, params={"key_id": odd})


@pytest.mark.parametrize(
    "path", ["/sessions", "/admin/v1/keys", "/admin/v1/audit/logs", "/admin/v1/backups/snapshots"]
)
def test_page_beyond_64_bits_is_a_client_error(
    node: ServerProcess, admin_schema: Any, path: str
) -> None:
    """``page`` has no upper bound in 03 §2.5, but an unrepresentable one is no 500."""
    if path not in admin_schema:
        pytest.skip(f"{path} is not served by this build")
    _call(admin_schema, "GET", path, node.admin_key, 400, query={"page": 2**70})


# --- schemathesis against the real server ----------------------------------------------------


def _schema(node: ServerProcess) -> Any:
    schema = schemathesis.openapi.from_url(node.base_url + "/openapi.json")
    # The fuzzer must not invent credentials: ten failed authentications from one address
    # block it for five minutes (02 §12), which would turn the rest of the run into 429s.
    schema.config.generation.update(
        max_examples=MAX_EXAMPLES, with_security_parameters=False, deterministic=True
    )
    return schema


@pytest.fixture(scope="module")
def admin_schema(node: ServerProcess) -> Any:
    return _schema(node)


@pytest.fixture(scope="module")
def issuer_key(node: ServerProcess) -> str:
    return node.create_key("issuer")


def _call_and_validate(case: Any, key: str) -> None:
    """One generated request with ``key``; every response must conform to the document."""
    checks = CHECKS
    if case.operation.path == "/admin/v1/wal/logs" and case.query:
        # follow=true streams until the client leaves (03 §4.7): no response to validate.
        case.query.pop("follow", None)
    cluster = case.operation.path.startswith("/admin/v1/cluster")
    if cluster:
        # 501 TM-SYS-5010 is the contract for cluster routes on a standalone node (03 §4.5);
        # it is documented, and checked exactly below instead of as a "server error".
        checks = [c for c in CHECKS if c is not not_a_server_error]
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {key}"}, checks=checks, timeout=30
    )
    if response.status_code >= 500:
        assert cluster and response.status_code == 501, response.text
        assert response.json()["code"] == "TM-SYS-5010"


def _fuzz(schema: Any, key: str, subtests: pytest.Subtests) -> None:
    """Every operation of ``schema``, fuzzed with ``key``, one subtest per operation.

    Schemathesis' pytest integration for schemas loaded from a fixture reaches into pytest
    internals that pytest 9.2 removed; its Python API (an operation's Hypothesis strategy)
    does not, so the fuzz drives Hypothesis itself, in every generation mode the schema is
    configured for (positive and negative by default).
    """
    modes = list(schema.config.generation.modes)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= len(CONTRACT_ROUTES)
    for operation in operations:
        strategy = st.one_of([operation.as_strategy(generation_mode=m) for m in modes])

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            _call_and_validate(case, key)

        with subtests.test(msg=operation.label):
            run()


def test_fuzz_as_admin(node: ServerProcess, admin_schema: Any, subtests: pytest.Subtests) -> None:
    assert node.admin_key is not None
    _fuzz(admin_schema, node.admin_key, subtests)


def test_fuzz_as_issuer(admin_schema: Any, issuer_key: str, subtests: pytest.Subtests) -> None:
    _fuzz(admin_schema, issuer_key, subtests)
