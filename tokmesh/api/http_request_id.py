"""X-Request-ID selection (03 §2.2): reuse a sane client value, else generate one.

Shared by the HTTP front (for the errors it renders itself) and by the routes, so that
the ``request_id`` field of an envelope always equals the ``X-Request-ID`` header.
"""

from __future__ import annotations

import base64
import re
import secrets

from tokmesh.api.http_types import Header, HttpRequest

_VALID = re.compile(rb"[\x20-\x7e]{1,128}")
_HEADER = b"x-request-id"


# Random bytes are drawn from the OS in blocks (one getrandom call per 256 ids instead of
# one per request) and encoded in one go; every id still gets 12 fresh bytes (16
# URL-safe characters) of its own.
_BLOCK_IDS = 256
_pool = ""
_pool_pos = 0


def new_request_id() -> str:
    """A fresh id: ``req-`` followed by 16 random URL-safe characters."""
    global _pool, _pool_pos
    pos = _pool_pos
    if pos >= len(_pool):
        _pool = base64.urlsafe_b64encode(secrets.token_bytes(12 * _BLOCK_IDS)).decode("ascii")
        pos = 0
    _pool_pos = pos + 16
    return "req-" + _pool[pos : pos + 16]


def client_request_id(value: bytes | None) -> str | None:
    """``value`` as a request id if it is 1-128 printable ASCII characters, else ``None``."""
    if value is None or _VALID.fullmatch(value) is None:
        return None
    return value.decode("ascii")


def request_id_from_headers(headers: list[Header]) -> str:
    """The client's ``X-Request-ID`` from raw headers when valid, else a new id."""
    for name, value in headers:
        if name == _HEADER:
            return client_request_id(value) or new_request_id()
    return new_request_id()


def request_id_for(req: HttpRequest) -> str:
    """The request id of ``req``: chosen once, then cached on the request.

    Every caller (routes, envelope, the front adding the header) gets the same value.
    """
    rid = req.request_id_cache
    if rid is None:
        rid = request_id_from_headers(req.headers)
        req.request_id_cache = rid
    return rid
