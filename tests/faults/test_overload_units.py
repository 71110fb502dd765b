"""Overload handling without a server process: episodes, the accept loop, the connection
cap, periodic actors that meet an ``OSError``, and the derived cap."""

from __future__ import annotations

import errno
import logging
import math
import socket
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tokmesh.actors.periodic import keep_running
from tokmesh.actors.snapshotter import SnapshotSettings, Snapshotter
from tokmesh.api.accept import ACCEPT_OVERLOAD, ConnectionGate, accept_loop, refuse
from tokmesh.config.descriptors import (
    above_limit_warning,
    derived_max_connections,
    effective_max_connections,
)
from tokmesh.storage import wal_files
from tokmesh.telemetry import metrics
from tokmesh.telemetry.episodes import Episode

pytestmark = pytest.mark.fault

EMFILE = OSError(errno.EMFILE, "Too many open files")


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- episodes ---------------------------------------------------------------------------


def test_an_episode_is_one_warn_and_one_info(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    log = logging.getLogger("test.episode")
    ep = Episode(log, "thing", start="thing failing: {detail}", end="thing works", clock=clock)
    caplog.set_level(logging.INFO, logger="test.episode")
    for _ in range(500):
        ep.failed("EMFILE")
        clock.now += 0.1
    ep.succeeded()
    ep.succeeded()
    records = lines(caplog, "test.episode")
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("WARNING", "thing failing: EMFILE"),
        ("INFO", "thing works after 500 failures in 50.0 s"),
    ]
    assert records[1].failures == 500  # type: ignore[attr-defined]
    assert not any(r.exc_info for r in records)


def test_flapping_episodes_are_rate_limited_and_reported_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    log = logging.getLogger("test.flap")
    ep = Episode(log, "flap", start="failing: {detail}", end="ok", quiet=60.0, clock=clock)
    caplog.set_level(logging.INFO, logger="test.flap")
    for _ in range(30):  # an episode every 2 s for a minute, 3 failures each
        for _ in range(3):
            ep.failed("x")
        clock.now += 1
        ep.succeeded()
        clock.now += 1
    ep.failed("x")  # 60 s after the first WARN: reported, with what was left out
    messages = [r.getMessage() for r in lines(caplog, "test.flap")]
    assert messages == [
        "failing: x",
        "ok after 3 failures in 1.0 s",
        "failing: x (29 shorter episodes with 87 failures since the last report were not logged)",
    ]


def test_an_unlogged_episode_that_lasts_gets_its_warn(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    log = logging.getLogger("test.long")
    ep = Episode(log, "long", start="failing: {detail}", end="ok", quiet=60.0, clock=clock)
    caplog.set_level(logging.INFO, logger="test.long")
    ep.failed("a")
    ep.succeeded()
    clock.now += 5
    for _ in range(100):  # starts inside the quiet time, goes on past it
        ep.failed("b")
        clock.now += 1
    assert [r.levelname for r in lines(caplog, "test.long")] == ["WARNING", "INFO", "WARNING"]


# -- the accept loop --------------------------------------------------------------------


class FlakyListener(trio.abc.Listener[trio.abc.Stream]):
    """Fails ``failures`` times with ``error``, then hands out memory streams."""

    def __init__(self, failures: int, error: OSError) -> None:
        self.failures = failures
        self.error = error
        self.peers: list[trio.abc.Stream] = []

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        if self.failures:
            self.failures -= 1
            raise self.error
        if len(self.peers) >= 2:
            await trio.sleep_forever()
        client, server = trio.testing.memory_stream_pair()
        self.peers.append(client)
        return server

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_accept_loop_waits_out_emfile_and_logs_one_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tokmesh.accept")
    before = sample("tokmesh_accept_errors_total", errno="EMFILE")
    ACCEPT_OVERLOAD.succeeded()  # no episode left over from another test
    served: list[trio.abc.Stream] = []

    async def handler(stream: trio.abc.Stream) -> None:
        served.append(stream)

    listener = FlakyListener(5, EMFILE)
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop, listener, nursery, handler)
        while len(served) < 2:
            await trio.sleep(0.01)
        # Trio's pause between retries, five times.
        assert trio.current_time() - started == pytest.approx(0.5, abs=0.1)
        assert ACCEPT_OVERLOAD.active  # not over until no accept failed for a while
        while ACCEPT_OVERLOAD.active:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert sample("tokmesh_accept_errors_total", errno="EMFILE") - before == 5
    records = lines(caplog, "tokmesh.accept")
    assert [r.levelname for r in records] == ["WARNING", "INFO"]
    assert "EMFILE (Too many open files)" in records[0].getMessage()
    assert records[1].getMessage().startswith("accepting connections again after 5 retries")
    assert not any(r.exc_info for r in records)


async def test_accept_loop_lets_other_errors_end_the_server() -> None:
    listener = FlakyListener(1, OSError(errno.EBADF, "Bad file descriptor"))

    async def handler(stream: trio.abc.Stream) -> None:
        raise AssertionError("never reached")

    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept_loop, listener, nursery, handler)
    assert info.value.subgroup(OSError) is not None


async def test_the_gate_refuses_beyond_the_cap_and_admits_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tokmesh.accept")
    gate = ConnectionGate(2)
    before = sample("tokmesh_connections_refused_total", listener="http")
    assert gate.admit("http") and gate.admit("http")
    assert not gate.admit("http")
    assert not gate.admit("http")
    gate.release()
    assert gate.admit("http")
    assert gate.full.active  # admitted right after a refusal: not over yet
    gate.release()
    await trio.sleep(0.6)  # quiet for longer than it takes to settle
    assert gate.admit("http")
    assert gate.open == 2
    assert sample("tokmesh_connections_refused_total", listener="http") - before == 2
    messages = [r.getMessage() for r in lines(caplog, "tokmesh.accept")]
    assert messages == [
        "connection limit of 2 reached (server.max_connections), first refusal on http: new "
        "connections are closed at once until some end",
        "connection limit: accepting connections again after 2 refusals in 0.0 s",
    ]


async def test_a_refused_connection_gets_the_reply_then_eof_not_a_reset() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
    with client:
        # The request is in the server's receive buffer before the refusal: closing over
        # unread input would make the kernel send a reset instead of our reply and FIN.
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.sleep(0.05)
        conn.setblocking(False)
        refuse(trio.SocketStream(trio.socket.from_stdlib_socket(conn)), b"-ERR max\r\n")
        client.settimeout(5)
        received = b""
        while chunk := client.recv(100):
            received += chunk
    assert received == b"-ERR max\r\n"


# -- periodic actors --------------------------------------------------------------------


async def test_snapshotter_survives_an_oserror_and_says_so_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="tokmesh.actors")
    checks: list[str] = []

    def wal_size_bytes(wal_dir: Path) -> int:
        checks.append(str(wal_dir))
        if len(checks) <= 3:
            raise OSError(errno.EMFILE, "Too many open files", str(wal_dir))
        return 0

    monkeypatch.setattr(wal_files, "wal_size_bytes", wal_size_bytes)
    settings = SnapshotSettings(interval=math.inf, threshold_bytes=1 << 30, check_every=0.01)
    store: Any = None  # never reached: nothing is due
    snap = Snapshotter(store, tmp_path, tmp_path, None, "n", settings)  # type: ignore[arg-type]
    before = sample("tokmesh_actor_errors_total", actor="snapshotter")
    async with trio.open_nursery() as nursery:
        await nursery.start(snap.run)
        with trio.fail_after(5):
            while len(checks) < 6:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()  # it was still running: the errors did not end it
    assert sample("tokmesh_actor_errors_total", actor="snapshotter") - before == 3
    records = lines(caplog, "tokmesh.actors")
    assert [r.levelname for r in records] == ["WARNING", "INFO"]
    assert "snapshotter failed: [Errno 24] Too many open files" in records[0].getMessage()
    assert records[1].getMessage().startswith("snapshotter works again after 3 failures")


async def test_keep_running_restarts_an_actor_after_an_oserror(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.INFO, logger="tokmesh.actors")
    runs = 0

    async def run(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal runs
        runs += 1
        task_status.started()  # every run says so; the parent hears it once
        await trio.sleep(1)
        if runs <= 2:
            raise OSError(errno.EMFILE, "Too many open files")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(keep_running, "unit", run)
        await trio.sleep(60)  # two failures, then a run that settles
        nursery.cancel_scope.cancel()
    assert runs == 3
    assert sample("tokmesh_actor_errors_total", actor="unit") == 2
    messages = [r.getMessage() for r in lines(caplog, "tokmesh.actors")]
    assert len(messages) == 2
    assert messages[0].startswith("unit failed: [Errno 24] Too many open files")
    assert messages[1].startswith("unit works again after 2 failures")


async def test_keep_running_reports_started_once() -> None:
    calls = 0
    runs = 0

    class Counting:
        def started(self, value: object = None) -> None:
            nonlocal calls
            calls += 1

    async def run(*, task_status: Any) -> None:
        nonlocal runs
        runs += 1
        task_status.started()
        await trio.lowlevel.checkpoint()
        if runs < 3:
            raise OSError(errno.EIO, "Input/output error")

    await keep_running("unit_once", run, restart_delay=0, task_status=Counting())
    assert (runs, calls) == (3, 1)


async def test_keep_running_lets_a_bug_end_the_server() -> None:
    async def run(*, task_status: Any) -> None:
        raise ValueError("a bug")

    with pytest.raises(BaseExceptionGroup) as info:
        await keep_running("unit_bug", run)
    assert info.value.subgroup(ValueError) is not None


# -- the derived cap --------------------------------------------------------------------


def test_the_cap_is_derived_from_the_descriptor_limit() -> None:
    assert derived_max_connections(256) == 192
    assert derived_max_connections(1024) == 960
    assert derived_max_connections(40) == 16
    assert derived_max_connections(None) == 0  # unlimited descriptors: no cap
    assert effective_max_connections(0, 256) == 192
    assert effective_max_connections(500, 256) == 500


def test_a_cap_above_the_descriptor_limit_warns() -> None:
    assert above_limit_warning(0, 256) is None
    assert above_limit_warning(192, 256) is None
    warning = above_limit_warning(193, 256)
    assert warning is not None and "RLIMIT_NOFILE 256" in warning
    assert above_limit_warning(10**6, None) is None
