"""Key lifecycle (02 §9, 03 §4.2) on the real KeyService, auth-cache actor and Argon2id."""

from __future__ import annotations

import re
from typing import Any

import pytest
import trio

from tokmesh.domain.apikey import LOCAL_ADMIN, is_valid_secret
from tokmesh.domain.errors import TokMeshError
from tokmesh.services import keys as keys_mod
from tokmesh.services.keys import created_data, list_data, rotated_data, status_data

from .conftest import Env, MakeEnv

KEY_ID_RE = re.compile(r"^tmak-[0-9a-hjkmnp-tv-z]{26}$")
DAY = 24 * 3600 * 1000


async def code_of(coro: Any) -> str:
    try:
        await coro
    except TokMeshError as exc:
        return exc.code
    return "OK"


async def test_create_returns_secret_once_and_stores_hash(env: Env) -> None:
    key, secret, warning = await env.keys.create("issuer", description="sso", created_by="system")
    assert KEY_ID_RE.match(key.key_id)
    assert is_valid_secret(secret)
    assert key.secret_hash.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    assert env.repo.get_key(key.key_id) == key
    assert key.version == 1 and key.status == "active" and key.rate_limit == 1000
    assert key.created_at == env.clock.now_ms() and key.created_by == "system"
    assert warning == keys_mod.LONG_VALIDITY_WARNING  # never expires -> valid > 1 year
    assert env.spy.hash_calls == 1
    data = created_data(key, secret, warning)
    assert data["key_secret"] == secret and data["role"] == "issuer"
    # Every other shape never carries the secret or a hash.
    others = [
        key.to_public(),
        status_data(key, 1, None),
        list_data([key], 1, 1, 20),
    ]
    for shape in others:
        assert "tmas_" not in repr(shape) and "argon2" not in repr(shape)


async def test_default_argon2_parameters_in_phc(make_env: MakeEnv) -> None:
    # 02 §21 #1 with the spec defaults (m=16384 KiB, t=2, p=2).
    env = await make_env(argon2_memory_kib=16384, argon2_iterations=2, argon2_parallelism=2)
    key, secret, _ = await env.keys.create("admin")
    assert key.secret_hash.startswith("$argon2id$v=19$m=16384,t=2,p=2$")
    salt_b64, hash_b64 = key.secret_hash.split("$")[4:6]
    assert "=" not in salt_b64 and "=" not in hash_b64
    assert len(salt_b64) == 22 and len(hash_b64) == 43  # 16-byte salt, 32-byte hash
    principal = await env.auth.authenticate(key.key_id, secret, "127.0.0.1", "admin")
    assert principal.role == "admin"


async def test_validity_warning_thresholds(env: Env) -> None:
    now = env.clock.now_ms()
    _, _, w400 = await env.keys.create("validator", expires_at=now + 400 * DAY)
    _, _, w30 = await env.keys.create("validator", expires_at=now + 30 * DAY)
    _, _, w365 = await env.keys.create("validator", expires_at=now + 365 * DAY)
    assert w400 == keys_mod.LONG_VALIDITY_WARNING
    assert w30 is None and w365 is None


async def test_past_expiry_accepted(env: Env) -> None:
    key, _, warning = await env.keys.create("validator", expires_at=env.clock.now_ms() - 1)
    assert key.expires_at < env.clock.now_ms() and warning is None


@pytest.mark.parametrize(
    ("kwargs", "code", "message"),
    [
        ({"role": None}, "TM-ARG-1002", None),
        ({"role": ""}, "TM-ARG-1002", None),
        ({"role": "root"}, "TM-ARG-1001", "Role must be one of: admin, issuer, validator, metrics"),
        ({"role": "Admin"}, "TM-ARG-1001", None),
        ({"role": "issuer", "allowedlist": ["10.0.0.0/8"] * 101}, "TM-ARG-1001", None),
        ({"role": "issuer", "allowedlist": ["10.0.0.0/33"]}, "TM-ARG-1001", None),
        ({"role": "issuer", "allowedlist": ["10.0.0.1", "bogus"]}, "TM-ARG-1001", None),
        ({"role": "issuer", "allowedlist": "10.0.0.1"}, "TM-SYS-4000", None),
        ({"role": "issuer", "rate_limit": 0}, "TM-ARG-1001", None),
        ({"role": "issuer", "rate_limit": 1_000_001}, "TM-ARG-1001", None),
        ({"role": "issuer", "rate_limit": "10"}, "TM-SYS-4000", None),
        ({"role": "issuer", "rate_limit": True}, "TM-SYS-4000", None),
        ({"role": "issuer", "description": "x" * 257}, "TM-ARG-1001", None),
        ({"role": "issuer", "description": 5}, "TM-SYS-4000", None),
        ({"role": "issuer", "expires_at": -1}, "TM-ARG-1001", None),
        ({"role": "issuer", "expires_at": 1.5}, "TM-SYS-4000", None),
    ],
)
async def test_create_validation(
    env: Env, kwargs: dict[str, Any], code: str, message: str | None
) -> None:
    with pytest.raises(TokMeshError) as exc:
        await env.keys.create(**kwargs)
    assert exc.value.code == code
    if message:
        assert exc.value.message == message
    assert env.repo.keys == {} and env.spy.hash_calls == 0


async def test_create_limits_inclusive(env: Env) -> None:
    key, _, _ = await env.keys.create(
        "issuer",
        description="x" * 256,
        allowedlist=[f"10.0.{i}.0/24" for i in range(100)],
        rate_limit=1_000_000,
    )
    assert len(key.allowedlist) == 100 and key.rate_limit == 1_000_000
    key1, _, _ = await env.keys.create("issuer", rate_limit=1, allowedlist=["2001:db8::/64"])
    assert key1.rate_limit == 1 and key1.allowedlist == ("2001:db8::/64",)


async def test_list_paging_and_filters(env: Env) -> None:
    made = []
    for role in ("admin", "issuer", "issuer", "validator", "metrics"):
        made.append((await env.keys.create(role))[0])
    items, total = env.keys.list(page=1, size=2)
    assert total == 5 and [k.key_id for k in items] == [k.key_id for k in made[:2]]
    items, total = env.keys.list(page=3, size=2)
    assert total == 5 and [k.key_id for k in items] == [made[4].key_id]
    items, total = env.keys.list(page=4, size=2)
    assert items == [] and total == 5
    items, total = env.keys.list(role="issuer")
    assert total == 2 and all(k.role == "issuer" for k in items)
    await env.keys.set_status(made[1].key_id, "disabled")
    items, total = env.keys.list(status="disabled")
    assert [k.key_id for k in items] == [made[1].key_id]
    data = list_data(items, total, 1, 20)
    assert data["total_items"] == 1 and data["items"][0]["status"] == "disabled"


@pytest.mark.parametrize(
    "kwargs",
    [{"page": 0}, {"size": 0}, {"size": 101}, {"page": "1"}, {"role": "root"}, {"status": "x"}],
)
async def test_list_rejects_bad_arguments(env: Env, kwargs: dict[str, Any]) -> None:
    with pytest.raises(TokMeshError) as exc:
        env.keys.list(**kwargs)
    assert exc.value.code == "TM-ARG-1001"


async def test_set_status_errors_and_noop(env: Env) -> None:
    key, _, _ = await env.keys.create("issuer")
    assert await code_of(env.keys.set_status("tmak-01hzzzzzzzzzzzzzzzzzzzzzzz", "disabled")) == (
        "TM-ADMIN-4041"
    )
    assert await code_of(env.keys.set_status("nope", "disabled")) == "TM-ADMIN-4041"
    assert await code_of(env.keys.set_status(key.key_id, "deleted")) == "TM-ARG-1001"
    assert await code_of(env.keys.set_status(key.key_id, None)) == "TM-ARG-1002"
    same, _, warning = await env.keys.set_status(key.key_id.upper(), "active")
    assert same.version == 1 and warning is None
    off, updated_at, _ = await env.keys.set_status(key.key_id, "disabled")
    assert off.status == "disabled" and off.version == 2 and updated_at == env.clock.now_ms()
    on, _, _ = await env.keys.set_status(key.key_id, "active")
    assert on.status == "active" and on.version == 3


async def test_disabling_last_admin_warns(env: Env) -> None:
    a1, _, _ = await env.keys.create("admin")
    a2, _, _ = await env.keys.create("admin")
    await env.keys.create("issuer")
    _, _, w1 = await env.keys.set_status(a1.key_id, "disabled")
    assert w1 is None
    _, _, w2 = await env.keys.set_status(a2.key_id, "disabled")
    assert w2 == keys_mod.LAST_ADMIN_WARNING and "local admin socket" in w2
    assert env.repo.get_key(a2.key_id).status == "disabled"  # type: ignore[union-attr]


async def test_rotate_keeps_one_previous_secret(env: Env) -> None:
    key, s1, _ = await env.keys.create("issuer")
    rotated, s2, valid_until = await env.keys.rotate(key.key_id)
    assert s2 != s1 and is_valid_secret(s2)
    assert valid_until == env.clock.now_ms() + 3_600_000
    assert rotated.old_secret_hash == key.secret_hash
    assert rotated.grace_period_end == valid_until and rotated.version == 2
    again, _, _ = await env.keys.rotate(key.key_id)
    assert again.old_secret_hash == rotated.secret_hash  # the first secret is gone for good
    assert rotated_data(again, "s", 5) == {
        "key_id": key.key_id,
        "new_key_secret": "s",
        "old_secret_valid_until": 5,
    }
    assert await code_of(env.keys.rotate("tmak-01hzzzzzzzzzzzzzzzzzzzzzzz")) == "TM-ADMIN-4041"


async def test_emergency_key(env: Env) -> None:
    key, secret, warning = await env.keys.create_emergency()
    assert key.role == "admin" and key.created_by == LOCAL_ADMIN
    assert key.description == "Emergency Admin Key"
    assert warning == (
        "This key was created via emergency channel. "
        "Please rotate it after normal access is restored."
    )
    principal = await env.auth.authenticate(key.key_id, secret, "127.0.0.1", "admin")
    assert principal.key_id == key.key_id
    named, _, _ = await env.keys.create_emergency("ops  night")
    assert named.description == "ops  night"


async def test_storage_failure_surfaces_and_changes_nothing(env: Env) -> None:
    key, _, _ = await env.keys.create("issuer")
    env.repo.fail_writes = True
    assert await code_of(env.keys.create("issuer")) == "TM-SYS-5001"
    assert await code_of(env.keys.set_status(key.key_id, "disabled")) == "TM-SYS-5001"
    assert env.repo.get_key(key.key_id) == key and len(env.repo.keys) == 1


async def test_last_used_written_async_and_throttled(env: Env) -> None:
    key, secret, _ = await env.keys.create("validator")
    async with trio.open_nursery() as nursery:
        await nursery.start(env.keys.run)
        await env.auth.authenticate(key.key_id, secret, "127.0.0.1", "business")
        # Not written on the request path.
        assert env.repo.get_key(key.key_id).last_used == 0  # type: ignore[union-attr]
        with trio.fail_after(5):
            while env.repo.get_key(key.key_id).last_used == 0:  # type: ignore[union-attr]
                await trio.sleep(0.05)
        used = env.repo.get_key(key.key_id)
        assert used is not None and used.last_used == env.clock.now_ms()
        assert used.to_public()["last_used_at"] == used.last_used
        nursery.cancel_scope.cancel()
    # Within the throttle interval a further note is ignored.
    env.keys.note_used(key.key_id, env.clock.now_ms() + 1000)
    assert await env.keys.flush_last_used() == 0
    env.keys.note_used(key.key_id, env.clock.now_ms() + 60_000)
    assert await env.keys.flush_last_used() == 1
