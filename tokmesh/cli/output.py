"""Output formats (06 §7): table/wide/json/yaml, the JSON envelope, detail views, errors.

Structured output (json/yaml) is the ``{"success": true, "data": …}`` envelope with server
field names kept and Unix-ms times under ``*_at``, ``last_active`` and
``old_secret_valid_until`` turned into RFC 3339 UTC strings. Human output goes to stdout,
human errors to stderr (06 §8.3), the error envelope of json/yaml to stdout.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from tokmesh.cli.errors import CliError, serialize_error
from tokmesh.cli.state import Options

RULE = "─" * 55
_TIME_KEYS = {"last_active", "old_secret_valid_until"}
GREEN, YELLOW, RED, CYAN, GREY, BOLD_WHITE, RESET = (
    "\033[32m",
    "\033[33m",
    "\033[31m",
    "\033[36m",
    "\033[90m",
    "\033[1;37m",
    "\033[0m",
)
#: cell style name -> rich style (tables) / ANSI sequence (plain text)
_RICH_STYLES = {"id": "cyan", "ok": "green", "warn": "yellow", "bad": "red"}
_ANSI = {"id": CYAN, "ok": GREEN, "warn": YELLOW, "bad": RED, "grey": GREY}


# ============================================================================ time and numbers


def now_ms() -> int:
    """The current time in Unix milliseconds."""
    return time.time_ns() // 1_000_000


def rfc3339(ms: int) -> str:
    """``2025-01-02T03:04:05.678Z`` (UTC, millisecond precision)."""
    t = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def is_time_key(key: str) -> bool:
    """True for the keys whose integer values are Unix-ms times (06 §7.1)."""
    return key.endswith("_at") or key in _TIME_KEYS


def convert_times(value: Any, key: str = "") -> Any:
    """A copy of ``value`` with Unix-ms times as RFC 3339 strings (0 = never → ``null``)."""
    if isinstance(value, dict):
        return {k: convert_times(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [convert_times(v, key) for v in value]
    if is_time_key(key) and isinstance(value, int) and not isinstance(value, bool):
        return rfc3339(value) if value > 0 else None
    return value


def list_time(ms: Any) -> str:
    """``YYYY-MM-DD HH:MM`` in local time, ``-`` for none."""
    if not isinstance(ms, int) or ms <= 0:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


def relative(ms: int, now: int | None = None) -> str:
    """``just now`` / ``15 minutes ago`` / ``in 10 hours``."""
    delta = (ms - (now if now is not None else now_ms())) / 1000
    future = delta > 0
    secs = abs(delta)
    if secs < 60:
        return "just now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= size:
            n = round(secs / size) if unit != "minute" else int(secs // size)
            text = f"{n} {unit}{'s' if n != 1 else ''}"
            return f"in {text}" if future else f"{text} ago"
    return "just now"  # pragma: no cover


def detail_time(ms: Any, now: int | None = None) -> str:
    """``YYYY-MM-DD HH:MM:SS (<relative>)`` in local time; ``Never`` for 0."""
    if not isinstance(ms, int) or ms <= 0:
        return "Never"
    local = dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
    return f"{local} ({relative(ms, now)})"


def format_bytes(n: float) -> str:
    """Base 1024: ``N B`` under 1024, else one decimal and KB…EB (``1.0 GB``)."""
    if n < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB", "PB", "EB"):
        value /= 1024
        if value < 1024 or unit == "EB":
            return f"{value:.1f} {unit}"
    return f"{value:.1f} EB"  # pragma: no cover


def format_duration(seconds: float) -> str:
    """``Xd Yh`` / ``Xh Ym`` / ``Xm``."""
    s = int(seconds)
    days, rem = divmod(s, 86400)
    hours, rem = divmod(rem, 3600)
    minutes = rem // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


def format_number(n: float) -> str:
    """``1.5M`` / ``150.0k`` / integer."""
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 1000:
        return f"{n / 1000:.1f}k"
    return str(int(n))


def truncate(value: str, full: bool) -> str:
    """First 13 characters + ``...`` for values longer than 16 (unless ``full``)."""
    if full or len(value) <= 16:
        return value
    return value[:13] + "..."


# ============================================================================ printer


class Printer:
    """Writes one command's output in the selected format."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.fmt = opts.output
        self.quiet = opts.quiet
        self.verbose = opts.verbose
        self.color = opts.color

    @property
    def structured(self) -> bool:
        """True for json/yaml output."""
        return self.fmt in ("json", "yaml")

    @property
    def human(self) -> bool:
        """True for table/wide output that is not ``-q``."""
        return not self.structured and not self.quiet

    # -- low level ---------------------------------------------------------------------------

    def out(self, text: str = "") -> None:
        """One line on stdout."""
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def lines(self, texts: Iterable[str]) -> None:
        """Several lines on stdout."""
        for text in texts:
            self.out(text)

    def err(self, text: str = "") -> None:
        """One line on stderr."""
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def paint(self, text: str, style: str) -> str:
        """``text`` in the colour of ``style`` (``id``/``ok``/``warn``/``bad``/``grey``)."""
        if not self.color or style not in _ANSI:
            return text
        return f"{_ANSI[style]}{text}{RESET}"

    # -- structured --------------------------------------------------------------------------

    def dump(self, doc: Any) -> str:
        """``doc`` serialised as JSON (2-space indent) or block-style YAML."""
        try:
            if self.fmt == "yaml":
                import yaml

                return str(
                    yaml.safe_dump(
                        doc, default_flow_style=False, sort_keys=False, allow_unicode=True
                    )
                ).rstrip("\n")
            return json.dumps(doc, indent=2, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise serialize_error(f"cannot serialise the output: {exc}") from None
        except Exception as exc:  # yaml.representer.RepresenterError and friends
            raise serialize_error(f"cannot serialise the output: {exc}") from None

    def envelope(self, data: Any) -> None:
        """The success envelope ``{"success": true, "data": …}`` on stdout."""
        payload = convert_times(data) if data else {}
        self.out(self.dump({"success": True, "data": payload}))

    def error(self, exc: CliError) -> None:
        """An error: the envelope on stdout for json/yaml, else the §8.3 display on stderr."""
        if self.structured:
            err: dict[str, Any] = {"code": exc.code, "message": exc.message}
            if exc.details:
                err["details"] = exc.details
            if exc.suggestion:
                err["suggestion"] = exc.suggestion
            err = {k: v for k, v in err.items() if v not in (None, "", {}, [])}
            try:
                text = self.dump({"success": False, "error": err})
            except CliError:
                text = json.dumps({"success": False, "error": {"message": exc.message}})
            self.out(text)
            return
        lines = [f"Error: {exc.message}"]
        if exc.code and exc.show_code:
            lines.append(f"  Code: {exc.code}")
        if exc.details:
            lines.append(f"  Details: {_details_text(exc.details)}")
        if exc.request_id and self.verbose:
            lines.append(f"  Request ID: {exc.request_id}")
        lines.extend(exc.extra_lines)
        if exc.suggestion:
            lines.append("")
            lines.append(f"Suggestion: {exc.suggestion}")
        self.err("\n".join(lines))

    # -- human -------------------------------------------------------------------------------

    def hint(self, label: str | None, desc: str) -> None:
        """The location hint ``[LOCAL] …`` / ``[REMOTE: <label>] …`` (table/wide, not -q)."""
        if not self.human:
            return
        if label is None:
            self.out(f"{self.paint('[LOCAL]', 'grey')} {desc}")
        else:
            self.out(f"{self.paint(f'[REMOTE: {label}]', 'id')} {desc}")

    def detail(self, title: str, rows: Iterable[tuple[str, str]]) -> None:
        """Title, a 55-char rule, ``  Label:`` lines with values at column 18, a rule."""
        self.out(title)
        self.out(RULE)
        for label, value in rows:
            self.out(f"  {label + ':':<16}{value}")
        self.out(RULE)

    def table(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[tuple[str, str | None]]],
        *,
        footer: str | None = None,
    ) -> None:
        """A borderless table: UPPERCASE headers, 2-space gaps, optional footer.

        Each cell is ``(text, style)``; ``--no-headers`` drops header, blank line and footer.
        """
        for line in render_table(
            headers, rows, show_headers=not self.opts.no_headers, color=self.color
        ):
            self.out(line)
        if footer and not self.opts.no_headers:
            self.out()
            self.out(footer)


def render_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[tuple[str, str | None]]],
    *,
    show_headers: bool = True,
    color: bool = False,
) -> list[str]:
    """The lines of a plain-column table rendered with rich (trailing spaces stripped).

    Cells never wrap (the console is as wide as needed), so one row is one line and
    ``--no-headers | wc -l`` counts rows.
    """
    import io

    from rich.console import Console
    from rich.table import Table

    table = Table(
        box=None,
        show_header=show_headers,
        header_style="bold white" if color else "",
        pad_edge=False,
        padding=(0, 1),
        show_edge=False,
    )
    for h in headers:
        table.add_column(h.upper(), no_wrap=True, overflow="ignore")
    for row in rows:
        cells = []
        for text, style in row:
            cell = text if text not in ("", None) else "-"
            cells.append(
                f"[{_RICH_STYLES[style]}]{_escape(cell)}[/]"
                if color and style in _RICH_STYLES
                else _escape(cell)
            )
        table.add_row(*cells)
    buf = io.StringIO()
    width = (
        20
        + sum(len(h) + 2 for h in headers)
        + sum(max((len(r[i][0] or "-") + 2 for r in rows), default=0) for i in range(len(headers)))
    )
    console = Console(
        file=buf,
        width=max(width, 80),
        color_system="standard" if color else None,
        force_terminal=color,
        highlight=False,
        emoji=False,
        markup=True,
    )
    console.print(table)
    return [line.rstrip() for line in buf.getvalue().splitlines()]


def _escape(text: str) -> str:
    from rich.markup import escape

    return str(escape(text))


def _details_text(details: Any) -> str:
    if isinstance(details, dict):
        return ", ".join(f"{k}={_details_text(v)}" for k, v in details.items())
    if isinstance(details, list):
        return ", ".join(_details_text(v) for v in details)
    return str(details)
