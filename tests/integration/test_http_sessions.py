"""Sessions and tokens over real HTTP (03 §3, §8 checks 11-20).

One node per module with an issuer (ISS), validator (V), metrics (M) and admin (A) key.
Expiry checks share one set of 1-second sessions and a single real sleep.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.http_asserts import (
    SESSION_ID_RE,
    TOKEN_RE,
    assert_error,
    assert_ok,
    client,
    key_id_of,
    make_key,
    now_ms,
    running_node,
)
from tests.support.server import ServerProcess

SESSION_FIELDS = {
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
UNKNOWN_SID = "tmss-" + "0" * 26
UNKNOWN_TOKEN = "tmtk_" + "A" * 43


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from running_node(tmp_path_factory, "http-sessions")


@pytest.fixture(scope="module")
def creds(node: ServerProcess) -> dict[str, str]:
    with client(node, node.admin_key) as a:
        out = {role: make_key(a, role) for role in ("issuer", "validator", "metrics")}
    assert node.admin_key
    out["admin"] = node.admin_key
    return out


@pytest.fixture(scope="module")
def A(node: ServerProcess, creds: dict[str, str]) -> Iterator[httpx.Client]:
    with client(node, creds["admin"]) as c:
        yield c


@pytest.fixture(scope="module")
def ISS(node: ServerProcess, creds: dict[str, str]) -> Iterator[httpx.Client]:
    with client(node, creds["issuer"], headers={"User-Agent": "issuer-agent/1"}) as c:
        yield c


@pytest.fixture(scope="module")
def V(node: ServerProcess, creds: dict[str, str]) -> Iterator[httpx.Client]:
    with client(node, creds["validator"]) as c:
        yield c


@pytest.fixture(scope="module")
def M(node: ServerProcess, creds: dict[str, str]) -> Iterator[httpx.Client]:
    with client(node, creds["metrics"]) as c:
        yield c


def create(c: httpx.Client, user_id: str, **fields: Any) -> dict[str, Any]:
    """``POST /sessions`` → the 201 ``data``."""
    d: dict[str, Any] = assert_ok(c.post("/sessions", json={"user_id": user_id, **fields}), 201)
    return d


def get(c: httpx.Client, sid: str) -> dict[str, Any]:
    """``GET /sessions/{id}`` → the Session."""
    d: dict[str, Any] = assert_ok(c.get(f"/sessions/{sid}"))
    return d


@pytest.fixture(scope="module")
def expired(ISS: httpx.Client) -> dict[str, dict[str, Any]]:
    """Sessions created with ``ttl_seconds: 1``, 1.5 s later (one shared sleep)."""
    out = {
        name: create(ISS, f"exp-{name}", ttl_seconds=1)
        for name in ("get", "touch", "renew", "validate", "list")
    }
    time.sleep(1.5)
    return out


# --- check 11: create ---------------------------------------------------------------------------


def test_create_defaults(ISS: httpx.Client, creds: dict[str, str]) -> None:
    before = now_ms()
    d = create(ISS, "u1")
    after = now_ms()
    assert set(d) == {"session_id", "token", "expires_at", "session"}
    assert SESSION_ID_RE.match(d["session_id"]) and TOKEN_RE.match(d["token"])
    s = d["session"]
    assert set(s) == SESSION_FIELDS
    assert s["id"] == d["session_id"] and s["version"] == 1
    assert before + 7_200_000 <= d["expires_at"] <= after + 7_200_000
    assert s["expires_at"] == d["expires_at"]
    assert before <= s["created_at"] == s["last_active"] <= after
    assert s["user_id"] == "u1" and s["device_id"] == "" and s["data"] == {}
    assert s["ip_address"] == s["last_access_ip"] == "127.0.0.1"
    assert s["user_agent"] == s["last_access_ua"] == "issuer-agent/1"
    assert s["created_by"] == key_id_of(creds["issuer"])
    assert "token" not in s and "token_hash" not in s


def test_create_with_fields(ISS: httpx.Client) -> None:
    before = now_ms()
    d = create(ISS, "u1", device_id="dev-1", ttl_seconds=60, data={"k": "v"})
    assert before + 60_000 <= d["expires_at"] <= now_ms() + 60_000
    assert d["session"]["device_id"] == "dev-1" and d["session"]["data"] == {"k": "v"}
    d = create(ISS, "u1", ttl_seconds=2_592_000)  # session.ttl.max is allowed
    assert d["expires_at"] >= before + 2_592_000_000


# --- check 12: supplied tokens ----------------------------------------------------------------


def test_supplied_token(ISS: httpx.Client, V: httpx.Client) -> None:
    token = "tmtk_" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    assert TOKEN_RE.match(token)
    d = create(ISS, "u-tok", token=token)
    assert d["token"] == token
    v = assert_ok(V.post("/tokens/validate", json={"token": token}))
    assert v["session"]["id"] == d["session_id"]
    assert_error(
        ISS.post("/sessions", json={"user_id": "u-other", "token": token}), 409, "TM-TOKN-4090"
    )
    for bad in ("abc", "tmtk_short", "tmtk_" + "*" * 43, "TMTK_" + "A" * 43):
        assert_error(
            ISS.post("/sessions", json={"user_id": "u1", "token": bad}), 400, "TM-TOKN-4000"
        )


# --- check 13: limits, quota, roles -------------------------------------------------------------


def test_per_user_quota(ISS: httpx.Client) -> None:
    for _ in range(50):
        create(ISS, "quota-user")
    assert_error(ISS.post("/sessions", json={"user_id": "quota-user"}), 429, "TM-SESS-4002")
    create(ISS, "quota-user-2")  # other users are unaffected


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "u1", "data": {"k" * 65: "v"}},
        {"user_id": "u1", "data": {"k": "v" * 1025}},
        {"user_id": "u1", "data": {f"k{i}": "v" * 1000 for i in range(5)}},  # > 4096 bytes
        {"user_id": "u" * 129},
        {"user_id": "u1", "device_id": "d" * 129},
    ],
)
def test_session_limits_are_4001(ISS: httpx.Client, body: dict[str, Any]) -> None:
    assert_error(ISS.post("/sessions", json=body), 400, "TM-SESS-4001")


def test_session_limits_boundaries_pass(ISS: httpx.Client) -> None:
    create(ISS, "u" * 128, device_id="d" * 128, data={"k" * 64: "v" * 1024})
    create(ISS, "u1", data={f"k{i}": "v" * 1021 for i in range(4)})  # exactly 4096 bytes


def test_create_argument_errors(ISS: httpx.Client) -> None:
    assert_error(ISS.post("/sessions", json={}), 400, "TM-ARG-1002")
    assert_error(ISS.post("/sessions", json={"user_id": ""}), 400, "TM-ARG-1002")
    assert_error(ISS.post("/sessions", json={"device_id": "d"}), 400, "TM-ARG-1002")
    for ttl in (0, -1, 2_592_001):
        assert_error(
            ISS.post("/sessions", json={"user_id": "u1", "ttl_seconds": ttl}), 400, "TM-ARG-1001"
        )


def test_create_forbidden_for_validator_and_metrics(V: httpx.Client, M: httpx.Client) -> None:
    for c in (V, M):
        assert_error(c.post("/sessions", json={"user_id": "u1"}), 403, "TM-AUTH-4030")


# --- check 14: read ---------------------------------------------------------------------------


def test_get_is_pure_read(ISS: httpx.Client, V: httpx.Client) -> None:
    sid = create(ISS, "u-read")["session_id"]
    first = get(V, sid)
    time.sleep(0.01)
    second = get(V, sid)
    assert first == second
    assert first["version"] == 1


def test_get_unknown_malformed_and_case(ISS: httpx.Client, V: httpx.Client) -> None:
    assert_error(V.get(f"/sessions/{UNKNOWN_SID}"), 404, "TM-SESS-4040")
    assert_error(V.get("/sessions/not-a-session-id"), 404, "TM-SESS-4040")
    sid = create(ISS, "u-case")["session_id"]
    assert get(V, sid.upper())["id"] == sid


def test_get_expired_is_4041(V: httpx.Client, expired: dict[str, dict[str, Any]]) -> None:
    assert_error(V.get(f"/sessions/{expired['get']['session_id']}"), 404, "TM-SESS-4041")


# --- check 15: touch --------------------------------------------------------------------------


def test_touch(ISS: httpx.Client, V: httpx.Client) -> None:
    created = create(ISS, "u-touch")
    sid = created["session_id"]
    seen = [created["session"]["last_active"]]
    for body in (b"", b"{}", b"  "):
        time.sleep(0.005)
        s = assert_ok(V.post(f"/sessions/{sid}/touch", content=body))
        assert set(s) == SESSION_FIELDS
        assert s["expires_at"] == created["expires_at"]
        seen.append(s["last_active"])
    assert seen == sorted(seen) and seen[-1] > seen[0]
    after = get(V, sid)
    assert after["ip_address"] == created["session"]["ip_address"]
    assert after["user_agent"] == created["session"]["user_agent"]
    assert after["last_access_ua"] == created["session"]["last_access_ua"]
    assert after["version"] > 1


def test_touch_fields_keeps_mandatory(ISS: httpx.Client, V: httpx.Client) -> None:
    sid = create(ISS, "u-touch")["session_id"]
    s = assert_ok(V.post(f"/sessions/{sid}/touch?fields=id,last_active"))
    assert set(s) == {"id", "user_id", "expires_at", "last_active", "version"}
    s = assert_ok(V.post(f"/sessions/{sid}/touch?fields="))  # empty = absent
    assert set(s) == SESSION_FIELDS
    assert_error(V.post(f"/sessions/{sid}/touch?fields=id,nope"), 400, "TM-ARG-1001")


def test_touch_errors(ISS: httpx.Client, V: httpx.Client) -> None:
    sid = create(ISS, "u-touch")["session_id"]
    assert_error(V.post(f"/sessions/{sid}/touch", json={"x": 1}), 400, "TM-SYS-4000")
    assert_error(V.post(f"/sessions/{UNKNOWN_SID}/touch"), 404, "TM-SESS-4040")


def test_touch_expired_is_4041(V: httpx.Client, expired: dict[str, dict[str, Any]]) -> None:
    sid = expired["touch"]["session_id"]
    assert_error(V.post(f"/sessions/{sid}/touch"), 404, "TM-SESS-4041")


# --- check 16: list ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def listed(ISS: httpx.Client) -> dict[str, Any]:
    """Three sessions of ``list-u``; the middle one touched after ``t1``."""
    ids = [create(ISS, "list-u", device_id=f"d{i}")["session_id"] for i in range(3)]
    time.sleep(0.01)
    t1 = now_ms()
    time.sleep(0.01)
    assert_ok(ISS.post(f"/sessions/{ids[1]}/touch"))
    return {"ids": ids, "t1": t1}


def test_list_defaults_and_paging(A: httpx.Client, listed: dict[str, Any]) -> None:
    d = assert_ok(A.get("/sessions"))
    assert set(d) == {"items", "total_items", "page", "size"}
    assert d["page"] == 1 and d["size"] == 20
    assert d["total_items"] >= 3 and len(d["items"]) == min(20, d["total_items"])
    d = assert_ok(A.get("/sessions", params={"user_id": "list-u", "size": 2, "page": 2}))
    assert d["total_items"] == 3 and len(d["items"]) == 1 and (d["page"], d["size"]) == (2, 2)
    d = assert_ok(A.get("/sessions", params={"user_id": "list-u", "page": 9}))
    assert d["items"] == [] and d["total_items"] == 3


@pytest.mark.parametrize(
    "params",
    [{"size": "10000"}, {"size": "0"}, {"size": "101"}, {"size": "x"}],
)
def test_list_bad_size(A: httpx.Client, params: dict[str, str]) -> None:
    body = assert_error(A.get("/sessions", params=params), 400, "TM-ARG-1001")
    assert body["details"]["max_size"] == 100


@pytest.mark.parametrize(
    "params",
    [
        {"page": "0"},
        {"page": "abc"},
        {"fields": "id,bogus"},
        {"sort_by": "user_id"},
        {"sort_order": "sideways"},
        {"active_after": "yesterday"},
    ],
)
def test_list_bad_params(A: httpx.Client, params: dict[str, str]) -> None:
    assert_error(A.get("/sessions", params=params), 400, "TM-ARG-1001")


def test_list_fields_filter_sort(A: httpx.Client, listed: dict[str, Any]) -> None:
    d = assert_ok(A.get("/sessions", params={"user_id": "list-u", "fields": "id,user_id"}))
    assert d["items"] and all(set(i) == {"id", "user_id"} for i in d["items"])
    d = assert_ok(A.get("/sessions", params={"user_id": "list-u", "fields": "user_id"}))
    assert all(set(i) == {"id", "user_id"} for i in d["items"])  # id always survives
    d = assert_ok(A.get("/sessions", params={"user_id": "list-u", "active_after": listed["t1"]}))
    assert [i["id"] for i in d["items"]] == [listed["ids"][1]] and d["total_items"] == 1
    d = assert_ok(A.get("/sessions", params={"user_id": "list-u", "device_id": "d2"}))
    assert [i["id"] for i in d["items"]] == [listed["ids"][2]]
    d = assert_ok(
        A.get(
            "/sessions",
            params={"user_id": "list-u", "sort_by": "last_active", "sort_order": "desc"},
        )
    )
    actives = [i["last_active"] for i in d["items"]]
    assert actives == sorted(actives, reverse=True) and d["items"][0]["id"] == listed["ids"][1]
    d = assert_ok(A.get("/sessions", params={"user_id": "list-u", "sort_order": "asc"}))
    created = [i["created_at"] for i in d["items"]]
    assert created == sorted(created)
    assert [i["id"] for i in d["items"]] == listed["ids"]


def test_list_excludes_expired(A: httpx.Client, expired: dict[str, dict[str, Any]]) -> None:
    d = assert_ok(A.get("/sessions", params={"user_id": "exp-list"}))
    assert d == {"items": [], "total_items": 0, "page": 1, "size": 20}


def test_list_p1_filters(
    A: httpx.Client, node: ServerProcess, creds: dict[str, str], listed: dict[str, Any]
) -> None:
    """03 §3.5 P1 filters: key_id, ip_address (IP or CIDR), created_at range, trimming."""
    base = {"user_id": "list-u"}
    issuer_kid = key_id_of(creds["issuer"])
    for params, expected in (
        ({"key_id": issuer_kid.upper()}, 3),
        ({"key_id": key_id_of(creds["admin"])}, 0),
        ({"ip_address": "127.0.0.1"}, 3),
        ({"ip_address": "127.0.0.0/8"}, 3),
        ({"ip_address": "10.0.0.0/8"}, 0),
        ({"time_range_end": listed["t1"]}, 3),
        ({"time_range_start": listed["t1"]}, 0),
    ):
        d = assert_ok(A.get("/sessions", params={**base, **params}))
        assert d["total_items"] == expected, (params, d)
    first = get(A, listed["ids"][0])
    d = assert_ok(
        A.get(
            "/sessions",
            params={
                **base,
                "time_range_start": first["created_at"],
                "time_range_end": first["created_at"],
            },
        )
    )
    # Inclusive bounds (two sessions created in the same millisecond both match).
    assert listed["ids"][0] in [i["id"] for i in d["items"]]
    assert {i["created_at"] for i in d["items"]} == {first["created_at"]}
    s = assert_ok(A.get(f"/sessions/{listed['ids'][0]}", params={"fields": "user_id"}))
    assert s == {"id": listed["ids"][0], "user_id": "list-u"}


def test_list_roles(ISS: httpx.Client, V: httpx.Client, listed: dict[str, Any]) -> None:
    assert_error(ISS.get("/sessions"), 403, "TM-AUTH-4030")
    assert_error(V.get("/sessions"), 403, "TM-AUTH-4030")
    assert_error(V.get("/sessions", params={"user_id": "list-u"}), 403, "TM-AUTH-4030")
    assert assert_ok(ISS.get("/sessions", params={"user_id": "list-u"}))["total_items"] == 3


# --- check 17: renew --------------------------------------------------------------------------


def test_renew(ISS: httpx.Client, node: ServerProcess, creds: dict[str, str]) -> None:
    created = create(ISS, "u-renew")
    sid = created["session_id"]
    before = now_ms()
    with client(
        node, creds["issuer"], source="127.0.0.9", headers={"User-Agent": "other-agent"}
    ) as other:
        d = assert_ok(other.post(f"/sessions/{sid}/renew", json={"ttl_seconds": 300}))
    assert before + 300_000 <= d["new_expires_at"] <= now_ms() + 300_000
    s = get(ISS, sid)
    assert s["expires_at"] == d["new_expires_at"]
    assert s["last_active"] >= before
    for f in (
        "ip_address",
        "user_agent",
        "last_access_ip",
        "last_access_ua",
        "created_at",
        "user_id",
        "data",
    ):
        assert s[f] == created["session"][f], f
    assert s["version"] == 2


def test_renew_errors(ISS: httpx.Client) -> None:
    sid = create(ISS, "u-renew")["session_id"]
    assert_error(ISS.post(f"/sessions/{sid}/renew", json={}), 400, "TM-ARG-1002")
    assert_error(ISS.post(f"/sessions/{sid}/renew"), 400, "TM-ARG-1002")
    assert_error(
        ISS.post(f"/sessions/{sid}/renew", json={"ttl_seconds": 60, "ip_address": "1.2.3.4"}),
        400,
        "TM-SYS-4000",
    )
    for ttl in (0, 2_592_001):
        assert_error(
            ISS.post(f"/sessions/{sid}/renew", json={"ttl_seconds": ttl}), 400, "TM-ARG-1001"
        )
    assert_error(
        ISS.post(f"/sessions/{UNKNOWN_SID}/renew", json={"ttl_seconds": 60}), 404, "TM-SESS-4040"
    )


def test_renew_expired_is_4041(ISS: httpx.Client, expired: dict[str, dict[str, Any]]) -> None:
    exp = expired["renew"]["session_id"]
    assert_error(ISS.post(f"/sessions/{exp}/renew", json={"ttl_seconds": 60}), 404, "TM-SESS-4041")


# --- check 18: revoke -------------------------------------------------------------------------


def test_revoke_idempotent(ISS: httpx.Client, V: httpx.Client) -> None:
    d = create(ISS, "u-revoke")
    sid = d["session_id"]
    for _ in range(2):
        assert assert_ok(ISS.post(f"/sessions/{sid}/revoke")) == {"success": True}
    assert_error(V.get(f"/sessions/{sid}"), 404, "TM-SESS-4040")
    r = V.post("/tokens/validate", json={"token": d["token"]})
    assert r.status_code == 401 and r.headers["x-error-code"] in ("TM-TOKN-4012", "TM-TOKN-4010")
    assert_error(r, 401, r.headers["x-error-code"])
    assert assert_ok(ISS.post(f"/sessions/{UNKNOWN_SID}/revoke")) == {"success": True}
    sid2 = create(ISS, "u-revoke")["session_id"]
    assert assert_ok(ISS.post(f"/sessions/{sid2}/revoke", json={"sync": True})) == {"success": True}
    assert_error(V.get(f"/sessions/{sid2}"), 404, "TM-SESS-4040")
    assert_error(ISS.post(f"/sessions/{sid2}/revoke", json={"sync": "yes"}), 400, "TM-SYS-4000")


def test_revoked_token_is_4012_while_tombstoned(ISS: httpx.Client, V: httpx.Client) -> None:
    d = create(ISS, "u-revoke")
    assert_ok(ISS.post(f"/sessions/{d['session_id']}/revoke"))
    assert_error(V.post("/tokens/validate", json={"token": d["token"]}), 401, "TM-TOKN-4012")


def test_revoke_forbidden_for_validator(ISS: httpx.Client, V: httpx.Client) -> None:
    sid = create(ISS, "u-revoke")["session_id"]
    assert_error(V.post(f"/sessions/{sid}/revoke"), 403, "TM-AUTH-4030")
    assert_error(V.post(f"/sessions/{sid}/renew", json={"ttl_seconds": 5}), 403, "TM-AUTH-4030")
    assert_error(V.post("/users/u/sessions/revoke"), 403, "TM-AUTH-4030")


# --- check 19: revoke by user -----------------------------------------------------------------


def test_revoke_user(ISS: httpx.Client, A: httpx.Client) -> None:
    ids = [create(ISS, "U1")["session_id"] for _ in range(3)]
    keep = create(ISS, "U1-other")["session_id"]
    assert assert_ok(ISS.post("/users/U1/sessions/revoke")) == {"revoked_count": 3}
    assert assert_ok(A.get("/sessions", params={"user_id": "U1"}))["total_items"] == 0
    assert assert_ok(ISS.post("/users/U1/sessions/revoke")) == {"revoked_count": 0}
    for sid in ids:
        assert_error(A.get(f"/sessions/{sid}"), 404, "TM-SESS-4040")
    assert get(A, keep)["user_id"] == "U1-other"


def test_revoke_user_except_and_verbatim_id(ISS: httpx.Client, A: httpx.Client) -> None:
    uid = "Mixed Case/ü"
    ids = [create(ISS, uid)["session_id"] for _ in range(3)]
    path = "/users/Mixed%20Case%2F%C3%BC/sessions/revoke"
    d = assert_ok(ISS.post(path, json={"except_session_id": ids[0]}))
    assert d == {"revoked_count": 2}
    left = assert_ok(A.get("/sessions", params={"user_id": uid}))
    assert [i["id"] for i in left["items"]] == [ids[0]]


# --- check 20: validate -----------------------------------------------------------------------


def test_validate_no_mutation(ISS: httpx.Client, V: httpx.Client) -> None:
    d = create(ISS, "u-val")
    before = get(V, d["session_id"])
    v = assert_ok(V.post("/tokens/validate", json={"token": d["token"]}))
    assert set(v) == {"valid", "session"} and v["valid"] is True
    assert v["session"] == before
    v = assert_ok(V.post("/tokens/validate", json={"token": d["token"], "touch": False}))
    assert get(V, d["session_id"]) == before == v["session"]


def test_validate_touch(ISS: httpx.Client, node: ServerProcess, creds: dict[str, str]) -> None:
    d = create(ISS, "u-val")
    time.sleep(0.01)
    with client(
        node, creds["validator"], source="127.0.0.7", headers={"User-Agent": "gateway/2"}
    ) as v:
        s = assert_ok(v.post("/tokens/validate", json={"token": d["token"], "touch": True}))
    sess = s["session"]
    old = d["session"]
    assert sess["last_active"] > old["last_active"]
    assert sess["last_access_ip"] == "127.0.0.7" and sess["last_access_ua"] == "gateway/2"
    assert sess["ip_address"] == old["ip_address"] and sess["user_agent"] == old["user_agent"]
    assert sess["expires_at"] == old["expires_at"] and sess["version"] == 2
    assert get(ISS, d["session_id"]) == sess


def test_validate_expired_is_4011(V: httpx.Client, expired: dict[str, dict[str, Any]]) -> None:
    assert_error(
        V.post("/tokens/validate", json={"token": expired["validate"]["token"]}),
        401,
        "TM-TOKN-4011",
    )


def test_validate_errors(V: httpx.Client, M: httpx.Client) -> None:
    assert_error(V.post("/tokens/validate", json={"token": UNKNOWN_TOKEN}), 401, "TM-TOKN-4010")
    assert_error(V.post("/tokens/validate", json={}), 400, "TM-ARG-1002")
    assert_error(V.post("/tokens/validate", json={"token": ""}), 400, "TM-ARG-1002")
    assert_error(V.post("/tokens/validate", json={"token": "abc"}), 400, "TM-TOKN-4000")
    assert_error(
        V.post("/tokens/validate", json={"token": UNKNOWN_TOKEN, "touch": "yes"}),
        400,
        "TM-SYS-4000",
    )
    assert_error(M.post("/tokens/validate", json={"token": UNKNOWN_TOKEN}), 403, "TM-AUTH-4030")


def test_pipelined_writes_are_answered_in_order_after_their_commits(
    node: ServerProcess, creds: dict[str, str], ISS: httpx.Client
) -> None:
    """Creates, a renew and a revoke pipelined in one write (answered from their commits
    by the connection mux) come back in order, and a read pipelined behind a write sees
    that write: the revoked session's token no longer validates."""
    import socket

    import orjson

    create(ISS, "pipe-warm")  # the issuer key is now in the validation cache
    victim = create(ISS, "pipe-victim")
    auth = f"Authorization: Bearer {creds['issuer']}\r\n"

    def post(path: str, body: dict[str, Any]) -> bytes:
        raw = orjson.dumps(body)
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
        return f"{head}Content-Length: {len(raw)}\r\n\r\n".encode() + raw

    batch = b"".join(
        [
            post("/sessions", {"user_id": "pipe-a"}),
            post(f"/sessions/{victim['session_id']}/renew", {"ttl_seconds": 600}),
            post("/sessions", {"user_id": "pipe-b"}),
            post(f"/sessions/{victim['session_id']}/revoke", {}),
            post("/tokens/validate", {"token": victim["token"]}),
        ]
    )
    with socket.create_connection(("127.0.0.1", node.http_port), timeout=10) as sock:
        sock.sendall(batch)
        data = b""
        while data.count(b"HTTP/1.1 ") < 5 or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    bodies = [
        orjson.loads(part[part.index(b"\r\n\r\n") + 4 :]) for part in data.split(b"HTTP/1.1 ")[1:]
    ]
    statuses = [int(part[:3]) for part in data.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [201, 200, 201, 200, 401], bodies
    assert bodies[0]["data"]["session"]["user_id"] == "pipe-a"
    assert "new_expires_at" in bodies[1]["data"]
    assert bodies[2]["data"]["session"]["user_id"] == "pipe-b"
    assert bodies[3]["data"] == {"success": True}
    assert bodies[4]["code"] == "TM-TOKN-4012"
