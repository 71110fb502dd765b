"""The RESP command table and the per-command pipeline.

:class:`Dispatcher` owns a table ``name -> CommandSpec`` (:mod:`tokmesh.resp.table`:
arity in the Redis convention, who may run it, the handler as a bound method).
:meth:`Dispatcher.dispatch` runs the pipeline for one command and returns either the
reply bytes (reads and errors: answered inline, no ``await``) or an awaitable of them
(mutations, which go through the store actors). The session commands are here and call
the same session operations as the HTTP routes; each mutation that changed a session
writes one audit record, as an HTTP business write does. The connection and server commands
(HELLO, CLIENT, SELECT, ECHO, RESET, COMMAND, INFO) are in
:mod:`tokmesh.resp.server_commands` and go through the same pipeline.

Consecutive mutations of one read are submitted to the store actors together and their
replies awaited in command order (:meth:`Dispatcher.run_awaited`), so they share group
commits of the write-ahead log instead of committing one record each.

Pipeline order: unknown command or subcommand (answered before any authentication check,
as Redis does, so that clients probing for a command can fall back) -> commands open
before AUTH (PING, AUTH, HELLO, QUIT, RESET, the caller's own CLIENT settings) -> NOAUTH
-> re-check of the bound key -> maintenance (data commands only) -> per-key rate limit
-> role -> arity -> execute.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Coroutine, Iterable
from contextvars import ContextVar
from typing import Any, Final

import orjson
import trio

from tokmesh import accel
from tokmesh.domain.apikey import (
    PERM_SESSION_CREATE,
    PERM_SESSION_READ,
    PERM_SESSION_RENEW,
    PERM_SESSION_REVOKE,
    PERM_SESSION_REVOKE_USER,
    PERM_SESSION_TOUCH,
    PERM_TOKEN_VALIDATE,
)
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.ids import normalize_session_id
from tokmesh.domain.session import BATCH_REVOKE_LIMIT, Session
from tokmesh.resp.codec import (
    ERR_NOT_INTEGER,
    ERR_SYNTAX,
    MINUS_ONE,
    MINUS_TWO,
    OK,
    ONE,
    ZERO,
    encode_array,
    encode_bulk,
    encode_error,
    encode_integer,
    parse_integer,
    render_error,
)
from tokmesh.resp.connection import ClientRegistry, Connection, RespStats
from tokmesh.resp.deps import RespBackend, RespPrincipal
from tokmesh.resp.server_commands import ServerCommands
from tokmesh.resp.table import CommandSpec, Done, Handler, HandlerResult, Mutation, pure
from tokmesh.services.session_ops import CreateResult, NotLocal, RequestContext, run_fetching
from tokmesh.telemetry.audit import AuditLog

log = logging.getLogger("tokmesh.resp")

# -- fixed replies ---------------------------------------------------------------------------

# The Redis prefix (clients map it to an authentication error), the catalogue code and
# Redis' wording, so both the Redis and the TokMesh reading of the error hold.
NOAUTH: Final = encode_error("NOAUTH TM-AUTH-4010 Authentication required")
ERR_NO_COMMAND: Final = encode_error("ERR no command")
ERR_INVALID_CURSOR: Final = encode_error("ERR invalid cursor")
ERR_MAINTENANCE: Final = encode_error(
    f"ERR {E.ADMIN_MAINTENANCE.code} service unavailable: restore in progress"
)
ERR_RATE_LIMITED: Final = encode_error(f"ERR {E.SYS_RATE_LIMITED.code} rate limit exceeded")
ERR_INTERNAL: Final = encode_error(f"ERR {E.SYS_INTERNAL.code} internal error")
ERR_BAD_SESSION_ID: Final = encode_error(f"ERR {E.ARG_INVALID.code} invalid session_id format")
ERR_BAD_JSON: Final = encode_error(f"ERR {E.SYS_BAD_REQUEST.code} invalid JSON value")
ERR_TTL_RANGE: Final = encode_error(
    f"ERR {E.ARG_INVALID.code} ttl must be positive and not exceed session.ttl.max"
)
ERR_DEL_TOO_MANY: Final = encode_error(
    f"ERR {E.SESS_QUOTA.code} maximum {BATCH_REVOKE_LIMIT} keys per DEL command"
)
ERR_SESSION_CONFLICT: Final = encode_error(f"ERR {E.SESS_EXISTS.code} session id conflict")
ERR_TOKEN_INVALID: Final = encode_error(f"ERR {E.TOKN_INVALID.code} Token invalid")
ERR_VALIDATE_SYNTAX: Final = encode_error("ERR syntax error, expected 'TOUCH' option")
ERR_SESSION_NOT_FOUND: Final = encode_error(f"ERR {E.SESS_NOT_FOUND.code} Session not found")
ERR_SESSION_EXPIRED: Final = encode_error(f"ERR {E.SESS_EXPIRED.code} Session expired")

_GONE: Final = (E.SESS_NOT_FOUND, E.SESS_EXPIRED)
_TOKEN_ERRORS: Final = (
    E.TOKN_MALFORMED,
    E.TOKN_INVALID,
    E.TOKN_EXPIRED,
    E.TOKN_REVOKED,
    E.ARG_MISSING,  # empty token
)

#: The most mutations of one read submitted together; the next ones are submitted once
#: these are answered. A 64 KiB read holds at most ~1,700 commands, so this bounds the
#: tasks one connection runs at once without splitting a usual pipeline read.
MAX_TOGETHER: Final = 1024

_CURSOR_RE: Final = re.compile(rb"0|[1-9][0-9]{0,19}")
_U64: Final = 1 << 64
_MAX_NAME_ECHO: Final = 128


def _echo_name(raw: bytes, limit: int = _MAX_NAME_ECHO) -> str:
    """Client-sent text made safe to echo in an error line (at most ``limit`` bytes)."""
    text = raw[:limit].decode("utf-8", "replace")
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def unknown_command(argv: list[bytes]) -> bytes:
    """Redis 7's ``-ERR unknown command '<name>', with args beginning with: 'a' 'b' ``.

    The name is echoed as sent; the arguments follow, each quoted and followed by a
    space, until 128 bytes of them are shown (so the line ends with a space, even with
    no arguments, exactly as Redis writes it)."""
    args = ""
    for arg in argv[1:]:
        if len(args) >= _MAX_NAME_ECHO:
            break
        args += f"'{_echo_name(arg, _MAX_NAME_ECHO - len(args))}' "
    return encode_error(
        f"ERR unknown command '{_echo_name(argv[0])}', with args beginning with: {args}"
    )


def unknown_subcommand(spec: CommandSpec, raw: bytes) -> bytes:
    """``-ERR unknown subcommand '<sub>'. Try CLIENT HELP.`` (Redis' wording)."""
    return encode_error(f"ERR unknown subcommand '{_echo_name(raw)}'. Try {spec.name} HELP.")


# -- helpers ----------------------------------------------------------------------------------


def _session_id(raw: bytes) -> str | None:
    """The normalised session id of a key, or ``None`` (an invalid key is "absent")."""
    if len(raw) != 31:
        return None
    return normalize_session_id(raw.decode("latin-1"))


def _json_fields(raw: bytes) -> dict[str, Any]:
    """Parse a SET / TM.CREATE value: a JSON object, else ``TM-SYS-4000``."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise TokMeshError(E.SYS_BAD_REQUEST, "invalid JSON value") from None
    if not isinstance(value, dict):
        raise TokMeshError(E.SYS_BAD_REQUEST, "invalid JSON value")
    return value


def _opt_str(fields: dict[str, Any], name: str) -> str | None:
    """A string field, ``None`` when absent or null; another type is ``TM-SYS-4000``."""
    value = fields.get(name)
    if value is None or isinstance(value, str):
        return value
    raise TokMeshError(E.SYS_BAD_REQUEST, f"invalid JSON value: {name} must be a string")


def _opt_data(fields: dict[str, Any]) -> dict[str, str] | None:
    value = fields.get("data")
    if value is None or isinstance(value, dict):
        return value
    raise TokMeshError(E.SYS_BAD_REQUEST, "invalid JSON value: data must be an object")


@functools.lru_cache(maxsize=64)
def glob_regex(pattern: bytes) -> re.Pattern[bytes]:
    """Compile a Redis glob (``*``, ``?``, ``[...]`` with ``^`` and ranges, ``\\`` escape)."""
    out: list[bytes] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 42:  # '*'
            while i + 1 < n and pattern[i + 1] == 42:
                i += 1
            out.append(b".*")
        elif c == 63:  # '?'
            out.append(b".")
        elif c == 92 and i + 1 < n:  # '\'
            i += 1
            out.append(b"\\x%02x" % pattern[i])
        elif c == 91:  # '['
            j = i + 1
            negate = j < n and pattern[j] == 94
            if negate:
                j += 1
            items: list[bytes] = []
            while j < n and pattern[j] != 93:
                ch = pattern[j]
                if ch == 92 and j + 1 < n:
                    j += 1
                    items.append(b"\\x%02x" % pattern[j])
                elif j + 2 < n and pattern[j + 1] == 45 and pattern[j + 2] != 93:
                    lo, hi = sorted((ch, pattern[j + 2]))
                    items.append(b"\\x%02x-\\x%02x" % (lo, hi))
                    j += 2
                else:
                    items.append(b"\\x%02x" % ch)
                j += 1
            # Redis ends an unterminated class at the end of the pattern.
            body = b"".join(items)
            if not body:
                out.append(b"." if negate else b"(?!)")
            else:
                out.append(b"[" + (b"^" if negate else b"") + body + b"]")
            i = j
        else:
            out.append(b"\\x%02x" % c)
        i += 1
    return re.compile(b"".join(out), re.DOTALL)


async def settle(pending: Awaitable[bytes]) -> bytes:
    """Await a mutation's reply; an error becomes its ``-ERR`` line."""
    try:
        return await pending
    except TokMeshError as exc:
        return render_error(exc)
    except Exception:
        log.exception("RESP command failed")
        return ERR_INTERNAL


#: An audit record kept back: the mutation's place in its run, command, resource, the
#: request context of the key that ran it, and the peer.
_HeldAudit = tuple[int, str, str, RequestContext, str]

#: Set in each task of a run of mutations submitted together (a Trio task runs in its
#: own copy of the context): where :meth:`Dispatcher._audited` keeps that mutation's
#: audit records, with its place in the run. The run writes them in command order once
#: it is answered, so the log of a pipeline reads in the order of its commands, whatever
#: order the commits came back in.
_HELD_AUDITS: ContextVar[tuple[list[_HeldAudit], int] | None] = ContextVar(
    "tokmesh_resp_held_audits", default=None
)


async def _settle_into(
    replies: list[bytes], slot: int, pending: Awaitable[bytes], audits: list[_HeldAudit]
) -> None:
    """One mutation of a run submitted together: its reply goes to its own slot, its
    audit records to ``audits``."""
    _HELD_AUDITS.set((audits, slot))
    replies[slot] = await settle(pending)


class _Waiting:
    """Counts the mutations of a run answered from their commit callbacks."""

    __slots__ = ("_done", "_left")

    def __init__(self) -> None:
        self._left = 0
        self._done: trio.Event | None = None

    def add(self) -> None:
        self._left += 1

    def one_done(self) -> None:
        self._left -= 1
        if self._left == 0 and self._done is not None:
            self._done.set()

    async def all_done(self) -> None:
        if self._left:
            self._done = trio.Event()
            await self._done.wait()


def _slot(held: _HeldAudit) -> int:
    return held[0]


def _create_error(exc: BaseException) -> bytes:
    """The reply of a create that failed: an id conflict has its own line."""
    if isinstance(exc, TokMeshError):
        return ERR_SESSION_CONFLICT if exc.error is E.SESS_EXISTS else render_error(exc)
    log.error("RESP create failed", exc_info=exc)
    return ERR_INTERNAL


def _is_plain_validate(argv: list[bytes]) -> bool:
    """``TM.VALIDATE token`` (without TOUCH, which writes)."""
    return len(argv) == 2 and (argv[0] == b"TM.VALIDATE" or argv[0].upper() == b"TM.VALIDATE")


# -- the dispatcher ---------------------------------------------------------------------------


class Dispatcher:
    """The command table plus the per-command pipeline, over a :class:`RespBackend`."""

    def __init__(
        self,
        backend: RespBackend,
        *,
        scan_count_max: int = 10_000,
        stats: RespStats | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.backend = backend
        #: Where mutations are audited (None: not audited, for protocol-layer tests).
        self.audit = audit
        self.scan_count_max = scan_count_max
        #: The listeners' counters (INFO reads them; the listeners default to these).
        self.stats = stats if stats is not None else RespStats()
        #: The open connections (CLIENT LIST, INFO); the I/O loops open and close them.
        self.clients = ClientRegistry()
        # The hottest call, bound once (the backend's session service never changes).
        self._validate = backend.sessions.validate
        #: The connection and server commands (PING, AUTH, HELLO, CLIENT, INFO...).
        self.server_commands = ServerCommands(self)
        specs = [
            *self.server_commands.specs(),
            CommandSpec("GET", 2, self.cmd_get, PERM_SESSION_READ, repeat=pure(self.cmd_get)),
            CommandSpec("TTL", 2, self.cmd_ttl, PERM_SESSION_READ, repeat=pure(self.cmd_ttl)),
            CommandSpec(
                "EXISTS", -2, self.cmd_exists, PERM_SESSION_READ, repeat=pure(self.cmd_exists)
            ),
            CommandSpec("SCAN", -2, self.cmd_scan, PERM_SESSION_READ),
            CommandSpec(
                "TM.VALIDATE",
                -2,
                self.cmd_tm_validate,
                PERM_TOKEN_VALIDATE,
                max_args=3,
                repeat=self.run_tm_validate,
            ),
            CommandSpec("TM.TOUCH", 2, self.cmd_tm_touch, PERM_SESSION_TOUCH, together=True),
            CommandSpec("SET", -3, self.cmd_set, PERM_SESSION_CREATE, together=True),
            CommandSpec("DEL", -2, self.cmd_del, PERM_SESSION_REVOKE, together=True),
            CommandSpec("EXPIRE", 3, self.cmd_expire, PERM_SESSION_RENEW, together=True),
            CommandSpec("TM.CREATE", -3, self.cmd_tm_create, PERM_SESSION_CREATE, together=True),
            CommandSpec(
                "TM.REVOKE_USER",
                2,
                self.cmd_tm_revoke_user,
                PERM_SESSION_REVOKE_USER,
                together=True,
            ),
        ]
        #: Every command once, in table order (COMMAND lists them).
        self.specs: tuple[CommandSpec, ...] = tuple(specs)
        #: Upper- and lower-case names map to the spec: one dict hit for usual clients.
        self.table: dict[bytes, CommandSpec] = {}
        for spec in specs:
            raw = spec.name.encode("ascii")
            self.table[raw] = spec
            self.table[raw.lower()] = spec
        self._validate_spec = self.table[b"TM.VALIDATE"]
        #: The compiled loop over a read's ``TM.VALIDATE`` frames (None: pure Python).
        self._scan_frames = accel.validate_frames

    # -- pipeline --------------------------------------------------------------------------

    def dispatch(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """Run one command through the pipeline: reply bytes, or an awaitable of them.

        A :class:`TokMeshError` escaping here (or from the awaitable) is rendered by the
        caller with :func:`render_error`. The caller clears ``conn.checked`` before each
        synchronous run of commands and after every ``await``.
        """
        if not argv:
            return ERR_NO_COMMAND
        name = argv[0]
        spec = self.table.get(name)
        if spec is None:
            spec = self.table.get(name.upper())
            if spec is None:
                return unknown_command(argv)
        if spec.subcommands is not None and len(argv) > 1:
            sub = spec.subcommands.get(argv[1].upper())
            if sub is None:
                return unknown_subcommand(spec, argv[1])
            spec = sub
        conn.command = spec.info_name
        roles = spec.roles
        if roles is None:
            if not spec.arity_ok(len(argv)):
                return spec.wrong_arity
            return spec.handler(conn, argv)
        principal = conn.principal
        if principal is None:
            return NOAUTH
        if not conn.checked:
            refused = self._check_run(conn, spec.data)
            if refused is not None:
                return refused
            principal = conn.principal
            assert principal is not None
        try:
            self.backend.rate_limit(principal)
        except TokMeshError:
            return ERR_RATE_LIMITED
        if principal.role not in roles:
            return spec.denied
        if not spec.min_argc <= len(argv) <= spec.max_argc:
            return spec.wrong_arity
        handler = spec.handler
        try:
            return handler(conn, argv)
        except NotLocal:
            return self._elsewhere(handler, conn, argv)

    async def _elsewhere(self, handler: Handler, conn: Connection, argv: list[bytes]) -> bytes:
        """The reply of a read whose data is on another node: the handler runs again,
        awaiting, and each read that raised fetches its answer first."""

        async def again() -> bytes:
            result = handler(conn, argv)
            return result if result.__class__ is bytes else await result  # type: ignore[misc]

        return await run_fetching(again)

    def _check_run(self, conn: Connection, data: bool, now_ms: int | None = None) -> bytes | None:
        """Re-check the bound key, then (for a data command) maintenance, once per
        synchronous run. Returns the refusal, or ``None``; ``conn.checked`` is set once
        both passed (a connection command leaves it clear: the next data command of the
        run still looks at maintenance). ``now_ms``: the run's clock reading, if any."""
        principal = conn.principal
        assert principal is not None
        backend = self.backend
        try:
            fresh = backend.check_principal(principal, now_ms)
        except TokMeshError:
            # A disabled/expired/deleted key loses access at once.
            conn.unbind()
            return NOAUTH
        if fresh is not principal:
            conn.bind(fresh)
        if not data:
            return None
        if backend.in_maintenance():
            return ERR_MAINTENANCE
        # Same answers until the caller's next await (see Connection.checked).
        conn.checked = True
        return None

    def run_inline(
        self,
        conn: Connection,
        commands: list[list[bytes]],
        start: int,
        replies: list[bytes],
    ) -> tuple[int, Awaitable[bytes] | None]:
        """Run ``commands[start:]`` (one read's commands) while they answer inline.

        Appends each reply to ``replies``. Returns ``(i, awaitable)`` for the first
        command that must be awaited (a mutation: its reply is not appended; the caller
        awaits it with :func:`settle`, appends it and continues at ``i + 1``), or
        ``(len(commands), None)`` when all were answered. A QUIT drops the commands
        after it.

        A run of identical consecutive pure reads (a pipeline validating one token
        again and again) is answered by one evaluation: nothing can change the state
        between them (no ``await``), so each copy would get the same answer. Each copy
        still takes its rate-limit token and counts in the metrics; when the bucket
        cannot cover the whole run, the copies run one by one.
        """
        n = len(commands)
        i = start
        dispatch = self.dispatch
        while i < n:
            argv = commands[i]
            j = i + 1
            if j < n and commands[j] == argv:
                while j < n and commands[j] == argv:
                    j += 1
                reply = self._run_of_copies(conn, argv, j - i)
                if reply is not None:
                    replies.extend([reply] * (j - i))
                    i = j
                    continue
            elif j < n and _is_plain_validate(argv) and _is_plain_validate(commands[j]):
                while j < n and _is_plain_validate(commands[j]):
                    j += 1
                answered = self._run_of_validations(conn, commands, i, j, replies)
                if answered:
                    i += answered
                    continue
            try:
                result = dispatch(conn, argv)
            except TokMeshError as exc:
                result = render_error(exc)
            except Exception:
                log.exception("RESP command failed", extra={"command": _echo_name(argv[0])})
                result = ERR_INTERNAL
            if result.__class__ is not bytes:
                return i, result  # type: ignore[return-value]
            replies.append(result)
            i += 1
            if conn.closing:
                break
        return n, None

    async def run_awaited(
        self,
        conn: Connection,
        commands: list[list[bytes]],
        i: int,
        pending: Awaitable[bytes],
        replies: list[bytes],
    ) -> None:
        """Await ``pending`` (the reply to ``commands[i]``), then run the rest of the
        read the same way: :meth:`run_inline` with an ``await`` wherever it stops.

        A :class:`Mutation` with known keys starts a run of mutations submitted together
        (:meth:`_run_together`); any other awaitable is awaited alone.
        """
        next_: Awaitable[bytes] | None = pending
        while next_ is not None:
            if isinstance(next_, Mutation) and next_.keys is not None:
                i, next_ = await self._run_together(conn, commands, i, next_, replies)
            if next_ is not None:
                replies.append(await settle(next_))
            # Other tasks ran meanwhile: re-check the key before the next command.
            conn.checked = False
            if conn.closing:
                return
            i, next_ = self.run_inline(conn, commands, i + 1, replies)

    async def _run_together(
        self,
        conn: Connection,
        commands: list[list[bytes]],
        i: int,
        first: Mutation,
        replies: list[bytes],
    ) -> tuple[int, Awaitable[bytes] | None]:
        """Submit ``first`` (the mutation of ``commands[i]``) and the mutations after it
        without waiting for each other's commit, then await them all.

        Why: awaited one by one, every mutation of a pipeline is a WAL record committed
        alone; submitted together, the records reach the store actors in one scheduler
        pass and share group commits. Each mutation still replies only once its own
        record is committed, and each reply fills its own slot of ``replies``, so the
        replies keep command order.

        The run takes the following commands while they are ``together`` commands, and
        ends before any other command: a read, AUTH, QUIT... then runs after every
        mutation of the run has committed, and sees them. Error replies of the run's
        commands (syntax, rate limit, role) depend on no session, and keep their place.
        A mutation whose keys overlap the run's (same session, user or client token:
        :class:`Mutation`) or are unknown ends the run too: the services check
        preconditions (exists? which user? quota?) against committed state, so it must
        wait for the earlier ones' commits, and its keys, read before them, may be
        stale. It is returned as ``held`` and the caller awaits it alone.

        Returns ``(j, held)``: ``held`` is the awaitable of ``commands[j]``, already
        dispatched; or ``None``, and ``commands[j]`` is the last command of the run.
        """
        table = self.table
        dispatch = self.dispatch
        taken = set(first.keys or ())
        run: list[tuple[int, Mutation]] = [(len(replies), first)]
        replies.append(b"")
        held: Awaitable[bytes] | None = None
        n = min(len(commands), i + MAX_TOGETHER)
        j = i
        # Everything until the first task starts is synchronous: one re-check of the
        # key covers every command of the run (the caller awaited since the last one).
        conn.checked = False
        while j + 1 < n:
            argv = commands[j + 1]
            spec = (table.get(argv[0]) or table.get(argv[0].upper())) if argv else None
            if spec is None or not spec.together:
                break
            j += 1
            try:
                result = dispatch(conn, argv)
            except TokMeshError as exc:
                result = render_error(exc)
            except Exception:
                log.exception("RESP command failed", extra={"command": _echo_name(argv[0])})
                result = ERR_INTERNAL
            if isinstance(result, bytes):
                replies.append(result)
                continue
            if (
                not isinstance(result, Mutation)
                or result.keys is None
                or not taken.isdisjoint(result.keys)
            ):
                held = result
                break
            taken.update(result.keys)
            run.append((len(replies), result))
            replies.append(b"")
        try:
            if len(run) == 1 and first.now is None:
                replies[run[0][0]] = await settle(first)
            else:
                await self._await_run(run, replies)
        except BaseException:
            # Cancelled (write timeout): the held mutation will never run.
            if isinstance(held, Mutation | Coroutine):
                held.close()
            raise
        return j, held

    async def _await_run(self, run: list[tuple[int, Mutation]], replies: list[bytes]) -> None:
        """Submit each mutation of ``run``, each reply into its slot; the audit records
        are written once all are answered, in command order.

        A mutation that can be submitted without waiting (``Mutation.now``) is, and its
        commit callback fills its slot: no task, no reply event, and the store handles
        it on the spot when its shard is idle. The others run in a task each.
        """
        audits: list[_HeldAudit] = []
        waiting = _Waiting()
        try:
            async with trio.open_nursery() as nursery:
                for slot, mutation in run:
                    if mutation.now is not None and self._submit_now(
                        slot, mutation, replies, audits, waiting
                    ):
                        continue
                    nursery.start_soon(_settle_into, replies, slot, mutation, audits)
                await waiting.all_done()
        finally:
            # Also when cancelled: what committed and was audited is logged.
            audits.sort(key=_slot)
            for _, command, resource, ctx, peer_ip in audits:
                self._write_audit(command, resource, ctx, peer_ip)

    def _submit_now(
        self,
        slot: int,
        mutation: Mutation,
        replies: list[bytes],
        audits: list[_HeldAudit],
        waiting: _Waiting,
    ) -> bool:
        """Submit ``mutation`` without waiting, its answer into ``replies[slot]``; False
        when it declines (then it is awaited in a task)."""
        assert mutation.now is not None

        def done(reply: bytes, audit: tuple[Any, ...] | None) -> None:
            replies[slot] = reply
            if audit is not None:
                audits.append((slot, *audit))
            waiting.one_done()

        waiting.add()
        try:
            submitted = mutation.now(done)
        except TokMeshError as exc:
            done(render_error(exc), None)
            submitted = True
        except Exception:
            log.exception("RESP command failed")
            done(ERR_INTERNAL, None)
            submitted = True
        if submitted:
            mutation.close()  # its coroutine never runs
        else:
            waiting.one_done()
        return submitted

    def _validation_run_principal(
        self, conn: Connection, now_ms: int | None = None
    ) -> RespPrincipal | None:
        """The key a run of validations answers for, re-checked once per synchronous run;
        ``None`` when the run must go one by one (no key, or the check refused it: the
        per-command dispatch then gives the refusal). ``now_ms``: the run's clock reading."""
        if conn.principal is None or self._validate_spec.roles is None:
            return None
        if not conn.checked and self._check_run(conn, True, now_ms) is not None:
            return None
        return conn.principal

    def validate_frames(self, conn: Connection, data: bytes) -> tuple[int, int]:
        """Answer the leading ``TM.VALIDATE token`` frames of a read with the compiled loop
        (:mod:`tokmesh.accel`): returns ``(count, end)``, ``count`` validations answered
        ``+OK`` from ``data[:end]``; ``(0, 0)`` leaves the whole read to the parser.

        The checks of :meth:`_run_of_validations` hold: the key is re-checked once per
        synchronous run and its role once, and the rate limit takes the run's tokens at
        once. The loop stops before the first frame that is not a plain validation of a
        valid token (an error, another command, an incomplete frame): the parser and
        :meth:`run_inline` answer from there, so every other reply has one
        implementation. Nothing is counted or charged when the run is refused.

        The key check, the rate limit and the expiry rule share the one clock reading
        the session operations take for the scan: a gateway's read is usually a single
        validation, and this is its whole dispatch.
        """
        scan = self._scan_frames
        roles = self._validate_spec.roles
        if scan is None or conn.principal is None or roles is None:
            return 0, 0
        end = 0

        def run(
            by_token: list[dict[bytes, str]], sessions: list[dict[str, Session]], now_ms: int
        ) -> int:
            nonlocal end
            principal = self._validation_run_principal(conn, now_ms)
            if principal is None or principal.role not in roles:
                return 0  # the parser's path gives the refusal
            count, end = scan(data, by_token, sessions, now_ms)
            if count and not self.backend.take_rate(principal, count, now_ms):
                return 0  # one by one: each gets its own rate-limit answer
            return count

        count = self.backend.sessions.validate_scan(run)
        if not count:
            return 0, 0
        conn.command = self._validate_spec.info_name
        return count, end

    def _run_of_validations(
        self,
        conn: Connection,
        commands: list[list[bytes]],
        start: int,
        end: int,
        replies: list[bytes],
    ) -> int:
        """Answer ``commands[start:end]``, consecutive ``TM.VALIDATE token`` of distinct
        tokens, in one loop; returns how many were answered (0: none, they go one by one).

        A gateway pipelines the validations of many requests. One by one, each pays the
        dispatch (table lookup, key re-check, a rate-limit bucket update, the role and
        arity checks); here the key and role are checked once and the bucket is charged
        for the whole run at once. A token whose session is on another node stops the
        loop: it and the rest go one by one (their rate tokens were already taken with
        the run, so they count twice in the bucket).
        """
        spec = self._validate_spec
        principal = self._validation_run_principal(conn)
        if principal is None or spec.roles is None:
            return 0
        count = end - start
        if not self.backend.take_rate(principal, count):
            return 0
        conn.command = spec.info_name
        if principal.role not in spec.roles:
            replies.extend([spec.denied] * count)
            return count
        validate = self.backend.sessions.validate
        for k in range(start, end):
            try:
                validate(commands[k][1].decode("latin-1"))
            except TokMeshError as exc:
                replies.append(
                    ERR_TOKEN_INVALID if exc.error in _TOKEN_ERRORS else render_error(exc)
                )
                continue
            except NotLocal:
                return k - start
            replies.append(OK)
        return count

    def _run_of_copies(self, conn: Connection, argv: list[bytes], count: int) -> bytes | None:
        """The one reply for ``count`` identical copies of ``argv``, or ``None`` when they
        must run one by one (not a pure read, or the rate limit cannot cover them all)."""
        if not argv:
            return None
        spec = self.table.get(argv[0]) or self.table.get(argv[0].upper())
        if spec is None or spec.repeat is None:
            return None
        conn.command = spec.info_name
        if spec.roles is not None:
            principal = conn.principal
            if principal is None:
                return NOAUTH
            if not conn.checked:
                refused = self._check_run(conn, spec.data)
                if refused is not None:
                    return refused
                principal = conn.principal
                assert principal is not None
            if not self.backend.take_rate(principal, count):
                return None
            if principal.role not in spec.roles:
                return spec.denied
        if not spec.min_argc <= len(argv) <= spec.max_argc:
            return spec.wrong_arity
        try:
            return spec.repeat(conn, argv, count)
        except TokMeshError as exc:
            return render_error(exc)
        except NotLocal:
            return None  # on another node: the copies go one by one, each fetched

    async def execute(self, conn: Connection, argv: list[bytes]) -> bytes:
        """:meth:`dispatch`, awaited and with every error rendered as a reply."""
        conn.checked = False  # a standalone command: always re-check
        try:
            result = self.dispatch(conn, argv)
            if isinstance(result, bytes):
                return result
            return await result
        except TokMeshError as exc:
            return render_error(exc)
        except Exception:
            log.exception("RESP command failed", extra={"command": _echo_name(argv[0])})
            return ERR_INTERNAL

    def _audited(self, conn: Connection, ctx: RequestContext, command: str, resource: str) -> None:
        """One audit record for a mutation that changed something: the command, the
        session (or user) it changed, the key that ran it (``ctx``) and the peer. The
        record carries no argument beyond that, so no token or secret reaches the audit
        log. Inside a run of mutations submitted together it is kept until the run ends
        (see :data:`_HELD_AUDITS`)."""
        if self.audit is None:
            return
        held = _HELD_AUDITS.get()
        if held is not None:
            audits, slot = held
            audits.append((slot, command, resource, ctx, conn.peer_ip))
            return
        self._write_audit(command, resource, ctx, conn.peer_ip)

    def _write_audit(self, command: str, resource: str, ctx: RequestContext, peer_ip: str) -> None:
        audit = self.audit
        if audit is None:
            return
        audit.append_write(
            command,
            resource=resource,
            operator_id=ctx.key_id or None,
            operator_role=ctx.role or None,
            ip_address=peer_ip,
            tcp_remote_ip=peer_ip,
            user_agent=None,
            request_id=None,
            method=None,
            route=None,
            status=None,
        )

    # -- reads (inline, no await) ----------------------------------------------------------

    def _live(self, raw_key: bytes) -> Session | None:
        sid = _session_id(raw_key)
        if sid is None:
            return None
        try:
            return self.backend.sessions.get(sid)
        except TokMeshError as exc:
            if exc.error in _GONE:
                return None
            raise

    def cmd_get(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``GET key``: the session JSON of 03 §3.1, or nil if absent/expired/invalid."""
        session = self._live(argv[1])
        if session is None:
            return conn.proto.nil
        return encode_bulk(orjson.dumps(session.to_public()))

    def cmd_ttl(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``TTL key``: -2 absent/expired, -1 no expiry, else whole seconds left."""
        session = self._live(argv[1])
        if session is None:
            return MINUS_TWO
        end = session.effective_expiry()
        if end == 0:
            return MINUS_ONE
        left = end - self.backend.sessions.clock.now_ms()
        return encode_integer(left // 1000 if left > 0 else 0)

    def cmd_exists(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``EXISTS key [key ...]``: live keys among the arguments, duplicates counted."""
        live = self._live
        return encode_integer(sum(1 for raw in argv[1:] if live(raw) is not None))

    def cmd_scan(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``SCAN cursor [MATCH glob] [COUNT n]``: ``[next_cursor, [keys]]``."""
        if not _CURSOR_RE.fullmatch(argv[1]):
            return ERR_INVALID_CURSOR
        cursor = int(argv[1])
        if cursor >= _U64:
            return ERR_INVALID_CURSOR
        pattern: bytes | None = None
        count = 10
        i, n = 2, len(argv)
        while i < n:
            opt = argv[i].upper()
            if opt == b"MATCH" and i + 1 < n:
                pattern = argv[i + 1]
            elif opt == b"COUNT" and i + 1 < n:
                value = parse_integer(argv[i + 1])
                if value is None:
                    return ERR_NOT_INTEGER
                if value < 1:
                    return ERR_SYNTAX
                count = value
            else:
                return ERR_SYNTAX
            i += 2
        # COUNT is a hint in Redis too: clamping bounds one command's latency.
        next_cursor, ids = self.backend.scanner.scan(cursor, min(count, self.scan_count_max))
        keys = [sid.encode("ascii") for sid in ids]
        if pattern is not None and pattern != b"*":
            match = glob_regex(pattern).fullmatch
            keys = [k for k in keys if match(k)]
        return encode_array([b"%d" % next_cursor, keys])

    def cmd_tm_validate(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``TM.VALIDATE token [TOUCH]``: ``+OK`` or ``TM-TOKN-4010 Token invalid``."""
        if len(argv) == 3:
            if argv[2].upper() != b"TOUCH":
                return ERR_VALIDATE_SYNTAX
            return self._validate_touch(conn, argv[1].decode("latin-1"))
        return self._validate_reply(argv[1], 1)

    def run_tm_validate(self, conn: Connection, argv: list[bytes], count: int) -> bytes | None:
        """``count`` identical ``TM.VALIDATE token``: one validation (TOUCH writes: no)."""
        if len(argv) == 3:
            return None
        return self._validate_reply(argv[1], count)

    def _validate_reply(self, raw_token: bytes, count: int) -> bytes:
        try:
            self._validate(raw_token.decode("latin-1"), count)
        except TokMeshError as exc:
            if exc.error in _TOKEN_ERRORS:
                return ERR_TOKEN_INVALID
            raise
        return OK

    async def _validate_touch(self, conn: Connection, token: str) -> bytes:
        try:
            await self.backend.sessions.validate_touch(conn.ctx, token)
        except TokMeshError as exc:
            if exc.error in _TOKEN_ERRORS:
                return ERR_TOKEN_INVALID
            raise
        return OK

    # -- mutations (through the store actors) ------------------------------------------------

    def _keys(self, sids: Iterable[str], extra: Iterable[str] = ()) -> tuple[str, ...] | None:
        """The keys of a mutation of the sessions ``sids`` (see :class:`Mutation`): the
        ids, the users that hold them now, and ``extra``.

        A session's user is part of it because the user's other mutations depend on their
        order with this one (a create of that user may evict this session; a touch keeps
        an idle session live, which the quota counts). An absent or expired session adds
        no user: the mutation fails whatever the order, unless an earlier mutation of the
        run creates that id, which shares the id. ``None`` when a session's user cannot
        be read without waiting (it is on another node, or the cluster cannot say).
        """
        get = self.backend.sessions.get
        keys = list(extra)
        for sid in sids:
            keys.append(sid)
            try:
                keys.append(get(sid).user_id)
            except TokMeshError as exc:
                if exc.error not in _GONE:
                    return None
            except NotLocal:
                return None
        return tuple(keys)

    def _ttl_seconds(self, raw: bytes) -> int | bytes:
        """An EX / TTL / EXPIRE argument in seconds, or the error reply."""
        value = parse_integer(raw)
        if value is None:
            return ERR_NOT_INTEGER
        if value <= 0 or value * 1000 > self.backend.sessions.settings.ttl_max_ms:
            return ERR_TTL_RANGE
        return value

    def cmd_tm_touch(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``TM.TOUCH session_id``: the new ``last_active`` (ms)."""
        sid = _session_id(argv[1])
        if sid is None:
            return ERR_SESSION_NOT_FOUND
        return Mutation(self._touch(conn, conn.ctx, sid), self._keys((sid,)))

    async def _touch(self, conn: Connection, ctx: RequestContext, sid: str) -> bytes:
        try:
            session = await self.backend.sessions.touch(ctx, sid)
        except TokMeshError as exc:
            if exc.error is E.SESS_NOT_FOUND:
                return ERR_SESSION_NOT_FOUND
            if exc.error is E.SESS_EXPIRED:
                return ERR_SESSION_EXPIRED
            raise
        self._audited(conn, ctx, "TM.TOUCH", sid)
        return encode_integer(session.last_active)

    def cmd_expire(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``EXPIRE key seconds``: renew; ``:1`` renewed, ``:0`` absent/expired."""
        ttl = self._ttl_seconds(argv[2])
        if isinstance(ttl, bytes):
            return ttl
        sid = _session_id(argv[1])
        if sid is None:
            return ZERO
        return Mutation(self._renew(conn, conn.ctx, sid, ttl), self._keys((sid,)))

    async def _renew(self, conn: Connection, ctx: RequestContext, sid: str, ttl: int) -> bytes:
        try:
            await self.backend.sessions.renew(ctx, sid, ttl)
        except TokMeshError as exc:
            if exc.error in _GONE:
                return ZERO
            raise
        self._audited(conn, ctx, "EXPIRE", sid)
        return ONE

    def cmd_del(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``DEL key [key ...]``: live sessions actually revoked (≤ 1000 keys)."""
        if len(argv) - 1 > BATCH_REVOKE_LIMIT:
            return ERR_DEL_TOO_MANY
        sids = [sid for sid in map(_session_id, argv[1:]) if sid is not None]
        return Mutation(self._del(conn, conn.ctx, sids), self._keys(sids))

    async def _del(self, conn: Connection, ctx: RequestContext, sids: list[str]) -> bytes:
        revoke = self.backend.sessions.revoke
        count = 0
        for sid in sids:
            if await revoke(ctx, sid):
                # One record per session revoked: each is a mutation of its own.
                self._audited(conn, ctx, "DEL", sid)
                count += 1
        return encode_integer(count)

    def cmd_tm_revoke_user(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``TM.REVOKE_USER user_id``: number of sessions revoked."""
        try:
            user_id = argv[1].decode("utf-8")
        except UnicodeDecodeError:
            return ZERO  # no stored user id is invalid UTF-8
        # Every other mutation of this user's sessions in the run carries the user id.
        return Mutation(self._revoke_user(conn, conn.ctx, user_id), (user_id,))

    async def _revoke_user(self, conn: Connection, ctx: RequestContext, user_id: str) -> bytes:
        count = await self.backend.sessions.revoke_user(ctx, user_id)
        if count:
            self._audited(conn, ctx, "TM.REVOKE_USER", "user:" + user_id)
        return encode_integer(count)

    def cmd_set(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``SET key json [EX s]``: create (absent/expired key) or update (live key)."""
        ttl: int | None = None
        if len(argv) > 3:
            if len(argv) != 5 or argv[3].upper() != b"EX":
                return ERR_SYNTAX
            parsed = self._ttl_seconds(argv[4])
            if isinstance(parsed, bytes):
                return parsed
            ttl = parsed
        sid = _session_id(argv[1])
        if sid is None:
            return ERR_BAD_SESSION_ID
        fields = _json_fields(argv[2])
        # Created: the user and the client token it names; updated: the session's user.
        extra = [v for v in (fields.get("user_id"), fields.get("token")) if isinstance(v, str)]
        return Mutation(self._set(conn, conn.ctx, sid, fields, ttl), self._keys((sid,), extra))

    async def _set(
        self,
        conn: Connection,
        ctx: RequestContext,
        sid: str,
        fields: dict[str, Any],
        ttl: int | None,
    ) -> bytes:
        await self.backend.sessions.put(
            ctx,
            sid,
            user_id=_opt_str(fields, "user_id"),
            token=_opt_str(fields, "token"),
            device_id=_opt_str(fields, "device_id"),
            data=_opt_data(fields),
            ttl_seconds=ttl,
        )
        self._audited(conn, ctx, "SET", sid)
        return OK

    def cmd_tm_create(self, conn: Connection, argv: list[bytes]) -> HandlerResult:
        """``TM.CREATE key json [TTL s]``: server token; bulk ``{session_id,token,expires_at}``."""
        ttl: int | None = None
        if len(argv) > 3:
            if len(argv) != 5 or argv[3].upper() != b"TTL":
                return ERR_SYNTAX
            parsed = self._ttl_seconds(argv[4])
            if isinstance(parsed, bytes):
                return parsed
            ttl = parsed
        sid = _session_id(argv[1])
        if sid is None:
            return ERR_BAD_SESSION_ID
        fields = _json_fields(argv[2])
        # The new session's user: its quota, its oldest session (evict_oldest) and a
        # revoke of the user depend on the order of that user's mutations. A session
        # that already holds the id is refused or, expired, not live for anyone: its
        # own user is not involved. The token is the server's: no two can collide.
        user = fields.get("user_id")
        keys = (sid, user) if isinstance(user, str) else (sid,)
        ctx = conn.ctx
        return Mutation(
            self._tm_create(conn, ctx, sid, fields, ttl),
            keys,
            functools.partial(self._tm_create_now, conn, ctx, sid, fields, ttl),
        )

    def _tm_create_now(
        self,
        conn: Connection,
        ctx: RequestContext,
        sid: str,
        fields: dict[str, Any],
        ttl: int | None,
        done: Done,
    ) -> bool:
        """:meth:`_tm_create` answered from its commit (see :data:`SubmitNow`)."""
        peer = conn.peer_ip

        def created(result: CreateResult) -> None:
            session = result.session
            body = {
                "session_id": session.id,
                "token": result.token,
                "expires_at": session.expires_at,
            }
            done(encode_bulk(orjson.dumps(body)), ("TM.CREATE", session.id, ctx, peer))

        def failed(exc: BaseException) -> None:
            done(_create_error(exc), None)

        try:
            return self.backend.sessions.create_now(
                ctx,
                _opt_str(fields, "user_id"),
                created,
                failed,
                device_id=_opt_str(fields, "device_id"),
                data=_opt_data(fields),
                ttl_seconds=ttl,
                session_id=sid,
            )
        except TokMeshError as exc:
            failed(exc)
            return True

    async def _tm_create(
        self,
        conn: Connection,
        ctx: RequestContext,
        sid: str,
        fields: dict[str, Any],
        ttl: int | None,
    ) -> bytes:
        user_id = _opt_str(fields, "user_id")
        device_id = _opt_str(fields, "device_id")
        data = _opt_data(fields)
        try:
            result = await self.backend.sessions.create(
                ctx, user_id, device_id=device_id, data=data, ttl_seconds=ttl, session_id=sid
            )
        except TokMeshError as exc:
            return _create_error(exc)
        self._audited(conn, ctx, "TM.CREATE", result.session.id)
        body = {
            "session_id": result.session.id,
            "token": result.token,
            "expires_at": result.session.expires_at,
        }
        return encode_bulk(orjson.dumps(body))
