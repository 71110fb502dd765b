"""What both ends of the cluster port share: mTLS contexts, peer identity, errors, sending.

The cluster port (:mod:`tokmesh.cluster.rpc_server`, :mod:`tokmesh.cluster.rpc_client`)
speaks the frames of :mod:`tokmesh.cluster.frames` over mutual TLS only. Every node has
one key pair whose certificate, issued by the cluster's own CA, serves both as its server
certificate and as its client certificate; the certificate's common name is the node's
identity. This module builds the two TLS contexts from those files, reloads them without
a restart, decides whether a peer's certificate may speak, and holds the error classes of
a call and the batching writer both ends use.
"""

from __future__ import annotations

import ssl
from typing import Any, Final, Protocol

import trio
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tokmesh.api.tls_reload import CertReloader, server_context
from tokmesh.config.schema import DEFAULT_TLS12_CIPHERS
from tokmesh.domain.errors import E, TokMeshError, lookup

# -- TLS contexts ---------------------------------------------------------------------------


def client_context(
    cert_file: str, key_file: str, ca_file: str, ciphers: str = DEFAULT_TLS12_CIPHERS
) -> ssl.SSLContext:
    """The context a node dials its peers with: it presents the node certificate and
    trusts only the cluster CA, whose certificates must name the address dialled."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


class TlsContexts(Protocol):
    """Where the cluster port takes its contexts from, read again for each connection."""

    @property
    def server_ctx(self) -> ssl.SSLContext:
        """Context for connections accepted on the cluster port."""
        ...

    @property
    def client_ctx(self) -> ssl.SSLContext:
        """Context for connections dialled to peers."""
        ...


class StaticTls:
    """Contexts that never change (tests, benchmarks)."""

    def __init__(self, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
        self.server_ctx = server_ctx
        self.client_ctx = client_ctx


class ClusterTls(CertReloader):
    """The node's cluster contexts, built from ``cluster.tls.*`` files and reloadable.

    A reload builds two new contexts and swaps them in: connections opened afterwards use
    the new certificate and CA, connections already open keep theirs. Unlike a listener's
    in-place reload, swapping lets a new CA *replace* the old one. When the files do not
    form a valid set, nothing changes, an ERROR is logged and
    ``tokmesh_tls_reload_failures_total`` counts it (the shared reloader's reporting).
    Watch the files with :meth:`run`; call :meth:`reload` on SIGHUP.
    """

    def __init__(self, cert_file: str, key_file: str, ca_file: str, interval: float = 1.0) -> None:
        server = server_context(cert_file, key_file, ca_file)
        self.client_ctx = client_context(cert_file, key_file, ca_file)
        super().__init__("cluster", server, cert_file, key_file, ca_file, interval)

    @property
    def server_ctx(self) -> ssl.SSLContext:
        """Context for connections accepted on the cluster port."""
        return self.ctx

    def reload(self) -> bool:
        """Rebuild both contexts from the files; True when the new ones are in use."""
        try:
            server = server_context(self.cert_file, self.key_file, self.client_ca_file)
            client = client_context(self.cert_file, self.key_file, self.client_ca_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.rejected(exc)
            return False
        # Two plain assignments: a connection opened in between uses one old and one new
        # context, each of them complete and valid.
        self.ctx = server
        self.client_ctx = client
        self.applied()
        return True


# -- peer identity --------------------------------------------------------------------------


class PeerRefused(Exception):
    """The peer's certificate chains to the cluster CA but may not speak on the port."""


def peer_identity(der: bytes | None) -> str:
    """The identity (certificate common name) of a peer whose chain OpenSSL verified.

    OpenSSL has checked the chain to the cluster CA and the validity dates. What it lets
    through is checked here: a certificate without the clientAuth extended key usage
    (OpenSSL accepts one with no EKU at all), a CA certificate presented as a node's, and
    a certificate without a common name, which would leave the peer nameless.
    """
    if not der:
        raise PeerRefused("no client certificate")
    cert = x509.load_der_x509_certificate(der)
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        pass
    else:
        if constraints.ca:
            raise PeerRefused("client certificate is a CA certificate")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise PeerRefused("client certificate has no extended key usage clientAuth") from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise PeerRefused("client certificate has no extended key usage clientAuth")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = names[0].value if names else ""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    if not name.strip():
        raise PeerRefused("client certificate has no common name")
    return name


def format_address(address: Any) -> str:
    """``host:port`` of a socket address (``[host]:port`` for IPv6)."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def split_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port`` or ``[v6]:port``; ``ValueError`` if malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"not a host:port address: {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


# -- errors of a call -----------------------------------------------------------------------


class RpcError(Exception):
    """A cluster call did not produce an answer."""


class RpcUnreachable(RpcError):
    """No connection to the peer, or it broke before the answer came.

    ``sent`` is False when the request certainly never left this node (connecting
    failed), so trying elsewhere cannot run it twice.
    """

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class RpcAuthError(RpcUnreachable):
    """The TLS handshake or the peer's certificate check refused the connection."""


class RpcTimeout(RpcError):
    """The call's deadline passed before its answer came."""


class RpcProtocolError(RpcError):
    """The peer broke the frame protocol (or said this node did); the connection is gone."""


class RpcRemoteError(RpcError):
    """The peer ran the call and it failed with a catalogue code."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.details = details

    def as_tokmesh(self) -> TokMeshError:
        """The same failure as a local error, for a front end to render as if the call
        had run here (a code this node does not know becomes an internal error)."""
        try:
            entry = lookup(self.code)
        except KeyError:
            return TokMeshError(E.SYS_INTERNAL, self.message, self.details)
        return TokMeshError(entry, self.message, self.details)


# -- sending --------------------------------------------------------------------------------

#: Bytes asked of the stream per read on either end.
RECEIVE_SIZE: Final = 65536

#: The error code of a connection refused after its TLS handshake (a missing or unusable
#: identity); the client reports it as an authentication failure.
AUTH_REFUSED_CODE: Final = E.AUTH_MISSING.code

#: Bytes a connection may hold unsent before senders wait for the writer.
OUTBOX_LIMIT: Final = 1 << 20


class Outbox:
    """The frames waiting to be written to one stream, written by one task in batches.

    Many calls share a connection and a TLS stream allows one sender at a time. Instead
    of a lock per frame, frames are appended to one buffer and a single writer task sends
    whatever has gathered in one ``send_all``: under load, many frames share one TLS
    record and one system call. Senders wait only when :data:`OUTBOX_LIMIT` bytes are
    pending (a peer that stopped reading).
    """

    def __init__(self, stream: trio.abc.SendStream, limit: int = OUTBOX_LIMIT) -> None:
        self._stream = stream
        self._limit = limit
        self._buf = bytearray()
        self._writer_idle = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()
        self._closed = False
        #: Set when :meth:`run` has returned (everything flushed, or the stream failed).
        self.done = trio.Event()

    async def put(self, frame: bytes) -> None:
        """Queue ``frame``; waits only while the buffer is over its limit.
        ``trio.ClosedResourceError`` once the outbox is closed."""
        while len(self._buf) >= self._limit and not self._closed:
            await self._space.park()
        if self._closed:
            raise trio.ClosedResourceError("connection closed")
        self._buf += frame
        self._writer_idle.unpark()

    def close(self) -> None:
        """Refuse further frames; :meth:`run` returns once the queued ones are written."""
        self._closed = True
        self._space.unpark_all()
        self._writer_idle.unpark_all()

    async def run(self) -> None:
        """Write batches until closed and flushed; raises what the stream raised
        (``trio.BrokenResourceError`` on a broken connection)."""
        try:
            while True:
                if self._buf:
                    data, self._buf = self._buf, bytearray()
                    await self._stream.send_all(data)
                    self._space.unpark_all()
                elif self._closed:
                    return
                else:
                    await self._writer_idle.park()
        finally:
            self._closed = True
            self._space.unpark_all()
            self.done.set()
