"""``POST /oauth2/introspect`` and ``POST /oauth2/revoke`` against a real server process.

Requests are shaped as real OAuth clients send them: ``curl`` with ``-u`` and
``--data-urlencode``, authlib's ``OAuth2Client`` built with a client id and secret, and
the exact request of lua-resty-openidc (the library behind Apache APISIX's
``openid-connect`` plugin): raw Basic credentials, ``client_id``/``client_secret``
repeated in the body and ``token_type_hint=access_token``.

Every failing authentication comes from its own client address (``X-Forwarded-For``
through a trusted proxy) so that the brute-force guard, which blocks an address after
ten failures, never blocks the tests that follow; one test trips it on purpose.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.integrations.httpx_client import OAuth2Client

from tests.support.server import ServerProcess

INTROSPECT = "/oauth2/introspect"
REVOKE = "/oauth2/revoke"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CURL = shutil.which("curl")

_addresses = (f"198.51.100.{n}" for n in itertools.count(1))


def _fresh_address() -> dict[str, str]:
    """A client address no other request used (the brute-force guard counts per address)."""
    return {"X-Forwarded-For": next(_addresses)}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(
        Path(tmp_path_factory.mktemp("oauth2")) / "node",
        {"security": {"network": {"trusted_proxies": ["127.0.0.1/32"]}}},
    )
    try:
        s.start()
        s.create_admin_key()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def issuer(node: ServerProcess) -> str:
    return node.create_key("issuer")


@pytest.fixture(scope="module")
def validator(node: ServerProcess) -> str:
    return node.create_key("validator")


def _split(key: str) -> tuple[str, str]:
    key_id, secret = key.split(":")
    return key_id, secret


def _basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(key.encode()).decode()}


def _session(node: ServerProcess, issuer: str, user: str, **body: Any) -> dict[str, Any]:
    with node.client(issuer) as c:
        r = c.post("/sessions", json={"user_id": user, "ttl_seconds": 600, **body})
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


def _post(
    node: ServerProcess,
    path: str,
    content: bytes | str,
    headers: dict[str, str],
) -> httpx.Response:
    return httpx.post(node.base_url + path, content=content, headers=headers, timeout=10)


def _introspect(node: ServerProcess, key: str, token: str) -> httpx.Response:
    return httpx.post(
        node.base_url + INTROSPECT,
        data={"token": token, "token_type_hint": "access_token"},
        auth=_split(key),
        timeout=10,
    )


def _get_session(node: ServerProcess, key: str, sid: str) -> dict[str, Any]:
    with node.client(key) as c:
        r = c.get(f"/sessions/{sid}")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()["data"]
    return data


# --- what gateways send -------------------------------------------------------------------------


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_introspection(node: ServerProcess, issuer: str, validator: str) -> None:
    made = _session(node, issuer, "curl-user", device_id="laptop")
    before = int(time.time())
    out = subprocess.run(
        [
            str(CURL),
            "-sS",
            "-D",
            "-",
            "-u",
            validator,
            "--data-urlencode",
            f"token={made['token']}",
            "-d",
            "token_type_hint=access_token",
            node.base_url + INTROSPECT,
        ],
        capture_output=True,
        timeout=20,
        check=True,
    ).stdout.decode()
    head, _, body = out.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200")
    lines = {k.lower(): v for k, _, v in (x.partition(": ") for x in head.split("\r\n")[1:])}
    assert lines["content-type"] == "application/json"
    assert lines["cache-control"] == "no-store"
    doc = json.loads(body)
    session = made["session"]
    assert doc == {
        "active": True,
        "sub": "curl-user",
        "client_id": _split(issuer)[0],
        "token_type": "Bearer",
        "iat": session["created_at"] // 1000,
        "exp": session["expires_at"] // 1000,
        "sid": made["session_id"],
    }
    assert before - 2 <= doc["iat"] <= before + 2


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_revocation(node: ServerProcess, issuer: str) -> None:
    made = _session(node, issuer, "curl-revoke")
    out = subprocess.run(
        [
            str(CURL),
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            "-u",
            issuer,
            "--data-urlencode",
            f"token={made['token']}",
            "-d",
            "token_type_hint=access_token",
            node.base_url + REVOKE,
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    assert out == "200 0"
    with node.client(issuer) as c:
        r = c.post("/tokens/validate", json={"token": made["token"]})
    assert r.status_code == 401
    assert r.json()["code"] == "TM-TOKN-4012"


def test_lua_resty_openidc_request(node: ServerProcess, issuer: str, validator: str) -> None:
    """What APISIX's openid-connect plugin sends with ``introspection_endpoint`` set and
    ``introspection_endpoint_auth_method: client_secret_basic``: Basic credentials that are
    not form-encoded, the credentials again in the body, the hint from
    ``introspection_params``."""
    made = _session(node, issuer, "apisix-user")
    key_id, secret = _split(validator)
    body = httpx.QueryParams(
        {
            "token": made["token"],
            "client_id": key_id,
            "client_secret": secret,
            "token_type_hint": "access_token",
        }
    )
    r = _post(node, INTROSPECT, str(body), {**FORM, **_basic(validator)})
    assert r.status_code == 200, r.text
    assert r.json()["active"] is True
    assert r.json()["sub"] == "apisix-user"


def test_authlib_client(node: ServerProcess, issuer: str, validator: str) -> None:
    made = _session(node, issuer, "authlib-user")
    key_id, secret = _split(validator)
    with OAuth2Client(client_id=key_id, client_secret=secret) as gateway:
        r = gateway.introspect_token(node.base_url + INTROSPECT, token=made["token"])
        assert r.status_code == 200
        assert r.json()["active"] is True
        assert r.json()["sid"] == made["session_id"]
        r = gateway.introspect_token(node.base_url + INTROSPECT, token="tmtk_" + "A" * 43)
        assert r.status_code == 200
        assert r.json() == {"active": False}
    issuer_id, issuer_secret = _split(issuer)
    with OAuth2Client(client_id=issuer_id, client_secret=issuer_secret) as app:
        r = app.revoke_token(
            node.base_url + REVOKE, token=made["token"], token_type_hint="refresh_token"
        )
        assert r.status_code == 200
        assert r.content == b""
    with OAuth2Client(client_id=key_id, client_secret=secret) as gateway:
        r = gateway.introspect_token(node.base_url + INTROSPECT, token=made["token"])
        assert r.json() == {"active": False}


def test_bearer_key_is_accepted_too(node: ServerProcess, issuer: str, validator: str) -> None:
    made = _session(node, issuer, "bearer-user")
    r = httpx.post(
        node.base_url + INTROSPECT,
        data={"token": made["token"]},
        headers={"Authorization": f"Bearer {validator}"},
        timeout=10,
    )
    assert r.status_code == 200
    assert r.json()["sub"] == "bearer-user"


# --- active and inactive ------------------------------------------------------------------------


def test_inactive_tokens(node: ServerProcess, issuer: str, validator: str) -> None:
    short = _session(node, issuer, "inactive-user", ttl_seconds=1)
    revoked = _session(node, issuer, "inactive-user")
    with node.client(issuer) as c:
        r = c.post(f"/sessions/{revoked['session_id']}/revoke", json={})
    assert r.status_code == 200
    unknown = "tmtk_" + "B" * 43
    time.sleep(1.2)  # the one-second session is over
    for token in (short["token"], revoked["token"], unknown, "not-a-token", "tmtk_é"):
        r = _introspect(node, validator, token)
        assert r.status_code == 200, (token, r.text)
        assert r.json() == {"active": False}, token
        assert r.headers["cache-control"] == "no-store"


def test_introspection_does_not_touch(node: ServerProcess, issuer: str, validator: str) -> None:
    made = _session(node, issuer, "no-touch-user", idle_timeout_seconds=300)
    before = _get_session(node, issuer, made["session_id"])
    exps = set()
    for _ in range(3):
        time.sleep(0.02)  # a touch would move last_active by at least this much
        r = _introspect(node, validator, made["token"])
        assert r.json()["active"] is True
        exps.add(r.json()["exp"])
    after = _get_session(node, issuer, made["session_id"])
    assert after["last_active"] == before["last_active"]
    assert after["version"] == before["version"]
    # exp is the idle end, which a touch would push back.
    assert exps == {(before["last_active"] + 300_000) // 1000}


def test_revoke_unknown_and_twice(node: ServerProcess, issuer: str) -> None:
    made = _session(node, issuer, "twice-user")
    for token in (made["token"], made["token"], "tmtk_" + "C" * 43, "garbage"):
        r = httpx.post(
            node.base_url + REVOKE, data={"token": token}, auth=_split(issuer), timeout=10
        )
        assert r.status_code == 200, r.text
        assert r.content == b""
        assert r.headers["cache-control"] == "no-store"
    with node.client(issuer) as c:
        r = c.get(f"/sessions/{made['session_id']}")
    assert r.status_code == 404


def test_revoke_is_audited(node: ServerProcess, issuer: str) -> None:
    made = _session(node, issuer, "audit-user")
    r = httpx.post(
        node.base_url + REVOKE, data={"token": made["token"]}, auth=_split(issuer), timeout=10
    )
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    deadline = time.monotonic() + 5
    found: list[dict[str, Any]] = []
    with node.client(node.admin_key) as c:
        while not found and time.monotonic() < deadline:
            r = c.get("/admin/v1/audit/logs", params={"action": "POST /oauth2/revoke"})
            assert r.status_code == 200, r.text
            found = [i for i in r.json()["data"]["items"] if i.get("request_id") == rid]
            time.sleep(0.05)
    assert len(found) == 1
    assert found[0]["operator_id"] == _split(issuer)[0]
    assert found[0]["result"] == "SUCCESS"


# --- errors (RFC 6749 §5.2) ---------------------------------------------------------------------


def _oauth_error(r: httpx.Response, status: int, error: str, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-error-code"] == code
    doc = r.json()
    assert doc["error"] == error
    assert isinstance(doc["error_description"], str) and doc["error_description"]
    assert set(doc) == {"error", "error_description"}


@pytest.mark.parametrize("path", [INTROSPECT, REVOKE])
def test_missing_credentials(node: ServerProcess, path: str) -> None:
    r = _post(node, path, "token=x", FORM)
    _oauth_error(r, 401, "invalid_client", "TM-AUTH-4010")
    assert r.headers["www-authenticate"] == 'Basic realm="tokmesh"'


@pytest.mark.parametrize("path", [INTROSPECT, REVOKE])
def test_bad_credentials(node: ServerProcess, validator: str, path: str) -> None:
    key_id, secret = _split(validator)
    wrong = f"{key_id}:{secret[:-1]}{'a' if secret[-1] != 'a' else 'b'}"
    r = _post(node, path, "token=x", {**FORM, **_basic(wrong), **_fresh_address()})
    _oauth_error(r, 401, "invalid_client", "TM-AUTH-4011")
    assert r.headers["www-authenticate"] == 'Basic realm="tokmesh"'
    bad_basic = {"Authorization": "Basic !!!", **_fresh_address()}
    r = _post(node, path, "token=x", {**FORM, **bad_basic})
    _oauth_error(r, 401, "invalid_client", "TM-AUTH-4010")
    bearer = {"Authorization": f"Bearer {wrong}", **_fresh_address()}
    r = _post(node, path, "token=x", {**FORM, **bearer})
    _oauth_error(r, 401, "invalid_client", "TM-AUTH-4011")
    assert r.headers["www-authenticate"] == 'Bearer realm="tokmesh"'


def test_form_encoded_basic_credentials(node: ServerProcess, validator: str) -> None:
    key_id, secret = _split(validator)
    # RFC 6749 §2.3.1 encoding, with escapes a client may use for any character.
    encoded = "".join(f"%{b:02X}" for b in key_id.encode()) + ":" + secret
    r = _post(node, INTROSPECT, "token=x", {**FORM, **_basic(encoded)})
    assert r.status_code == 200, r.text
    assert r.json() == {"active": False}


def test_disabled_key(node: ServerProcess) -> None:
    key = node.create_key("validator")
    with node.client(node.admin_key) as c:
        r = c.post(f"/admin/v1/keys/{_split(key)[0]}/status", json={"status": "disabled"})
    assert r.status_code == 200, r.text
    r = _post(node, INTROSPECT, "token=x", {**FORM, **_basic(key), **_fresh_address()})
    _oauth_error(r, 401, "invalid_client", "TM-AUTH-4012")


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        ("token_type_hint=access_token", FORM["Content-Type"], "TM-ARG-1002"),
        ("token=&token_type_hint=access_token", FORM["Content-Type"], "TM-ARG-1002"),
        ("", FORM["Content-Type"], "TM-ARG-1002"),
        ('{"token": "tmtk_x"}', "application/json", "TM-SYS-4000"),
        ("token=tmtk_x", "text/plain", "TM-SYS-4000"),
        ("token=a&token=b", FORM["Content-Type"], "TM-SYS-4000"),
        ("token=%ff%fe", FORM["Content-Type"], "TM-SYS-4000"),
    ],
)
@pytest.mark.parametrize("path", [INTROSPECT, REVOKE])
def test_invalid_request(
    node: ServerProcess, issuer: str, path: str, body: str, content_type: str, code: str
) -> None:
    r = _post(node, path, body, {"Content-Type": content_type, **_basic(issuer)})
    _oauth_error(r, 400, "invalid_request", code)


def test_missing_content_type(node: ServerProcess, issuer: str) -> None:
    r = httpx.post(
        node.base_url + INTROSPECT, content=b"token=x", headers=_basic(issuer), timeout=10
    )
    _oauth_error(r, 400, "invalid_request", "TM-SYS-4000")


def test_roles(node: ServerProcess, issuer: str, validator: str) -> None:
    made = _session(node, issuer, "role-user")
    metrics = node.create_key("metrics")
    admin = node.admin_key
    assert admin is not None
    # Introspection needs token.validate: validator, issuer, admin.
    for key in (validator, issuer, admin):
        assert _introspect(node, key, made["token"]).json()["active"] is True
    _oauth_error(
        _introspect(node, metrics, made["token"]), 403, "unauthorized_client", "TM-AUTH-4030"
    )
    # Revocation needs session.revoke: issuer, admin; a validator may not revoke.
    for key in (validator, metrics):
        r = httpx.post(
            node.base_url + REVOKE, data={"token": made["token"]}, auth=_split(key), timeout=10
        )
        _oauth_error(r, 403, "unauthorized_client", "TM-AUTH-4030")
    assert _introspect(node, validator, made["token"]).json()["active"] is True
    r = httpx.post(
        node.base_url + REVOKE, data={"token": made["token"]}, auth=_split(admin), timeout=10
    )
    assert r.status_code == 200
    assert _introspect(node, validator, made["token"]).json() == {"active": False}


def test_rate_limit(node: ServerProcess) -> None:
    key = node.create_key("validator", rate_limit=1)
    statuses = []
    for _ in range(3):
        r = _introspect(node, key, "tmtk_" + "D" * 43)
        statuses.append(r.status_code)
    assert statuses[0] == 200
    assert statuses[-1] == 429
    _oauth_error(r, 429, "temporarily_unavailable", "TM-SYS-4290")
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["x-ratelimit-limit"] == "1"


def test_brute_force_guard_counts_basic_failures(node: ServerProcess, validator: str) -> None:
    key_id, secret = _split(validator)
    address = _fresh_address()
    wrong = _basic(f"{key_id}:{secret[:-1]}{'a' if secret[-1] != 'a' else 'b'}")
    for _ in range(10):
        r = _post(node, INTROSPECT, "token=x", {**FORM, **wrong, **address})
        assert r.status_code == 401
    # Blocked now, as on every other route: the next try is refused before any verify.
    r = _post(node, INTROSPECT, "token=x", {**FORM, **wrong, **address})
    _oauth_error(r, 429, "temporarily_unavailable", "TM-SYS-4290")
    assert int(r.headers["retry-after"]) >= 1


def test_routing_errors_keep_the_envelope(node: ServerProcess, validator: str) -> None:
    r = httpx.get(node.base_url + INTROSPECT, headers=_basic(validator), timeout=10)
    assert r.status_code == 405
    assert r.json()["code"] == "TM-SYS-4050"
    assert r.headers["allow"] == "POST"
