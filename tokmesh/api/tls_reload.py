"""TLS certificate hot reload (02 §4, 05 §5): file watch and SIGHUP.

A listener keeps one ``ssl.SSLContext`` for its whole life; reloading loads the new pair
into that same context, so new handshakes see the new certificate at once and existing
connections are untouched. A new pair is first loaded into a scratch context: if it is
missing, malformed or the key does not match, the old pair keeps serving, an ERROR is
logged and ``tokmesh_tls_reload_failures_total`` is incremented.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from pathlib import Path

import trio

from tokmesh.config.schema import DEFAULT_TLS12_CIPHERS
from tokmesh.telemetry import metrics

log = logging.getLogger("tokmesh.tls")


def server_context(
    cert_file: str,
    key_file: str,
    client_ca_file: str = "",
    ciphers: str = DEFAULT_TLS12_CIPHERS,
) -> ssl.SSLContext:
    """TLS 1.2+ server context offering ``ciphers`` on TLS 1.2; a client CA makes client
    certificates mandatory (mTLS). ``ssl.SSLError`` if ``ciphers`` selects nothing."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        ctx.load_verify_locations(client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _fingerprint(paths: list[str]) -> bytes:
    h = hashlib.sha256()
    for p in paths:
        try:
            h.update(Path(p).read_bytes())
        except OSError:
            h.update(b"\0missing\0")
    return h.digest()


class CertReloader:
    """Watches one listener's certificate files and reloads them into its context."""

    def __init__(
        self,
        name: str,
        ctx: ssl.SSLContext,
        cert_file: str,
        key_file: str,
        client_ca_file: str = "",
        interval: float = 1.0,
    ) -> None:
        self.name = name
        self.ctx = ctx
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self.interval = interval
        self._files = [f for f in (cert_file, key_file, client_ca_file) if f]
        self._seen = _fingerprint(self._files)
        self.reloads = 0
        self.failures = 0

    def set_files(self, cert_file: str, key_file: str, client_ca_file: str = "") -> None:
        """Watch (and load on the next reload) other files, e.g. after SIGHUP."""
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self._files = [f for f in (cert_file, key_file, client_ca_file) if f]

    def reload(self) -> bool:
        """Load the current files if they form a valid pair; True when applied."""
        try:
            server_context(self.cert_file, self.key_file, self.client_ca_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.rejected(exc)
            return False
        self.ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:
            self.ctx.load_verify_locations(self.client_ca_file)
        self.applied()
        return True

    def rejected(self, exc: Exception) -> None:
        """Count and log a reload that failed; the previous certificate keeps serving."""
        self.failures += 1
        metrics.TLS_RELOAD_FAILURES.inc()
        log.error(
            "TLS reload of %s rejected, keeping the previous certificate",
            self.name,
            extra={
                "event": "config_reloaded",
                "component": "tls_manager",
                "listener": self.name,
                "changes": [self.cert_file, self.key_file],
                "status": "failed",
                "error": str(exc),
            },
        )

    def applied(self) -> None:
        """Count and log a reload that took effect."""
        self.reloads += 1
        log.info(
            "TLS certificate of %s reloaded",
            self.name,
            extra={
                "event": "config_reloaded",
                "component": "tls_manager",
                "listener": self.name,
                "changes": [self.cert_file, self.key_file],
                "status": "success",
            },
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll the files; reload within ``interval`` seconds of a change (target ≤ 5 s)."""
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            current = await trio.to_thread.run_sync(_fingerprint, self._files)
            if current != self._seen:
                self._seen = current
                await trio.to_thread.run_sync(self.reload)
