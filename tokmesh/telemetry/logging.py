"""JSON-lines logging on stdout with mandatory redaction (04 §16.5, 02 §17).

Every record becomes one JSON object on one line::

    {"timestamp":"2024-01-02T03:04:05.123Z","level":"INFO","logger":"tokmesh.session",
     "message":"...","request_id":"req-...","node_id":"tmnd-...", ...context fields...}

* ``timestamp`` is RFC 3339 UTC with milliseconds; ``level`` is one of ``DEBUG``, ``INFO``,
  ``WARN``, ``ERROR`` (stdlib ``CRITICAL`` is written as ``ERROR``).
* ``request_id`` is always present: the ID bound to the current task with
  :func:`bind_request_id` / :func:`log_context`, or ``null`` outside any request.
* ``trace_id`` / ``span_id`` appear only when bound (tracing on and a valid span).
* Context fields come from, in increasing precedence: :func:`set_global_fields` (e.g.
  ``node_id``), :func:`log_context` (per Trio task, via ``contextvars``, inherited by
  child tasks), and the call's ``extra={...}``.
* The message (after ``%``-formatting with its args), every field and any exception text
  pass through :mod:`tokmesh.telemetry.redact`, so a token, secret or token hash handed to
  the logger in any form is masked before it is written.

Usage::

    log = logging.getLogger("tokmesh.session")
    log.info("session created", extra={"session_id": sid, "user_id": uid})
    with log_context(request_id=rid, api_key_id=key_id):
        ...
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import secrets
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from typing import IO, Any, Final

import orjson

from tokmesh.telemetry.redact import redact, redact_field, redact_value

__all__ = [
    "JsonFormatter",
    "bind_request_id",
    "current_request_id",
    "log_context",
    "new_request_id",
    "parse_level",
    "set_global_fields",
    "set_level",
    "setup_logging",
]

_LEVELS: Final[dict[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_LEVEL_NAMES: Final[dict[int, str]] = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARN",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "ERROR",
}
# Fields the formatter owns; an ``extra`` or context field with one of these names is
# ignored rather than allowed to forge the line's identity.
_CORE_FIELDS: Final[frozenset[str]] = frozenset(
    {"timestamp", "level", "logger", "message", "request_id"}
)
# Every attribute a bare LogRecord carries; anything else on a record came from ``extra``.
_RECORD_ATTRS: Final[frozenset[str]] = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))
) | {"message", "asctime", "taskName"}

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tokmesh_request_id", default=None
)
_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "tokmesh_log_context", default=None
)
_global_fields: dict[str, Any] = {}
_installed_handler: logging.Handler | None = None


def parse_level(level: str) -> int:
    """Map a config level (``debug``/``info``/``warn``/``error``, any case) to a stdlib level.

    Raises ``ValueError`` for anything else; the config layer reports it as TM-CFG-1001.
    """
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}") from None


def new_request_id() -> str:
    """A fresh request ID: ``req-`` + 16 URL-safe random characters (03 §2.2)."""
    return "req-" + secrets.token_urlsafe(12)


def current_request_id() -> str | None:
    """The request ID bound to the current task, or ``None``."""
    return _request_id.get()


def bind_request_id(request_id: str | None) -> contextvars.Token[str | None]:
    """Bind ``request_id`` to the current task (and tasks it starts later).

    Returns the token for ``contextvars.ContextVar.reset``; request handlers usually prefer
    the scoped :func:`log_context`.
    """
    return _request_id.set(request_id)


@contextlib.contextmanager
def log_context(request_id: str | None = None, **fields: Any) -> Iterator[None]:
    """Within the block, add ``fields`` (and ``request_id`` if given) to every log line."""
    rid_token = _request_id.set(request_id) if request_id is not None else None
    ctx_token = _context.set({**(_context.get() or {}), **fields}) if fields else None
    try:
        yield
    finally:
        if ctx_token is not None:
            _context.reset(ctx_token)
        if rid_token is not None:
            _request_id.reset(rid_token)


def set_global_fields(**fields: Any) -> None:
    """Add process-wide fields to every line (e.g. ``node_id`` once it is known).

    A value of ``None`` removes the field.
    """
    for name, value in fields.items():
        if value is None:
            _global_fields.pop(name, None)
        else:
            _global_fields[name] = value


def _json_default(obj: Any) -> str:
    # Anything orjson cannot encode is written as its (redacted) text.
    return redact_value(str(obj))


class JsonFormatter(logging.Formatter):
    """Formats a record as one redacted JSON object (without the trailing newline)."""

    def __init__(self) -> None:
        super().__init__()
        # (second, "YYYY-MM-DDTHH:MM:SS") of the last line: strftime once per second.
        self._second_cache: tuple[int, str] = (-1, "")

    def _timestamp(self, created: float) -> str:
        sec = int(created)
        cached_sec, prefix = self._second_cache
        if sec != cached_sec:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self._second_cache = (sec, prefix)
        ms = int((created - sec) * 1000)
        return f"{prefix}.{ms:03d}Z"

    def _message(self, record: logging.LogRecord) -> str:
        try:
            text = record.getMessage()
        except Exception:
            # A broken format string must neither lose the line nor let the stdlib
            # error handler print the raw args (which may hold a secret) to stderr.
            text = f"{record.msg!s} (unformattable log arguments)"
        return redact_value(text)

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line; every user-supplied part is redacted."""
        out: dict[str, Any] = {
            "timestamp": self._timestamp(record.created),
            "level": _LEVEL_NAMES.get(record.levelno, record.levelname),
            "logger": record.name,
            "message": self._message(record),
            "request_id": None,
        }
        fields: dict[str, Any] = {}
        if _global_fields:
            fields.update(_global_fields)
        ctx = _context.get()
        if ctx:
            fields.update(ctx)
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRS:
                fields[name] = value
        rid = fields.pop("request_id", None)
        if rid is None:
            rid = _request_id.get()
        if rid is not None:
            out["request_id"] = redact_value(str(rid))
        for name, value in fields.items():
            if name not in _CORE_FIELDS:
                out[name] = redact_field(name, value)
        if record.exc_info:
            out["exception"] = redact_value(
                "".join(traceback.format_exception(*record.exc_info)).rstrip()
            )
        elif record.exc_text:
            out["exception"] = redact_value(record.exc_text)
        if record.stack_info:
            out["stack"] = redact_value(record.stack_info)
        try:
            data = orjson.dumps(out, default=_json_default)
        except TypeError:
            # Non-string dict keys or similar: fall back to a fully stringified copy.
            data = orjson.dumps(redact({k: str(v) for k, v in out.items()}))
        return data.decode()


class _JsonLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that never lets a formatting error print the raw record."""

    def handleError(self, record: logging.LogRecord) -> None:
        # The stdlib default prints the record's msg and args to stderr: unredacted.
        with contextlib.suppress(Exception):
            sys.stderr.write("tokmesh logging: failed to write a log line\n")


def setup_logging(level: str = "info", stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record of the process as a redacted JSON line to ``stream``.

    ``stream`` defaults to ``sys.stdout`` at call time. Calling again replaces the handler
    installed by the previous call (other handlers on the root logger are removed too, so
    nothing writes unredacted text). Returns the installed handler.
    """
    global _installed_handler
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler is _installed_handler:
            with contextlib.suppress(Exception):
                handler.flush()
    handler = _JsonLineHandler(sys.stdout if stream is None else stream)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    _installed_handler = handler
    # Warnings from the warnings module become log records, hence JSON and redacted.
    logging.captureWarnings(True)
    # httpx logs every request at INFO: in a cluster that is each etcd keepalive, several
    # lines a second that drown what the node itself says. Its warnings still come through.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    set_level(level)
    return handler


def set_level(level: str) -> None:
    """Change the log level at runtime (SIGHUP / ``POST /admin/v1/config/apply``)."""
    logging.getLogger().setLevel(parse_level(level))
