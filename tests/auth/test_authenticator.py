"""The 02 §6.1 pipeline on the real Authenticator + auth-cache actor + Argon2id (02 §21)."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import pytest
import trio

from tests.support.clock_reads import count_clock_reads
from tokmesh.domain import apikey as ak
from tokmesh.domain.clock import ManualClock
from tokmesh.domain.errors import TokMeshError
from tokmesh.services.auth import Principal, parse_credentials

from .conftest import PEER, Env, MakeEnv

IP = "198.51.100.10"


async def err(coro: Any) -> TokMeshError:
    with pytest.raises(TokMeshError) as exc:
        await coro
    return exc.value


async def new_key(env: Env, role: str = "issuer", **kw: Any) -> tuple[ak.ApiKey, str]:
    key, secret, _ = await env.keys.create(role, **kw)
    return key, secret


def wrong(secret: str) -> str:
    return secret[:-1] + ("A" if secret[-1] != "A" else "B")


# --- credential transport (02 §4, 03 §2.6) -----------------------------------------------


def test_parse_credentials_forms() -> None:
    assert parse_credentials({}) is None
    assert parse_credentials({"authorization": "Bearer id:sec"}) == ("id", "sec")
    assert parse_credentials({"authorization": "bEaReR   id:sec:x"}) == ("id", "sec:x")
    assert parse_credentials({"x-api-key": "id:sec"}) == ("id", "sec")
    # Bearer wins over X-API-Key.
    both = {"authorization": "Bearer a:b", "x-api-key": "c:d"}
    assert parse_credentials(both) == ("a", "b")
    # Other schemes are not credentials; X-API-Key is then looked at.
    assert parse_credentials({"authorization": "Basic Zm9vOmJhcg==", "x-api-key": "c:d"}) == (
        "c",
        "d",
    )
    assert parse_credentials({"authorization": "Basic Zm9vOmJhcg=="}) is None
    # Legacy pair (03 §2.6 (3)).
    assert parse_credentials({"x-api-key-id": "id", "x-api-key": "sec"}) == ("id", "sec")
    # Present but not a credential -> malformed marker.
    assert parse_credentials({"authorization": "Bearer foo"}) == ("", "")
    assert parse_credentials({"x-api-key": "foo"}) == ("", "")


async def test_bearer_and_x_api_key_and_case_rules(env: Env) -> None:
    # 02 §21 #3.
    key, secret = await new_key(env)
    for headers in (
        {"authorization": f"Bearer {key.key_id}:{secret}"},
        {"x-api-key": f"{key.key_id}:{secret}"},
        {"authorization": f"Bearer {key.key_id.upper()}:{secret}"},
    ):
        p = await env.auth.authorize_http("GET", headers, IP, "business", ak.PERM_SESSION_READ)
        assert p.key_id == key.key_id and p.role == "issuer"
    e = await err(env.auth.authenticate(key.key_id, secret.upper(), IP, "business"))
    assert e.code == "TM-AUTH-4011"


async def test_missing_and_malformed_credentials(env: Env) -> None:
    # 02 §21 #4: none -> 4010 not counted; "Bearer foo" -> 4010 counted.
    e = await err(env.auth.authorize_http("GET", {}, IP, "business", ak.PERM_SESSION_READ))
    assert e.code == "TM-AUTH-4010" and e.http_status == 401
    assert env.auth.guard.failures(IP, env.clock.now_ms()) == 0
    e = await err(
        env.auth.authorize_http("GET", {"authorization": "Bearer foo"}, IP, "business", None)
    )
    assert e.code == "TM-AUTH-4010"
    assert env.auth.guard.failures(IP, env.clock.now_ms()) == 1
    assert env.actions("AUTH_FAILED")[0]["details"]["reason"] == "TM-AUTH-4010"


async def test_unknown_and_wrong_secret_identical(env: Env) -> None:
    # 02 §21 #5.
    key, secret = await new_key(env)
    unknown = await err(
        env.auth.authenticate("tmak-01hzzzzzzzzzzzzzzzzzzzzzzz", secret, IP, "business")
    )
    bad = await err(env.auth.authenticate(key.key_id, wrong(secret), IP, "business"))
    assert unknown.code == bad.code == "TM-AUTH-4011"
    assert unknown.message == bad.message == "invalid api key"
    assert env.auth.guard.failures(IP, env.clock.now_ms()) == 2
    failed = env.actions("AUTH_FAILED")
    assert len(failed) == 2
    assert failed[1]["operator_id"] == key.key_id and failed[1]["ip_address"] == IP
    assert failed[1]["result"] == "FAILURE"
    assert "tmas_" not in repr(env.audits) and secret not in repr(env.audits)


async def test_disabled_expired_and_r5(env: Env) -> None:
    # 02 §21 #6 and ruling R5.
    now = env.clock.now_ms()
    disabled, s1 = await new_key(env)
    await env.keys.set_status(disabled.key_id, "disabled")
    expired, s2 = await new_key(env, expires_at=now - 1)
    both, s3 = await new_key(env, expires_at=now - 1)
    await env.keys.set_status(both.key_id, "disabled")
    e1 = await err(env.auth.authenticate(disabled.key_id, s1, IP, "business"))
    e2 = await err(env.auth.authenticate(expired.key_id, s2, IP, "business"))
    e3 = await err(env.auth.authenticate(both.key_id, s3, IP, "business"))
    assert (e1.code, e2.code, e3.code) == ("TM-AUTH-4012", "TM-AUTH-4011", "TM-AUTH-4012")
    assert e2.message == "invalid api key"
    # State checks come before Argon2: a disabled key answers at once. The expired one
    # answers like a wrong secret, after the one decoy verify that a wrong secret costs.
    assert env.spy.verify_calls == 1
    assert env.spy.verified[0] not in (disabled.secret_hash, expired.secret_hash, both.secret_hash)


def phc_parameters(phc: str) -> str:
    """The ``$argon2id$v=19$m=…,t=…,p=…`` head of a PHC string (salt and hash cut off)."""
    return "$".join(phc.split("$")[:4])


async def test_unknown_key_id_costs_a_decoy_verify(env: Env) -> None:
    # Timing must not tell an unknown key id from a wrong secret: both run one Argon2
    # verify, in a worker thread, with the same parameters.
    key, secret = await new_key(env)
    assert env.spy.verify_calls == 0
    unknown = "tmak-01hzzzzzzzzzzzzzzzzzzzzzzz"
    for n in (1, 2, 3):
        e = await err(env.auth.authenticate(unknown, secret, IP, "business"))
        assert e.code == "TM-AUTH-4011" and e.message == "invalid api key"
        assert env.spy.verify_calls == n
    decoy = env.spy.verified[0]
    assert env.spy.verified == [decoy, decoy, decoy]  # one decoy hash, made once
    assert env.spy.hash_calls == 2  # the key's secret, then the decoy
    assert decoy != key.secret_hash
    assert (
        phc_parameters(decoy) == phc_parameters(key.secret_hash) == "$argon2id$v=19$m=8192,t=1,p=1"
    )
    assert threading.get_ident() not in env.spy.threads  # never on the event loop
    assert len(env.cache) == 0 and env.cache.stats.inserts == 0  # a decoy is never cached
    # A wrong secret for the real key costs the same one verify, against the key's hash.
    await err(env.auth.authenticate(key.key_id, wrong(secret), IP, "business"))
    assert env.spy.verified[-1] == key.secret_hash and env.spy.verify_calls == 4
    # Still counted as failures for the per-IP block, and still audited.
    assert env.auth.guard.failures(IP, env.clock.now_ms()) == 4
    assert len(env.actions("AUTH_FAILED")) == 4


async def test_concurrent_first_failures_make_one_decoy(env: Env) -> None:
    _, secret = await new_key(env)

    async def fail(i: int) -> None:
        kid = f"tmak-01hzzzzzzzzzzzzzzzzzzzzz{i:02d}"
        await err(env.auth.authenticate(kid, secret, f"198.51.100.{i}", "business"))

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(fail, i)
    assert env.spy.hash_calls == 2  # the key's secret and one decoy
    assert env.spy.verify_calls == 6
    assert env.spy.max_active <= 2  # the Argon2 limiter still bounds them


async def test_blocked_ip_gets_no_decoy_verify(env: Env) -> None:
    _, secret = await new_key(env)
    for i in range(10):
        await err(
            env.auth.authenticate(f"tmak-01hzzzzzzzzzzzzzzzzzzzzz{i:02d}", secret, IP, "business")
        )
    calls = env.spy.verify_calls
    blocked = await err(
        env.auth.authenticate("tmak-01hzzzzzzzzzzzzzzzzzzzzzzz", secret, IP, "business")
    )
    assert blocked.code == "TM-SYS-4290"
    assert env.spy.verify_calls == calls == 10


async def test_expiry_boundary(env: Env) -> None:
    key, secret = await new_key(env, expires_at=env.clock.now_ms() + 1000)
    env.clock.advance(1000)  # valid at expires_at exactly
    await env.auth.authenticate(key.key_id, secret, IP, "business")
    env.clock.advance(1)
    e = await err(env.auth.authenticate(key.key_id, secret, IP, "business"))
    assert e.code == "TM-AUTH-4011"


# --- cache (02 §8, §21 #7-#8) --------------------------------------------------------------


async def test_cache_hit_runs_no_argon2_until_ttl(env: Env) -> None:
    key, secret = await new_key(env)
    await env.auth.authenticate(key.key_id, secret, IP, "business")
    assert env.spy.verify_calls == 1
    for _ in range(5):
        env.clock.advance(10_000)
        await env.auth.authenticate(key.key_id, secret, IP, "business")
    assert env.spy.verify_calls == 1 and env.cache.stats.hits == 5
    env.clock.advance(10_000)  # 60 s after the insert: TTL over
    await env.auth.authenticate(key.key_id, secret, IP, "business")
    assert env.spy.verify_calls == 2


async def test_wrong_secret_is_never_cached(env: Env) -> None:
    key, secret = await new_key(env)
    for _ in range(3):
        await err(env.auth.authenticate(key.key_id, wrong(secret), IP, "business"))
    assert env.spy.verify_calls == 3 and len(env.cache) == 0


async def test_argon2_runs_in_worker_thread(env: Env) -> None:
    key, secret = await new_key(env)
    await env.auth.authenticate(key.key_id, secret, IP, "business")
    assert env.spy.threads, "argon2 never ran"
    assert threading.get_ident() not in env.spy.threads


async def test_disable_purges_cache_at_once(env: Env) -> None:
    key, secret = await new_key(env)
    await env.auth.authenticate(key.key_id, secret, IP, "business")
    assert len(env.cache) == 1
    await env.keys.set_status(key.key_id, "disabled")
    assert len(env.cache) == 0
    e = await err(env.auth.authenticate(key.key_id, secret, IP, "business"))
    assert e.code == "TM-AUTH-4012"
    await env.keys.set_status(key.key_id, "active")
    await env.auth.authenticate(key.key_id, secret, IP, "business")


async def test_key_expiring_while_cached(env: Env) -> None:
    key, secret = await new_key(env, expires_at=env.clock.now_ms() + 5000)
    await env.auth.authenticate(key.key_id, secret, IP, "business")
    env.clock.advance(4000)
    await env.auth.authenticate(key.key_id, secret, IP, "business")
    assert env.spy.verify_calls == 1
    env.clock.advance(1001)
    e = await err(env.auth.authenticate(key.key_id, secret, IP, "business"))
    assert e.code == "TM-AUTH-4011"


async def test_change_during_argon2_is_not_cached(env: Env) -> None:
    """A verification that began before a disable must not cache its stale snapshot."""
    key, secret = await new_key(env)
    results: list[Principal] = []

    async def login() -> None:
        results.append(await env.auth.authenticate(key.key_id, secret, IP, "business"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(login)
        with trio.fail_after(5):
            while env.spy.verify_calls == 0:
                await trio.sleep(0)
        await env.keys.set_status(key.key_id, "disabled")
    assert len(results) == 1  # the in-flight request was already past the state check
    assert len(env.cache) == 0
    e = await err(env.auth.authenticate(key.key_id, secret, IP, "business"))
    assert e.code == "TM-AUTH-4012"


async def test_cache_capacity_lru(make_env: MakeEnv) -> None:
    env = await make_env(cache_capacity=2)
    made = [await new_key(env) for _ in range(3)]
    for key, secret in made:
        await env.auth.authenticate(key.key_id, secret, IP, "business")
    assert len(env.cache) == 2 and env.cache.stats.evictions == 1
    first_key, first_secret = made[0]
    await env.auth.authenticate(first_key.key_id, first_secret, IP, "business")
    assert env.spy.verify_calls == 4  # the evicted one needed Argon2 again


async def test_identical_concurrent_misses_share_one_argon2(env: Env) -> None:
    key, secret = await new_key(env)
    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(env.auth.authenticate, key.key_id, secret, IP, "business")
    assert env.spy.verify_calls == 1


async def test_concurrent_misses_bounded_by_limiter_loop_stays_live(env: Env) -> None:
    # 02 §21 #23 (limiter = 2 in the fixture): 50 distinct misses, never > 2 at once, and the
    # event loop keeps ticking while Argon2 runs in threads.
    key, secret = await new_key(env)
    gaps: list[float] = []
    done = trio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await trio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def attempt(i: int) -> None:
        with pytest.raises(TokMeshError):
            await env.auth.authenticate(
                key.key_id, wrong(secret)[:-2] + f"{i:02d}", f"10.9.0.{i}", "business"
            )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        async with trio.open_nursery() as inner:
            for i in range(50):
                inner.start_soon(attempt, i)
        done.set()
    assert env.spy.verify_calls == 50
    assert env.spy.max_active <= 2
    assert max(gaps) < 0.05


async def test_hit_path_is_fast(env: Env) -> None:
    key, secret = await new_key(env)
    await env.auth.authenticate(key.key_id, secret, IP, "business")
    samples = []
    for _ in range(2000):
        t = time.perf_counter()
        await env.auth.authenticate(key.key_id, secret, IP, "business")
        samples.append(time.perf_counter() - t)
    samples.sort()
    assert statistics.median(samples) < 0.0001
    assert samples[int(len(samples) * 0.99)] < 0.0005
    assert env.spy.verify_calls == 1


# --- rotation (02 §9.4, §21 #9) -----------------------------------------------------------


async def test_rotate_both_work_in_grace_old_fails_after(env: Env) -> None:
    key, old = await new_key(env)
    await env.auth.authenticate(key.key_id, old, IP, "business")  # cached
    _, new, valid_until = await env.keys.rotate(key.key_id)
    assert valid_until == env.clock.now_ms() + 3_600_000
    assert len(env.cache) == 0  # rotation purged the cache
    p_old = await env.auth.authenticate(key.key_id, old, IP, "business")
    p_new = await env.auth.authenticate(key.key_id, new, IP, "business")
    assert p_old.matched_old and not p_new.matched_old
    # Both hashes were checked for each (no early exit during grace).
    assert env.spy.verify_calls == 1 + 2 + 2
    env.clock.advance(3_600_000 - 30_000)
    await env.auth.authenticate(key.key_id, old, IP, "business")  # cached, still in grace
    env.clock.advance(30_000)  # grace over, even though the cache TTL is not
    e = await err(env.auth.authenticate(key.key_id, old, IP, "business"))
    assert e.code == "TM-AUTH-4011"
    await env.auth.authenticate(key.key_id, new, IP, "business")


async def test_rotation_grace_zero(make_env: MakeEnv) -> None:
    env = await make_env(rotation_grace_ms=0)
    key, old = await new_key(env)
    await env.auth.authenticate(key.key_id, old, IP, "business")
    rotated, new, valid_until = await env.keys.rotate(key.key_id)
    assert valid_until == env.clock.now_ms() and rotated.old_secret_hash is None
    e = await err(env.auth.authenticate(key.key_id, old, IP, "business"))
    assert e.code == "TM-AUTH-4011"
    await env.auth.authenticate(key.key_id, new, IP, "business")


async def test_rerotate_drops_older_secret(env: Env) -> None:
    key, s1 = await new_key(env)
    _, s2, _ = await env.keys.rotate(key.key_id)
    _, s3, _ = await env.keys.rotate(key.key_id)
    e = await err(env.auth.authenticate(key.key_id, s1, IP, "business"))
    assert e.code == "TM-AUTH-4011"
    await env.auth.authenticate(key.key_id, s2, IP, "business")
    await env.auth.authenticate(key.key_id, s3, IP, "business")


# --- brute force (02 §12.1, §21 #21-#22) --------------------------------------------------


async def test_brute_force_block(env: Env) -> None:
    key, secret = await new_key(env)
    await env.auth.authenticate(key.key_id, secret, IP, "business")  # cached before the flood
    for _ in range(10):
        e = await err(env.auth.authenticate(key.key_id, wrong(secret), IP, "business"))
        assert e.code == "TM-AUTH-4011"
    calls = env.spy.verify_calls
    blocked = await err(env.auth.authenticate(key.key_id, wrong(secret), IP, "business"))
    assert blocked.code == "TM-SYS-4290" and blocked.http_status == 429
    assert blocked.headers == {"Retry-After": "300"}
    # A correct but uncached credential is a cache miss too: blocked, no Argon2.
    other, other_secret = await new_key(env)
    e = await err(env.auth.authenticate(other.key_id, other_secret, IP, "business"))
    assert e.code == "TM-SYS-4290"
    assert env.spy.verify_calls == calls
    # The cached credential still passes; other IPs are unaffected.
    await env.auth.authenticate(key.key_id, secret, IP, "business")
    await env.auth.authenticate(other.key_id, other_secret, "198.51.100.99", "business")
    assert len(env.actions("AUTH_IP_BLOCKED")) == 1
    assert len(env.actions("AUTH_FAILED")) == 10
    env.clock.advance(120_000)
    e = await err(env.auth.authenticate(other.key_id, other_secret, IP, "business"))
    assert e.headers == {"Retry-After": "180"}
    env.clock.advance(180_000)  # block over: evaluation resumes
    await env.auth.authenticate(other.key_id, other_secret, IP, "business")
    assert len(env.actions("AUTH_IP_BLOCKED")) == 1


async def test_format_and_state_failures_count(env: Env) -> None:
    key, secret = await new_key(env)
    await env.keys.set_status(key.key_id, "disabled")
    for _ in range(5):
        await err(env.auth.authenticate("garbage", secret, IP, "business"))
    for _ in range(5):
        await err(env.auth.authenticate(key.key_id, secret, IP, "business"))
    e = await err(env.auth.authenticate(key.key_id, secret, IP, "business"))
    assert e.code == "TM-SYS-4290"


async def test_wrong_secret_flood_does_not_drain_bucket(make_env: MakeEnv) -> None:
    env = await make_env()
    key, secret = await new_key(env, rate_limit=2)
    for i in range(8):
        await err(env.auth.authenticate(key.key_id, wrong(secret), f"10.8.0.{i}", "business"))
    for _ in range(2):
        p = await env.auth.authorize_http(
            "GET", {"x-api-key": f"{key.key_id}:{secret}"}, IP, "business", ak.PERM_SESSION_READ
        )
        assert p.key_id == key.key_id


# --- rate limit (02 §10, §21 #20) ----------------------------------------------------------


async def test_rate_limit_headers(env: Env) -> None:
    key, secret = await new_key(env, rate_limit=10)
    headers = {"authorization": f"Bearer {key.key_id}:{secret}"}
    codes = []
    for _ in range(20):
        try:
            await env.auth.authorize_http("GET", headers, IP, "business", ak.PERM_SESSION_READ)
            codes.append("OK")
        except TokMeshError as exc:
            codes.append(exc.code)
            last = exc
    assert codes.count("OK") == 10 and codes.count("TM-SYS-4290") == 10
    assert last.headers is not None
    assert int(last.headers["Retry-After"]) >= 1
    assert last.headers["X-RateLimit-Limit"] == "10"
    assert last.headers["X-RateLimit-Remaining"] == "0"
    assert int(last.headers["X-RateLimit-Reset"]) >= env.clock.now_ms() // 1000
    env.clock.advance(1000)
    await env.auth.authorize_http("GET", headers, IP, "business", ak.PERM_SESSION_READ)


async def test_metrics_scope_has_no_rate_limit(env: Env) -> None:
    key, secret = await new_key(env, "metrics", rate_limit=1)
    headers = {"authorization": f"Bearer {key.key_id}:{secret}"}
    for _ in range(5):
        await env.auth.authorize_http("GET", headers, IP, "metrics")


# --- roles (02 §3, §21 #11-#14) -----------------------------------------------------------


async def test_role_matrix(env: Env) -> None:
    m, ms = await new_key(env, "metrics")
    v, vs = await new_key(env, "validator")
    i, is_ = await new_key(env, "issuer")
    a, as_ = await new_key(env, "admin")

    async def code(kid: str, sec: str, scope: str, perm: str | None, method: str = "GET") -> str:
        headers = {"authorization": f"Bearer {kid}:{sec}"}
        try:
            await env.auth.authorize_http(method, headers, IP, scope, perm)
        except TokMeshError as exc:
            return exc.code
        return "OK"

    assert await code(m.key_id, ms, "metrics", None) == "OK"
    assert await code(m.key_id, ms, "business", ak.PERM_TOKEN_VALIDATE, "POST") == "TM-AUTH-4030"
    assert await code(m.key_id, ms, "admin", None) == "TM-ADMIN-4030"
    assert await code(v.key_id, vs, "business", ak.PERM_TOKEN_VALIDATE, "POST") == "OK"
    assert await code(v.key_id, vs, "business", ak.PERM_SESSION_READ) == "OK"
    assert await code(v.key_id, vs, "business", ak.PERM_SESSION_TOUCH, "POST") == "OK"
    assert await code(v.key_id, vs, "business", ak.PERM_SESSION_CREATE, "POST") == "TM-AUTH-4030"
    assert await code(v.key_id, vs, "business", ak.PERM_SESSION_LIST) == "TM-AUTH-4030"
    assert await code(v.key_id, vs, "metrics", None) == "TM-AUTH-4030"
    assert await code(i.key_id, is_, "business", ak.PERM_SESSION_LIST_ALL) == "TM-AUTH-4030"
    assert await code(i.key_id, is_, "business", ak.PERM_SESSION_LIST) == "OK"
    assert await code(i.key_id, is_, "business", ak.PERM_SESSION_REVOKE_USER, "POST") == "OK"
    assert await code(i.key_id, is_, "admin", None) == "TM-ADMIN-4030"
    assert await code(i.key_id, is_, "metrics", None) == "TM-AUTH-4030"
    assert await code(a.key_id, as_, "admin", None, "POST") == "OK"
    assert await code(a.key_id, as_, "metrics", None) == "OK"
    assert await code(a.key_id, as_, "business", ak.PERM_SESSION_LIST_ALL) == "OK"
    assert await code(a.key_id, wrong(as_), "admin", None) == "TM-AUTH-4011"


async def test_redis_role_message(env: Env) -> None:
    v, vs = await new_key(env, "validator")
    p = await env.auth.authenticate(v.key_id, vs, PEER, "redis")
    env.auth.check_role(p, ak.REDIS_COMMAND_PERMISSIONS["GET"], "redis", "GET")
    with pytest.raises(TokMeshError) as exc:
        env.auth.check_role(p, ak.REDIS_COMMAND_PERMISSIONS["SET"], "redis", "SET")
    assert exc.value.code == "TM-AUTH-4030"
    assert exc.value.message == "permission denied for command 'SET'"


# --- allow-lists (02 §13, §21 #16-#17) -----------------------------------------------------


async def test_per_key_allowlist(env: Env) -> None:
    key, secret = await new_key(env, allowedlist=["192.168.1.0/24"])
    e = await err(env.auth.authenticate(key.key_id, secret, "10.0.0.1", "business"))
    assert e.code == "TM-AUTH-4031" and e.http_status == 403
    assert env.spy.verify_calls == 0  # business: IP check before Argon2
    assert env.auth.guard.failures("10.0.0.1", env.clock.now_ms()) == 0  # not counted
    await env.auth.authenticate(key.key_id, secret, "192.168.1.5", "business")
    # Cached credential from a disallowed address is still refused.
    e = await err(env.auth.authenticate(key.key_id, secret, "10.0.0.1", "business"))
    assert e.code == "TM-AUTH-4031"
    key6, secret6 = await new_key(env, allowedlist=["2001:db8::/64"])
    await env.auth.authenticate(key6.key_id, secret6, "2001:db8::5", "business")
    e = await err(env.auth.authenticate(key6.key_id, secret6, "2001:db9::5", "business"))
    assert e.code == "TM-AUTH-4031"


async def test_global_and_key_intersection_admin_code(make_env: MakeEnv) -> None:
    env = await make_env(allow_list=("10.0.0.0/8",))
    key, secret = await new_key(env, "admin", allowedlist=["10.1.0.0/16"])
    await env.auth.authenticate(key.key_id, secret, "10.1.2.3", "business")
    e = await err(env.auth.authenticate(key.key_id, secret, "10.2.0.1", "business"))
    assert e.code == "TM-AUTH-4031"
    e = await err(env.auth.authenticate(key.key_id, secret, "10.2.0.1", "admin"))
    assert e.code == "TM-ADMIN-4031"
    # Admin chain: role before the network ACL.
    issuer, isec = await new_key(env, "issuer")
    e = await err(env.auth.authenticate(issuer.key_id, isec, "192.0.2.1", "admin"))
    assert e.code == "TM-ADMIN-4030"


async def test_bad_config_lists_rejected(make_env: MakeEnv) -> None:
    with pytest.raises(TokMeshError) as exc:
        await make_env(allow_list=("10.0.0.0/33",))
    assert exc.value.code == "TM-CFG-1001"
    assert exc.value.details == {"field": "security.auth.allow_list[0]"}
    with pytest.raises(TokMeshError) as exc:
        await make_env(trusted_proxies=("nope",))
    assert exc.value.details == {"field": "security.network.trusted_proxies[0]"}


async def test_trusted_proxy_client_ip_feeds_allowlist(make_env: MakeEnv) -> None:
    # 02 §21 #18-#19 end to end: the resolved client_ip decides the allow-list.
    env = await make_env(trusted_proxies=("10.0.0.1/32",))
    key, secret = await new_key(env, allowedlist=["192.168.1.0/24"])
    headers = {"x-forwarded-for": "6.6.6.6, 192.168.1.5", "x-api-key": f"{key.key_id}:{secret}"}
    ip = env.auth.resolve_client_ip("10.0.0.1", headers)
    assert ip == "192.168.1.5"
    p = await env.auth.authorize_http("GET", headers, ip, "business", ak.PERM_SESSION_READ)
    assert p.client_ip == "192.168.1.5"
    spoof = env.auth.resolve_client_ip("10.0.0.2", headers)
    assert spoof == "10.0.0.2"
    e = await err(env.auth.authorize_http("GET", headers, spoof, "business", None))
    assert e.code == "TM-AUTH-4031"


# --- anti-replay through the chain (02 §11, R2, §21 #24-#26) -------------------------------


async def test_replay_in_chain(make_env: MakeEnv) -> None:
    env = await make_env(anti_replay_required=True)
    key, secret = await new_key(env)
    base = {"x-api-key": f"{key.key_id}:{secret}"}
    now = env.clock.now_ms()

    async def post(ts: int | None, nonce: str | None, method: str = "POST") -> str:
        headers = dict(base)
        if ts is not None:
            headers["x-timestamp"] = str(ts)
        if nonce is not None:
            headers["x-nonce"] = nonce
        try:
            await env.auth.authorize_http(method, headers, IP, "business", ak.PERM_SESSION_CREATE)
        except TokMeshError as exc:
            return exc.code
        return "OK"

    assert await post(now - 31_000, "a") == "TM-AUTH-4014"
    assert await post(now - 29_000, "b") == "OK"
    assert await post(now - 30_000, "c") == "OK"
    assert await post(None, "d") == "TM-AUTH-4014"
    assert await post(now, "b") == "TM-AUTH-4015"
    assert await post(now, "") == "TM-ARG-1001"
    assert await post(now, "x" * 257) == "TM-ARG-1001"
    assert await post(None, None, "GET") == "OK"
    other, osec = await new_key(env)
    headers = {"x-api-key": f"{other.key_id}:{osec}", "x-timestamp": str(now), "x-nonce": "b"}
    await env.auth.authorize_http("POST", headers, IP, "business", ak.PERM_SESSION_CREATE)
    env.clock.advance(60_000)
    assert await post(env.clock.now_ms(), "b") == "OK"


async def test_replay_optional_by_default_and_skipped_for_metrics(env: Env) -> None:
    key, secret = await new_key(env, "admin")
    headers = {"x-api-key": f"{key.key_id}:{secret}"}
    await env.auth.authorize_http("POST", headers, IP, "business", ak.PERM_SESSION_CREATE)
    await env.auth.authorize_http("POST", headers, IP, "admin")
    bad = dict(headers, **{"x-timestamp": "0", "x-nonce": "n"})
    e = await err(env.auth.authorize_http("POST", bad, IP, "admin"))
    assert e.code == "TM-AUTH-4014"
    await env.auth.authorize_http("POST", bad, IP, "metrics")


# --- RESP re-check (03 §5.2 step 3) --------------------------------------------------------


async def test_recheck_loses_access_at_once(env: Env) -> None:
    key, secret = await new_key(env, "validator", expires_at=env.clock.now_ms() + 10_000)
    p = await env.auth.authenticate(key.key_id, secret, PEER, "redis")
    assert env.auth.recheck(p) is p
    await env.keys.set_status(key.key_id, "disabled")
    with pytest.raises(TokMeshError) as exc:
        env.auth.recheck(p)
    assert exc.value.code == "TM-AUTH-4012"
    await env.keys.set_status(key.key_id, "active")
    p = env.auth.recheck(p)
    env.clock.advance(10_001)
    with pytest.raises(TokMeshError) as exc:
        env.auth.recheck(p)
    assert exc.value.code == "TM-AUTH-4011"


async def test_recheck_follows_rotation_grace(env: Env) -> None:
    key, secret = await new_key(env, "validator")
    p = await env.auth.authenticate(key.key_id, secret, PEER, "redis")
    await env.keys.rotate(key.key_id)
    p2 = env.auth.recheck(p)  # the connection's secret is now the previous one, in grace
    assert p2.matched_old and p2.version == 2
    env.clock.advance(3_600_000)
    with pytest.raises(TokMeshError) as exc:
        env.auth.recheck(p2)
    assert exc.value.code == "TM-AUTH-4011"
    key2, secret2 = await new_key(env, "validator")
    q = await env.auth.authenticate(key2.key_id, secret2, PEER, "redis")
    await env.keys.rotate(key2.key_id)
    await env.keys.rotate(key2.key_id)  # second rotation discards the connection's secret
    with pytest.raises(TokMeshError):
        env.auth.recheck(q)


async def test_startup_warnings(make_env: MakeEnv) -> None:
    env = await make_env(nonce_ttl_ms=30_000, metrics_auth_enabled=False)
    warnings = env.settings.startup_warnings()
    assert len(warnings) == 2
    assert not env.auth.metrics_auth_required


async def test_a_cached_request_reads_the_clock_once(
    make_env: MakeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Key state, rate limit and anti-replay of one request are judged at one instant: a
    cache hit reads the clock once for the whole chain."""
    env = await make_env(anti_replay_required=True)
    key, secret = await new_key(env)
    await env.auth.authorize_http(
        "GET", {"x-api-key": f"{key.key_id}:{secret}"}, IP, "business", None
    )  # cached from here on
    headers = {
        "x-api-key": f"{key.key_id}:{secret}",
        "x-timestamp": str(env.clock.now_ms()),
        "x-nonce": "once",
    }
    reads = count_clock_reads(monkeypatch, ManualClock)
    principal = env.auth.authorize_http_now("POST", headers, IP, "business", ak.PERM_SESSION_CREATE)
    assert principal is not None and principal.key_id == key.key_id
    assert reads() == 1
