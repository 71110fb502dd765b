"""The compiled accelerator (``tokmesh/_accel.c``) must give exactly the Python answers.

``tokmesh._accel`` answers a read's leading run of ``TM.VALIDATE token`` frames without
the parser, with its own SHA-256 (SHA-NI or portable C) and its own reading of a
session's fields. Nothing else would notice if it hashed one length wrongly, took a
frame the parser reads differently, counted an expired or revoked session as valid, or
changed what the RESP front end counts. These tests pin it down three ways: the hash
against :mod:`hashlib` under both implementations; the frame loop against hand-built
states and against a small Python reference (``Session.is_expired`` and ``hashlib``);
and the whole RESP stack, compiled and pure Python (the ``real_stack`` fixture runs
both), for replies, command and validation counters and the rate limit.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import socket
import sys
import sysconfig
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import attrs
import pytest
import redis
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.clock_reads import count_clock_reads
from tokmesh import accel
from tokmesh.actors.segmented_map import SegmentedMap
from tokmesh.domain.clock import Clock
from tokmesh.domain.ids import new_session_id
from tokmesh.domain.session import Session
from tokmesh.domain.tokens import generate_token, token_digest
from tokmesh.resp.connection import Connection
from tokmesh.services.auth import SCOPE_REDIS
from tokmesh.telemetry import metrics

from .conftest import RealStack, in_thread

try:
    from tokmesh import _accel
except ImportError:  # pragma: no cover - no compiler when the package was installed
    HAVE_ACCEL = False
else:
    HAVE_ACCEL = True
    # The fixed-offset path is only taken once configure() ran; tokmesh.accel does not
    # call it under TOKMESH_ACCEL=0, and these tests use the module either way.
    _accel.configure(Session)

needs_accel = pytest.mark.skipif(not HAVE_ACCEL, reason="tokmesh._accel is not built")

NOW = 1_700_000_000_000
RATE_LIMITED = "TM-SYS-4290 rate limit exceeded"
MAINTENANCE = "TM-ADMIN-5031 service unavailable: restore in progress"
NOAUTH = b"-NOAUTH TM-AUTH-4010 Authentication required\r\n"


# -- helpers ----------------------------------------------------------------------------------


def frame(token: bytes, name: bytes = b"TM.VALIDATE") -> bytes:
    """One RESP array ``[name, token]``."""
    return b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(name), name, len(token), token)


def resp(*args: bytes) -> bytes:
    """A RESP array of bulk strings."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def new_token() -> bytes:
    return generate_token().encode("ascii")


def session(token: bytes, sid: str, cls: type[Session] = Session, **fields: Any) -> Session:
    return cls(id=sid, user_id="u", token_hash=hashlib.sha256(token).digest(), **fields)


class SubSession(Session):
    """A subclass (with a ``__dict__``): read with getattr, not at fixed offsets."""


def namespace_session(**fields: Any) -> Any:
    """Any object with the four fields: read with getattr."""
    base = {"is_deleted": False, "expires_at": 0, "idle_timeout": 0, "last_active": 0}
    return types.SimpleNamespace(**(base | fields))


class World:
    """``by_token`` and ``sessions`` as the store keeps them, built token by token."""

    def __init__(self) -> None:
        self.by_token: SegmentedMap[bytes, str] = SegmentedMap()
        self.sessions: SegmentedMap[str, Any] = SegmentedMap()

    def add(self, token: bytes, s: Any | None = None, **fields: Any) -> bytes:
        sid = f"tmss-{len(self.by_token):026d}"
        self.by_token[hashlib.sha256(token).digest()] = sid
        self.sessions[sid] = session(token, sid, **fields) if s is None else s
        return token

    def live(self, n: int = 1) -> list[bytes]:
        return [self.add(new_token()) for _ in range(n)]

    def scan(self, data: bytes, now_ms: int = NOW) -> tuple[int, int]:
        """``validate_frames``, checking that it changed neither map."""
        by_token, sessions = dict(self.by_token.items()), dict(self.sessions.items())
        result = _accel.validate_frames(
            data, self.by_token.segments, self.sessions.segments, now_ms
        )
        assert dict(self.by_token.items()) == by_token
        assert all(self.sessions[k] is v for k, v in sessions.items())
        assert len(self.sessions) == len(sessions)
        return result


@pytest.fixture
def restore_sha_ni() -> Iterator[None]:
    original = _accel.sha_ni()
    try:
        yield
    finally:
        _accel.sha_ni(original)


# -- SHA-256 -------------------------------------------------------------------------------


@needs_accel
@pytest.mark.parametrize("use_sha_ni", [False, True], ids=["portable", "sha-ni"])
def test_sha256_equals_hashlib_at_every_length(use_sha_ni: bool, restore_sha_ni: None) -> None:
    active = _accel.sha_ni(use_sha_ni)
    if use_sha_ni and not active:
        pytest.skip("this CPU has no SHA-NI instructions (only the portable code runs)")
    assert active is use_sha_ni
    rng = random.Random(f"sha256-{use_sha_ni}")
    sizes = [*range(301), 447, 448, 511, 512, 513, 1000, 4096, 65_543, 1 << 20]
    for n in sizes:
        data = rng.randbytes(n)
        assert _accel.sha256(data) == hashlib.sha256(data).digest(), n
    for n in (55, 56, 63, 64, 65, 119, 120):  # padding boundaries, constant bytes too
        for byte in (b"\x00", b"\xff", b"a"):
            assert _accel.sha256(byte * n) == hashlib.sha256(byte * n).digest(), (n, byte)
    # Any buffer, not only bytes (the stub says bytes); and the store's token digests.
    any_sha256 = cast(Any, _accel.sha256)
    assert any_sha256(bytearray(b"abc")) == hashlib.sha256(b"abc").digest()
    assert any_sha256(memoryview(b"xabcx")[1:4]) == hashlib.sha256(b"abc").digest()
    token = generate_token()
    assert _accel.sha256(token.encode()) == token_digest(token)
    # The frame loop hashes with the same code: every token length it accepts (1..255).
    world = World()
    tokens = [world.add(rng.randbytes(n).hex().encode()[:n]) for n in range(1, 256)]
    data = b"".join(frame(t) for t in tokens)
    assert world.scan(data) == (255, len(data))


@needs_accel
def test_sha_ni_reports_and_restores_the_selection(restore_sha_ni: None) -> None:
    assert _accel.sha_ni(False) is False
    assert _accel.sha_ni() is False
    assert _accel.sha_ni(True) is _accel.sha_ni()
    with pytest.raises(TypeError):
        cast(Any, _accel.sha_ni)(True, True)


# -- the frame loop, by hand ------------------------------------------------------------------


@needs_accel
def test_a_run_of_valid_frames_is_answered_whole() -> None:
    world = World()
    tokens = world.live(5)
    names = [b"TM.VALIDATE", b"tm.validate", b"Tm.VaLiDaTe", b"TM.VALIDATE", b"tM.vALIDATe"]
    data = b"".join(frame(t, n) for t, n in zip(tokens, names, strict=True))
    assert world.scan(data) == (5, len(data))
    # The same token again and again is as valid each time.
    again = frame(tokens[0]) * 4
    assert world.scan(again) == (4, len(again))
    assert world.scan(b"") == (0, 0)


def _stoppers() -> dict[str, Callable[[World], bytes]]:
    """Each builds one frame the loop must leave to the parser (the token, if any, is
    known to ``world`` unless the case is about an unknown one)."""
    too_long = b"t" * 256

    def known(world: World, token: bytes, **fields: Any) -> bytes:
        return world.add(token, **fields)

    return {
        "unknown token": lambda w: frame(new_token()),
        "orphan index entry": lambda w: _orphan(w),
        "revoked": lambda w: frame(known(w, new_token(), is_deleted=True)),
        "expired": lambda w: frame(known(w, new_token(), expires_at=NOW - 1)),
        "idle too long": lambda w: frame(
            known(w, new_token(), idle_timeout=1000, last_active=NOW - 1001)
        ),
        "another command": lambda w: resp(b"GET", b"tmss-x"),
        "PING": lambda w: resp(b"PING"),
        "same length, other name": lambda w: frame(known(w, new_token()), b"TM.VALIDATX"),
        "TOUCH option (*3)": lambda w: resp(b"TM.VALIDATE", known(w, new_token()), b"TOUCH"),
        "inline command": lambda w: b"TM.VALIDATE " + known(w, new_token()) + b"\r\n",
        "leading zero length": lambda w: frame(known(w, new_token())).replace(b"$48", b"$048"),
        "length > 255": lambda w: frame(known(w, too_long)),
        "length 0": lambda w: frame(known(w, b"")),
        "length with a sign": lambda w: frame(known(w, new_token())).replace(b"$48", b"$+48"),
        "length too short": lambda w: frame(known(w, new_token())).replace(b"$48", b"$47"),
        "length too long": lambda w: frame(known(w, new_token())).replace(b"$48", b"$49"),
        "non-ASCII token": lambda w: frame(known(w, "tmtk_é".encode() + b"A" * 41)),
        "LF only": lambda w: frame(known(w, new_token())).replace(b"\r\n", b"\n"),
        # The 47 bytes named are a known token, but the bulk string does not end there.
        "bulk not followed by CRLF": lambda w: frame(known(w, new_token()[:47]))[:-2] + b"X\r\n",
    }


def _orphan(world: World) -> bytes:
    token = new_token()
    world.by_token[hashlib.sha256(token).digest()] = "tmss-orphan"
    return frame(token)


@needs_accel
@pytest.mark.parametrize("case", list(_stoppers()))
def test_the_loop_stops_before_a_frame_it_does_not_answer(case: str) -> None:
    world = World()
    a, b, c = world.live(3)
    bad = _stoppers()[case](world)
    head = frame(a) + frame(b)
    assert world.scan(head + bad + frame(c)) == (2, len(head))
    assert world.scan(bad + frame(c)) == (0, 0)
    if case == "orphan index entry":
        assert "tmss-orphan" in world.by_token.values()  # the Python path drops it, not C


# (expires_at, idle_timeout, last_active, now_ms, valid)
EXPIRY_CASES = [
    (NOW, 0, 0, NOW, True),  # valid at expires_at exactly
    (NOW, 0, 0, NOW + 1, False),
    (NOW + 10, 0, 0, NOW, True),
    (0, 0, 0, NOW, True),  # 0: no absolute limit
    (0, 0, 0, 2**62, True),
    (-1, 0, 0, NOW, False),
    (0, 1000, NOW - 1000, NOW, True),  # valid at last_active + idle_timeout exactly
    (0, 1000, NOW - 1001, NOW, False),
    (0, 1000, NOW + 5000, NOW, True),  # last_active ahead of the clock
    (NOW + 5, 1000, NOW, NOW + 5, True),
    (NOW + 5, 1000, NOW, NOW + 6, False),  # the absolute limit comes first
    (NOW + 5000, 1000, NOW, NOW + 1000, True),
    (NOW + 5000, 1000, NOW, NOW + 1001, False),  # the idle limit comes first
    (0, -5, NOW, NOW - 5, True),
    (0, -5, NOW, NOW - 4, False),
]


@needs_accel
@pytest.mark.parametrize("kind", ["Session", "subclass", "any object"])
@pytest.mark.parametrize(("expires_at", "idle", "last_active", "now", "valid"), EXPIRY_CASES)
def test_expiry_follows_session_is_expired(
    kind: str, expires_at: int, idle: int, last_active: int, now: int, valid: bool
) -> None:
    fields: dict[str, Any] = {
        "expires_at": expires_at,
        "idle_timeout": idle,
        "last_active": last_active,
    }
    reference = Session(id="tmss-x", user_id="u", token_hash=b"\0" * 32, **fields)
    assert reference.is_expired(now) is not valid  # the table matches the rule
    world = World()
    token = new_token()
    if kind == "Session":
        world.add(token, **fields)
    elif kind == "subclass":
        world.add(token, session(token, "tmss-sub", SubSession, **fields))
    else:
        world.add(token, namespace_session(**fields))
    data = frame(token)
    assert world.scan(data, now) == ((1, len(data)) if valid else (0, 0))
    world.sessions[world.by_token[hashlib.sha256(token).digest()]].is_deleted = True
    assert world.scan(data, now) == (0, 0)


@needs_accel
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expires_at", float(NOW + 10)),
        ("expires_at", str(NOW + 10)),
        ("expires_at", None),
        ("expires_at", True),
        ("idle_timeout", 0.0),
        ("idle_timeout", False),
        ("last_active", 1.5),  # read even when there is no idle timeout
        ("is_deleted", 0),  # only the False object means "not revoked"
        ("is_deleted", None),
        ("is_deleted", []),
    ],
)
@pytest.mark.parametrize("cls", [Session, SubSession])
def test_a_field_that_is_not_what_it_should_be_stops_the_run(
    cls: type[Session], field: str, value: object
) -> None:
    world = World()
    good = world.live(1)[0]
    odd = new_token()
    s = session(odd, "tmss-odd", cls)
    setattr(s, field, value)
    world.add(odd, s)
    head = frame(good)
    assert world.scan(head + frame(odd) + head) == (1, len(head))


@needs_accel
@pytest.mark.parametrize(
    "fields",
    [
        {"expires_at": 2**64},
        {"expires_at": -(2**64)},
        {"last_active": 2**64, "idle_timeout": 1},
        # -1 (the overflow sentinel) would make these valid: Python says expired.
        {"idle_timeout": -(2**64), "last_active": NOW + 5},
        {"idle_timeout": 2**64, "last_active": -(2**65)},
        # last_active + idle_timeout beyond int64 (wrapping would reverse the answer).
        {"last_active": -(2**63) + 5, "idle_timeout": -100},
        {"last_active": 2**63 - 10, "idle_timeout": 100},
    ],
    ids=repr,
)
def test_ints_beyond_int64_stop_the_run(fields: dict[str, int]) -> None:
    """The loop reads int64: anything beyond is left to the Python path, which never
    gets a different answer from a stop."""
    world = World()
    good = world.live(1)[0]
    token = world.add(new_token(), **fields)
    head = frame(good)
    assert world.scan(head + frame(token)) == (1, len(head))


@needs_accel
def test_a_missing_field_stops_the_run() -> None:
    world = World()
    good = world.live(1)[0]
    head = frame(good)
    for missing in ("is_deleted", "expires_at", "idle_timeout", "last_active"):
        obj = namespace_session()
        delattr(obj, missing)
        odd = world.add(new_token(), obj)
        assert world.scan(head + frame(odd)) == (1, len(head)), missing
    # An unset slot of a real Session is read the same way.
    unset = object.__new__(Session)
    unset.is_deleted = False
    odd = world.add(new_token(), unset)
    assert world.scan(head + frame(odd)) == (1, len(head))


class _MissingExpiry:
    """``expires_at`` absent; the next field is computed by Python code."""

    is_deleted = False
    last_active = 0

    @property
    def idle_timeout(self) -> int:
        return 0


@needs_accel
def test_a_missing_field_followed_by_a_python_getter_stops_the_run() -> None:
    # Once an AttributeError is set, no further field may be read: a getter in Python
    # would then fail with SystemError ("returned a result with an exception set").
    world = World()
    token = world.add(new_token(), _MissingExpiry())
    assert world.scan(frame(token)) == (0, 0)


@needs_accel
def test_every_cut_of_a_run_answers_exactly_the_whole_frames_before_it() -> None:
    world = World()
    frames = [frame(t) for t in world.live(3)]
    ends = [0]
    for f in frames:
        ends.append(ends[-1] + len(f))
    data = b"".join(frames)
    for cut in range(len(data) + 1):
        whole = max(k for k in range(4) if ends[k] <= cut)
        assert world.scan(data[:cut]) == (whole, ends[whole]), cut


@needs_accel
def test_the_loop_neither_leaks_nor_frees_references() -> None:
    def fields(k: int) -> dict[str, int]:  # ints of their own (not the shared small ones)
        return {"expires_at": NOW + 10**9 + k, "last_active": NOW + k, "idle_timeout": 10**12 + k}

    world = World()
    tokens = [
        world.add(new_token(), **fields(1)),
        world.add(new_token(), session(new_token(), "tmss-sub", SubSession, **fields(2))),
        world.add(new_token(), namespace_session(**fields(3))),
        world.add(new_token(), is_deleted=True, **fields(4)),
    ]
    objects: list[object] = [*world.by_token.values()]
    for s in world.sessions.values():
        objects += [s, s.expires_at, s.last_active, s.idle_timeout]
    data = b"".join(frame(t) for t in tokens)
    expected = (3, len(data) - len(frame(tokens[3])))
    before = [sys.getrefcount(o) for o in objects]
    for _ in range(200):
        assert (
            _accel.validate_frames(data, world.by_token.segments, world.sessions.segments, NOW)
            == expected
        )
    assert [sys.getrefcount(o) for o in objects] == before


@needs_accel
def test_arguments_of_the_wrong_type_are_refused() -> None:
    scan = cast(Any, _accel.validate_frames)
    segs = [{}]
    with pytest.raises(TypeError):
        scan(bytearray(b"*2\r\n"), segs, segs, NOW)
    with pytest.raises(TypeError):
        scan(b"", segs, segs, NOW, 1)
    with pytest.raises(TypeError):  # a plain dict: the store's maps are segmented
        scan(b"", {}, segs, NOW)
    with pytest.raises(TypeError):
        scan(b"", [], segs, NOW)
    with pytest.raises(TypeError):  # a segment count that is not a power of two
        scan(b"", [{}, {}, {}], segs, NOW)
    with pytest.raises(OverflowError):
        scan(b"", segs, segs, 2**64)
    token = b"tmtk_" + b"A" * 43
    frame = b"*2\r\n$11\r\nTM.VALIDATE\r\n$48\r\n" + token + b"\r\n"
    with pytest.raises(TypeError, match="segment"):  # a segment that is not a dict
        scan(frame, [[]], segs, NOW)


def test_the_accelerator_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(accel.ACCEL_ENV, "0")
    assert accel._load() == (None, None, None, None)


# -- the frame loop against a Python reference -----------------------------------------------


def reference_scan(
    data: bytes, by_token: dict[bytes, str], sessions: dict[str, Any], now_ms: int
) -> tuple[int, int]:
    """What the loop must answer, from the frame grammar, hashlib and Session.is_expired."""
    count = pos = 0
    while True:
        head = pos + 23  # "*2\r\n$11\r\nTM.VALIDATE\r\n$"
        if data[pos : pos + 9] != b"*2\r\n$11\r\n" or data[head - 3 : head] != b"\r\n$":
            break
        if data[pos + 9 : pos + 20].upper() != b"TM.VALIDATE":
            break
        digits = data[head : head + 4].split(b"\r\n", 1)[0]
        if not (1 <= len(digits) <= 3 and digits.isdigit() and digits[:1] != b"0"):
            break
        start = head + len(digits) + 2
        length = int(digits)
        token = data[start : start + length]
        if data[start - 2 : start] != b"\r\n" or length > 255:
            break
        if len(token) != length or data[start + length : start + length + 2] != b"\r\n":
            break
        if not token.isascii():
            break
        sid = by_token.get(hashlib.sha256(token).digest())
        s = sessions.get(sid) if sid is not None else None
        if s is None or s.is_deleted or s.is_expired(now_ms):
            break
        count += 1
        pos = start + length + 2
    return count, pos


@st.composite
def scan_cases(draw: st.DrawFn) -> tuple[bytes, dict[bytes, str], dict[str, Any], int]:
    now = draw(st.integers(0, 2**45))
    alphabet = st.characters(min_codepoint=0, max_codepoint=127)
    texts = draw(st.lists(st.text(alphabet, min_size=1, max_size=64), min_size=1, max_size=5))
    tokens = [t.encode() for t in dict.fromkeys(texts)]
    tokens.append(b"tmtk_\xff" + bytes(42))  # non-ASCII, indexed anyway
    by_token: dict[bytes, str] = {}
    sessions: dict[str, Any] = {}
    for i, token in enumerate(tokens):
        role = draw(st.sampled_from(["live", "live", "live", "orphan", "unknown"]))
        if role == "unknown":
            continue
        sid = f"tmss-{i}"
        by_token[hashlib.sha256(token).digest()] = sid
        if role == "orphan":
            continue
        idle = draw(st.sampled_from([0, 0, 1, 1000, -3]))
        sessions[sid] = session(
            token,
            sid,
            draw(st.sampled_from([Session, SubSession])),
            is_deleted=draw(st.booleans()),
            expires_at=draw(st.sampled_from([0, now])) + draw(st.integers(-2, 2)),
            idle_timeout=idle,
            last_active=now - idle + draw(st.integers(-2, 2)),
        )
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 8))):
        token = draw(st.sampled_from(tokens))
        name = bytes(c ^ 0x20 if c >= 0x41 and draw(st.booleans()) else c for c in b"TM.VALIDATE")
        shape = draw(st.sampled_from(["frame"] * 6 + ["zero", "touch", "ping", "short", "long"]))
        if shape == "frame":
            parts.append(frame(token, name))
        elif shape == "zero":
            parts.append(
                frame(token, name).replace(b"$%d\r\n" % len(token), b"$0%d\r\n" % len(token))
            )
        elif shape == "touch":
            parts.append(resp(name, token, b"TOUCH"))
        elif shape == "ping":
            parts.append(resp(b"PING"))
        elif shape == "long":  # names the known token, then one byte too many
            parts.append(frame(token, name)[:-2] + b"X\r\n")
        else:
            parts.append(
                frame(token[:-1], name).replace(b"$%d" % (len(token) - 1), b"$%d" % len(token))
            )
    data = b"".join(parts)
    if data and draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data, by_token, sessions, now


@needs_accel
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scan_cases())
def test_the_loop_answers_as_the_python_reference(
    case: tuple[bytes, dict[bytes, str], dict[str, Any], int],
) -> None:
    data, by_token, sessions, now = case
    world = World()
    world.by_token, world.sessions = SegmentedMap(by_token.items()), SegmentedMap(sessions.items())
    assert world.scan(data, now) == reference_scan(data, by_token, sessions, now)


# -- through the RESP stack (compiled and pure Python) ----------------------------------------


def command(client: redis.Redis, *args: str) -> Any:
    """One command, its error as the exception object (as a pipeline gives it)."""
    try:
        return cast(Any, client).execute_command(*args)
    except redis.ResponseError as exc:
        return exc


def pipelined(client: redis.Redis, commands: list[tuple[str, ...]]) -> list[Any]:
    pipe = cast(Any, client.pipeline(transaction=False))
    for args in commands:
        pipe.execute_command(*args)
    return list(pipe.execute(raise_on_error=False))


def shown(replies: list[Any]) -> list[object]:
    """Replies in a comparable form (exceptions as their text)."""
    return [str(r) if isinstance(r, redis.ResponseError) else r for r in replies]


def create_sessions(client: redis.Redis, n: int) -> list[tuple[str, str]]:
    """``n`` new sessions ``(id, token)``, created with one pipeline of TM.CREATE."""
    sids = [new_session_id() for _ in range(n)]
    made = pipelined(
        client, [("TM.CREATE", sid, json.dumps({"user_id": f"user-{sid}"})) for sid in sids]
    )
    return [(sid, json.loads(m)["token"]) for sid, m in zip(sids, made, strict=True)]


def spy_on_scan(real_stack: RealStack) -> list[tuple[int, int]]:
    """Record what the compiled loop answered (nothing in python mode)."""
    answered: list[tuple[int, int]] = []
    dispatcher = real_stack.server.dispatcher
    scan = dispatcher._scan_frames
    if scan is None:
        return answered

    def spy(data: bytes, by_token: list[Any], sessions: list[Any], now: int) -> Any:
        result = scan(data, by_token, sessions, now)
        answered.append(result)
        return result

    dispatcher._scan_frames = spy
    return answered


def expire(real_stack: RealStack, sid: str) -> None:
    """Make a session expired at once. The minimum TTL is one second: rather than sleep,
    its record is replaced by the copy the store would hold once its expiry passed."""
    state = real_stack.engine.state
    s = state.sessions[sid]
    state.sessions[sid] = s.evolve(expires_at=int(time.time() * 1000) - 1000)


async def test_a_mixed_pipeline_answers_as_one_by_one(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("issuer")
    client = real_stack.client_for(kid, secret)
    made = await in_thread(create_sessions, client, 40)
    tokens = [t for _, t in made]
    await in_thread(client.delete, made[10][0])
    expire(real_stack, made[20][0])
    validate = "TM.VALIDATE"
    asked: list[tuple[str, ...]] = [
        *[(validate, t) for t in tokens[:8]],
        (validate, generate_token()),  # unknown
        (validate, tokens[8]),
        (validate, tokens[10]),  # revoked
        ("tm.validate", tokens[9]),
        *[(validate, t) for t in tokens[11:20]],
        (validate, tokens[20]),  # expired
        (validate, "tmtk_short"),  # malformed
        (validate, tokens[21]),
        (validate, tokens[22], "TOUCH"),
        (validate, tokens[23]),
        ("PING",),
        (validate, tokens[24]),
        (validate, tokens[24]),  # the same token twice in a row
        *[(validate, t) for t in tokens[25:]],
    ]
    answered = spy_on_scan(real_stack)
    stats = real_stack.server.stats
    commands_before = stats.commands
    replies = await in_thread(pipelined, client, asked)
    assert stats.commands - commands_before == len(asked)
    one_by_one = [await in_thread(command, client, *args) for args in asked]
    assert shown(replies) == shown(one_by_one)
    bad = {8, 10, 21, 22}
    for i, reply in enumerate(replies):
        if i in bad:
            assert isinstance(reply, redis.ResponseError), i
            assert str(reply).startswith("TM-TOKN-4010"), reply
        else:
            assert reply == (b"PONG" if asked[i] == ("PING",) else b"OK"), i
    if real_stack.server.dispatcher._scan_frames is not None:
        assert sum(count for count, _ in answered) >= 8  # the leading run, at least


async def test_a_pipeline_split_at_every_byte_gets_three_replies(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("issuer")
    client = real_stack.client_for(kid, secret)
    made = await in_thread(create_sessions, client, 3)
    payload = b"".join(frame(t.encode()) for _, t in made)
    answered = spy_on_scan(real_stack)

    def run() -> None:
        with real_stack.server.raw() as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(resp(b"AUTH", kid.encode(), secret.encode()))
            assert recv_exactly(sock, 5) == b"+OK\r\n"
            for cut in range(1, len(payload)):
                sock.sendall(payload[:cut])
                time.sleep(0.001)
                sock.sendall(payload[cut:])
                assert recv_exactly(sock, 15) == b"+OK\r\n" * 3, cut
            # A read that continues a command is not a run, even when it looks like one.
            one = payload[: len(payload) // 3]
            sock.sendall(b"*2\r\n$4\r\nECHO\r\n$%d\r\n" % len(one))
            time.sleep(0.005)
            sock.sendall(one + b"\r\n")
            echoed = b"$%d\r\n%s\r\n" % (len(one), one)
            assert recv_exactly(sock, len(echoed)) == echoed
            sock.sendall(resp(b"PING"))
            assert recv_exactly(sock, 7) == b"+PONG\r\n"

    await in_thread(run)
    if real_stack.server.dispatcher._scan_frames is not None:
        assert any(count for count, _ in answered)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, f"connection closed after {buf!r}"
        buf += chunk
    return buf


async def test_validations_count_once_in_the_metrics(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("issuer")
    client = real_stack.client_for(kid, secret)
    made = await in_thread(create_sessions, client, 30)
    await in_thread(client.delete, made[5][0])
    live = [("TM.VALIDATE", t) for i, (_, t) in enumerate(made) if i != 5]
    valid, invalid = metrics.TOKEN_VALIDATE_VALID, metrics.TOKEN_VALIDATE_INVALID
    stats = real_stack.server.stats
    # All valid: the compiled loop takes the whole read.
    valid_before, invalid_before, commands_before = valid.value, invalid.value, stats.commands
    assert await in_thread(pipelined, client, live) == [b"OK"] * 29
    assert valid.value - valid_before == 29
    assert invalid.value == invalid_before
    assert stats.commands - commands_before == 29
    # Mixed: the loop stops at the revoked token, Python answers the rest.
    asked = [("TM.VALIDATE", t) for _, t in made]
    asked.insert(12, ("TM.VALIDATE", generate_token()))
    valid_before, invalid_before, commands_before = valid.value, invalid.value, stats.commands
    replies = await in_thread(pipelined, client, asked)
    assert replies.count(b"OK") == 29
    assert valid.value - valid_before == 29
    assert invalid.value - invalid_before == 2
    assert stats.commands - commands_before == 31


async def test_a_run_of_valid_tokens_is_still_refused_when_it_must_be(
    real_stack: RealStack,
) -> None:
    """Without a key, with a key whose role cannot validate, in maintenance: every frame
    gets the refusal, however valid its token (the loop must not answer it)."""
    kid, secret = await real_stack.new_key("issuer")
    client = real_stack.client_for(kid, secret)
    made = await in_thread(create_sessions, client, 6)
    asked = [("TM.VALIDATE", t) for _, t in made]
    payload = b"".join(frame(t.encode()) for _, t in made)

    def anonymous() -> bytes:
        with real_stack.server.raw() as sock:
            sock.sendall(payload)
            return recv_exactly(sock, len(NOAUTH) * 6)

    assert await in_thread(anonymous) == NOAUTH * 6
    metrics_kid, metrics_secret = await real_stack.new_key("metrics")
    denied = await in_thread(pipelined, real_stack.client_for(metrics_kid, metrics_secret), asked)
    assert all("permission denied" in str(r) for r in denied), denied
    real_stack.maintenance[0] = True
    try:
        refused = shown(await in_thread(pipelined, client, asked))
    finally:
        real_stack.maintenance[0] = False
    assert refused == [MAINTENANCE] * 6
    assert await in_thread(pipelined, client, asked) == [b"OK"] * 6


async def test_a_key_disabled_or_expired_between_reads_refuses_the_next_run(
    real_stack: RealStack,
) -> None:
    """The key check runs inside the scan's callback with the read's clock reading: a key
    that changed since the last read refuses a whole run of valid tokens."""
    made = await in_thread(
        create_sessions, real_stack.client_for(*await real_stack.new_key("issuer")), 6
    )
    payload = b"".join(frame(t.encode()) for _, t in made)
    ok = b"+OK\r\n" * 6

    def run_twice(kid: str, secret: str, between: Callable[[], None]) -> tuple[bytes, bytes]:
        with real_stack.server.raw() as sock:
            sock.sendall(resp(b"AUTH", kid.encode(), secret.encode()))
            assert recv_exactly(sock, 5) == b"+OK\r\n"
            sock.sendall(payload)
            first = recv_exactly(sock, len(ok))
            between()
            sock.sendall(payload)
            return first, recv_exactly(sock, len(NOAUTH) * 6)

    kid, secret = await real_stack.new_key("validator")
    trio_token = trio.lowlevel.current_trio_token()

    def disable() -> None:
        trio.from_thread.run(real_stack.keys.set_status, kid, "disabled", trio_token=trio_token)

    assert await in_thread(run_twice, kid, secret, disable) == (ok, NOAUTH * 6)

    kid, secret = await real_stack.new_key("validator")
    keys = real_stack.engine.state.keys

    def expire_key() -> None:
        # As expire() does for sessions: the record the key would have once past its expiry.
        keys[kid] = attrs.evolve(keys[kid], expires_at=int(time.time() * 1000) - 1000)

    assert await in_thread(run_twice, kid, secret, expire_key) == (ok, NOAUTH * 6)


@pytest.mark.parametrize("real_stack", ["compiled"], indirect=True)  # Python: one by one
async def test_a_read_of_validations_reads_the_clock_once(
    real_stack: RealStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key check, the rate limit and the expiry rule of a compiled run share one
    clock reading."""
    dispatcher = real_stack.server.dispatcher
    kid, secret = await real_stack.new_key("issuer")
    made = await in_thread(create_sessions, real_stack.client_for(kid, secret), 5)
    conn = Connection("127.0.0.1")
    conn.bind(await real_stack.auth.authenticate(kid, secret, "127.0.0.1", SCOPE_REDIS))
    data = b"".join(frame(t.encode()) for _, t in made)
    reads = count_clock_reads(monkeypatch, Clock)
    assert dispatcher.validate_frames(conn, data) == (5, len(data))  # key checked: a new run
    assert reads() == 1
    assert conn.checked


async def test_a_run_beyond_the_rate_limit_is_answered_one_by_one(
    real_stack: RealStack,
) -> None:
    kid, secret = await real_stack.new_key("issuer")
    made = await in_thread(create_sessions, real_stack.client_for(kid, secret), 12)
    limited_kid, limited_secret = await real_stack.new_key("issuer", rate_limit=5)
    client = real_stack.client_for(limited_kid, limited_secret)
    assert await in_thread(command, client, "PING") == b"PONG"  # connected; no rate taken
    answered = spy_on_scan(real_stack)
    valid_before = metrics.TOKEN_VALIDATE_VALID.value
    commands_before = real_stack.server.stats.commands
    replies = shown(await in_thread(pipelined, client, [("TM.VALIDATE", t) for _, t in made]))
    ok = replies.count(b"OK")
    # The bucket holds 5 and refills 5/s: at most one more while the pipeline runs.
    assert 5 <= ok <= 6, replies
    assert replies == [b"OK"] * ok + [RATE_LIMITED] * (12 - ok)
    assert metrics.TOKEN_VALIDATE_VALID.value - valid_before == ok
    assert real_stack.server.stats.commands - commands_before == 12
    if real_stack.server.dispatcher._scan_frames is not None:
        assert max(count for count, _ in answered) > 5  # scanned, then refused


# -- the build -------------------------------------------------------------------------------


def test_the_accelerator_is_built_where_a_compiler_is() -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not compiler or not headers.exists():
        pytest.skip("no C compiler or no Python headers: the pure-Python path is used")
    try:
        import tokmesh._accel  # noqa: F401
    except ImportError as exc:
        pytest.fail(
            f"tokmesh._accel does not import although {compiler} and {headers} exist "
            f"({exc}); rebuild it with `pip install --no-deps --no-build-isolation -e .`"
        )
