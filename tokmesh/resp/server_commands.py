"""The connection and server commands: PING, AUTH, QUIT, HELLO, RESET, CLIENT, SELECT,
ECHO, COMMAND, INFO.

They answer as Redis 7 answers them, so that the handshakes of client libraries (HELLO 3
with AUTH, CLIENT SETINFO, SELECT 0), redis-cli and monitoring agents work unchanged.
Their specs join the session commands in the dispatcher's one table and go through the
same pipeline; the state they read and change is the :class:`Connection`.
"""

from __future__ import annotations

import os
import platform
import resource
import secrets
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from tokmesh import __version__
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.resp.codec import (
    ERR_NOT_INTEGER,
    ERR_SYNTAX,
    OK,
    PONG,
    encode_bulk,
    encode_error,
    encode_integer,
    parse_integer,
    render_error,
)
from tokmesh.resp.connection import Connection
from tokmesh.resp.info import REDIS_COMPAT_VERSION, InfoFacts, render_info, wanted_sections
from tokmesh.resp.replies import RESP2, RESP3, Protocol, ReplyValue, Status, Verbatim
from tokmesh.resp.table import OPEN, SIGNED_IN, CommandSpec, HandlerResult, pure
from tokmesh.telemetry.metrics import read_rss_bytes

if TYPE_CHECKING:
    from tokmesh.resp.commands import Dispatcher

ERR_AUTH_FORMAT: Final = encode_error(
    "ERR invalid AUTH format, expected 'key_id:key_secret' or 'key_id key_secret'"
)
ERR_AUTH_INVALID: Final = encode_error(f"ERR {E.AUTH_INVALID.code} invalid credentials")
ERR_AUTH_DISABLED: Final = encode_error(f"ERR {E.AUTH_DISABLED.code} api key disabled")
ERR_AUTH_IP: Final = encode_error(f"ERR {E.AUTH_IP_DENIED.code} client ip not allowed")
_AUTH_REPLIES: Final = {
    # A malformed id or secret is "bad credentials" too: AUTH has no other outcome for it.
    E.AUTH_MISSING: ERR_AUTH_INVALID,
    E.AUTH_INVALID: ERR_AUTH_INVALID,
    E.AUTH_DISABLED: ERR_AUTH_DISABLED,
    E.AUTH_IP_DENIED: ERR_AUTH_IP,
}
# Redis 6's wording (Redis 7 shortened it to "unsupported protocol version"); clients
# only look at the NOPROTO prefix to fall back to RESP2.
ERR_NOPROTO: Final = encode_error("NOPROTO sorry, this protocol version is not supported")
ERR_PROTOVER: Final = encode_error("ERR Protocol version is not an integer or out of range")
ERR_CLIENT_NAME: Final = encode_error(
    "ERR Client names cannot contain spaces, newlines or special characters."
)
ERR_DB_RANGE: Final = encode_error("ERR DB index is out of range")
ERR_CLIENT_ID: Final = encode_error("ERR Invalid client ID")
RESET: Final = b"+RESET\r\n"

# INFO's run_id: random per process, as in Redis (a restart is a new run).
_RUN_ID: Final = secrets.token_hex(20)
_UNAME: Final = platform.uname()
_OS: Final = f"{_UNAME.system} {_UNAME.release} {_UNAME.machine}"
_ARCH_BITS: Final = 64 if sys.maxsize > 2**32 else 32
_INT32: Final = 1 << 31
_CLIENT_TYPES: Final = frozenset({b"normal", b"master", b"replica", b"slave", b"pubsub"})

_CLIENT_HELP: Final = (
    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GETNAME",
    "    Return the name of the current connection.",
    "ID",
    "    Return the ID of the current connection.",
    "INFO",
    "    Return information about the current client connection.",
    "LIST [options ...]",
    "    Return information about client connections (a non-admin key sees its own).",
    "    Options:",
    "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
    "      Return clients of specified type.",
    "    * ID <id> [<id> ...]",
    "      Return clients with the given IDs.",
    "SETNAME <name>",
    "    Assign the name <name> to the current connection.",
    "SETINFO <option> <value>",
    "    Set client meta attr. Options are:",
    "    * LIB-NAME: the client lib name.",
    "    * LIB-VER: the client lib version.",
    "HELP",
    "    Print this help.",
)
_COMMAND_HELP: Final = (
    "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "(no subcommand)",
    "    Return details about all commands.",
    "COUNT",
    "    Return the total number of commands in this server.",
    "INFO [<command-name> ...]",
    "    Return details about multiple commands.",
    "    If no command names are given, documentation details for all",
    "    commands are returned.",
    "DOCS [<command-name> ...]",
    "    Return documentation details about multiple commands.",
    "    If no command names are given, documentation details for all",
    "    commands are returned.",
    "HELP",
    "    Print this help.",
)


def valid_attr(value: bytes) -> bool:
    """Redis' rule for client names and library attributes: printable ASCII without
    spaces (``!`` to ``~``), so that a CLIENT LIST line still splits on spaces."""
    return all(33 <= byte <= 126 for byte in value)


def credentials(user: bytes, password: bytes) -> tuple[bytes, bytes]:
    """The key id and secret of ``AUTH <user> <password>`` (or HELLO's AUTH option).

    Clients given only a password send it with the user ``default`` in HELLO (redis-py,
    go-redis, Lettuce, ioredis): a password of the form ``key_id:key_secret`` with that
    user is the one-argument AUTH form. A key id never is ``default``.
    """
    if user == b"default":
        key_id, sep, secret = password.partition(b":")
        if sep:
            return key_id, secret
    return user, password


def _help(lines: Iterable[str]) -> list[ReplyValue]:
    return [Status(line) for line in lines]


class ServerCommands:
    """Handlers of the connection and server commands, bound to one dispatcher."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        # instantaneous_ops_per_sec: Redis samples it ten times a second in its cron.
        # The RESP front end has no cron, so the rate is measured between INFO calls at
        # least a second apart: a monitor polling INFO gets the rate over its interval.
        self._ops_at = time.monotonic()
        self._ops_commands = 0
        self._ops_rate = 0

    def specs(self) -> list[CommandSpec]:
        """The table entries of these commands."""
        client = [
            CommandSpec("CLIENT|ID", 2, self.client_id, OPEN),
            CommandSpec("CLIENT|GETNAME", 2, self.client_getname, OPEN),
            CommandSpec("CLIENT|SETNAME", 3, self.client_setname, OPEN),
            CommandSpec("CLIENT|SETINFO", 4, self.client_setinfo, OPEN),
            CommandSpec("CLIENT|INFO", 2, self.client_info, OPEN),
            CommandSpec("CLIENT|LIST", -2, self.client_list, SIGNED_IN),
            CommandSpec("CLIENT|HELP", 2, self.client_help, OPEN),
        ]
        command = [
            CommandSpec("COMMAND|COUNT", 2, self.command_count, SIGNED_IN),
            CommandSpec("COMMAND|INFO", -2, self.command_info, SIGNED_IN),
            CommandSpec("COMMAND|DOCS", -2, self.command_docs, SIGNED_IN),
            CommandSpec("COMMAND|HELP", 2, self.command_help, SIGNED_IN),
        ]
        return [
            CommandSpec("PING", -1, self.ping, OPEN, max_args=2, repeat=pure(self.ping)),
            CommandSpec("QUIT", -1, self.quit, OPEN),
            CommandSpec("AUTH", -2, self.auth, OPEN, max_args=3),
            CommandSpec("HELLO", -1, self.hello, OPEN),
            CommandSpec("RESET", 1, self.reset, OPEN),
            CommandSpec("ECHO", 2, self.echo, SIGNED_IN),
            CommandSpec("SELECT", 2, self.select, SIGNED_IN),
            CommandSpec("INFO", -1, self.info, SIGNED_IN),
            # A bare CLIENT is a wrong-arity error, so its own handler is never reached.
            CommandSpec("CLIENT", -2, self.client_help, OPEN, subcommands=client),
            CommandSpec("COMMAND", -1, self.command, SIGNED_IN, subcommands=command),
        ]

    # -- connection ----------------------------------------------------------------------

    def ping(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``PING [msg]``: ``+PONG`` or the message as a bulk string."""
        if len(argv) == 1:
            return PONG
        return encode_bulk(argv[1])

    def quit(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``QUIT``: ``+OK``, then the connection closes."""
        conn.closing = True
        return OK

    def auth(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``AUTH <id> <secret>`` or ``AUTH <id>:<secret>``."""
        if len(argv) == 2:
            key_id, sep, secret = argv[1].partition(b":")
            if not sep:
                return ERR_AUTH_FORMAT
        else:
            key_id, secret = credentials(argv[1], argv[2])
        return self._auth(conn, key_id, secret)

    async def _auth(self, conn: Connection, key_id: bytes, secret: bytes) -> bytes:
        refused = await self.authenticate(conn, key_id, secret)
        return OK if refused is None else refused

    async def authenticate(self, conn: Connection, key_id: bytes, secret: bytes) -> bytes | None:
        """Check the credentials and bind the key: ``None`` on success, else AUTH's error
        reply (HELLO's AUTH option answers the same). A failure keeps whatever the
        connection had before."""
        try:
            # latin-1 maps bytes 1:1, so a non-ASCII credential just fails the format check.
            principal = await self._dispatcher.backend.authenticate(
                key_id.decode("latin-1"), secret.decode("latin-1"), conn.peer_ip
            )
        except TokMeshError as exc:
            return _AUTH_REPLIES.get(exc.error) or render_error(exc)
        conn.bind(principal)
        return None

    def hello(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``HELLO [protover [AUTH user pass] [SETNAME name]]``: switch the protocol and
        answer the server map, in the new protocol. Checked in Redis' order: the version,
        the options, then the credentials (whose failures are AUTH's)."""
        proto: Protocol | None = None
        if len(argv) >= 2:
            version = parse_integer(argv[1])
            if version is None:
                return ERR_PROTOVER
            if version not in (2, 3):
                return ERR_NOPROTO
            proto = RESP3 if version == 3 else RESP2
        auth: tuple[bytes, bytes] | None = None
        name: bytes | None = None
        i, n = 2, len(argv)
        while i < n:
            option = argv[i].upper()
            if option == b"AUTH" and n - i > 2:
                auth = (argv[i + 1], argv[i + 2])
                i += 3
            elif option == b"SETNAME" and n - i > 1:
                name = argv[i + 1]
                if not valid_attr(name):
                    return ERR_CLIENT_NAME
                i += 2
            else:
                text = argv[i][:128].decode("utf-8", "replace")
                return encode_error(f"ERR Syntax error in HELLO option '{text}'")
        if auth is None:
            return self._hello_reply(conn, proto, name)
        return self._hello_auth(conn, proto, name, auth)

    async def _hello_auth(
        self,
        conn: Connection,
        proto: Protocol | None,
        name: bytes | None,
        auth: tuple[bytes, bytes],
    ) -> bytes:
        key_id, secret = credentials(*auth)
        refused = await self.authenticate(conn, key_id, secret)
        if refused is not None:
            return refused  # nothing switched, as in Redis
        return self._hello_reply(conn, proto, name)

    def _hello_reply(self, conn: Connection, proto: Protocol | None, name: bytes | None) -> bytes:
        if name is not None:
            conn.name = name.decode("ascii")
        if proto is not None:
            conn.proto = proto
        return conn.proto.encode(
            {
                "server": "tokmesh",
                "version": REDIS_COMPAT_VERSION,
                "proto": conn.proto.version,
                "id": conn.client_id,
                "mode": "standalone",
                "role": "master",
                "modules": [],
            }
        )

    def reset(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``RESET``: unauthenticated, RESP2, no name; ``+RESET``."""
        conn.reset()
        return RESET

    def echo(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``ECHO message``: the message as a bulk string."""
        return encode_bulk(argv[1])

    def select(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``SELECT index``: TokMesh has one keyspace, database 0."""
        index = parse_integer(argv[1])
        if index is None or not -_INT32 <= index < _INT32:
            return ERR_NOT_INTEGER
        return OK if index == 0 else ERR_DB_RANGE

    # -- CLIENT --------------------------------------------------------------------------

    def client_id(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``CLIENT ID``."""
        return encode_integer(conn.client_id)

    def client_getname(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``CLIENT GETNAME``: the name, or null."""
        return encode_bulk(conn.name) if conn.name else conn.proto.nil

    def client_setname(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``CLIENT SETNAME name`` (an empty name removes it)."""
        if not valid_attr(argv[2]):
            return ERR_CLIENT_NAME
        conn.name = argv[2].decode("ascii")
        return OK

    def client_setinfo(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``CLIENT SETINFO LIB-NAME|LIB-VER value`` (an empty value removes it)."""
        attr, value = argv[2], argv[3]
        shown = attr[:128].decode("utf-8", "replace")
        upper = attr.upper()
        if upper not in (b"LIB-NAME", b"LIB-VER"):
            return encode_error(f"ERR Unrecognized option '{shown}'")
        if not valid_attr(value):
            return encode_error(
                f"ERR {shown} cannot contain spaces, newlines or special characters."
            )
        if upper == b"LIB-NAME":
            conn.lib_name = value.decode("ascii")
        else:
            conn.lib_ver = value.decode("ascii")
        return OK

    def client_info(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``CLIENT INFO``: this connection's CLIENT LIST line."""
        return conn.proto.encode(Verbatim(conn.describe(time.monotonic(), running=True)))

    def client_list(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``CLIENT LIST [TYPE type] | [ID id ...]``. An admin key sees every connection;
        any other key only the connections bound to itself."""
        registry = self._dispatcher.clients
        listed: list[Connection]
        args = argv[2:]
        if not args:
            listed = list(registry)
        elif len(args) == 2 and args[0].upper() == b"TYPE":
            kind = args[1].lower()
            if kind not in _CLIENT_TYPES:
                shown = args[1][:128].decode("utf-8", "replace")
                return encode_error(f"ERR Unknown client type '{shown}'")
            # Every RESP connection of TokMesh is a normal client.
            listed = list(registry) if kind == b"normal" else []
        elif len(args) >= 2 and args[0].upper() == b"ID":
            listed = []
            for raw in args[1:]:
                wanted = parse_integer(raw)
                if wanted is None:
                    return ERR_CLIENT_ID
                found = registry.get(wanted)
                if found is not None:
                    listed.append(found)
        else:
            return ERR_SYNTAX
        principal = conn.principal
        assert principal is not None  # the pipeline let only authenticated callers in
        if principal.role != "admin":
            key_id = principal.key_id
            listed = [c for c in listed if c.principal is not None and c.principal.key_id == key_id]
        now = time.monotonic()
        text = "".join(c.describe(now, running=c is conn) for c in listed)
        return conn.proto.encode(Verbatim(text))

    def client_help(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``CLIENT HELP``."""
        return conn.proto.encode(_help(_CLIENT_HELP))

    # -- COMMAND -------------------------------------------------------------------------

    def _lookup(self, raw: bytes) -> CommandSpec | None:
        """A command by name, or a subcommand by ``container|sub`` (case-insensitive)."""
        top, _, sub = raw.upper().partition(b"|")
        spec = self._dispatcher.table.get(top)
        if spec is None or not sub:
            return spec
        return (spec.subcommands or {}).get(sub)

    def command(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``COMMAND``: the COMMAND INFO entry of every command."""
        return conn.proto.encode([spec.info() for spec in self._dispatcher.specs])

    def command_count(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``COMMAND COUNT``: the number of (top-level) commands."""
        return encode_integer(len(self._dispatcher.specs))

    def command_info(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``COMMAND INFO [name ...]``: one entry per name (null for an unknown one);
        every command without names."""
        if len(argv) == 2:
            return self.command(conn, argv)
        entries: list[ReplyValue] = []
        for raw in argv[2:]:
            spec = self._lookup(raw)
            entries.append(spec.info() if spec is not None else None)
        return conn.proto.encode(entries)

    def command_docs(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``COMMAND DOCS [name ...]``: a map from name to documentation (unknown names
        are left out); every command without names."""
        if len(argv) == 2:
            specs = list(self._dispatcher.specs)
        else:
            specs = [s for s in map(self._lookup, argv[2:]) if s is not None]
        return conn.proto.encode({spec.info_name: spec.docs() for spec in specs})

    def command_help(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``COMMAND HELP``."""
        return conn.proto.encode(_help(_COMMAND_HELP))

    # -- INFO ----------------------------------------------------------------------------

    def info(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``INFO [section ...]``: Redis' text format (see :mod:`tokmesh.resp.info`)."""
        text = render_info(self._facts(conn), wanted_sections(argv[1:]))
        return conn.proto.encode(Verbatim(text))

    def _facts(self, conn: Connection) -> InfoFacts:
        dispatcher = self._dispatcher
        backend = dispatcher.backend
        stats = dispatcher.stats
        node = backend.node_facts()
        rss = read_rss_bytes()
        # ru_maxrss is in KiB on Linux.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        clients = list(dispatcher.clients)
        return InfoFacts(
            tokmesh_version=__version__,
            node_id=node.node_id,
            run_id=_RUN_ID,
            process_id=os.getpid(),
            os=_OS,
            arch_bits=_ARCH_BITS,
            tcp_port=conn.local_port,
            server_time_usec=time.time_ns() // 1000,
            uptime_seconds=max(0, int(time.time() - node.started_at)),
            connected_clients=len(clients),
            max_clients=node.max_clients,
            resp3_clients=sum(1 for c in clients if c.proto.resp3),
            total_connections=stats.total,
            total_commands=stats.commands,
            ops_per_sec=self._ops_per_sec(stats.commands),
            protocol_errors=stats.protocol_errors,
            timeouts=stats.timeouts,
            used_memory=rss,
            peak_memory=max(rss, peak),
            restoring=backend.in_maintenance(),
            sessions=node.sessions,
        )

    def _ops_per_sec(self, commands: int) -> int:
        now = time.monotonic()
        elapsed = now - self._ops_at
        if elapsed >= 1.0:
            self._ops_rate = round((commands - self._ops_commands) / elapsed)
            self._ops_at, self._ops_commands = now, commands
        return self._ops_rate
