"""Connections to a node (06 §4.3, §4.4): credentials, verification, the REPL's state.

Direct mode resolves the target of each command, runs it and closes; the REPL keeps one
:class:`Connection` (``connect``/``use``/auto-connect) that commands reuse.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tokmesh.cli.errors import CliError, usage_error
from tokmesh.cli.state import CliState, Options, stdin_is_tty
from tokmesh.cli.targets import Endpoint, resolve, targets_listing
from tokmesh.cli.transport import HttpClient, SocketClient

STATUS_PATH = "/admin/v1/status/summary"


def parse_api_key(raw: str) -> str:
    """``key_id:key_secret`` with the ``tmak-`` ID lower-cased; 64 when malformed."""
    key_id, sep, secret = raw.strip().partition(":")
    if not sep or not key_id or not secret:
        raise usage_error("invalid API key format (expected key_id:key_secret)")
    return f"{key_id.lower()}:{secret}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Connection:
    """One endpoint with its credentials and (when verified) its node information."""

    def __init__(self, endpoint: Endpoint, api_key: str | None, opts: Options) -> None:
        self.endpoint = endpoint
        self.api_key = api_key
        self.http: HttpClient | None = None
        self.socket: SocketClient | None = None
        if endpoint.is_socket:
            self.socket = SocketClient(
                endpoint.address, timeout_s=opts.timeout_s, fallbacks=endpoint.fallbacks
            )
        else:
            self.http = HttpClient(
                endpoint,
                api_key,
                timeout_s=opts.timeout_s,
                tls_ca=opts.tls_ca,
                verbose=opts.verbose,
            )
        #: ``GET /admin/v1/status/summary`` data once verified (``None`` if forbidden)
        self.info: dict[str, Any] | None = None

    @property
    def address(self) -> str:
        """The URL, or ``socket:<path>`` of the socket that answered (for ``local``, the
        candidate in use once a command went through)."""
        if self.socket is not None:
            return f"socket:{self.socket.path}"
        return self.endpoint.display

    @property
    def label(self) -> str:
        """Alias (incl. ``local``) → ``node_id`` → ``host:port`` / socket path."""
        if self.endpoint.alias:
            return self.endpoint.alias
        if self.info and self.info.get("node_id"):
            return str(self.info["node_id"])
        return self.endpoint.host_port

    async def summary(self) -> dict[str, Any] | None:
        """Status summary; ``None`` on 403 (a non-admin key). 401 and network errors raise."""
        if self.socket is not None:
            data = await self.socket.command("STATUS")
            return dict(data)
        assert self.http is not None
        try:
            data = await self.http.call("GET", STATUS_PATH)
        except CliError as exc:
            if exc.code in ("TM-ADMIN-4030", "TM-AUTH-4030", "TM-ADMIN-4031"):
                return None
            raise
        return dict(data)

    async def verify(self) -> None:
        """The REPL's verification: fetch node information (403 tolerated)."""
        self.info = await self.summary()

    def info_lines(self, uptime: bool = False) -> list[str]:
        """``  Address:`` / ``  Version:`` (/ ``  Uptime:``) lines for connect and status."""
        from tokmesh.cli.output import format_duration

        lines = [f"  Address:  {self.address}"]
        if self.info:
            if self.info.get("version"):
                lines.append(f"  Version:  {self.info['version']}")
            if uptime and isinstance(self.info.get("uptime_seconds"), int | float):
                lines.append(f"  Uptime:   {format_duration(self.info['uptime_seconds'])}")
        return lines

    async def aclose(self) -> None:
        """Release the HTTP connection pool."""
        if self.http is not None:
            await self.http.aclose()


async def credentials(
    state: CliState, endpoint: Endpoint, opts: Options, *, prompt: bool = True
) -> str | None:
    """The API key for ``endpoint``: -k/env → config ``api_key`` → prompt (TTY) → 64."""
    if endpoint.is_socket:
        if state.flag("api_key"):
            print("Warning: --api-key is ignored for socket targets", file=sys.stderr)
        return None
    raw = opts.api_key or endpoint.api_key
    if not raw and prompt and stdin_is_tty():
        from tokmesh.cli.prompts import ask_secret

        raw = await ask_secret(state, "API Key: ")
    if not raw:
        raise usage_error(
            "API key required for HTTP(S) target",
            suggestion="Pass -k <key_id>:<key_secret> or set TOKMESH_API_KEY.",
        )
    key = parse_api_key(raw)
    if endpoint.address.startswith("http://") and not _is_loopback(endpoint.host):
        print(
            f"Warning: sending API key over unencrypted HTTP to {endpoint.host}",
            file=sys.stderr,
        )
    return key


def not_connected(state: CliState) -> CliError:
    """``Error: Not connected.`` with the configured targets (06 §5)."""
    try:
        cfg = state.config()
    except CliError:
        cfg = None
    listing = targets_listing(cfg)
    extra = ["Use 'connect <target>' to connect to a node first."]
    if listing:
        extra += ["", *listing]
    return usage_error("Not connected.", extra_lines=extra)


def socket_unavailable(command: str) -> CliError:
    """A remote command other than the socket's own over a socket target (64)."""
    return usage_error(f"'{command}' is not available over the local socket; use an HTTP(S) target")


@asynccontextmanager
async def remote(
    state: CliState,
    command: str,
    *,
    socket_ok: bool = False,
    need_key: bool = True,
    target: str | None = None,
) -> AsyncIterator[Connection]:
    """The connection a remote command runs on (the REPL's, or a fresh one it then closes).

    ``target`` forces a target string (``create-emergency --local``).
    """
    cfg = state.config()
    opts = state.options(cfg)
    line_target = target or (
        state.flag("target") if state.flag("target") != state.base_flags.get("target") else None
    )
    if state.in_repl and not line_target:
        conn = state.connection
        if conn is None:
            raise not_connected(state)
        if conn.endpoint.is_socket and not socket_ok:
            raise socket_unavailable(command)
        yield conn
        return
    text = line_target or opts.target or (cfg.default or None)
    if not text:
        listing = targets_listing(cfg)
        raise usage_error(
            "no target specified",
            suggestion="Pass -t <target> (URL, alias, local or socket:<path>) "
            "or set TOKMESH_TARGET.",
            extra_lines=listing,
        )
    endpoint = resolve(text, cfg)
    if endpoint.is_socket and not socket_ok:
        raise socket_unavailable(command)
    key = await credentials(state, endpoint, opts) if need_key else None
    conn = Connection(endpoint, key, opts)
    try:
        yield conn
    finally:
        await conn.aclose()
