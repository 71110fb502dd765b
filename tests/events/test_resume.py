"""Resuming the event stream across server restarts: nothing lost, nothing twice.

Writers keep changing sessions while a watcher is connected; the server is stopped with
SIGTERM and, separately, killed with SIGKILL; the watcher reconnects with its last cursor
each time. The events it received in all must be every acknowledged change, in commit
order (cursors strictly increasing), each exactly once. Run with two independent
WebSocket clients (``websockets`` and ``trio-websocket``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.events.support import (
    Collected,
    Writers,
    collect_trio_websocket,
    collect_websockets,
    events_url,
)
from tests.support.server import ServerProcess

Collector = Callable[[str, str, threading.Event, Collected], None]


class Watch:
    """One connection of the watcher, in a thread."""

    def __init__(self, collector: Collector, url: str, key: str) -> None:
        self.stop = threading.Event()
        self.out = Collected()
        self.thread = threading.Thread(
            target=collector, args=(url, key, self.stop, self.out), daemon=True
        )
        self.thread.start()
        assert self.out.connected.wait(10)

    def wait_events(self, n: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while len(self.out.events) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.out.events) >= n, f"only {len(self.out.events)} events"

    def ended(self, timeout: float = 15) -> Collected:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the connection did not end"
        return self.out

    def close(self) -> Collected:
        self.stop.set()
        return self.ended()


@pytest.mark.parametrize(
    "collector", [collect_websockets, collect_trio_websocket], ids=["websockets", "trio-ws"]
)
def test_resume_after_sigterm_and_kill9_is_exactly_once(
    node_factory: Callable[..., ServerProcess], collector: Collector
) -> None:
    node = node_factory()
    key = node.admin_key
    assert key is not None
    writers = Writers(node, key, threads=3)
    received: list[dict[str, Any]] = []
    watch = Watch(collector, events_url(node), key)
    writers.start()
    try:
        watch.wait_events(50)
        # 1. Graceful stop: the watcher gets 1001 and resumes from its last cursor.
        node.terminate()
        out = watch.ended()
        assert out.close_code == 1001, (out.close_code, out.close_reason)
        received += out.events
        node.start()
        watch = Watch(collector, events_url(node, f"cursor={received[-1]['cursor']}"), key)
        watch.wait_events(50)
        # 2. Crash: the connection just breaks; the cursor still resumes exactly.
        node.kill9()
        out = watch.ended()
        assert out.close_code == 1006
        received += out.events
        node.start()
        watch = Watch(collector, events_url(node, f"cursor={received[-1]['cursor']}"), key)
        watch.wait_events(50)
    finally:
        writers.join()
    # Every acknowledged change must arrive; then nothing more is written.
    wanted = {(kind, sid) for kind, sid in writers.acked if kind != "touched"}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        seen = {(e["type"], e["session_id"]) for e in received + watch.out.events}
        if wanted <= seen:
            break
        time.sleep(0.05)
    received += watch.close().events

    cursors = [int(e["cursor"]) for e in received]
    assert cursors == sorted(set(cursors)), "events out of order or delivered twice"
    seen_pairs = [(e["type"], e["session_id"]) for e in received]
    assert len(seen_pairs) == len(set(seen_pairs)), "a change was delivered twice"
    missing = wanted - set(seen_pairs)
    assert not missing, f"{len(missing)} acknowledged changes never arrived"
    # Touch events are off by default (events.include_touch: false).
    assert not [e for e in received if e["type"] == "touched"]
    # A change the server committed but could not acknowledge before the kill may be
    # there too; anything else would be an event made up.
    attempted = {sid for _, sid in writers.acked}
    unexplained = [e for e in received if e["session_id"] not in attempted]
    assert len(unexplained) <= len(writers.threads) * 2
    # Per session, the events follow its life: created first, versions increasing.
    by_session: dict[str, list[dict[str, Any]]] = {}
    for e in received:
        by_session.setdefault(e["session_id"], []).append(e)
    for events in by_session.values():
        versions = [e["version"] for e in events]
        assert versions == sorted(versions)
        assert events[0]["type"] == "created" or events[0]["session_id"] not in attempted
    assert all(e["by"] == key.split(":")[0] for e in received if e["type"] != "expired")
