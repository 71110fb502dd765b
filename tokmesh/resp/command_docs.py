"""What COMMAND INFO and COMMAND DOCS say about each TokMesh command, in Redis' shapes.

Clients read these to route keys (first/last key and the key specs), to tell reads from
writes (the flags) and to build help (redis-cli's interactive mode reads COMMAND DOCS and
asserts the types of what it gets, so the shapes must be exactly Redis 7's). The arity
and the subcommands come from the command table itself; this module holds the rest and
turns both into reply values (:mod:`tokmesh.resp.replies`).

Commands Redis also has are described as Redis 7 describes them (flags, ACL categories,
groups), with TokMesh's own arity; the ``TM.*`` commands are in the group ``tokmesh``.
Connection commands TokMesh answers before AUTH carry Redis' ``no_auth`` flag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import attrs

from tokmesh import __version__
from tokmesh.resp.replies import ReplyValue, RespSet, Status


@attrs.frozen
class Arg:
    """One argument as COMMAND DOCS lists it."""

    name: str
    #: ``key``, ``string``, ``integer``, ``pattern``, ``pure-token``, ``oneof``, ``block``.
    type: str
    token: str = ""
    optional: bool = False
    multiple: bool = False
    arguments: tuple[Arg, ...] = ()


@attrs.frozen
class Keys:
    """Where a command's keys are: from argument 1 to ``last`` (0: only that one, -1: all
    the rest), with the key-spec flags Redis uses (``RO``/``RW``/``OW``/``RM`` + access)."""

    flags: tuple[str, ...]
    last: int = 0


@attrs.frozen
class Doc:
    """The description of one command or subcommand."""

    summary: str
    group: str
    since: str
    complexity: str
    flags: tuple[str, ...]
    categories: tuple[str, ...]
    arguments: tuple[Arg, ...] = ()
    keys: Keys | None = None
    tips: tuple[str, ...] = ()


_KEY: Final = Arg("key", "key")
_KEYS: Final = Arg("key", "key", multiple=True)
_FAST_CONN: Final = ("fast",)
_CONN_CATS: Final = ("fast", "connection")
# Redis' flags for the connection commands that run before authentication.
_NO_AUTH: Final = ("noscript", "loading", "stale", "fast", "no_auth", "allow_busy")
_CLIENT_FLAGS: Final = ("noscript", "loading", "stale")
_CLIENT_OPEN_FLAGS: Final = ("noscript", "loading", "stale", "no_auth")
_CLIENT_CATS: Final = ("slow", "connection")
_TM: Final = "tokmesh"
_SINCE: Final = __version__  # the TM.* commands exist since the first release


def _client(
    summary: str,
    args: tuple[Arg, ...] = (),
    *,
    since: str = "2.4.0",
    complexity: str = "O(1)",
    before_auth: bool = True,
) -> Doc:
    flags = _CLIENT_OPEN_FLAGS if before_auth else _CLIENT_FLAGS
    return Doc(summary, "connection", since, complexity, flags, _CLIENT_CATS, args)


def _command(summary: str, args: tuple[Arg, ...] = (), since: str = "7.0.0") -> Doc:
    return Doc(
        summary,
        "server",
        since,
        "O(N) where N is the number of commands to look up",
        ("loading", "stale"),
        ("slow", "connection"),
        args,
    )


#: Every command and subcommand of the table, by its upper-case name (``CLIENT|LIST``).
DOCS: Final[Mapping[str, Doc]] = {
    # -- connection -------------------------------------------------------------------
    "PING": Doc(
        "Returns the server's liveliness response",
        "connection",
        "1.0.0",
        "O(1)",
        ("fast", "no_auth"),
        _CONN_CATS,
        (Arg("message", "string", optional=True),),
    ),
    "ECHO": Doc(
        "Returns the given string",
        "connection",
        "1.0.0",
        "O(1)",
        _FAST_CONN,
        _CONN_CATS,
        (Arg("message", "string"),),
    ),
    "AUTH": Doc(
        "Binds the connection to an API key (key_id:key_secret, or key_id and key_secret)",
        "connection",
        "1.0.0",
        "O(1)",
        _NO_AUTH,
        _CONN_CATS,
        (Arg("username", "string", optional=True), Arg("password", "string")),
    ),
    "HELLO": Doc(
        "Handshakes with the server: protocol version, optional AUTH and client name",
        "connection",
        "6.0.0",
        "O(1)",
        _NO_AUTH,
        _CONN_CATS,
        (
            Arg(
                "arguments",
                "block",
                optional=True,
                arguments=(
                    Arg("protover", "integer"),
                    Arg(
                        "username-password",
                        "block",
                        token="AUTH",
                        optional=True,
                        arguments=(Arg("username", "string"), Arg("password", "string")),
                    ),
                    Arg("clientname", "string", token="SETNAME", optional=True),
                ),
            ),
        ),
    ),
    "QUIT": Doc("Closes the connection", "connection", "1.0.0", "O(1)", _NO_AUTH, _CONN_CATS),
    "RESET": Doc(
        "Resets the connection: unauthenticated, RESP2, no name",
        "connection",
        "6.2.0",
        "O(1)",
        _NO_AUTH,
        _CONN_CATS,
    ),
    "SELECT": Doc(
        "Changes the selected database (TokMesh has only database 0)",
        "connection",
        "1.0.0",
        "O(1)",
        ("loading", "stale", "fast"),
        _CONN_CATS,
        (Arg("index", "integer"),),
    ),
    "CLIENT": Doc(
        "A container for client connection commands",
        "connection",
        "2.4.0",
        "Depends on subcommand.",
        (),
        ("slow",),
    ),
    "CLIENT|ID": _client("Returns the unique client ID of the connection", since="5.0.0"),
    "CLIENT|GETNAME": _client("Returns the name of the connection"),
    "CLIENT|SETNAME": _client("Sets the connection name", (Arg("connection-name", "string"),)),
    "CLIENT|SETINFO": _client(
        "Sets information specific to the client library of the connection",
        (
            Arg(
                "attr",
                "oneof",
                arguments=(
                    Arg("libname", "string", token="LIB-NAME"),
                    Arg("libver", "string", token="LIB-VER"),
                ),
            ),
        ),
        since="7.2.0",
    ),
    "CLIENT|INFO": _client("Returns information about the connection", since="6.2.0"),
    "CLIENT|LIST": _client(
        "Lists client connections (a non-admin key sees its own connections only)",
        (
            Arg(
                "client-type",
                "oneof",
                token="TYPE",
                optional=True,
                arguments=(
                    Arg("normal", "pure-token", token="NORMAL"),
                    Arg("master", "pure-token", token="MASTER"),
                    Arg("replica", "pure-token", token="REPLICA"),
                    Arg("pubsub", "pure-token", token="PUBSUB"),
                ),
            ),
            Arg("client-id", "integer", token="ID", optional=True, multiple=True),
        ),
        complexity="O(N) where N is the number of client connections",
        before_auth=False,
    ),
    "CLIENT|HELP": _client("Returns helpful text about the different subcommands", since="5.0.0"),
    # -- server -----------------------------------------------------------------------
    "INFO": Doc(
        "Returns information and statistics about the server",
        "server",
        "1.0.0",
        "O(1)",
        ("loading", "stale"),
        ("slow", "dangerous"),
        (Arg("section", "string", optional=True, multiple=True),),
        tips=("nondeterministic_output",),
    ),
    "COMMAND": _command("Returns detailed information about all commands", since="2.8.13"),
    "COMMAND|COUNT": _command("Returns a count of commands"),
    "COMMAND|INFO": _command(
        "Returns information about one, multiple or all commands",
        (Arg("command-name", "string", optional=True, multiple=True),),
        since="2.8.13",
    ),
    "COMMAND|DOCS": _command(
        "Returns documentary information about one, multiple or all commands",
        (Arg("command-name", "string", optional=True, multiple=True),),
    ),
    "COMMAND|HELP": _command("Returns helpful text about the different subcommands"),
    # -- sessions ---------------------------------------------------------------------
    "GET": Doc(
        "Returns the session JSON of a session id, nil if absent or expired",
        "string",
        "1.0.0",
        "O(1)",
        ("readonly", "fast"),
        ("read", "string", "fast"),
        (_KEY,),
        Keys(("RO", "access")),
    ),
    "SET": Doc(
        "Creates or updates a session from a JSON value",
        "string",
        "1.0.0",
        "O(1)",
        ("write", "denyoom"),
        ("write", "string", "slow"),
        (_KEY, Arg("value", "string"), Arg("seconds", "integer", token="EX", optional=True)),
        Keys(("RW", "access", "update")),
    ),
    "DEL": Doc(
        "Revokes sessions; returns how many live sessions were revoked",
        "generic",
        "1.0.0",
        "O(N) where N is the number of keys",
        ("write",),
        ("keyspace", "write", "slow"),
        (_KEYS,),
        Keys(("RM", "delete"), last=-1),
    ),
    "EXISTS": Doc(
        "Counts the live sessions among the keys",
        "generic",
        "1.0.0",
        "O(N) where N is the number of keys",
        ("readonly", "fast"),
        ("keyspace", "read", "fast"),
        (_KEYS,),
        Keys(("RO",), last=-1),
    ),
    "EXPIRE": Doc(
        "Renews a session for the given seconds",
        "generic",
        "1.0.0",
        "O(1)",
        ("write", "fast"),
        ("keyspace", "write", "fast"),
        (_KEY, Arg("seconds", "integer")),
        Keys(("RW", "update")),
    ),
    "TTL": Doc(
        "Returns the seconds a session has left",
        "generic",
        "1.0.0",
        "O(1)",
        ("readonly", "fast"),
        ("keyspace", "read", "fast"),
        (_KEY,),
        Keys(("RO", "access")),
    ),
    "SCAN": Doc(
        "Iterates over the live sessions of this node",
        "generic",
        "2.8.0",
        "O(1) for every call. O(N) for a complete iteration",
        ("readonly",),
        ("keyspace", "read", "slow"),
        (
            Arg("cursor", "integer"),
            Arg("pattern", "pattern", token="MATCH", optional=True),
            Arg("count", "integer", token="COUNT", optional=True),
        ),
        tips=("nondeterministic_output",),
    ),
    "TM.VALIDATE": Doc(
        "Validates a token, and with TOUCH records the access",
        _TM,
        _SINCE,
        "O(1)",
        ("fast",),
        ("read", "fast"),
        (Arg("token", "string"), Arg("touch", "pure-token", token="TOUCH", optional=True)),
    ),
    "TM.TOUCH": Doc(
        "Records activity on a session; returns the new last_active (ms)",
        _TM,
        _SINCE,
        "O(1)",
        ("write", "fast"),
        ("keyspace", "write", "fast"),
        (_KEY,),
        Keys(("RW", "update")),
    ),
    "TM.CREATE": Doc(
        "Creates a session with a server-generated token",
        _TM,
        _SINCE,
        "O(1)",
        ("write", "denyoom"),
        ("write", "string", "slow"),
        (_KEY, Arg("value", "string"), Arg("seconds", "integer", token="TTL", optional=True)),
        Keys(("OW", "insert")),
    ),
    "TM.REVOKE_USER": Doc(
        "Revokes every live session of a user",
        _TM,
        _SINCE,
        "O(N) where N is the number of sessions of the user",
        ("write",),
        ("write", "slow"),
        (Arg("user_id", "string"),),
    ),
}


def info_entry(
    name: str, arity: int, doc: Doc, subcommands: Sequence[ReplyValue] = ()
) -> list[ReplyValue]:
    """One COMMAND INFO entry: name, arity, flags, first/last key and step, ACL
    categories, tips, key specs, subcommands (each a nested entry)."""
    keys = doc.keys
    specs: RespSet = RespSet()
    first = last = step = 0
    if keys is not None:
        first, last, step = 1, 1 if keys.last == 0 else keys.last, 1
        spec: dict[str, ReplyValue] = {
            "flags": RespSet(Status(flag) for flag in keys.flags),
            "begin_search": {"type": "index", "spec": {"index": 1}},
            "find_keys": {
                "type": "range",
                "spec": {"lastkey": keys.last, "keystep": 1, "limit": 0},
            },
        }
        specs = RespSet((spec,))
    return [
        name,
        arity,
        RespSet(Status(flag) for flag in doc.flags),
        first,
        last,
        step,
        RespSet(Status("@" + cat) for cat in doc.categories),
        RespSet(doc.tips),
        specs,
        RespSet(subcommands),
    ]


def docs_entry(
    doc: Doc, subcommands: Mapping[str, ReplyValue] | None = None
) -> dict[str, ReplyValue]:
    """One COMMAND DOCS entry (a map; RESP2 clients get it as a flat array)."""
    entry: dict[str, ReplyValue] = {
        "summary": doc.summary,
        "since": doc.since,
        "group": doc.group,
        "complexity": doc.complexity,
    }
    if doc.arguments:
        entry["arguments"] = [_arg_entry(arg) for arg in doc.arguments]
    if subcommands:
        entry["subcommands"] = subcommands
    return entry


def _arg_entry(arg: Arg) -> dict[str, ReplyValue]:
    entry: dict[str, ReplyValue] = {"name": arg.name, "type": arg.type}
    if arg.type == "key":
        entry["key_spec_index"] = 0  # every TokMesh command has at most one key spec
    if arg.token:
        entry["token"] = arg.token
    flags = [Status(f) for f, on in (("optional", arg.optional), ("multiple", arg.multiple)) if on]
    if flags:
        entry["flags"] = RespSet(flags)
    if arg.arguments:
        entry["arguments"] = [_arg_entry(sub) for sub in arg.arguments]
    return entry
