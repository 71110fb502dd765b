"""Routes that serve the dashboard's static files at ``/ui`` from memory.

The page holds no secret and has no server-side logic: it calls the same API as any
client. This module only hands out files, with three properties:

- ``GET /ui`` and ``GET /ui/`` answer ``index.html`` with ``Cache-Control: no-cache``, so a
  new release is picked up on the next load.
- Every other file is served as ``/ui/assets/<stem>.<hash><suffix>`` where the hash is of
  the file's bytes, with a year-long ``immutable`` lifetime; ``index.html`` names the
  files by their plain names (``/ui/assets/app.js``) and those references are rewritten
  to the hashed names when the files are loaded, so no build step has to rename anything.
- Only names found in the package's ``static`` directory when the routes were built are
  served: a request names a key of a dictionary, never a path on disk, so ``..`` or an
  encoded ``/`` cannot reach any other file.

A strict Content-Security-Policy allows the page to load and connect to its own origin
only, and forbids framing.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Final

import attrs

from tokmesh.api.http_errors import error_response
from tokmesh.api.http_types import HttpResponse
from tokmesh.api.routes import SCOPE_OPEN, Call, Route
from tokmesh.domain.errors import E

UI_PATH: Final = "/ui"
ASSETS_PATH: Final = "/ui/assets/"

#: Nothing external: scripts, styles, images and connections (fetch and the events
#: WebSocket, which 'self' covers in CSP level 3) come from the node itself; no inline
#: script or style, no plugins, no <base>, and no page may frame the dashboard.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

SECURITY_HEADERS: Final = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    # frame-ancestors covers current browsers; X-Frame-Options covers older ones.
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)

CACHE_INDEX: Final = "no-cache"
CACHE_ASSET: Final = "public, max-age=31536000, immutable"

CONTENT_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


@attrs.frozen
class StaticFile:
    """One file as served: its bytes, media type, cache policy and entity tag."""

    body: bytes
    content_type: str
    cache_control: str
    etag: str


@attrs.frozen
class Bundle:
    """The dashboard as served: ``index.html`` and the assets by their hashed names."""

    index: StaticFile
    assets: dict[str, StaticFile]


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


def _walk(folder: Traversable) -> list[Traversable]:
    """Every file under ``folder`` (subdirectories such as ``vendor/`` included)."""
    found: list[Traversable] = []
    for entry in folder.iterdir():
        if entry.is_dir():
            found.extend(_walk(entry))
        elif entry.is_file():
            found.append(entry)
    return found


def load_bundle(folder: Traversable | None = None) -> Bundle:
    """Read the static files once, hash them and rewrite ``index.html``'s references.

    ``folder`` defaults to the ``static`` directory shipped in this package. A file type
    not in :data:`CONTENT_TYPES` (a README, a licence) is not served.
    """
    root = folder if folder is not None else resources.files("tokmesh.ui").joinpath("static")
    index_html = root.joinpath("index.html").read_text("utf-8")
    assets: dict[str, StaticFile] = {}
    renamed: dict[str, str] = {}
    for entry in sorted(_walk(root), key=lambda e: e.name):
        name = entry.name
        stem, dot, suffix = name.rpartition(".")
        content_type = CONTENT_TYPES.get(dot + suffix)
        if content_type is None or not stem:
            continue
        body = entry.read_bytes()
        digest = hashlib.sha256(body).hexdigest()
        hashed = f"{stem}.{digest[:12]}.{suffix}"
        if name in renamed:
            # Assets share one flat URL space; two files of one name would be ambiguous.
            raise ValueError(f"two dashboard files are named {name}")
        renamed[name] = hashed
        assets[hashed] = StaticFile(body, content_type, CACHE_ASSET, f'"{digest[:20]}"')
    for name, hashed in renamed.items():
        # The closing quote keeps "app.js" from matching inside a longer name.
        index_html = index_html.replace(f'"{ASSETS_PATH}{name}"', f'"{ASSETS_PATH}{hashed}"')
    body = index_html.encode("utf-8")
    index = StaticFile(body, "text/html; charset=utf-8", CACHE_INDEX, _etag(body))
    return Bundle(index, assets)


def _answer(call: Call, item: StaticFile) -> HttpResponse:
    """``item`` with its headers, or 304 when the browser already holds this version."""
    headers = [
        ("Content-Type", item.content_type),
        ("Cache-Control", item.cache_control),
        ("ETag", item.etag),
        ("X-Request-ID", call.rid),
        *SECURITY_HEADERS,
    ]
    if call.req.get_header(b"if-none-match") == item.etag.encode():
        return HttpResponse(304, headers, b"")
    return HttpResponse(200, headers, item.body)


def _not_found(call: Call) -> HttpResponse:
    # Same envelope as the route table's own 404, so a client sees one error format.
    return error_response(call.rid, E.SYS_NOT_FOUND, "route not found")


def ui_routes(bundle: Bundle | None = None) -> list[Route]:
    """``GET /ui``, ``GET /ui/`` and ``GET /ui/assets/{name}``: open, never hot.

    They are ordinary (non-hot) routes, so the native front hands them to the Quart-Trio
    side and the inline hot path is the same with or without the dashboard.
    """
    loaded = bundle if bundle is not None else load_bundle()

    def index(call: Call) -> HttpResponse:
        return _answer(call, loaded.index)

    def asset(call: Call) -> HttpResponse:
        item = loaded.assets.get(call.params["name"])
        if item is None:
            return _not_found(call)
        return _answer(call, item)

    return [
        Route("GET", UI_PATH, index, SCOPE_OPEN, summary="Operations dashboard", documented=False),
        Route(
            "GET",
            UI_PATH + "/",
            index,
            SCOPE_OPEN,
            summary="Operations dashboard",
            documented=False,
        ),
        Route(
            "GET",
            ASSETS_PATH + "{name}",
            asset,
            SCOPE_OPEN,
            summary="Dashboard file",
            documented=False,
        ),
    ]


__all__ = [
    "CONTENT_SECURITY_POLICY",
    "Bundle",
    "StaticFile",
    "load_bundle",
    "ui_routes",
]
