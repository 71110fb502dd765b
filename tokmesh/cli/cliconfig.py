"""The CLI config file (06 §3): where it is, what it may contain, and its defaults.

Files are never merged: the first existing file of the search list is used. An explicit
path (``-c`` or ``$TOKMESH_CLI_CONFIG``) that is missing or invalid is ``TM-CLI-1001``
(exit 78); with no file at all the built-in ``default: local`` applies.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tokmesh.api.local_socket_path import local_target_candidates
from tokmesh.cli.durations import parse_duration_ms
from tokmesh.cli.errors import config_error

SYSTEM_CONFIG = "/etc/tokmesh-cli/cli.yaml"
OUTPUT_FORMATS = ("table", "json", "yaml", "wide")
DEFAULT_TIMEOUT_MS = 30_000

_TOP_KEYS = {"default", "targets", "defaults"}
_TARGET_KEYS = {"socket", "url", "api_key", "tls"}
_TLS_KEYS = {"ca_file", "cert_file", "key_file"}
_DEFAULTS_KEYS = {"output", "timeout", "no_color", "color_enabled"}


@dataclass
class TargetEntry:
    """One ``targets.<name>`` entry: exactly one of ``socket`` / ``url``."""

    name: str
    url: str | None = None
    socket: str | None = None
    #: sockets tried in order when ``socket`` does not answer (the built-in ``local`` only)
    fallbacks: tuple[str, ...] = ()
    api_key: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def address(self) -> str:
        """The URL, or ``socket:<path>``, as lists of targets show it."""
        return self.url if self.url else f"socket:{self.socket}"


@dataclass
class CliConfig:
    """A loaded (or built-in) CLI configuration."""

    path: str | None
    default: str = ""
    targets: dict[str, TargetEntry] = field(default_factory=dict)
    output: str = "table"
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    no_color: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_display(self) -> dict[str, Any]:
        """The config as ``config cli show`` prints it; every ``api_key`` redacted."""
        targets: dict[str, Any] = {}
        for name, t in self.targets.items():
            entry: dict[str, Any] = {"url": t.url} if t.url else {"socket": t.socket}
            if t.api_key:
                entry["api_key"] = "***REDACTED***"
            tls = {
                k: v
                for k, v in (
                    ("ca_file", t.ca_file),
                    ("cert_file", t.cert_file),
                    ("key_file", t.key_file),
                )
                if v
            }
            if tls:
                entry["tls"] = tls
            targets[name] = entry
        return {
            "default": self.default,
            "targets": targets,
            "defaults": {
                "output": self.output,
                "timeout": _format_ms(self.timeout_ms),
                "no_color": self.no_color,
            },
        }


def builtin_local(env: Mapping[str, str] | None = None) -> TargetEntry:
    """The built-in ``local`` target: the sockets a node without a configuration file
    would bind, in the order it tries them (its data directory ``./data`` taken relative
    to the current directory; the server's socket and WAL variables in ``env`` apply)."""
    first, *rest = local_target_candidates(os.environ if env is None else env, Path.cwd())
    return TargetEntry("local", socket=str(first), fallbacks=tuple(str(p) for p in rest))


def builtin_config(env: Mapping[str, str] | None = None) -> CliConfig:
    """The configuration used when no file exists (06 §3.1)."""
    return CliConfig(path=None, default="local", targets={"local": builtin_local(env)})


def search_paths(env: Mapping[str, str]) -> list[Path]:
    """The automatic search list (after ``$TOKMESH_CLI_CONFIG``), first match wins."""
    home = Path(env.get("HOME") or os.path.expanduser("~"))
    if sys.platform == "win32":  # pragma: no cover - Linux CI
        appdata = env.get("APPDATA")
        return [Path(appdata) / "tokmesh-cli" / "cli.yaml"] if appdata else []
    xdg = env.get("XDG_CONFIG_HOME") or str(home / ".config")
    return [
        Path(xdg) / "tokmesh-cli" / "cli.yaml",
        home / ".tokmesh" / "cli.yaml",
        Path(SYSTEM_CONFIG),
    ]


def locate(explicit: str | None, env: Mapping[str, str]) -> tuple[Path | None, bool]:
    """(path, is_explicit): ``-c`` > ``$TOKMESH_CLI_CONFIG`` > the first existing file."""
    chosen = explicit or env.get("TOKMESH_CLI_CONFIG") or None
    if chosen:
        return Path(os.path.expanduser(chosen)), True
    for p in search_paths(env):
        if p.is_file():
            return p, False
    return None, False


def permission_warning(path: Path) -> list[str]:
    """The two warning lines for a group/world-readable file (Unix), else ``[]``."""
    if sys.platform == "win32":  # pragma: no cover
        return []
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return []
    if mode & 0o044:
        return [
            f"Warning: Config file {path} has insecure permissions ({mode:04o}).",
            f"         Recommended: chmod 600 {path}",
        ]
    return []


def load(explicit: str | None, env: Mapping[str, str]) -> CliConfig:
    """Locate and load the config; ``CliError`` 78 when invalid or missing at an explicit path.

    Permission warnings and unknown-key warnings are returned in ``warnings`` for the
    caller to print on stderr.
    """
    path, is_explicit = locate(explicit, env)
    if path is None:
        return builtin_config(env)
    if not path.is_file():
        if is_explicit:
            raise config_error(f"config file not found: {path}")
        return builtin_config(env)
    cfg, errors = load_file(path)
    if errors:
        raise config_error(f"invalid config file {path}: {errors[0]}", details={"errors": errors})
    return cfg


def load_file(path: Path) -> tuple[CliConfig, list[str]]:
    """Read and check one file: (config, errors). Warnings are in ``config.warnings``."""
    import yaml

    warnings = permission_warning(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return CliConfig(path=str(path), warnings=warnings), [f"cannot read: {exc.strerror}"]
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        return CliConfig(path=str(path), warnings=warnings), [f"YAML syntax error{where}"]
    if tree is None:
        tree = {}
    cfg, errors = parse_tree(tree, path)
    cfg.warnings[:0] = warnings
    return cfg, errors


def parse_tree(tree: Any, path: Path) -> tuple[CliConfig, list[str]]:
    """Apply the rules of 06 §3.2 to a parsed YAML document: (config, errors)."""
    cfg = CliConfig(path=str(path))
    errors: list[str] = []
    if not isinstance(tree, dict):
        return cfg, ["the file must contain a mapping"]
    for key in tree:
        if key not in _TOP_KEYS:
            cfg.warnings.append(f"Warning: unknown key '{key}' in {path}")
    default = tree.get("default", "")
    if default is None:
        default = ""
    if not isinstance(default, str):
        errors.append("default: must be a string naming a target")
        default = ""
    cfg.default = default
    _parse_targets(tree.get("targets"), path, cfg, errors)
    _parse_defaults(tree.get("defaults"), path, cfg, errors)
    if cfg.default and cfg.default not in cfg.targets:
        errors.append(f"default: names an undefined target '{cfg.default}'")
    return cfg, errors


def _parse_targets(raw: Any, path: Path, cfg: CliConfig, errors: list[str]) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        errors.append("targets: must be a mapping of name -> target")
        return
    base = path.parent
    for name, entry in raw.items():
        name = str(name)
        where = f"targets.{name}"
        if not isinstance(entry, dict):
            errors.append(f"{where}: must be a mapping with 'url' or 'socket'")
            continue
        for key in entry:
            if key not in _TARGET_KEYS:
                cfg.warnings.append(f"Warning: unknown key '{where}.{key}' in {path}")
        url, sock = entry.get("url"), entry.get("socket")
        if (url is None) == (sock is None):
            errors.append(f"{where}: exactly one of 'url' or 'socket' is required")
            continue
        t = TargetEntry(name)
        if url is not None:
            problem = check_url(url)
            if problem:
                errors.append(f"{where}.url: {problem}")
                continue
            t.url = str(url).rstrip("/")
        else:
            if not isinstance(sock, str) or not sock:
                errors.append(f"{where}.socket: must be a non-empty path")
                continue
            t.socket = sock
        key = entry.get("api_key")
        if key is not None:
            if not isinstance(key, str):
                errors.append(f"{where}.api_key: must be a string '<key_id>:<key_secret>'")
                continue
            t.api_key = key
        tls = entry.get("tls")
        if tls is not None:
            if not isinstance(tls, dict):
                errors.append(f"{where}.tls: must be a mapping")
                continue
            for key in tls:
                if key not in _TLS_KEYS:
                    cfg.warnings.append(f"Warning: unknown key '{where}.tls.{key}' in {path}")
            for key in _TLS_KEYS:
                val = tls.get(key)
                if val is not None:
                    resolved = val if os.path.isabs(str(val)) else str(base / str(val))
                    setattr(t, key, resolved)
            if (t.cert_file is None) != (t.key_file is None):
                errors.append(f"{where}.tls: cert_file and key_file must be given together")
                continue
            if not (t.url or "").startswith("https://"):
                cfg.warnings.append(
                    f"Warning: {where}.tls is ignored: the target is not an HTTPS target"
                )
        cfg.targets[name] = t


def _parse_defaults(raw: Any, path: Path, cfg: CliConfig, errors: list[str]) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        errors.append("defaults: must be a mapping")
        return
    for key in raw:
        if key not in _DEFAULTS_KEYS:
            cfg.warnings.append(f"Warning: unknown key 'defaults.{key}' in {path}")
    out = raw.get("output")
    if out is not None:
        if out not in OUTPUT_FORMATS:
            errors.append(f"defaults.output: must be one of {', '.join(OUTPUT_FORMATS)}")
        else:
            cfg.output = out
    timeout = raw.get("timeout")
    if timeout is not None:
        try:
            cfg.timeout_ms = parse_duration_ms(str(timeout))
        except ValueError as exc:
            errors.append(f"defaults.timeout: {exc}")
    no_color, color_enabled = raw.get("no_color"), raw.get("color_enabled")
    for key, val in (("no_color", no_color), ("color_enabled", color_enabled)):
        if val is not None and not isinstance(val, bool):
            errors.append(f"defaults.{key}: must be true or false")
    if isinstance(color_enabled, bool):
        cfg.no_color = not color_enabled
    if isinstance(no_color, bool):
        if isinstance(color_enabled, bool) and color_enabled == no_color:
            cfg.warnings.append(
                "Warning: defaults.no_color and defaults.color_enabled disagree; no_color wins"
            )
        cfg.no_color = no_color


def check_url(url: Any) -> str | None:
    """Why ``url`` is not ``http(s)://host[:port]``, or ``None`` when it is."""
    if not isinstance(url, str) or not url:
        return "must be http(s)://host[:port]"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be http(s)://host[:port], got {url!r}"
    try:
        _ = parts.port
    except ValueError:
        return f"invalid port in {url!r}"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"must not have a path or query: {url!r}"
    return None


def _format_ms(ms: int) -> str:
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000}h"
    if ms % 60_000 == 0:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"
