"""Descriptor exhaustion, the connection cap and silent connections against a real server.

The server runs as its own process; its descriptor limit is lowered from outside with
``prlimit(2)`` once it is ready, as ``prlimit --pid <pid> --nofile=256`` would. The
issue this guards against: 400 idle connections used to end the process (an unhandled
``EMFILE`` in a periodic actor or in the local socket's accept loop), with a log line
per retry in between.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.server import ServerProcess, free_port

pytestmark = pytest.mark.fault

#: The descriptor limit of the issue's probe and its idle-connection flood.
NOFILE = 256
FLOOD = 400


def start_node(root: Path, server: dict[str, Any]) -> tuple[ServerProcess, int]:
    """A node with plain HTTP and plain RESP (``server`` merged into ``server.*``) and
    unauthenticated ``/metrics``; returns it and its RESP port."""
    resp_port = free_port()
    node = ServerProcess(root, {"telemetry": {"metrics": {"auth_enabled": False}}})
    listeners = node.config["server"]
    listeners["redis"] = {"enabled": True, "address": f"127.0.0.1:{resp_port}"}
    for name, value in server.items():
        if isinstance(value, dict):
            listeners.setdefault(name, {}).update(value)
        else:
            listeners[name] = value
    node.start()
    # RESP opens a moment after /ready turns 200 (it has no readiness probe of its own).
    wait_until(lambda: _resp_listening(resp_port), 10, "the RESP listener")
    return node, resp_port


def _resp_listening(port: int) -> bool:
    try:
        return resp_ping(port) == b"+PONG\r\n"
    except OSError:
        return False


@contextlib.contextmanager
def running(node: ServerProcess) -> Iterator[ServerProcess]:
    try:
        yield node
    finally:
        node.stop()


def records(node: ServerProcess, start: int = 0) -> list[dict[str, Any]]:
    """The server's JSON log lines from byte ``start`` of its log file."""
    out = []
    with open(node.log_path, "rb") as fh:
        fh.seek(start)
        for line in fh.read().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def log_size(node: ServerProcess) -> int:
    return node.log_path.stat().st_size


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def events(lines: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [r for r in lines if r.get("event") == event]


def open_idle(ports: list[int], count: int) -> list[socket.socket]:
    """``count`` connections spread over ``ports`` that never send a byte."""
    socks = []
    for i in range(count):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", ports[i % len(ports)]))
        socks.append(s)
    return socks


def read_all(s: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything until the peer closes."""
    s.settimeout(timeout)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


def read_line(s: socket.socket, timeout: float) -> bytes:
    """One reply line of the local admin socket (it keeps the connection open)."""
    s.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def resp_ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(100)


def scrape(node: ServerProcess) -> str:
    r = httpx.get(node.base_url + "/metrics", timeout=5)
    assert r.status_code == 200, r.text
    return r.text


def test_descriptor_exhaustion_is_overload_not_a_crash(tmp_path: Path) -> None:
    # A cap far above the limit, so that the descriptors, not the cap, run out.
    node, resp_port = start_node(tmp_path, {"max_connections": 100_000})
    with running(node):
        assert node.proc is not None
        resource.prlimit(node.proc.pid, resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
        mark = log_size(node)
        flood = open_idle([node.http_port, resp_port], FLOOD)
        try:
            wait_until(
                lambda: bool(events(records(node, mark), "accept_overload")),
                10,
                "the server to run out of descriptors",
            )
            # The local admin socket is asked while no descriptor is free: its caller
            # waits in the backlog (this used to end the process at once).
            local = socket.socket(socket.AF_UNIX)
            local.settimeout(10)
            local.connect(str(node.socket_path))
            local.sendall(b"STATUS\n")
            time.sleep(1.0)  # ten retries of every accept loop
            assert node.proc.poll() is None, node.log_tail()
        finally:
            for s in flood:
                s.close()
        with local:
            status = json.loads(read_line(local, 10))
        assert status["code"] == "OK"
        assert httpx.get(node.base_url + "/health", timeout=5).status_code == 200
        assert resp_ping(resp_port) == b"+PONG\r\n"
        text = scrape(node)
        # The episode is over once no accept has failed for half a second.
        wait_until(
            lambda: bool(events(records(node, mark), "accept_overload_ended")),
            5,
            "the end of the episode to be logged",
        )
        assert node.proc.poll() is None
        lines = records(node, mark)
    assert 'tokmesh_accept_errors_total{errno="EMFILE"}' in text
    # One episode: one WARN when accepts began failing, one INFO when they worked again.
    warns = events(lines, "accept_overload")
    assert len(warns) == 1, warns
    assert "EMFILE (Too many open files)" in warns[0]["message"]
    ended = events(lines, "accept_overload_ended")
    assert len(ended) == 1 and ended[0]["retries"] >= 10, ended
    # Nothing else complained about it line by line, and nothing with a traceback.
    assert not [r for r in lines if r.get("level") in ("ERROR", "CRITICAL")]
    assert not [r for r in lines if "exception" in r]
    assert sum(r.get("level") == "WARN" for r in lines) <= 3  # + a snapshotter episode


def test_connection_cap_refuses_http_and_resp_cleanly(tmp_path: Path) -> None:
    node, resp_port = start_node(
        tmp_path,
        {
            "max_connections": 4,
            "http": {"header_timeout": "60s"},
            "redis": {"login_timeout": "60s"},
        },
    )
    with running(node):
        mark = log_size(node)
        # More than the cap: the connections of the readiness probe may still be counted.
        held = open_idle([node.http_port, resp_port], 8)
        try:
            # HTTP beyond the cap: 503 with the TokMesh envelope, then the server closes.
            wait_until(
                lambda: httpx.get(node.base_url + "/health", timeout=5).status_code == 503,
                10,
                "the cap to be reached",
            )
            r = httpx.get(node.base_url + "/health", timeout=5)
            assert r.status_code == 503
            assert r.headers["connection"] == "close"
            assert r.headers["retry-after"] == "1"
            body = r.json()
            assert body["code"] == "TM-SYS-5030"
            assert body["details"] == {"reason": "max_connections"}
            assert r.headers["x-request-id"] == body["request_id"]
            # RESP beyond the cap: Redis' own words, then the server closes.
            with socket.create_connection(("127.0.0.1", resp_port), timeout=5) as s:
                assert read_all(s) == b"-ERR max number of clients reached\r\n"
            with pytest.raises(redis.ConnectionError, match="max number of clients reached"):
                # No retries: redis-py would otherwise back off and try again for seconds.
                redis.Redis(port=resp_port, socket_timeout=5, retry=Retry(NoBackoff(), 0)).ping()
        finally:
            for s in held:
                s.close()
        wait_until(
            lambda: httpx.get(node.base_url + "/health", timeout=5).status_code == 200,
            10,
            "connections to be admitted again",
        )
        assert resp_ping(resp_port) == b"+PONG\r\n"
        text = scrape(node)
        wait_until(
            lambda: bool(events(records(node, mark), "connection_limit_ended")),
            5,
            "the end of the episode to be logged",
        )
        lines = records(node, mark)
    assert "tokmesh_connections_max 4.0" in text
    refused_http = _sample(text, 'tokmesh_connections_refused_total{listener="http"}')
    refused_resp = _sample(text, 'tokmesh_connections_refused_total{listener="redis"}')
    assert refused_http >= 1 and refused_resp >= 2, text
    assert len(events(lines, "connection_limit")) == 1
    assert len(events(lines, "connection_limit_ended")) == 1


def test_a_silent_connection_is_closed_within_seconds(tmp_path: Path) -> None:
    node, resp_port = start_node(
        tmp_path, {"http": {"header_timeout": "1s"}, "redis": {"login_timeout": "1s"}}
    )
    with running(node):
        key_id, secret = node.create_admin_key().split(":", 1)
        opened = time.monotonic()
        silent_http = socket.create_connection(("127.0.0.1", node.http_port))
        silent_resp = socket.create_connection(("127.0.0.1", resp_port))
        unauthenticated = socket.create_connection(("127.0.0.1", resp_port))
        talking_http = socket.create_connection(("127.0.0.1", node.http_port))
        authenticated = redis.Redis(port=resp_port, username=key_id, password=secret)
        try:
            talking_http.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert talking_http.recv(65536).startswith(b"HTTP/1.1 200")
            unauthenticated.sendall(b"PING\r\n")
            assert unauthenticated.recv(100) == b"+PONG\r\n"
            assert authenticated.ping()
            # Neither sent a byte: closed without a word once the short timeout passed.
            assert read_all(silent_http, 5) == b""
            assert read_all(silent_resp, 5) == b""
            # Talking without authenticating does not extend the login deadline.
            assert read_all(unauthenticated, 5) == b""
            closed_after = time.monotonic() - opened
            time.sleep(max(0.0, 2.5 - closed_after))
            # A client that has spoken keeps its keep-alive wait; one that authenticated
            # is kept as Redis keeps idle clients.
            talking_http.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert talking_http.recv(65536).startswith(b"HTTP/1.1 200")
            assert authenticated.ping()
        finally:
            for s in (silent_http, silent_resp, unauthenticated, talking_http):
                s.close()
            authenticated.close()
    assert 0.9 <= closed_after < 2.5, closed_after


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
