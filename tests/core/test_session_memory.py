"""Records share what repeats: equal data maps are one dict, user/device ids interned."""

from __future__ import annotations

from typing import Any

from tokmesh.domain import session as session_mod
from tokmesh.domain.session import Session, share_data
from tokmesh.services import sessions as sessions_mod
from tokmesh.services.sessions import local_sessions

from .conftest import CTX, EngineRunner


def _make(**kw: Any) -> Session:
    fields: dict[str, Any] = {
        "id": "tmss-01jf8xzm7e3xqh5p8n4r6s2w0t",
        "user_id": "".join(["us", "er-1"]),  # a new string object each call
        "token_hash": bytes(32),
        "data": {"role": "member"},
    }
    fields.update(kw)
    return Session(**fields)


def test_equal_data_maps_are_one_dict_and_ids_are_interned() -> None:
    a, b = _make(), _make()
    assert a.data is b.data and a.data == {"role": "member"}
    assert a.user_id is b.user_id
    c = a.evolve(version=2)
    assert c.data is a.data
    other = _make(data={"role": "admin"})
    assert other.data == {"role": "admin"} and other.data is not a.data
    assert _make(data={}).data is None and _make(data=None).data is None


def test_unkeyable_or_overflowing_maps_are_kept_as_they_are(monkeypatch: Any) -> None:
    odd: dict[str, Any] = {"k": ["not", "a", "string"]}  # replayed from an old WAL
    assert share_data(odd) is odd
    monkeypatch.setattr(session_mod, "SHARED_DATA_MAX", 0)
    fresh = {"never-seen": "before"}
    assert share_data(fresh) is fresh and share_data(dict(fresh)) is not fresh


async def test_created_records_share_their_durations(runner: EngineRunner) -> None:
    """ttl and idle timeout are one int object per distinct value, with the right values."""
    engine = await runner.start()
    svc = local_sessions(engine)
    assert svc is not None
    # computed at run time: a constant would be one object anyway
    ttl_s, idle_s = int("86401"), int("601")
    a = (await svc.create(CTX, "u1", ttl_seconds=ttl_s, idle_timeout_seconds=idle_s)).session
    b = await svc.create(CTX, "u2", ttl_seconds=int("86401"), idle_timeout_seconds=int("601"))
    c = (await svc.create(CTX, "u3", ttl_seconds=86402)).session
    assert a.ttl == b.session.ttl == 86_401_000 and a.ttl is b.session.ttl
    assert a.idle_timeout == b.session.idle_timeout == 601_000
    assert a.idle_timeout is b.session.idle_timeout
    assert c.ttl == 86_402_000 and c.expires_at == c.created_at + 86_402_000
    renewed = await svc.renew(CTX, a.id, int("86401"))
    assert renewed.ttl is a.ttl


def test_overflowing_durations_are_kept_as_they_are(monkeypatch: Any) -> None:
    monkeypatch.setattr(sessions_mod, "SHARED_MS_MAX", 0)
    value = int("123456789")
    assert sessions_mod._shared_ms(value) is value
    assert sessions_mod._shared_ms(int("123456789")) == value
