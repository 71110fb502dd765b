"""``session watch``: follow ``GET /events`` over WebSocket, resuming after disconnects.

The CLI runs on asyncio; the WebSocket protocol is ``wsproto`` (sans-IO, already a
dependency of the server) over ``asyncio.open_connection``. The watcher remembers the
cursor of the last event it printed and reconnects with it after any disconnect (server
restart, crash, ``4429`` too slow), with a growing pause; it stops for good only on what
reconnecting cannot fix: refused credentials, a bad filter, a cursor the server no longer
has (``4410``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

#: Close codes after which reconnecting cannot help: the watch ends with an error.
FATAL_CLOSES = {4400: "bad request", 4401: "credentials no longer valid", 4410: "cursor expired"}
#: Pause before the first reconnect, and the most it grows to.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0


class WatchFailed(Exception):
    """The watch cannot go on: ``status`` (HTTP) or ``code`` (WebSocket close) says why."""

    def __init__(self, message: str, *, status: int = 0, code: int = 0, body: Any = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.body = body


def events_target(base_url: str, user: str | None, types: str | None, cursor: str | None) -> str:
    """The request target (path and query) of ``GET /events`` under ``base_url``."""
    query: dict[str, str] = {}
    if cursor:
        query["cursor"] = cursor
    if user:
        query["user_id"] = user
    if types:
        query["types"] = types
    path = urlsplit(base_url).path.rstrip("/") + "/events"
    return path + ("?" + urlencode(query) if query else "")


async def watch_once(
    base_url: str,
    api_key: str,
    target: str,
    on_event: Callable[[dict[str, Any]], None],
    ssl_context: ssl.SSLContext | None,
    timeout: float = 10.0,
) -> int:
    """One connection: hand each event to ``on_event`` until it ends; the close code
    (1006 when the connection broke without one). Raises :class:`WatchFailed` when the
    server refuses the upgrade."""
    parts = urlsplit(base_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            host, port, ssl=ssl_context, server_hostname=host if ssl_context else None
        ),
        timeout,
    )
    ws = WSConnection(ConnectionType.CLIENT)
    try:
        writer.write(
            ws.send(
                Request(
                    host=f"{host}:{port}",
                    target=target,
                    subprotocols=["tokmesh.events"],
                    extra_headers=[(b"authorization", f"Bearer {api_key}".encode())],
                )
            )
        )
        await writer.drain()
        text: list[str] = []
        reject: RejectConnection | None = None
        reject_body = b""
        while True:
            try:
                data = await reader.read(65536)
            except (ConnectionError, OSError):
                return 1006
            ws.receive_data(data or None)
            try:
                events = list(ws.events())
            except RemoteProtocolError:
                return 1006
            for event in events:
                if isinstance(event, AcceptConnection):
                    continue
                if isinstance(event, RejectConnection):
                    reject = event
                    if not event.has_body:
                        raise _refused(reject, b"")
                elif isinstance(event, RejectData):
                    reject_body += event.data
                    if event.body_finished and reject is not None:
                        raise _refused(reject, reject_body)
                elif isinstance(event, TextMessage):
                    text.append(event.data)
                    if event.message_finished:
                        on_event(orjson.loads("".join(text)))
                        text.clear()
                elif isinstance(event, Ping):
                    writer.write(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    with contextlib.suppress(Exception):
                        writer.write(ws.send(event.response()))
                        await writer.drain()
                    if event.code in FATAL_CLOSES:
                        raise WatchFailed(
                            f"{FATAL_CLOSES[event.code]}: {event.reason}", code=event.code
                        )
                    return int(event.code)
            if not data:
                return 1006
            await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _refused(reject: RejectConnection, body: bytes) -> WatchFailed:
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        doc = None
    message = f"server refused the WebSocket upgrade (HTTP {reject.status_code})"
    if isinstance(doc, dict) and doc.get("message"):
        message = f"{doc.get('code')}: {doc['message']}"
    return WatchFailed(message, status=reject.status_code, body=doc)


async def watch(
    base_url: str,
    api_key: str,
    *,
    user: str | None,
    types: str | None,
    cursor: str | None,
    on_event: Callable[[dict[str, Any]], None],
    on_retry: Callable[[int, str | None, float], None],
    ssl_context: ssl.SSLContext | None,
) -> None:
    """Follow the stream forever, resuming from the last cursor after each disconnect.

    Returns never; raises :class:`WatchFailed` when reconnecting cannot help. A refused
    connection (the server is restarting) is retried like a broken one.
    """
    last = cursor
    pause = BACKOFF_FIRST

    def seen(event: dict[str, Any]) -> None:
        nonlocal last, pause
        last = str(event.get("cursor", last))
        pause = BACKOFF_FIRST  # it works again: the next break starts the pauses anew
        on_event(event)

    while True:
        target = events_target(base_url, user, types, last)
        try:
            code = await watch_once(base_url, api_key, target, seen, ssl_context)
        except WatchFailed as exc:
            if exc.status in (502, 503, 504):
                code = exc.status  # not ready yet (recovery): try again
            else:
                raise
        except (TimeoutError, OSError, ssl.SSLError):
            code = 1006
        on_retry(code, last, pause)
        await asyncio.sleep(pause)
        pause = min(pause * 2, BACKOFF_MAX)
