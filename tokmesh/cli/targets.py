"""Target strings and what they resolve to (06 §4.1, §4.2).

``http(s)://`` → URL (default ports 5080 / 5443); ``socket:<path>`` → Unix socket; a
configured alias (a configured ``local`` beats the built-in); the literal ``local`` → the
built-in socket, which is a list of sockets tried in the order the server tries to bind
them; anything else is ``unknown target`` (64).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from tokmesh.cli.cliconfig import CliConfig, TargetEntry, builtin_local, check_url
from tokmesh.cli.errors import usage_error

HTTP_PORT = 5080
HTTPS_PORT = 5443


@dataclass
class Endpoint:
    """A resolved target: an HTTP(S) base URL or a Unix socket path."""

    kind: str  # "http" or "socket"
    address: str  # "http(s)://host:port" or the socket path
    alias: str | None = None
    #: further socket paths tried in order when ``address`` does not answer
    fallbacks: tuple[str, ...] = ()
    api_key: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def is_socket(self) -> bool:
        """True for ``local`` / ``socket:<path>`` targets."""
        return self.kind == "socket"

    @property
    def host(self) -> str:
        """The host of an HTTP(S) target (``""`` for sockets)."""
        return urlsplit(self.address).hostname or "" if not self.is_socket else ""

    @property
    def host_port(self) -> str:
        """``host:port`` of an HTTP(S) target, the path of a socket."""
        if self.is_socket:
            return self.address
        return self.address.split("://", 1)[1]

    @property
    def display(self) -> str:
        """The URL, or ``socket:<path>``."""
        return f"socket:{self.address}" if self.is_socket else self.address

    @property
    def label(self) -> str:
        """Alias (incl. ``local``), else ``host:port`` / socket path (06 §4.4)."""
        return self.alias or self.host_port


def normalize_url(url: str) -> str:
    """``scheme://host:port`` with the default port filled in (5080 / 5443)."""
    parts = urlsplit(url)
    port = parts.port or (HTTPS_PORT if parts.scheme == "https" else HTTP_PORT)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


def from_entry(entry: TargetEntry) -> Endpoint:
    """The endpoint of a configured alias."""
    if entry.url:
        return Endpoint(
            "http",
            normalize_url(entry.url),
            alias=entry.name,
            api_key=entry.api_key,
            ca_file=entry.ca_file,
            cert_file=entry.cert_file,
            key_file=entry.key_file,
        )
    return Endpoint("socket", str(entry.socket), alias=entry.name, fallbacks=entry.fallbacks)


def resolve(text: str, cfg: CliConfig | None) -> Endpoint:
    """Parse a target string in the order of 06 §4.2; unknown → usage error (64)."""
    t = text.strip()
    if t.startswith(("http://", "https://")):
        problem = check_url(t)
        if problem:
            raise usage_error(f"invalid target URL: {problem}")
        return Endpoint("http", normalize_url(t))
    if t.startswith("socket:"):
        path = t[len("socket:") :]
        if not path:
            raise usage_error("socket target needs a path: socket:<path>")
        return Endpoint("socket", path)
    if cfg is not None and t in cfg.targets:
        return from_entry(cfg.targets[t])
    if t == "local":
        return from_entry(builtin_local())
    lines = []
    if cfg is not None and cfg.targets:
        lines.append("Configured targets: " + ", ".join(cfg.targets))
    raise usage_error(f"unknown target: {t}", extra_lines=lines)


def targets_listing(cfg: CliConfig | None) -> list[str]:
    """``  - prod     (https://…)`` lines, one per configured target (06 §5)."""
    if cfg is None or not cfg.targets:
        return []
    out = ["Available targets from config:"]
    for name, entry in cfg.targets.items():
        out.append(f"  - {name:<8} ({entry.address})")
    return out
