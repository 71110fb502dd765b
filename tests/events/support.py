"""Event stream clients for the tests: ``websockets`` (sync, in a thread) and
``trio-websocket`` (in ``trio.run``), two independent WebSocket implementations, plus
writers that record what the server acknowledged."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import httpx
import trio
import websockets
from trio_websocket import ConnectionClosed, open_websocket_url
from websockets.sync.client import connect

from tests.support.server import ServerProcess


def events_url(node: ServerProcess, query: str = "") -> str:
    """The ``ws://`` URL of ``GET /events`` with ``query``."""
    return f"ws://127.0.0.1:{node.http_port}/events" + (f"?{query}" if query else "")


def auth_subprotocol(key: str) -> str:
    """The browser form of a credential: ``tokmesh.auth.<base64url(id:secret)>``."""
    return "tokmesh.auth." + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


class Collected:
    """What one connection received: the events and how it ended."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self.connected = threading.Event()


def collect_websockets(
    url: str, key: str, stop: threading.Event, out: Collected, **kw: Any
) -> None:
    """Receive with the ``websockets`` sync client until the server closes or ``stop``."""
    try:
        with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, **kw) as ws:
            out.connected.set()
            while not stop.is_set():
                try:
                    message = ws.recv(timeout=0.1)
                except TimeoutError:
                    continue
                out.events.append(json.loads(message))
    except websockets.ConnectionClosed as exc:
        if exc.rcvd is not None:
            out.close_code, out.close_reason = exc.rcvd.code, exc.rcvd.reason
        else:
            out.close_code = 1006
    except OSError:
        out.close_code = 1006
    finally:
        out.connected.set()


def collect_trio_websocket(url: str, key: str, stop: threading.Event, out: Collected) -> None:
    """Receive with ``trio-websocket`` until the server closes or ``stop`` is set."""

    async def main() -> None:
        headers = [(b"authorization", f"Bearer {key}".encode())]
        try:
            async with open_websocket_url(url, extra_headers=headers) as ws:
                out.connected.set()
                while not stop.is_set():
                    with trio.move_on_after(0.1):
                        message = await ws.get_message()
                        out.events.append(json.loads(message))
        except ConnectionClosed as exc:
            reason = exc.reason
            out.close_code = reason.code if reason is not None else 1006
            out.close_reason = (reason.reason or "") if reason is not None else ""
        except (OSError, trio.BrokenResourceError):
            out.close_code = 1006

    try:
        trio.run(main)
    except Exception:  # a handshake failure after a kill: reported as an abnormal close
        if out.close_code is None:
            out.close_code = 1006
    finally:
        out.connected.set()


class Writers:
    """Threads creating, renewing and revoking sessions; they note each acknowledgement.

    ``acked`` holds ``(type, session_id)`` for every change the server answered with
    success. Failed calls (the server is restarting) are retried with new requests.
    """

    def __init__(self, node: ServerProcess, key: str, threads: int = 4, touch: bool = True):
        self.node = node
        self.key = key
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: list[tuple[str, str]] = []
        self.touch = touch
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def _note(self, kind: str, sid: str) -> None:
        with self.lock:
            self.acked.append((kind, sid))

    def _run(self, index: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        n = 0
        while not self.stop.is_set():
            try:
                with httpx.Client(
                    base_url=self.node.base_url, headers=headers, timeout=5
                ) as client:
                    while not self.stop.is_set():
                        n += 1
                        r = client.post(
                            "/sessions", json={"user_id": f"w{index}-{n // 20}", "ttl_seconds": 600}
                        )
                        if r.status_code != 201:
                            raise httpx.TransportError(f"create answered {r.status_code}")
                        sid = r.json()["data"]["session_id"]
                        self._note("created", sid)
                        if self.touch and n % 3 == 0:
                            r = client.post(f"/sessions/{sid}/touch", json={})
                            if r.status_code == 200:
                                self._note("touched", sid)
                        if n % 2 == 0:
                            r = client.post(f"/sessions/{sid}/renew", json={"ttl_seconds": 900})
                            if r.status_code == 200:
                                self._note("renewed", sid)
                        if n % 4 == 0:
                            r = client.post(f"/sessions/{sid}/revoke", json={})
                            if r.status_code == 200:
                                self._note("revoked", sid)
            except httpx.HTTPError:
                time.sleep(0.05)  # the server is restarting: try again
