"""Runtime configuration changes (spec 05 §5, 03 §4.6): reload diff and partial apply.

- :func:`reload_plan` splits the keys that changed between the running and a freshly
  loaded config into those applied at once (♻ keys) and those that need a restart, for
  SIGHUP and ``POST /admin/v1/config/reload``.
- :func:`apply_partial` handles ``POST /admin/v1/config/apply``: only
  ``telemetry.logging.level`` can be changed that way; every other known or unknown path
  is rejected, and an invalid value fails the whole request with nothing applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from tokmesh.config.issues import ConfigIssue, issue_for_key
from tokmesh.config.loader import _coerce_file, _flatten
from tokmesh.config.schema import KEYS, Config, build_config, changed_keys, config_to_flat
from tokmesh.domain.errors import E

__all__ = ["APPLY_KEYS", "ApplyResult", "apply_partial", "reload_plan"]

APPLY_KEYS: frozenset[str] = frozenset({"telemetry.logging.level"})
"""Keys ``POST /admin/v1/config/apply`` may change (03 §4.6)."""


def reload_plan(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """``(updated, restart_required)``: changed keys that are hot-reloadable, and the rest."""
    changed = changed_keys(old, new)
    return [k for k in changed if KEYS[k].hot], [k for k in changed if not KEYS[k].hot]


@attrs.frozen
class ApplyResult:
    """Outcome of :func:`apply_partial`; ``config`` is the old one when ``errors`` is set."""

    config: Config
    updated: list[str]
    rejected: list[str]
    errors: list[ConfigIssue]


def _paths(tree: Mapping[Any, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and name not in KEYS:
            out.extend(_paths(value, name + "."))
        else:
            out.append(name)
    return out


def apply_partial(cfg: Config, tree: Mapping[str, Any]) -> ApplyResult:
    """Apply a partial config tree such as ``{"telemetry": {"logging": {"level": "debug"}}}``."""
    errors: list[ConfigIssue] = []
    warnings: list[str] = []
    raw: dict[str, Any] = {}
    _flatten(tree, "", "request", raw, warnings, errors)
    rejected = sorted(p for p in _paths(tree) if p not in APPLY_KEYS)
    values = config_to_flat(cfg)
    updated: list[str] = []
    for key in sorted(raw.keys() & APPLY_KEYS):
        spec = KEYS[key]
        ok, value = _coerce_file(spec, raw[key], "request", errors)
        if not ok:
            continue
        if spec.choices and value not in spec.choices:
            errors.append(
                issue_for_key(key, E.CFG_TYPE, f"not one of {', '.join(spec.choices)}", value=value)
            )
            continue
        values[key] = value
        updated.append(key)
    # Structural errors on rejected paths do not matter: they are not applied anyway.
    errors = [e for e in errors if e.key.split("[", 1)[0] in APPLY_KEYS]
    if errors:
        return ApplyResult(config=cfg, updated=[], rejected=rejected, errors=errors)
    return ApplyResult(config=build_config(values), updated=updated, rejected=rejected, errors=[])
