"""The cluster frame codec alone: encoding, decoding under any split, limits, fuzzing."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.faults.fuzz_support import apply_edits, edits, every_split, fuzz_settings, pieces
from tokmesh.cluster.frames import (
    FLAG_RAW,
    HEADER_SIZE,
    MAGIC,
    Decoder,
    ErrorReply,
    Frame,
    FrameError,
    FrameTooLarge,
    Request,
    Response,
    encode_error,
    encode_request,
    encode_response,
)

HEADER = struct.Struct(">2sBBBBIII")


def decode_all(reads: list[bytes], max_frame_size: int = 1 << 20) -> list[Frame]:
    """Every frame of ``reads`` fed in order; FrameError escapes."""
    decoder = Decoder(max_frame_size)
    out: list[Frame] = []
    for read in reads:
        decoder.feed(read)
        out += decoder.frames()
    return out


def test_round_trip_of_each_kind() -> None:
    stream = (
        encode_request(7, "session.get", 250, {"id": "tmss-1", "n": [1, 2]})
        + encode_response(7, {"ok": True})
        + encode_request(8, "forward/raw", 1, b"\x00\xffraw")
        + encode_response(8, b"")
        + encode_error(9, "TM-SESS-4040", "session not found", {"id": "x"})
        + encode_error(0, "TM-SYS-4000", "protocol error")
    )
    frames = decode_all([stream])
    assert frames == [
        Request(7, "session.get", 250, b'{"id":"tmss-1","n":[1,2]}'),
        Response(7, b'{"ok":true}'),
        Request(8, "forward/raw", 1, b"\x00\xffraw", FLAG_RAW),
        Response(8, b"", FLAG_RAW),
        ErrorReply(9, "TM-SESS-4040", "session not found", {"id": "x"}),
        ErrorReply(0, "TM-SYS-4000", "protocol error", None),
    ]
    assert isinstance(frames[0], Request) and frames[0].load() == {"id": "tmss-1", "n": [1, 2]}
    assert isinstance(frames[2], Request) and frames[2].load() == b"\x00\xffraw"
    assert isinstance(frames[1], Response) and frames[1].load() == {"ok": True}


def test_every_split_gives_the_same_frames() -> None:
    stream = encode_request(1, "ping", 500, None) + encode_response(1, {"node_id": "tmnd-a"})
    whole = decode_all([stream])
    assert len(whole) == 2
    for reads in every_split(stream):
        assert decode_all(reads) == whole


def test_oversized_frame_is_refused_from_its_header() -> None:
    decoder = Decoder(max_frame_size=64)
    # Only the header of a frame declaring a 1 MiB body: refused before the body arrives.
    decoder.feed(HEADER.pack(MAGIC, 1, 2, 0, 0, 1, 0, 1 << 20))
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()
    # The failure is sticky: the connection is over.
    with pytest.raises(FrameTooLarge):
        decoder.feed(encode_response(1, None))
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_a_frame_at_the_limit_passes() -> None:
    frame = encode_response(1, b"x" * 46)
    assert len(frame) == 64
    assert decode_all([frame], max_frame_size=64) == [Response(1, b"x" * 46, FLAG_RAW)]
    with pytest.raises(FrameTooLarge):
        decode_all([frame], max_frame_size=63)


@pytest.mark.parametrize(
    ("header", "method"),
    [
        pytest.param(HEADER.pack(b"HT", 1, 1, 0, 4, 1, 5, 0), b"ping", id="bad-magic"),
        pytest.param(HEADER.pack(MAGIC, 2, 1, 0, 4, 1, 5, 0), b"ping", id="version"),
        pytest.param(HEADER.pack(MAGIC, 1, 4, 0, 4, 1, 5, 0), b"ping", id="kind"),
        pytest.param(HEADER.pack(MAGIC, 1, 1, 0x80, 4, 1, 5, 0), b"ping", id="flags"),
        pytest.param(HEADER.pack(MAGIC, 1, 1, 0, 0, 1, 5, 0), b"", id="no-method"),
        pytest.param(HEADER.pack(MAGIC, 1, 1, 0, 4, 0, 5, 0), b"ping", id="request-id-0"),
        pytest.param(HEADER.pack(MAGIC, 1, 1, 0, 4, 1, 0, 0), b"ping", id="no-deadline"),
        pytest.param(HEADER.pack(MAGIC, 1, 1, 0, 4, 1, 5, 0), b"pi g", id="method-chars"),
        pytest.param(HEADER.pack(MAGIC, 1, 2, 0, 0, 0, 0, 0), b"", id="response-id-0"),
        pytest.param(HEADER.pack(MAGIC, 1, 2, 0, 0, 1, 9, 0), b"", id="response-deadline"),
        pytest.param(HEADER.pack(MAGIC, 1, 3, 1, 0, 1, 0, 0), b"", id="error-raw"),
        pytest.param(HEADER.pack(MAGIC, 1, 3, 0, 0, 1, 0, 2) + b"[]", b"", id="error-body"),
        pytest.param(HEADER.pack(MAGIC, 1, 3, 0, 0, 1, 0, 2) + b"{x", b"", id="error-json"),
    ],
)
def test_malformed_frames_raise_frame_error(header: bytes, method: bytes) -> None:
    with pytest.raises(FrameError):
        decode_all([header + method])


def test_a_bad_magic_is_refused_from_its_first_byte() -> None:
    decoder = Decoder()
    decoder.feed(b"G")
    with pytest.raises(FrameError, match="magic"):
        decoder.next_frame()


def test_a_request_body_that_is_not_json_fails_only_when_loaded() -> None:
    frame = HEADER.pack(MAGIC, 1, 1, 0, 4, 3, 10, 1) + b"ping{"
    (request,) = decode_all([frame])
    assert isinstance(request, Request) and request.method == "ping"
    with pytest.raises(FrameError, match="JSON"):
        request.load()


def test_encoders_refuse_values_outside_the_wire_ranges() -> None:
    with pytest.raises(ValueError):
        encode_request(0, "ping", 1, None)
    with pytest.raises(ValueError):
        encode_request(1, "ping", 0, None)
    with pytest.raises(ValueError):
        encode_request(1, "bad method", 1, None)
    with pytest.raises(ValueError):
        encode_request(1, "x" * 256, 1, None)
    with pytest.raises(ValueError):
        encode_response(0, None)
    with pytest.raises(TypeError):
        encode_response(1, {1j})


def test_long_streams_compact_the_buffer() -> None:
    decoder = Decoder()
    frame = encode_response(3, b"y" * 1000)
    for _ in range(500):
        decoder.feed(frame)
        assert decoder.next_frame() == Response(3, b"y" * 1000, FLAG_RAW)
    assert decoder.buffered == 0
    assert len(decoder._buf) < 70_000


# -- fuzzing --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
methods = st.from_regex(r"[A-Za-z0-9_./-]{1,40}", fullmatch=True)
ids = st.integers(1, 2**32 - 1)
frames_st = st.one_of(
    st.builds(
        lambda i, m, d, v: (encode_request(i, m, d, v), ("req", i, m, d, v)),
        ids,
        methods,
        st.integers(1, 2**32 - 1),
        json_values | st.binary(max_size=40),
    ),
    st.builds(lambda i, v: (encode_response(i, v), ("resp", i, v)), ids, json_values | st.binary()),
    st.builds(
        lambda i, c, m: (encode_error(i, c, m, None), ("err", i, c, m)),
        st.integers(0, 2**32 - 1),
        st.text(max_size=12),
        st.text(max_size=30),
    ),
)


def summary(frame: Frame) -> tuple[object, ...]:
    if isinstance(frame, Request):
        return ("req", frame.request_id, frame.method, frame.deadline_ms, frame.load())
    if isinstance(frame, Response):
        return ("resp", frame.request_id, frame.load())
    return ("err", frame.request_id, frame.code, frame.message)


@fuzz_settings(200)
@given(st.lists(frames_st, min_size=1, max_size=6), st.lists(st.integers(0, 1 << 16)))
def test_fuzz_valid_streams_round_trip_under_any_split(
    built: list[tuple[bytes, tuple[object, ...]]], cuts: list[int]
) -> None:
    stream = b"".join(data for data, _ in built)
    frames = decode_all(list(pieces(stream, cuts)))
    assert [summary(f) for f in frames] == [want for _, want in built]


def outcome(reads: list[bytes]) -> tuple[list[Frame], str | None]:
    """The frames of ``reads`` and the error that ended them; only FrameError may escape,
    and loading any body either works or raises FrameError."""
    decoder = Decoder(max_frame_size=4096)
    frames: list[Frame] = []
    for read in reads:
        try:
            decoder.feed(read)
            frames += decoder.frames()
            frames += decoder.frames()  # raises the error that ended the first batch, if any
        except FrameError as exc:
            with pytest.raises(FrameError):
                decoder.next_frame()
            return frames, str(exc)
    for frame in frames:
        if isinstance(frame, Request | Response):
            with contextlib.suppress(FrameError):
                frame.load()
    return frames, None


@fuzz_settings(300)
@given(st.binary(max_size=200), st.lists(st.integers(0, 1 << 16), max_size=4))
@example(MAGIC + b"\x01\x01\x00\x01\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00a", [])
@example(MAGIC + b"\x01\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x04null", [])
def test_fuzz_any_bytes_decode_or_raise_frame_error(data: bytes, cuts: list[int]) -> None:
    whole = outcome([data])
    assert outcome(list(pieces(data, cuts))) == whole


@fuzz_settings(300)
@given(st.lists(frames_st, min_size=1, max_size=4), edits)
def test_fuzz_damaged_streams_keep_the_frames_before_the_damage(
    built: list[tuple[bytes, tuple[object, ...]]], changes: list[tuple[str, int, int, bytes]]
) -> None:
    stream = b"".join(data for data, _ in built)
    damaged, intact = apply_edits(stream, changes)
    frames, _ = outcome([damaged])
    complete_before = 0
    offset = 0
    for data, _ in built:
        offset += len(data)
        if offset > intact:
            break
        complete_before += 1
    expected = [want for _, want in built[:complete_before]]
    assert [summary(f) for f in frames[:complete_before]] == expected
    assert HEADER_SIZE == 18
