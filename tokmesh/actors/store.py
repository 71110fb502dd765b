"""Store shard actors: the only writers of session state (01 §5, §7; DESIGN §1, §3).

A session belongs to the shard chosen by its ``user_id``, so a user's quota check,
revoke-by-user and every version check of a session are serialised in one actor.

Each shard runs the recommended pipelined write path of 01 §7: it checks preconditions
against its latest state (committed + in flight), hands the new full-state record to the
WAL writer without waiting for the fsync, and moves on. When the WAL writer commits the
batch it calls back synchronously; the shard then applies the record to the shared
committed :class:`StoreState`, publishes it on the node's
:class:`~tokmesh.actors.commit_stream.CommitStream` in the same step, and answers the
caller (I1-I4). Reads never see uncommitted records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from tokmesh.actors.commit_stream import REPLICATED_CAUSE, Commit, CommitKind, CommitStream
from tokmesh.actors.messages import (
    Barrier,
    Create,
    Drop,
    Message,
    Purge,
    Renew,
    Replicate,
    Revoke,
    RevokeUser,
    Touch,
    Update,
)
from tokmesh.actors.reply import Reply
from tokmesh.actors.state import StoreState
from tokmesh.actors.wal_writer import Append, WalWriter
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.ids import new_session_id
from tokmesh.domain.session import Session
from tokmesh.storage.wal_codec import RecordType, WalRecord
from tokmesh.telemetry import metrics

log = logging.getLogger("tokmesh.store")

#: The commit-stream kind of each logged record type (a DELETE is a REVOKE when it
#: leaves a tombstone, an EXPIRE when it removes the session).
_KIND_OF = {RecordType.CREATE: CommitKind.CREATE, RecordType.UPDATE: CommitKind.UPDATE}


class SessionShard:
    """One store actor. Public entry point: :meth:`send` (enqueue a message)."""

    def __init__(
        self,
        index: int,
        state: StoreState,
        wal: WalWriter,
        commits: CommitStream | None = None,
        mailbox_size: int = 4096,
    ) -> None:
        self.index = index
        self.state = state
        self.wal = wal
        #: Where every committed change is published (shared by all shards of a store).
        self.commits = commits if commits is not None else CommitStream()
        self._send, self._recv = trio.open_memory_channel[Message | _Prepared](mailbox_size)
        #: newest in-flight version per session id (``None`` = removal in flight)
        self._pending: dict[str, Session | None] = {}
        self._inflight: dict[str, int] = {}
        #: token digests / user ids of creates in flight (uniqueness and quota)
        self._pending_tokens = state.pending_tokens
        self._pending_user_creates: dict[str, set[str]] = {}
        self._outstanding = 0
        self._idle = trio.Event()
        self._idle.set()
        self._closed = False
        #: Messages sent and not yet taken by the actor, and whether it is handling one:
        #: with neither, :meth:`submit` may handle a message itself (nothing is ahead).
        self._queued = 0
        self._busy = False

    async def send(self, msg: Message) -> None:
        """Enqueue a message (bounded mailbox: callers wait when it is full)."""
        self._queued += 1
        try:
            await self._send.send(msg)
        except BaseException as exc:
            self._queued -= 1
            if isinstance(exc, trio.ClosedResourceError | trio.BrokenResourceError):
                raise TokMeshError(E.SYS_UNAVAILABLE, "server is shutting down") from None
            raise

    def submit(self, msg: Message) -> bool:
        """Handle ``msg`` without waiting, or queue it; False when neither is possible.

        When the actor sits idle (nothing sent to it that it has not finished handling),
        the message is handled here and now, exactly as the actor would: its records go
        to the WAL in the same order, since nothing of this shard can be ahead of them.
        That saves the actor's task step and the reply's wake-up on the write path.
        Otherwise the message is queued for the actor (``send_nowait``). Either way
        ``msg.reply`` is resolved later, on commit; a rejection found here (quota,
        conflict, not found) raises at once. False (a full mailbox) means nothing
        happened: the caller awaits :meth:`send`.
        """
        if self._closed:
            raise TokMeshError(E.SYS_UNAVAILABLE, "server is shutting down")
        if not self._queued and not self._busy:
            items = self._plan(msg)
            try:
                queued = not items or self.wal.try_append_many(items)
            except TokMeshError as err:
                for item in items:
                    item.on_fail(err)  # settles them; the reply fails
                return True
            if not queued:
                # The WAL's mailbox is full: the idle actor takes the prepared records
                # (a send to a waiting receiver always succeeds) and waits for room;
                # anything later for this shard queues behind them.
                self._send.send_nowait(_Prepared(items))
                self._queued += 1
            return True
        try:
            self._send.send_nowait(msg)
            self._queued += 1
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise TokMeshError(E.SYS_UNAVAILABLE, "server is shutting down") from None
        return True

    async def close(self) -> None:
        """Stop accepting; :meth:`run` returns after the queued messages are handled."""
        self._closed = True
        await self._send.aclose()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Actor loop."""
        task_status.started()
        async for msg in self._recv:
            self._queued -= 1
            self._busy = True
            try:
                await self._handle(msg)
            except TokMeshError as exc:
                reply = getattr(msg, "reply", None)  # a _Prepared run has none
                if reply is not None:
                    reply.fail(exc)
            finally:
                self._busy = False
        # Wait for in-flight records to be committed before reporting closed.
        await self._idle.wait()

    # -- helpers -------------------------------------------------------------------------

    def _latest(self, sid: str) -> Session | None:
        """Newest state of a session: in-flight if any, else committed."""
        if sid in self._pending:
            return self._pending[sid]
        return self.state.sessions.get(sid)

    def _live_user_ids(self, user_id: str, now_ms: int) -> list[Session]:
        ids = set(self.state.by_user.get(user_id))
        ids.update(self._pending_user_creates.get(user_id, ()))
        foreign = self.state.foreign
        if foreign is not None:
            ids = {sid for sid in ids if not foreign(sid)}
        out = []
        for sid in ids:
            s = self._latest(sid)
            if s is not None and s.user_id == user_id and s.is_live(now_ms):
                out.append(s)
        return out

    def _prepare(
        self,
        rtype: RecordType,
        sid: str,
        new: Session | None,
        now_ms: int,
        done: Callable[[], None],
        failed: Callable[[TokMeshError], None],
        tombstone: bool = False,
        cause: str = "",
        by: str = "",
    ) -> Append:
        """Mark ``new`` in flight and build its WAL submission, applied on commit.

        ``new is None`` logs a DELETE that removes the session entirely (sweeper purge);
        ``tombstone`` logs a DELETE that keeps ``new`` as a revoked record. Synchronous:
        a caller may prepare many records and submit them together. ``cause`` and ``by``
        go into the record's event note (see ``WalRecord.event``): the event stream
        reads them back from the WAL, where a touch and a renew look alike.
        """
        event: dict[str, Any] | None = None
        if cause:
            event = {"cause": cause, "by": by}
            if rtype is RecordType.DELETE:
                # A DELETE logs no state: name the session it ends for the event stream.
                ended = new if new is not None else self._latest(sid)
                if ended is not None:
                    event["user_id"] = ended.user_id
                    event["device_id"] = ended.device_id
                    event["version"] = ended.version
        self._pending[sid] = new
        self._inflight[sid] = self._inflight.get(sid, 0) + 1
        self._outstanding += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        if new is not None and not tombstone:
            version, body = new.version, new.to_record()
            kind = _KIND_OF[rtype]
        else:
            version, body = 0, None
            kind = CommitKind.REVOKE if tombstone else CommitKind.EXPIRE
        record = WalRecord(
            type=rtype, ts=now_ms, entity_id=sid, version=version, body=body, event=event
        )
        flight = _InFlight(self, kind, record, new, done, failed)
        return Append(record, flight.commit, flight.fail)

    def _settle(self, kind: CommitKind, sid: str, new: Session | None) -> None:
        """Take a committed or failed record off the in-flight books."""
        n = self._inflight[sid] - 1
        if n:
            self._inflight[sid] = n
        else:
            del self._inflight[sid]
            self._pending.pop(sid, None)
        if new is not None and kind is CommitKind.CREATE:
            self._pending_tokens.pop(new.token_hash, None)
            creates = self._pending_user_creates.get(new.user_id)
            if creates is not None:
                creates.discard(sid)
                if not creates:
                    del self._pending_user_creates[new.user_id]
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()

    def _apply(
        self, kind: CommitKind, record: WalRecord, new: Session | None, position: int
    ) -> None:
        """Apply a committed record to the shared state and publish it, in one step."""
        state = self.state
        sid = record.entity_id
        if new is None:
            # A removal is published with the record it removed.
            session = state.remove(sid)
            if session is not None and not session.is_deleted:
                state.note_expired(session)
        else:
            session = new
            state.put(new)
        state.position = position
        self.commits.publish(Commit(position, kind, sid, record, session))

    def _end_tombstone(self, tomb: Session) -> None:
        """Drop a tombstone past its original expiry. No WAL record: recovery drops it by
        the same rule. It is published all the same, at the position of the last logged
        commit, so the stream holds every change to the state."""
        self.state.remove(tomb.id)
        commits = self.commits
        commits.publish(Commit(commits.position, CommitKind.TOMBSTONE_END, tomb.id, None, tomb))

    async def _log_many(self, items: list[Append]) -> None:
        """Hand prepared records to the WAL as one submission: they share group commits
        and cost this actor one await, however many there are."""
        try:
            await self.wal.append_many(items)
        except TokMeshError as err:
            for item in items:
                item.on_fail(err)

    # -- message handlers ------------------------------------------------------------------

    async def _handle(self, msg: Message | _Prepared) -> None:
        if isinstance(msg, _Prepared):
            await self._log_many(msg.items)
            return
        if isinstance(msg, Barrier):
            await self._idle.wait()
            msg.reply.set(None)
            return
        items = self._plan(msg)
        if items:
            await self._log_many(items)

    def _plan(self, msg: Message) -> list[Append]:
        """Check ``msg`` against the latest state and prepare its records, without waiting.

        Every handler is synchronous up to the WAL hand-off, so the actor and
        :meth:`submit` run the same code; a rejection raises before anything is marked
        in flight. A message that needs no record resolves its reply here.
        """
        if isinstance(msg, Touch):
            return self._touch(msg)
        if isinstance(msg, Create):
            return self._create(msg)
        if isinstance(msg, Renew):
            return self._renew(msg)
        if isinstance(msg, Revoke):
            return self._revoke(msg)
        if isinstance(msg, RevokeUser):
            return self._revoke_user(msg)
        if isinstance(msg, Update):
            return self._update(msg)
        if isinstance(msg, Purge):
            return self._purge(msg)
        if isinstance(msg, Replicate):
            return self._replicate(msg)
        if isinstance(msg, Drop):
            self._drop(msg)
            return []
        raise TypeError(f"unknown store message {type(msg).__name__}")

    def _create(self, msg: Create) -> list[Append]:
        s = msg.session
        now = s.created_at
        reply = msg.reply
        live = self._live_user_ids(s.user_id, now)
        evict: Session | None = None
        if len(live) >= msg.max_per_user:
            if not msg.evict_oldest:
                metrics.SESSION_QUOTA_EXCEEDED.inc()
                raise TokMeshError(
                    E.SESS_QUOTA,
                    "per-user session quota reached",
                    {"max_per_user": msg.max_per_user},
                )
            evict = min(live, key=lambda x: (x.created_at, x.id))
        sid = s.id
        existing = self._latest(sid)
        replaced: Session | None = None
        # An expired session is absent for every create path (03 D-29): its id is purged
        # first (WAL DELETE) and then created afresh. A live tombstone keeps its id.
        if (
            existing is not None
            and msg.exclusive_id
            and existing.is_expired(now)
            and (not existing.is_deleted or (existing.expires_at and now > existing.expires_at))
        ):
            replaced = existing
            existing = None
        if existing is not None:
            if msg.exclusive_id:
                raise TokMeshError(E.SESS_EXISTS)
            for _ in range(3):
                sid = new_session_id()
                if self._latest(sid) is None:
                    break
            else:
                raise TokMeshError(E.SESS_EXISTS)
            s = s.evolve(id=sid)
        digest = s.token_hash
        holder_id = self.state.by_token.get(digest)
        if holder_id is not None:
            holder = self.state.sessions.get(holder_id)
            # An expired, non-revoked holder no longer owns its token (01 §4.1 step 7);
            # a tombstone keeps it until it expires, so a revoked token never revives.
            if holder is not None and not (holder.is_expired(now) and not holder.is_deleted):
                raise TokMeshError(E.TOKN_EXISTS)
        if digest in self._pending_tokens:
            raise TokMeshError(E.TOKN_EXISTS)
        items: list[Append] = []
        if replaced is not None:
            items.append(
                self._prepare(
                    RecordType.DELETE, sid, None, now, _noop, _log_failure, cause="expire"
                )
            )
        if evict is not None:
            tomb = evict.evolve(is_deleted=True, version=evict.version + 1)
            items.append(
                self._prepare(
                    RecordType.DELETE,
                    evict.id,
                    tomb,
                    now,
                    _noop,
                    _log_failure,
                    tombstone=True,
                    cause="revoke",
                    by=s.created_by,
                )
            )
        self._pending_tokens[digest] = sid
        self._pending_user_creates.setdefault(s.user_id, set()).add(sid)
        final = s
        items.append(
            self._prepare(RecordType.CREATE, sid, final, now, lambda: reply.set(final), reply.fail)
        )
        return items

    def _must_exist(self, sid: str, now_ms: int) -> Session:
        cur = self._latest(sid)
        if cur is None or cur.is_deleted:
            raise TokMeshError(E.SESS_NOT_FOUND)
        if cur.is_expired(now_ms):
            raise TokMeshError(E.SESS_EXPIRED)
        return cur

    def _touch(self, msg: Touch) -> list[Append]:
        cur = self._must_exist(msg.sid, msg.now_ms)
        now = msg.now_ms
        last_active = max(cur.last_active, now)
        changes: dict[str, object] = {}
        if last_active != cur.last_active and now - cur.last_active >= msg.min_interval_ms:
            changes["last_active"] = last_active
        if msg.ip is not None and msg.ip != cur.last_access_ip:
            changes["last_access_ip"] = msg.ip
        if msg.ua is not None and msg.ua != cur.last_access_ua:
            changes["last_access_ua"] = msg.ua
        if not changes:
            msg.reply.set(cur)
            return []
        if "last_active" not in changes and last_active != cur.last_active:
            changes["last_active"] = last_active
        new = cur.evolve(version=cur.version + 1, **changes)
        return self._log_update(msg, new, "touch")

    def _log_update(self, msg: Touch | Renew | Update, new: Session, cause: str) -> list[Append]:
        """The UPDATE of ``new`` that answers ``msg`` once it is committed."""
        reply = msg.reply
        item = self._prepare(
            RecordType.UPDATE,
            msg.sid,
            new,
            msg.now_ms,
            lambda: reply.set(new),
            reply.fail,
            cause=cause,
            by=msg.by,
        )
        return [item]

    def _renew(self, msg: Renew) -> list[Append]:
        cur = self._must_exist(msg.sid, msg.now_ms)
        _check_version(cur, msg.expected_version, "renew")
        now = msg.now_ms
        new = cur.evolve(
            expires_at=now + msg.ttl_ms,
            ttl=msg.ttl_ms,
            last_active=max(cur.last_active, now),
            version=cur.version + 1,
        )
        return self._log_update(msg, new, "renew")

    def _update(self, msg: Update) -> list[Append]:
        cur = self._must_exist(msg.sid, msg.now_ms)
        if msg.user_id is not None and msg.user_id != cur.user_id:
            raise TokMeshError(E.ARG_INVALID, "user_id is immutable")
        _check_version(cur, msg.expected_version, "update")
        now = msg.now_ms
        changes: dict[str, object] = {
            "last_active": max(cur.last_active, now),
            "version": cur.version + 1,
        }
        if msg.device_id:
            changes["device_id"] = msg.device_id
        if msg.data is not None:
            changes["data"] = msg.data or None
        if msg.ttl_ms > 0:
            changes["expires_at"] = now + msg.ttl_ms
            changes["ttl"] = msg.ttl_ms
        new = cur.evolve(**changes)
        return self._log_update(msg, new, "update")

    def _revoke(self, msg: Revoke) -> list[Append]:
        cur = self._latest(msg.sid)
        if cur is None or cur.is_deleted or cur.is_expired(msg.now_ms):
            msg.reply.set(False)  # idempotent: nothing to do, no WAL record
            return []
        tomb = cur.evolve(is_deleted=True, version=cur.version + 1)
        reply = msg.reply
        item = self._prepare(
            RecordType.DELETE,
            msg.sid,
            tomb,
            msg.now_ms,
            lambda: reply.set(True),
            reply.fail,
            tombstone=True,
            cause="revoke",
            by=msg.by,
        )
        return [item]

    def _revoke_user(self, msg: RevokeUser) -> list[Append]:
        live = [s for s in self._live_user_ids(msg.user_id, msg.now_ms) if s.id != msg.except_sid]
        if len(live) > msg.limit:
            raise TokMeshError(
                E.SESS_QUOTA,
                "too many sessions to revoke at once; revoke in batches",
                {"limit": msg.limit, "count": len(live)},
            )
        if not live:
            msg.reply.set(0)
            return []
        counter = _Countdown(len(live), msg.reply)
        items = []
        for cur in live:
            tomb = cur.evolve(is_deleted=True, version=cur.version + 1)
            items.append(
                self._prepare(
                    RecordType.DELETE,
                    cur.id,
                    tomb,
                    msg.now_ms,
                    counter.ok,
                    counter.failed,
                    tombstone=True,
                    cause="revoke",
                    by=msg.by,
                )
            )
        return items

    def _purge(self, msg: Purge) -> list[Append]:
        now = msg.now_ms
        state = self.state
        logged: list[str] = []
        removed = 0
        for sid in msg.sids:
            cur = state.sessions.get(sid)
            if cur is None:
                continue
            if sid in self._pending:
                # Something newer is in flight: look again once it is committed (the
                # sweeper took this id's wheel entry, and a touch adds no new one).
                state.schedule_recheck(sid, now)
                continue
            if cur.is_deleted:
                if cur.expires_at != 0 and now > cur.expires_at:
                    self._end_tombstone(cur)
                    removed += 1
                continue
            if cur.is_expired(now):
                logged.append(sid)
        if not logged:
            if msg.reply is not None:
                msg.reply.set(removed)
            return []
        counter = _Countdown(len(logged), msg.reply, base=removed)
        return [
            self._prepare(
                RecordType.DELETE, sid, None, now, counter.ok, counter.failed, cause="expire"
            )
            for sid in logged
        ]

    def _replicate(self, msg: Replicate) -> list[Append]:
        """Write the owner's states that are newer than ours (see :class:`Replicate`).

        A tombstone is logged as a DELETE of the state just before it, written first
        when this node does not hold exactly that state: a WAL DELETE carries no state
        (a revoke keeps the record and bumps its version), so recovery then rebuilds the
        owner's tombstone exactly, also for a session this node never held alive. Each
        record's event note says ``replicate``, so the event stream and the metrics
        leave copies out.
        """
        todo: list[tuple[RecordType, str, Session | None, bool]] = []
        latest: dict[str, Session | None] = {}
        for sid, state in msg.items:
            cur = latest[sid] if sid in latest else self._latest(sid)
            if state is None:
                # The owner purged an expired session; a tombstone here is newer news.
                if cur is not None and not cur.is_deleted:
                    todo.append((RecordType.DELETE, sid, None, False))
                    latest[sid] = None
                continue
            if cur is not None:
                if cur.is_deleted:
                    continue  # a tombstone is final: a revoked session never revives
                if state.version <= cur.version and not state.is_deleted:
                    continue  # a duplicate or an older state
            if state.is_deleted:
                before = state.evolve(is_deleted=False, version=max(1, state.version - 1))
                if cur is None or cur.version != before.version:
                    rtype = RecordType.CREATE if cur is None else RecordType.UPDATE
                    todo.append((rtype, sid, before, False))
                todo.append((RecordType.DELETE, sid, state, True))
            else:
                rtype = RecordType.CREATE if cur is None else RecordType.UPDATE
                todo.append((rtype, sid, state, False))
            latest[sid] = state
        if not todo:
            msg.reply.set(0)
            return []
        counter = _Countdown(len(todo), msg.reply)
        return [
            self._prepare(
                rtype, sid, new, msg.now_ms, counter.ok, counter.failed, tomb, REPLICATED_CAUSE
            )
            for rtype, sid, new, tomb in todo
        ]

    def _drop(self, msg: Drop) -> None:
        """Forget copies (see :class:`Drop`): no record, published as ``DROPPED``."""
        state = self.state
        commits = self.commits
        dropped = 0
        for sid in msg.sids:
            if sid in self._pending:
                continue
            copy = state.remove(sid)
            if copy is not None:
                dropped += 1
                commits.publish(Commit(commits.position, CommitKind.DROPPED, sid, None, copy))
        msg.reply.set(dropped)


def _check_version(cur: Session, expected: int | None, method: str) -> None:
    if expected is not None and expected != cur.version:
        metrics.SESSION_VERSION_CONFLICTS.labels(method=method).inc()
        raise TokMeshError(
            E.SESS_CONFLICT,
            details={"current_version": cur.version, "attempted_version": expected},
            headers={"Retry-After": "1"},
        )


def _noop() -> None:
    return None


def _log_failure(err: TokMeshError) -> None:
    log.error("eviction of the oldest session failed: %s", err.code)


class _Prepared:
    """Records :meth:`SessionShard.submit` prepared but the WAL had no room for."""

    __slots__ = ("items",)

    def __init__(self, items: list[Append]) -> None:
        self.items = items


class _InFlight:
    """One record a shard handed to the WAL writer: its commit and failure callbacks.

    A slotted object with two bound methods costs a third of the garbage-collected
    allocations of three closures and their cells; a bulk purge makes one per record.
    """

    __slots__ = ("done", "failed", "kind", "new", "record", "shard")

    def __init__(
        self,
        shard: SessionShard,
        kind: CommitKind,
        record: WalRecord,
        new: Session | None,
        done: Callable[[], None],
        failed: Callable[[TokMeshError], None],
    ) -> None:
        self.shard = shard
        self.kind = kind
        self.record = record
        self.new = new
        self.done = done
        self.failed = failed

    def commit(self, position: int) -> None:
        """The record is committed at ``position``: apply and publish it, then answer the
        caller."""
        shard = self.shard
        shard._settle(self.kind, self.record.entity_id, self.new)
        shard._apply(self.kind, self.record, self.new, position)
        self.done()

    def fail(self, err: TokMeshError) -> None:
        """The record was not written: nothing of it becomes visible or is published;
        tell the caller."""
        self.shard._settle(self.kind, self.record.entity_id, self.new)
        self.failed(err)


class _Countdown:
    """Resolve a reply with the number of successes once ``n`` records have settled."""

    __slots__ = ("_err", "_left", "_ok", "_reply")

    def __init__(self, n: int, reply: Reply[int] | None, base: int = 0) -> None:
        self._left = n
        self._ok = base
        self._err: TokMeshError | None = None
        self._reply = reply

    def ok(self) -> None:
        self._ok += 1
        self._step()

    def failed(self, err: TokMeshError) -> None:
        self._err = err
        log.error("batch revoke/purge record failed: %s", err.code)
        self._step()

    def _step(self) -> None:
        self._left -= 1
        if self._left == 0 and self._reply is not None:
            if self._ok == 0 and self._err is not None:
                self._reply.fail(self._err)
            else:
                self._reply.set(self._ok)
