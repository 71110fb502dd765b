"""What the RESP front end needs from the rest of the server, as protocols.

The command layer (:mod:`tokmesh.resp.commands`) depends only on these. The real server
satisfies them with :class:`tokmesh.resp.backend.ServiceBackend` (the Authenticator and
the SessionService of ``tokmesh.services``), so RESP commands run the very functions the
HTTP routes run; tests of the protocol layer may pass a small in-memory implementation.

Every method raises :class:`~tokmesh.domain.errors.TokMeshError` with a catalogue code on
failure; the RESP layer renders it as ``-ERR <code> <message>``.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from tokmesh.domain.clock import Clock
from tokmesh.domain.session import Session
from tokmesh.services.sessions import CreateResult, RequestContext, SessionSettings


class RespPrincipal(Protocol):
    """The API key bound to a connection by AUTH (only these two fields are read here)."""

    @property
    def key_id(self) -> str:
        """The ``tmak-`` key id (``created_by`` of RESP-created sessions)."""
        ...

    @property
    def role(self) -> str:
        """``metrics`` / ``validator`` / ``issuer`` / ``admin``."""
        ...


class SessionOps(Protocol):
    """The session operations RESP commands call (the SessionService signatures, 01 §4).

    Synchronous methods are pure reads served inline (no ``await``, DESIGN §3).
    """

    @property
    def settings(self) -> SessionSettings:
        """``session.*`` settings (``ttl_max_ms`` bounds ``EX`` / ``EXPIRE`` / ``TTL``)."""
        ...

    @property
    def clock(self) -> Clock:
        """The clock every operation reads (``TTL`` computes remaining seconds with it)."""
        ...

    def get(self, session_id: str) -> Session:
        """Live session or ``TM-SESS-4040`` (absent/invalid/revoked) / ``TM-SESS-4041``."""
        ...

    def validate(self, token: str, count: int = 1) -> Session:
        """Validate without touch; token errors ``TM-TOKN-4000/4010/4011/4012``.

        ``count``: identical validations this one answers (they all count in metrics)."""
        ...

    async def validate_touch(self, ctx: RequestContext, token: str) -> Session:
        """Validate and touch (``last_active``, ``last_access_ip`` = ``ctx.client_ip``)."""
        ...

    async def touch(self, ctx: RequestContext, session_id: str) -> Session:
        """Monotonic ``last_active``; ``TM-SESS-4040`` / ``TM-SESS-4041``."""
        ...

    async def renew(
        self,
        ctx: RequestContext,
        session_id: str,
        ttl_seconds: int | None,
        expected_version: int | None = None,
    ) -> Session:
        """``expires_at = now + ttl``; ``TM-SESS-4040`` / ``4041`` / ``4091``."""
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
        """Redis ``SET`` on a live key (01 §4.7)."""
        ...

    async def revoke(self, ctx: RequestContext, session_id: str) -> bool:
        """Idempotent revoke; True when a live session was revoked."""
        ...

    async def revoke_user(
        self, ctx: RequestContext, user_id: str, except_session_id: str | None = None
    ) -> int:
        """Revoke every live session of a user; > 1000 -> ``TM-SESS-4002``."""
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
        """Create (01 §4.1/§4.2): ``session_id`` given = ``SET``/``TM.CREATE`` paths."""
        ...


class SessionScanner(Protocol):
    """``SCAN`` support: live session ids of this node in a stable order."""

    def scan(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One page from ``cursor`` (0 = start): ``(next_cursor, ids)``; next 0 = done.

        ``count`` is a hint (a page may hold more or fewer ids, even none with a
        non-zero next cursor). Cursors are unsigned 64-bit (``redis-cli`` parses them
        with ``strtoull``).
        """
        ...


@attrs.frozen
class NodeFacts:
    """What INFO reports about the node behind the RESP front end."""

    #: The node id (``tmnd-...``), empty when unknown.
    node_id: str
    #: Unix time (seconds) the server started.
    started_at: float
    #: Stored sessions that are not revoked (expired ones the sweeper has not purged yet
    #: included): a count kept by the store, so reading it costs nothing.
    sessions: int


class RespBackend(Protocol):
    """Everything the RESP command layer calls."""

    @property
    def sessions(self) -> SessionOps:
        """The session service."""
        ...

    @property
    def scanner(self) -> SessionScanner:
        """``SCAN`` paging over this node's sessions."""
        ...

    async def authenticate(self, key_id: str, secret: str, peer_ip: str) -> RespPrincipal:
        """02 §6.1 steps 2-7 with the socket peer IP: ``TM-AUTH-4010/4011/4012/4031`` or
        ``TM-SYS-4290`` (brute-force block)."""
        ...

    def check_principal(self, principal: RespPrincipal) -> RespPrincipal:
        """Cheap per-command re-check of the bound key (no Argon2): raises if it is now
        disabled, expired, deleted or rotated away; returns the principal to keep."""
        ...

    def rate_limit(self, principal: RespPrincipal) -> None:
        """Take one token of the key's bucket or raise ``TM-SYS-4290``."""
        ...

    def take_rate(self, principal: RespPrincipal, n: int) -> bool:
        """Take ``n`` tokens at once, or none and return False (no error, no hooks)."""
        ...

    def in_maintenance(self) -> bool:
        """True while a restore runs (data commands answer ``TM-ADMIN-5031``)."""
        ...

    def node_facts(self) -> NodeFacts:
        """Node id, start time and session count for INFO (cheap: no walk over sessions)."""
        ...
