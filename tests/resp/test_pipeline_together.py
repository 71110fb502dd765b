"""Pipelined mutations of one read are submitted together (``Dispatcher.run_awaited``).

What must hold, and each test below proves one: the mutations of a run are in flight at
the same time and share group commits; replies come back in command order; a read after
a mutation sees it; two mutations of one session (or one user) apply in order; an error
in one mutation leaves the others alone; each is acknowledged only after its WAL commit;
the audit log holds one record per change, in command order.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import orjson
import trio
import trustme

from tokmesh.domain.clock import SYSTEM_CLOCK, Clock
from tokmesh.domain.ids import new_session_id
from tokmesh.domain.tokens import generate_token
from tokmesh.resp.commands import Dispatcher
from tokmesh.resp.connection import Connection
from tokmesh.services.sessions import CreateResult, RequestContext, local_sessions
from tokmesh.telemetry.audit import AuditLog

from .conftest import (
    KEY_ISSUER,
    SECRET,
    FakeBackend,
    FakeSessions,
    RealStack,
    in_thread,
    start_server,
)

RATE_LIMITED = b"-ERR TM-SYS-4290 rate limit exceeded\r\n"


def cmd(*args: bytes | str) -> list[bytes]:
    return [a.encode() if isinstance(a, str) else a for a in args]


def create(sid: str, user: str) -> list[bytes]:
    return cmd("TM.CREATE", sid, orjson.dumps({"user_id": user}))


async def one_read(d: Dispatcher, conn: Connection, commands: list[list[bytes]]) -> list[bytes]:
    """The replies to ``commands`` arriving in one read, run as the mux and the
    connection's task run them."""
    replies: list[bytes] = []
    conn.checked = False
    i, pending = d.run_inline(conn, commands, 0, replies)
    if pending is not None:
        await d.run_awaited(conn, commands, i, pending, replies)
    assert len(replies) == len(commands)
    return replies


async def signed_in(backend: Any) -> tuple[Dispatcher, Connection]:
    # Any: the fake's sessions are not a full SessionOperations (tests/resp/conftest.py).
    d = Dispatcher(backend)
    conn = Connection("10.1.2.3")
    assert await d.execute(conn, cmd("AUTH", KEY_ISSUER, SECRET)) == b"+OK\r\n"
    return d, conn


def created_id(reply: bytes) -> str:
    body = orjson.loads(reply.split(b"\r\n", 1)[1].rsplit(b"\r\n", 1)[0])
    return str(body["session_id"])


class GatedSessions(FakeSessions):
    """Creates that finish only once ``expected`` of them are in flight at once: a
    dispatcher that awaited each before submitting the next would wait forever."""

    def __init__(self, clock: Clock, expected: int) -> None:
        super().__init__(clock)
        self.expected = expected
        self.in_flight = 0
        self.peak = 0
        self.all_in = trio.Event()

    async def create(self, ctx: RequestContext, user_id: str | None, **kw: Any) -> CreateResult:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.in_flight >= self.expected:
            self.all_in.set()
        try:
            with trio.move_on_after(0.5):
                await self.all_in.wait()
            return await super().create(ctx, user_id, **kw)
        finally:
            self.in_flight -= 1


def gated_backend(expected: int) -> tuple[FakeBackend, GatedSessions]:
    backend = FakeBackend()
    sessions = GatedSessions(SYSTEM_CLOCK, expected)
    backend.sessions = sessions
    return backend, sessions


# -- the dispatcher alone ---------------------------------------------------------------------


async def test_mutations_of_distinct_sessions_are_in_flight_together() -> None:
    backend, sessions = gated_backend(expected=5)
    d, conn = await signed_in(backend)
    sids = [new_session_id() for _ in range(5)]
    with trio.fail_after(5):
        replies = await one_read(d, conn, [create(sid, f"u{n}") for n, sid in enumerate(sids)])
    assert sessions.peak == 5
    # Replies in command order, whatever order the creates finished in.
    assert [created_id(r) for r in replies] == sids


async def test_mutations_of_one_user_or_session_run_one_after_the_other() -> None:
    backend, sessions = gated_backend(expected=2)
    d, conn = await signed_in(backend)
    a, b = new_session_id(), new_session_id()
    # Same user: the second create waits for the first (its gate then times out alone).
    replies = await one_read(d, conn, [create(a, "same"), create(b, "same")])
    assert sessions.peak == 1
    assert [created_id(r) for r in replies] == [a, b]
    # Same session: the second is refused because the first committed before it ran.
    c = new_session_id()
    replies = await one_read(d, conn, [create(c, "x"), create(c, "y")])
    assert sessions.peak == 1
    assert created_id(replies[0]) == c
    assert replies[1] == b"-ERR TM-SESS-4090 session id conflict\r\n"


async def test_a_read_after_mutations_sees_them() -> None:
    backend, _ = gated_backend(expected=2)
    d, conn = await signed_in(backend)
    a, b = new_session_id(), new_session_id()
    replies = await one_read(
        d,
        conn,
        [create(a, "u1"), create(b, "u2"), cmd("EXISTS", a, b), cmd("GET", a), cmd("TTL", b)],
    )
    assert [created_id(r) for r in replies[:2]] == [a, b]
    assert replies[2] == b":2\r\n"
    assert orjson.loads(replies[3].split(b"\r\n")[1])["id"] == a
    assert replies[4].startswith(b":") and int(replies[4][1:-2]) > 0


async def test_refusals_inside_a_run_keep_their_place() -> None:
    backend, sessions = gated_backend(expected=3)
    d, conn = await signed_in(backend)
    # Tokens are taken before the arity check: the first four commands take one each.
    backend.budget[KEY_ISSUER] = 4
    sids = [new_session_id() for _ in range(5)]
    commands = [
        create(sids[0], "u0"),
        cmd("TM.CREATE", sids[1]),  # wrong arity
        create(sids[2], "u2"),
        create(sids[3], "u3"),
        create(sids[4], "u4"),  # the budget is spent: rate limited
    ]
    with trio.fail_after(5):
        replies = await one_read(d, conn, commands)
    assert sessions.peak == 3
    assert [created_id(r) for r in (replies[0], replies[2], replies[3])] == sids[:1] + sids[2:4]
    assert replies[1] == b"-ERR wrong number of arguments for 'TM.CREATE' command\r\n"
    assert replies[4] == RATE_LIMITED


# -- the real services over a socket ----------------------------------------------------------


def pipeline(client: Any, *commands: tuple[Any, ...]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return list(pipe.execute(raise_on_error=False))


async def test_tls_connections_submit_together_too(nursery: trio.Nursery) -> None:
    # TLS connections keep their own loop (tokmesh/resp/handler.py), same dispatcher.
    backend, sessions = gated_backend(expected=5)
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = await start_server(nursery, backend, ssl_context=context)
    sids = [new_session_id() for _ in range(5)]
    commands: list[tuple[Any, ...]] = [
        ("TM.CREATE", sid, b'{"user_id":"%s"}' % sid.encode()) for sid in sids
    ]
    with ca.cert_pem.tempfile() as ca_file:
        client = server.client(ssl=True, ssl_ca_certs=ca_file, username=KEY_ISSUER, password=SECRET)
        replies = await in_thread(pipeline, client, *commands, ("EXISTS", *sids))
    assert sessions.peak == 5
    assert [orjson.loads(r)["session_id"] for r in replies[:5]] == sids
    assert replies[5] == 5


async def test_same_session_in_order_reads_see_writes(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("issuer")
    client = real_stack.client_for(kid, secret)
    a, b, c = new_session_id(), new_session_id(), new_session_id()
    token = generate_token()
    replies = await in_thread(
        pipeline,
        client,
        ("TM.CREATE", a, b'{"user_id":"ua"}'),
        ("TM.CREATE", b, b'{"user_id":"ub"}'),
        ("EXPIRE", a, 100),
        ("TTL", a),
        ("TM.TOUCH", b),
        ("DEL", a),
        ("EXPIRE", a, 100),
        ("TTL", a),
        ("SET", c, orjson.dumps({"user_id": "uc", "token": token})),
        ("SET", c, b'{"data":{"k":"v"}}'),
        ("GET", c),
        ("TM.VALIDATE", token),
        ("TM.CREATE", new_session_id(), b'{"user_id":"ub"}'),
        ("TM.CREATE", new_session_id(), b'{"user_id":"ub"}'),
        ("TM.REVOKE_USER", "ub"),
        ("EXISTS", b),
    )
    assert orjson.loads(replies[0])["session_id"] == a
    assert orjson.loads(replies[1])["session_id"] == b
    assert replies[2] == 1 and replies[3] in (99, 100)
    assert isinstance(replies[4], int)
    assert replies[5:8] == [1, 0, -2]
    assert replies[8:10] == [True, True]  # redis-py's reading of SET's +OK
    assert orjson.loads(replies[10])["data"] == {"k": "v"}
    assert replies[11] == b"OK"
    # The user's two new sessions were committed before the revoke of the user ran.
    assert replies[14:] == [3, 0]


async def test_an_error_leaves_the_other_mutations_alone(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("issuer")
    client = real_stack.client_for(kid, secret)
    taken = new_session_id()
    await in_thread(client.execute_command, "TM.CREATE", taken, b'{"user_id":"u0"}')
    sids = [new_session_id() for _ in range(4)]
    replies = await in_thread(
        pipeline,
        client,
        ("TM.CREATE", sids[0], b'{"user_id":"u1"}'),
        ("TM.CREATE", taken, b'{"user_id":"u2"}'),  # refused by the store actor
        ("TM.CREATE", sids[1], b'{"user_id":5}'),  # refused by the service
        ("TM.CREATE", sids[2], b"not json"),  # refused by the dispatcher
        ("TM.CREATE", sids[3], b'{"user_id":"u4"}'),
    )
    assert orjson.loads(replies[0])["session_id"] == sids[0]
    assert "TM-SESS-4090" in str(replies[1])
    assert "TM-SYS-4000" in str(replies[2]) and "TM-SYS-4000" in str(replies[3])
    assert orjson.loads(replies[4])["session_id"] == sids[3]
    assert await in_thread(client.exists, *sids) == 2


async def test_pipelined_creates_share_group_commits(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("issuer")
    wal = real_stack.engine.wal
    assert wal is not None
    sids = [new_session_id() for _ in range(200)]
    payload = b"".join(
        mb(b"TM.CREATE", sid.encode(), b'{"user_id":"u%d"}' % n) for n, sid in enumerate(sids)
    )
    batches, records = wal.stats.batches, wal.stats.records
    replies = await in_thread(raw_pipeline, real_stack, kid, secret, payload, len(sids))
    assert [orjson.loads(r)["session_id"] for r in replies] == sids
    assert wal.stats.records - records == 200
    # Awaited one by one, each record was a batch of its own (200 batches).
    assert wal.stats.batches - batches <= 100


async def test_each_reply_waits_for_its_commit(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("issuer")
    wal = real_stack.engine.wal
    assert wal is not None
    commit_batch = wal._commit_batch
    entered, release = trio.Event(), trio.Event()

    async def held_commit(batch: Any) -> None:
        entered.set()
        await release.wait()
        await commit_batch(batch)

    sids = [new_session_id() for _ in range(20)]
    payload = b"".join(mb(b"TM.CREATE", s.encode(), b'{"user_id":"%s"}' % s.encode()) for s in sids)
    sessions = local_sessions(real_stack.engine)
    with socket.create_connection(("127.0.0.1", real_stack.server.port), timeout=10) as sock:
        sock.sendall(mb(b"AUTH", kid.encode(), secret.encode()))
        assert await in_thread(sock.recv, 100) == b"+OK\r\n"
        wal._commit_batch = held_commit  # type: ignore[method-assign]
        try:
            sock.sendall(payload)
            with trio.fail_after(5):
                await entered.wait()  # the creates reached the WAL writer
            await trio.sleep(0.2)
            sock.setblocking(False)
            try:
                early = sock.recv(65536)
            except BlockingIOError:
                early = b""
            sock.settimeout(10)
            assert early == b""  # nothing acknowledged while nothing is committed
            assert not any(sessions.state.sessions.get(s) for s in sids)
        finally:
            release.set()
        replies = await in_thread(read_bulks, sock, len(sids))
    assert [orjson.loads(r)["session_id"] for r in replies] == sids


async def test_audit_records_of_a_run_follow_command_order(
    real_stack: RealStack, nursery: trio.Nursery, tmp_path: Path
) -> None:
    audit = AuditLog(tmp_path / "audit")
    await nursery.start(audit.run)
    real_stack.server.dispatcher.audit = audit
    kid, secret = await real_stack.new_key("issuer")
    client = real_stack.client_for(kid, secret)
    sids = [new_session_id() for _ in range(100)]
    commands = [("TM.CREATE", s, b'{"user_id":"%s"}' % s.encode()) for s in sids]
    commands.insert(50, ("TM.CREATE", sids[0], b'{"user_id":"again"}'))  # refused: no record
    replies = await in_thread(pipeline, client, *commands)
    assert "TM-SESS-4090" in str(replies[50])
    await audit.flush()
    lines = b"".join(p.read_bytes() for p in sorted((tmp_path / "audit").glob("*.jsonl")))
    records = [orjson.loads(line) for line in lines.splitlines()]
    assert [(r["action"], r["resource"]) for r in records] == [("TM.CREATE", s) for s in sids]


# -- raw socket helpers ------------------------------------------------------------------------


def mb(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def read_bulks(sock: socket.socket, n: int) -> list[bytes]:
    """``n`` bulk-string replies (an error reply fails the test)."""
    buf = b""
    out: list[bytes] = []
    while len(out) < n:
        while True:
            head, sep, rest = buf.partition(b"\r\n")
            if sep:
                assert head.startswith(b"$"), head
                size = int(head[1:])
                if len(rest) >= size + 2:
                    out.append(rest[:size])
                    buf = rest[size + 2 :]
                    break
            data = sock.recv(65536)
            assert data, "the server closed the connection"
            buf += data
    return out


def raw_pipeline(stack: RealStack, kid: str, secret: str, payload: bytes, n: int) -> list[bytes]:
    """Send ``payload`` in one write after AUTH; ``n`` bulk replies."""
    with socket.create_connection(("127.0.0.1", stack.server.port), timeout=10) as sock:
        sock.sendall(mb(b"AUTH", kid.encode(), secret.encode()))
        assert sock.recv(100) == b"+OK\r\n"
        sock.sendall(payload)
        return read_bulks(sock, n)
