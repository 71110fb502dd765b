"""Anti-replay (02 §11, R2) at unit level."""

from __future__ import annotations

import pytest

from tokmesh.domain.errors import TokMeshError
from tokmesh.services.auth_replay import NonceStore, ReplayGuard

NOW = 1_700_000_000_000
K1 = "tmak-01hzzzzzzzzzzzzzzzzzzzzzz1"
K2 = "tmak-01hzzzzzzzzzzzzzzzzzzzzzz2"


def guard(required: bool = False) -> ReplayGuard:
    return ReplayGuard(window_ms=30_000, nonce_ttl_ms=60_000, capacity=1000, required=required)


def h(ts: int | str | None = NOW, nonce: str | None = "n1") -> dict[str, str]:
    out: dict[str, str] = {}
    if ts is not None:
        out["x-timestamp"] = str(ts)
    if nonce is not None:
        out["x-nonce"] = nonce
    return out


def code_of(g: ReplayGuard, key: str, method: str, headers: dict[str, str], now: int = NOW) -> str:
    try:
        g.check(key, method, headers, now)
    except TokMeshError as exc:
        return exc.code
    return "OK"


@pytest.mark.parametrize(
    ("offset", "code"),
    [
        (-30_000, "OK"),
        (30_000, "OK"),
        (-30_001, "TM-AUTH-4014"),
        (30_001, "TM-AUTH-4014"),
        (-29_000, "OK"),
        (-31_000, "TM-AUTH-4014"),
    ],
)
def test_timestamp_window_edges(offset: int, code: str) -> None:
    assert code_of(guard(), K1, "POST", h(NOW + offset, f"n{offset}")) == code


@pytest.mark.parametrize("ts", ["", "abc", "1.5", "1e12", "0x10", "12 34"])
def test_non_integer_timestamp(ts: str) -> None:
    assert code_of(guard(), K1, "POST", h(ts)) == "TM-AUTH-4014"


def test_r2_optional_unless_required() -> None:
    assert code_of(guard(), K1, "POST", {}) == "OK"
    assert code_of(guard(required=True), K1, "POST", {}) == "TM-AUTH-4014"
    # Either header alone triggers the check.
    assert code_of(guard(), K1, "POST", h(ts=None)) == "TM-AUTH-4014"
    assert code_of(guard(), K1, "POST", h(nonce=None)) == "TM-ARG-1001"


def test_get_needs_neither_header() -> None:
    g = guard(required=True)
    assert code_of(g, K1, "GET", {}) == "OK"
    assert code_of(g, K1, "GET", h(ts="garbage")) == "OK"


@pytest.mark.parametrize("nonce", ["", " ", "x" * 257])
def test_bad_nonce_is_arg_1001(nonce: str) -> None:
    assert code_of(guard(), K1, "POST", h(nonce=nonce)) == "TM-ARG-1001"


def test_nonce_256_chars_accepted() -> None:
    assert code_of(guard(), K1, "POST", h(nonce="x" * 256)) == "OK"


def test_timestamp_checked_before_nonce() -> None:
    g = guard()
    assert code_of(g, K1, "POST", h(NOW - 40_000, "")) == "TM-AUTH-4014"
    # A rejected timestamp does not consume the nonce.
    assert code_of(g, K1, "POST", h(NOW, "fresh")) == "OK"


def test_nonce_reuse_per_key_and_ttl() -> None:
    g = guard()
    assert code_of(g, K1, "POST", h(NOW, "abc")) == "OK"
    assert code_of(g, K1, "POST", h(NOW + 1, "abc"), NOW + 1) == "TM-AUTH-4015"
    assert code_of(g, K2, "POST", h(NOW + 1, "abc"), NOW + 1) == "OK"
    later = NOW + 60_000
    assert code_of(g, K1, "POST", h(later, "abc"), later) == "OK"


def test_nonce_store_lru_eviction_and_purge() -> None:
    store = NonceStore(capacity=3, ttl_ms=1000)
    for n in "abcd":
        assert store.check_and_insert(K1, n, NOW)
    assert len(store) == 3
    assert store.check_and_insert(K1, "a", NOW)  # evicted -> fresh again
    assert not store.check_and_insert(K1, "d", NOW)
    assert store.check_and_insert(K1, "z", NOW + 1000)  # all earlier entries expired
    assert len(store) == 1
