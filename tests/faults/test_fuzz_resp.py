"""Fuzzing the RESP request codec (``tokmesh.resp.codec.RespParser``).

What every example checks:

- a stream of valid commands, in any of the encodings the codec accepts (bulk, null and
  simple-string arguments, RESP3 verbatim strings and big numbers, plain and quoted
  inline commands, empty commands), gives exactly the commands it was built from, in one
  read, split into two reads at every offset, and one byte per read;
- any byte stream (random, or a valid stream damaged) gives the same commands and the
  same error however it is split into reads; the only errors are the two protocol
  errors (``-ERR protocol error: …`` and ``-ERR protocol limit exceeded``), nothing else
  ever escapes ``feed``, and every command complete before the damage still comes out;
- the limits (elements per array, bulk and simple-string length, inline line length,
  bytes per command) end the stream with the limit error, wherever the reads are cut.
"""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.faults.fuzz_support import apply_edits, edits, every_split, fuzz_settings, pieces
from tokmesh.resp.codec import RespParser
from tokmesh.resp.limits import RespLimits

pytestmark = pytest.mark.fault

LIMIT_REPLY = b"-ERR protocol limit exceeded\r\n"
PROTOCOL_ERROR = b"-ERR protocol error: "

#: Small limits, so that examples of a few hundred bytes reach every one of them.
SMALL = RespLimits(max_elements=6, max_bulk=20, max_inline=40, max_command_bytes=120)

Outcome = tuple[list[list[bytes]], bytes | None]


def run(reads: list[bytes], limits: RespLimits | None = None) -> Outcome:
    """Feed ``reads`` in order; the commands and the error reply (``None``: no error)."""
    parser = RespParser(limits)
    out: list[list[bytes]] = []
    for read in reads:
        out += parser.feed(read)
        if parser.error is not None:
            break
    error = parser.error
    if error is None:
        return out, None
    # The fault is sticky: the connection is over, whatever arrives later.
    with pytest.raises(type(error)):
        parser.feed(b"PING\r\n")
    assert error.reply == LIMIT_REPLY or error.reply.startswith(PROTOCOL_ERROR)
    assert error.reply.endswith(b"\r\n") and b"\r" not in error.reply[:-2]
    return out, error.reply


def assert_split_independent(data: bytes, limits: RespLimits | None = None) -> Outcome:
    """The outcome of ``data`` in one read, checked equal under every split."""
    whole = run([data], limits)
    for cmd in whole[0]:
        assert all(type(arg) is bytes for arg in cmd)
    for reads in every_split(data):
        assert run(reads, limits) == whole, [len(r) for r in reads]
    return whole


# -- valid command streams ---------------------------------------------------------------

_WHITESPACE = b" \t\r\n\x0b\x0c"
_PRINTABLE = frozenset(range(0x20, 0x7F))
_C_ESCAPES = {0x5C: b"\\\\", 0x22: b'\\"', 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t"}
_C_ESCAPES |= {0x07: b"\\a", 0x08: b"\\b"}


def quote_double(arg: bytes) -> bytes:
    """``arg`` as redis-cli writes it: C escapes, ``\\xHH`` for what is not printable."""
    out = [b'"']
    for byte in arg:
        if byte in _C_ESCAPES:
            out.append(_C_ESCAPES[byte])
        elif byte in _PRINTABLE:
            out.append(bytes((byte,)))
        else:
            out.append(b"\\x%02x" % byte)
    out.append(b'"')
    return b"".join(out)


def _plain_inline_ok(arg: bytes, first: bool) -> bool:
    bad = _WHITESPACE + b"\"'\x00"
    return bool(arg) and not any(b in bad for b in arg) and not (first and arg[:1] == b"*")


@st.composite
def element(draw: st.DrawFn, arg: bytes) -> bytes:
    """One array element that the codec reads back as ``arg``."""
    forms = ["bulk", "verbatim"]
    if not arg:
        forms += ["null", "resp3-null"]
    if b"\r" not in arg and b"\n" not in arg:
        forms += ["simple", "bignum"]
    form = draw(st.sampled_from(forms))
    if form == "bulk":
        return b"$%d\r\n%b\r\n" % (len(arg), arg)
    if form == "verbatim":
        return b"=%d\r\ntxt:%b\r\n" % (len(arg) + 4, arg)
    if form == "null":
        return b"$-1\r\n"
    if form == "resp3-null":
        return b"_\r\n"
    return (b"+" if form == "simple" else b"(") + arg + b"\r\n"


@st.composite
def encoded_command(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
    """``(args, wire bytes)`` of one command (``[]``: an empty command)."""
    form = draw(st.sampled_from(["array", "array", "quoted", "plain", "empty"]))
    if form == "empty":
        return [], draw(st.sampled_from([b"*0\r\n", b"*-1\r\n", b"\r\n", b"\n", b"  \t\r\n"]))
    args = draw(st.lists(st.binary(max_size=24), min_size=1, max_size=5))
    if form == "plain" and all(_plain_inline_ok(a, i == 0) for i, a in enumerate(args)):
        sep = draw(st.sampled_from([b" ", b"  ", b"\t"]))
        end = draw(st.sampled_from([b"\r\n", b"\n"]))
        return args, sep.join(args) + end
    if form in ("plain", "quoted"):
        return args, b" ".join(quote_double(a) for a in args) + b"\r\n"
    return args, b"*%d\r\n" % len(args) + b"".join(draw(element(a)) for a in args)


commands = st.lists(encoded_command(), min_size=1, max_size=6)


def wire(cmds: list[tuple[list[bytes], bytes]]) -> bytes:
    """The bytes of a list of encoded commands, back to back."""
    return b"".join(raw for _, raw in cmds)


@fuzz_settings(120)
@given(cmds=commands)
def test_valid_streams_parse_to_their_commands_however_split(
    cmds: list[tuple[list[bytes], bytes]],
) -> None:
    data = wire(cmds)
    expected = [args for args, _ in cmds]
    assert assert_split_independent(data) == (expected, None)


@fuzz_settings(60)
@given(cmds=commands, cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_valid_streams_in_many_reads_leave_nothing_buffered(
    cmds: list[tuple[list[bytes], bytes]], cuts: list[int]
) -> None:
    parser = RespParser()
    out: list[list[bytes]] = []
    for read in pieces(wire(cmds), cuts):
        out += parser.feed(read)
    assert out == [args for args, _ in cmds]
    assert parser.error is None and not parser.has_partial


# -- damaged and arbitrary bytes ---------------------------------------------------------


def _complete_before(cmds: list[tuple[list[bytes], bytes]], offset: int) -> list[list[bytes]]:
    """The commands that end at or before ``offset``."""
    done, end = [], 0
    for args, raw in cmds:
        end += len(raw)
        if end > offset:
            break
        done.append(args)
    return done


@fuzz_settings(150)
@given(cmds=commands, changes=edits)
def test_damaged_streams_end_in_a_protocol_error_or_parse_the_same_however_split(
    cmds: list[tuple[list[bytes], bytes]], changes: list[tuple[str, int, int, bytes]]
) -> None:
    damaged, intact = apply_edits(wire(cmds), changes)
    out, _error = assert_split_independent(damaged)
    before = _complete_before(cmds, intact)
    assert out[: len(before)] == before


@fuzz_settings(200)
@given(data=st.binary(max_size=160))
@example(data=b"*3\r\n$1\r\na\r\n(1\r\n+\r\n")
@example(data=b"*1\r\n=3\r\nabc\r\n")
@example(data=b"*2\r\n_\r\n$0\r\n\r\n*1\r\n_x\r\n")
@example(data=b'"a\\x4" b\r\n')
@example(data=b"*9223372036854775808\r\n")
@example(data=b"*4294967295\r\n")  # hiredis raised MemoryError out of feed()
def test_arbitrary_bytes_only_ever_give_protocol_errors(data: bytes) -> None:
    assert_split_independent(data)
    assert_split_independent(data, SMALL)


@fuzz_settings(150)
@given(
    data=st.lists(
        st.sampled_from(
            [
                b"*",
                b"$",
                b"+",
                b"=",
                b"(",
                b"_",
                b":",
                b"-",
                b"1",
                b"0",
                b"4",
                b"\r\n",
                b"\n",
                b"\r",
                b" ",
                b"a",
                b'"',
                b"'",
                b"\\x",
                b"txt:",
                b"-1",
                b"99",
            ]
        ),
        max_size=40,
    ).map(b"".join)
)
def test_protocol_shaped_noise_only_ever_gives_protocol_errors(data: bytes) -> None:
    assert_split_independent(data)
    assert_split_independent(data, SMALL)


# -- limits ------------------------------------------------------------------------------


#: Every element within its own limit, the command as a whole too long.
TOO_LONG = b"*%d\r\n" % SMALL.max_elements + b"$20\r\n%b\r\n" % (b"b" * 20) * SMALL.max_elements


@st.composite
def over_limit(draw: st.DrawFn) -> bytes:
    """The start of a command that breaks one of :data:`SMALL`'s limits."""
    kind = draw(st.sampled_from(["elements", "bulk", "simple", "verbatim", "inline", "command"]))
    if kind == "elements":
        n = draw(st.integers(SMALL.max_elements + 1, 2**63 - 1))
        return b"*%d\r\n" % n
    head = b"*%d\r\n" % draw(st.integers(1, SMALL.max_elements))
    if kind == "bulk":
        return head + b"$%d\r\n" % draw(st.integers(SMALL.max_bulk + 1, 2**63 - 1))
    if kind == "verbatim":
        return head + b"=%d\r\ntxt:" % draw(st.integers(SMALL.max_bulk + 5, 2**63 - 1))
    if kind == "simple":
        size = draw(st.integers(SMALL.max_bulk + 1, 3 * SMALL.max_bulk))
        return head + b"+" + b"s" * size + b"\r\n"
    if kind == "inline":
        return b"x" * draw(st.integers(SMALL.max_inline + 1, 3 * SMALL.max_inline)) + b"\r\n"
    return TOO_LONG


@fuzz_settings(120)
@given(
    before=st.lists(encoded_command(), max_size=3).filter(
        lambda cs: (
            all(len(a) <= SMALL.max_bulk for args, _ in cs for a in args)
            and all(len(args) <= SMALL.max_elements for args, _ in cs)
            and all(len(raw) <= SMALL.max_inline for args, raw in cs if raw[:1] != b"*")
            and all(len(raw) <= SMALL.max_command_bytes for _, raw in cs)
        )
    ),
    bad=over_limit(),
    tail=st.binary(max_size=20),
)
# Accepted in one read, refused when it arrived in two.
@example(before=[], bad=TOO_LONG, tail=b"")
def test_limits_end_the_stream_wherever_the_reads_are_cut(
    before: list[tuple[list[bytes], bytes]], bad: bytes, tail: bytes
) -> None:
    data = wire(before) + bad + tail
    assert assert_split_independent(data, SMALL) == ([args for args, _ in before], LIMIT_REPLY)


#: Starts of an array whose next element is the aggregate that follows.
NESTING = (b"*1\r\n", b"*2\r\n$1\r\na\r\n")


@fuzz_settings(60)
@given(
    kind=st.sampled_from([b"*", b"%", b"~", b">", b"|"]),
    count=st.integers(10 ** len(str(RespLimits().max_elements)), 2**63 - 1),
    before=st.sampled_from([b"", *NESTING, b"PING\r\n*1\r\n$1\r\na\r\n"]),
)
@example(kind=b"*", count=3_000_000_000, before=b"")
@example(kind=b">", count=1_000_000_000, before=b"*1\r\n$1\r\na\r\n")
def test_a_huge_count_costs_no_memory_however_split(kind: bytes, count: int, before: bytes) -> None:
    # hiredis made room for the elements on reading the header: 14 bytes of "*3000000000"
    # cost 24 GB of address space and seconds of CPU to free.
    data = before + kind + b"%d\r\n" % count
    tracemalloc.start()
    try:
        whole = run([data])
        for reads in every_split(data):
            assert run(reads) == whole
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 1 << 20, (reads, peak)
    finally:
        tracemalloc.stop()
    if kind == b"*" or before in NESTING:
        assert whole[1] is not None  # an array too long, or anything nested in an array
