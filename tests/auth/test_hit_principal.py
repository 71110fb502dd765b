"""The cache-hit path reuses Principals safely (memo keyed by digest, grant and client IP)."""

from __future__ import annotations

from typing import Any

import pytest

from tokmesh.domain import apikey as ak
from tokmesh.domain.errors import TokMeshError

from .conftest import Env

IP = "198.51.100.10"
OTHER_IP = "198.51.100.11"


async def new_key(env: Env, role: str = "issuer", **kw: Any) -> tuple[ak.ApiKey, str]:
    key, secret, _ = await env.keys.create(role, **kw)
    return key, secret


async def test_hits_from_one_ip_share_one_principal(env: Env) -> None:
    key, secret = await new_key(env)
    first = await env.auth.authenticate(key.key_id, secret, IP, "business")
    hit1 = await env.auth.authenticate(key.key_id, secret, IP, "business")
    hit2 = await env.auth.authenticate(key.key_id, secret, IP, "business")
    assert hit1 is hit2
    assert hit1 == first and hit1.client_ip == IP


async def test_another_client_ip_gets_its_own_principal(env: Env) -> None:
    key, secret = await new_key(env)
    await env.auth.authenticate(key.key_id, secret, IP, "business")
    other = await env.auth.authenticate(key.key_id, secret, OTHER_IP, "business")
    assert other.client_ip == OTHER_IP
    again = await env.auth.authenticate(key.key_id, secret, IP, "business")
    assert again.client_ip == IP


async def test_memo_never_outlives_the_grant(env: Env) -> None:
    key, secret = await new_key(env)
    await env.auth.authenticate(key.key_id, secret, IP, "business")
    hit = await env.auth.authenticate(key.key_id, secret, IP, "business")
    env.cache.invalidate(key.key_id)  # what a key update does
    fresh = await env.auth.authenticate(key.key_id, secret, IP, "business")
    assert fresh is not hit
    assert env.spy.verify_calls == 2
    # A disabled key is refused on the next request even though a Principal was memoised.
    await env.keys.set_status(key.key_id, ak.STATUS_DISABLED)
    with pytest.raises(TokMeshError) as exc:
        await env.auth.authenticate(key.key_id, secret, IP, "business")
    assert exc.value.code == "TM-AUTH-4012"
