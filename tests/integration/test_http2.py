"""03 §8 check 10: plain HTTP never speaks HTTP/2; the HTTPS port negotiates h2 (under
``server.http.engine: hypercorn``, which serves HTTP/2 via ALPN) and still serves
HTTP/1.1, with the same routes on both ports."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import httpx
import pytest
import trustme

from tests.support.server import ServerProcess, free_port

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("h2-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(d / "server.crt"))
    cert.private_key_pem.write_to_path(str(d / "server.key"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return {"cert": str(d / "server.crt"), "key": str(d / "server.key"), "ca": str(d / "ca.pem")}


def _node(root: Path, engine: str, tls: dict[str, str]) -> ServerProcess:
    https_port = free_port()
    srv = ServerProcess(
        root,
        {
            "server": {
                "http": {"engine": engine},
                "https": {
                    "enabled": True,
                    "address": f"127.0.0.1:{https_port}",
                    "tls": {"cert_file": tls["cert"], "key_file": tls["key"]},
                },
            }
        },
    )
    srv.https_port = https_port  # type: ignore[attr-defined]
    srv.start()
    return srv


def _plain_h2_prior_knowledge(port: int) -> bytes:
    """Send the HTTP/2 connection preface in clear text; return what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(H2_PREFACE)
        s.settimeout(5)
        try:
            return s.recv(4096)
        except TimeoutError:
            return b""


def test_https_negotiates_h2_and_serves_http11(tmp_path: Path, tls: dict[str, str]) -> None:
    srv = _node(tmp_path / "hc", "hypercorn", tls)
    try:
        base = f"https://127.0.0.1:{srv.https_port}"  # type: ignore[attr-defined]
        verify = ssl.create_default_context(cafile=tls["ca"])
        with httpx.Client(http2=True, verify=verify) as c:
            r = c.get(base + "/health")
            assert r.status_code == 200 and r.http_version == "HTTP/2"
            assert r.json()["data"]["status"] == "healthy"
            nope = c.get(base + "/nope")
            assert nope.http_version == "HTTP/2" and nope.json()["code"] == "TM-SYS-4040"
        with httpx.Client(http2=False, verify=verify) as c:
            r = c.get(base + "/health")
            assert r.status_code == 200 and r.http_version == "HTTP/1.1"
        # ALPN offers h2 on the TLS port
        ctx = ssl.create_default_context(cafile=tls["ca"])
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        port = srv.https_port  # type: ignore[attr-defined]
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
        ):
            assert s.selected_alpn_protocol() == "h2"
    finally:
        srv.stop()


def test_plain_port_never_speaks_http2(tmp_path: Path, tls: dict[str, str]) -> None:
    srv = _node(tmp_path / "native", "native", tls)
    try:
        reply = _plain_h2_prior_knowledge(srv.http_port)
        # an HTTP/2 server would answer with a SETTINGS frame, never an HTTP/1.1 line
        assert not reply or reply.startswith(b"HTTP/1.1 "), reply[:40]
        with httpx.Client() as c:
            r = c.get(srv.base_url + "/health")
            assert r.http_version == "HTTP/1.1" and r.status_code == 200
    finally:
        srv.stop()
