"""TLS on the HTTP front with trustme certificates and a real client (httpx)."""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import pytest
import trio
import trustme

from tokmesh.api.http_limits import HttpLimits


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


@pytest.fixture
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_https_keep_alive_with_httpx(
    start_server: Any, recording_app: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    control = await start_server(recording_app, ssl_context=server_ctx)
    base = f"https://127.0.0.1:{control.ports[0]}"
    async with httpx.AsyncClient(verify=client_ctx) as client:
        for i in range(3):
            resp = await client.post(f"{base}/t{i}?q=1", content=b"secret-free body")
            assert resp.status_code == 200
            doc = resp.json()
            assert doc["tls"] is True
            assert doc["path"] == f"/t{i}"
            assert doc["body"] == "secret-free body"
            assert resp.headers["x-request-id"].startswith("req-")
    assert control.accepted == 1


async def test_failed_handshakes_close_only_their_connection(
    start_server: Any, recording_app: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    control = await start_server(
        recording_app,
        ssl_context=server_ctx,
        limits=HttpLimits(handshake_timeout=0.5, linger_timeout=0.2),
    )
    port = control.ports[0]
    # Plain HTTP on the TLS port: the handshake fails, the connection is closed.
    plain = await trio.open_tcp_stream("127.0.0.1", port)
    await plain.send_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    with trio.fail_after(2):
        while await plain.receive_some(4096):
            pass
    # A client that never starts the handshake is dropped after the handshake timeout.
    silent = await trio.open_tcp_stream("127.0.0.1", port)
    t0 = trio.current_time()
    with trio.fail_after(2):
        assert await silent.receive_some(4096) == b""
    assert trio.current_time() - t0 >= 0.4
    # An untrusting client aborts the handshake.
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(verify=ssl.create_default_context()) as client:
            await client.get(f"https://127.0.0.1:{port}/")
    # Meanwhile and afterwards, good clients are served.
    async with httpx.AsyncClient(verify=client_ctx) as client:
        resp = await client.get(f"https://127.0.0.1:{port}/ok")
        assert resp.status_code == 200
        assert resp.json()["path"] == "/ok"
    assert recording_app.seen == [("GET", "/ok")]
