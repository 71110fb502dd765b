"""The Trio stream handler over in-memory streams: batching, ordering, close rules,
timeouts. No sockets (the sans-IO core is driven exactly as a socket would drive it)."""

from __future__ import annotations

import trio
import trio.testing

from tokmesh.resp.commands import Dispatcher
from tokmesh.resp.connection import RespStats
from tokmesh.resp.handler import serve_resp_connection
from tokmesh.resp.limits import RespLimits

from .conftest import KEY_ISSUER, SECRET, FakeBackend


def mb(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


class CountingStream(trio.abc.Stream):
    """Wraps a stream and counts ``send_all`` calls (one per read is the contract)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sends: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def read_until_eof(stream: trio.abc.Stream) -> bytes:
    chunks: list[bytes] = []
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(bytes(data))


async def read_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        data = await stream.receive_some(n - len(buf))
        assert data, f"EOF after {buf!r}"
        buf += bytes(data)
    return buf


async def test_one_send_all_per_read_in_order(nursery: trio.Nursery) -> None:
    client, server = trio.testing.memory_stream_pair()
    counting = CountingStream(server)
    backend = FakeBackend()
    nursery.start_soon(
        serve_resp_connection, counting, Dispatcher(backend), RespLimits(), "1.2.3.4"
    )
    batch = b"".join(mb(b"PING", b"%d" % i) for i in range(200)) + b"PING\r\n"
    await client.send_all(batch)
    expected = b"".join(b"$%d\r\n%d\r\n" % (len(b"%d" % i), i) for i in range(200)) + b"+PONG\r\n"
    assert await read_exactly(client, len(expected)) == expected
    assert counting.sends == [expected]  # every command of the read, one write


async def test_mutations_keep_order_with_reads(nursery: trio.Nursery) -> None:
    client, server = trio.testing.memory_stream_pair()
    backend = FakeBackend()
    nursery.start_soon(serve_resp_connection, server, Dispatcher(backend), RespLimits(), "1.2.3.4")
    sid = b"tmss-01jf8xzm7e3xqh5p8n4r6s2w0t"
    batch = (
        mb(b"AUTH", KEY_ISSUER.encode(), SECRET.encode())
        + mb(b"TM.CREATE", sid, b'{"user_id":"u1"}')
        + mb(b"EXISTS", sid)
        + mb(b"DEL", sid)
        + mb(b"EXISTS", sid)
    )
    await client.send_all(batch)
    head = await read_exactly(client, 5)
    assert head == b"+OK\r\n"
    bulk_head = b""
    while not bulk_head.endswith(b"\r\n"):
        bulk_head += await read_exactly(client, 1)
    body = await read_exactly(client, int(bulk_head[1:-2]) + 2)
    assert b'"session_id":"' + sid + b'"' in body
    assert await read_exactly(client, 12) == b":1\r\n:1\r\n:0\r\n"


async def test_protocol_error_answers_then_closes(nursery: trio.Nursery) -> None:
    client, server = trio.testing.memory_stream_pair()
    stats = RespStats()
    nursery.start_soon(
        serve_resp_connection, server, Dispatcher(FakeBackend()), RespLimits(), "", stats
    )
    await client.send_all(b"PING\r\n*x\r\nPING\r\n")
    assert await read_until_eof(client) == (
        b"+PONG\r\n-ERR protocol error: invalid multibulk length\r\n"
    )
    assert stats.protocol_errors == 1
    await trio.testing.wait_all_tasks_blocked()
    assert stats.active == 0


async def test_limit_error_answers_then_closes(nursery: trio.Nursery) -> None:
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_resp_connection, server, Dispatcher(FakeBackend()), RespLimits(), "")
    await client.send_all(b"*2000\r\n")
    assert await read_until_eof(client) == b"-ERR protocol limit exceeded\r\n"


async def test_quit_replies_ok_then_closes_dropping_later_commands(nursery: trio.Nursery) -> None:
    client, server = trio.testing.memory_stream_pair()
    backend = FakeBackend()
    nursery.start_soon(serve_resp_connection, server, Dispatcher(backend), RespLimits(), "")
    await client.send_all(b"PING\r\nQUIT\r\nAUTH x y\r\n")
    assert await read_until_eof(client) == b"+PONG\r\n+OK\r\n"
    assert backend.auth_calls == 0


async def test_empty_command_keeps_connection(nursery: trio.Nursery) -> None:
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_resp_connection, server, Dispatcher(FakeBackend()), RespLimits(), "")
    await client.send_all(b"\r\n*0\r\nPING\r\n")
    expected = b"-ERR no command\r\n-ERR no command\r\n+PONG\r\n"
    assert await read_exactly(client, len(expected)) == expected


async def test_idle_timeout_closes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client, server = trio.testing.memory_stream_pair()
    stats = RespStats()
    done = trio.Event()

    async def run() -> None:
        await serve_resp_connection(server, Dispatcher(FakeBackend()), RespLimits(), "", stats)
        done.set()

    nursery.start_soon(run)
    start = trio.current_time()
    await client.send_all(b"PING\r\n")
    assert await read_exactly(client, 7) == b"+PONG\r\n"
    await done.wait()
    assert 299 <= trio.current_time() - start <= 301
    assert stats.timeouts == 1
    assert await client.receive_some(10) == b""


async def test_started_command_must_finish_within_command_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # A slowloris sending one byte every 10 s is cut at 30 s, not kept forever.
    client, server = trio.testing.memory_stream_pair()
    done = trio.Event()

    async def run() -> None:
        await serve_resp_connection(server, Dispatcher(FakeBackend()), RespLimits(), "")
        done.set()

    nursery.start_soon(run)
    start = trio.current_time()
    for byte in b"*1\r\n$4\r\nPIN":
        try:
            await client.send_all(bytes([byte]))
        except trio.BrokenResourceError:
            break  # the server closed the connection
        await trio.sleep(10)
    await done.wait()
    assert 29 <= trio.current_time() - start <= 41


async def test_write_timeout_closes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client, server = trio.testing.lockstep_stream_pair()
    stats = RespStats()
    done = trio.Event()

    async def run() -> None:
        await serve_resp_connection(server, Dispatcher(FakeBackend()), RespLimits(), "", stats)
        done.set()

    nursery.start_soon(run)
    start = trio.current_time()
    await client.send_all(b"PING\r\n")  # never read the reply
    await done.wait()
    assert 29 <= trio.current_time() - start <= 31
    assert stats.timeouts == 1


async def test_key_recheck_once_per_inline_run_and_again_after_an_await(
    nursery: trio.Nursery,
) -> None:
    # The bound key is re-checked once per synchronous run of commands; a key disabled
    # while a mutation of the same read was awaiting must refuse the next command.
    client, server = trio.testing.memory_stream_pair()
    backend = FakeBackend()
    checks = 0
    real_check = backend.check_principal

    def counting_check(principal: object, now_ms: int | None = None) -> object:
        nonlocal checks
        checks += 1
        return real_check(principal, now_ms)

    backend.check_principal = counting_check  # type: ignore[method-assign]
    real_touch = backend.sessions.touch

    async def touch_then_disable(ctx: object, session_id: str) -> object:
        backend.keys[KEY_ISSUER].status = "disabled"  # changed by "another task"
        return await real_touch(ctx, session_id)  # type: ignore[arg-type]

    backend.sessions.touch = touch_then_disable  # type: ignore[assignment,method-assign]
    nursery.start_soon(serve_resp_connection, server, Dispatcher(backend), RespLimits(), "")
    sid = b"tmss-01jf8xzm7e3xqh5p8n4r6s2w0t"
    await client.send_all(mb(b"AUTH", KEY_ISSUER.encode(), SECRET.encode()))
    assert await read_exactly(client, 5) == b"+OK\r\n"
    await client.send_all(mb(b"EXISTS", sid) * 5)
    assert await read_exactly(client, 20) == b":0\r\n" * 5
    assert checks == 1  # one inline run: one re-check
    await client.send_all(mb(b"EXISTS", sid) + mb(b"TM.TOUCH", sid) + mb(b"EXISTS", sid))
    expected = b":0\r\n-ERR TM-SESS-4040 Session not found\r\n" + NOAUTH_REPLY
    with trio.fail_after(5):  # a stale check would answer ":0" and never the NOAUTH
        assert await read_exactly(client, len(expected)) == expected


NOAUTH_REPLY = b"-NOAUTH TM-AUTH-4010 Authentication required\r\n"
