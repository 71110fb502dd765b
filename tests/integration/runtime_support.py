"""Helpers for the runtime tests (issue 7): the real binary with a chosen environment,
its JSON log, its listening sockets, TLS peers and Prometheus scrapes.

Everything here drives the real ``tokmesh-server`` process; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import trustme
import yaml
from cryptography import x509

from tests.support.server import ServerProcess

#: process-level ceiling for any single wait in these tests (the CI box has 2 loaded cores)
SLOW = 60.0


def server_exe() -> str:
    """The ``tokmesh-server`` console script next to this interpreter, else on PATH."""
    exe = Path(sys.executable).with_name("tokmesh-server")
    return str(exe) if exe.exists() else "tokmesh-server"


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without any ``TOKMESH_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKMESH_")}
    env.update(extra or {})
    return env


def run_cli(
    args: list[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = SLOW,
) -> subprocess.CompletedProcess[str]:
    """Run ``tokmesh-server <args>`` to completion (``--test``, fatal starts, bad flags)."""
    return subprocess.run(
        [server_exe(), *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def parse_log(text: str) -> list[dict[str, Any]]:
    """Every JSON line of a log text (non-JSON lines are kept as ``{"raw": line}``)."""
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            out.append({"raw": line})
            continue
        out.append(doc if isinstance(doc, dict) else {"raw": line})
    return out


class RuntimeServer(ServerProcess):
    """:class:`ServerProcess` with a controlled environment and log inspection."""

    def __init__(
        self,
        root: Path,
        overrides: dict[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(root, overrides)
        self.env = dict(env or {})

    def write_config(self) -> None:
        """Write :attr:`config` as the YAML main file."""
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self, wait_ready: bool = True, extra_args: list[str] | None = None) -> None:
        """Start the binary with :attr:`env` (and no inherited ``TOKMESH_*`` variable)."""
        self.write_config()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [server_exe(), "--config", str(self.config_path), *(extra_args or [])],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=clean_env(self.env),
            )
        if wait_ready:
            self.wait_ready(timeout=SLOW)

    def log_text(self) -> str:
        """The whole captured stdout+stderr of every run of this node."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self) -> list[dict[str, Any]]:
        """The captured log as parsed JSON lines."""
        return parse_log(self.log_text())

    def wait_for_log(
        self,
        pred: Callable[[dict[str, Any]], bool],
        timeout: float = 10.0,
        since: int = 0,
    ) -> dict[str, Any]:
        """The first log line (at index >= ``since``) matching ``pred``; fails on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_lines()[since:]:
                if pred(line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching log line within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the running server."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    def listening(self) -> set[tuple[str, int]]:
        """The TCP ``(host, port)`` pairs the running server listens on."""
        assert self.proc is not None
        return listening_tcp(self.proc.pid)

    def scrape(self, key: str) -> str:
        """``GET /metrics`` with ``key``; the exposition text."""
        r = httpx.get(
            self.base_url + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
        assert r.status_code == 200, r.text
        return r.text

    def stop(self) -> None:
        """Stop if running, then remove a socket file the server left behind (a leftover
        is a server bug that ``test_runtime_socket`` reports; here it would just litter
        ``/tmp``)."""
        super().stop()
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(self.socket_path.lstat().st_mode):
                self.socket_path.unlink()

    def data_dir(self) -> Path:
        """The data directory: the parent of ``storage.wal.dir``."""
        return Path(self.config["storage"]["wal"]["dir"]).parent

    def audit_text(self) -> str:
        """Every audit file's content (``<data dir>/audit/*.jsonl``)."""
        files = sorted((self.data_dir() / "audit").glob("*.jsonl"))
        return "".join(p.read_text(errors="replace") for p in files)


# --- sockets ------------------------------------------------------------------------------------


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _decode_v4(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    return socket.inet_ntop(socket.AF_INET, raw[::-1])


def _decode_v6(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    # /proc prints four host-order 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def listening_tcp(pid: int) -> set[tuple[str, int]]:
    """TCP sockets in LISTEN state owned by process ``pid`` (from ``/proc``)."""
    inodes = _socket_inodes(pid)
    found: set[tuple[str, int]] = set()
    for table, decode in (("tcp", _decode_v4), ("tcp6", _decode_v6)):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 10 or cols[3] != "0A" or cols[9] not in inodes:
                continue
            host, port = cols[1].split(":")
            found.add((decode(host), int(port, 16)))
    return found


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when ``host:port`` can be bound right now."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# --- TLS ----------------------------------------------------------------------------------------


def write_leaf(ca: trustme.CA, cert_path: Path, key_path: Path) -> int:
    """Issue a new 127.0.0.1 certificate from ``ca`` and atomically replace the two files.

    Returns the new certificate's serial number.
    """
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    for path, blob in ((key_path, leaf.private_key_pem), (cert_path, leaf.cert_chain_pems[0])):
        tmp = path.with_suffix(path.suffix + ".tmp")
        blob.write_to_path(str(tmp))
        os.replace(tmp, path)
    return int(x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number)


@contextlib.contextmanager
def open_tls(port: int, ca: trustme.CA) -> Iterator[ssl.SSLSocket]:
    """A new TLS connection to ``127.0.0.1:port`` that trusts ``ca``."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            yield tls
    finally:
        raw.close()


def peer_serial(port: int, ca: trustme.CA) -> int:
    """Serial number of the certificate a new TLS connection to ``127.0.0.1:port`` sees."""
    with open_tls(port, ca) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


# --- metrics ------------------------------------------------------------------------------------


def metric_types(text: str) -> dict[str, str]:
    """``{name: type}`` from the ``# TYPE`` lines of a Prometheus exposition."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            out[name] = kind.strip()
    return out


def sample_value(text: str, name: str) -> float:
    """The value of the unlabeled sample ``name`` (0.0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- processes ----------------------------------------------------------------------------------


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """The exit code of ``proc`` within ``timeout`` seconds (SIGKILL and fail otherwise)."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        raise


@contextlib.contextmanager
def unwritable_dir(path: Path) -> Iterator[Path]:
    """An existing directory that this process (even as root) cannot create files in.

    Non-root: mode 0500. Root ignores modes, so the directory is made immutable
    (``chattr +i``); the context manager undoes it. Skips when neither works.
    """
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o500)
        try:
            yield path
        finally:
            path.chmod(0o700)
        return
    r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot make a directory unwritable for root here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
