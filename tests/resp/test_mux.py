"""The plain-socket fast path (tokmesh/resp/mux.py) and pipelined-copy coalescing.

Real 127.0.0.1 sockets: plain connections are served by the one mux task, so these are
the timeouts of 03 §5.1, the hand-over to the connection's task (mutations, replies the
kernel does not take at once) and the one-evaluation answer to a run of identical reads
(``Dispatcher.run_inline``), which must give exactly the answers of running them one by
one: rate limit per copy, metrics per copy, a mutation ends the run.
"""

from __future__ import annotations

import contextlib
import socket
import time

import trio

from tokmesh.resp.limits import RespLimits
from tokmesh.telemetry import metrics

from .conftest import (
    KEY_ISSUER,
    SECRET,
    FakeBackend,
    RealStack,
    in_thread,
    start_server,
)


def mb(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def read_lines(sock: socket.socket, n: int) -> list[bytes]:
    buf = b""
    while buf.count(b"\r\n") < n:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    return buf.split(b"\r\n")[:n]


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed ``sock`` (reads and drops whatever arrives)."""
    start = time.monotonic()
    sock.settimeout(seconds)
    while True:
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except ConnectionResetError:
            return time.monotonic() - start


def send_until_blocked(sock: socket.socket, payload: bytes) -> None:
    """Send what the kernel takes; stop at a full buffer or when the server hangs up."""
    sock.settimeout(2)
    # A timeout (buffers full) or a reset (the server closed): both expected.
    with contextlib.suppress(OSError):
        sock.sendall(payload)


AUTH = mb(b"AUTH", KEY_ISSUER.encode(), SECRET.encode())


# -- timeouts -----------------------------------------------------------------------------


async def test_idle_timeout_closes_a_plain_connection(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, FakeBackend(), RespLimits(idle_timeout=0.3))
    with server.raw() as s:
        s.sendall(b"PING\r\n")
        assert await in_thread(read_lines, s, 1) == [b"+PONG"]
        waited = await in_thread(closed_within, s, 5)
    assert 0.25 <= waited < 2.0
    assert server.stats.timeouts == 1
    with trio.fail_after(5):
        while server.stats.active:
            await trio.sleep(0.01)


async def test_busy_connection_is_not_idle(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, FakeBackend(), RespLimits(idle_timeout=0.4))
    with server.raw() as s:
        for _ in range(12):  # 1.2 s of traffic, one command every 0.1 s
            s.sendall(b"PING\r\n")
            assert await in_thread(read_lines, s, 1) == [b"+PONG"]
            await trio.sleep(0.1)
    assert server.stats.timeouts == 0


async def test_started_command_must_finish_in_time_even_when_trickled(
    nursery: trio.Nursery,
) -> None:
    limits = RespLimits(idle_timeout=60, command_timeout=0.4)
    server = await start_server(nursery, FakeBackend(), limits)
    with server.raw() as s:
        started = time.monotonic()
        # A byte every 0.1 s never completes the command: the command timeout, counted
        # from its first byte, ends it (the idle timeout alone never would).
        for byte in b"*2\r\n$4\r\nPI":
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
            await trio.sleep(0.1)
        waited = await in_thread(closed_within, s, 5)
        total = time.monotonic() - started
    assert total < 5.0, (total, waited)
    assert server.stats.timeouts == 1


async def test_reader_that_stops_reading_hits_the_write_timeout_alone(
    nursery: trio.Nursery,
) -> None:
    limits = RespLimits(write_timeout=0.5, idle_timeout=60)
    server = await start_server(nursery, FakeBackend(), limits)
    big = b"x" * 400_000
    stuck = server.raw()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        # ~20 MB of echoed replies that nobody reads: the kernel takes part of the
        # first reply, the connection's task gets the rest and times out.
        payload = mb(b"PING", big) * 50
        await in_thread(send_until_blocked, stuck, payload[:2_000_000])
        # Meanwhile the mux keeps serving everybody else.
        with server.raw() as other:
            other.sendall(b"PING\r\n")
            assert await in_thread(read_lines, other, 1) == [b"+PONG"]
        with trio.fail_after(10):
            while server.stats.timeouts < 1:
                await trio.sleep(0.05)
        assert await in_thread(closed_within, stuck, 5) < 5
    finally:
        stuck.close()


# -- hand-over and order ----------------------------------------------------------------------


async def test_mutations_hand_over_and_replies_keep_order(nursery: trio.Nursery) -> None:
    backend = FakeBackend()
    server = await start_server(nursery, backend)
    sid = b"tmss-01jf8xzm7e3xqh5p8n4r6s2w0t"
    token = b"tmtk_" + b"A" * 43
    value = b'{"user_id":"u1","token":"' + token + b'"}'
    pipeline = (
        AUTH
        + mb(b"GET", sid)
        + mb(b"SET", sid, value, b"EX", b"600")
        + mb(b"EXISTS", sid)
        + mb(b"TM.VALIDATE", token)
        + mb(b"TM.VALIDATE", token)
        + mb(b"DEL", sid)
        + mb(b"TM.VALIDATE", token)
        + mb(b"TM.VALIDATE", token)
        + mb(b"PING")
    )
    with server.raw() as s:
        s.sendall(pipeline)
        lines = await in_thread(read_lines, s, 9)
    assert lines[0] == b"+OK"  # AUTH
    assert lines[1] == b"$-1"  # GET before SET: nil
    assert lines[2] == b"+OK"  # SET (awaited by the connection's task)
    assert lines[3] == b":1"  # EXISTS after it sees it
    assert lines[4:6] == [b"+OK", b"+OK"]  # two identical validations
    assert lines[6] == b":1"  # DEL
    assert lines[7].startswith(b"-ERR TM-TOKN-4010") and lines[8].startswith(b"-ERR TM-TOKN")


async def test_quit_inside_a_run_of_copies_stops_there(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, FakeBackend())
    with server.raw() as s:
        s.sendall(b"PING\r\nPING\r\nQUIT\r\nPING\r\nPING\r\n")
        data = await in_thread(closed_within_collect, s)
    assert data == b"+PONG\r\n+PONG\r\n+OK\r\n"


def closed_within_collect(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    out = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return out
        out += data


# -- coalescing against the real services --------------------------------------------------------


async def test_copies_are_rate_limited_one_by_one(real_stack: RealStack) -> None:
    issuer, issuer_secret = await real_stack.new_key("issuer")
    kid, secret = await real_stack.new_key("validator", rate_limit=10)
    client = real_stack.client_for(issuer, issuer_secret)
    sid = "tmss-01jf8xzm7e3xqh5p8n4r6s2w0t"
    created = await in_thread(
        client.execute_command, "TM.CREATE", sid, '{"user_id":"u"}', "TTL", 600
    )
    token = created.split(b'"token":"')[1].split(b'"')[0]
    valid_before = metrics.TOKEN_VALIDATE_VALID.value
    with real_stack.server.raw() as s:
        s.sendall(mb(b"AUTH", kid.encode(), secret.encode()) + mb(b"TM.VALIDATE", token) * 30)
        lines = await in_thread(read_lines, s, 31)
    assert lines[0] == b"+OK"
    replies = lines[1:]
    # The bucket holds 10 tokens (rate_limit=10): exactly the sequential answers.
    assert replies[:10] == [b"+OK"] * 10
    assert replies[10:] == [b"-ERR TM-SYS-4290 rate limit exceeded"] * 20
    assert metrics.TOKEN_VALIDATE_VALID.value - valid_before == 10


async def test_copies_count_in_metrics_and_stop_at_a_revocation(real_stack: RealStack) -> None:
    issuer, issuer_secret = await real_stack.new_key("issuer")
    client = real_stack.client_for(issuer, issuer_secret)
    sid = b"tmss-01jf8xzm7e3xqh5p8n4r6s2w0v"
    created = await in_thread(
        client.execute_command, "TM.CREATE", sid.decode(), '{"user_id":"u"}', "TTL", 600
    )
    token = created.split(b'"token":"')[1].split(b'"')[0]
    valid_before = metrics.TOKEN_VALIDATE_VALID.value
    invalid_before = metrics.TOKEN_VALIDATE_INVALID.value
    pipeline = (
        mb(b"AUTH", issuer.encode(), issuer_secret.encode())
        + mb(b"TM.VALIDATE", token) * 40
        + mb(b"DEL", sid)
        + mb(b"TM.VALIDATE", token) * 25
    )
    with real_stack.server.raw() as s:
        s.sendall(pipeline)
        lines = await in_thread(read_lines, s, 67)
    assert lines[1:41] == [b"+OK"] * 40
    assert lines[41] == b":1"
    assert lines[42:] == [b"-ERR TM-TOKN-4010 Token invalid"] * 25
    assert metrics.TOKEN_VALIDATE_VALID.value - valid_before == 40
    assert metrics.TOKEN_VALIDATE_INVALID.value - invalid_before == 25


async def test_copies_after_a_key_is_disabled_get_noauth(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("validator")
    token = b"tmtk_" + b"A" * 43
    with real_stack.server.raw() as s:
        s.sendall(mb(b"AUTH", kid.encode(), secret.encode()))
        assert await in_thread(read_lines, s, 1) == [b"+OK"]
        await real_stack.keys.set_status(kid, "disabled")
        s.sendall(mb(b"TM.VALIDATE", token) * 5)
        lines = await in_thread(read_lines, s, 5)
    assert lines == [b"-NOAUTH TM-AUTH-4010 Authentication required"] * 5
