"""Records share what repeats: equal data maps are one dict, user/device ids interned."""

from __future__ import annotations

from typing import Any

from tokmesh.domain import session as session_mod
from tokmesh.domain.session import Session, share_data


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
