"""Real answers of the OAuth 2.0 routes, each checked against the served OpenAPI document
(status, media type, headers and body schema), including the errors that a fuzzer with a
valid key never reaches (no credentials, a role without the permission)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.server import ServerProcess

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(Path(tmp_path_factory.mktemp("oauth2-openapi")) / "node")
    try:
        s.start()
        s.create_admin_key()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def schema(node: ServerProcess) -> Any:
    return schemathesis.openapi.from_url(node.base_url + "/openapi.json")


def _call(
    schema: Any, path: str, key: str | None, body: dict[str, str], expect: int
) -> httpx.Response:
    case = schema[path]["POST"].Case(body=body, media_type=FORM)
    headers = {"Authorization": "Basic " + base64.b64encode(key.encode()).decode()} if key else {}
    response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)
    assert response.status_code == expect, (path, response.text)
    return response  # type: ignore[no-any-return]


def test_documented_shapes(node: ServerProcess, schema: Any) -> None:
    issuer = node.create_key("issuer")
    validator = node.create_key("validator")
    metrics = node.create_key("metrics")
    with node.client(issuer) as c:
        token = c.post("/sessions", json={"user_id": "doc-user"}).json()["data"]["token"]
    hint = {"token_type_hint": "access_token"}
    active = _call(schema, "/oauth2/introspect", validator, {"token": token, **hint}, 200)
    assert active.json()["active"] is True
    inactive = _call(schema, "/oauth2/introspect", validator, {"token": "tmtk_x"}, 200)
    assert inactive.json() == {"active": False}
    unauthenticated = _call(schema, "/oauth2/introspect", None, {"token": token}, 401)
    # schemathesis' response keeps every value of a header, in a list
    challenge: Any = unauthenticated.headers["www-authenticate"]
    assert challenge == ['Basic realm="tokmesh"']
    _call(schema, "/oauth2/introspect", validator, hint, 400)
    _call(schema, "/oauth2/introspect", metrics, {"token": token}, 403)
    _call(schema, "/oauth2/revoke", validator, {"token": token}, 403)
    _call(schema, "/oauth2/revoke", None, {"token": token}, 401)
    revoked = _call(schema, "/oauth2/revoke", issuer, {"token": token, **hint}, 200)
    assert revoked.content == b""
    _call(schema, "/oauth2/revoke", issuer, {"token": token}, 200)
    assert _call(schema, "/oauth2/introspect", validator, {"token": token}, 200).json() == {
        "active": False
    }
