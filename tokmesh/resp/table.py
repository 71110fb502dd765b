"""The entries of the RESP command table: what a command needs before it runs, and how
COMMAND describes it.

A :class:`CommandSpec` carries the arity (Redis convention: ``n > 0`` exactly n words,
``n < 0`` at least ``-n``, the name included), who may run it, its handler and, for a
container such as CLIENT, its subcommands (specs of their own, named ``CLIENT|LIST``, as
in Redis). The pipeline that applies them is :meth:`tokmesh.resp.commands.Dispatcher.dispatch`.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any, Final

from tokmesh.domain.apikey import ROLES, role_allows
from tokmesh.domain.errors import E
from tokmesh.resp.codec import encode_error
from tokmesh.resp.command_docs import DOCS, docs_entry, info_entry
from tokmesh.resp.connection import Connection
from tokmesh.resp.replies import ReplyValue

HandlerResult = bytes | Awaitable[bytes]
Handler = Callable[[Connection, list[bytes]], HandlerResult]


#: What a mutation answered without waiting reports: its reply, and the audit record it
#: owes (``(command, resource, ctx, peer_ip)``; None when it changed nothing).
Done = Callable[[bytes, "tuple[Any, ...] | None"], None]

#: A mutation submitted without waiting: ``now(done)`` returns True once submitted, and
#: ``done`` then runs exactly once, at its commit (or at once for an answer known now);
#: False when it declines (a cluster node), and the caller awaits ``reply`` instead.
SubmitNow = Callable[[Done], bool]


class Mutation:
    """The pending reply of a mutation, and what the mutation may touch.

    The handlers of the commands marked ``together`` return one (see
    :meth:`tokmesh.resp.commands.Dispatcher.run_awaited`): consecutive mutations of one
    read whose ``keys`` do not overlap are submitted without waiting for each other's
    commit. ``keys`` holds the session ids, user ids and client tokens the mutation may
    read or change; two mutations that share none cannot see each other's effect, so
    their relative order is unobservable. ``None``: the keys are not known without
    waiting (the session is on another node), and the mutation runs alone.
    """

    __slots__ = ("keys", "now", "reply")

    def __init__(
        self,
        reply: Coroutine[Any, Any, bytes],
        keys: tuple[str, ...] | None,
        now: SubmitNow | None = None,
    ) -> None:
        self.reply = reply
        self.keys = keys
        #: The same mutation submitted without waiting (see :data:`SubmitNow`), or None.
        self.now = now

    def __await__(self) -> Generator[Any, None, bytes]:
        return self.reply.__await__()

    def close(self) -> None:
        """Drop a mutation that will not run (its coroutine never started)."""
        self.reply.close()


#: Answers ``count`` identical copies of a read with one evaluation (``None``: not now).
RunHandler = Callable[[Connection, list[bytes], int], "bytes | None"]

#: Access of the commands anyone may run, before AUTH: PING, AUTH, HELLO, QUIT, RESET
#: and the CLIENT subcommands that concern only the caller's own connection.
OPEN: Final = "open"
#: Access of the connection and server commands any authenticated key may run, whatever
#: its role (INFO, SELECT, ECHO, COMMAND, CLIENT LIST). Maintenance does not stop them.
SIGNED_IN: Final = "signed-in"


def pure(handler: Handler) -> RunHandler:
    """The run handler of a pure read whose handler always answers inline."""

    def repeat(conn: Connection, argv: list[bytes], count: int) -> bytes | None:
        result = handler(conn, argv)
        return result if isinstance(result, bytes) else None

    return repeat


class CommandSpec:
    """One command or subcommand of the table."""

    __slots__ = (
        "arity",
        "data",
        "denied",
        "doc",
        "handler",
        "info_name",
        "max_argc",
        "max_args",
        "min_argc",
        "name",
        "repeat",
        "roles",
        "subcommands",
        "together",
        "wrong_arity",
    )

    def __init__(
        self,
        name: str,
        arity: int,
        handler: Handler,
        access: str,
        max_args: int = 0,
        repeat: RunHandler | None = None,
        subcommands: Sequence[CommandSpec] = (),
        together: bool = False,
    ) -> None:
        """``access``: :data:`OPEN`, :data:`SIGNED_IN`, or the permission a data command
        needs (its roles are those whose permissions include it). ``together``: a
        mutation whose handler answers with a :class:`Mutation` (or an error reply)."""
        self.name = name
        #: Runs of such commands in one read are submitted together; a command that is
        #: not one ends the run, so it runs after every mutation before it committed.
        self.together = together
        #: The name COMMAND and CLIENT LIST show (``get``, ``client|list``).
        self.info_name = name.lower()
        #: For pure reads: the handler of a run of identical copies (see
        #: :meth:`Dispatcher.run_inline`); ``None`` for everything that changes state.
        self.repeat = repeat
        #: ``n > 0``: exactly n words (name included); ``n < 0``: at least ``-n``.
        self.arity = arity
        #: Upper bound on words for variadic commands (0 = none).
        self.max_args = max_args
        #: The arity as a range of word counts (one comparison chain per command).
        self.min_argc = arity if arity >= 0 else -arity
        self.max_argc = arity if arity >= 0 else (max_args or sys.maxsize)
        self.handler = handler
        #: ``None``: needs no authentication.
        self.roles: frozenset[str] | None
        if access == OPEN:
            self.roles = None
        elif access == SIGNED_IN:
            self.roles = frozenset(ROLES)
        else:
            self.roles = frozenset(r for r in ROLES if role_allows(r, access))
        #: A data command: refused while a restore runs (connection commands are not).
        self.data = access not in (OPEN, SIGNED_IN)
        #: A container's subcommands by upper-case name (``None``: not a container).
        self.subcommands: dict[bytes, CommandSpec] | None = None
        if subcommands:
            self.subcommands = {
                sub.name.partition("|")[2].encode("ascii"): sub for sub in subcommands
            }
        self.doc = DOCS[name]
        self.wrong_arity = encode_error(f"ERR wrong number of arguments for '{name}' command")
        self.denied = encode_error(
            f"ERR {E.AUTH_FORBIDDEN.code} permission denied for command '{name}'"
        )

    def arity_ok(self, argc: int) -> bool:
        """True when ``argc`` words (name included) fit the arity."""
        return self.min_argc <= argc <= self.max_argc

    def info(self) -> list[ReplyValue]:
        """This command's COMMAND INFO entry (subcommands nested)."""
        subs = [sub.info() for sub in (self.subcommands or {}).values()]
        return info_entry(self.info_name, self.arity, self.doc, subs)

    def docs(self) -> dict[str, ReplyValue]:
        """This command's COMMAND DOCS entry (subcommands nested)."""
        subs = {sub.info_name: sub.docs() for sub in (self.subcommands or {}).values()}
        return docs_entry(self.doc, subs or None)
