"""The per-command pipeline and AUTH, driven without sockets."""

from __future__ import annotations

import pytest

from tokmesh.resp.commands import Connection, Dispatcher, glob_regex, parse_integer

from .conftest import KEY_ISSUER, KEY_METRICS, KEY_VALIDATOR, SECRET, FakeBackend

NOAUTH = b"-NOAUTH TM-AUTH-4010 Authentication required\r\n"
SID = b"tmss-01jf8xzm7e3xqh5p8n4r6s2w0t"


def setup() -> tuple[FakeBackend, Dispatcher, Connection]:
    backend = FakeBackend()
    return backend, Dispatcher(backend), Connection("10.1.2.3")


async def run(d: Dispatcher, conn: Connection, *argv: bytes | str) -> bytes:
    return await d.execute(conn, [a.encode() if isinstance(a, str) else a for a in argv])


async def auth(d: Dispatcher, conn: Connection, key: str) -> None:
    assert await run(d, conn, "AUTH", key, SECRET) == b"+OK\r\n"


async def test_open_commands_and_noauth() -> None:
    _, d, conn = setup()
    assert await run(d, conn, "PING") == b"+PONG\r\n"
    assert await run(d, conn, "ping", "hi") == b"$2\r\nhi\r\n"
    assert await run(d, conn, "PING", "a", "b") == (
        b"-ERR wrong number of arguments for 'PING' command\r\n"
    )
    for cmd in (["GET", SID], ["EXISTS", SID], ["TM.VALIDATE", "t"], ["INFO"], ["ECHO", "x"]):
        assert await run(d, conn, *cmd) == NOAUTH
    # Unknown commands are answered before the authentication check, as in Redis.
    assert await run(d, conn, "FLUSHALL") == (
        b"-ERR unknown command 'FLUSHALL', with args beginning with: \r\n"
    )
    assert await run(d, conn, "MULTI") == (
        b"-ERR unknown command 'MULTI', with args beginning with: \r\n"
    )
    assert await run(d, conn) == b"-ERR no command\r\n"


async def test_auth_forms_and_errors() -> None:
    backend, d, conn = setup()
    assert await run(d, conn, "AUTH", f"{KEY_ISSUER}:{SECRET}") == b"+OK\r\n"
    assert conn.principal is not None and conn.principal.key_id == KEY_ISSUER
    assert conn.ctx.key_id == KEY_ISSUER and conn.ctx.client_ip == "10.1.2.3"
    backend, d, conn = setup()
    assert await run(d, conn, "auth", KEY_VALIDATOR, SECRET) == b"+OK\r\n"
    assert await run(d, conn, "AUTH") == b"-ERR wrong number of arguments for 'AUTH' command\r\n"
    assert await run(d, conn, "AUTH", "a", "b", "c") == (
        b"-ERR wrong number of arguments for 'AUTH' command\r\n"
    )
    assert await run(d, conn, "AUTH", "nocolon") == (
        b"-ERR invalid AUTH format, expected 'key_id:key_secret' or 'key_id key_secret'\r\n"
    )
    assert await run(d, conn, "AUTH", KEY_ISSUER, "wrong") == (
        b"-ERR TM-AUTH-4011 invalid credentials\r\n"
    )
    # A failed AUTH keeps the earlier binding.
    assert conn.principal is not None and conn.principal.key_id == KEY_VALIDATOR
    backend.keys[KEY_ISSUER].status = "disabled"
    assert await run(d, conn, "AUTH", KEY_ISSUER, SECRET) == (
        b"-ERR TM-AUTH-4012 api key disabled\r\n"
    )


async def test_disabled_key_loses_access_at_once() -> None:
    backend, d, conn = setup()
    await auth(d, conn, KEY_VALIDATOR)
    assert await run(d, conn, "GET", SID) == b"$-1\r\n"
    backend.keys[KEY_VALIDATOR].status = "disabled"
    assert await run(d, conn, "GET", SID) == NOAUTH
    assert conn.principal is None
    backend.keys[KEY_VALIDATOR].status = "active"
    assert await run(d, conn, "GET", SID) == NOAUTH  # must AUTH again


async def test_unknown_commands_after_auth() -> None:
    _, d, conn = setup()
    await auth(d, conn, KEY_ISSUER)
    assert await run(d, conn, "FLUSHALL") == (
        b"-ERR unknown command 'FLUSHALL', with args beginning with: \r\n"
    )
    for name in ("MULTI", "EXEC", "WATCH", "SUBSCRIBE"):
        assert await run(d, conn, name, "x", "y z") == (
            f"-ERR unknown command '{name}', with args beginning with: 'x' 'y z' \r\n".encode()
        )
    # Redis shows the arguments up to 128 bytes of them.
    reply = await run(d, conn, "NOPE", "a" * 100, "b" * 100, "c")
    assert reply == (
        b"-ERR unknown command 'NOPE', with args beginning with: '"
        + b"a" * 100
        + b"' '"
        + b"b" * 25
        + b"' \r\n"
    )
    # A hostile name cannot inject a reply line.
    reply = await run(d, conn, b"X\r\n+OK")
    assert reply.count(b"\r\n") == 1 and reply.startswith(b"-ERR unknown command")


async def test_role_table() -> None:
    _, d, conn = setup()
    await auth(d, conn, KEY_VALIDATOR)
    for cmd in ("SET", "DEL", "EXPIRE", "TM.CREATE", "TM.REVOKE_USER"):
        assert await run(d, conn, cmd, "a", "b", "c") == (
            f"-ERR TM-AUTH-4030 permission denied for command '{cmd}'\r\n".encode()
        )
    assert await run(d, conn, "GET", SID) == b"$-1\r\n"
    assert await run(d, conn, "TTL", SID) == b":-2\r\n"
    assert await run(d, conn, "EXISTS", SID) == b":0\r\n"
    assert await run(d, conn, "SCAN", "0") == b"*2\r\n$1\r\n0\r\n*0\r\n"
    assert await run(d, conn, "TM.TOUCH", SID) == b"-ERR TM-SESS-4040 Session not found\r\n"
    assert await run(d, conn, "TM.VALIDATE", "bogus") == b"-ERR TM-TOKN-4010 Token invalid\r\n"
    _, d, conn = setup()
    await auth(d, conn, KEY_METRICS)
    for cmd in ("GET", "TTL", "EXISTS", "SCAN", "TM.VALIDATE", "TM.TOUCH", "SET", "DEL"):
        reply = await run(d, conn, cmd, "x")
        assert reply == f"-ERR TM-AUTH-4030 permission denied for command '{cmd}'\r\n".encode()


async def test_order_maintenance_rate_role_arity() -> None:
    backend, d, conn = setup()
    await auth(d, conn, KEY_VALIDATOR)
    # Role before arity: a validator's malformed SET is a permission error.
    assert await run(d, conn, "SET") == (
        b"-ERR TM-AUTH-4030 permission denied for command 'SET'\r\n"
    )
    assert await run(d, conn, "GET") == b"-ERR wrong number of arguments for 'GET' command\r\n"
    backend.maintenance = True
    assert await run(d, conn, "GET", SID) == (
        b"-ERR TM-ADMIN-5031 service unavailable: restore in progress\r\n"
    )
    assert await run(d, conn, "PING") == b"+PONG\r\n"  # open commands still answer
    assert await run(d, conn, "NOPE") == (  # unknown first
        b"-ERR unknown command 'NOPE', with args beginning with: \r\n"
    )
    # INFO is not a data command: it answers, and reports the restore as "loading".
    assert b"\r\nloading:1\r\n" in await run(d, conn, "INFO", "persistence")
    backend.maintenance = False
    backend.budget[KEY_VALIDATOR] = 2
    assert await run(d, conn, "GET", SID) == b"$-1\r\n"
    assert await run(d, conn, "SET", "x") == (  # a denied command still spent a token
        b"-ERR TM-AUTH-4030 permission denied for command 'SET'\r\n"
    )
    assert await run(d, conn, "GET", SID) == b"-ERR TM-SYS-4290 rate limit exceeded\r\n"
    assert await run(d, conn, "SET", "x") == b"-ERR TM-SYS-4290 rate limit exceeded\r\n"


def test_helpers() -> None:
    assert parse_integer(b"10") == 10 and parse_integer(b"-1") == -1
    for bad in (b"", b"+1", b"01", b" 1", b"1_0", b"1.5", b"9223372036854775808", b"abc"):
        assert parse_integer(bad) is None
    g = glob_regex
    assert g(b"tmss-*").fullmatch(b"tmss-abc")
    assert not g(b"tmss-*").fullmatch(b"tmak-abc")
    assert g(b"a?c").fullmatch(b"abc") and not g(b"a?c").fullmatch(b"ac")
    assert g(b"[a-c]x").fullmatch(b"bx") and not g(b"[^a-c]x").fullmatch(b"bx")
    assert g(b"[c-a]x").fullmatch(b"bx")
    assert g(b"a\\*").fullmatch(b"a*") and not g(b"a\\*").fullmatch(b"ab")
    assert g(b"a.b").fullmatch(b"a.b") and not g(b"a.b").fullmatch(b"axb")


@pytest.mark.parametrize("cursor", [b"x", b"-1", b"1.5", b"18446744073709551616", b"01"])
async def test_scan_bad_cursor(cursor: bytes) -> None:
    _, d, conn = setup()
    await auth(d, conn, KEY_VALIDATOR)
    assert await run(d, conn, "SCAN", cursor) == b"-ERR invalid cursor\r\n"


async def test_scan_options() -> None:
    _, d, conn = setup()
    await auth(d, conn, KEY_VALIDATOR)
    assert await run(d, conn, "SCAN", "0", "COUNT", "x") == (
        b"-ERR value is not an integer or out of range\r\n"
    )
    for args in (["COUNT", "0"], ["TYPE", "string"], ["MATCH"], ["COUNT", "1", "MATCH"]):
        assert await run(d, conn, "SCAN", "0", *args) == b"-ERR syntax error\r\n"
    assert await run(d, conn, "SCAN", "0", "match", "*", "count", "5") == (
        b"*2\r\n$1\r\n0\r\n*0\r\n"
    )
