"""Sans-IO codec tests: parsing, limits, inline commands, reply encoding, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokmesh.resp.codec import (
    NIL,
    OK,
    PONG,
    ProtocolError,
    ProtocolLimitError,
    RespParser,
    encode_array,
    encode_bulk,
    encode_error,
    encode_integer,
    encode_simple,
    parse_multibulk,
    split_inline,
)
from tokmesh.resp.limits import RespLimits

LIMIT_REPLY = b"-ERR protocol limit exceeded\r\n"


def mb(*args: bytes) -> bytes:
    """Canonical multibulk encoding of a command."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


def feed_all(data: bytes, limits: RespLimits | None = None, cuts: list[int] | None = None):
    p = RespParser(limits)
    out: list[list[bytes]] = []
    prev = 0
    for c in [*sorted(cuts or []), len(data)]:
        out += p.feed(data[prev:c])
        prev = c
        if p.error is not None:
            break
    return out, (p.error.reply if p.error else None), p


# -- parsing -----------------------------------------------------------------------------------


def test_multibulk_and_pipeline_in_order() -> None:
    data = mb(b"PING") + mb(b"GET", b"k") + mb(b"SET", b"k", b"v", b"EX", b"10")
    out, err, p = feed_all(data)
    assert out == [[b"PING"], [b"GET", b"k"], [b"SET", b"k", b"v", b"EX", b"10"]]
    assert err is None and not p.has_partial


def test_binary_safe_bulk_with_crlf_inside() -> None:
    out, err, _ = feed_all(mb(b"SET", b"a\r\nb\x00c"))
    assert out == [[b"SET", b"a\r\nb\x00c"]] and err is None


def test_partial_command_is_buffered_until_complete() -> None:
    p = RespParser()
    data = mb(b"GET", b"tmss-x")
    assert p.feed(data[:7]) == []
    assert p.has_partial
    assert p.feed(data[7:]) == [[b"GET", b"tmss-x"]]
    assert not p.has_partial


def test_inline_commands_and_mixing_with_multibulk() -> None:
    data = b"PING\r\n" + mb(b"PING") + b"GET  a\n" + mb(b"X")
    out, err, _ = feed_all(data)
    assert out == [[b"PING"], [b"PING"], [b"GET", b"a"], [b"X"]] and err is None


def test_inline_quoting_like_redis() -> None:
    assert split_inline(b'SET k "{\\"a\\": 1}"') == [b"SET", b"k", b'{"a": 1}']
    assert split_inline(b"SET k '{\"a\": 1}'") == [b"SET", b"k", b'{"a": 1}']
    assert split_inline(b'"\\x41\\n"') == [b"A\n"]
    assert split_inline(b"a\x0bb c") == [b"a\x0bb", b"c"]
    assert split_inline(b'"unterminated') is None
    assert split_inline(b'"a"b') is None
    assert split_inline(b"") == []


def test_unbalanced_quotes_is_a_protocol_error() -> None:
    _, err, _ = feed_all(b'SET k "abc\r\n')
    assert err == b"-ERR protocol error: unbalanced quotes in request\r\n"


@pytest.mark.parametrize("data", [b"*0\r\n", b"*-1\r\n", b"\r\n", b"   \r\n"])
def test_empty_commands_are_reported_not_fatal(data: bytes) -> None:
    out, err, _ = feed_all(data + mb(b"PING"))
    assert out == [[], [b"PING"]] and err is None


def test_null_and_simple_string_arguments_are_tolerated() -> None:
    data = b"*3\r\n$3\r\nSET\r\n+k\r\n$-1\r\n"
    out, err, _ = feed_all(data)
    assert out == [[b"SET", b"k", b""]] and err is None


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"*x\r\n", "invalid multibulk length"),
        (b"*01\r\n", "invalid multibulk length"),
        (b"*-2\r\n", "invalid multibulk length"),
        (b"*1\r\n$x\r\n", "invalid bulk length"),
        (b"*1\r\n$-2\r\n", "invalid bulk length"),
        (b"*1\r\n:1\r\n", "expected '$', got ':'"),
        (b"*1\r\n*1\r\n$1\r\na\r\n", "expected '$', got '*'"),
        (b"*2\r\n$3\r\nGET\r\n-ERR x\r\n", "expected '$', got '-'"),
        (b"*1\r\n" + b"1" * 40, "expected '$', got '1'"),
        (b"*1\r\n$" + b"1" * 40, "invalid bulk length"),
    ],
)
def test_framing_errors(data: bytes, detail: str) -> None:
    out, err, _ = feed_all(mb(b"PING") + data)
    assert out == [[b"PING"]]  # commands before the fault are still answered
    assert err == b"-ERR protocol error: " + detail.encode() + b"\r\n"


def test_error_is_sticky() -> None:
    p = RespParser()
    p.feed(b"*x\r\n")
    assert p.error is not None
    with pytest.raises(ProtocolError):
        p.feed(mb(b"PING"))


def test_limits_of_spec() -> None:
    # 03 §5.1: ≤ 1024 elements, bulk ≤ 512 KiB, inline ≤ 4 KiB.
    ok = [b"X"] * 1024
    assert feed_all(mb(*ok))[0] == [ok]
    assert feed_all(mb(*([b"X"] * 1025)))[1] == LIMIT_REPLY
    assert feed_all(mb(b"SET", b"v" * 512 * 1024))[0] == [[b"SET", b"v" * 512 * 1024]]
    assert feed_all(mb(b"SET", b"v" * (512 * 1024 + 1)))[1] == LIMIT_REPLY
    assert feed_all(b"A" * 4096 + b"\r\n")[0] == [[b"A" * 4096]]
    assert feed_all(b"A" * 4097 + b"\r\n")[1] == LIMIT_REPLY


def test_limits_are_enforced_before_the_payload_arrives() -> None:
    # The header alone is enough: nothing of the 2000 elements / 1 MiB is buffered.
    for head in (b"*2000\r\n", b"*1\r\n$1048576\r\n", b"*2\r\n$3\r\nSET\r\n+" + b"v" * 600_000):
        p = RespParser()
        assert p.feed(head) == []
        assert p.error is not None and p.error.reply == LIMIT_REPLY
    p = RespParser()
    p.feed(b"A" * 5000)  # an inline line that never ends
    assert isinstance(p.error, ProtocolLimitError)


def test_command_byte_guard() -> None:
    limits = RespLimits(max_command_bytes=1000)
    p = RespParser(limits)
    p.feed(b"*10\r\n")
    for _ in range(5):
        if p.error is None:
            p.feed(b"$300\r\n" + b"x" * 302)
    assert p.error is not None and p.error.reply == LIMIT_REPLY


def test_python_parser_reports_progress_needs() -> None:
    limits = RespLimits()
    assert parse_multibulk(b"*2\r\n$3\r\nGET\r\n$5\r\nab", 0, limits) == 24
    assert parse_multibulk(b"*1\r\n$1\r\na\r\n", 0, limits) == ([b"a"], 11)


# -- encoding ----------------------------------------------------------------------------------


def test_encoders() -> None:
    assert OK == b"+OK\r\n" and PONG == b"+PONG\r\n" and NIL == b"$-1\r\n"
    assert encode_simple("a\r\nb") == b"+a  b\r\n"
    assert encode_error("ERR bad\r\nthing") == b"-ERR bad  thing\r\n"
    assert encode_integer(0) == b":0\r\n" and encode_integer(-2) == b":-2\r\n"
    assert encode_integer(1_750_000_000_123) == b":1750000000123\r\n"
    assert encode_bulk(b"") == b"$0\r\n\r\n" and encode_bulk(None) == NIL
    assert encode_bulk("é") == b"$2\r\n\xc3\xa9\r\n"
    assert encode_array([b"0", [b"a", b"bc"]]) == b"*2\r\n$1\r\n0\r\n*2\r\n$1\r\na\r\n$2\r\nbc\r\n"
    assert encode_array([1, None, []]) == b"*3\r\n:1\r\n$-1\r\n*0\r\n"
    assert encode_array(None) == b"*-1\r\n"


def test_encoded_commands_round_trip_through_the_parser() -> None:
    wire = encode_array([b"SET", b"k", b"v"])
    assert feed_all(wire)[0] == [[b"SET", b"k", b"v"]]


# -- fuzzing -----------------------------------------------------------------------------------

SMALL = RespLimits(max_elements=8, max_bulk=16, max_inline=24, max_command_bytes=200)

PIECES = [
    mb(b"PING"),
    mb(b"GET", b"hello"),
    b"PING\r\n",
    b"GET a\n",
    b"*0\r\n",
    b"*-1\r\n",
    b"*2\r\n$3\r\nSET\r\n$-1\r\n",
    b"*1\r\n+OK\r\n",
    b"*1\r\n:1\r\n",
    b"*x\r\n",
    b"*3\r\n",
    b"$3\r\n",
    b"abc",
    b"\r\n",
    b"\n",
    b"'q",
    b'"a b"',
    b"*1\r\n=8\r\ntxt:abcd\r\n",
    b"*1\r\n(12\r\n",
    b"*1\r\n_\r\n",
    b"*1\r\n#t\r\n",
    b"*1\r\n$10\r\n0123456789\r\n",
    b"*5\r\n",
    b"$20\r\n",
    b"*1025\r\n",
    b"$-2\r\n",
    b"*1\r\n*1\r\n$1\r\na\r\n",
    b"-ERR x\r\n",
    b"+PONG\r\n",
    b"\x00\xff",
    b"*2\r\n$1\r\na\r\n",
    b"*1\r\n$3\r\nabcXY",
    b"*01\r\n",
    b"*1\r\n+a\rb\r\n",
]


def reference(data: bytes, limits: RespLimits):
    """The same grammar parsed by the Python parser alone, in one piece."""
    out: list[list[bytes]] = []
    pos = 0
    try:
        while pos < len(data):
            if data[pos] == 42:
                r = parse_multibulk(data, pos, limits)
                if isinstance(r, int):
                    if len(data) - pos > limits.max_command_bytes:
                        raise ProtocolLimitError()
                    return out, None
                out.append(r[0])
                pos = r[1]
            else:
                nl = data.find(b"\n", pos)
                if nl < 0:
                    if len(data) - pos > limits.max_inline + 1:
                        raise ProtocolLimitError()
                    return out, None
                stop = nl - 1 if nl > pos and data[nl - 1] == 13 else nl
                if stop - pos > limits.max_inline:
                    raise ProtocolLimitError()
                args = split_inline(data[pos:stop])
                if args is None:
                    raise ProtocolError("unbalanced quotes in request")
                out.append(args)
                pos = nl + 1
        return out, None
    except ProtocolError as exc:
        return out, exc.reply


stream = st.lists(st.sampled_from(PIECES), min_size=1, max_size=8).map(b"".join)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=stream, cut_seeds=st.lists(st.integers(0, 10_000), max_size=6), noise=st.binary())
def test_fuzz_split_independent_and_equal_to_reference(
    data: bytes, cut_seeds: list[int], noise: bytes
) -> None:
    data = data + noise[:8]
    cuts = [c % (len(data) + 1) for c in cut_seeds]
    expected = reference(data, SMALL)
    out, err, _ = feed_all(data, SMALL, cuts)
    assert (out, err) == expected


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), cut_seeds=st.lists(st.integers(0, 10_000), max_size=5))
def test_fuzz_random_bytes_never_raise_anything_else(data: bytes, cut_seeds: list[int]) -> None:
    cuts = [c % (len(data) + 1) for c in cut_seeds]
    out, err, _p = feed_all(data, SMALL, cuts)
    assert all(isinstance(a, bytes) for cmd in out for a in cmd)
    assert (out, err) == reference(data, SMALL)
    if err is not None:
        assert err.startswith(b"-ERR protocol ")


@settings(max_examples=60, deadline=None)
@given(
    commands=st.lists(
        st.lists(st.binary(max_size=40), min_size=1, max_size=5), min_size=1, max_size=10
    )
)
def test_truncated_frames_at_every_split_point(commands: list[list[bytes]]) -> None:
    data = b"".join(mb(*c) for c in commands)
    for cut in range(len(data) + 1):
        p = RespParser()
        first = p.feed(data[:cut])
        assert p.error is None
        assert p.has_partial == (cut not in _boundaries(commands))
        assert first + p.feed(data[cut:]) == commands


def _boundaries(commands: list[list[bytes]]) -> set[int]:
    out, pos = {0}, 0
    for c in commands:
        pos += len(mb(*c))
        out.add(pos)
    return out


def test_reads_of_identical_copies_parse_the_same_through_the_frame_cache() -> None:
    p = RespParser()
    v = mb(b"TM.VALIDATE", b"tmtk_" + b"A" * 43)
    first = p.feed(v * 16)
    assert first == [[b"TM.VALIDATE", b"tmtk_" + b"A" * 43]] * 16
    again = p.feed(v * 16)  # answered from the remembered frame
    assert again == first and not p.has_partial
    assert p.feed(v * 3) == first[:3]
    # Anything else goes through the parser as usual, including a copy plus a tail.
    assert p.feed(v + mb(b"PING")) == [first[0], [b"PING"]]
    assert p.feed(v + v[:5]) == [first[0]] and p.has_partial
    assert p.feed(v[5:]) == [first[0]]
    # A non-canonical spelling of the same command is never cached as the frame.
    q = RespParser()
    odd = b"*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n"
    assert q.feed(odd * 4) == [[b"PING", b"hi"]] * 4
    assert q.feed(b"PING hi\r\n" * 2) == [[b"PING", b"hi"]] * 2
