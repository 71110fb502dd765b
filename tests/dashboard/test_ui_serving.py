"""How a real node serves /ui: headers, caching, path traversal, and the off switch."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import httpx

from tests.support.server import ServerProcess
from tokmesh.ui.serve import CACHE_ASSET, CACHE_INDEX, CONTENT_SECURITY_POLICY, ui_routes


def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """``GET target`` written byte for byte (no client normalises ``..`` or ``%2f``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        assert length is not None, head
        while len(body) < int(length.group(1)):
            body += s.recv(65536)
    return int(head.split(b" ", 2)[1]), body


def _asset_urls(html: str) -> list[str]:
    return re.findall(r'"(/ui/assets/[^"]+)"', html)


def test_index_and_assets_headers(node: ServerProcess) -> None:
    with httpx.Client(base_url=node.base_url) as client:
        for path in ("/ui", "/ui/"):
            index = client.get(path)
            assert index.status_code == 200
            assert index.headers["content-type"] == "text/html; charset=utf-8"
            assert index.headers["cache-control"] == CACHE_INDEX
            assert index.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert index.headers["x-content-type-options"] == "nosniff"
            assert "frame-ancestors 'none'" in index.headers["content-security-policy"]
        urls = _asset_urls(index.text)
        assert len(urls) == 4
        for url in urls:
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert asset.headers["cache-control"] == CACHE_ASSET
            assert asset.headers["x-content-type-options"] == "nosniff"
            kind = "text/javascript" if url.endswith(".js") else "text/css"
            assert asset.headers["content-type"] == f"{kind}; charset=utf-8"
            again = client.get(url, headers={"If-None-Match": asset.headers["etag"]})
            assert (again.status_code, again.content) == (304, b"")


def test_only_listed_files_are_served(node: ServerProcess) -> None:
    index = httpx.get(node.base_url + "/ui").text
    hashed = _asset_urls(index)[0].rsplit("/", 1)[1]
    for target in (
        "/ui/assets/..%2f..%2fserve.py",
        "/ui/assets/%2e%2e%2f%2e%2e%2f__init__.py",
        "/ui/assets/..%2F..%2F..%2Fpyproject.toml",
        "/ui/assets/../../serve.py",
        "/ui/assets/vendor%2fuPlot.min.css",
        "/ui/assets/VENDOR.json",
        "/ui/assets/LICENSE",
        "/ui/assets/app.js",  # only the hashed names are served
        "/ui/assets/" + hashed + "%00",
        "/ui/assets/",
        "/ui/index.html",
    ):
        status, body = raw_get(node.http_port, target)
        assert status == 404, target
        assert b"TM-SYS-4040" in body, target
    assert raw_get(node.http_port, "/ui/assets/" + hashed)[0] == 200


def test_ui_routes_are_not_hot() -> None:
    # The native front answers hot routes inline; the dashboard goes through the ASGI side,
    # so serving it adds nothing to the inline path.
    assert [r.hot for r in ui_routes()] == [False, False, False]


def test_ui_off_is_404(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, {"server": {"http": {"ui": {"enabled": False}}}})
    server.start()
    try:
        for path in ("/ui", "/ui/"):
            r = httpx.get(server.base_url + path)
            assert (r.status_code, r.json()["code"]) == (404, "TM-SYS-4040")
        assert httpx.get(server.base_url + "/health").status_code == 200
    finally:
        server.stop()


def test_dashboard_is_not_in_the_api_document(node: ServerProcess) -> None:
    paths = httpx.get(node.base_url + "/openapi.json").json()["paths"]
    assert [p for p in paths if p.startswith("/ui")] == []
