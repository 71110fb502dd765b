"""The compact user/device index: one id as a bare string, a few as a tuple, many as a set,
with the same contents as a dict of sets under any sequence of adds and discards."""

from __future__ import annotations

import random

import pytest

from tokmesh import accel
from tokmesh.actors.id_index import SMALL_MAX, IdIndex


def _raw(index: IdIndex, key: str) -> object:
    return index._map.get(key)


def _ids(n: int) -> list[str]:
    return [f"tmss-{i:026d}" for i in range(n)]


def test_representation_grows_from_str_to_tuple_to_set() -> None:
    index = IdIndex()
    ids = _ids(SMALL_MAX + 3)
    index.add("u", ids[0])
    assert _raw(index, "u") == ids[0] and type(_raw(index, "u")) is str
    assert tuple(index.get("u")) == (ids[0],)
    index.add("u", ids[1])
    assert _raw(index, "u") == (ids[0], ids[1])
    for n in range(2, SMALL_MAX):
        index.add("u", ids[n])
        assert _raw(index, "u") == tuple(ids[: n + 1])
    index.add("u", ids[SMALL_MAX])  # one more than a tuple holds
    assert _raw(index, "u") == set(ids[: SMALL_MAX + 1])
    index.add("u", ids[SMALL_MAX + 1])
    assert _raw(index, "u") == set(ids[: SMALL_MAX + 2])
    assert index.count() == SMALL_MAX + 2
    assert len(index) == 1


def test_representation_shrinks_back_on_discard() -> None:
    index = IdIndex()
    ids = _ids(SMALL_MAX + 2)
    for sid in ids:
        index.add("u", sid)
    assert isinstance(_raw(index, "u"), set)
    index.discard("u", ids[0])  # SMALL_MAX + 1 left: still a set
    assert _raw(index, "u") == set(ids[1:])
    index.discard("u", ids[1])  # SMALL_MAX left: a tuple again
    raw = _raw(index, "u")
    assert isinstance(raw, tuple) and sorted(raw) == ids[2:]
    for n in range(2, SMALL_MAX):
        index.discard("u", ids[n])
        raw = _raw(index, "u")
        assert isinstance(raw, tuple) and sorted(raw) == ids[n + 1 :]
    index.discard("u", ids[SMALL_MAX])  # one left: the bare id
    assert _raw(index, "u") == ids[SMALL_MAX + 1] and type(_raw(index, "u")) is str
    assert index.count() == 1
    index.discard("u", ids[SMALL_MAX + 1])  # none left: the key is gone
    assert "u" not in index and len(index) == 0 and index.count() == 0
    assert tuple(index.get("u")) == ()


def test_discard_from_the_middle_of_a_tuple_keeps_the_others() -> None:
    index = IdIndex()
    for sid in ("a", "b", "c"):
        index.add("u", sid)
    index.discard("u", "b")
    assert _raw(index, "u") == ("a", "c")
    index.discard("u", "a")
    assert _raw(index, "u") == "c"


def test_duplicates_are_ignored() -> None:
    index = IdIndex()
    index.add("u", "a")
    index.add("u", "a")  # str
    assert _raw(index, "u") == "a" and index.count() == 1
    index.add("u", "b")
    index.add("u", "a")  # tuple
    index.add("u", "b")
    assert _raw(index, "u") == ("a", "b") and index.count() == 2
    ids = _ids(SMALL_MAX + 1)
    for sid in ids:
        index.add("v", sid)
    for sid in ids:  # set
        index.add("v", sid)
    assert _raw(index, "v") == set(ids)
    assert index.count() == 2 + SMALL_MAX + 1
    index.load(["u", "u", "w", "w"], ["a", "c", "x", "x"])
    assert _raw(index, "u") == ("a", "b", "c") and _raw(index, "w") == "x"
    assert index.count() == 3 + SMALL_MAX + 1 + 1


def test_discard_of_a_missing_id_or_key_changes_nothing() -> None:
    index = IdIndex()
    index.discard("nobody", "a")
    assert len(index) == 0 and index.count() == 0
    index.add("u", "a")
    index.discard("u", "b")  # str holding another id
    assert _raw(index, "u") == "a" and index.count() == 1
    index.add("u", "c")
    index.discard("u", "b")  # tuple
    assert _raw(index, "u") == ("a", "c") and index.count() == 2
    ids = _ids(SMALL_MAX + 1)
    for sid in ids:
        index.add("v", sid)
    index.discard("v", "b")  # set
    assert _raw(index, "v") == set(ids) and index.count() == 2 + SMALL_MAX + 1
    index.discard("v", "a")  # an id of another key
    assert index.get("u") == ("a", "c")


def test_get_of_a_missing_key_is_empty() -> None:
    index = IdIndex()
    assert len(index.get("nobody")) == 0
    assert "a" not in index.get("nobody")
    index.add("u", "a")
    assert list(index.get("nobody")) == []
    assert "a" in index.get("u") and "b" not in index.get("u")
    assert "nobody" not in index


def test_count_keys_items_clear_and_equality() -> None:
    index = IdIndex()
    index.add("u", "a")
    index.add("u", "b")
    index.add("v", "c")
    assert index.count() == 3 and len(index) == 2
    assert sorted(index) == ["u", "v"]
    assert {k: set(v) for k, v in index.items()} == {"u": {"a", "b"}, "v": {"c"}}
    assert index.as_dict() == {"u": frozenset({"a", "b"}), "v": frozenset({"c"})}
    other = IdIndex()
    other.add("v", "c")
    other.add("u", "b")
    other.add("u", "a")  # the tuple is in another order: still equal
    assert index == other
    other.add("u", "d")
    assert index != other
    index.clear()
    assert len(index) == 0 and index.count() == 0 and index.get("u") == ()
    assert index == IdIndex()


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_load_equals_adding_one_by_one(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if compiled and accel.index_load is None:
        pytest.skip("the accelerator is not built")
    if not compiled:
        monkeypatch.setattr(accel, "index_load", None)
    rng = random.Random(7)
    keys = [
        f"user-{rng.randrange(40) if rng.random() < 0.7 else rng.randrange(4)}" for _ in range(3000)
    ]
    ids = _ids(3000)
    # Pairs seen again (a record loaded twice must not count twice), at every size of value.
    keys += keys[:200] + keys[2500:2600]
    ids += ids[:200] + ids[2500:2600]
    one_by_one = IdIndex()
    for key, sid in zip(keys, ids, strict=True):
        one_by_one.add(key, sid)
    loaded = IdIndex()
    loaded.load(keys[:1000], ids[:1000])  # in two chunks, like snapshot loading
    loaded.load(keys[1000:], ids[1000:])
    assert loaded == one_by_one
    assert loaded.count() == one_by_one.count() == 3000
    for key in one_by_one:
        assert type(_raw(loaded, key)) is type(_raw(one_by_one, key))
    with pytest.raises(ValueError):
        loaded.load(["a", "b"], ["x"])


def test_random_operations_match_a_dict_of_sets() -> None:
    rng = random.Random(11)
    index = IdIndex()
    ref: dict[str, set[str]] = {}
    pool = _ids(60)
    for _ in range(20_000):
        key = f"k{rng.randrange(5)}"
        sid = rng.choice(pool)
        if rng.random() < 0.55:
            index.add(key, sid)
            ref.setdefault(key, set()).add(sid)
        else:
            index.discard(key, sid)
            if key in ref:
                ref[key].discard(sid)
                if not ref[key]:
                    del ref[key]
        raw = _raw(index, key)
        want = ref.get(key, set())
        if not want:
            assert raw is None
        elif len(want) == 1:
            assert raw == next(iter(want))
        elif len(want) <= SMALL_MAX:
            assert isinstance(raw, tuple) and set(raw) == want and len(raw) == len(want)
        else:
            assert raw == want
    assert index.as_dict() == {k: frozenset(v) for k, v in ref.items()}
    assert index.count() == sum(len(v) for v in ref.values())
