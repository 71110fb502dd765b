"""Sanitized views of the configuration (spec 05 §4 fatal output, §6 audit, 02 §17).

- :func:`config_tree`: the effective config as a nested dict in file form (``"2h"``,
  ``"100MB"``), re-loadable as YAML.
- :func:`sanitized_config`: the same with the redaction rules applied: any string leaf
  whose name contains ``password``, ``secret``, ``key``, ``token`` ... becomes
  ``***REDACTED***`` (``wal_encryption_key``), while ``*_file`` paths are kept (D10).
- :func:`config_summary` and :func:`config_loaded_event`: the ``config_loaded`` audit line.
- :func:`format_issues` and :func:`format_test_report`: the fatal startup report and the
  ``tokmesh-server --test`` report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokmesh.config.issues import ConfigIssue
from tokmesh.config.loader import LoadResult
from tokmesh.config.schema import KEYS, Config, config_to_flat, format_value
from tokmesh.telemetry.redact import REDACTED, redact, redact_value

__all__ = [
    "FATAL_HEADER",
    "config_loaded_event",
    "config_summary",
    "config_tree",
    "format_issues",
    "format_test_report",
    "sanitized_config",
]

FATAL_HEADER = "[FATAL] Configuration validation failed at startup"


def config_tree(cfg: Config) -> dict[str, Any]:
    """The effective config as a nested dict in file form (NOT redacted)."""
    root: dict[str, Any] = {}
    for name, value in config_to_flat(cfg).items():
        node = root
        *sections, leaf = name.split(".")
        for part in sections:
            node = node.setdefault(part, {})
        node[leaf] = format_value(KEYS[name], value)
    return root


def sanitized_config(cfg: Config) -> dict[str, Any]:
    """The effective config, nested, with every secret replaced by ``***REDACTED***``.

    For ``effective_config`` in the audit line, ``GET /admin/v1/config?merged=true`` and
    ``tokmesh-cli config server show --merged``.
    """
    tree: dict[str, Any] = redact(config_tree(cfg))
    # Belt and braces: the schema knows which keys are secrets even if a name would not
    # match the rule (today only wal_encryption_key, which the name rule catches too).
    for name, spec in KEYS.items():
        if spec.kind.value == "secret":
            node = tree
            *sections, leaf = name.split(".")
            for part in sections:
                node = node[part]
            if node[leaf]:
                node[leaf] = REDACTED
    return tree


def config_summary(cfg: Config) -> dict[str, Any]:
    """The default ``config_summary`` of the ``config_loaded`` line (05 §6)."""
    s, t = cfg.server, cfg.telemetry
    return {
        "server_http": {"enabled": s.http.enabled, "address": s.http.address},
        "server_https": {"enabled": s.https.enabled, "address": s.https.address},
        "server_redis": {"enabled": s.redis.enabled},
        "telemetry": {
            "metrics.auth_enabled": t.metrics.auth_enabled,
            "logging.level": t.logging.level,
            "tracing.enabled": t.tracing.enabled,
        },
        "cluster": {"enabled": cfg.cluster.enabled},
    }


def config_loaded_event(result: LoadResult) -> dict[str, Any]:
    """Fields of the one INFO ``config_loaded`` line (the logger adds timestamp and level).

    Carries ``config_summary``, or ``effective_config`` (sanitized) when
    ``telemetry.logging.dump_config`` is true. Environment values never appear.
    """
    event: dict[str, Any] = {
        "event": "config_loaded",
        "config_source": result.source.to_dict(),
    }
    if result.config.telemetry.logging.dump_config:
        event["effective_config"] = sanitized_config(result.config)
    else:
        event["config_summary"] = config_summary(result.config)
    return event


def format_issues(issues: Sequence[ConfigIssue], header: str = FATAL_HEADER) -> str:
    """Render errors as in 05 §4 (``Error i/n: <code>``, Path, Value, Problem, ...)."""
    lines = [header, ""]
    total = len(issues)
    for i, issue in enumerate(issues, 1):
        lines.append(f"Error {i}/{total}: {issue.code.code}")
        lines.append(f"  Path: {issue.key}")
        if issue.value is not None:
            lines.append(f"  Value: {redact_value(issue.value)}")
        lines.append(f"  Problem: {issue.problem}")
        if issue.expected:
            lines.append(f"  Expected: {issue.expected}")
        if issue.solution:
            lines.append(f"  Solution: {issue.solution}")
    lines.append("Exit code: 1")
    return "\n".join(lines) + "\n"


def format_test_report(
    result: LoadResult, errors: Sequence[ConfigIssue], warnings: Sequence[str]
) -> str:
    """The ``tokmesh-server --test`` report: source, warnings, then OK or every error."""
    lines = [f"Configuration file: {result.source.file or '(none, built-in defaults)'}"]
    for frag in result.source.fragments:
        lines.append(f"Fragment: {frag}")
    if result.source.env_overrides:
        lines.append("Environment overrides: " + ", ".join(result.source.env_overrides))
    if result.source.cli_overrides:
        lines.append("Flag overrides: " + ", ".join(result.source.cli_overrides))
    for warning in warnings:
        lines.append(f"[WARN] {warning}")
    if not errors:
        lines.append("[OK] Configuration is valid")
        return "\n".join(lines) + "\n"
    lines.append("")
    return (
        "\n".join(lines)
        + "\n"
        + format_issues(errors, header="[FAIL] Configuration validation failed")
    )
