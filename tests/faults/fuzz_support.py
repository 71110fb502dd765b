"""Shared pieces of the fuzz tests: the Hypothesis settings and a few byte-level helpers.

Every fuzz test runs a small, fixed number of examples by default, so the whole fuzz set
stays within about a minute on a shared CI machine. Setting ``TOKMESH_FUZZ_EXAMPLES`` to
a number makes every fuzz test run that many examples instead, for a long hunt::

    TOKMESH_FUZZ_EXAMPLES=100000 python -m pytest tests/faults -k fuzz

Failing examples are saved in Hypothesis' example database (``.hypothesis/``) and tried
first on the next run, so a failure found in a long hunt is replayed by a short run on
the same machine; keep it for good as an ``@example`` next to the test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES_ENV = "TOKMESH_FUZZ_EXAMPLES"
PROFILE = "tokmesh-fuzz"


def _examples_from_env() -> int | None:
    raw = os.environ.get(FUZZ_EXAMPLES_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{FUZZ_EXAMPLES_ENV} must be a positive integer, got {raw!r}")
    return int(raw)


#: Examples per test asked for by the environment (``None``: the CI budget of each test).
LONG_EXAMPLES = _examples_from_env()

# No deadline: examples that write files or feed a parser one byte at a time vary a lot
# in duration on a loaded machine, and a slow example is not a bug here.
settings.register_profile(
    PROFILE,
    deadline=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)


def fuzz_settings(ci_examples: int) -> settings:
    """The settings of one fuzz test: ``ci_examples`` examples, or as many as
    ``TOKMESH_FUZZ_EXAMPLES`` asks for."""
    return settings(settings.get_profile(PROFILE), max_examples=LONG_EXAMPLES or ci_examples)


def pieces(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    """``data`` split at the offsets in ``cuts`` (taken modulo ``len(data) + 1``)."""
    prev = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}):
        yield data[prev:cut]
        prev = cut
    yield data[prev:]


def every_split(data: bytes) -> Iterator[list[bytes]]:
    """``data`` as two reads cut at every offset, then as one read per byte."""
    for cut in range(len(data) + 1):
        yield [data[:cut], data[cut:]]
    yield [data[i : i + 1] for i in range(len(data))]


#: Bytes that mean something to a text protocol; edits favour them over random ones.
SPECIAL_BYTES = b"\r\n\x00 \t*$+-:=(_#0123456789\"'\\%?/;,{}[]"

EDIT_KINDS = ("flip", "special", "insert", "delete", "repeat", "truncate")

Edit = tuple[str, int, int, bytes]
"""One change to a byte string: ``(kind, at, size, extra)``. ``at`` is taken modulo the
length (plus one), ``size`` is the XOR mask of a flip or the length of a deleted or
repeated range, ``extra`` the bytes inserted (or the first byte written by ``special``)."""

edits = st.lists(
    st.tuples(
        st.sampled_from(EDIT_KINDS),
        st.integers(0, 1 << 16),
        st.integers(1, 255),
        st.binary(min_size=1, max_size=8) | st.sampled_from([bytes((b,)) for b in SPECIAL_BYTES]),
    ),
    min_size=1,
    max_size=3,
)
"""One to three edits (what :func:`apply_edits` applies)."""


def apply_edits(data: bytes, changes: list[Edit]) -> tuple[bytes, int]:
    """``data`` with ``changes`` applied in order, and how many of its leading bytes are
    untouched (everything complete before that offset must still parse the same)."""
    intact = len(data)
    for kind, at, size, extra in changes:
        at %= len(data) + 1
        if kind == "truncate":
            data = data[:at]
        elif kind == "insert":
            data = data[:at] + extra + data[at:]
        elif at == len(data):
            data = data + extra
        elif kind == "flip":
            data = data[:at] + bytes((data[at] ^ size,)) + data[at + 1 :]
        elif kind == "special":
            data = data[:at] + extra[:1] + data[at + 1 :]
        elif kind == "delete":
            data = data[:at] + data[at + size :]
        else:  # repeat a range right after itself
            end = min(len(data), at + size)
            data = data[:end] + data[at:end] + data[end:]
            at = end
        intact = min(intact, at)
    return data, intact
