"""The segmented map: a dict's behaviour, over small dicts (no huge rehash on one insert)."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokmesh import accel
from tokmesh.actors import segmented_map
from tokmesh.actors.segmented_map import MASK, SEGMENTS, SegmentedMap, fill_segments
from tokmesh.actors.state import StoreState

_ops = st.lists(
    st.tuples(
        st.sampled_from(["set", "del", "pop", "pop_default", "get", "in", "update", "clear"]),
        st.text(max_size=3),
        st.integers(),
    ),
    max_size=200,
)


@given(_ops)
def test_it_behaves_as_a_dict(ops: list[tuple[str, str, int]]) -> None:
    ref: dict[str, int] = {}
    seg: SegmentedMap[str, int] = SegmentedMap()
    for op, key, value in ops:
        if op == "set":
            ref[key] = value
            seg[key] = value
        elif op == "del":
            if key in ref:
                del ref[key]
                del seg[key]
            else:
                with pytest.raises(KeyError):
                    del seg[key]
        elif op == "pop":
            if key in ref:
                assert seg.pop(key) == ref.pop(key)
            else:
                with pytest.raises(KeyError):
                    seg.pop(key)
        elif op == "pop_default":
            assert seg.pop(key, None) == ref.pop(key, None)
        elif op == "get":
            assert seg.get(key) == ref.get(key)
            assert seg.get(key, -1) == ref.get(key, -1)
        elif op == "in":
            assert (key in seg) == (key in ref)
        elif op == "update":
            pairs = [(key, value), (key + "x", value + 1)]
            ref.update(pairs)
            seg.update(pairs)
        else:
            ref.clear()
            seg.clear()
        assert len(seg) == len(ref)
    assert dict(seg.items()) == ref
    assert sorted(seg) == sorted(ref)
    assert sorted(seg.keys()) == sorted(ref)
    assert sorted(seg.values()) == sorted(ref.values())
    assert seg == ref  # Mapping equality
    for key in ref:
        assert seg[key] == ref[key]
        assert key in seg.segments[hash(key) & MASK]


def test_no_table_holds_more_than_a_small_share_of_the_entries() -> None:
    # What keeps a rebuild small: at 64,000 sessions each segment holds ~1,000 of them,
    # so the table a growing map rebuilds in one insert is ~1/64 of the map.
    state = StoreState()
    n = 64_000
    state.sessions.update((f"tmss-{os.urandom(13).hex()}", object()) for _ in range(n))  # type: ignore[misc]
    assert len(state.sessions.segments) == SEGMENTS == 64
    assert max(map(len, state.sessions.segments)) < 2 * n / SEGMENTS
    assert len(state.sessions) == n
    for index in (state.by_token, state.by_user._map, state.by_device._map):
        assert isinstance(index, SegmentedMap)


@pytest.mark.parametrize("compiled", [True, False])
def test_bulk_fill_puts_every_key_in_its_segment(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if compiled and accel.fill_segments is None:
        pytest.skip("the accelerator is not built")
    if not compiled:
        monkeypatch.setattr(accel, "fill_segments", None)
    rng = random.Random(7)
    keys: list[Any] = [f"k{rng.random()}" for _ in range(5_000)] + [
        rng.randbytes(32) for _ in range(5_000)
    ]
    segs: list[dict[Any, int]] = [{} for _ in range(SEGMENTS)]
    fill_segments(segs, ((k, i) for i, k in enumerate(keys)))
    fill_segments(segs, [(keys[0], -1)])  # a later pair wins, as in dict.update
    assert sum(map(len, segs)) == len(keys)
    for i, k in enumerate(keys):
        assert segs[hash(k) & MASK][k] == (-1 if i == 0 else i)


def test_bulk_fill_refuses_what_is_not_a_pair() -> None:
    if accel.fill_segments is None:
        pytest.skip("the accelerator is not built")
    segs: list[dict[Any, Any]] = [{} for _ in range(SEGMENTS)]
    with pytest.raises(TypeError):
        accel.fill_segments(segs, [("a", 1, 2)])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        accel.fill_segments([{}, {}, {}], [])
    with pytest.raises(TypeError):  # unhashable key
        accel.fill_segments(segs, [([], 1)])
    with pytest.raises(ZeroDivisionError):  # the iterable's own error comes through
        accel.fill_segments(segs, ((1 // 0, 1) for _ in range(1)))


def test_the_python_fill_is_the_fallback() -> None:
    segs: list[dict[str, int]] = [{} for _ in range(SEGMENTS)]
    segmented_map._fill_python(segs, [("a", 1)])
    assert segs[hash("a") & MASK] == {"a": 1}
