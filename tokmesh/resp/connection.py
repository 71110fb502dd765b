"""Per-connection RESP state (no I/O), the registry of open connections, and the counters.

:class:`Connection` is what a command may read or change about the connection it
arrived on: the key it is bound to, the protocol it negotiated with HELLO, the name and
library it announced with CLIENT SETNAME / SETINFO. The I/O loops (the mux and the TLS
handler) create one through :meth:`ClientRegistry.open` and close it through
:meth:`ClientRegistry.close`; CLIENT LIST and INFO read the registry.
"""

from __future__ import annotations

import ipaddress
import itertools
import time
from collections.abc import Iterator
from typing import Final

from tokmesh.resp.deps import RespPrincipal
from tokmesh.resp.replies import RESP2, Protocol
from tokmesh.services.session_ops import RequestContext

# Client ids are unique for the life of the process, as in Redis (never reused).
_ids: Final = itertools.count(1)


class RespStats:
    """Connection and error counters of the RESP listeners (INFO and the metrics layer)."""

    __slots__ = ("active", "commands", "protocol_errors", "timeouts", "total")

    def __init__(self) -> None:
        self.active = 0
        self.total = 0
        self.commands = 0
        self.protocol_errors = 0
        self.timeouts = 0


def format_addr(addr: object) -> tuple[str, int]:
    """``(host:port, port)`` of a socket address as CLIENT LIST shows it (``[v6]:port``)."""
    if not isinstance(addr, tuple) or len(addr) < 2:
        return "", 0
    host, port = str(addr[0]), int(addr[1])
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return f"{host}:{port}", port
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"{ip.ipv4_mapped}:{port}", port
        return f"[{host}]:{port}", port
    return f"{host}:{port}", port


class Connection:
    """One RESP connection's protocol state: peer, bound key, protocol, announced names."""

    __slots__ = (
        "addr",
        "checked",
        "client_id",
        "closing",
        "command",
        "created",
        "ctx",
        "fd",
        "idle_since",
        "laddr",
        "lib_name",
        "lib_ver",
        "local_port",
        "name",
        "peer_ip",
        "principal",
        "proto",
    )

    def __init__(
        self,
        peer_ip: str,
        *,
        addr: str = "",
        laddr: str = "",
        local_port: int = 0,
        fd: int = -1,
    ) -> None:
        self.client_id = next(_ids)
        self.peer_ip = peer_ip
        #: ``ip:port`` of the peer and of our end, the socket's descriptor (CLIENT LIST).
        self.addr = addr
        self.laddr = laddr
        self.local_port = local_port
        self.fd = fd
        self.principal: RespPrincipal | None = None
        #: Request context of the bound key (RESP sessions: IP = peer, UA = "").
        self.ctx = RequestContext(client_ip=peer_ip)
        #: The reply protocol; HELLO switches it, RESET puts RESP2 back.
        self.proto: Protocol = RESP2
        #: CLIENT SETNAME / HELLO SETNAME, CLIENT SETINFO (empty = not set).
        self.name = ""
        self.lib_name = ""
        self.lib_ver = ""
        #: The last command run (its lower-case Redis name, ``cmd=`` in CLIENT LIST).
        self.command = "NULL"
        #: ``time.monotonic()`` at open, and roughly when the connection last did
        #: something: the I/O loops refresh it about once a second while it is busy, so
        #: the hot path reads no clock for it.
        self.created = time.monotonic()
        self.idle_since = self.created
        #: Set by QUIT: answer, then close; later commands of the read are dropped.
        self.closing = False
        #: True once the bound key passed its re-check (and maintenance was found off)
        #: in the current synchronous run of commands. The caller clears it before each
        #: run and after every ``await``: with no checkpoint in between, no other task
        #: can change the key store or the node phase, so one check per run answers
        #: exactly what one check per command would.
        self.checked = False

    def bind(self, principal: RespPrincipal) -> None:
        """(Re)bind the connection to an authenticated key."""
        self.principal = principal
        self.checked = False
        self.ctx = RequestContext(
            key_id=principal.key_id, role=principal.role, client_ip=self.peer_ip
        )

    def unbind(self) -> None:
        """Back to unauthenticated (the bound key failed its re-check, or RESET)."""
        self.principal = None
        self.checked = False
        self.ctx = RequestContext(client_ip=self.peer_ip)

    def reset(self) -> None:
        """RESET: unauthenticated, RESP2, no name. The library names stay, as in Redis:
        they still describe the client library behind the connection."""
        self.unbind()
        self.proto = RESP2
        self.name = ""

    def describe(self, now: float, running: bool = False) -> str:
        """This connection's CLIENT LIST / CLIENT INFO line (with its ``\\n``).

        ``running``: the line is for the connection asking, which is not idle. The fields
        Redis reports about its buffers and pub/sub are left out: TokMesh has neither
        per-client buffers nor subscriptions to report.
        """
        principal = self.principal
        idle = 0 if running else max(0, int(now - self.idle_since))
        return (
            f"id={self.client_id} addr={self.addr} laddr={self.laddr} fd={self.fd} "
            f"name={self.name} age={max(0, int(now - self.created))} idle={idle} "
            f"flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 watch=0 cmd={self.command} "
            f"user={principal.key_id if principal is not None else ''} redir=-1 "
            f"resp={self.proto.version} lib-name={self.lib_name} lib-ver={self.lib_ver}\n"
        )


class ClientRegistry:
    """The open RESP connections of one server, in the order they were accepted."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: dict[int, Connection] = {}

    def open(
        self, peer_ip: str, *, addr: str = "", laddr: str = "", local_port: int = 0, fd: int = -1
    ) -> Connection:
        """A new connection's state, listed until :meth:`close`."""
        conn = Connection(peer_ip, addr=addr, laddr=laddr, local_port=local_port, fd=fd)
        self._open[conn.client_id] = conn
        return conn

    def close(self, conn: Connection) -> None:
        """The connection is gone (idempotent)."""
        self._open.pop(conn.client_id, None)

    def get(self, client_id: int) -> Connection | None:
        """The open connection with this id, if any."""
        return self._open.get(client_id)

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._open.values()))
