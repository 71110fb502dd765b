"""Shared helpers of the real-server HTTP tests (``test_http_*.py``).

Every helper talks to a real ``tokmesh-server`` process over real sockets with httpx.
Distinct loopback source addresses (``127.0.0.x``) stand in for distinct clients: each
test that provokes authentication failures uses its own address, so the per-IP
brute-force guard (02 §12.1) of one test never blocks another.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import ServerProcess

REQUEST_ID_RE = re.compile(r"^req-[A-Za-z0-9_-]{16}$")
#: Crockford base32, lower case (no i, l, o, u), 02 §21 #1.
ULID_BODY = r"[0-9a-hjkmnp-tv-z]{26}"
SESSION_ID_RE = re.compile(rf"^tmss-{ULID_BODY}$")
KEY_ID_RE = re.compile(rf"^tmak-{ULID_BODY}$")
SECRET_RE = re.compile(r"^tmas_[0-9A-Za-z]{43}$")
TOKEN_RE = re.compile(r"^tmtk_[A-Za-z0-9_-]{43}$")


def now_ms() -> int:
    """Wall clock in Unix milliseconds."""
    return time.time_ns() // 1_000_000


def _check_envelope_common(r: httpx.Response) -> dict[str, Any]:
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict), body
    rid = r.headers.get("x-request-id")
    assert rid, "X-Request-ID missing"
    assert body["request_id"] == rid
    assert type(body["timestamp"]) is int
    # Unix milliseconds (R8): within a minute of the local clock.
    assert abs(body["timestamp"] - now_ms()) < 60_000, body["timestamp"]
    assert isinstance(body["message"], str) and body["message"]
    return body


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert an error envelope (03 §2.2) exactly; returns the decoded body."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers.get("x-error-code") == code, (r.headers.get("x-error-code"), r.text)
    body = _check_envelope_common(r)
    assert body["code"] == code, body
    assert "data" not in body, body
    assert set(body) <= {"code", "message", "request_id", "timestamp", "details"}, body
    if "details" in body:
        assert isinstance(body["details"], dict)
    return body


def assert_ok(r: httpx.Response, status: int = 200) -> Any:
    """Assert a success envelope (03 §2.2) exactly; returns its ``data``."""
    assert r.status_code == status, (r.status_code, r.text)
    assert "x-error-code" not in r.headers, r.headers
    body = _check_envelope_common(r)
    assert body["code"] == "OK" and body["message"] == "Success", body
    assert set(body) == {"code", "message", "request_id", "timestamp", "data"}, body
    return body["data"]


def client(
    server: ServerProcess,
    key: str | None = None,
    *,
    source: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Client:
    """An httpx client to ``server`` with ``key`` as Bearer credential.

    ``source`` binds the client socket to that loopback address (real distinct peer IPs).
    """
    h = {"Authorization": f"Bearer {key}"} if key else {}
    h.update(headers or {})
    transport = httpx.HTTPTransport(local_address=source) if source else None
    return httpx.Client(base_url=server.base_url, headers=h, timeout=10, transport=transport)


def make_key(admin: httpx.Client, role: str, **fields: Any) -> str:
    """Create an API key through the admin API; returns ``id:secret``."""
    d = assert_ok(admin.post("/admin/v1/keys", json={"role": role, **fields}), 201)
    return f"{d['key_id']}:{d['key_secret']}"


def key_id_of(credential: str) -> str:
    """The key_id part of ``id:secret``."""
    return credential.partition(":")[0]


def running_node(
    tmp_path_factory: pytest.TempPathFactory, name: str, overrides: dict[str, Any] | None = None
) -> Iterator[ServerProcess]:
    """Body of a module-scoped fixture: one started node with an admin key."""
    root: Path = tmp_path_factory.mktemp(name)
    node = ServerProcess(root, overrides)
    node.start()
    try:
        node.create_admin_key()
        yield node
    finally:
        node.stop()
