"""Session operations across the cluster: run here when this node owns the shard, else
forward to the owner over the cluster port.

:class:`ClusterSessions` is the second implementation of
:class:`~tokmesh.services.session_ops.SessionOperations` (the first, the local
:class:`~tokmesh.services.sessions.SessionService`, runs on the owner). Where each
operation goes:

* by session id (get, touch, renew, update, put, revoke): the owner of the id's shard;
* create without an id: the owner of the user's shard (every session a node issues is
  placed in its user's shard, and its token names that shard);
* validate: the owner of the shard the token names (its first byte), one hop. A token the
  client chose may name a shard that does not hold its session; that owner keeps a route
  (token hash -> session shard) and relays to the session's owner: two hops;
* by user (revoke-by-user, listings): every node that owns shards, in parallel, each
  answering for the sessions it holds; the answers are merged here.

The owner checks on every forwarded call that it still owns the shard, so a node routing
with an older map gets ``TM-CLST-5030`` instead of an answer from the wrong node. An
owner that is down (no live membership) or suspected by the gossip prober answers
``TM-CLST-5030`` at once, without waiting for a timeout: with one copy of each shard
there is nowhere else to go.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio

from tokmesh.cluster.transport import RpcError, RpcRemoteError, RpcTimeout, RpcUnreachable
from tokmesh.domain.clock import Clock
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.ids import normalize_session_id
from tokmesh.domain.session import Session
from tokmesh.domain.session_settings import SessionSettings
from tokmesh.domain.shards import shard_of
from tokmesh.domain.tokens import is_valid_token, token_digest, token_shard
from tokmesh.services.session_ops import (
    CreateResult,
    ListQuery,
    ListResult,
    NotLocal,
    RequestContext,
    TokenScan,
    park,
    run_fetching,
    take_parked,
)
from tokmesh.services.sessions import SessionService

__all__ = ["ClusterSessions", "Routing", "SessionHandlers", "ShardMoving"]


class Routing(Protocol):
    """What forwarding needs of the cluster node: who owns what, and a way to call it."""

    node_id: str

    def owner_address(self, shard: int) -> str | None:
        """``None`` when this node owns ``shard``; else the owner's cluster address.
        Raises ``TM-CLST-5030`` when there is no map yet or the owner is down."""
        ...

    def owns(self, shard: int) -> bool:
        """True when this node owns ``shard`` in the map in force here."""
        ...

    def shard_owners(self) -> dict[str, str | None]:
        """Every node that owns shards -> its address (``None`` for this node).
        Raises ``TM-CLST-5030`` when any of them is down: a by-user answer would miss
        its sessions."""
        ...

    async def call(self, address: str, method: str, body: Any) -> Any:
        """Run ``method`` on the node at ``address`` and return its answer."""
        ...

    async def wait_moved(self, shard: int) -> None:
        """Return once a hand-over of ``shard`` that made :meth:`owner_address` raise
        :class:`ShardMoving` is over (its new owner is in the map here, or it was
        called off); ``TM-CLST-5040`` if it takes too long."""
        ...

    def moved_to(self, shard: int) -> str | None:
        """Where a forwarded call for ``shard`` that this node no longer owns should go
        (the owner's address in the map here), or None."""
        ...

    async def call_local(self, method: str, body: Any) -> Any:
        """Run cluster-port ``method`` here, as a peer's call would."""
        ...


class ShardMoving(TokMeshError):
    """``shard`` is being handed to another node: for a moment this node must not
    answer for it, and the new owner does not yet. Callers wait for the hand-over
    (:meth:`Routing.wait_moved`) and route again; anything that cannot wait answers
    503 with ``Retry-After``."""

    def __init__(self, shard: int) -> None:
        super().__init__(
            E.CLST_NO_NODES,
            f"shard {shard} is moving to another node; retry",
            headers={"Retry-After": "1"},
        )
        self.shard = shard


def _ctx(ctx: RequestContext) -> dict[str, str]:
    return attrs.asdict(ctx)


def _unctx(body: dict[str, Any]) -> RequestContext:
    return RequestContext(**{k: str(v) for k, v in body.items() if k in _CTX_FIELDS})


_CTX_FIELDS = frozenset(f.name for f in attrs.fields(RequestContext))

#: The keyword arguments of a create that travel to the owner (besides ctx and user id).
_CREATE_ARGS = (
    "device_id",
    "data",
    "ttl_seconds",
    "token",
    "idle_timeout_seconds",
    "session_id",
    "require_token",
)


def _id_shard(session_id: str) -> int:
    """The shard of a session id as given (ids are case-insensitive: normalised first)."""
    sid = normalize_session_id(session_id)
    return shard_of(sid if sid is not None else session_id)


def _session(record: Any) -> Session:
    try:
        return Session.from_record(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise TokMeshError(
            E.CLST_INCONSISTENT, f"a peer sent a malformed session ({exc})"
        ) from None


def _query(q: ListQuery) -> dict[str, Any]:
    return attrs.asdict(q)


class ClusterSessions:
    """:class:`SessionOperations` for a cluster node (see the module doc)."""

    def __init__(self, local: SessionService, routing: Routing) -> None:
        self.local = local
        self.routing = routing
        #: Routes of client-chosen tokens whose shard this node owns: token digest -> the
        #: shard that holds the session. Written by the session's owner before its create
        #: is answered; soft state (the session's ``shard_id`` says where its route
        #: belongs, so its owner can send it again).
        self.routes: dict[bytes, int] = {}

    @property
    def settings(self) -> SessionSettings:
        """The ``session.*`` settings (the same on every node)."""
        return self.local.settings

    @property
    def clock(self) -> Clock:
        """This node's clock."""
        return self.local.clock

    # -- forwarding --------------------------------------------------------------------------

    async def _forward(
        self, address: str, method: str, body: dict[str, Any], *, retry: bool = True
    ) -> Any:
        try:
            return await self.routing.call(address, method, body)
        except RpcRemoteError as exc:
            moved = (exc.details or {}).get("moved_to")
            if retry and isinstance(moved, str) and moved != address:
                # The shard changed hands after this node routed the call: the old
                # owner says where it went (its map is newer than ours). Once only.
                return await self._forward(moved, method, body, retry=False)
            raise exc.as_tokmesh() from None
        except RpcTimeout:
            raise TokMeshError(
                E.CLST_TIMEOUT, f"the owner at {address} did not answer in time"
            ) from None
        except RpcUnreachable as exc:
            if exc.sent:
                # The owner may have run it: the outcome is unknown, not "not done".
                raise TokMeshError(
                    E.CLST_TIMEOUT,
                    f"the connection to the owner at {address} broke before its answer "
                    "came; the operation may have happened",
                ) from None
            raise TokMeshError(
                E.CLST_NO_NODES, f"the owner at {address} is unreachable: {exc}"
            ) from None
        except RpcError as exc:
            raise TokMeshError(
                E.CLST_NO_NODES, f"the owner at {address} is unreachable: {exc}"
            ) from None

    async def _owner(self, shard: int) -> str | None:
        """:meth:`Routing.owner_address`, waiting out a hand-over of the shard."""
        try:
            return self.routing.owner_address(shard)
        except ShardMoving:
            await self.routing.wait_moved(shard)
            return self.routing.owner_address(shard)

    def _elsewhere(self, key: object, fetch: Callable[[], Awaitable[Any]]) -> NotLocal:
        async def fetch_and_park() -> None:
            try:
                park(key, await fetch())
            except TokMeshError as exc:
                park(key, error=exc)

        return NotLocal(fetch_and_park)

    # -- reads -------------------------------------------------------------------------------

    def get(self, session_id: str) -> Session:
        """The session, from this node or (after a fetch) from its owner."""
        sid = normalize_session_id(session_id)
        if sid is None:
            return self.local.get(session_id)  # the local answer for a malformed id
        found, value = take_parked(("get", sid))
        if found:
            return _session(value)
        shard = shard_of(sid)
        body = {"session_id": sid}
        address = self._read_address(("get", sid), shard, "sessions.get", body)
        if address is None:
            return self.local.get(sid)
        raise self._elsewhere(("get", sid), lambda: self._forward(address, "sessions.get", body))

    def _read_address(
        self, key: object, shard: int, method: str, body: dict[str, Any]
    ) -> str | None:
        """The owner's address for a read (None: here); during a hand-over of the shard,
        a fetch that waits for it and then asks whoever owns the shard."""
        try:
            return self.routing.owner_address(shard)
        except ShardMoving:

            async def after_move() -> Any:
                address = await self._owner(shard)
                if address is None:  # the hand-over was called off: still ours
                    return await self.routing.call_local(method, body)
                return await self._forward(address, method, body)

            raise self._elsewhere(key, after_move) from None

    def validate(self, token: str, count: int = 1) -> Session:
        """Validate at the owner of the token's shard (one hop; two for a client token)."""
        if not is_valid_token(token):
            return self.local.validate(token, count)  # TM-TOKN-4000, counted as here
        key = ("validate", token)
        found, value = take_parked(key)
        if found:
            return _session(value)
        shard = token_shard(token)
        body = {"token": token, "count": count}
        address = self._read_address(key, shard, "sessions.validate", body)
        if address is None:
            return self._validate_here(token, count, key)
        raise self._elsewhere(key, lambda: self._forward(address, "sessions.validate", body))

    def validate_scan(self, scan: TokenScan) -> int:
        """Declined: a token's session may live on another node (see SessionOperations)."""
        return 0

    def _validate_here(self, token: str, count: int, key: object) -> Session:
        """This node owns the token's shard: the session is here, or a route says where."""
        try:
            return self.local.validate(token, count)
        except TokMeshError as exc:
            if exc.error is not E.TOKN_INVALID:
                raise
            target = self.routes.get(token_digest(token))
            if target is None:
                raise
        address = self.routing.owner_address(target)
        if address is None:
            raise TokMeshError(E.TOKN_INVALID)  # the route is stale: the session is gone
        raise self._elsewhere(
            key,
            lambda: self._forward(
                address, "sessions.validate_held", {"token": token, "count": count}
            ),
        )

    def list_sessions(self, q: ListQuery) -> ListResult:
        """Every node's matches, merged (always fetched: sessions are on every node)."""
        key = ("list", _query_key(q))
        found, value = take_parked(key)
        if found:
            return value  # type: ignore[no-any-return]
        raise self._elsewhere(key, lambda: self._list_everywhere(q))

    async def _list_everywhere(self, q: ListQuery) -> ListResult:
        # Each node returns its first page * size matches in the requested order; the
        # merge of those holds the requested page.
        wanted = attrs.evolve(q, page=1, size=q.page * q.size)
        owners = self.routing.shard_owners()
        pages: list[ListResult] = []

        async def one(address: str | None) -> None:
            if address is None:
                pages.append(self.local.list_sessions(wanted))
                return
            reply = await self._forward(address, "sessions.list_held", _query(wanted))
            items = [_session(r) for r in reply["items"]]
            pages.append(ListResult(items, int(reply["total"]), 1, wanted.size))

        async with trio.open_nursery() as nursery:
            for address in owners.values():
                nursery.start_soon(one, address)
        reverse = q.sort_order != "asc"
        field = q.sort_by

        def order(s: Session) -> Any:
            return (getattr(s, field, s.created_at), s.id)

        merged = heapq.merge(*[p.items for p in pages], key=order, reverse=reverse)
        everything = list(merged)
        start = (q.page - 1) * q.size
        return ListResult(
            everything[start : start + q.size], sum(p.total for p in pages), q.page, q.size
        )

    # -- writes ------------------------------------------------------------------------------

    async def _at_owner(
        self, shard: int, method: str, body: dict[str, Any], here: Callable[[], Awaitable[Any]]
    ) -> Any:
        address = await self._owner(shard)
        if address is None:
            return await here()
        return await self._forward(address, method, body)

    async def validate_touch(self, ctx: RequestContext, token: str) -> Session:
        """Validate and record the access, at the owner of the token's shard."""
        if not is_valid_token(token):
            return await self.local.validate_touch(ctx, token)
        address = await self._owner(token_shard(token))
        if address is None:
            try:
                return await self.local.validate_touch(ctx, token)
            except TokMeshError as exc:
                target = self.routes.get(token_digest(token))
                if exc.error is not E.TOKN_INVALID or target is None:
                    raise
                address = self.routing.owner_address(target)
                if address is None:
                    raise
                method = "sessions.validate_touch_held"
        else:
            method = "sessions.validate_touch"
        reply = await self._forward(address, method, {"ctx": _ctx(ctx), "token": token})
        return _session(reply)

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
        """Create at the owner of the session's shard: the id's, or the user's."""
        args: dict[str, Any] = {
            "device_id": device_id,
            "data": data,
            "ttl_seconds": ttl_seconds,
            "token": token,
            "idle_timeout_seconds": idle_timeout_seconds,
            "session_id": session_id,
            "require_token": require_token,
        }
        shard = _id_shard(session_id) if session_id is not None else shard_of(user_id or "")
        address = await self._owner(shard)
        if address is None:
            result = await self.local.create(ctx, user_id, **args)
            await self.announce_route(result.session)
            return result
        body = {"ctx": _ctx(ctx), "user_id": user_id, **args}
        reply = await self._forward(address, "sessions.create", body)
        return CreateResult(_session(reply["session"]), str(reply["token"]))

    # The non-waiting mutations (see SessionOperations) are declined: a cluster write
    # may go to another node, announce a token route or wait for a replica, so the
    # front awaits create / renew / revoke instead.

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
        """Declined: the front awaits :meth:`create`."""
        return False

    def renew_now(
        self,
        ctx: RequestContext,
        session_id: str,
        ttl_seconds: int | None,
        expected_version: int | None,
        then: Callable[[Session], None],
        failed: Callable[[BaseException], None],
    ) -> bool:
        """Declined: the front awaits :meth:`renew`."""
        return False

    def revoke_now(
        self,
        ctx: RequestContext,
        session_id: str,
        then: Callable[[bool], None],
        failed: Callable[[BaseException], None],
    ) -> bool:
        """Declined: the front awaits :meth:`revoke`."""
        return False

    async def announce_route(self, session: Session) -> None:
        """Tell the owner of a client-chosen token's shard where its session lives (before
        the create is answered, so the token validates at once from any node)."""
        route_shard = session.shard_id
        held_in = shard_of(session.id)
        if route_shard == held_in:
            return
        address = await self._owner(route_shard)
        body = {"token_hash": session.token_hash.hex(), "shard": held_in}
        if address is None:
            self.routes[session.token_hash] = held_in
        else:
            await self._forward(address, "routes.put", body)

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
        """Redis ``SET`` at the owner of the id's shard."""

        async def here() -> bool:
            created = await self.local.put(
                ctx,
                session_id,
                user_id=user_id,
                token=token,
                device_id=device_id,
                data=data,
                ttl_seconds=ttl_seconds,
            )
            if created:
                await self.announce_route(self.local.get(session_id))
            return created

        body = {
            "ctx": _ctx(ctx),
            "session_id": session_id,
            "user_id": user_id,
            "token": token,
            "device_id": device_id,
            "data": data,
            "ttl_seconds": ttl_seconds,
        }
        return bool(await self._at_owner(_id_shard(session_id), "sessions.put", body, here))

    async def touch(self, ctx: RequestContext, session_id: str) -> Session:
        """Touch at the owner."""
        body = {"ctx": _ctx(ctx), "session_id": session_id}
        reply = await self._at_owner(
            _id_shard(session_id),
            "sessions.touch",
            body,
            lambda: _as_record(self.local.touch(ctx, session_id)),
        )
        return _session(reply)

    async def renew(
        self,
        ctx: RequestContext,
        session_id: str,
        ttl_seconds: int | None,
        expected_version: int | None = None,
    ) -> Session:
        """Renew at the owner."""
        body = {
            "ctx": _ctx(ctx),
            "session_id": session_id,
            "ttl_seconds": ttl_seconds,
            "expected_version": expected_version,
        }
        reply = await self._at_owner(
            _id_shard(session_id),
            "sessions.renew",
            body,
            lambda: _as_record(self.local.renew(ctx, session_id, ttl_seconds, expected_version)),
        )
        return _session(reply)

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
        """Update at the owner."""
        body = {
            "ctx": _ctx(ctx),
            "session_id": session_id,
            "user_id": user_id,
            "device_id": device_id,
            "data": data,
            "ttl_seconds": ttl_seconds,
            "expected_version": expected_version,
        }
        reply = await self._at_owner(
            _id_shard(session_id),
            "sessions.update",
            body,
            lambda: _as_record(
                self.local.update(
                    ctx,
                    session_id,
                    user_id=user_id,
                    device_id=device_id,
                    data=data,
                    ttl_seconds=ttl_seconds,
                    expected_version=expected_version,
                )
            ),
        )
        return _session(reply)

    async def revoke(self, ctx: RequestContext, session_id: str, *, sync: bool = False) -> bool:
        """Revoke at the owner. Validation always asks the owner, so once this returns no
        node accepts the token any more (with or without ``sync``)."""
        body = {"ctx": _ctx(ctx), "session_id": session_id}
        return bool(
            await self._at_owner(
                _id_shard(session_id),
                "sessions.revoke",
                body,
                lambda: self.local.revoke(ctx, session_id, sync=sync),
            )
        )

    async def revoke_user(
        self,
        ctx: RequestContext,
        user_id: str,
        except_session_id: str | None = None,
        *,
        sync: bool = False,
    ) -> int:
        """Revoke on every node that owns shards; the total of what each revoked."""
        owners = self.routing.shard_owners()
        counts: list[int] = []
        body = {"ctx": _ctx(ctx), "user_id": user_id, "except_session_id": except_session_id}

        async def one(address: str | None) -> None:
            if address is None:
                counts.append(await self.local.revoke_user(ctx, user_id, except_session_id))
            else:
                counts.append(int(await self._forward(address, "sessions.revoke_user_held", body)))

        async with trio.open_nursery() as nursery:
            for address in owners.values():
                nursery.start_soon(one, address)
        return sum(counts)

    async def gc(self) -> int:
        """This node's own expiry pass."""
        return await self.local.gc()


async def _as_record(pending: Awaitable[Session]) -> dict[str, Any]:
    return (await pending).to_record()


def _query_key(q: ListQuery) -> tuple[Any, ...]:
    return attrs.astuple(q)


class SessionHandlers:
    """The owner's side of forwarding: the cluster-port methods that run a forwarded
    operation on the local implementation, after checking that this node owns the shard
    (a caller with an older map is refused rather than answered by the wrong node)."""

    def __init__(self, local: SessionService, routing: Routing, sessions: ClusterSessions) -> None:
        self.local = local
        self.routing = routing
        self.sessions = sessions

    def methods(self) -> dict[str, Callable[[str, Any], Awaitable[Any]]]:
        """Method name -> handler ``(peer, body) -> answer`` for the RPC server."""
        return {
            "sessions.get": self._get,
            "sessions.validate": self._validate,
            "sessions.validate_held": self._validate_held,
            "sessions.validate_touch": self._validate_touch,
            "sessions.validate_touch_held": self._validate_touch_held,
            "sessions.create": self._create,
            "sessions.put": self._put,
            "sessions.touch": self._touch,
            "sessions.renew": self._renew,
            "sessions.update": self._update,
            "sessions.revoke": self._revoke,
            "sessions.revoke_user_held": self._revoke_user_held,
            "sessions.list_held": self._list_held,
            "routes.put": self._route_put,
        }

    async def _own(self, shard: int) -> None:
        """Serve only for a shard this node owns; while it hands the shard over, wait
        for the hand-over and then tell the caller where the shard went (``moved_to``
        in the details: the caller retries there once)."""
        try:
            self.routing.owner_address(shard)
        except ShardMoving:
            await self.routing.wait_moved(shard)
        if not self.routing.owns(shard):
            moved = self.routing.moved_to(shard)
            raise TokMeshError(
                E.CLST_NO_NODES,
                f"shard {shard} is not owned by node {self.routing.node_id} (its map moved on)",
                {"moved_to": moved} if moved else None,
            )

    async def _own_sid(self, session_id: Any) -> str:
        sid = str(session_id)
        await self._own(_id_shard(sid))
        return sid

    async def _get(self, peer: str, body: Any) -> Any:
        return self.local.get(await self._own_sid(body["session_id"])).to_record()

    async def _validate(self, peer: str, body: Any) -> Any:
        token = str(body["token"])
        count = int(body.get("count", 1))
        if not is_valid_token(token):
            return self.local.validate(token, count).to_record()
        await self._own(token_shard(token))

        async def here() -> Session:
            # A client token may be held elsewhere: relayed once, to the session's owner.
            return self.sessions.validate(token, count)

        return (await run_fetching(here)).to_record()

    async def _validate_held(self, peer: str, body: Any) -> Any:
        token = str(body["token"])
        session = self.local.validate(token, int(body.get("count", 1)))
        await self._own(shard_of(session.id))  # not a replica's copy
        return session.to_record()

    async def _validate_touch(self, peer: str, body: Any) -> Any:
        token = str(body["token"])
        if is_valid_token(token):
            await self._own(token_shard(token))
        session = await self.sessions.validate_touch(_unctx(body["ctx"]), token)
        return session.to_record()

    async def _validate_touch_held(self, peer: str, body: Any) -> Any:
        session = await self.local.validate_touch(_unctx(body["ctx"]), str(body["token"]))
        return session.to_record()

    async def _create(self, peer: str, body: Any) -> Any:
        ctx = _unctx(body["ctx"])
        sid = body.get("session_id")
        user_id = body.get("user_id")
        await self._own(_id_shard(str(sid)) if sid is not None else shard_of(user_id or ""))
        args = {name: body.get(name) for name in _CREATE_ARGS}
        args["require_token"] = bool(args["require_token"])
        result = await self.local.create(ctx, user_id, **args)
        await self.sessions.announce_route(result.session)
        return {"session": result.session.to_record(), "token": result.token}

    async def _put(self, peer: str, body: Any) -> Any:
        sid = await self._own_sid(body["session_id"])
        ctx = _unctx(body["ctx"])
        created = await self.local.put(
            ctx,
            sid,
            user_id=body.get("user_id"),
            token=body.get("token"),
            device_id=body.get("device_id"),
            data=body.get("data"),
            ttl_seconds=body.get("ttl_seconds"),
        )
        if created:
            await self.sessions.announce_route(self.local.get(sid))
        return created

    async def _touch(self, peer: str, body: Any) -> Any:
        sid = await self._own_sid(body["session_id"])
        return (await self.local.touch(_unctx(body["ctx"]), sid)).to_record()

    async def _renew(self, peer: str, body: Any) -> Any:
        sid = await self._own_sid(body["session_id"])
        session = await self.local.renew(
            _unctx(body["ctx"]), sid, body.get("ttl_seconds"), body.get("expected_version")
        )
        return session.to_record()

    async def _update(self, peer: str, body: Any) -> Any:
        sid = await self._own_sid(body["session_id"])
        session = await self.local.update(
            _unctx(body["ctx"]),
            sid,
            user_id=body.get("user_id"),
            device_id=body.get("device_id"),
            data=body.get("data"),
            ttl_seconds=body.get("ttl_seconds"),
            expected_version=body.get("expected_version"),
        )
        return session.to_record()

    async def _revoke(self, peer: str, body: Any) -> Any:
        sid = await self._own_sid(body["session_id"])
        return await self.local.revoke(_unctx(body["ctx"]), sid)

    async def _revoke_user_held(self, peer: str, body: Any) -> Any:
        return await self.local.revoke_user(
            _unctx(body["ctx"]), str(body["user_id"]), body.get("except_session_id")
        )

    async def _list_held(self, peer: str, body: Any) -> Any:
        result = self.local.list_sessions(ListQuery(**body))
        return {"items": [s.to_record() for s in result.items], "total": result.total}

    async def _route_put(self, peer: str, body: Any) -> Any:
        shard = int(body["shard"])
        digest = bytes.fromhex(str(body["token_hash"]))
        self.sessions.routes[digest] = shard
        return True
