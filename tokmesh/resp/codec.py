"""Sans-IO RESP2 codec: command parsing and reply encoding (03 §5.1).

:class:`RespParser` is fed raw bytes and hands back complete commands (``list[bytes]``,
the command name first). It never touches a socket, so it is tested and fuzzed alone.

Multibulk commands (``*N`` arrays) are parsed by ``hiredis.Reader``, which is C and
does the hot path. Everything hiredis cannot decide by itself is done here in Python,
off the hot path:

* inline commands: at a command boundary, a first byte other than ``*`` starts an
  inline command (a space-separated line, Redis quoting rules), as in Redis;
* the limits of 03 §5.1, checked on complete commands and also on the unfinished tail
  (so ``*2000`` is refused at once instead of after 2,000 elements arrive);
* argument types: only bulk strings (``$``), simple strings (``+``) and nulls
  (``$-1`` = empty) are arguments; anything else is a protocol error;
* re-synchronisation: when hiredis stops (a framing error, a non-array at top level)
  the Python parser finds the exact byte where the failing command starts and decides
  that command itself, then hands the rest back to hiredis.

The Python parser accepts a superset of what hiredis accepts for argument types that
hiredis returns as ``bytes``, and applies the same limits, so the result of a byte
stream does not depend on how it was split into reads.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Final, TypeAlias

import hiredis

from tokmesh.domain.errors import TokMeshError
from tokmesh.resp.limits import RespLimits

# -- errors ---------------------------------------------------------------------------------


class ProtocolError(Exception):
    """The peer broke RESP framing: answer :attr:`reply` and close the connection."""

    __slots__ = ("detail",)

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The error text as sent on the wire (without the leading ``-``)."""
        return f"ERR protocol error: {self.detail}"

    @property
    def reply(self) -> bytes:
        """The complete RESP error reply."""
        return encode_error(self.message)


class ProtocolLimitError(ProtocolError):
    """A limit of 03 §5.1 was exceeded: ``-ERR protocol limit exceeded``, then close."""

    __slots__ = ()

    def __init__(self, detail: str = "limit exceeded") -> None:
        super().__init__(detail)

    @property
    def message(self) -> str:
        """The fixed wire text of 03 §5.1."""
        return "ERR protocol limit exceeded"


class _HiredisProtocolError(Exception):
    """Raised by hiredis on bad framing; only a signal to re-synchronise in Python."""


class _HiredisReplyError(Exception):
    """hiredis builds one of these for a ``-`` element: never a valid argument."""


# -- reply encoding ---------------------------------------------------------------------------

#: Values :func:`encode_array` can encode (nested lists allowed).
RespValue: TypeAlias = "bytes | str | int | Sequence[RespValue] | None"

OK: Final = b"+OK\r\n"
PONG: Final = b"+PONG\r\n"
NIL: Final = b"$-1\r\n"
EMPTY_ARRAY: Final = b"*0\r\n"
ZERO: Final = b":0\r\n"
ONE: Final = b":1\r\n"
MINUS_ONE: Final = b":-1\r\n"
MINUS_TWO: Final = b":-2\r\n"

# Integer replies up to the largest batch size are prebuilt (DEL/EXISTS counts, small TTLs).
_SMALL_INTS: Final = tuple(b":%d\r\n" % i for i in range(1025))

# Redis' generic error replies (same text as Redis, used by many commands).
ERR_SYNTAX: Final = b"-ERR syntax error\r\n"
ERR_NOT_INTEGER: Final = b"-ERR value is not an integer or out of range\r\n"


def encode_simple(text: str | bytes) -> bytes:
    """``+text\\r\\n``; CR and LF (which would break framing) become spaces."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return b"+" + raw.replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n"


def encode_error(message: str) -> bytes:
    """``-message\\r\\n``; ``message`` includes its prefix (``ERR``, ``NOAUTH``...)."""
    raw = message.encode("utf-8", "replace")
    return b"-" + raw.replace(b"\r", b" ").replace(b"\n", b" ") + b"\r\n"


def render_error(exc: TokMeshError) -> bytes:
    """``-ERR <code> <message>``: a catalogue error as every RESP command reports it."""
    return encode_error(f"ERR {exc.code} {exc.message}")


def encode_integer(value: int) -> bytes:
    """``:value\\r\\n`` (prebuilt for 0..1024)."""
    if 0 <= value <= 1024:
        return _SMALL_INTS[value]
    return b":%d\r\n" % value


def encode_bulk(value: bytes | str | None) -> bytes:
    """``$len\\r\\nvalue\\r\\n``; ``None`` is the null bulk ``$-1``."""
    if value is None:
        return NIL
    if isinstance(value, str):
        value = value.encode("utf-8")
    return b"$%d\r\n%b\r\n" % (len(value), value)


def encode_array(items: Sequence[RespValue] | None) -> bytes:
    """``*n`` followed by each item: bytes/str as bulk, int as integer, None as null
    bulk, a nested sequence as a nested array. ``None`` itself is the null array."""
    if items is None:
        return b"*-1\r\n"
    parts = [b"*%d\r\n" % len(items)]
    _encode_items(items, parts)
    return b"".join(parts)


def _encode_items(items: Sequence[RespValue], parts: list[bytes]) -> None:
    for item in items:
        if isinstance(item, bytes | str) or item is None:
            parts.append(encode_bulk(item))
        elif isinstance(item, int):
            parts.append(encode_integer(item))
        else:
            parts.append(b"*%d\r\n" % len(item))
            _encode_items(item, parts)


# -- Python framing parser (slow path and tail validation) -----------------------------------

_STAR: Final = 42  # '*'
_DOLLAR: Final = 36  # '$'
_PLUS: Final = 43  # '+'
_EQUALS: Final = 61  # '=' (RESP3 verbatim string; hiredis returns it as bytes)
_LPAREN: Final = 40  # '(' (RESP3 big number; hiredis returns it as bytes)
_UNDERSCORE: Final = 95  # '_' (RESP3 null; taken as an empty argument like $-1)
_CR: Final = 13

# hiredis (like Redis) parses lengths with string2ll: optional '-', no '+', no leading
# zeros, no spaces, signed 64-bit. The regex plus the range check reproduce it exactly.
_INT_RE: Final = re.compile(rb"-?(?:0|[1-9][0-9]{0,18})")
_INT_MAX: Final = (1 << 63) - 1
_INT_MIN: Final = -(1 << 63)
# '-' and 19 digits, then "\r\n": a longer header can never become valid.
_MAX_HEADER: Final = 22


@functools.lru_cache(maxsize=4)
def _big_aggregate(digits: int) -> re.Pattern[bytes]:
    """Aggregate headers (arrays, and RESP3 maps, sets, pushes and attributes) whose count
    has ``digits`` digits or more, at the start of a line; ``digits`` is the length of the
    element limit, so every count above the limit has that many.

    hiredis makes room for an aggregate's elements as soon as it reads its header, before
    the parser sees it: ``*3000000000\r\n`` alone costs seconds of CPU and gigabytes of
    address space, a larger count raises ``MemoryError``, and nested headers multiply it.
    So bytes that may hold such a header never reach hiredis; the Python parser, which
    checks every count before it keeps anything, decides them. A count with fewer digits
    than the limit is below it, and the few slots hiredis makes for it are harmless.
    """
    return re.compile(rb"\n[*%%~>|][0-9]{%d}" % digits)


def parse_integer(raw: bytes) -> int | None:
    """A signed 64-bit decimal as Redis' ``string2ll`` accepts it (integer arguments such
    as ``EX`` seconds or a ``SELECT`` index), else ``None``."""
    if not _INT_RE.fullmatch(raw):
        return None
    value = int(raw)
    if value > _INT_MAX or value < _INT_MIN:
        return None
    return value


def _show(byte: int) -> str:
    """A byte for an error message: printable ASCII as is, else ``\\xNN``."""
    return chr(byte) if 33 <= byte < 127 else f"\\x{byte:02x}"


def _read_length(buf: bytes | bytearray, pos: int, what: str) -> tuple[int, int] | int:
    """Parse the integer line after the type byte at ``pos``.

    Returns ``(value, next_pos)``, or an ``int`` = total buffer length needed before
    trying again (the header is not complete yet).
    """
    nl = buf.find(b"\r\n", pos + 1)
    if nl < 0:
        if len(buf) - pos > _MAX_HEADER:
            raise ProtocolError(f"invalid {what} length")
        return len(buf) + 1
    text = bytes(buf[pos + 1 : nl])
    if not _INT_RE.fullmatch(text):
        raise ProtocolError(f"invalid {what} length")
    value = int(text)
    if value > _INT_MAX or value < _INT_MIN:
        raise ProtocolError(f"invalid {what} length")
    return value, nl + 2


def parse_multibulk(
    buf: bytes | bytearray, pos: int, limits: RespLimits
) -> tuple[list[bytes], int] | int:
    """Parse one multibulk command starting at ``buf[pos] == '*'``.

    Returns ``(argv, end)`` when complete (``argv == []`` for ``*0`` / ``*-1``), or an
    ``int``: the buffer length needed before parsing can make progress. Every header that
    is already present is checked, so limits and framing errors surface as early as
    possible. Raises :class:`ProtocolError` / :class:`ProtocolLimitError`.
    """
    head = _read_length(buf, pos, "multibulk")
    if isinstance(head, int):
        return head
    count, p = head
    if count < -1:
        raise ProtocolError("invalid multibulk length")
    if count <= 0:
        return [], p
    if count > limits.max_elements:
        raise ProtocolLimitError("too many elements")
    max_bulk = limits.max_bulk
    argv: list[bytes] = []
    end = len(buf)
    for _ in range(count):
        if p >= end:
            return p + 1
        kind = buf[p]
        if kind in (_DOLLAR, _EQUALS):
            r = _read_length(buf, p, "bulk")
            if isinstance(r, int):
                return r
            length, q = r
            skip = 0
            if kind == _EQUALS:
                if length < 4:
                    raise ProtocolError("invalid bulk length")
                skip = 4  # the "txt:" content type
            elif length == -1:
                argv.append(b"")
                p = q
                continue
            elif length < 0:
                raise ProtocolError("invalid bulk length")
            if length - skip > max_bulk:
                raise ProtocolLimitError("bulk too long")
            # Like hiredis and Redis, the two bytes after the payload are skipped
            # without being checked.
            if q + length + 2 > end:
                return q + length + 2
            argv.append(bytes(buf[q + skip : q + length]))
            p = q + length + 2
        elif kind in (_PLUS, _LPAREN):
            nl = buf.find(b"\r\n", p + 1)
            if nl < 0:
                # The content can only shrink by a trailing '\r' of the terminator.
                if end - p - 1 > max_bulk + 1:
                    raise ProtocolLimitError("simple string too long")
                return end + 1
            if nl - p - 1 > max_bulk:
                raise ProtocolLimitError("simple string too long")
            argv.append(bytes(buf[p + 1 : nl]))
            p = nl + 2
        elif kind == _UNDERSCORE:
            if end - p < 3:
                if not b"\r\n".startswith(bytes(buf[p + 1 : end])):
                    raise ProtocolError("expected '$', got '_'")
                return p + 3
            if buf[p + 1 : p + 3] != b"\r\n":
                raise ProtocolError("expected '$', got '_'")
            argv.append(b"")
            p += 3
        else:
            raise ProtocolError(f"expected '$', got '{_show(kind)}'")
    return argv, p


_SPACE: Final = frozenset(b" \t\n\r\v\f")
_TOKEN_END: Final = frozenset(b" \n\r\t")
_ESCAPES: Final = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
# Quotes need the full splitter; so do \v and \f, which bytes.split() treats as
# separators but Redis keeps inside an unquoted argument.
_NEEDS_SLOW_SPLIT: Final = re.compile(rb"[\"'\x0b\x0c]")


def split_inline(line: bytes) -> list[bytes] | None:
    """Split an inline command like Redis' ``sdssplitargs``.

    Arguments are separated by whitespace; ``"..."`` supports ``\\n \\r \\t \\b \\a``
    and ``\\xHH`` escapes, ``'...'`` supports ``\\'``. A closing quote must be followed
    by whitespace or the end. Returns ``None`` for unbalanced quotes.
    """
    if b"\x00" in line:
        # Redis splits a C string: a NUL byte ends the line there.
        line = line[: line.index(b"\x00")]
    if not _NEEDS_SLOW_SPLIT.search(line):
        return line.split()  # fast path: the common case, same result
    args: list[bytes] = []
    n = len(line)
    i = 0
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i == n:
            return args
        cur = bytearray()
        in_dq = in_sq = False
        while True:
            if in_dq:
                if i == n:
                    return None
                c = line[i]
                if (
                    c == 92
                    and i + 3 < n
                    and line[i + 1] == 120
                    and line[i + 2] in _HEX
                    and line[i + 3] in _HEX
                ):
                    cur.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 92 and i + 1 < n:
                    i += 1
                    cur.append(_ESCAPES.get(line[i], line[i]))
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        return None
                    i += 1
                    break
                else:
                    cur.append(c)
            elif in_sq:
                if i == n:
                    return None
                c = line[i]
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    i += 1
                    cur.append(39)
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        return None
                    i += 1
                    break
                else:
                    cur.append(c)
            else:
                if i == n:
                    break
                c = line[i]
                if c in _TOKEN_END:
                    break
                if c == 34:
                    in_dq = True
                elif c == 39:
                    in_sq = True
                else:
                    cur.append(c)
            i += 1
        args.append(bytes(cur))


# -- the parser ------------------------------------------------------------------------------


def _new_reader() -> hiredis.Reader:
    return hiredis.Reader(protocolError=_HiredisProtocolError, replyError=_HiredisReplyError)


class RespParser:
    """Incremental RESP2 request parser (sans-IO).

    :meth:`feed` returns the commands completed by the new bytes, in order. An empty
    list inside the result is an empty command (``*0``, ``*-1`` or a blank inline line):
    the caller answers ``-ERR no command`` and keeps the connection. After a framing or
    limit fault, :meth:`feed` still returns the commands parsed before the fault and sets
    :attr:`error`; the caller answers those, then :attr:`error`'s reply, then closes.
    """

    __slots__ = (
        "_big",
        "_big_digits",
        "_chunks",
        "_frame",
        "_frame_cmd",
        "_limits",
        "_need",
        "_parsed",
        "_pending",
        "_py_need",
        "_py_only",
        "_pybuf",
        "_reader",
        "error",
    )

    def __init__(self, limits: RespLimits | None = None) -> None:
        self._limits = limits or RespLimits()
        self._big_digits = len(str(self._limits.max_elements))
        self._big = _big_aggregate(self._big_digits)
        self._reader = _new_reader()
        #: Bytes fed to hiredis since its last command boundary (the partial tail first).
        self._chunks: list[bytes] = []
        #: Total length of ``_chunks``.
        self._pending = 0
        #: Complete commands hiredis returned from ``_chunks``.
        self._parsed = 0
        #: Length ``_chunks`` must reach before re-validating the partial tail.
        self._need = 0
        #: Python-mode buffer (inline commands, re-synchronised multibulk).
        self._pybuf = bytearray()
        #: Length ``_pybuf`` must reach before the forced multibulk parse is retried.
        self._py_need = 0
        #: Leading bytes of ``_pybuf`` whose ``*`` commands the Python parser decides
        #: (hiredis gave up on one, or they may hold a header hiredis must not see).
        self._py_only = 0
        #: The fault that ended this connection's stream, if any.
        self.error: ProtocolError | None = None
        #: The bytes of one command that last arrived as a whole read of identical
        #: copies, and its parsed form (see :meth:`feed`).
        self._frame = b""
        self._frame_cmd: list[bytes] = []

    @property
    def has_partial(self) -> bool:
        """True while an unfinished command is buffered (the command timeout applies)."""
        return bool(self._chunks) or bool(self._pybuf)

    def feed(self, data: bytes | bytearray) -> list[list[bytes]]:
        """Consume ``data``; return the commands it completed (see the class doc)."""
        if self.error is not None:
            raise self.error
        if data.__class__ is not bytes:
            data = bytes(data)  # memory streams hand out bytearrays
        assert isinstance(data, bytes)
        out: list[list[bytes]] = []
        frame = self._frame
        if frame and not self._chunks and not self._pybuf:
            # A read made only of copies of the last repeated command (a pipeline
            # repeating one validation): k non-overlapping occurrences of the frame in
            # k frame lengths tile the read exactly, so the copies need no parsing.
            k, rest = divmod(len(data), len(frame))
            if not rest and data.count(frame) == k:
                return [self._frame_cmd] * k
        try:
            if self._pybuf:
                self._pybuf += data
                rest_data = self._run_python(out)
                if rest_data:
                    self._run_hiredis(rest_data, out)
            elif data:
                self._run_hiredis(data, out)
                n = len(out)
                if n > 1 and not self._chunks and out[0] == out[-1]:
                    # Remember a read of n identical commands: its bytes are n copies of
                    # the canonical encoding of the first one.
                    size, uneven = divmod(len(data), n)
                    if not uneven:
                        frame = data[:size]
                        if frame == encode_array(out[0]) and data.count(frame) == n:
                            self._frame = frame
                            self._frame_cmd = out[0]
        except ProtocolError as exc:
            self.error = exc
            # The stream is dead: free whatever it buffered.
            self._chunks = []
            self._pybuf = bytearray()
            self._reader = _new_reader()
        return out

    # -- hiredis path ------------------------------------------------------------------------

    def _run_hiredis(self, data: bytes, out: list[list[bytes]]) -> None:
        limits = self._limits
        max_elements = limits.max_elements
        max_bulk = limits.max_bulk
        max_command = limits.max_command_bytes
        while data:
            if not self._chunks and data[0] != _STAR:
                # A command boundary that starts an inline command.
                self._pybuf = bytearray(data)
                data = self._run_python(out)
                continue
            if self._big_aggregate_in(data):
                data = self._to_python(data, out)
                continue
            reader = self._reader
            reader.feed(data)
            self._chunks.append(data)
            self._pending += len(data)
            data = b""
            # No argument can be longer than the bytes fed since the last boundary: when
            # those are few, the per-argument length check is skipped.
            short = self._pending <= max_bulk
            # gets() is only called while hiredis holds unread bytes, so False means
            # "inside a command". has_data() alone cannot tell: hiredis consumes the
            # headers of an unfinished array into its own state.
            while True:
                try:
                    reply = reader.gets()
                except _HiredisProtocolError:
                    data = self._resync(out)
                    break
                if reply is False:
                    if self._parsed or self._pending >= self._need:
                        data = self._check_tail(out)
                    break
                if reply.__class__ is list:
                    if len(reply) > max_elements:
                        raise ProtocolLimitError("too many elements")
                    if self._pending > max_command:
                        # hiredis does not say how long the command was: let the Python
                        # parser measure it, so that the limit does not depend on reads.
                        data = self._resync(out)
                        break
                    for arg in reply:
                        if arg.__class__ is not bytes:
                            break
                        if not short and len(arg) > max_bulk:
                            raise ProtocolLimitError("bulk too long")
                    else:
                        out.append(reply)
                        if reader.has_data():
                            self._parsed += 1
                            continue
                        # Everything fed so far is consumed: a command boundary.
                        self._chunks = []
                        self._pending = 0
                        self._parsed = 0
                        self._need = 0
                        break
                # A null or non-bytes argument, or a non-array at top level: let the
                # Python parser decide on the exact bytes.
                data = self._resync(out)
                break

    def _tail(self) -> bytes:
        """The bytes of the unfinished command hiredis is holding (skips parsed ones)."""
        raw = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        pos = 0
        for _ in range(self._parsed):
            r = parse_multibulk(raw, pos, self._limits)
            if isinstance(r, int):  # pragma: no cover - hiredis accepted it complete
                raise ProtocolError("invalid multibulk length")
            pos = r[1]
        return raw[pos:] if pos else raw

    def _reset_hiredis(self) -> None:
        self._reader = _new_reader()
        self._chunks = []
        self._pending = 0
        self._parsed = 0
        self._need = 0

    def _resync(self, out: list[list[bytes]]) -> bytes:
        """hiredis gave up on a command: decide it in Python, return what follows."""
        tail = self._tail()
        self._reset_hiredis()
        self._pybuf = bytearray(tail)
        self._py_need = 0
        self._py_only = 1
        return self._run_python(out)

    def _big_aggregate_in(self, data: bytes) -> bool:
        """Whether ``data`` may hold an aggregate header hiredis must not see (see
        :func:`_big_aggregate`), counting one cut between the previous read and this."""
        big = self._big
        if big.search(data) is not None:
            return True
        chunks = self._chunks
        if not chunks:
            # A command boundary: ``data`` starts with the command's own header.
            digits = self._big_digits
            count = data[1 : 1 + digits]
            return len(count) == digits and count.isdigit()
        # Inside a command: a header may have been cut by the end of the previous read.
        parts: list[bytes] = []
        size = 0
        for chunk in reversed(chunks):
            parts.append(chunk)
            size += len(chunk)
            if size >= _MAX_HEADER:
                break
        else:
            parts.append(b"\n")  # the command itself starts a line
        before = b"".join(reversed(parts))[-_MAX_HEADER:]
        return big.search(before + data[:_MAX_HEADER]) is not None

    def _to_python(self, data: bytes, out: list[list[bytes]]) -> bytes:
        """Decide every command of hiredis' unfinished tail and of ``data`` in Python;
        return what follows them for hiredis."""
        tail = self._tail() if self._chunks else b""
        self._reset_hiredis()
        self._pybuf = bytearray(tail)
        self._pybuf += data
        self._py_need = 0
        self._py_only = len(self._pybuf)
        return self._run_python(out)

    def _check_tail(self, out: list[list[bytes]]) -> bytes:
        """Validate the unfinished command's headers and size while it is still arriving."""
        tail = self._tail()
        if tail[0] != _STAR:
            # hiredis is inside a top-level non-array: for us that is an inline command.
            self._reset_hiredis()
            self._pybuf = bytearray(tail)
            return self._run_python(out)
        if len(tail) > self._limits.max_command_bytes:
            raise ProtocolLimitError("command too long")
        r = parse_multibulk(tail, 0, self._limits)
        if not isinstance(r, int):  # pragma: no cover - defensive: let Python decide
            self._reset_hiredis()
            self._pybuf = bytearray(tail)
            self._py_only = 1
            return self._run_python(out)
        self._chunks = [tail]
        self._pending = len(tail)
        self._parsed = 0
        self._need = r
        return b""

    # -- Python path -------------------------------------------------------------------------

    def _run_python(self, out: list[list[bytes]]) -> bytes:
        """Parse inline (and forced multibulk) commands from ``_pybuf``.

        Returns the remaining bytes when they start a multibulk command hiredis should
        parse (``_pybuf`` is then empty), else ``b""``.
        """
        buf = self._pybuf
        limits = self._limits
        pos = 0
        end = len(buf)
        try:
            while pos < end:
                if buf[pos] == _STAR:
                    if pos >= self._py_only:
                        rest = bytes(buf[pos:])
                        pos = end
                        return rest
                    if end - pos < self._py_need:
                        break
                    r = parse_multibulk(buf, pos, limits)
                    if isinstance(r, int):
                        if end - pos > limits.max_command_bytes:
                            raise ProtocolLimitError("command too long")
                        self._py_need = r - pos
                        break
                    argv, next_pos = r
                    if next_pos - pos > limits.max_command_bytes:
                        # Complete commands too, so that the outcome does not depend on
                        # how the stream was cut into reads.
                        raise ProtocolLimitError("command too long")
                    pos = next_pos
                    self._py_need = 0
                    out.append(argv)
                    continue
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    if end - pos > limits.max_inline + 1:
                        raise ProtocolLimitError("inline command too long")
                    break
                stop = nl - 1 if nl > pos and buf[nl - 1] == _CR else nl
                if stop - pos > limits.max_inline:
                    raise ProtocolLimitError("inline command too long")
                args = split_inline(bytes(buf[pos:stop]))
                if args is None:
                    raise ProtocolError("unbalanced quotes in request")
                out.append(args)
                pos = nl + 1
            return b""
        finally:
            del buf[:pos]
            self._py_only = max(self._py_only - pos, 0)
