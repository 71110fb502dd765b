"""The cluster port over real loopback sockets with mTLS (trustme certificates)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tokmesh.cluster.frames import MAGIC, Decoder, ErrorReply
from tokmesh.cluster.rpc_client import RpcClient, open_rpc_client
from tokmesh.cluster.rpc_server import RpcServer
from tokmesh.cluster.transport import (
    ClusterTls,
    RpcAuthError,
    RpcRemoteError,
    RpcTimeout,
    RpcUnreachable,
    StaticTls,
    client_context,
)
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.telemetry import metrics

Files = tuple[str, str, str]  # cert chain, key, CA


def write_node(ca: trustme.CA, directory: Path, name: str, cn: str | None) -> Files:
    """A node certificate for 127.0.0.1 with common name ``cn`` and the CA, as files."""
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert("127.0.0.1", "localhost", common_name=cn)
    cert, key, ca_file = (directory / f"{name}{ext}" for ext in (".crt", ".key", "-ca.crt"))
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return str(cert), str(key), str(ca_file)


def write_custom_cert(
    ca: trustme.CA,
    directory: Path,
    usages: list[x509.ObjectIdentifier] | None,
    *,
    is_ca: bool = False,
) -> Files:
    """A certificate of the cluster CA with a CN and the extended key ``usages`` (None:
    no such extension at all), marked as a CA certificate when ``is_ca``."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tmnd-server-only")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    )
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file, ca_file = (directory / n for n in ("so.crt", "so.key", "so-ca.crt"))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ca.cert_pem.write_to_path(str(ca_file))
    return str(cert_file), str(key_file), str(ca_file)


def client_tls(files: Files) -> StaticTls:
    ctx = client_context(*files)
    return StaticTls(ctx, ctx)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_files(ca: trustme.CA, tmp_path: Path) -> Files:
    return write_node(ca, tmp_path / "server", "node", "tmnd-server")


@pytest.fixture
def good_client(ca: trustme.CA, tmp_path: Path) -> StaticTls:
    return client_tls(write_node(ca, tmp_path / "client", "node", "tmnd-client"))


async def whoami(peer: str, body: Any) -> Any:
    return {"peer": peer, "body": body}


async def echo(peer: str, body: Any) -> Any:
    return body


async def fail(peer: str, body: Any) -> Any:
    raise TokMeshError(E.SESS_NOT_FOUND, details={"id": body})


async def crash(peer: str, body: Any) -> Any:
    raise RuntimeError("a handler bug")


StartServer = Callable[..., Any]


@pytest.fixture
async def start_server(nursery: trio.Nursery) -> AsyncIterator[StartServer]:
    """``await start_server(tls, port=0)``: a running RpcServer and its address; its
    ``cancel_scope`` stops it."""

    async def start(tls: Any, port: int = 0, **options: Any) -> tuple[RpcServer, str, Any]:
        server = RpcServer(tls, "tmnd-server", handshake_timeout=2.0, **options)
        for name, handler in (("whoami", whoami), ("echo", echo), ("fail", fail)):
            server.register(name, handler)
        server.register("crash", crash)
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[int]) -> None:
            with scope:
                await server.serve("127.0.0.1", port, task_status=task_status)

        bound = await nursery.start(run)
        return server, f"127.0.0.1:{bound}", scope

    yield start


async def test_call_round_trip(
    start_server: StartServer, server_files: Files, good_client: StaticTls
) -> None:
    _, address, _ = await start_server(ClusterTls(*server_files))
    async with open_rpc_client(good_client) as client:
        pong = await client.ping(address, timeout=5)
        assert pong["node_id"] == "tmnd-server"
        assert isinstance(pong["timestamp"], int)
        # The server knows the caller by its certificate's common name.
        reply = await client.call(address, "whoami", {"k": [1, "x"]}, timeout=5)
        assert reply == {"peer": "tmnd-client", "body": {"k": [1, "x"]}}
        # Bytes travel as they are, both ways.
        assert await client.call(address, "echo", b"\x00raw\xff", timeout=5) == b"\x00raw\xff"
        with pytest.raises(RpcRemoteError) as remote:
            await client.call(address, "fail", "tmss-1", timeout=5)
        assert (remote.value.code, remote.value.details) == ("TM-SESS-4040", {"id": "tmss-1"})
        assert remote.value.as_tokmesh().error is E.SESS_NOT_FOUND
        with pytest.raises(RpcRemoteError) as unknown:
            await client.call(address, "no.such.method", None, timeout=5)
        assert unknown.value.code == "TM-SYS-4040"
        with pytest.raises(RpcRemoteError) as bug:
            await client.call(address, "crash", None, timeout=5)
        assert bug.value.code == "TM-SYS-5000"
        # None of these failures cost the connection.
        assert await client.call(address, "echo", 1, timeout=5) == 1
        assert client.connections(address) == 1


async def test_concurrent_calls_share_one_connection_and_answer_out_of_order(
    start_server: StartServer, server_files: Files, good_client: StaticTls
) -> None:
    server, address, _ = await start_server(ClusterTls(*server_files))

    async def sleep_for(peer: str, body: Any) -> Any:
        await trio.sleep(body)
        return body

    server.register("sleep", sleep_for)
    finished: list[float] = []
    async with open_rpc_client(good_client, connections_per_peer=1) as client:

        async def one(delay: float) -> None:
            assert await client.call(address, "sleep", delay, timeout=10) == delay
            finished.append(delay)

        # The slow calls are started first; the quick ones must not wait behind them.
        delays = [0.5] * 10 + [0.0] * 10
        t0 = trio.current_time()
        async with trio.open_nursery() as calls:
            for delay in delays:
                calls.start_soon(one, delay)
        elapsed = trio.current_time() - t0
        assert client.connections(address) == 1
    # Each answer came when its call finished, not in the order started, and the calls
    # overlapped (one after another would take 5 s).
    assert finished == sorted(delays)
    assert elapsed < 2.5


async def test_pool_opens_a_second_connection_only_when_the_first_is_busy(
    start_server: StartServer, server_files: Files, good_client: StaticTls
) -> None:
    server, address, _ = await start_server(ClusterTls(*server_files))
    release = trio.Event()

    async def hold(peer: str, body: Any) -> Any:
        await release.wait()
        return body

    server.register("hold", hold)
    async with open_rpc_client(good_client, connections_per_peer=2) as client:
        await client.ping(address, timeout=5)
        await client.ping(address, timeout=5)
        assert client.connections(address) == 1
        async with trio.open_nursery() as calls:
            for i in range(70):  # more than one connection takes before it counts as busy
                calls.start_soon(functools.partial(client.call, address, "hold", i, timeout=10))
            with trio.fail_after(5):
                while client.connections(address) < 2:
                    await trio.sleep(0.01)
            release.set()
        assert client.connections(address) == 2


def refused_client(kind: str, tmp_path: Path, ca: trustme.CA) -> StaticTls:
    if kind == "no-certificate":
        bare = ssl.create_default_context(cafile=str(tmp_path / "x/x-ca.crt"))
        return StaticTls(bare, bare)
    if kind == "foreign-ca":
        other = trustme.CA()
        cert, key, _ = write_node(other, tmp_path / "foreign", "n", "tmnd-foreign")
        return client_tls((cert, key, str(tmp_path / "x/x-ca.crt")))
    if kind == "no-common-name":
        return client_tls(write_node(ca, tmp_path / "nocn", "n", None))
    if kind == "server-auth-usage-only":
        return client_tls(write_custom_cert(ca, tmp_path / "so", [ExtendedKeyUsageOID.SERVER_AUTH]))
    if kind == "no-extended-key-usage":
        return client_tls(write_custom_cert(ca, tmp_path / "so", None))
    if kind == "ca-flagged":
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        return client_tls(write_custom_cert(ca, tmp_path / "so", usages, is_ca=True))
    if kind == "ca-certificate":
        ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
        ca.private_key_pem.write_to_path(str(tmp_path / "ca.key"))
        return client_tls(
            (str(tmp_path / "ca.crt"), str(tmp_path / "ca.key"), str(tmp_path / "ca.crt"))
        )
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "method"),
    [
        ("no-certificate", ""),
        ("foreign-ca", ""),
        ("no-common-name", "ping"),
        # OpenSSL itself refuses a certificate whose usages exclude clientAuth...
        ("server-auth-usage-only", ""),
        # ...but not one without the extension, nor a CA's own certificate: we do.
        ("no-extended-key-usage", "ping"),
        ("ca-certificate", "ping"),
        ("ca-flagged", "ping"),
    ],
)
async def test_refused_clients_are_logged_and_cannot_call(
    start_server: StartServer,
    server_files: Files,
    good_client: StaticTls,
    ca: trustme.CA,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    method: str,
) -> None:
    write_node(ca, tmp_path / "x", "x", "tmnd-x")  # the CA file the refused clients trust
    _, address, _ = await start_server(ClusterTls(*server_files))
    caplog.set_level(logging.WARNING, logger="tokmesh.cluster.rpc")
    async with open_rpc_client(refused_client(kind, tmp_path, ca)) as client:
        with pytest.raises(RpcAuthError) as refused:
            await client.ping(address, timeout=5)
    assert refused.value.sent is False
    with trio.fail_after(5):  # the server logs once it has seen the handshake fail
        while not [r for r in caplog.records if r.getMessage() == "cluster rpc auth failed"]:
            await trio.sleep(0.01)
    (record,) = [r for r in caplog.records if r.getMessage() == "cluster rpc auth failed"]
    assert record.levelno == logging.WARNING
    assert record.method == method  # type: ignore[attr-defined]
    assert record.peer.startswith("127.0.0.1:")  # type: ignore[attr-defined]
    assert record.error  # type: ignore[attr-defined]
    # The server goes on serving good peers.
    async with open_rpc_client(good_client) as client:
        assert (await client.ping(address, timeout=5))["node_id"] == "tmnd-server"


async def test_deadline_passes_to_the_server_and_times_out_the_call(
    start_server: StartServer, server_files: Files, good_client: StaticTls
) -> None:
    server, address, _ = await start_server(ClusterTls(*server_files))
    cancelled = trio.Event()

    async def stuck(peer: str, body: Any) -> Any:
        try:
            await trio.sleep(60)
        finally:
            cancelled.set()

    server.register("stuck", stuck)
    async with open_rpc_client(good_client) as client:
        await client.ping(address, timeout=5)  # connected: the deadline below is all waiting
        t0 = trio.current_time()
        with pytest.raises(RpcTimeout):
            await client.call(address, "stuck", None, timeout=0.2)
        assert 0.15 <= trio.current_time() - t0 < 2.0
        # The server stopped working on it too: the deadline travelled with the request.
        with trio.fail_after(2):
            await cancelled.wait()
        # The connection is still good.
        assert await client.call(address, "echo", "after", timeout=5) == "after"
        assert client.connections(address) == 1


async def test_unreachable_peer(good_client: StaticTls) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with open_rpc_client(good_client) as client:
            with pytest.raises(RpcUnreachable) as unreachable:
                await client.ping(f"127.0.0.1:{port}", timeout=5)
    assert unreachable.value.sent is False
    assert not isinstance(unreachable.value, RpcAuthError)


async def test_pool_reconnects_after_a_server_restart(
    start_server: StartServer, server_files: Files, good_client: StaticTls
) -> None:
    tls = ClusterTls(*server_files)
    server, address, scope = await start_server(tls)
    async with open_rpc_client(good_client) as client:
        assert (await client.ping(address, timeout=5))["node_id"] == "tmnd-server"
        scope.cancel()
        with trio.fail_after(5):  # the client sees its connection close
            while client.connections(address):
                await trio.sleep(0.01)
        with pytest.raises(RpcUnreachable):
            await client.ping(address, timeout=5)
        await start_server(tls, port=server.port)
        assert (await client.ping(address, timeout=5))["node_id"] == "tmnd-server"
        assert client.connections(address) == 1


async def test_oversized_frame_closes_only_that_connection(
    start_server: StartServer, server_files: Files, good_client: StaticTls
) -> None:
    _, address, _ = await start_server(ClusterTls(*server_files), max_frame_size=4096)
    host, port = address.split(":")
    async with open_rpc_client(good_client) as client:
        assert await client.call(address, "echo", "x" * 3000, timeout=5) == "x" * 3000
        tcp = await trio.open_tcp_stream(host, int(port))
        raw = trio.SSLStream(tcp, good_client.client_ctx, server_hostname=host)
        # A request header declaring a 1 MiB body.
        await raw.send_all(struct.pack(">2sBBBBIII", MAGIC, 1, 1, 0, 4, 1, 1000, 1 << 20) + b"echo")
        decoder = Decoder()
        with trio.fail_after(5):
            while not (frames := decoder.frames()):
                decoder.feed(await raw.receive_some(65536))
        (frame,) = frames
        assert isinstance(frame, ErrorReply)
        assert (frame.request_id, frame.code) == (0, "TM-SYS-4000")
        assert "exceeds the limit" in frame.message
        # Then the server drops the connection (after its linger, as we do not close).
        with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):
            assert await raw.receive_some(65536) == b""
        await trio.aclose_forcefully(raw)
        # The pooled connection and the server carry on.
        assert await client.call(address, "echo", "still", timeout=5) == "still"


async def test_cert_reload_swaps_contexts_and_keeps_the_old_on_failure(
    start_server: StartServer,
    ca: trustme.CA,
    tmp_path: Path,
    good_client: StaticTls,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert, key, ca_file = write_node(ca, tmp_path / "s", "node", "tmnd-server")
    tls = ClusterTls(cert, key, ca_file)
    _, address, _ = await start_server(tls)
    async with open_rpc_client(good_client) as old_client:
        assert await old_client.call(address, "echo", 1, timeout=5) == 1

        # A broken certificate: refused, counted, logged; the old one keeps serving.
        failures = metrics.REGISTRY.get_sample_value("tokmesh_tls_reload_failures_total") or 0.0
        good_pem = Path(cert).read_bytes()
        Path(cert).write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n")
        caplog.set_level(logging.ERROR, logger="tokmesh.tls")
        assert tls.reload() is False
        assert metrics.REGISTRY.get_sample_value("tokmesh_tls_reload_failures_total") == (
            failures + 1
        )
        assert any(r.levelno == logging.ERROR for r in caplog.records)
        async with open_rpc_client(good_client) as fresh:
            assert await fresh.call(address, "echo", 2, timeout=5) == 2
        Path(cert).write_bytes(good_pem)

        # A new CA and certificate: new connections need the new CA, open ones go on.
        new_ca = trustme.CA()
        write_node(new_ca, tmp_path / "s", "node", "tmnd-server-2")
        assert tls.reload() is True
        new_client = client_tls(write_node(new_ca, tmp_path / "c2", "node", "tmnd-client-2"))
        async with open_rpc_client(new_client) as client:
            assert await client.call(address, "whoami", None, timeout=5) == {
                "peer": "tmnd-client-2",
                "body": None,
            }
        async with open_rpc_client(good_client) as stale:
            with pytest.raises(RpcAuthError):
                await stale.call(address, "echo", 3, timeout=5)
        assert await old_client.call(address, "echo", 4, timeout=5) == 4


async def test_client_requires_a_running_nursery(good_client: StaticTls) -> None:
    client = RpcClient(good_client)
    with pytest.raises(RuntimeError):
        await client.ping("127.0.0.1:1", timeout=1)
