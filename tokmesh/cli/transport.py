"""Talking to a node: HTTP(S) through httpx, and the local admin socket line protocol.

Every request carries ``User-Agent: tokmesh-cli/<v>`` and ``Accept: application/json``;
HTTP(S) requests carry ``Authorization: Bearer <id>:<secret>`` (never on ``/health`` or
``/ready``); POSTs add ``X-Timestamp`` (Unix ms) and ``X-Nonce`` (ruling R2). No retries;
the timeout is per request. Failures become :class:`~tokmesh.cli.errors.CliError` with the
exit codes of 06 §4.3 / §8.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import secrets
import ssl
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from tokmesh.cli.errors import (
    EXIT_GENERAL,
    CliError,
    timeout_error,
    tls_error,
    unreachable_error,
)
from tokmesh.cli.targets import Endpoint
from tokmesh.cli.version import USER_AGENT

#: Messages the CLI prints for well-known server codes (06 §9.3).
_ROLE_SUGGESTION = "This operation requires role={role}"


def error_from_envelope(status: int, doc: Any, path: str = "") -> CliError:
    """The :class:`CliError` for an HTTP status >= 400 (or a socket reply with code != OK)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("code"), str):
        return CliError(f"request failed with status {status}", exit_code=EXIT_GENERAL)
    code = doc["code"]
    details = doc.get("details") if isinstance(doc.get("details"), dict) else None
    suggestion = None
    if status == 403 and code in ("TM-AUTH-4030", "TM-ADMIN-4030"):
        role = (details or {}).get("required_role") or (
            "admin" if path.startswith("/admin/") else "issuer"
        )
        suggestion = _ROLE_SUGGESTION.format(role=role)
    elif status == 401 and code.startswith("TM-AUTH-"):
        suggestion = "Check the API key (-k key_id:key_secret or TOKMESH_API_KEY)."
    return CliError(
        str(doc.get("message") or code),
        code=code,
        exit_code=EXIT_GENERAL,
        details=details,
        suggestion=suggestion,
        request_id=doc.get("request_id"),
    )


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError | ssl.CertificateError):
            return True
        if "[SSL" in str(seen) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class HttpClient:
    """An httpx client bound to one HTTP(S) endpoint and one API key."""

    def __init__(
        self,
        endpoint: Endpoint,
        api_key: str | None,
        *,
        timeout_s: float,
        tls_ca: str | None = None,
        verbose: bool = False,
    ) -> None:
        import httpx

        self.endpoint = endpoint
        self.api_key = api_key
        self.verbose = verbose
        verify: ssl.SSLContext | bool = True
        if endpoint.address.startswith("https://"):
            ca = tls_ca or endpoint.ca_file
            ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
            if endpoint.cert_file and endpoint.key_file:
                ctx.load_cert_chain(endpoint.cert_file, endpoint.key_file)
            verify = ctx
        self._client = httpx.AsyncClient(
            base_url=endpoint.address,
            timeout=timeout_s,
            verify=verify,
            trust_env=False,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        auth: bool = True,
    ) -> tuple[int, Any]:
        """Send one request: (status, decoded JSON body or ``None``). Network errors raise."""
        import httpx

        headers: dict[str, str] = {}
        if auth and self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        content: bytes | None = None
        if method == "POST":
            headers["Content-Type"] = "application/json"
            headers["X-Timestamp"] = str(time.time_ns() // 1_000_000)
            headers["X-Nonce"] = secrets.token_hex(16)
            content = json.dumps(body if body is not None else {}).encode()
        started = time.perf_counter()
        try:
            resp = await self._client.request(
                method, path, params=params, content=content, headers=headers
            )
        except (httpx.TransportError, ssl.SSLError, OSError) as exc:
            raise self.network_error(exc) from None
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        if self.verbose:
            ms = (time.perf_counter() - started) * 1000
            rid = resp.headers.get("X-Request-ID", "-")
            sys.stderr.write(
                f"→ {method} {resp.request.url.raw_path.decode()} {resp.status_code} "
                f"{ms:.0f}ms request_id={rid}\n"
            )
        return resp.status_code, doc

    def network_error(self, exc: BaseException) -> CliError:
        """The :class:`CliError` (69) for a timeout, TLS or connection failure."""
        import httpx

        if isinstance(exc, httpx.TimeoutException):
            return timeout_error(f"request to {self.endpoint.host_port} timed out")
        if _is_tls_failure(exc):
            return tls_error(f"TLS handshake with {self.endpoint.host_port} failed: {_short(exc)}")
        return unreachable_error(
            f"cannot connect to {self.endpoint.host_port}: {_short(exc)}",
            suggestion=(
                f"Ensure the TokMesh server is running and accessible at {self.endpoint.address}."
            ),
        )

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        content: Any = None,
        ok_statuses: tuple[int, ...] = (200,),
    ) -> AsyncIterator[Any]:
        """Send one request whose body (``content``: bytes or an async iterator) and/or
        response are streamed, and yield the ``httpx.Response`` with its body unread.

        Authenticated; POSTs carry the anti-replay headers. A status outside
        ``ok_statuses`` raises the server's error (its small JSON body is read); network
        failures while sending or while the caller reads the body raise the 69 errors.
        """
        import httpx

        hdrs: dict[str, str] = {}
        if self.api_key:
            hdrs["Authorization"] = f"Bearer {self.api_key}"
        if method == "POST":
            hdrs["X-Timestamp"] = str(time.time_ns() // 1_000_000)
            hdrs["X-Nonce"] = secrets.token_hex(16)
        hdrs.update(headers or {})
        started = time.perf_counter()
        try:
            req = self._client.build_request(method, path, headers=hdrs, content=content)
            resp = await self._client.send(req, stream=True)
        except (httpx.TransportError, ssl.SSLError, OSError) as exc:
            raise self.network_error(exc) from None
        try:
            if self.verbose:
                ms = (time.perf_counter() - started) * 1000
                rid = resp.headers.get("X-Request-ID", "-")
                sys.stderr.write(
                    f"→ {method} {path} {resp.status_code} {ms:.0f}ms request_id={rid}\n"
                )
            if resp.status_code not in ok_statuses:
                try:
                    doc = json.loads(await resp.aread())
                except ValueError:
                    doc = None
                raise error_from_envelope(resp.status_code, doc, path)
            yield resp
        except httpx.TransportError as exc:  # not OSError: the caller's disk errors pass
            raise self.network_error(exc) from None
        finally:
            await resp.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        auth: bool = True,
    ) -> Any:
        """Send one request and return the envelope's ``data``; status >= 400 raises."""
        status, doc = await self.request(method, path, params=params, body=body, auth=auth)
        if status >= 400:
            raise error_from_envelope(status, doc, path)
        if isinstance(doc, dict) and "data" in doc:
            return doc["data"]
        return doc if doc is not None else {}


#: connect errors after which the next candidate socket is tried: no file there, a file
#: this user may not open (another user's node), or a file left behind by a stopped node
_TRY_NEXT = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ECONNREFUSED, errno.ENOTSOCK}
)


class NoSocket(OSError):
    """No candidate socket accepted a connection: each path with its error."""

    def __init__(self, failures: list[tuple[str, OSError]]) -> None:
        super().__init__(failures[0][1].errno, failures[0][1].strerror)
        self.failures = failures


class SocketClient:
    """The local admin socket: one command line out, one JSON envelope line back.

    With ``fallbacks`` (the built-in ``local`` target) the paths are tried in order, the
    order in which the server tries to bind them; the first that accepts a connection is
    kept for the following commands.
    """

    def __init__(self, path: str, *, timeout_s: float, fallbacks: tuple[str, ...] = ()) -> None:
        self.path = path
        self.fallbacks = fallbacks
        self.timeout_s = timeout_s

    async def command(self, line: str) -> Any:
        """Run one command; the reply's ``data``, or a :class:`CliError` (code != OK → 1)."""
        try:
            raw = await asyncio.wait_for(self._exchange(line), self.timeout_s)
        except TimeoutError:
            raise timeout_error(f"local socket {self.path} did not answer in time") from None
        except NoSocket as exc:
            raise _no_socket_error(exc.failures) from None
        except OSError as exc:
            raise _socket_error(self.path, exc) from None
        try:
            doc = json.loads(raw)
        except ValueError:
            raise CliError("the local socket sent an invalid reply") from None
        if not isinstance(doc, dict) or doc.get("code") != "OK":
            raise error_from_envelope(400, doc)
        return doc.get("data") or {}

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        failures: list[tuple[str, OSError]] = []
        for path in (self.path, *self.fallbacks):
            try:
                streams = await asyncio.open_unix_connection(path)
            except OSError as exc:
                if exc.errno not in _TRY_NEXT:
                    raise
                failures.append((path, exc))
                continue
            self.path, self.fallbacks = path, ()
            return streams
        raise NoSocket(failures)

    async def _exchange(self, line: str) -> bytes:
        reader, writer = await self._open()
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            reply = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if not reply:
            raise ConnectionResetError(errno.ECONNRESET, "connection closed without a reply")
        return reply

    async def aclose(self) -> None:
        """Nothing to close: every command uses its own connection."""


def _socket_error(path: str, exc: OSError, also_tried: tuple[str, ...] = ()) -> CliError:
    """``TM-CLI-1002`` (69) for a socket that could not be used."""
    tried = f" (also tried {', '.join(also_tried)})" if also_tried else ""
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return unreachable_error(
            f"permission denied on local socket {path}{tried}",
            suggestion=f"Check OS permissions on {path}.",
        )
    return unreachable_error(
        f"cannot connect to local socket {path}: {exc.strerror or exc}{tried}",
        suggestion=f"Ensure the TokMesh server is running and accessible at {path}.",
    )


def _no_socket_error(failures: list[tuple[str, OSError]]) -> CliError:
    """The error of the most telling candidate (one that exists but refused us, else the
    first), naming the others so that the user sees every place that was looked at."""
    path, exc = next(
        ((p, e) for p, e in failures if e.errno not in (errno.ENOENT, errno.ENOTDIR)),
        failures[0],
    )
    return _socket_error(path, exc, tuple(p for p, _ in failures if p != path))


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."
