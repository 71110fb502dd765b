"""The one interface every front end calls for sessions: :class:`SessionOperations`.

HTTP routes (``tokmesh.api.business``), RESP commands (``tokmesh.resp.commands``) and
the admin routes call these methods and nothing below them, so a behaviour lives in one
place and the fronts cannot disagree. Two implementations are meant to exist:

* **local** (:class:`tokmesh.services.sessions.SessionService`): the rules of each
  operation, executed on this node's store actors and committed state;
* **forwarding** (the cluster layer, to come): the same methods, which run the local
  implementation when this node owns the session's shard and otherwise send the call,
  arguments and :class:`RequestContext` as they are, to the owner over the cluster port,
  and return (or raise) what the owner answered.

So every argument is plain data that can cross the wire, everything the operation needs
about the caller travels in :class:`RequestContext`, and nothing here knows about HTTP,
RESP, sockets or wire formats. Failures are :class:`~tokmesh.domain.errors.TokMeshError`
with a catalogue code, which every front renders in its own way.

The reads (:meth:`SessionOperations.get`, :meth:`~SessionOperations.validate`,
:meth:`~SessionOperations.list_sessions`) are synchronous: the fronts answer them inline,
without a task switch, which is what keeps validation at a few microseconds. A
forwarding implementation answers them inline for the shards it owns; for the others it
raises :class:`NotLocal`, and the front awaits its ``fetch`` and runs the same handler
again (:func:`run_fetching`), which then finds the other node's answer parked for it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import attrs

from tokmesh.domain.clock import Clock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.session import Session
from tokmesh.domain.session_settings import SessionSettings

T = TypeVar("T")

#: A compiled validation loop (:meth:`SessionOperations.validate_scan`):
#: ``scan(by_token, sessions, now_ms)`` with the two maps as the compiled accelerator
#: reads them (the segment dicts of the store's segmented maps).
TokenScan = Callable[[list[dict[bytes, str]], list[dict[str, Session]], int], int]


class NotLocal(Exception):
    """A read that this node cannot answer without waiting: its data lives on another node.

    Raised by the synchronous reads of a forwarding implementation. The front that called
    the read awaits :attr:`fetch` (which asks the node that holds the data and parks its
    answer) and then calls the same handler again: the same read now returns (or raises)
    the parked answer at once. So every read handler is written once, synchronously, and
    answers inline whenever the data is local.
    """

    def __init__(self, fetch: Callable[[], Awaitable[None]]) -> None:
        super().__init__("the answer lives on another node")
        self.fetch = fetch


# The answers fetches parked for the handler running in this task, by key, for as long as
# run_fetching runs it (each Trio task has its own context, so concurrent requests never
# see each other's answers). A handler that reads several keys (EXISTS a b c) finds the
# answers of the earlier fetches again each time it runs.
_PARKED: contextvars.ContextVar[dict[object, tuple[Any, BaseException | None]] | None] = (
    contextvars.ContextVar("tokmesh_parked_reads", default=None)
)

#: The most remote reads one handler may wait for (a multi-key command over many nodes).
MAX_FETCHES = 1024


def park(key: object, value: Any = None, error: BaseException | None = None) -> None:
    """Keep ``value`` (or ``error``) as the answer to reads of ``key`` by the handler
    :func:`run_fetching` is running; a fetch behind :class:`NotLocal` calls it."""
    parked = _PARKED.get()
    if parked is None:
        parked = {}
        _PARKED.set(parked)
    parked[key] = (value, error)


def take_parked(key: object) -> tuple[bool, Any]:
    """``(True, value)`` if a fetch parked an answer for ``key``; raises the parked error
    instead of returning it; ``(False, None)`` if there is none."""
    parked = _PARKED.get()
    if not parked or key not in parked:
        return False, None
    value, error = parked[key]
    if error is not None:
        raise error
    return True, value


async def run_fetching(handler: Callable[[], Awaitable[T]]) -> T:
    """``await handler()``; each time a read in it raises :class:`NotLocal`, fetch that
    answer and run the handler again (it then finds every answer fetched so far).
    Handlers read before they write, so running one again repeats no change.
    """
    try:
        # The usual case (every read local) costs nothing more than the call.
        return await handler()
    except NotLocal as first:
        elsewhere = first
    token = _PARKED.set({})
    try:
        for _ in range(MAX_FETCHES):
            await elsewhere.fetch()
            try:
                return await handler()
            except NotLocal as again:
                elsewhere = again
        raise TokMeshError(E.ARG_INVALID, f"more than {MAX_FETCHES} remote reads in one request")
    finally:
        _PARKED.reset(token)


@attrs.define
class RequestContext:
    """Who is calling and from where: what an operation may need about the request.

    ``client_ip`` and ``user_agent`` become session fields (creation, validate-touch);
    ``key_id`` is the ``created_by`` of a new session; ``request_id`` ties log lines of
    a forwarded call to the request that caused it. Never changed once built (not a
    frozen class: that triples the cost of building one, once per request).
    """

    request_id: str = ""
    key_id: str = ""
    role: str = ""
    client_ip: str = ""
    user_agent: str = ""


@attrs.define
class CreateResult:
    """A created session and its plaintext token (returned once, never stored)."""

    session: Session
    token: str


@attrs.frozen
class ListQuery:
    """Filters, sort and paging of a session listing (``GET /sessions``)."""

    user_id: str | None = None
    device_id: str | None = None
    key_id: str | None = None
    ip_address: str | None = None
    created_after: int | None = None
    created_before: int | None = None
    active_after: int | None = None
    status: str = "active"
    sort_by: str = "created_at"
    sort_order: str = "desc"
    page: int = 1
    size: int = 20


@attrs.frozen
class ListResult:
    """One page of sessions plus the number of matches before paging."""

    items: list[Session]
    total: int
    page: int
    size: int


class SessionOperations(Protocol):
    """Create, read, validate, touch, renew, update, put, revoke and list sessions.

    Session ids and tokens are given as the caller sent them; the implementation
    normalises and checks them. ``sync`` on the revocations asks for the reply to wait
    until every node refuses the session (a standalone node always does at once).
    """

    @property
    def settings(self) -> SessionSettings:
        """The ``session.*`` settings (the fronts check TTL arguments against the max)."""
        ...

    @property
    def clock(self) -> Clock:
        """The clock every operation reads (``TTL`` computes the time left with it)."""
        ...

    # -- reads, answered without waiting --------------------------------------------------

    def get(self, session_id: str) -> Session:
        """The live session: ``TM-SESS-4040`` absent/invalid/revoked, ``4041`` expired."""
        ...

    def validate(self, token: str, count: int = 1) -> Session:
        """The session of a valid token, nothing changed; token errors ``TM-TOKN-4000``
        (malformed), ``4010`` (unknown), ``4011`` (expired), ``4012`` (revoked).

        ``count`` > 1: the answer stands for that many identical validations made at the
        same instant (a RESP pipeline run); they all count in the metrics.
        """
        ...

    def validate_scan(self, scan: TokenScan) -> int:
        """Validations answered by ``scan`` over the live token index at one instant.

        ``scan(by_token, sessions, now_ms)`` reads the token-digest → session-id and
        id → session maps, as lists of segment dicts (it changes nothing), and returns
        how many tokens it found valid; they count in the metrics as :meth:`validate`
        would count them. ``now_ms``
        is the read's one clock reading: ``scan`` may use it for its own checks too (the
        RESP dispatcher re-checks the key and charges the rate limit with it). An
        implementation that cannot answer from its own index (a cluster member: the
        token may be another node's) returns 0 without calling ``scan``, and the caller
        validates one by one.
        """
        ...

    def list_sessions(self, q: ListQuery) -> ListResult:
        """Filter, sort and page sessions."""
        ...

    # -- operations that wait for a commit ------------------------------------------------

    async def validate_touch(self, ctx: RequestContext, token: str) -> Session:
        """Validate and record the access (``last_active``, ``last_access_ip/ua`` from
        ``ctx``); the touch is best effort, the validation is not."""
        ...

    async def create(
        self,
        ctx: RequestContext,
        user_id: str | None,
        *,
        device_id: str | None = None,
        data: dict[str, str] | None = None,
        ttl_seconds: int | None = None,
        token: str | None = None,
        idle_timeout_seconds: int | None = None,
        session_id: str | None = None,
        require_token: bool = False,
    ) -> CreateResult:
        """Create a session; ``session_id`` given = that id or ``TM-SESS-4090`` if live."""
        ...

    # -- the same mutations, answered from a callback ------------------------------------
    #
    # A front that cannot await (the HTTP and RESP multiplexers) submits a mutation and
    # answers when its group commit lands. True: submitted, and exactly one of ``then`` /
    # ``failed`` runs later. False: nothing was done, the front awaits the method above
    # instead (a forwarding implementation declines what is not held here). A rejection
    # found at once (bad argument, quota, conflict) raises, as the awaiting method would.

    def create_now(
        self,
        ctx: RequestContext,
        user_id: str | None,
        then: Callable[[CreateResult], None],
        failed: Callable[[BaseException], None],
        *,
        device_id: str | None = None,
        data: dict[str, str] | None = None,
        ttl_seconds: int | None = None,
        token: str | None = None,
        idle_timeout_seconds: int | None = None,
        session_id: str | None = None,
    ) -> bool:
        """:meth:`create` answered through ``then`` / ``failed``."""
        ...

    def renew_now(
        self,
        ctx: RequestContext,
        session_id: str,
        ttl_seconds: int | None,
        expected_version: int | None,
        then: Callable[[Session], None],
        failed: Callable[[BaseException], None],
    ) -> bool:
        """:meth:`renew` answered through ``then`` / ``failed``."""
        ...

    def revoke_now(
        self,
        ctx: RequestContext,
        session_id: str,
        then: Callable[[bool], None],
        failed: Callable[[BaseException], None],
    ) -> bool:
        """:meth:`revoke` (not ``sync``) answered through ``then`` / ``failed``."""
        ...

    async def put(
        self,
        ctx: RequestContext,
        session_id: str,
        *,
        user_id: str | None = None,
        token: str | None = None,
        device_id: str | None = None,
        data: dict[str, str] | None = None,
        ttl_seconds: int | None = None,
    ) -> bool:
        """Redis ``SET``: update the live session ``session_id``, or create it when it is
        absent or expired (with ``token``, required then). True when it was created.

        Refused: a ``token`` for a live session (``TM-ARG-1001``, no rotation through
        SET), another ``user_id`` for a live session (``TM-ARG-1001``), no token for a
        new one (``TM-ARG-1002``).
        """
        ...

    async def touch(self, ctx: RequestContext, session_id: str) -> Session:
        """Move ``last_active`` to now (never back); ``TM-SESS-4040`` / ``4041``."""
        ...

    async def renew(
        self,
        ctx: RequestContext,
        session_id: str,
        ttl_seconds: int | None,
        expected_version: int | None = None,
    ) -> Session:
        """``expires_at = now + ttl``; ``TM-SESS-4040`` / ``4041``, ``4091`` on a stale
        ``expected_version``."""
        ...

    async def update(
        self,
        ctx: RequestContext,
        session_id: str,
        *,
        user_id: str | None = None,
        device_id: str | None = None,
        data: dict[str, str] | None = None,
        ttl_seconds: int | None = None,
        expected_version: int | None = None,
    ) -> Session:
        """Change the mutable fields of a live session."""
        ...

    async def revoke(self, ctx: RequestContext, session_id: str, *, sync: bool = False) -> bool:
        """Idempotent revoke; True when a live session was revoked by this call."""
        ...

    async def revoke_user(
        self,
        ctx: RequestContext,
        user_id: str,
        except_session_id: str | None = None,
        *,
        sync: bool = False,
    ) -> int:
        """Revoke every live session of a user, wherever it is held; returns how many.
        More than the batch limit: ``TM-SESS-4002`` and nothing revoked."""
        ...

    async def gc(self) -> int:
        """Purge the expired sessions and tombstones this node holds (admin GC); a
        forwarding implementation runs its local one."""
        ...
