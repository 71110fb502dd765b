"""An async etcd v3 client on Trio, over etcd's HTTP/JSON gateway.

The control plane of a TokMesh cluster (members, shard map, coordinator, API keys) lives
in etcd; this module is the only code that talks to it. Requests and answers are built
and read by :mod:`tokmesh.cluster.etcd_wire`; this module adds the I/O around them:

* several endpoints, the current one kept until it fails, then the next one;
* every call under a deadline (``timeout=``), each attempt under a shorter one so a
  hung member cannot eat the whole budget;
* retries with capped exponential backoff, only where they cannot apply a write twice:
  reads, lease keepalives and revokes always; writes only when the request provably
  never reached etcd (the connection was refused) or etcd said it had no leader;
* optional TLS (CA, client certificate) and username/password (the gateway's token,
  fetched again when etcd reports it invalid);
* :class:`LeaseKeeper`, a task renewing a lease every TTL/3 and reporting its loss;
* :meth:`EtcdClient.watch`, a watch that reconnects after failures, resumes from the
  revision after the last event it delivered, and after a compaction reads the whole
  range again and hands it over as one :class:`WatchResync`.

httpx is the HTTP layer: it is already a runtime dependency (the CLI uses it), it runs on
Trio through anyio, and it streams chunked bodies, which the watch needs.
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, NoReturn

import attrs
import httpx
import orjson
import trio

from tokmesh.cluster import etcd_wire as wire
from tokmesh.cluster.etcd_wire import (
    DeleteResult,
    EtcdAuthError,
    EtcdBadResponse,
    EtcdCompacted,
    EtcdError,
    EtcdLeaseLost,
    EtcdNoLeader,
    EtcdUnavailable,
    Event,
    KeyValue,
    LeaseGrant,
    PutResult,
    RangeResult,
    TxnResult,
)

__all__ = [
    "EtcdAuthError",
    "EtcdBadResponse",
    "EtcdClient",
    "EtcdCompacted",
    "EtcdError",
    "EtcdLeaseLost",
    "EtcdNoLeader",
    "EtcdSettings",
    "EtcdTLS",
    "EtcdUnavailable",
    "LeaseKeeper",
    "WatchEvents",
    "WatchResync",
]

log = logging.getLogger("tokmesh.cluster.etcd")

# Asking a member to refuse a new watch when it has no leader makes a watch on an
# isolated member fail at once (and move to another endpoint) instead of hanging.
_WATCH_HEADERS: Final = {"Grpc-Metadata-hasleader": "true"}


@attrs.frozen(slots=True)
class EtcdTLS:
    """TLS towards etcd: a CA to verify members and, optionally, a client certificate."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def context(self) -> ssl.SSLContext:
        """Build the client SSL context (system CAs when no CA file is given)."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def _as_endpoints(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen(slots=True)
class EtcdSettings:
    """How to reach etcd; ``endpoints`` are ``http(s)://host:port`` URLs."""

    endpoints: tuple[str, ...] = attrs.field(converter=_as_endpoints)
    username: str | None = None
    password: str | None = None
    tls: EtcdTLS | None = None
    # Budget of one call, retries included.
    request_timeout: float = 5.0
    # Budget of one attempt on one endpoint: a member that hangs is left after this.
    attempt_timeout: float = 2.0
    connect_timeout: float = 1.0
    # How often a watch checks that its member still reaches a leader (0 = never).
    watch_check_interval: float = 5.0
    backoff_initial: float = 0.05
    backoff_max: float = 1.0

    def __attrs_post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("at least one etcd endpoint is required")
        for ep in self.endpoints:
            if not ep.startswith(("http://", "https://")):
                raise ValueError(f"etcd endpoint {ep!r} must start with http:// or https://")


@attrs.frozen(slots=True)
class WatchEvents:
    """Changes seen by a watch, in revision order."""

    events: tuple[Event, ...]
    revision: int


@attrs.frozen(slots=True)
class WatchResync:
    """The whole watched range at ``revision``: replaces whatever the watcher held.

    Sent after the watch could not resume because the revisions it missed were compacted.
    """

    kvs: tuple[KeyValue, ...]
    revision: int


WatchUpdate = WatchEvents | WatchResync


class _NotSent(Exception):
    """The connection failed before the request left: retrying cannot apply it twice."""


class Backoff:
    """Capped exponential backoff with jitter; ``reset`` after a success."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._initial = initial
        self._max = maximum
        self._next = initial

    def reset(self) -> None:
        """Start again from the initial delay."""
        self._next = self._initial

    def next_delay(self) -> float:
        """The delay to sleep now; the following one doubles, up to the cap."""
        delay = self._next
        self._next = min(self._max, self._next * 2)
        # Jitter spreads the retries of many nodes after one etcd outage.
        return delay * random.uniform(0.5, 1.0)


class EtcdClient:
    """One connection pool to an etcd cluster; use as ``async with EtcdClient(...)``."""

    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        self._endpoints = [ep.rstrip("/") for ep in settings.endpoints]
        self._current = 0
        self._token: str | None = None
        verify: ssl.SSLContext | bool = settings.tls.context() if settings.tls else True
        self._http = httpx.AsyncClient(
            verify=verify,
            timeout=httpx.Timeout(None, connect=settings.connect_timeout),
            limits=httpx.Limits(max_keepalive_connections=8, keepalive_expiry=30.0),
        )

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every pooled connection."""
        with trio.CancelScope(shield=True):
            await self._http.aclose()

    @property
    def endpoint(self) -> str:
        """The endpoint the next request goes to."""
        return self._endpoints[self._current]

    def _rotate(self, failed: str) -> None:
        # Only move on if nobody moved already, so concurrent failures skip one endpoint.
        if self._endpoints[self._current] == failed:
            self._current = (self._current + 1) % len(self._endpoints)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    # -- transport ----------------------------------------------------------------------

    async def _post_once(self, endpoint: str, path: str, body: bytes) -> Mapping[str, Any]:
        """One POST to one endpoint, answer decoded or error classified."""
        try:
            resp = await self._http.post(endpoint + path, content=body, headers=self._headers())
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _NotSent(f"{endpoint}: {exc or type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise EtcdUnavailable(f"{endpoint}: {exc or type(exc).__name__}") from exc
        if resp.status_code != 200:
            raise wire.error_from_http(resp.status_code, resp.content)
        return wire.decode_json(resp.content)

    async def _authenticate(self, endpoint: str) -> None:
        assert self.settings.username is not None
        body = orjson.dumps(
            {"name": self.settings.username, "password": self.settings.password or ""}
        )
        self._token = None
        doc = await self._post_once(endpoint, "/v3/auth/authenticate", body)
        token = doc.get("token")
        if not isinstance(token, str) or not token:
            raise EtcdBadResponse("authenticate answered without a token")
        self._token = token

    async def call(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        idempotent: bool,
        timeout: float | None = None,
    ) -> Mapping[str, Any]:
        """POST ``body`` to ``path`` on the current endpoint, failing over and retrying.

        ``idempotent`` calls are retried after any unavailability; others only when the
        request surely was not applied. Raises :class:`EtcdUnavailable` when the deadline
        passes, naming the last error.
        """
        settings = self.settings
        budget = settings.request_timeout if timeout is None else timeout
        deadline = trio.current_time() + budget
        payload = orjson.dumps(body)
        backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        reauthenticated = False
        last: str = "no attempt made"
        while True:
            endpoint = self.endpoint
            attempt_end = min(deadline, trio.current_time() + settings.attempt_timeout)
            try:
                with trio.move_on_at(attempt_end):
                    if settings.username and self._token is None:
                        await self._authenticate(endpoint)
                    return await self._post_once(endpoint, path, payload)
                # The attempt ran out of time: a write may have been applied.
                if not idempotent:
                    raise EtcdUnavailable(f"{endpoint}{path}: no answer in time (outcome unknown)")
                last = f"{endpoint}: no answer within {settings.attempt_timeout}s"
            except _NotSent as exc:
                last = str(exc)
            except EtcdAuthError:
                # A token expires or is lost when members restart: fetch a new one once.
                if not settings.username or reauthenticated:
                    raise
                reauthenticated = True
                self._token = None
                continue
            except EtcdNoLeader as exc:
                # "no leader" is said before a proposal is made, so nothing was applied.
                if not idempotent and "no leader" not in exc.message.lower():
                    raise
                last = f"{endpoint}: {exc.message}"
            except EtcdUnavailable as exc:
                if not idempotent:
                    raise
                last = f"{endpoint}: {exc.message}"
            self._rotate(endpoint)
            delay = backoff.next_delay()
            if trio.current_time() + delay >= deadline:
                raise EtcdUnavailable(f"etcd unreachable within {budget}s; last error: {last}")
            log.debug("etcd %s failed (%s), retrying in %.2fs", path, last, delay)
            await trio.sleep(delay)

    # -- KV -----------------------------------------------------------------------------

    async def get(
        self, key: bytes, *, serializable: bool = False, timeout: float | None = None
    ) -> KeyValue | None:
        """The value of one key, or None."""
        res = await self.range(key, serializable=serializable, timeout=timeout)
        return res.kvs[0] if res.kvs else None

    async def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        limit: int = 0,
        revision: int = 0,
        serializable: bool = False,
        timeout: float | None = None,
    ) -> RangeResult:
        """Keys in ``[key, range_end)`` (one key when ``range_end`` is None); retried."""
        body = wire.range_request(
            key, range_end, limit=limit, revision=revision, serializable=serializable
        )
        doc = await self.call("/v3/kv/range", body, idempotent=True, timeout=timeout)
        return wire.parse_range(doc)

    async def get_prefix(self, prefix: bytes, *, timeout: float | None = None) -> RangeResult:
        """Every key under ``prefix``."""
        return await self.range(prefix, wire.prefix_range_end(prefix), timeout=timeout)

    async def put(
        self,
        key: bytes,
        value: bytes,
        *,
        lease: int = 0,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> PutResult:
        """Write one key (attached to ``lease`` when non-zero)."""
        body = wire.put_request(key, value, lease=lease, prev_kv=prev_kv)
        return wire.parse_put(
            await self.call("/v3/kv/put", body, idempotent=False, timeout=timeout)
        )

    async def delete(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        prev_kv: bool = False,
        timeout: float | None = None,
    ) -> DeleteResult:
        """Delete one key or a range; deleting twice ends in the same state, so retried."""
        body = wire.delete_request(key, range_end, prev_kv=prev_kv)
        doc = await self.call("/v3/kv/deleterange", body, idempotent=True, timeout=timeout)
        return wire.parse_delete(doc)

    async def txn(
        self,
        compares: Sequence[Mapping[str, Any]],
        success: Sequence[Mapping[str, Any]],
        failure: Sequence[Mapping[str, Any]] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        """A compare-and-swap transaction (build items with ``etcd_wire.compare/op_*``)."""
        body = wire.txn_request(compares, success, failure)
        return wire.parse_txn(
            await self.call("/v3/kv/txn", body, idempotent=False, timeout=timeout)
        )

    async def compact(self, revision: int, *, timeout: float | None = None) -> None:
        """Drop history before ``revision`` (watches from older revisions must resync)."""
        body = {"revision": str(revision), "physical": True}
        await self.call("/v3/kv/compaction", body, idempotent=True, timeout=timeout)

    # -- leases -------------------------------------------------------------------------

    async def lease_grant(self, ttl: int, *, timeout: float | None = None) -> LeaseGrant:
        """A new lease of ``ttl`` seconds.

        Not retried once sent: a second grant would leave an orphan lease, harmless but
        pointless, and the caller usually retries the whole registration anyway.
        """
        doc = await self.call("/v3/lease/grant", {"TTL": ttl}, idempotent=False, timeout=timeout)
        return wire.parse_lease_grant(doc)

    async def lease_keepalive(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Renew a lease once; returns the TTL etcd reset it to, raises EtcdLeaseLost."""
        doc = await self.call(
            "/v3/lease/keepalive", {"ID": str(lease_id)}, idempotent=True, timeout=timeout
        )
        return wire.parse_keepalive(doc)

    async def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        """Revoke a lease, deleting its keys; a lease already gone is not an error."""
        with contextlib.suppress(EtcdLeaseLost):
            await self.call(
                "/v3/lease/revoke", {"ID": str(lease_id)}, idempotent=True, timeout=timeout
            )

    async def lease_ttl(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Seconds left on a lease; -1 when it no longer exists."""
        doc = await self.call(
            "/v3/lease/timetolive", {"ID": str(lease_id)}, idempotent=True, timeout=timeout
        )
        return wire.parse_lease_ttl(doc)

    # -- watch --------------------------------------------------------------------------

    async def watch(
        self,
        key: bytes,
        range_end: bytes | None,
        on_update: Callable[[WatchUpdate], Awaitable[None]],
        *,
        start_revision: int = 0,
        prev_kv: bool = False,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Watch ``[key, range_end)`` forever, calling ``on_update`` for every change.

        Starts at ``start_revision`` (0 = from now). After a failure it reconnects, on
        another endpoint if needed, and resumes at the revision after the last event
        delivered, so nothing is missed or repeated. If that revision was compacted it
        reads the whole range and delivers it as one :class:`WatchResync`, then goes on
        from there. ``task_status.started`` reports the first revision watched once the
        first watch is established. Runs until cancelled; errors that retrying cannot
        cure (bad credentials, a refused request) are raised.
        """
        state = _WatchState(next_rev=start_revision)
        backoff = Backoff(self.settings.backoff_initial, self.settings.backoff_max)

        async def handle(msg: wire.WatchMessage) -> bool:
            """Deliver one message; False ends this stream so the watch is reopened."""
            if msg.created:
                if msg.canceled:
                    raise wire.classify_error(None, msg.cancel_reason)
                if state.next_rev == 0:
                    state.next_rev = msg.header.revision + 1
                if not state.started:
                    state.started = True
                    task_status.started(state.next_rev)
                backoff.reset()
                state.reauthenticated = False
                return True
            if msg.canceled:
                if not msg.compact_revision:
                    raise wire.classify_error(None, msg.cancel_reason or "watch canceled")
                log.info(
                    "etcd watch on %r missed compacted revisions (from %d, compacted at %d): "
                    "reading the whole range again",
                    key, state.next_rev, msg.compact_revision,
                )  # fmt: skip
                full = await self.range(key, range_end)
                await on_update(WatchResync(full.kvs, full.header.revision))
                state.next_rev = full.header.revision + 1
                return False
            if msg.events:
                await on_update(WatchEvents(msg.events, msg.header.revision))
                state.next_rev = msg.events[-1].kv.mod_revision + 1
            return True

        while True:
            endpoint = self.endpoint
            try:
                if self.settings.username and self._token is None:
                    with trio.fail_after(self.settings.attempt_timeout):
                        await self._authenticate(endpoint)
                if not await self._watch_once(
                    endpoint, key, range_end, state.next_rev, prev_kv, handle
                ):
                    continue  # reopened on purpose (after a resync): no backoff
                reason = f"{endpoint}: watch stream ended"
            except _NotSent as exc:
                reason = str(exc)
            except EtcdAuthError:
                if not self.settings.username or state.reauthenticated:
                    raise
                state.reauthenticated = True
                self._token = None
                continue
            except (EtcdUnavailable, EtcdBadResponse, trio.TooSlowError) as exc:
                reason = f"{endpoint}: {exc}"
            self._rotate(endpoint)
            delay = backoff.next_delay()
            log.info("etcd watch on %r interrupted (%s); resuming in %.2fs", key, reason, delay)
            await trio.sleep(delay)

    async def _watch_once(
        self,
        endpoint: str,
        key: bytes,
        range_end: bytes | None,
        start_revision: int,
        prev_kv: bool,
        handle: Callable[[wire.WatchMessage], Awaitable[bool]],
    ) -> bool:
        """Run one watch stream, handing each message to ``handle``.

        Returns True when the stream ended by itself, False when ``handle`` asked to stop.
        """
        body = orjson.dumps(
            wire.watch_create_request(
                key, range_end, start_revision=start_revision, prev_kv=prev_kv
            )
        )
        headers = {**self._headers(), **_WATCH_HEADERS}
        guard = _StreamGuard()
        try:
            async with self._http.stream(
                "POST", endpoint + "/v3/watch", content=body, headers=headers
            ) as resp:
                if resp.status_code != 200:
                    raise wire.error_from_http(resp.status_code, await resp.aread())
                failure: Exception | None = None
                ended = True
                async with trio.open_nursery() as nursery:
                    if self.settings.watch_check_interval:
                        nursery.start_soon(self._check_member, endpoint, key, guard)
                    try:
                        ended = await self._read_watch(resp, guard, handle)
                    except Exception as exc:
                        # Raised again below, outside the nursery, so callers see the
                        # error itself rather than an ExceptionGroup around it.
                        failure = exc
                    finally:
                        nursery.cancel_scope.cancel()
                if failure is not None:
                    raise failure
                return ended
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _NotSent(f"{endpoint}: {exc or type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise EtcdUnavailable(f"{endpoint}: {exc or type(exc).__name__}") from exc

    @staticmethod
    async def _read_watch(
        resp: httpx.Response,
        guard: _StreamGuard,
        handle: Callable[[wire.WatchMessage], Awaitable[bool]],
    ) -> bool:
        """Split the stream into lines and hand each message over (see ``_watch_once``)."""
        chunks = resp.aiter_bytes()
        pending = b""
        while True:
            # Only the wait for data is cut short by a failed health check; ``handle``
            # (which runs the caller's callback) is never cancelled half-way.
            chunk: bytes | None = None
            if not guard.failure:
                with trio.CancelScope() as guard.read_scope:
                    chunk = await anext(chunks, None)
                guard.read_scope = None
            if guard.failure:
                raise EtcdUnavailable(guard.failure)
            if chunk is None:
                return True
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip() and not await handle(wire.parse_watch_line(line)):
                    return False

    async def _check_member(self, endpoint: str, key: bytes, guard: _StreamGuard) -> None:
        """Fail the watch when its member stops answering a linearizable read.

        etcd does not reliably cancel a watch on a member cut off from its peers, and a
        hung member sends nothing at all: either way the stream just goes quiet. A
        linearizable read needs the member to reach a leader, so it fails on exactly
        those members; the watch then moves to another endpoint and resumes.
        """
        body = orjson.dumps(wire.range_request(key, limit=1, count_only=True))
        while True:
            await trio.sleep(self.settings.watch_check_interval)
            try:
                with trio.fail_after(self.settings.attempt_timeout):
                    await self._post_once(endpoint, "/v3/kv/range", body)
            except (EtcdError, _NotSent, trio.TooSlowError) as exc:
                guard.fail(f"{endpoint} failed the watch health check: {exc or 'no answer'}")
                return


@attrs.define(slots=True)
class _StreamGuard:
    """Lets the health check of a watch interrupt the wait for the stream's next chunk."""

    read_scope: trio.CancelScope | None = None
    failure: str = ""

    def fail(self, reason: str) -> None:
        self.failure = reason
        if self.read_scope is not None:
            self.read_scope.cancel()


@attrs.define(slots=True)
class _WatchState:
    """What a watch remembers across reconnections."""

    next_rev: int
    started: bool = False
    reauthenticated: bool = False


class LeaseKeeper:
    """Keeps one lease alive, renewing it every TTL/3, until cancelled or the lease is lost.

    Loss means etcd said the lease is gone, or no renewal succeeded before the lease's
    expiry as measured from the last renewal's sending time (never later than etcd's own
    expiry, so the owner of a key stops believing in it no later than etcd does).
    ``lost`` is set and ``on_lost(reason)`` called once; then :meth:`run` returns.
    """

    def __init__(
        self,
        client: EtcdClient,
        lease_id: int,
        ttl: float,
        *,
        on_lost: Callable[[str], None] | None = None,
        renew_every: float | None = None,
        granted_at: float | None = None,
    ) -> None:
        self.client = client
        self.lease_id = lease_id
        self.ttl = ttl
        self.renew_every = renew_every if renew_every is not None else ttl / 3
        self.lost = trio.Event()
        self.lost_reason = ""
        self._on_lost = on_lost
        # Counted from when the grant was *sent* (``granted_at``, Trio time) when known.
        self.expires_at = (trio.current_time() if granted_at is None else granted_at) + ttl

    def _lose(self, reason: str) -> None:
        self.lost_reason = reason
        log.warning("etcd lease %x lost: %s", self.lease_id, reason)
        self.lost.set()
        if self._on_lost is not None:
            self._on_lost(reason)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew until cancelled or lost (then return)."""
        task_status.started()
        next_renewal = trio.current_time() + self.renew_every
        while True:
            await trio.sleep_until(next_renewal)
            sent_at = trio.current_time()
            remaining = self.expires_at - sent_at
            if remaining <= 0:
                self._lose(f"not renewed within its TTL of {self.ttl}s")
                return
            try:
                ttl = await self.client.lease_keepalive(self.lease_id, timeout=remaining)
            except EtcdLeaseLost as exc:
                self._lose(exc.message)
                return
            except EtcdError as exc:
                # Keep trying until the lease would have expired; the client already
                # retried across endpoints within ``remaining``.
                log.info("etcd lease %x keepalive failed: %s", self.lease_id, exc)
                next_renewal = trio.current_time() + min(self.renew_every, 0.2)
                continue
            self.expires_at = sent_at + ttl
            next_renewal = sent_at + self.renew_every
