"""Loading the server configuration: discovery, merge, env and flag overrides (spec 05 §2).

Precedence, lowest first: built-in defaults < main YAML file < ``config.d/*.yaml``
fragments < ``TOKMESH_*`` environment variables < command-line flags. Values override per
key; lists are replaced, never appended. After the merge, relative paths are resolved
against the main file's directory (the working directory when no file was loaded).

The loader only parses types. Ranges, formats and cross-field rules are the validator's
(:mod:`tokmesh.config.validate`), which runs on the result. Problems are collected, never
raised: :class:`LoadResult` carries every error and warning so that the caller can print
them all and exit 1. Warnings never contain a value from the environment.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml

from tokmesh.config.issues import ConfigIssue, issue_for_key
from tokmesh.config.schema import (
    ENV_TO_KEY,
    FLAG_KEYS,
    KEYS,
    PATH_KEYS,
    SECTIONS,
    Config,
    KeySpec,
    Kind,
    build_config,
)
from tokmesh.config.types import (
    ConfigValueError,
    parse_bool_text,
    parse_duration,
    parse_float_text,
    parse_int_text,
    parse_list_text,
    parse_rate,
    parse_size,
)
from tokmesh.domain.errors import E

__all__ = [
    "CONFIG_FILE_ENV",
    "LEGACY_ENV_HINTS",
    "SILENT_ENV",
    "ConfigSource",
    "LoadResult",
    "default_search_paths",
    "flag_name",
    "load_config",
    "load_yaml_text",
    "parse_flag_value",
]

CONFIG_FILE_ENV = "TOKMESH_SERVER_CONFIG_FILE"
"""Environment variable naming the main file (a path, not a key; 05 §2.2 row 2)."""

SILENT_ENV: frozenset[str] = frozenset(
    {
        CONFIG_FILE_ENV,
        "TOKMESH_CLI_CONFIG",
        "TOKMESH_API_KEY",
        "TOKMESH_API_KEY_ID",
        "TOKMESH_TARGET",
        "TOKMESH_OUTPUT",
        "TOKMESH_TIMEOUT",
        "TOKMESH_TLS_CA",
        "TOKMESH_ACCEL",  # tokmesh.accel: turns the compiled accelerator off
    }
)
"""``TOKMESH_*`` variables that belong to someone else and are ignored without a WARN."""

LEGACY_ENV_HINTS: Mapping[str, str | None] = {
    "TOKMESH_SERVER_HTTP_ADDR": "TOKMESH_SERVER_HTTP_ADDRESS",
    "TOKMESH_SERVER_HTTPS_ADDR": "TOKMESH_SERVER_HTTPS_ADDRESS",
    "TOKMESH_CLUSTER_ADDR": "TOKMESH_CLUSTER_LISTEN_ADDRESS",
    "TOKMESH_CLUSTER_ADVERTISE_ADDR": "TOKMESH_CLUSTER_ADVERTISE_ADDRESS",
    "TOKMESH_LOG_LEVEL": "TOKMESH_TELEMETRY_LOGGING_LEVEL",
    "TOKMESH_STORAGE_DATA_DIR": "TOKMESH_STORAGE_WAL_DIR and TOKMESH_STORAGE_SNAPSHOT_DIR",
    "TOKMESH_LOG_FORMAT": None,
}
"""Legacy ``deployments/`` names: not aliases, only a hint in the WARN (05 §2.4)."""

NO_FILE_WARNING = "No configuration file found, using built-in defaults"


@attrs.frozen
class ConfigSource:
    """Where the effective configuration came from (the ``config_source`` audit field)."""

    file: str | None
    fragments: tuple[str, ...] = ()
    env_overrides: tuple[str, ...] = ()
    cli_overrides: tuple[str, ...] = ()
    base_dir: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form logged in ``config_loaded`` (names only, never values)."""
        return {
            "file": self.file,
            "fragments": list(self.fragments),
            "env_overrides": list(self.env_overrides),
            "cli_overrides": list(self.cli_overrides),
        }


@attrs.frozen
class LoadResult:
    """Outcome of :func:`load_config`.

    ``config`` is always usable (defaults where something failed); start only when
    ``errors`` is empty. ``origins`` maps each key set by something other than the
    defaults to ``"file"``, ``"fragment"``, ``"env"`` or ``"flag"``.
    """

    config: Config
    source: ConfigSource
    warnings: list[str]
    errors: list[ConfigIssue]
    origins: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def ok(self) -> bool:
        """True when loading found no error."""
        return not self.errors


# ============================================================================ discovery


def default_search_paths(cwd: Path, env: Mapping[str, str]) -> list[Path]:
    """Rows 3-5 of 05 §2.2: system file, ``./config.yaml``, the XDG user file."""
    if os.name == "nt":  # pragma: no cover - search path only, Windows is not a target
        program_data = env.get("ProgramData", r"C:\ProgramData")
        system = Path(program_data) / "tokmesh-server" / "config.yaml"
    else:
        system = Path("/etc/tokmesh-server/config.yaml")
    xdg = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return [system, cwd / "config.yaml", Path(xdg) / "tokmesh-server" / "config.yaml"]


# ============================================================================ coercion


def _as_written(raw: Any) -> Any:
    """A value that failed to coerce, for an error message.

    Numbers are shown as written, not formatted as the key's unit (``7200`` given for a
    duration is not 2h, and ``.nan`` has no duration form); lists and mappings are elided,
    since YAML aliases can make a small file print as gigabytes.
    """
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return str(raw)
    if isinstance(raw, list):
        return "[...]"
    if isinstance(raw, dict):
        return "{...}"
    return raw


def _issue(spec: KeySpec, key: str, err: ConfigValueError, raw: Any, label: str) -> ConfigIssue:
    return issue_for_key(
        key, err.code, err.problem, err.expected, value=_as_written(raw), file_label=label
    )


#: Go's ``time.ParseDuration`` refuses what int64 nanoseconds cannot hold (~292 years).
_MAX_DURATION_SECONDS = (2**63 - 1) / 1e9


def _checked(spec: KeySpec, value: Any) -> Any:
    """``value`` if the rest of TokMesh can use it, else :class:`ConfigValueError`.

    Numbers must be finite, durations within Go's range (so every duration can be shown
    in its unit), and text must hold no NUL character (no path, address or name can).
    """
    if isinstance(value, float):
        if math.isnan(value):
            raise _type_error("a number")
        if math.isinf(value) or (spec.kind is Kind.DURATION and abs(value) > _MAX_DURATION_SECONDS):
            raise ConfigValueError(E.CFG_RANGE, "number out of range", spec.range_text)
    texts = value if isinstance(value, tuple) else (value,)
    if any(isinstance(text, str) and "\x00" in text for text in texts):
        raise ConfigValueError(
            E.CFG_TYPE, "text contains a NUL character", "text without NUL characters"
        )
    return value


def _type_error(expected: str) -> ConfigValueError:
    return ConfigValueError(E.CFG_TYPE, f"expected {expected}", expected)


def _coerce_scalar_file(spec: KeySpec, raw: Any) -> Any:
    """Type-check one YAML scalar against its key; raise :class:`ConfigValueError`."""
    kind = spec.kind
    if kind is Kind.BOOL:
        if not isinstance(raw, bool):
            raise _type_error("a bool (true or false)")
        return raw
    if kind is Kind.INT:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise _type_error("an integer")
        return raw
    if kind is Kind.FLOAT:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise _type_error("a number")
        return float(raw)
    if kind is Kind.DURATION:
        if isinstance(raw, int) and not isinstance(raw, bool) and raw == 0:
            return 0.0
        if not isinstance(raw, str):
            raise ConfigValueError(
                E.CFG_TYPE,
                "a bare number is not a duration; add a unit",
                'Go duration such as "100ms", "30s", "2h"',
            )
        return parse_duration(raw)
    if kind is Kind.SIZE:
        return parse_size(raw)
    if kind is Kind.RATE:
        return parse_rate(raw)
    # String-like kinds: str, enum, path, secret, url, addr.
    if not isinstance(raw, str):
        raise _type_error("a string (quote the value)")
    return raw.strip().lower() if kind is Kind.ENUM else raw


def _coerce_file(
    spec: KeySpec, raw: Any, label: str, errors: list[ConfigIssue]
) -> tuple[bool, Any]:
    """Coerce a YAML value; on failure record an issue and return ``(False, None)``."""
    if spec.kind in (Kind.STR_LIST, Kind.ADDR_LIST):
        if not isinstance(raw, list):
            errors.append(
                issue_for_key(
                    spec.name,
                    E.CFG_TYPE,
                    "expected a YAML list",
                    "a list such as [a, b]",
                    value=_as_written(raw),
                    file_label=label,
                )
            )
            return False, None
        items: list[str] = []
        ok = True
        for i, item in enumerate(raw):
            if not isinstance(item, str):
                errors.append(
                    issue_for_key(
                        f"{spec.name}[{i}]",
                        E.CFG_TYPE,
                        "list item must be a string",
                        spec.range_text or "a string",
                        value=_as_written(item),
                        file_label=label,
                    )
                )
                ok = False
            else:
                items.append(item.strip())
        if not ok:
            return False, None
        try:
            return True, _checked(spec, tuple(items))
        except ConfigValueError as err:
            errors.append(_issue(spec, spec.name, err, raw, label))
            return False, None
    try:
        return True, _checked(spec, _coerce_scalar_file(spec, raw))
    except ConfigValueError as err:
        errors.append(_issue(spec, spec.name, err, raw, label))
        return False, None


def _coerce_text(spec: KeySpec, text: str) -> Any:
    """Parse env/flag text by the key's type (05 §2.4); raise :class:`ConfigValueError`."""
    return _checked(spec, _parse_text(spec, text))


def _parse_text(spec: KeySpec, text: str) -> Any:
    kind = spec.kind
    if kind is Kind.BOOL:
        return parse_bool_text(text)
    if kind is Kind.INT:
        return parse_int_text(text)
    if kind is Kind.FLOAT:
        return parse_float_text(text)
    if kind is Kind.DURATION:
        return parse_duration(text)
    if kind is Kind.SIZE:
        return parse_size(text)
    if kind is Kind.RATE:
        return parse_rate(text)
    if kind in (Kind.STR_LIST, Kind.ADDR_LIST):
        return tuple(parse_list_text(text))
    if kind is Kind.ENUM:
        return text.strip().lower()
    return text


def flag_name(key: str) -> str:
    """The command-line form of a flag key: ``cluster.node_id`` -> ``--cluster.node-id``."""
    return "--" + key.replace("_", "-")


def _flag_key(name: str) -> str:
    key = name.lstrip("-").replace("-", "_")
    if key not in FLAG_KEYS:
        raise KeyError(name)
    return key


def parse_flag_value(name: str, text: str) -> Any:
    """Parse one server flag (``--cluster.enabled``, ``storage.wal.dir`` ...) by its type.

    For the CLI entry point: raise ``KeyError`` for a name that is not one of the 14 flags
    and :class:`ConfigValueError` for a malformed value, so it can answer a usage error.
    """
    return _coerce_text(KEYS[_flag_key(name)], text)


# ============================================================================ YAML layers


def _read_yaml(path: Path, label: str, errors: list[ConfigIssue]) -> Mapping[str, Any] | None:
    """Read and parse one YAML file; ``None`` (with an issue) if it cannot be used."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        errors.append(_file_issue(label, E.CFG_FILE_MISSING, "configuration file does not exist"))
        return None
    except PermissionError:
        errors.append(_file_issue(label, E.CFG_PERMISSION, "configuration file is not readable"))
        return None
    except IsADirectoryError:
        errors.append(_file_issue(label, E.CFG_TYPE, "configuration path is a directory"))
        return None
    except OSError as exc:
        errors.append(
            _file_issue(label, E.CFG_PERMISSION, f"cannot read configuration file: {exc.strerror}")
        )
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        errors.append(_file_issue(label, E.CFG_TYPE, "configuration file is not UTF-8 text"))
        return None
    return _parse_yaml(text, label, errors)


def _parse_yaml(text: str, label: str, errors: list[ConfigIssue]) -> Mapping[str, Any] | None:
    try:
        tree = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        ctx_mark = exc.context_mark
        if mark is not None and ctx_mark is not None and ctx_mark.line != mark.line:
            # An unclosed bracket is reported at the end of the file: name its start too.
            where += f" ({exc.context or 'node'} started at line {ctx_mark.line + 1})"
        # Only the parser's own words: the offending line may hold a secret.
        what = exc.problem or exc.context or "invalid YAML"
        errors.append(_file_issue(label, E.CFG_TYPE, f"YAML syntax error{where}: {what}"))
        return None
    except yaml.YAMLError:
        errors.append(_file_issue(label, E.CFG_TYPE, "YAML syntax error"))
        return None
    except ValueError:
        # PyYAML's constructors raise it for a value of the right shape that cannot
        # exist, such as the date 2001-02-30 or "!!int abc".
        errors.append(_file_issue(label, E.CFG_TYPE, "YAML value cannot be converted"))
        return None
    except RecursionError:
        errors.append(_file_issue(label, E.CFG_TYPE, "YAML nested too deeply"))
        return None
    if tree is None:
        return {}  # an empty file is an empty mapping
    if not isinstance(tree, dict):
        errors.append(
            _file_issue(label, E.CFG_TYPE, "top level of the configuration must be a mapping")
        )
        return None
    return tree


def _file_issue(label: str, code: Any, problem: str) -> ConfigIssue:
    return ConfigIssue(
        key=label,
        code=code,
        problem=problem,
        expected="a readable YAML mapping",
        value=None,
        solution=f"fix or remove {label}",
    )


def _flatten(
    tree: Mapping[Any, Any],
    prefix: str,
    label: str,
    out: dict[str, Any],
    warnings: list[str],
    errors: list[ConfigIssue],
) -> None:
    """Walk a YAML mapping into dotted raw values; unknown keys WARN (D21)."""
    for raw_key, value in tree.items():
        part = raw_key if isinstance(raw_key, str) else str(raw_key)
        name = f"{prefix}{part}"
        if name in KEYS:
            if isinstance(value, dict):
                errors.append(
                    issue_for_key(
                        name,
                        E.CFG_TYPE,
                        "expected a value, found a mapping",
                        value="{...}",
                        show_value=False,
                        file_label=label,
                    )
                )
            elif value is not None:  # "key:" with nothing after it = not set
                out[name] = value
        elif name in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                errors.append(
                    ConfigIssue(
                        key=name,
                        code=E.CFG_TYPE,
                        problem="expected a mapping (section)",
                        expected=f"nested keys under {name}",
                        value=None,
                        solution=f"fix {label}",
                    )
                )
                continue
            _flatten(value, name + ".", label, out, warnings, errors)
        else:
            warnings.append(f"unknown configuration key '{name}' in {label} (ignored)")


def _apply_tree(
    tree: Mapping[str, Any],
    label: str,
    origin: str,
    values: dict[str, Any],
    origins: dict[str, str],
    warnings: list[str],
    errors: list[ConfigIssue],
) -> None:
    raw: dict[str, Any] = {}
    _flatten(tree, "", label, raw, warnings, errors)
    for name, value in raw.items():
        ok, coerced = _coerce_file(KEYS[name], value, label, errors)
        if ok:
            values[name] = coerced
            origins[name] = origin


# ============================================================================ env and flags


def _apply_env(
    env: Mapping[str, str],
    values: dict[str, Any],
    origins: dict[str, str],
    warnings: list[str],
) -> list[str]:
    applied: list[str] = []
    for name in sorted(env):
        if not name.startswith("TOKMESH_") or name in SILENT_ENV:
            continue
        key = ENV_TO_KEY.get(name)
        if key is None:
            if name in LEGACY_ENV_HINTS:
                hint = LEGACY_ENV_HINTS[name]
                if hint is None:
                    warnings.append(
                        f"ignoring {name}: not a TokMesh setting (logs are always JSON)"
                    )
                else:
                    warnings.append(f"ignoring {name}: legacy name, use {hint}")
            else:
                warnings.append(f"ignoring {name}: unknown TOKMESH_ variable")
            continue
        spec = KEYS[key]
        try:
            values[key] = _coerce_text(spec, env[name])
        except ConfigValueError:
            # Never the value: it may be a secret (05 §2.4).
            warnings.append(f"ignoring {name}: invalid {spec.kind.value}")
            continue
        origins[key] = "env"
        applied.append(name)
    return applied


def _apply_flags(
    flags: Mapping[str, str],
    values: dict[str, Any],
    origins: dict[str, str],
    errors: list[ConfigIssue],
) -> list[str]:
    applied: list[str] = []
    for name, text in flags.items():
        if name.lstrip("-") == "config":
            continue
        try:
            key = _flag_key(name)
        except KeyError:
            errors.append(
                ConfigIssue(
                    key=name,
                    code=E.CFG_TYPE,
                    problem="unknown server flag",
                    expected=", ".join(flag_name(k) for k in FLAG_KEYS),
                    solution="run tokmesh-server --help",
                )
            )
            continue
        spec = KEYS[key]
        try:
            values[key] = _coerce_text(spec, text)
        except ConfigValueError as err:
            errors.append(
                issue_for_key(
                    key,
                    err.code,
                    err.problem,
                    err.expected,
                    value=text,
                    solution=f"fix {flag_name(key)}",
                )
            )
            continue
        origins[key] = "flag"
        applied.append(flag_name(key))
    return applied


# ============================================================================ paths


def _resolve_paths(values: dict[str, Any], base: Path) -> None:
    """05 §2.7: resolve relative path keys against ``base``; ``""`` stays ``""``."""
    for key in PATH_KEYS:
        value = values.get(key, KEYS[key].default)
        if isinstance(value, str) and value and not os.path.isabs(value):
            values[key] = os.path.normpath(os.path.join(base, value))


# ============================================================================ entry points


def _discover(
    config_path: str | None,
    env: Mapping[str, str],
    cwd: Path,
    search_paths: Sequence[Path] | None,
    warnings: list[str],
    errors: list[ConfigIssue],
) -> Path | None:
    explicit = config_path or None
    via = "--config"
    if explicit is None and env.get(CONFIG_FILE_ENV):
        explicit, via = env[CONFIG_FILE_ENV], CONFIG_FILE_ENV
    if explicit is not None:
        path = Path(explicit)
        path = path if path.is_absolute() else cwd / path
        if not path.exists():
            errors.append(
                ConfigIssue(
                    key=str(path),
                    code=E.CFG_FILE_MISSING,
                    problem=f"configuration file given by {via} does not exist",
                    expected="an existing YAML file",
                    solution=f"create the file or fix {via}",
                )
            )
            return None
        return path
    for candidate in search_paths if search_paths is not None else default_search_paths(cwd, env):
        candidate = candidate if candidate.is_absolute() else cwd / candidate
        if candidate.is_file() or (candidate.exists() and not candidate.is_dir()):
            return candidate
    warnings.append(NO_FILE_WARNING)
    return None


def load_config(
    config_path: str | None,
    env: Mapping[str, str],
    flags: Mapping[str, str],
    cwd: Path,
    *,
    search_paths: Sequence[Path] | None = None,
) -> LoadResult:
    """Discover, read, merge and type-check the configuration (05 §2).

    ``config_path`` is ``--config`` (``None`` when absent); ``env`` is the process
    environment; ``flags`` maps flag names (``server.http.address`` or
    ``--cluster.node-id``) to their text (``"true"`` for a bare bool flag); ``cwd`` is the
    working directory. ``search_paths`` replaces the automatic search list (tests).
    """
    warnings: list[str] = []
    errors: list[ConfigIssue] = []
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    fragments: list[str] = []

    main = _discover(config_path, env, cwd, search_paths, warnings, errors)
    file_label = "config.yaml"
    if main is not None:
        main = Path(os.path.abspath(main))
        file_label = str(main)
        tree = _read_yaml(main, file_label, errors)
        if tree is not None:
            _apply_tree(tree, file_label, "file", values, origins, warnings, errors)
        fragment_dir = main.parent / "config.d"
        if fragment_dir.is_dir():
            for frag in sorted(fragment_dir.iterdir(), key=lambda p: p.name):
                if frag.suffix != ".yaml" or not frag.is_file():
                    continue
                fragments.append(str(frag))
                frag_tree = _read_yaml(frag, str(frag), errors)
                if frag_tree is not None:
                    _apply_tree(frag_tree, str(frag), "fragment", values, origins, warnings, errors)

    env_applied = _apply_env(env, values, origins, warnings)
    cli_applied = _apply_flags(flags, values, origins, errors)

    base = main.parent if main is not None else cwd
    _resolve_paths(values, base)
    source = ConfigSource(
        file=str(main) if main is not None else None,
        fragments=tuple(fragments),
        env_overrides=tuple(env_applied),
        cli_overrides=tuple(cli_applied),
        base_dir=str(base),
    )
    return LoadResult(
        config=build_config(values),
        source=source,
        warnings=warnings,
        errors=errors,
        origins=origins,
    )


def load_yaml_text(text: str, *, base_dir: Path, label: str = "config_yaml") -> LoadResult:
    """Load a configuration from YAML text alone (no env, flags or fragments).

    For ``POST /admin/v1/config/validate`` and ``tokmesh-cli config server test``: relative
    paths resolve against ``base_dir`` (the running server's config directory).
    """
    warnings: list[str] = []
    errors: list[ConfigIssue] = []
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    tree = _parse_yaml(text, label, errors)
    if tree is not None:
        _apply_tree(tree, label, "file", values, origins, warnings, errors)
    _resolve_paths(values, base_dir)
    return LoadResult(
        config=build_config(values),
        source=ConfigSource(file=None, base_dir=str(base_dir)),
        warnings=warnings,
        errors=errors,
        origins=origins,
    )
