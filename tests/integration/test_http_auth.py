"""Authentication, roles, allow-lists, client IP, rate limits and anti-replay over real HTTP.

03 §8 checks 5-8 and the HTTP checks of 02 §21 (#2-#6, #7-#9, #11-#22, #24-#26).

Distinct clients are real: the node trusts ``127.0.0.2`` as a proxy, so a request sent
*from* ``127.0.0.2`` with ``X-Forwarded-For`` carries that client IP; requests from other
loopback addresses (``127.0.0.x``) are untrusted peers. Tests that provoke counted
authentication failures each use their own client IP so the brute-force guard of one test
never blocks another.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
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

PROXY = "127.0.0.2"
OVERRIDES: dict[str, Any] = {
    "security": {
        "network": {"trusted_proxies": [f"{PROXY}/32"]},
        # Global layer for the intersection checks (02 §21 #17); loopback stays allowed
        # so the admin fixture and the proxy can reach the node.
        "auth": {
            "allow_list": ["127.0.0.0/8", "10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32"],
            "rotation_grace": "1s",
        },
    },
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from running_node(tmp_path_factory, "http-auth", OVERRIDES)


@pytest.fixture(scope="module")
def admin(node: ServerProcess) -> Iterator[httpx.Client]:
    with client(node, node.admin_key) as c:
        yield c


@pytest.fixture(scope="module")
def keys(admin: httpx.Client) -> dict[str, str]:
    """One credential per role (default rate limit)."""
    return {role: make_key(admin, role) for role in ("issuer", "validator", "metrics")} | {
        "admin": str(admin.headers["authorization"]).split()[1]
    }


@pytest.fixture(scope="module")
def live(node: ServerProcess, keys: dict[str, str]) -> dict[str, str]:
    """A live session of user ``auth-u1`` and its token."""
    with client(node, keys["issuer"]) as c:
        d = assert_ok(c.post("/sessions", json={"user_id": "auth-u1"}), 201)
    return {"id": d["session_id"], "token": d["token"]}


def via_proxy(node: ServerProcess, key: str | None, client_ip: str, **kw: Any) -> httpx.Client:
    """A client whose requests come from the trusted proxy on behalf of ``client_ip``."""
    return client(node, key, source=PROXY, headers={"X-Forwarded-For": client_ip, **kw})


def argon2_runs(metrics_client: httpx.Client) -> float:
    """``tokmesh_auth_argon2_duration_seconds_count`` from ``/metrics``."""
    r = metrics_client.get("/metrics")
    assert r.status_code == 200
    for line in r.text.splitlines():
        if line.startswith("tokmesh_auth_argon2_duration_seconds_count"):
            return float(line.split()[-1])
    raise AssertionError("argon2 histogram missing from /metrics")


def audit_items(admin: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    """Audit records matching ``params``; the audit log is asynchronous, so poll briefly."""
    deadline = time.monotonic() + 5
    while True:
        items: list[dict[str, Any]] = assert_ok(
            admin.get("/admin/v1/audit/logs", params={"size": 100, **params})
        )["items"]
        if items or time.monotonic() > deadline:
            return items
        time.sleep(0.05)


# --- check 5 / 02 §21 #3-#6: credentials ----------------------------------------------------------


def test_no_credentials_is_4010(node: ServerProcess, live: dict[str, str]) -> None:
    with client(node, source="127.0.0.10") as anon:
        body = assert_error(anon.get(f"/sessions/{live['id']}"), 401, "TM-AUTH-4010")
        assert body["request_id"]
        assert_error(
            anon.post("/tokens/validate", json={"token": live["token"]}), 401, "TM-AUTH-4010"
        )
        assert_error(anon.get("/admin/v1/keys"), 401, "TM-AUTH-4010")


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer foo"},
        {"Authorization": "Bearer tmak-nothing:tmas_short"},
        {"X-API-Key": "no-colon-here"},
    ],
)
def test_malformed_credentials_are_4010(
    node: ServerProcess, live: dict[str, str], headers: dict[str, str]
) -> None:
    with client(node, source="127.0.0.11", headers=headers) as c:
        assert_error(c.get(f"/sessions/{live['id']}"), 401, "TM-AUTH-4010")


def test_three_header_forms_authenticate(
    node: ServerProcess, keys: dict[str, str], live: dict[str, str]
) -> None:
    kid, _, secret = keys["validator"].partition(":")
    forms = [
        {"Authorization": f"Bearer {kid}:{secret}"},
        {"Authorization": f"bearer {kid}:{secret}"},  # scheme is case-insensitive
        {"X-API-Key": f"{kid}:{secret}"},
        {"X-API-Key-ID": kid, "X-API-Key": secret},
    ]
    for headers in forms:
        with client(node, headers=headers) as c:
            assert assert_ok(c.get(f"/sessions/{live['id']}"))["id"] == live["id"], headers


def test_bearer_wins_over_x_api_key(node: ServerProcess, keys: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {keys['admin']}", "X-API-Key": keys["validator"]}
    with client(node, headers=headers) as c:
        assert_ok(c.get("/admin/v1/keys"))


def test_key_id_case_insensitive_secret_case_sensitive(
    node: ServerProcess, keys: dict[str, str], live: dict[str, str]
) -> None:
    kid, _, secret = keys["validator"].partition(":")
    with client(node, f"{kid.upper()}:{secret}") as c:
        assert_ok(c.get(f"/sessions/{live['id']}"))
    with client(node, f"{kid}:{secret.upper()}", source="127.0.0.12") as c:
        assert_error(c.get(f"/sessions/{live['id']}"), 401, "TM-AUTH-4011")


def test_unknown_key_and_wrong_secret_are_identical_4011(
    node: ServerProcess, keys: dict[str, str], live: dict[str, str]
) -> None:
    kid, _, secret = keys["validator"].partition(":")
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    unknown_kid = "tmak-" + "0" * 26
    with client(node, f"{kid}:{wrong}", source="127.0.0.13") as c:
        b1 = assert_error(c.get(f"/sessions/{live['id']}"), 401, "TM-AUTH-4011")
    with client(node, f"{unknown_kid}:{secret}", source="127.0.0.13") as c:
        b2 = assert_error(c.get(f"/sessions/{live['id']}"), 401, "TM-AUTH-4011")
    assert b1["message"] == b2["message"]


def test_wrong_secret_writes_auth_failed_without_secret(
    node: ServerProcess, admin: httpx.Client, keys: dict[str, str]
) -> None:
    kid, _, secret = keys["metrics"].partition(":")
    wrong = "tmas_" + "Z" * 43
    with client(node, f"{kid}:{wrong}", source="127.0.0.14") as c:
        assert_error(c.get("/metrics"), 401, "TM-AUTH-4011")
    items = audit_items(admin, action="AUTH_FAILED", operator_id=kid)
    assert items, "no AUTH_FAILED record"
    rec = items[0]
    assert rec["result"] == "FAILURE" and rec["ip_address"] == "127.0.0.14"
    text = str(items)
    assert wrong not in text and secret not in text and "tmas_Z" not in text


def test_key_with_past_expiry_is_4011(
    node: ServerProcess, admin: httpx.Client, live: dict[str, str]
) -> None:
    key = make_key(admin, "validator", expires_at=now_ms() - 60_000)
    with client(node, key, source="127.0.0.15") as c:
        assert_error(c.get(f"/sessions/{live['id']}"), 401, "TM-AUTH-4011")


def test_key_expiring_while_cached_is_4011(
    node: ServerProcess, admin: httpx.Client, live: dict[str, str]
) -> None:
    expires = now_ms() + 1500
    key = make_key(admin, "validator", expires_at=expires)
    with client(node, key, source="127.0.0.16") as c:
        assert_ok(c.get(f"/sessions/{live['id']}"))  # verified and cached
        time.sleep(max(0.0, (expires - now_ms()) / 1000) + 0.2)
        assert_error(c.get(f"/sessions/{live['id']}"), 401, "TM-AUTH-4011")


def test_disabled_and_expired_key_is_4012(
    node: ServerProcess, admin: httpx.Client, live: dict[str, str]
) -> None:
    """R5: status is checked before expiry."""
    key = make_key(admin, "validator", expires_at=now_ms() - 1000)
    assert_ok(admin.post(f"/admin/v1/keys/{key_id_of(key)}/status", json={"status": "disabled"}))
    with client(node, key, source="127.0.0.17") as c:
        assert_error(c.get(f"/sessions/{live['id']}"), 401, "TM-AUTH-4012")


# --- 02 §21 #1, #2, #10: key material -------------------------------------------------------------


def test_created_key_formats_and_no_secret_elsewhere(
    node: ServerProcess, admin: httpx.Client
) -> None:
    d = assert_ok(admin.post("/admin/v1/keys", json={"role": "validator"}), 201)
    assert KEY_ID_RE.match(d["key_id"]) and SECRET_RE.match(d["key_secret"])
    kid = d["key_id"]
    texts = [
        admin.get("/admin/v1/keys", params={"size": 100}).text,
        admin.post(f"/admin/v1/keys/{kid}/status", json={"status": "active"}).text,
        admin.get("/admin/v1/audit/logs", params={"size": 100}).text,
        admin.post("/admin/v1/keys", json={"role": "root"}).text,
        admin.get("/admin/v1/status/summary").text,
    ]
    for text in texts:
        assert "tmas_" not in text and "$argon2" not in text and "secret_hash" not in text
    rot = assert_ok(admin.post(f"/admin/v1/keys/{kid}/rotate"))
    assert SECRET_RE.match(rot["new_key_secret"])


@pytest.mark.parametrize(("days", "warned"), [(400, True), (30, False)])
def test_long_validity_warning(admin: httpx.Client, days: int, warned: bool) -> None:
    d = assert_ok(
        admin.post(
            "/admin/v1/keys",
            json={"role": "validator", "expires_at": now_ms() + days * 86_400_000},
        ),
        201,
    )
    assert ("warning" in d) is warned
    if warned:
        assert d["warning"] == (
            "Security Warning: This key is valid for more than 1 year. "
            "Please consider a shorter rotation cycle."
        )


# --- 02 §21 #7: the validation cache --------------------------------------------------------------


def test_argon2_runs_once_for_repeated_credential(
    node: ServerProcess, admin: httpx.Client, keys: dict[str, str], live: dict[str, str]
) -> None:
    fresh = make_key(admin, "validator")
    with client(node, keys["metrics"]) as m, client(node, fresh) as v:
        before = argon2_runs(m)  # also warms the metrics key itself
        assert_ok(v.get(f"/sessions/{live['id']}"))
        assert_ok(v.get(f"/sessions/{live['id']}"))
        assert_ok(v.post("/tokens/validate", json={"token": live["token"]}))
        assert argon2_runs(m) - before == 1


# --- 02 §21 #11-#15 / 03 §2.7: the role matrix ----------------------------------------------------

ALLOW = "allow"
DENY = "deny"


def _role_requests(sid: str, token: str) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(name, method, path, json) of one request per protected route."""
    return [
        ("validate", "POST", "/tokens/validate", {"token": token}),
        ("get", "GET", f"/sessions/{sid}", None),
        ("touch", "POST", f"/sessions/{sid}/touch", None),
        ("list_all", "GET", "/sessions", None),
        ("list_user", "GET", "/sessions?user_id=auth-u1", None),
        ("create", "POST", "/sessions", {"user_id": "role-u"}),
        ("renew", "POST", "/sessions/tmss-00000000000000000000000000/renew", {"ttl_seconds": 60}),
        ("revoke", "POST", "/sessions/tmss-00000000000000000000000000/revoke", None),
        ("revoke_user", "POST", "/users/nobody/sessions/revoke", None),
        ("metrics", "GET", "/metrics", None),
        ("admin", "GET", "/admin/v1/keys", None),
    ]


MATRIX: dict[str, dict[str, str]] = {
    "metrics": {"metrics": ALLOW},
    "validator": {"validate": ALLOW, "get": ALLOW, "touch": ALLOW},
    "issuer": {
        "validate": ALLOW,
        "get": ALLOW,
        "touch": ALLOW,
        "list_user": ALLOW,
        "create": ALLOW,
        "renew": ALLOW,
        "revoke": ALLOW,
        "revoke_user": ALLOW,
    },
    "admin": {name: ALLOW for name, *_ in _role_requests("x", "y")},
}


@pytest.mark.parametrize("role", ["metrics", "validator", "issuer", "admin"])
def test_role_matrix(
    node: ServerProcess, keys: dict[str, str], live: dict[str, str], role: str
) -> None:
    with client(node, keys[role]) as c:
        for name, method, path, body in _role_requests(live["id"], live["token"]):
            r = c.request(method, path, json=body)
            if MATRIX[role].get(name, DENY) == ALLOW:
                assert r.status_code < 400 or r.status_code == 404, (role, name, r.text)
                if name == "renew":  # unknown session: allowed to try, 404 from the handler
                    assert_error(r, 404, "TM-SESS-4040")
            else:
                code = "TM-ADMIN-4030" if path.startswith("/admin/") else "TM-AUTH-4030"
                assert_error(r, 403, code)


def test_invalid_key_on_admin_is_4011(node: ServerProcess, keys: dict[str, str]) -> None:
    kid = key_id_of(keys["admin"])
    with client(node, f"{kid}:tmas_{'x' * 43}", source="127.0.0.18") as c:
        assert_error(c.get("/admin/v1/status/summary"), 401, "TM-AUTH-4011")


# --- check 6 / 02 §21 #16-#19: allow-lists and client IP ------------------------------------------


@pytest.fixture(scope="module")
def lan_key(admin: httpx.Client) -> str:
    return make_key(admin, "issuer", allowedlist=["192.168.1.0/24"])


def test_key_allowedlist_v4(node: ServerProcess, lan_key: str, live: dict[str, str]) -> None:
    with via_proxy(node, lan_key, "10.0.0.1") as c:
        assert_error(c.get(f"/sessions/{live['id']}"), 403, "TM-AUTH-4031")
    with via_proxy(node, lan_key, "192.168.1.5") as c:
        assert_ok(c.get(f"/sessions/{live['id']}"))


def test_key_allowedlist_v6(node: ServerProcess, admin: httpx.Client, live: dict[str, str]) -> None:
    key = make_key(admin, "validator", allowedlist=["2001:db8::/64"])
    with via_proxy(node, key, "2001:db8::5") as c:
        assert_ok(c.get(f"/sessions/{live['id']}"))
    # Inside the global 2001:db8::/32 but outside the key's /64: intersection denies.
    with via_proxy(node, key, "2001:db8:1::5") as c:
        assert_error(c.get(f"/sessions/{live['id']}"), 403, "TM-AUTH-4031")


def test_global_and_key_lists_intersect(
    node: ServerProcess, admin: httpx.Client, keys: dict[str, str], live: dict[str, str]
) -> None:
    key = make_key(admin, "validator", allowedlist=["10.1.0.0/16"])
    with via_proxy(node, key, "10.1.2.3") as c:
        assert_ok(c.get(f"/sessions/{live['id']}"))
    with via_proxy(node, key, "10.2.0.1") as c:  # in the global list only
        assert_error(c.get(f"/sessions/{live['id']}"), 403, "TM-AUTH-4031")
    with via_proxy(node, keys["validator"], "172.16.0.1") as c:  # outside the global list
        assert_error(c.get(f"/sessions/{live['id']}"), 403, "TM-AUTH-4031")
    with via_proxy(node, keys["admin"], "172.16.0.1") as c:
        assert_error(c.get("/admin/v1/keys"), 403, "TM-ADMIN-4031")
    with via_proxy(node, keys["admin"], "10.2.0.1") as c:
        assert_ok(c.get("/admin/v1/keys"))


def test_admin_role_checked_before_admin_acl(node: ServerProcess, keys: dict[str, str]) -> None:
    """02 §20 #23: on /admin/v1/* a non-admin key outside the lists gets 4030, not 4031."""
    with via_proxy(node, keys["issuer"], "172.16.0.2") as c:
        assert_error(c.get("/admin/v1/keys"), 403, "TM-ADMIN-4030")


def test_forwarded_headers_from_untrusted_peer_are_ignored(
    node: ServerProcess, lan_key: str, live: dict[str, str]
) -> None:
    for source in ("127.0.0.1", "127.0.0.3"):
        for headers in (
            {"X-Forwarded-For": "192.168.1.5"},
            {"X-Real-IP": "192.168.1.5"},
            {"Forwarded": "for=192.168.1.5"},
        ):
            with client(node, lan_key, source=source, headers=headers) as c:
                assert_error(c.get(f"/sessions/{live['id']}"), 403, "TM-AUTH-4031")


def test_trusted_proxy_headers_resolve_client_ip(
    node: ServerProcess, lan_key: str, live: dict[str, str]
) -> None:
    for headers in (
        {"Forwarded": "for=192.168.1.7"},
        {"Forwarded": 'for="192.168.1.7:4711"'},
        {"X-Real-IP": "192.168.1.8"},
    ):
        with client(node, lan_key, source=PROXY, headers=headers) as c:
            assert_ok(c.get(f"/sessions/{live['id']}"))


def test_xff_walked_right_to_left(node: ServerProcess, admin: httpx.Client, lan_key: str) -> None:
    """02 §21 #19: the right-most untrusted entry is the client; audit keeps the peer."""
    with via_proxy(node, lan_key, "6.6.6.6, 192.168.1.5") as c:
        d = assert_ok(c.post("/sessions", json={"user_id": "xff-u"}), 201)
    assert d["session"]["ip_address"] == "192.168.1.5"
    assert d["session"]["last_access_ip"] == "192.168.1.5"
    items = audit_items(admin, operator_id=key_id_of(lan_key))
    assert items
    assert {(i["ip_address"], i["tcp_remote_ip"]) for i in items} == {("192.168.1.5", PROXY)}


# --- check 7 / 02 §21 #20-#21: per-key rate limit -------------------------------------------------


def _until_limited(c: httpx.Client, path: str, most: int = 60) -> list[httpx.Response]:
    """Send ``path`` back to back until the first 429 (or ``most`` requests)."""
    out: list[httpx.Response] = []
    for _ in range(most):
        out.append(c.get(path))
        if out[-1].status_code == 429:
            break
    return out


def test_rate_limit_429_with_headers(node: ServerProcess, admin: httpx.Client) -> None:
    key = make_key(admin, "validator", rate_limit=10)
    with client(node, key) as c:
        answers = _until_limited(c, "/sessions/tmss-00000000000000000000000000")
        # Probes are not rate limited.
        assert c.get("/health").status_code == 200
    # The bucket holds 10 tokens: at least 10 pass before the first 429.
    assert len(answers) >= 11 and {r.status_code for r in answers[:-1]} == {404}
    r = answers[-1]
    assert_error(r, 429, "TM-SYS-4290")
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["x-ratelimit-limit"] == "10"
    assert r.headers["x-ratelimit-remaining"] == "0"
    assert int(r.headers["x-ratelimit-reset"]) >= time.time() - 1


def test_rate_limit_applies_to_admin_routes(node: ServerProcess, admin: httpx.Client) -> None:
    key = make_key(admin, "admin", rate_limit=3)
    with client(node, key) as c:
        answers = _until_limited(c, "/admin/v1/status/summary")
    assert len(answers) >= 4 and {r.status_code for r in answers[:-1]} == {200}
    assert_error(answers[-1], 429, "TM-SYS-4290")


def test_wrong_secret_flood_does_not_drain_bucket(
    node: ServerProcess, admin: httpx.Client, live: dict[str, str]
) -> None:
    key = make_key(admin, "validator", rate_limit=5)
    kid = key_id_of(key)
    with client(node, f"{kid}:tmas_{'q' * 43}", source="127.0.0.19") as bad:
        for _ in range(8):
            assert_error(bad.get(f"/sessions/{live['id']}"), 401, "TM-AUTH-4011")
    with client(node, key, source="127.0.0.20") as good:
        for _ in range(5):
            assert_ok(good.get(f"/sessions/{live['id']}"))


# --- 02 §21 #22 / #4: brute-force blocking per client IP ------------------------------------------


def test_failed_auth_blocks_client_ip(
    node: ServerProcess, admin: httpx.Client, keys: dict[str, str], live: dict[str, str]
) -> None:
    attacker = "10.66.0.1"
    cached = make_key(admin, "validator")
    uncached = make_key(admin, "validator")
    with client(node, cached) as c:  # prove it once: now in the validation cache
        assert_ok(c.get(f"/sessions/{live['id']}"))
    kid = key_id_of(cached)
    with via_proxy(node, None, attacker) as c:
        for i in range(10):
            # "Bearer foo" (malformed) is counted like a wrong secret (02 §21 #4).
            auth = "Bearer foo" if i % 2 else f"Bearer {kid}:tmas_{'w' * 43}"
            code = "TM-AUTH-4010" if i % 2 else "TM-AUTH-4011"
            r = c.get(f"/sessions/{live['id']}", headers={"Authorization": auth})
            assert_error(r, 401, code)
        with client(node, keys["metrics"]) as m:
            before = argon2_runs(m)
            r = c.get(f"/sessions/{live['id']}", headers={"Authorization": f"Bearer {uncached}"})
            assert_error(r, 429, "TM-SYS-4290")
            assert 1 <= int(r.headers["retry-after"]) <= 300
            assert argon2_runs(m) == before  # blocked before any Argon2 work
        # A credential already proven (cache hit) still passes from the blocked IP.
        r = c.get(f"/sessions/{live['id']}", headers={"Authorization": f"Bearer {cached}"})
        assert_ok(r)
    with via_proxy(node, uncached, "10.66.0.2") as other:  # other IPs are unaffected
        assert_ok(other.get(f"/sessions/{live['id']}"))
    blocks = [
        i for i in audit_items(admin, action="AUTH_IP_BLOCKED") if i["ip_address"] == attacker
    ]
    assert len(blocks) == 1


# --- check 8 / 02 §21 #24-#26: anti-replay --------------------------------------------------------


def _replay_headers(ts: int | str | None, nonce: str | None) -> dict[str, str]:
    h: dict[str, str] = {}
    if ts is not None:
        h["X-Timestamp"] = str(ts)
    if nonce is not None:
        h["X-Nonce"] = nonce
    return h


def test_anti_replay_timestamp(node: ServerProcess, keys: dict[str, str]) -> None:
    with client(node, keys["issuer"]) as c:
        for ts in (now_ms() - 60_000, now_ms() - 31_000, now_ms() + 31_000, "abc", None):
            r = c.post(
                "/sessions",
                json={"user_id": "replay-u"},
                headers=_replay_headers(ts, f"n-ts-{ts}"),
            )
            assert_error(r, 401, "TM-AUTH-4014")
        r = c.post(
            "/sessions",
            json={"user_id": "replay-u"},
            headers=_replay_headers(now_ms() - 29_000, "n-ok-29"),
        )
        assert_ok(r, 201)


def test_anti_replay_nonce(node: ServerProcess, keys: dict[str, str]) -> None:
    nonce = f"nonce-{time.monotonic_ns()}"
    with client(node, keys["issuer"]) as c:
        assert_ok(
            c.post(
                "/sessions", json={"user_id": "replay-u"}, headers=_replay_headers(now_ms(), nonce)
            ),
            201,
        )
        r = c.post(
            "/sessions", json={"user_id": "replay-u"}, headers=_replay_headers(now_ms(), nonce)
        )
        assert_error(r, 401, "TM-AUTH-4015")
        for bad in ("", "n" * 257):
            r = c.post(
                "/sessions", json={"user_id": "replay-u"}, headers=_replay_headers(now_ms(), bad)
            )
            assert_error(r, 400, "TM-ARG-1001")
        assert_ok(
            c.post(
                "/sessions",
                json={"user_id": "replay-u"},
                headers=_replay_headers(now_ms(), "n" * 256),
            ),
            201,
        )
    # The nonce store is per key: another key may use the same nonce.
    with client(node, keys["admin"]) as a:
        r = a.post(
            "/sessions", json={"user_id": "replay-u"}, headers=_replay_headers(now_ms(), nonce)
        )
        assert_ok(r, 201)


def test_anti_replay_applies_to_admin_posts_not_gets(
    node: ServerProcess, keys: dict[str, str], live: dict[str, str]
) -> None:
    with client(node, keys["admin"]) as a:
        r = a.post(
            "/admin/v1/gc/trigger",
            json={"type": "memory"},
            headers=_replay_headers(now_ms() - 120_000, "n-admin"),
        )
        assert_error(r, 401, "TM-AUTH-4014")
        # GET needs neither header and ignores stale ones.
        r = a.get(f"/sessions/{live['id']}", headers=_replay_headers(1, "whatever"))
        assert_ok(r)
        assert_ok(a.get("/admin/v1/keys"))


# --- check 27 / 02 §21 #9: rotation (this node: rotation_grace 1s) --------------------------------


def test_rotate_grace_then_old_secret_fails(
    node: ServerProcess, admin: httpx.Client, live: dict[str, str]
) -> None:
    old = make_key(admin, "validator")
    kid = key_id_of(old)
    with client(node, old, source="127.0.0.21") as c:
        assert_ok(c.get(f"/sessions/{live['id']}"))  # cached before the rotation
    before = now_ms()
    d = assert_ok(admin.post(f"/admin/v1/keys/{kid}/rotate"))
    assert d["key_id"] == kid and SECRET_RE.match(d["new_key_secret"])
    assert before + 1000 <= d["old_secret_valid_until"] <= now_ms() + 1000
    new = f"{kid}:{d['new_key_secret']}"
    with client(node, old, source="127.0.0.21") as o, client(node, new) as n:
        assert_ok(o.get(f"/sessions/{live['id']}"))
        assert_ok(n.get(f"/sessions/{live['id']}"))
        time.sleep(max(0.0, (d["old_secret_valid_until"] - now_ms()) / 1000) + 0.2)
        # Past grace: the old secret fails even though it was cached a moment ago.
        assert_error(o.get(f"/sessions/{live['id']}"), 401, "TM-AUTH-4011")
        assert_ok(n.get(f"/sessions/{live['id']}"))


def test_rerotate_drops_the_older_secret(
    node: ServerProcess, admin: httpx.Client, live: dict[str, str]
) -> None:
    first = make_key(admin, "validator")
    kid = key_id_of(first)
    second = f"{kid}:{assert_ok(admin.post(f'/admin/v1/keys/{kid}/rotate'))['new_key_secret']}"
    third = f"{kid}:{assert_ok(admin.post(f'/admin/v1/keys/{kid}/rotate'))['new_key_secret']}"
    with client(node, first, source="127.0.0.22") as c:
        assert_error(c.get(f"/sessions/{live['id']}"), 401, "TM-AUTH-4011")
    for cred in (second, third):
        with client(node, cred) as c:
            assert_ok(c.get(f"/sessions/{live['id']}"))


def test_rotate_unknown_key_is_404(admin: httpx.Client) -> None:
    assert_error(admin.post(f"/admin/v1/keys/tmak-{'0' * 26}/rotate"), 404, "TM-ADMIN-4041")


# --- short windows: rotation_grace 0s, nonce_ttl 1s -----------------------------------------------


@pytest.fixture(scope="module")
def short_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from running_node(
        tmp_path_factory,
        "http-auth-short",
        {
            "security": {
                "auth": {"rotation_grace": "0s"},
                "anti_replay": {"timestamp_window": "30s", "nonce_ttl": "1s"},
            }
        },
    )


def test_zero_grace_rejects_old_secret_at_once(short_node: ServerProcess) -> None:
    with client(short_node, short_node.admin_key) as admin:
        old = make_key(admin, "metrics")
        kid = key_id_of(old)
        with client(short_node, old) as c:
            assert c.get("/metrics").status_code == 200  # cached
        d = assert_ok(admin.post(f"/admin/v1/keys/{kid}/rotate"))
        assert d["old_secret_valid_until"] <= now_ms()
    with client(short_node, old, source="127.0.0.23") as c:
        assert_error(c.get("/metrics"), 401, "TM-AUTH-4011")
    with client(short_node, f"{kid}:{d['new_key_secret']}") as c:
        assert c.get("/metrics").status_code == 200


def test_nonce_reusable_after_ttl(short_node: ServerProcess) -> None:
    with client(short_node, short_node.admin_key) as c:
        body = {"user_id": "nonce-ttl"}
        assert_ok(c.post("/sessions", json=body, headers=_replay_headers(now_ms(), "n1")), 201)
        r = c.post("/sessions", json=body, headers=_replay_headers(now_ms(), "n1"))
        assert_error(r, 401, "TM-AUTH-4015")
        time.sleep(1.2)
        assert_ok(c.post("/sessions", json=body, headers=_replay_headers(now_ms(), "n1")), 201)


def test_anti_replay_nonce_spent_once_when_the_fast_path_hands_over(
    node: ServerProcess, keys: dict[str, str], live: dict[str, str]
) -> None:
    """A request the non-waiting path authorizes and then hands to the awaiting one (a
    revoke with ``sync``) is authorized once: its nonce is not seen as replayed."""
    with client(node, keys["issuer"]) as c:
        assert_ok(c.post("/sessions", json={"user_id": "replay-warm"}), 201)  # key cached
        made = assert_ok(c.post("/sessions", json={"user_id": "replay-sync"}), 201)
        for body in ({"sync": True}, {}):
            nonce = f"n-handover-{time.monotonic_ns()}"
            r = c.post(
                f"/sessions/{made['session_id']}/revoke",
                json=body,
                headers=_replay_headers(now_ms(), nonce),
            )
            assert_ok(r, 200)
