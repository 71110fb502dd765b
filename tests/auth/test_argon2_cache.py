"""Argon2id helpers (02 §7) and the auth-cache actor's message paths (02 §8)."""

from __future__ import annotations

import logging

import attrs
import pytest
import trio

from tokmesh.actors.auth_cache import AuthCache
from tokmesh.domain.apikey import ApiKey
from tokmesh.domain.argon2_hash import Argon2Params, make_password_hasher, verify_any_blocking
from tokmesh.domain.clock import ManualClock
from tokmesh.domain.errors import TokMeshError
from tokmesh.domain.grants import credential_digest
from tokmesh.domain.ids import new_key_id

from .conftest import IP_DOC, Env

FAST = Argon2Params(memory_kib=8192, iterations=1, parallelism=1)


def test_verify_uses_parameters_stored_in_hash() -> None:
    # Retuning (a hasher with other parameters) never breaks existing keys.
    old = make_password_hasher(FAST).hash("tmas_x")
    retuned = make_password_hasher(Argon2Params(memory_kib=8192, iterations=2, parallelism=2))
    assert verify_any_blocking(retuned, [old], "tmas_x") == 0
    assert verify_any_blocking(retuned, [old], "tmas_y") is None


def test_verify_any_reports_matching_index() -> None:
    ph = make_password_hasher(FAST)
    a, b = ph.hash("one"), ph.hash("two")
    assert verify_any_blocking(ph, [a, b], "two") == 1
    assert verify_any_blocking(ph, [a, b], "one") == 0
    assert verify_any_blocking(ph, [a, b], "three") is None


def test_corrupt_hash_is_mismatch_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    ph = make_password_hasher(FAST)
    with caplog.at_level(logging.ERROR, logger="tokmesh.auth"):
        assert verify_any_blocking(ph, ["$argon2id$garbage"], "s") is None
    assert any("could not be verified" in r.getMessage() for r in caplog.records)
    assert all("tmas_" not in r.getMessage() for r in caplog.records)


async def test_corrupt_stored_hash_answers_4011(env: Env) -> None:
    key, secret, _ = await env.keys.create("issuer")
    env.repo.keys[key.key_id] = attrs.evolve(key, secret_hash="$argon2id$v=19$broken")
    with pytest.raises(TokMeshError) as exc:
        await env.auth.authenticate(key.key_id, secret, IP_DOC, "business")
    assert exc.value.code == "TM-AUTH-4011"


async def test_invalidate_message_and_stats(env: Env) -> None:
    key, secret, _ = await env.keys.create("issuer")
    await env.auth.authenticate(key.key_id, secret, IP_DOC, "business")
    await env.auth.authenticate(key.key_id, secret, IP_DOC, "business")
    digest = credential_digest(key.key_id, secret)
    assert env.cache.lookup(digest, env.clock.now_ms()) is not None
    assert 0.0 < env.cache.stats.hit_rate() < 1.0
    gen = env.cache.generation(key.key_id)
    env.cache.post_invalidate(key.key_id)  # as a remote KEY_INVALIDATE would arrive
    with trio.fail_after(5):
        while env.cache.generation(key.key_id) == gen:
            await trio.sleep(0)
    assert env.cache.lookup(digest, env.clock.now_ms()) is None


async def test_verify_times_out_without_actor() -> None:
    cache = AuthCache(clock=ManualClock(0), argon2=FAST, reply_timeout_s=0.05)
    with pytest.raises(TokMeshError) as exc:
        await cache.hash_secret("tmas_x")
    assert exc.value.code == "TM-SYS-5030"


async def test_actor_hash_and_verify_report_duration(nursery: trio.Nursery) -> None:
    seen: list[float] = []
    clock = ManualClock(1_000)
    cache = AuthCache(clock=clock, argon2=FAST, on_argon2_seconds=seen.append, ttl_ms=60_000)
    await nursery.start(cache.run)
    secret = "tmas_" + "a" * 43
    phc = await cache.hash_secret(secret)
    assert phc.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    key = ApiKey(key_id=new_key_id(), secret_hash=phc, role="validator", expires_at=30_000)
    digest = credential_digest(key.key_id, secret)
    grant = await cache.verify(key, secret, digest, cache.generation(key.key_id))
    assert grant is not None and grant.role == "validator" and not grant.matched_old
    assert grant.valid_until == 30_001  # capped by expires_at (valid at expires_at exactly)
    assert cache.lookup(digest, 2_000) == grant
    assert cache.lookup(digest, 30_001) is None
    assert cache.stats.hash_runs == 1 and cache.stats.verify_runs == 1
    assert len(seen) == 1 and seen[0] > 0
    # A verification under an outdated generation is answered but not cached.
    stale = await cache.verify(key, secret, digest, cache.generation(key.key_id) - 1)
    assert stale is not None and cache.lookup(digest, 2_000) is None
