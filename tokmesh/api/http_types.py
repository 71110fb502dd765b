"""Request and response records exchanged between the HTTP front and its handlers.

The HTTP front (:mod:`tokmesh.api.http_server`) parses bytes into :class:`HttpRequest`
and renders :class:`HttpResponse` back to bytes. Handlers are plain coroutines
``async def app(req: HttpRequest) -> HttpResponse``; the hot routes implement that
directly, everything else goes through :class:`tokmesh.api.asgi_bridge.AsgiBridge`.

Both classes are hand-written slotted classes (not attrs/dataclasses) because one of each
is built per request on the hot path and a plain ``__init__`` is the cheapest constructor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

from tokmesh.domain.errors import ErrorCode, TokMeshError

Header: TypeAlias = tuple[bytes, bytes]
"""A request header: lower-case name bytes, value bytes (surrounding whitespace removed)."""


class HttpRequest:
    """One parsed HTTP/1.x request.

    ``path`` is the raw (still percent-encoded) path without the query string, ``query``
    the raw query string without ``?``. ``headers`` keeps every header in arrival order
    with lower-case names. ``body`` holds the whole body, unless the route was selected
    for streaming (see ``serve_http(streaming_predicate=...)``): then ``body`` is ``b""``
    and ``stream`` yields the body chunk by chunk (the size limit is still enforced and
    a failure raises :class:`~tokmesh.api.http_types.RequestBodyError`).

    ``context`` is a free slot for the routing layer (auth result, timing, ...).
    """

    __slots__ = (
        "authorized",
        "body",
        "context",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "path",
        "peer_ip",
        "peer_port",
        "query",
        "request_id_cache",
        "server_ip",
        "server_port",
        "stream",
        "tls",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: list[Header],
        body: bytes = b"",
        *,
        peer_ip: str = "",
        peer_port: int = 0,
        server_ip: str = "",
        server_port: int = 0,
        http_version: str = "1.1",
        keep_alive: bool = True,
        tls: bool = False,
        stream: AsyncIterator[bytes] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.peer_ip = peer_ip
        self.peer_port = peer_port
        self.server_ip = server_ip
        self.server_port = server_port
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.tls = tls
        self.stream = stream
        # Filled lazily by request_id_for() so the envelope and the header agree.
        self.request_id_cache: str | None = None
        self.context: object = None
        # The principal the non-waiting path authorized before it handed the request to
        # the awaiting one: authorized once, so the rate limit and the anti-replay nonce
        # are not spent twice on one request.
        self.authorized: object = None

    def get_header(self, name: bytes | str) -> bytes | None:
        """The value of the first header called ``name`` (case-insensitive), or ``None``."""
        key = name.lower().encode("latin-1") if isinstance(name, str) else name.lower()
        for hname, value in self.headers:
            if hname == key:
                return value
        return None

    def get_all_headers(self, name: bytes | str) -> list[bytes]:
        """Every value of header ``name`` (case-insensitive), in arrival order."""
        key = name.lower().encode("latin-1") if isinstance(name, str) else name.lower()
        return [value for hname, value in self.headers if hname == key]

    @property
    def target(self) -> str:
        """The request target as sent (path plus ``?query`` when there is one)."""
        return f"{self.path}?{self.query}" if self.query else self.path

    def __repr__(self) -> str:
        # Never include headers or body: they may carry credentials or tokens.
        return f"HttpRequest({self.method} {self.path} HTTP/{self.http_version})"


class HttpResponse:
    """A response to render.

    ``headers`` are ``(name, value)`` strings; the front adds ``Content-Length`` (or
    chunked framing), ``Date``, ``Connection`` as needed and ``X-Request-ID`` when the
    handler did not set one. With ``body_iter`` the body is streamed: if ``headers``
    carry a ``Content-Length`` exactly that many bytes are sent, otherwise HTTP/1.1
    clients get chunked encoding and HTTP/1.0 clients a close-delimited body. The front
    calls ``aclose()`` on ``body_iter`` (when it has one) once it is done with it.
    """

    __slots__ = ("body", "body_iter", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        body_iter: AsyncIterator[bytes] | None = None,
    ) -> None:
        self.status = status
        self.headers: list[tuple[str, str]] = headers if headers is not None else []
        self.body = body
        self.body_iter = body_iter

    def get_header(self, name: str) -> str | None:
        """The value of the first header called ``name`` (case-insensitive), or ``None``."""
        key = name.lower()
        for hname, value in self.headers:
            if hname.lower() == key:
                return value
        return None

    def __repr__(self) -> str:
        return f"HttpResponse({self.status}, {len(self.body)} bytes)"


class RequestBodyError(TokMeshError):
    """Reading a streamed request body failed (too large, malformed, too slow, cut off).

    Raised by ``HttpRequest.stream``. ``status`` is the HTTP status to answer with; it
    differs from the code's catalogue status only for a read timeout (408). After such
    a failure the front always closes the connection, whatever the handler answers.
    """

    __slots__ = ("status",)

    def __init__(
        self,
        error: ErrorCode,
        message: str | None = None,
        *,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(error, message, details=details)
        self.status = status if status is not None else error.http_status


HttpApp: TypeAlias = Callable[[HttpRequest], Awaitable[HttpResponse]]
"""A handler: takes a request, returns the response."""

UpgradeHandler: TypeAlias = Callable[[HttpRequest, object, bytes], Awaitable[None]]
"""Takes over a connection after an ``Upgrade`` request (reserved for ``GET /events``).

Called as ``handler(req, stream, buffered)`` where ``stream`` is the connection's
``trio.abc.Stream`` and ``buffered`` is the request head re-serialised followed by any
bytes already read past it, so a WebSocket library can replay the handshake. The
connection is closed when the handler returns.
"""

StreamingPredicate: TypeAlias = Callable[[str, str], bool]
"""``(method, path) -> bool``: whether a request's body is handed over as a stream."""


class Deferred:
    """An answer that comes later: a mutation the mux submitted, answered on its commit.

    A non-waiting handler returns one instead of an :class:`HttpResponse` when what it
    started completes in a callback (the WAL writer's group commit); whoever resolves it
    gives the response, or the exception the pipeline renders. :meth:`then` registers
    the single consumer, called at once when the value is already there.
    """

    __slots__ = ("_then", "_value")

    def __init__(self) -> None:
        self._then: Callable[[HttpResponse | BaseException], None] | None = None
        self._value: HttpResponse | BaseException | None = None

    def resolve(self, value: HttpResponse | BaseException) -> None:
        """Complete with a response or an error (the first resolution wins)."""
        if self._value is not None:
            return
        self._value = value
        then = self._then
        if then is not None:
            self._then = None
            then(value)

    def then(self, fn: Callable[[HttpResponse | BaseException], None]) -> None:
        """Call ``fn`` with the value once it is there (now, if it already is)."""
        value = self._value
        if value is None:
            self._then = fn
        else:
            fn(value)
