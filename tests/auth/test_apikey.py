"""ApiKey record, roles/permissions table and secret format (02 §1-§3)."""

from __future__ import annotations

import re

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokmesh.domain import apikey as ak
from tokmesh.domain.apikey import ApiKey
from tokmesh.domain.ids import new_key_id

SECRET_RE = re.compile(r"^tmas_[0-9A-Za-z]{43}$")


def _key(**kw: object) -> ApiKey:
    base: dict[str, object] = {
        "key_id": new_key_id(),
        "secret_hash": "$argon2id$v=19$m=16384,t=2,p=2$c2FsdA$aGFzaA",
        "role": "issuer",
    }
    base.update(kw)
    return ApiKey(**base)  # type: ignore[arg-type]


def test_generated_secret_format() -> None:
    seen = {ak.generate_secret() for _ in range(200)}
    assert len(seen) == 200
    for s in seen:
        assert SECRET_RE.match(s)
        assert len(s) == 48
        assert ak.is_valid_secret(s)


def test_base62_pads_to_43_and_covers_max() -> None:
    assert ak.base62_encode(bytes(32)) == "0" * 43
    top = ak.base62_encode(b"\xff" * 32)
    assert len(top) == 43 and top[0] != "0"
    assert ak.base62_encode(b"\x00" * 31 + b"\x3d") == "0" * 42 + "z"


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_base62_roundtrip(data: bytes) -> None:
    text = ak.base62_encode(data)
    value = 0
    for ch in text:
        value = value * 62 + ak.BASE62_ALPHABET.index(ch)
    assert value.to_bytes(32, "big") == data


@pytest.mark.parametrize(
    "value",
    [
        "",
        "tmas_",
        "tmas_" + "a" * 42,
        "tmas_" + "a" * 44,
        "TMAS_" + "a" * 43,
        "tmas-" + "a" * 43,
        "tmas_" + "a" * 42 + "-",
        "tmas_" + "a" * 42 + "_",
        "tmas_" + "a" * 42 + "é",
    ],
)
def test_invalid_secret_formats(value: str) -> None:
    assert not ak.is_valid_secret(value)


def test_key_id_checks_any_case() -> None:
    kid = new_key_id()
    assert ak.is_valid_key_id(kid) and ak.is_valid_key_id(kid.upper())
    assert not ak.is_valid_key_id(kid[:-1])
    assert not ak.is_valid_key_id("tmss-" + kid[5:])


def test_role_permission_table() -> None:
    assert ak.ROLES == ("admin", "issuer", "validator", "metrics")
    assert ak.role_allows("metrics", ak.PERM_METRICS_READ)
    assert not ak.role_allows("metrics", ak.PERM_TOKEN_VALIDATE)
    for perm in (ak.PERM_TOKEN_VALIDATE, ak.PERM_SESSION_READ, ak.PERM_SESSION_TOUCH):
        assert ak.role_allows("validator", perm) and ak.role_allows("issuer", perm)
    for perm in (
        ak.PERM_SESSION_LIST,
        ak.PERM_SESSION_CREATE,
        ak.PERM_SESSION_RENEW,
        ak.PERM_SESSION_REVOKE,
        ak.PERM_SESSION_REVOKE_USER,
    ):
        assert not ak.role_allows("validator", perm)
        assert ak.role_allows("issuer", perm)
    assert not ak.role_allows("issuer", ak.PERM_SESSION_LIST_ALL)
    assert not ak.role_allows("issuer", ak.PERM_METRICS_READ)
    assert not ak.role_allows("validator", ak.PERM_METRICS_READ)
    assert not ak.role_allows("issuer", ak.PERM_APIKEY_MANAGE)
    for perm in ak.ALL_PERMISSIONS:
        assert ak.role_allows("admin", perm)
    assert not ak.role_allows("root", ak.PERM_SESSION_READ)


def test_redis_command_permissions() -> None:
    perms = ak.REDIS_COMMAND_PERMISSIONS
    for cmd in ("GET", "TTL", "EXISTS", "SCAN", "TM.VALIDATE", "TM.TOUCH"):
        assert ak.role_allows("validator", perms[cmd])
        assert not ak.role_allows("metrics", perms[cmd])
    for cmd in ("SET", "DEL", "EXPIRE", "TM.CREATE", "TM.REVOKE_USER"):
        assert not ak.role_allows("validator", perms[cmd])
        assert ak.role_allows("issuer", perms[cmd])
    assert "PING" not in perms and "AUTH" not in perms


def test_record_roundtrip_keeps_hashes() -> None:
    key = _key(
        old_secret_hash="$argon2id$v=19$m=16384,t=2,p=2$b2xk$b2xk",
        grace_period_end=123,
        allowedlist=["10.0.0.0/8", "2001:db8::/64"],
        rate_limit=50,
        expires_at=999,
        status="disabled",
        description="d",
        created_at=1,
        created_by="system",
        last_used=7,
        version=4,
    )
    rec = key.to_record()
    assert rec["secret_hash"] == key.secret_hash
    assert rec["old_secret_hash"] == key.old_secret_hash
    assert ApiKey.from_record(rec) == key
    upper = dict(rec, key_id=key.key_id.upper())
    assert ApiKey.from_record(upper).key_id == key.key_id


def test_public_shape_has_no_hashes() -> None:
    key = _key(old_secret_hash="$argon2id$old", last_used=5, grace_period_end=9)
    pub = key.to_public()
    assert set(pub) == {
        "key_id",
        "role",
        "status",
        "description",
        "allowedlist",
        "rate_limit",
        "created_at",
        "created_by",
        "expires_at",
        "last_used_at",
        "grace_period_end",
    }
    assert pub["last_used_at"] == 5 and pub["grace_period_end"] == 9
    assert "argon2" not in repr(pub) and "argon2" not in repr(key)


@pytest.mark.parametrize(
    "change",
    [{"role": "root"}, {"status": "gone"}, {"key_id": "nope"}, {"secret_hash": ""}],
)
def test_from_record_rejects_malformed(change: dict[str, object]) -> None:
    rec = _key().to_record()
    rec.update(change)
    with pytest.raises(ValueError):
        ApiKey.from_record(rec)


def test_state_predicates() -> None:
    key = _key(expires_at=1000)
    assert not key.is_expired(1000) and key.is_expired(1001)
    assert key.usable(1000) and not key.usable(1001)
    assert not attrs.evolve(key, status="disabled").usable(0)
    rotated = attrs.evolve(key, old_secret_hash="x", grace_period_end=500)
    assert rotated.in_grace(499) and not rotated.in_grace(500)


def test_presentable_secret_prefix_any_case() -> None:
    s = ak.generate_secret()
    assert ak.is_presentable_secret(s) and ak.is_presentable_secret(s.upper())
    assert not ak.is_valid_secret("TMAS_" + s[5:])
    assert not ak.is_presentable_secret(s[:-1])
    assert not ak.is_presentable_secret(s[:-1] + "-")
    assert not ak.is_presentable_secret("tmak_" + s[5:])
