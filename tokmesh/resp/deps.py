"""What the RESP front end needs from the rest of the server, as protocols.

The command layer (:mod:`tokmesh.resp.commands`) depends only on these. The real server
satisfies them with :class:`tokmesh.resp.backend.ServiceBackend` (the Authenticator and
the :class:`~tokmesh.services.session_ops.SessionOperations` the HTTP routes call too),
so RESP commands run the very functions the HTTP routes run; tests of the protocol layer
may pass a small in-memory implementation.

Every method raises :class:`~tokmesh.domain.errors.TokMeshError` with a catalogue code on
failure; the RESP layer renders it as ``-ERR <code> <message>``.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from tokmesh.services.session_ops import SessionOperations


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
    #: The cap on open client connections of every listener (``server.max_connections``,
    #: derived from the descriptor limit when 0); 0 when unknown.
    max_clients: int = 0


class RespBackend(Protocol):
    """Everything the RESP command layer calls."""

    @property
    def sessions(self) -> SessionOperations:
        """The session operations (the same object the HTTP routes call)."""
        ...

    @property
    def scanner(self) -> SessionScanner:
        """``SCAN`` paging over this node's sessions."""
        ...

    async def authenticate(self, key_id: str, secret: str, peer_ip: str) -> RespPrincipal:
        """02 §6.1 steps 2-7 with the socket peer IP: ``TM-AUTH-4010/4011/4012/4031`` or
        ``TM-SYS-4290`` (brute-force block)."""
        ...

    def check_principal(self, principal: RespPrincipal, now_ms: int | None = None) -> RespPrincipal:
        """Cheap per-command re-check of the bound key (no Argon2): raises if it is now
        disabled, expired, deleted or rotated away; returns the principal to keep.
        ``now_ms``: the caller's clock reading for the whole read, if it has one."""
        ...

    def rate_limit(self, principal: RespPrincipal) -> None:
        """Take one token of the key's bucket or raise ``TM-SYS-4290``."""
        ...

    def take_rate(self, principal: RespPrincipal, n: int, now_ms: int | None = None) -> bool:
        """Take ``n`` tokens at once, or none and return False (no error, no hooks);
        ``now_ms`` as for :meth:`check_principal`."""
        ...

    def in_maintenance(self) -> bool:
        """True while a restore runs (data commands answer ``TM-ADMIN-5031``)."""
        ...

    def node_facts(self) -> NodeFacts:
        """Node id, start time and session count for INFO (cheap: no walk over sessions)."""
        ...
