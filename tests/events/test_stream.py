"""``GET /events`` on a real server: filters, cursors that cannot resume, credentials,
touch events, a slow consumer."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import websockets
from websockets.sync.client import connect

from tests.events.support import Collected, Writers, auth_subprotocol, collect_websockets
from tests.events.support import events_url as url
from tests.integration.runtime_support import write_leaf
from tests.support.server import ServerProcess, free_port

Factory = Callable[..., ServerProcess]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def recv_all(ws: Any, n: int, timeout: float = 10) -> list[dict[str, Any]]:
    """``n`` events from ``ws``."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        out.append(json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic()))))
    return out


def close_of(ws: Any, timeout: float = 10) -> tuple[int, str]:
    """The close code and reason the server ends ``ws`` with (no event before it)."""
    with pytest.raises(websockets.ConnectionClosed) as info:
        message = ws.recv(timeout=timeout)
        pytest.fail(f"an event instead of a close: {message}")
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


def create(client: httpx.Client, user: str) -> str:
    r = client.post("/sessions", json={"user_id": user, "ttl_seconds": 600})
    assert r.status_code == 201, r.text
    return str(r.json()["data"]["session_id"])


def test_filters_live_and_replayed_and_touch_events(node_factory: Factory) -> None:
    node = node_factory(overrides={"events": {"include_touch": True}})
    key = node.admin_key
    assert key is not None
    query = "user_id=alice&types=created,revoked,touched"
    with (
        node.client(key) as client,
        connect(url(node, query), additional_headers=bearer(key)) as ws,
    ):
        first = create(client, "alice")
        create(client, "bob")
        assert client.post(f"/sessions/{first}/renew", json={"ttl_seconds": 60}).status_code == 200
        time.sleep(0.002)  # a touch in the same millisecond as the renew changes nothing
        assert client.post(f"/sessions/{first}/touch", json={}).status_code == 200
        assert client.post(f"/sessions/{first}/revoke", json={}).status_code == 200
        live = recv_all(ws, 3)
    assert [(e["type"], e["session_id"], e["user_id"]) for e in live] == [
        ("created", first, "alice"),
        ("touched", first, "alice"),
        ("revoked", first, "alice"),
    ]
    assert [e["version"] for e in live] == [1, 3, 4]
    for e in live:
        assert set(e) == {
            "cursor",
            "type",
            "session_id",
            "user_id",
            "device_id",
            "at",
            "version",
            "by",
        }
    # The same filter over the replayed WAL gives the same events.
    with connect(url(node, "cursor=0&" + query), additional_headers=bearer(key)) as ws:
        assert recv_all(ws, 3) == live
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)  # bob's session and the renew are filtered out
    # An unknown type is refused with 4400.
    with connect(url(node, "types=created,bogus"), additional_headers=bearer(key)) as ws:
        assert close_of(ws)[0] == 4400


def test_touch_events_off_by_default_and_asking_for_them_is_an_error(
    node_factory: Factory,
) -> None:
    node = node_factory()
    key = node.admin_key
    assert key is not None
    with connect(url(node, "types=touched"), additional_headers=bearer(key)) as ws:
        code, reason = close_of(ws)
    assert code == 4400 and "include_touch" in reason


def test_cursor_that_cannot_resume_is_closed_4410_or_4400(node_factory: Factory) -> None:
    node = node_factory(overrides={"storage": {"snapshot": {"retention_count": 1}}})
    key = node.admin_key
    assert key is not None
    with node.client(key) as client, connect(url(node), additional_headers=bearer(key)) as ws:
        create(client, "u")
        create(client, "u")
        events = recv_all(ws, 2)
    cursor = int(events[0]["cursor"])
    # Not the end of a record, ahead of the WAL, not a number at all.
    for bad, code in ((cursor - 3, 4410), (cursor + (5 << 32), 4410), ("12ab", 4400)):
        with connect(url(node, f"cursor={bad}"), additional_headers=bearer(key)) as ws:
            assert close_of(ws)[0] == code, bad
    # Each graceful restart seals the active segment; a snapshot then lets compaction
    # remove the oldest segments, the cursor's among them: resync, never a silent gap.
    for _ in range(4):
        with node.client(key) as client:
            create(client, "u")
        node.terminate()
        node.start()
    with node.client(key) as client:
        create(client, "u")
        assert client.post("/admin/v1/backups/snapshots", json={}).status_code in (200, 201)
    assert not (node.root / "data" / "wal" / "wal-00000001.log").exists()
    with connect(url(node, f"cursor={cursor}"), additional_headers=bearer(key)) as ws:
        code, reason = close_of(ws)
    assert code == 4410 and "resync" in reason


def test_credentials_header_subprotocol_and_permission(node_factory: Factory) -> None:
    node = node_factory()
    admin = node.admin_key
    assert admin is not None
    issuer = node.create_key("issuer")
    # The browser form: credentials as a subprotocol, tokmesh.events selected.
    protos = ["tokmesh.events", auth_subprotocol(admin)]
    with node.client(admin) as client, connect(url(node), subprotocols=protos) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "tokmesh.events"
        sid = create(client, "sub")
        assert recv_all(ws, 1)[0]["session_id"] == sid
    # No credentials: 401; a key whose role lacks events.read: 403, in either form.
    refusals: list[tuple[dict[str, str], list[str] | None, int]] = [
        ({}, None, 401),
        (bearer(issuer), None, 403),
        ({}, ["tokmesh.events", auth_subprotocol(issuer)], 403),
        ({}, ["tokmesh.events", "tokmesh.auth.%%%"], 401),
    ]
    for headers, subprotocols, status in refusals:
        with pytest.raises(websockets.InvalidStatus) as info:
            connect(url(node), additional_headers=headers, subprotocols=subprotocols)  # type: ignore[arg-type]
        assert info.value.response.status_code == status
        body = json.loads(info.value.response.body or b"{}")
        assert body["code"].startswith("TM-AUTH-")
    # A plain GET (no upgrade) is a documented error, not a hang.
    r = httpx.get(node.base_url + "/events", headers=bearer(admin))
    assert r.status_code == 400
    # No secret in the server log (the subprotocol carried one).
    log = node.log_path.read_text()
    for key in (admin, issuer):
        secret = key.split(":", 1)[1]
        assert secret not in log
        assert auth_subprotocol(key) not in log


def test_slow_consumer_is_closed_4429_and_writers_keep_going(
    node_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small bound (the default is 4096 events) so that a stall shows within seconds.
    monkeypatch.setenv("TOKMESH_EVENTS_LIVE_LIMIT", "200")
    node = node_factory(overrides={"storage": {"wal": {"sync_mode": "batch"}}})
    key = node.admin_key
    assert key is not None
    # A fast watcher beside the slow one: it must not be affected.
    fast_stop = threading.Event()
    fast = Collected()
    fast_thread = threading.Thread(
        target=collect_websockets, args=(url(node), key, fast_stop, fast), daemon=True
    )
    fast_thread.start()
    assert fast.connected.wait(10)
    # The slow watcher: a tiny receive buffer, and it does not read for a while.
    sock = socket.create_connection(("127.0.0.1", node.http_port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    # No client pings: its pongs would wait behind the events it does not read.
    with connect(
        url(node), sock=sock, additional_headers=bearer(key), max_queue=1, ping_interval=None
    ) as slow:
        writers = Writers(node, key, threads=6, touch=False)
        writers.start()
        try:
            time.sleep(1.0)
            before = writers.count()
            time.sleep(1.0)
            rate_before = writers.count() - before
            # Keep the slow one stalled until more than its buffer bound was written.
            deadline = time.monotonic() + 30
            while writers.count() < before + 2_500 and time.monotonic() < deadline:
                time.sleep(0.1)
            mark = writers.count()
            time.sleep(1.0)
            rate_during = writers.count() - mark
        finally:
            writers.join()
        # Now it reads: what was already on its way, then the close.
        got = 0
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                slow.recv(timeout=10)
                got += 1
    assert info.value.rcvd is not None and info.value.rcvd.code == 4429, info.value
    assert got < writers.count()
    # Writers kept their pace while a watcher fell behind (loose bound: a shared CI box).
    assert rate_during >= rate_before * 0.5, (rate_before, rate_during)
    # The fast watcher got everything, in order.
    wanted = {(k, s) for k, s in writers.acked}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if wanted <= {(e["type"], e["session_id"]) for e in list(fast.events)}:
            break
        time.sleep(0.05)
    fast_stop.set()
    fast_thread.join(10)
    assert fast.close_code is None
    assert wanted <= {(e["type"], e["session_id"]) for e in fast.events}
    cursors = [int(e["cursor"]) for e in fast.events]
    assert cursors == sorted(set(cursors))


def test_tls_listener_serves_the_stream(node_factory: Factory, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key_file = tmp_path / "server.crt", tmp_path / "server.key"
    write_leaf(ca, cert, key_file)
    port = free_port()
    node = node_factory(
        overrides={
            "server": {
                "https": {
                    "enabled": True,
                    "address": f"127.0.0.1:{port}",
                    "tls": {"cert_file": str(cert), "key_file": str(key_file)},
                }
            }
        }
    )
    key = node.admin_key
    assert key is not None
    context = ssl.create_default_context()
    ca.configure_trust(context)
    wss = f"wss://localhost:{port}/events"
    with node.client(key) as client:
        with connect(wss, ssl=context, additional_headers=bearer(key)) as ws:
            sid = create(client, "tls")
            (event,) = recv_all(ws, 1)
        assert event["session_id"] == sid and event["type"] == "created"
        # Resume over TLS from before that event.
        with connect(
            wss + "?cursor=0&types=created", ssl=context, additional_headers=bearer(key)
        ) as ws:
            assert recv_all(ws, 1)[0] == event


def test_a_client_that_vanishes_costs_no_error(node_factory: Factory) -> None:
    node = node_factory()
    key = node.admin_key
    assert key is not None
    ws = connect(url(node), additional_headers=bearer(key))
    # Reset the connection (no close frame, no FIN) while events are on their way.
    ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.socket.close()
    with node.client(key) as client:
        for _ in range(20):
            create(client, "gone")
        with connect(url(node, "cursor=0"), additional_headers=bearer(key)) as other:
            assert len(recv_all(other, 20)) == 20
    node.terminate()
    log = node.log_path.read_text()
    assert '"level":"ERROR"' not in log, log[-2000:]
