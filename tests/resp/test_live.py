"""RESP over real 127.0.0.1 sockets with the real ``redis`` client: pipelining, inline
commands, live fuzzing, a connection flood and the TLS listener."""

from __future__ import annotations

import resource
import socket
import ssl
from typing import Any

import pytest
import redis
import trio
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry

from tokmesh.resp.limits import RespLimits

from .conftest import KEY_ISSUER, KEY_VALIDATOR, SECRET, RespServer, in_thread, start_server
from .test_codec import PIECES, mb, reference

SID = "tmss-01jf8xzm7e3xqh5p8n4r6s2w0t"


def recv_all(sock: socket.socket) -> bytes:
    """Read until EOF (the socket has a timeout, so this cannot hang)."""
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def exchange(server: RespServer, payload: bytes, expect: bytes) -> bytes:
    with server.raw() as s:
        s.sendall(payload)
        buf = b""
        while len(buf) < len(expect):
            data = s.recv(65536)
            if not data:
                break
            buf += data
        return buf


async def test_redis_py_basics_and_auth(fake_server: RespServer) -> None:
    # Unauthenticated: PING answers, data commands get NOAUTH (redis-py itself cannot
    # connect without credentials: its CLIENT SETINFO is refused with NOAUTH, as on a
    # password-protected Redis).
    noauth = b"-NOAUTH TM-AUTH-4010 Authentication required\r\n"
    payload = b"PING\r\n" + mb(b"GET", SID.encode())
    got = await in_thread(exchange, fake_server, payload, b"+PONG\r\n" + noauth)
    assert got == b"+PONG\r\n" + noauth
    c = fake_server.client(username=KEY_ISSUER, password=SECRET)
    assert await in_thread(c.ping) == b"PONG"
    assert await in_thread(c.get, SID) is None
    assert await in_thread(c.exists, SID) == 0
    created = await in_thread(c.execute_command, "TM.CREATE", SID, '{"user_id":"u"}', "TTL", 60)
    assert b'"session_id":"' + SID.encode() in created
    assert await in_thread(c.ttl, SID) in (59, 60)
    assert await in_thread(c.delete, SID) == 1
    single = fake_server.client(password=f"{KEY_VALIDATOR}:{SECRET}")
    assert await in_thread(single.ping) == b"PONG"
    with pytest.raises(redis.ResponseError, match="TM-AUTH-4030 permission denied"):
        await in_thread(single.delete, SID)


async def test_pipeline_of_1000_answered_in_order(fake_server: RespServer) -> None:
    c = fake_server.client(username=KEY_ISSUER, password=SECRET)

    def run() -> list[Any]:
        pipe = c.pipeline(transaction=False)
        for i in range(1000):
            if i % 3 == 0:
                pipe.execute_command("PING", f"m{i}")
            elif i % 3 == 1:
                pipe.exists(SID)
            else:
                pipe.execute_command("TTL", SID)
        return list(pipe.execute())

    results = await in_thread(run)
    assert len(results) == 1000
    for i, r in enumerate(results):
        assert r == (f"m{i}".encode() if i % 3 == 0 else 0 if i % 3 == 1 else -2)


async def test_inline_over_socket(fake_server: RespServer) -> None:
    got = await in_thread(exchange, fake_server, b"PING\r\nPING\r\nPING\r\n", b"+PONG\r\n" * 3)
    assert got == b"+PONG\r\n" * 3


async def test_protocol_errors_close_only_that_connection(fake_server: RespServer) -> None:
    keep = fake_server.client(username=KEY_VALIDATOR, password=SECRET)
    assert await in_thread(keep.execute_command, "PING") == b"PONG"

    def bad(payload: bytes) -> bytes:
        with fake_server.raw() as s:
            s.sendall(payload)
            return recv_all(s)

    assert await in_thread(bad, b"*x\r\n") == b"-ERR protocol error: invalid multibulk length\r\n"
    big = b"*2000\r\n" + b"$1\r\nx\r\n" * 2000
    assert await in_thread(bad, big) == b"-ERR protocol limit exceeded\r\n"
    assert await in_thread(keep.execute_command, "PING", "still") == b"still"


async def test_fuzz_live_connection(fake_server: RespServer) -> None:
    # Random and truncated frames: the server answers what parses, then either
    # "-ERR protocol ..." and a close, or (on our EOF) a close; never a crash or hang.
    # Hypothesis drives blocking sockets from a worker thread while the server runs on
    # the Trio loop of this test.
    keep = fake_server.client(username=KEY_VALIDATOR, password=SECRET)
    assert await in_thread(keep.execute_command, "PING", "before") == b"before"

    @settings(max_examples=80, deadline=None)
    @given(
        data=st.one_of(
            st.binary(max_size=200),
            st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map(b"".join),
        ),
        cut=st.integers(0, 400),
        half_close=st.booleans(),
    )
    def attack(data: bytes, cut: int, half_close: bool) -> None:
        data = data[: cut or None]
        _commands, error = reference(data, RespLimits())
        if error is None and not half_close:
            # Complete commands only: the connection must stay open and answer PING.
            data += b"\r\n*1\r\n$4\r\nPING\r\n" if data and not data.endswith(b"\n") else b""
        with fake_server.raw(timeout=5) as s:
            s.sendall(data)
            if half_close or error is not None:
                s.shutdown(socket.SHUT_WR)
                reply = recv_all(s)
                if error is not None:
                    assert reply.endswith(error)
                else:
                    assert b"-ERR protocol" not in reply
        # The listener and other connections are unaffected.
        with fake_server.raw(timeout=5) as s:
            s.sendall(b"PING alive\r\n")
            assert s.recv(100) == b"$5\r\nalive\r\n"

    await in_thread(attack)
    assert await in_thread(keep.execute_command, "PING", "after") == b"after"
    with trio.fail_after(10):
        while fake_server.stats.active > 1:
            await trio.sleep(0.01)


async def test_flood_of_idle_connections_does_not_stop_service(
    nursery: trio.Nursery, fake_server: RespServer
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 5000
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    socks: list[socket.socket] = []

    def flood() -> None:
        for _ in range(2000):
            socks.append(socket.create_connection(("127.0.0.1", fake_server.port), timeout=10))

    try:
        with trio.fail_after(60):
            await in_thread(flood)
            while fake_server.stats.active < 2000:
                await trio.sleep(0.05)
            fresh = fake_server.client(username=KEY_VALIDATOR, password=SECRET)
            assert await in_thread(fresh.execute_command, "PING", "served") == b"served"
            fresh.close()
            # An idle flood connection is still served too.
            got = await in_thread(exchange_on, socks[0], b"PING\r\n", 7)
            assert got == b"+PONG\r\n"
    finally:
        for s in socks:
            s.close()
    with trio.fail_after(10):
        while fake_server.stats.active > 0:
            await trio.sleep(0.05)


def exchange_on(sock: socket.socket, payload: bytes, n: int) -> bytes:
    sock.sendall(payload)
    buf = b""
    while len(buf) < n:
        buf += sock.recv(n - len(buf))
    return buf


# -- TLS listener ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, require_client: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    if require_client:
        ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def test_tls_listener(nursery: trio.Nursery, ca: trustme.CA, fake_backend: Any) -> None:
    server = await start_server(nursery, fake_backend, ssl_context=server_context(ca))
    with ca.cert_pem.tempfile() as ca_file:
        c = server.client(ssl=True, ssl_ca_certs=ca_file, username=KEY_ISSUER, password=SECRET)
        assert await in_thread(c.ping) == b"PONG"
        assert await in_thread(c.get, SID) is None

    def plaintext() -> bytes:
        with server.raw(timeout=5) as s:
            s.sendall(mb(b"PING"))
            try:
                return recv_all(s)
            except ConnectionResetError:
                return b""

    assert b"PONG" not in await in_thread(plaintext)
    # The listener survives the failed handshake.
    with ca.cert_pem.tempfile() as ca_file:
        c2 = server.client(ssl=True, ssl_ca_certs=ca_file, password=f"{KEY_ISSUER}:{SECRET}")
        assert await in_thread(c2.execute_command, "PING") == b"PONG"


async def test_mtls_rejects_client_without_certificate(
    nursery: trio.Nursery, ca: trustme.CA, fake_backend: Any
) -> None:
    server = await start_server(nursery, fake_backend, ssl_context=server_context(ca, True))
    client_cert = ca.issue_cert("client")
    with ca.cert_pem.tempfile() as ca_file:
        bare = server.client(
            ssl=True,
            ssl_ca_certs=ca_file,
            password=f"{KEY_ISSUER}:{SECRET}",
            retry=Retry(NoBackoff(), 0),
        )
        with pytest.raises(redis.ConnectionError):
            await in_thread(bare.execute_command, "PING")
        with (
            client_cert.cert_chain_pems[0].tempfile() as cert_file,
            client_cert.private_key_pem.tempfile() as key_file,
        ):
            good = server.client(
                ssl=True,
                ssl_ca_certs=ca_file,
                ssl_certfile=cert_file,
                ssl_keyfile=key_file,
                password=f"{KEY_ISSUER}:{SECRET}",
            )
            assert await in_thread(good.execute_command, "PING") == b"PONG"
