"""Value types of the server configuration (spec 05 §2.4, §2.6).

Every parser takes the text a user wrote (in the YAML file, an environment variable or a
flag) and returns the canonical Python value the rest of TokMesh uses:

- duration -> ``float`` seconds (Go ``time.ParseDuration`` grammar),
- size     -> ``int`` bytes (1024-based units),
- rate     -> ``int`` bits per second (unit required),
- addr     -> ``(host, port)``.

The formatters do the reverse, so that dumps and docs show values in file form
(``"2h"``, ``"100MB"``, ``"20Mbps"``). A parse failure raises :class:`ConfigValueError`,
which carries the catalogue code (``TM-CFG-1001`` for a wrong type, ``TM-CFG-1002`` for a
well-formed value out of range) plus the problem and the expected form.
"""

from __future__ import annotations

import math
import re

from tokmesh.domain.errors import E, ErrorCode

__all__ = [
    "ConfigValueError",
    "format_addr",
    "format_duration",
    "format_rate",
    "format_size",
    "is_wildcard_host",
    "parse_addr",
    "parse_bool_text",
    "parse_duration",
    "parse_float_text",
    "parse_int_text",
    "parse_list_text",
    "parse_rate",
    "parse_size",
]


class ConfigValueError(ValueError):
    """A configuration value that cannot be parsed or is out of its valid range.

    The message never contains the value itself: a misplaced secret must not leak
    through an exception.
    """

    def __init__(self, code: ErrorCode, problem: str, expected: str) -> None:
        super().__init__(problem)
        self.code = code
        self.problem = problem
        self.expected = expected


# ---------------------------------------------------------------------------- duration

_DURATION_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # MICRO SIGN, as Go accepts
    "\u03bcs": 1e-6,  # GREEK SMALL LETTER MU, as Go accepts
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_EXPECTED = 'Go duration such as "100ms", "30s", "1h30m" (units ns, us, ms, s, m, h)'


def parse_duration(text: str) -> float:
    """Parse a Go ``time.ParseDuration`` string into seconds.

    The grammar is a signed sequence of ``<decimal><unit>`` pairs; ``"0"`` is the only
    number allowed without a unit. Raises :class:`ConfigValueError` (1001) otherwise.
    """
    if not isinstance(text, str):
        raise ConfigValueError(
            E.CFG_TYPE, "duration must be a string with a unit", _DURATION_EXPECTED
        )
    s = text.strip()
    bad = ConfigValueError(E.CFG_TYPE, "invalid duration", _DURATION_EXPECTED)
    if not s:
        raise bad
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise bad
    total = 0.0
    i = 0
    n = len(s)
    while i < n:
        start = i
        while i < n and s[i].isdigit():
            i += 1
        int_part = s[start:i]
        frac_part = ""
        if i < n and s[i] == ".":
            i += 1
            fstart = i
            while i < n and s[i].isdigit():
                i += 1
            frac_part = s[fstart:i]
        if not int_part and not frac_part:
            raise bad
        ustart = i
        while i < n and not (s[i].isdigit() or s[i] == "."):
            i += 1
        unit = s[ustart:i]
        if unit not in _DURATION_UNITS:
            # A missing unit ("7200") is the common mistake: say so explicitly.
            if not unit:
                raise ConfigValueError(
                    E.CFG_TYPE, "duration is missing its unit", _DURATION_EXPECTED
                )
            raise bad
        number = float(f"{int_part or '0'}.{frac_part or '0'}")
        total += number * _DURATION_UNITS[unit]
    if not math.isfinite(total):
        raise bad
    return sign * total


def format_duration(seconds: float) -> str:
    """Render seconds in Go duration form, e.g. ``7200.0`` -> ``"2h"``, ``0.1`` -> ``"100ms"``."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    ns = round(abs(seconds) * 1e9)
    parts: list[str] = []
    for unit, size in (
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ):
        if ns >= size:
            count, ns = divmod(ns, size)
            parts.append(f"{count}{unit}")
    return sign + "".join(parts)


# ---------------------------------------------------------------------------- size

_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([KMG]?B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
_SIZE_EXPECTED = 'size such as "4KB", "1MB", "1.5GB" (1024-based; no unit = bytes)'


def parse_size(value: str | int) -> int:
    """Parse ``<number>[B|KB|MB|GB]`` (case-insensitive, 1024-based) into bytes.

    A YAML integer is a number of bytes. Fractions are allowed (``"1.5MB"``) and rounded
    down to whole bytes.
    """
    if isinstance(value, bool):
        raise ConfigValueError(E.CFG_TYPE, "size must be a number or a string", _SIZE_EXPECTED)
    if isinstance(value, int):
        if value < 0:
            raise ConfigValueError(E.CFG_TYPE, "size must not be negative", _SIZE_EXPECTED)
        return value
    if not isinstance(value, str):
        raise ConfigValueError(E.CFG_TYPE, "size must be a number or a string", _SIZE_EXPECTED)
    m = _SIZE_RE.fullmatch(value.strip())
    if m is None:
        raise ConfigValueError(E.CFG_TYPE, "invalid size", _SIZE_EXPECTED)
    unit = (m.group(2) or "").upper()
    return _whole(float(m.group(1)) * _SIZE_UNITS[unit], "a smaller size")


def format_size(nbytes: int) -> str:
    """Render bytes with the largest unit that divides them exactly (``"100MB"``)."""
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if nbytes and nbytes % size == 0:
            return f"{nbytes // size}{unit}"
    return f"{nbytes}B"


# ---------------------------------------------------------------------------- rate

# The prefix letter is case-insensitive; the b/B that follows is not: it is what tells
# bits ("Mbps") from bytes ("MBps").
_RATE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([KkMmGg])(b|B)ps")
_RATE_BIT = {"k": 1000, "m": 1000**2, "g": 1000**3}
_RATE_BYTE = {"k": 1024, "m": 1024**2, "g": 1024**3}
_RATE_EXPECTED = (
    "rate with a unit: Kbps/Mbps/Gbps (bits/s, x1000) or KBps/MBps/GBps (bytes/s, x1024), "
    'e.g. "20Mbps"'
)


def parse_rate(value: str) -> int:
    """Parse a rate (unit required) into bits per second; ``"100MB"`` is invalid (D8)."""
    if not isinstance(value, str):
        raise ConfigValueError(E.CFG_TYPE, "rate must be a string with a unit", _RATE_EXPECTED)
    text = value.strip()
    if not text:
        raise ConfigValueError(E.CFG_TYPE, "rate must not be empty", _RATE_EXPECTED)
    m = _RATE_RE.fullmatch(text)
    if m is None:
        raise ConfigValueError(E.CFG_TYPE, "invalid rate (a unit is required)", _RATE_EXPECTED)
    number = float(m.group(1))
    prefix = m.group(2).lower()
    if m.group(3) == "b":
        return _whole(number * _RATE_BIT[prefix], "a smaller rate")
    return _whole(number * _RATE_BYTE[prefix] * 8, "a smaller rate")


def _whole(number: float, expected: str) -> int:
    """``int(number)``; a number written with hundreds of digits is infinite as a float,
    and that is a value out of range rather than an ``OverflowError``."""
    if not math.isfinite(number):
        raise ConfigValueError(E.CFG_RANGE, "number out of range", expected)
    return int(number)


def format_rate(bits: int) -> str:
    """Render bits per second in file form (``20_000_000`` -> ``"20Mbps"``)."""
    for unit, size in (("Gbps", 1000**3), ("Mbps", 1000**2), ("Kbps", 1000)):
        if bits and bits % size == 0:
            return f"{bits // size}{unit}"
    for unit, size in (("GBps", 8 * 1024**3), ("MBps", 8 * 1024**2), ("KBps", 8 * 1024)):
        if bits and bits % size == 0:
            return f"{bits // size}{unit}"
    # Three decimals of Kbps are exact for whole bits; strip the trailing zeros.
    return f"{bits / 1000:.3f}".rstrip("0").rstrip(".") + "Kbps"


# ---------------------------------------------------------------------------- addr

_ADDR_EXPECTED = "host:port with port 1-65535 (IPv6 as [::1]:5443; empty host = all interfaces)"
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def parse_addr(text: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 bracketed) into ``(host, port)``.

    A malformed address raises 1001; a well-formed one whose port is outside 1-65535
    raises 1002 (spec 05 §4 example: ``127.0.0.1:99999``).
    """
    if not isinstance(text, str):
        raise ConfigValueError(E.CFG_TYPE, "address must be a string", _ADDR_EXPECTED)
    s = text.strip()
    if s.startswith("["):
        close = s.find("]")
        if close < 0 or not s[close + 1 :].startswith(":"):
            raise ConfigValueError(E.CFG_TYPE, "invalid bracketed IPv6 address", _ADDR_EXPECTED)
        host, port_text = s[1:close], s[close + 2 :]
        if ":" not in host:
            raise ConfigValueError(E.CFG_TYPE, "brackets are only for IPv6 hosts", _ADDR_EXPECTED)
    else:
        host, sep, port_text = s.rpartition(":")
        if not sep:
            raise ConfigValueError(E.CFG_TYPE, "address has no port", _ADDR_EXPECTED)
        if ":" in host:
            raise ConfigValueError(
                E.CFG_TYPE, "IPv6 host must be in brackets, e.g. [::1]:5443", _ADDR_EXPECTED
            )
    if any(c.isspace() for c in host):
        raise ConfigValueError(E.CFG_TYPE, "host contains whitespace", _ADDR_EXPECTED)
    if not port_text.isascii() or not port_text.isdigit():
        raise ConfigValueError(E.CFG_TYPE, "port is not a number", _ADDR_EXPECTED)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigValueError(E.CFG_RANGE, "port number out of range", _ADDR_EXPECTED)
    return host, port


def format_addr(host: str, port: int) -> str:
    """Join a host and port, bracketing IPv6 hosts."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_wildcard_host(host: str) -> bool:
    """True for hosts that bind every interface (``""``, ``0.0.0.0``, ``::``)."""
    return host in _WILDCARD_HOSTS


# ---------------------------------------------------------------------------- env/flag text

_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})


def parse_bool_text(text: str) -> bool:
    """Parse ``true|false|1|0`` (case-insensitive), the env and flag form of a bool."""
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigValueError(E.CFG_TYPE, "invalid bool", "true, false, 1 or 0")


def parse_int_text(text: str) -> int:
    """Parse a base-10 integer (optional sign, no underscores)."""
    s = text.strip()
    if not re.fullmatch(r"[+-]?\d+", s):
        raise ConfigValueError(E.CFG_TYPE, "invalid int", "a base-10 integer")
    return int(s)


def parse_float_text(text: str) -> float:
    """Parse a finite decimal float."""
    s = text.strip()
    if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", s):
        raise ConfigValueError(E.CFG_TYPE, "invalid float", "a decimal number such as 0.5")
    return float(s)


def parse_list_text(text: str) -> list[str]:
    """Split a comma-separated list, trimming items and dropping empties (``""`` -> ``[]``)."""
    return [item.strip() for item in text.split(",") if item.strip()]
