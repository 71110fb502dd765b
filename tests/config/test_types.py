"""Value parsers of spec 05 §2.6: duration, size, rate, addr, env text."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokmesh.config.types import (
    ConfigValueError,
    format_duration,
    format_rate,
    format_size,
    parse_addr,
    parse_bool_text,
    parse_duration,
    parse_float_text,
    parse_int_text,
    parse_list_text,
    parse_rate,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("100ms", 0.1),
        ("1s", 1.0),
        ("30s", 30.0),
        ("1m", 60.0),
        ("2h", 7200.0),
        ("720h", 2_592_000.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("-1.5h", -5400.0),
        ("+5s", 5.0),
        ("1.s", 1.0),
        (".5s", 0.5),
        ("250us", 0.00025),
        ("250\u00b5s", 0.00025),
        ("250\u03bcs", 0.00025),
        ("10ns", 1e-8),
        ("1h2m3s4ms", 3723.004),
    ],
)
def test_duration_go_grammar(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "7200", "1", "s", "1x", "1d", ".s", "1..5s", "-", "1h 30m"])
def test_duration_rejects_everything_else_with_1001(text: str) -> None:
    with pytest.raises(ConfigValueError) as info:
        parse_duration(text)
    assert info.value.code.code == "TM-CFG-1001"
    assert text not in str(info.value) or text == ""


def test_duration_bare_number_says_unit_missing() -> None:
    with pytest.raises(ConfigValueError, match="unit"):
        parse_duration("7200")


@given(st.integers(min_value=0, max_value=10**15))
@settings(max_examples=100, deadline=None)
def test_duration_format_round_trip(ns: int) -> None:
    seconds = ns / 1e9
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-9)


def test_duration_format_examples() -> None:
    assert format_duration(7200.0) == "2h"
    assert format_duration(0.1) == "100ms"
    assert format_duration(5400.0) == "1h30m"
    assert format_duration(0.0) == "0s"


@pytest.mark.parametrize(
    ("value", "nbytes"),
    [
        ("100MB", 100 * 1024**2),
        ("1mb", 1024**2),
        ("4KB", 4096),
        ("1.5GB", int(1.5 * 1024**3)),
        ("512", 512),
        ("512B", 512),
        ("64 MB", 64 * 1024**2),
        (2048, 2048),
    ],
)
def test_size_is_1024_based(value: str | int, nbytes: int) -> None:
    assert parse_size(value) == nbytes


@pytest.mark.parametrize("value", ["", "MB", "1TB", "-1MB", "ten", "1 M B", True, -5, 1.5])
def test_size_rejects(value: object) -> None:
    with pytest.raises(ConfigValueError) as info:
        parse_size(value)  # type: ignore[arg-type]
    assert info.value.code.code == "TM-CFG-1001"


@given(st.integers(min_value=0, max_value=2**40))
@settings(max_examples=100, deadline=None)
def test_size_format_round_trip(nbytes: int) -> None:
    assert parse_size(format_size(nbytes)) == nbytes


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("20Mbps", 20_000_000),
        ("1Kbps", 1000),
        ("10Gbps", 10_000_000_000),
        ("1KBps", 8 * 1024),
        ("2MBps", 2 * 8 * 1024**2),
        ("1.5Mbps", 1_500_000),
    ],
)
def test_rate_units(text: str, bits: int) -> None:
    assert parse_rate(text) == bits


@pytest.mark.parametrize("text", ["100MB", "", "20", "20Mb", "20mbit", "fast"])
def test_rate_requires_a_rate_unit(text: str) -> None:
    with pytest.raises(ConfigValueError) as info:
        parse_rate(text)
    assert info.value.code.code == "TM-CFG-1001"


@given(st.integers(min_value=1, max_value=10**10))
@settings(max_examples=100, deadline=None)
def test_rate_format_round_trip(bits: int) -> None:
    assert parse_rate(format_rate(bits)) == pytest.approx(bits, abs=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5080", ("127.0.0.1", 5080)),
        ("0.0.0.0:5080", ("0.0.0.0", 5080)),
        ("[::]:5443", ("::", 5443)),
        ("[::1]:6380", ("::1", 6380)),
        (":5080", ("", 5080)),
        ("node-1.example:5343", ("node-1.example", 5343)),
        ("host:1", ("host", 1)),
        ("host:65535", ("host", 65535)),
    ],
)
def test_addr_parses(text: str, expected: tuple[str, int]) -> None:
    assert parse_addr(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1:99999", "127.0.0.1:0", "[::1]:70000"])
def test_addr_port_out_of_range_is_1002(text: str) -> None:
    with pytest.raises(ConfigValueError) as info:
        parse_addr(text)
    assert info.value.code.code == "TM-CFG-1002"
    assert info.value.problem == "port number out of range"


@pytest.mark.parametrize(
    "text", ["127.0.0.1", "::1:80", "host:http", "[127.0.0.1]:80", "[::1]80", ""]
)
def test_addr_malformed_is_1001(text: str) -> None:
    with pytest.raises(ConfigValueError) as info:
        parse_addr(text)
    assert info.value.code.code == "TM-CFG-1001"


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("TRUE", True), ("1", True), ("false", False), ("0", False)]
)
def test_bool_text(text: str, value: bool) -> None:
    assert parse_bool_text(text) is value


@pytest.mark.parametrize("text", ["maybe", "yes", "on", "", "2"])
def test_bool_text_rejects(text: str) -> None:
    with pytest.raises(ConfigValueError):
        parse_bool_text(text)


def test_int_float_list_text() -> None:
    assert parse_int_text("42") == 42
    assert parse_int_text("-7") == -7
    with pytest.raises(ConfigValueError):
        parse_int_text("4.2")
    with pytest.raises(ConfigValueError):
        parse_int_text("0x10")
    assert parse_float_text("0.5") == 0.5
    assert parse_float_text("1e-2") == 0.01
    with pytest.raises(ConfigValueError):
        parse_float_text("nan")
    assert parse_list_text("a:5343, b:5343") == ["a:5343", "b:5343"]
    assert parse_list_text("") == []
    assert parse_list_text(" , x ,, ") == ["x"]


@pytest.mark.parametrize(
    ("parse", "text"),
    [(parse_size, "9" * 400 + "GB"), (parse_size, "9" * 400), (parse_rate, "9" * 400 + "Mbps")],
)
def test_numbers_too_long_for_a_float_are_out_of_range(
    parse: Callable[[str], int], text: str
) -> None:
    """Hundreds of digits are an out-of-range value (1002), not an OverflowError."""
    with pytest.raises(ConfigValueError) as info:
        parse(text)
    assert info.value.code.code == "TM-CFG-1002"
