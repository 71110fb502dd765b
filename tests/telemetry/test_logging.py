"""JSON-lines logging: fields of 04 §16.5, levels, hot level change, redaction everywhere."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import trio

from tokmesh.domain.ids import new_key_id, new_node_id, new_session_id
from tokmesh.domain.tokens import generate_token, token_hash
from tokmesh.telemetry.logging import (
    bind_request_id,
    current_request_id,
    log_context,
    new_request_id,
    parse_level,
    set_global_fields,
    set_level,
    setup_logging,
)

from .test_redact import api_secret

_TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


class Capture:
    """The stream the logger writes to, parsed back into JSON objects."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler: logging.Handler | None = None

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Detach pytest's own capture handlers (added per test phase) for the block.

        They keep raw records for failure reports and raise on broken format strings;
        production has only our handler on the root logger.
        """
        root = logging.getLogger()
        foreign = [h for h in root.handlers if h is not self.handler]
        for handler in foreign:
            root.removeHandler(handler)
        try:
            yield
        finally:
            for handler in foreign:
                root.addHandler(handler)

    def lines(self) -> list[dict[str, Any]]:
        raw = self.text.splitlines()
        # Every line is one complete JSON object.
        return [orjson.loads(line) for line in raw]


@pytest.fixture
def cap() -> Iterator[Capture]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    capture = Capture()
    capture.handler = setup_logging("debug", stream=capture.stream)
    try:
        yield capture
    finally:
        set_global_fields(node_id=None)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        logging.captureWarnings(False)


def test_line_has_the_required_fields(cap: Capture) -> None:
    logging.getLogger("tokmesh.session").info("session created")
    (line,) = cap.lines()
    assert list(line)[:5] == ["timestamp", "level", "logger", "message", "request_id"]
    assert line["level"] == "INFO"
    assert line["logger"] == "tokmesh.session"
    assert line["message"] == "session created"
    assert line["request_id"] is None  # always present, null outside a request
    assert "trace_id" not in line and "span_id" not in line
    assert _TS_RE.fullmatch(line["timestamp"])
    ts = datetime.strptime(line["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(ts.timestamp() - datetime.now(UTC).timestamp()) < 5


def test_level_names_are_debug_info_warn_error(cap: Capture) -> None:
    log = logging.getLogger("tokmesh.x")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    assert [line["level"] for line in cap.lines()] == ["DEBUG", "INFO", "WARN", "ERROR", "ERROR"]


def test_set_level_changes_output_at_runtime(cap: Capture) -> None:
    log = logging.getLogger("tokmesh.x")
    set_level("warn")
    log.info("hidden")
    log.warning("shown")
    set_level("DEBUG")
    log.debug("shown too")
    assert [line["message"] for line in cap.lines()] == ["shown", "shown too"]


def test_parse_level_accepts_the_config_values_only() -> None:
    assert parse_level("debug") == logging.DEBUG
    assert parse_level("info") == logging.INFO
    assert parse_level("warn") == logging.WARNING
    assert parse_level("error") == logging.ERROR
    with pytest.raises(ValueError):
        parse_level("verbose")


def test_context_fields_request_id_and_extras(cap: Capture) -> None:
    nid, kid, sid = new_node_id(), new_key_id(), new_session_id()
    set_global_fields(node_id=nid)
    log = logging.getLogger("tokmesh.api")
    with log_context(request_id="req-abc", api_key_id=kid):
        log.info(
            "validated",
            extra={"session_id": sid, "user_id": "u1", "result": "valid", "duration_ms": 0.42},
        )
    log.info("after")
    first, second = cap.lines()
    assert first["request_id"] == "req-abc"
    assert first["node_id"] == nid
    assert first["api_key_id"] == kid
    assert first["session_id"] == sid
    assert first["user_id"] == "u1"
    assert first["result"] == "valid"
    assert first["duration_ms"] == 0.42
    assert second["request_id"] is None
    assert "api_key_id" not in second
    assert second["node_id"] == nid


def test_extra_request_id_wins_and_core_fields_cannot_be_forged(cap: Capture) -> None:
    with log_context(request_id="req-ctx"):
        logging.getLogger("tokmesh.x").info(
            "m", extra={"request_id": "req-extra", "timestamp": "forged", "level": "forged"}
        )
    (line,) = cap.lines()
    assert line["request_id"] == "req-extra"
    assert line["level"] == "INFO"
    assert line["timestamp"] != "forged"


def test_trace_fields_appear_only_when_bound(cap: Capture) -> None:
    log = logging.getLogger("tokmesh.x")
    with log_context(trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="00f067aa0ba902b7"):
        log.info("traced")
    log.info("untraced")
    traced, untraced = cap.lines()
    assert traced["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert traced["span_id"] == "00f067aa0ba902b7"
    assert "trace_id" not in untraced


async def test_request_id_is_per_task_and_inherited_by_child_tasks(cap: Capture) -> None:
    seen: dict[str, str | None] = {}

    async def handler(name: str) -> None:
        bind_request_id(f"req-{name}")
        await trio.sleep(0.01)

        async def child() -> None:
            seen[name + "-child"] = current_request_id()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
        seen[name] = current_request_id()
        logging.getLogger("tokmesh.api").info("done")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(handler, "a")
        nursery.start_soon(handler, "b")
    assert seen == {"a": "req-a", "a-child": "req-a", "b": "req-b", "b-child": "req-b"}
    assert sorted(line["request_id"] for line in cap.lines()) == ["req-a", "req-b"]


def test_new_request_id_format() -> None:
    rid = new_request_id()
    assert re.fullmatch(r"req-[A-Za-z0-9_-]{16}", rid)
    assert rid != new_request_id()


def test_non_json_values_are_stringified(cap: Capture) -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing tmtk_insidestr"

    logging.getLogger("tokmesh.x").info("m", extra={"obj": Thing(), "when": datetime(2024, 1, 1)})
    (line,) = cap.lines()
    assert line["obj"] == "thing tmtk_***REDACTED***"
    assert line["when"].startswith("2024-01-01")


# ------------------------------------------------------------------ no secret ever in a log line


def _log_credentials_every_way(log: logging.Logger, token: str, secret: str, thash: str) -> None:
    # In the message itself.
    log.info(f"validate {token} with {secret} hash {thash}")
    # In %-args, positional and mapping.
    log.info("validate %s / %r / %s", token, secret, thash)
    log.info("validate %(t)s", {"t": token})
    # In extras: plain, secret-named, nested, in lists.
    log.info(
        "extras",
        extra={
            "note": token,
            "key_secret": secret,
            "token": token,
            "token_hash": thash,
            "body": {"new_key_secret": secret, "items": [token, {"x": thash}]},
            "headers": {"Authorization": f"Bearer tmak-x:{secret}", "X-API-Key": "k:v"},
        },
    )
    # In the task context.
    with log_context(request_id=f"req-{token}", bearer=secret):
        log.warning("ctx")
    # In an exception message and traceback.
    try:
        raise ValueError(f"bad token {token} {thash}")
    except ValueError:
        log.exception("failed with %s", secret)
    # In a broken format string (args not consumed).
    log.error("broken %s %s", token)
    # Through the warnings module.
    with warnings.catch_warnings():
        # pytest records warnings itself; hook logging back in for this block.
        warnings.simplefilter("always")
        logging.captureWarnings(False)
        logging.captureWarnings(True)
        warnings.warn(f"careful with {secret}", UserWarning, stacklevel=1)
    # With a stack dump.
    log.info("stack", stack_info=True, extra={"sess_token_value": token})


def test_no_token_secret_or_hash_in_any_log_line(cap: Capture) -> None:
    token, secret = generate_token(), api_secret()
    thash = token_hash(token)
    creds = [token, secret, thash]
    log = logging.getLogger("tokmesh.leak")
    with cap.exclusive():
        _log_credentials_every_way(log, token, secret, thash)

    text = cap.text
    lines = cap.lines()
    assert len(lines) == 9
    for cred in creds:
        assert cred not in text
        assert cred[5:] not in text  # not even the body without the prefix
    assert "tmtk_***REDACTED***" in text
    assert "tmas_***REDACTED***" in text
    assert "tmth_***REDACTED***" in text
    assert lines[3]["key_secret"] == "***REDACTED***"
    assert lines[3]["headers"]["Authorization"] == "***REDACTED***"
    assert lines[3]["headers"]["X-API-Key"] == "***REDACTED***"
    assert lines[4]["bearer"] == "***REDACTED***"
    assert lines[4]["request_id"] == "req-tmtk_***REDACTED***"
    assert "ValueError: bad token tmtk_***REDACTED***" in lines[5]["exception"]
    assert lines[7]["logger"] == "py.warnings"
    assert lines[8]["sess_token_value"] == "***REDACTED***"
    assert "stack" in lines[8]


def test_logging_stdout_default(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        setup_logging("info")  # stream resolved at call time: the captured stdout
        logging.getLogger("tokmesh.x").info("to stdout %s", generate_token())
        out = capsys.readouterr().out
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        logging.captureWarnings(False)
    line = orjson.loads(out.strip())
    assert line["message"] == "to stdout tmtk_***REDACTED***"
