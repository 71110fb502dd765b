"""One configuration problem, as every consumer shows it (spec 05 §4).

A :class:`ConfigIssue` names its key (dotted, list items as ``key[i]``; a file path for
file-level problems), its catalogue code, the offending value already redacted, the
problem, the expected form and a fix. The fatal startup report, ``tokmesh-server --test``
and ``POST /admin/v1/config/validate`` all render the same objects.
"""

from __future__ import annotations

from typing import Any

import attrs

from tokmesh.config.schema import KEYS, KeySpec, Kind, format_value
from tokmesh.domain.errors import ErrorCode
from tokmesh.telemetry.redact import REDACTED, is_secret_name, redact_value

__all__ = ["ConfigIssue", "display_value", "issue_for_key"]


@attrs.frozen
class ConfigIssue:
    """One configuration error. ``value`` is display text, never a secret."""

    key: str
    code: ErrorCode
    problem: str
    expected: str = ""
    value: str | None = None
    solution: str = ""

    @property
    def message(self) -> str:
        """Problem and expected form in one sentence (the API ``message`` field)."""
        if self.expected:
            return f"{self.problem} (expected: {self.expected})"
        return self.problem

    def to_api(self) -> dict[str, str]:
        """The ``errors[]`` item of ``POST /admin/v1/config/validate``: code, field, message."""
        return {"code": self.code.code, "field": self.key, "message": self.message}


_KIND_EXPECTED: dict[Kind, str] = {
    Kind.ADDR: "host:port, port 1-65535",
    Kind.PATH: "a file path",
    Kind.BOOL: "true or false",
    Kind.ADDR_LIST: "a list of host:port",
    Kind.STR: "a string",
}


def _base_key(key: str) -> str:
    """``security.auth.allow_list[0]`` -> ``security.auth.allow_list``."""
    return key.split("[", 1)[0]


def display_value(key: str, value: Any, *, from_env: bool = False) -> str:
    """Render a value for an error report: file form, secrets and env values hidden."""
    spec = KEYS.get(_base_key(key))
    leaf = _base_key(key).rsplit(".", 1)[-1]
    if from_env:
        # Environment values are never printed (05 §2.4, 02 §17 rule 4): name the source.
        return f"(set by {spec.env if spec else 'environment'}, value not shown)"
    if (spec is not None and spec.kind is Kind.SECRET) or is_secret_name(leaf):
        return REDACTED if value not in ("", None) else '""'
    if spec is not None and "[" not in key:
        value = format_value(spec, value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(str(v) for v in value) + "]"
    elif value == "":
        text = '""'
    else:
        text = str(value)
    return redact_value(text)


def _solution(spec: KeySpec, file_label: str) -> str:
    if spec.example is not None:
        sample = spec.example
    elif spec.kind is Kind.SECRET:
        sample = "<64 hex characters>"
    elif spec.kind in (Kind.STR_LIST, Kind.ADDR_LIST):
        sample = "<comma-separated list>"
    elif spec.default_text in ('""', "[]"):
        sample = "<value>"
    else:
        sample = spec.default_text
    return f"fix {file_label} or export {spec.env}={sample}"


def issue_for_key(
    key: str,
    code: ErrorCode,
    problem: str,
    expected: str | None = None,
    *,
    value: Any = None,
    show_value: bool = True,
    from_env: bool = False,
    file_label: str = "config.yaml",
    solution: str | None = None,
) -> ConfigIssue:
    """Build an issue for a schema key with its redacted value and a default fix."""
    spec = KEYS.get(_base_key(key))
    if expected is None:
        expected = spec.range_text if spec is not None else ""
        if spec is not None and not expected:
            expected = _KIND_EXPECTED.get(spec.kind, spec.kind.value)
    if solution is None:
        solution = _solution(spec, file_label) if spec is not None else f"fix {file_label}"
    shown = display_value(key, value, from_env=from_env) if show_value else None
    return ConfigIssue(
        key=key, code=code, problem=problem, expected=expected, value=shown, solution=solution
    )
