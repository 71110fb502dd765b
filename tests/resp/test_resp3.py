"""RESP3 and the connection/server commands, without sockets (plus one mux round trip):
reply encodings in both protocols, HELLO's argument checks and NOPROTO, what answers
before AUTH, CLIENT, SELECT, RESET, COMMAND and INFO."""

from __future__ import annotations

import re
import socket

import pytest
import trio

from tokmesh.resp.commands import Connection, Dispatcher
from tokmesh.resp.info import InfoFacts, human_bytes, render_info, wanted_sections
from tokmesh.resp.replies import RESP2, RESP3, RespSet, Status, Verbatim

from .conftest import (
    KEY_ISSUER,
    KEY_METRICS,
    KEY_VALIDATOR,
    SECRET,
    FakeBackend,
    FakeKey,
    RespServer,
)
from .test_codec import mb

NOAUTH = b"-NOAUTH TM-AUTH-4010 Authentication required\r\n"
SID = b"tmss-01jf8xzm7e3xqh5p8n4r6s2w0t"
KEY_ADMIN = "tmak-01jf8xzm7e3xqh5p8n4r6s2w0d"


def setup() -> tuple[FakeBackend, Dispatcher, Connection]:
    backend = FakeBackend()
    backend.keys[KEY_ADMIN] = FakeKey(SECRET, "admin")
    d = Dispatcher(backend)
    return backend, d, d.clients.open("10.1.2.3", addr="10.1.2.3:5000", laddr="10.0.0.1:6379")


async def run(d: Dispatcher, conn: Connection, *argv: bytes | str) -> bytes:
    return await d.execute(conn, [a.encode() if isinstance(a, str) else a for a in argv])


# -- reply encodings -------------------------------------------------------------------------


def test_encodings_in_both_protocols() -> None:
    value = {"a": [1, None, Status("ok")], "s": RespSet((b"x",)), "t": Verbatim("hi\n")}
    assert RESP2.encode(value) == (
        b"*6\r\n$1\r\na\r\n*3\r\n:1\r\n$-1\r\n+ok\r\n"
        b"$1\r\ns\r\n*1\r\n$1\r\nx\r\n$1\r\nt\r\n$3\r\nhi\n\r\n"
    )
    assert RESP3.encode(value) == (
        b"%3\r\n$1\r\na\r\n*3\r\n:1\r\n_\r\n+ok\r\n"
        b"$1\r\ns\r\n~1\r\n$1\r\nx\r\n$1\r\nt\r\n=7\r\ntxt:hi\n\r\n"
    )
    assert RESP3.encode([True, False, 1.5, 3.0, float("inf"), float("-inf")]) == (
        b"*6\r\n#t\r\n#f\r\n,1.5\r\n,3\r\n,inf\r\n,-inf\r\n"
    )
    assert RESP2.encode([True, False, 1.5]) == b"*3\r\n:1\r\n:0\r\n$3\r\n1.5\r\n"
    assert RESP3.encode(float("nan")) == b",nan\r\n"
    assert RESP2.nil == b"$-1\r\n" and RESP3.nil == b"_\r\n"
    assert RESP3.encode({}) == b"%0\r\n" and RESP2.encode({}) == b"*0\r\n"


# -- HELLO -----------------------------------------------------------------------------------


async def test_hello_switches_protocol_and_answers_the_server_map() -> None:
    _, d, conn = setup()
    reply = await run(d, conn, "HELLO")  # no version: stays RESP2, flat array
    assert reply.startswith(b"*14\r\n$6\r\nserver\r\n$7\r\ntokmesh\r\n$7\r\nversion\r\n")
    assert b"$5\r\nproto\r\n:2\r\n$2\r\nid\r\n:%d\r\n" % conn.client_id in reply
    assert reply.endswith(
        b"$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"
    )
    reply = await run(d, conn, "hello", "3")
    assert reply.startswith(b"%7\r\n$6\r\nserver\r\n") and b"proto\r\n:3\r\n" in reply
    assert conn.proto is RESP3
    await run(d, conn, "AUTH", KEY_VALIDATOR, SECRET)
    assert await run(d, conn, "GET", SID) == b"_\r\n"  # the RESP3 null
    assert b"proto\r\n:2\r\n" in await run(d, conn, "HELLO", "2")
    assert await run(d, conn, "GET", SID) == b"$-1\r\n"


@pytest.mark.parametrize(
    ("argv", "reply"),
    [
        (["HELLO", "4"], b"-NOPROTO sorry, this protocol version is not supported\r\n"),
        (["HELLO", "1"], b"-NOPROTO sorry, this protocol version is not supported\r\n"),
        (["HELLO", "x"], b"-ERR Protocol version is not an integer or out of range\r\n"),
        (
            ["HELLO", "AUTH", "a", "b"],
            b"-ERR Protocol version is not an integer or out of range\r\n",
        ),
        (["HELLO", "3", "AUTH", "a"], b"-ERR Syntax error in HELLO option 'AUTH'\r\n"),
        (["HELLO", "3", "SETNAME"], b"-ERR Syntax error in HELLO option 'SETNAME'\r\n"),
        (["HELLO", "3", "FOO"], b"-ERR Syntax error in HELLO option 'FOO'\r\n"),
        (
            ["HELLO", "3", "SETNAME", "a b"],
            b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
        ),
    ],
)
async def test_hello_argument_errors_change_nothing(argv: list[str], reply: bytes) -> None:
    backend, d, conn = setup()
    assert await run(d, conn, *argv) == reply
    assert conn.proto is RESP2 and conn.principal is None and conn.name == ""
    assert backend.auth_calls == 0  # the version and the options are checked first


async def test_hello_auth_binds_or_answers_auth_errors() -> None:
    backend, d, conn = setup()
    reply = await run(d, conn, "HELLO", "3", "AUTH", KEY_VALIDATOR, "wrong")
    assert reply == b"-ERR TM-AUTH-4011 invalid credentials\r\n"
    assert conn.proto is RESP2 and conn.principal is None
    backend.keys[KEY_METRICS].status = "disabled"
    reply = await run(d, conn, "HELLO", "3", "AUTH", KEY_METRICS, SECRET)
    assert reply == b"-ERR TM-AUTH-4012 api key disabled\r\n"
    reply = await run(d, conn, "HELLO", "3", "AUTH", KEY_ISSUER, SECRET, "SETNAME", "app")
    assert reply.startswith(b"%7\r\n") and conn.proto is RESP3 and conn.name == "app"
    assert conn.principal is not None and conn.principal.key_id == KEY_ISSUER
    # A client given only a password sends the user "default" with key_id:key_secret.
    _, d, conn = setup()
    reply = await run(d, conn, "HELLO", "3", "AUTH", "default", f"{KEY_VALIDATOR}:{SECRET}")
    assert reply.startswith(b"%7\r\n")
    assert conn.principal is not None and conn.principal.key_id == KEY_VALIDATOR
    assert await run(d, conn, "AUTH", "default", f"{KEY_ISSUER}:{SECRET}") == b"+OK\r\n"
    assert conn.principal.key_id == KEY_ISSUER


# -- before authentication ---------------------------------------------------------------


async def test_what_answers_before_auth() -> None:
    _, d, conn = setup()
    assert await run(d, conn, "PING") == b"+PONG\r\n"
    assert await run(d, conn, "CLIENT", "SETINFO", "LIB-NAME", "redis-py") == b"+OK\r\n"
    assert await run(d, conn, "client", "setinfo", "lib-ver", "8.2.0") == b"+OK\r\n"
    assert await run(d, conn, "CLIENT", "SETNAME", "web-1") == b"+OK\r\n"
    assert await run(d, conn, "CLIENT", "GETNAME") == b"$5\r\nweb-1\r\n"
    assert await run(d, conn, "CLIENT", "ID") == b":%d\r\n" % conn.client_id
    info = await run(d, conn, "CLIENT", "INFO")
    assert b" name=web-1 " in info and b" lib-name=redis-py lib-ver=8.2.0\n" in info
    assert await run(d, conn, "RESET") == b"+RESET\r\n"
    # Everything else waits for AUTH; unknown names are answered first, as in Redis.
    for argv in (["CLIENT", "LIST"], ["INFO"], ["ECHO", "x"], ["SELECT", "0"], ["COMMAND"]):
        assert await run(d, conn, *argv) == NOAUTH, argv
    assert await run(d, conn, "MULTI") == (
        b"-ERR unknown command 'MULTI', with args beginning with: \r\n"
    )
    assert await run(d, conn, "CLIENT", "KILL", "x") == (
        b"-ERR unknown subcommand 'KILL'. Try CLIENT HELP.\r\n"
    )
    assert await run(d, conn, "CLIENT") == (
        b"-ERR wrong number of arguments for 'CLIENT' command\r\n"
    )
    assert await run(d, conn, "CLIENT", "ID", "x") == (
        b"-ERR wrong number of arguments for 'CLIENT|ID' command\r\n"
    )
    assert await run(d, conn, "QUIT") == b"+OK\r\n" and conn.closing


async def test_reset_forgets_the_key_protocol_and_name() -> None:
    _, d, conn = setup()
    await run(d, conn, "HELLO", "3", "AUTH", KEY_ISSUER, SECRET, "SETNAME", "a")
    await run(d, conn, "CLIENT", "SETINFO", "LIB-NAME", "lib")
    assert await run(d, conn, "RESET") == b"+RESET\r\n"
    assert conn.principal is None and conn.proto is RESP2 and conn.name == ""
    assert conn.lib_name == "lib"  # it still describes the library, as in Redis
    assert await run(d, conn, "GET", SID) == NOAUTH


# -- connection commands after AUTH -----------------------------------------------------------


async def test_select_echo_and_client_errors() -> None:
    _, d, conn = setup()
    await run(d, conn, "AUTH", KEY_METRICS, SECRET)  # any role may use these
    assert await run(d, conn, "SELECT", "0") == b"+OK\r\n"
    assert await run(d, conn, "SELECT", "1") == b"-ERR DB index is out of range\r\n"
    for bad in ("x", "4294967296"):
        assert await run(d, conn, "SELECT", bad) == (
            b"-ERR value is not an integer or out of range\r\n"
        )
    assert await run(d, conn, "ECHO", "hi") == b"$2\r\nhi\r\n"
    assert await run(d, conn, "CLIENT", "SETINFO", "LIB-FOO", "x") == (
        b"-ERR Unrecognized option 'LIB-FOO'\r\n"
    )
    assert await run(d, conn, "CLIENT", "SETINFO", "lib-name", "a b") == (
        b"-ERR lib-name cannot contain spaces, newlines or special characters.\r\n"
    )
    assert await run(d, conn, "CLIENT", "SETNAME", "a\nb") == (
        b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    )
    assert await run(d, conn, "CLIENT", "GETNAME") == b"$-1\r\n"
    await run(d, conn, "HELLO", "3")
    assert await run(d, conn, "CLIENT", "GETNAME") == b"_\r\n"
    assert (await run(d, conn, "CLIENT", "INFO")).startswith(b"=")  # verbatim in RESP3
    assert (await run(d, conn, "CLIENT", "HELP")).startswith(b"*22\r\n+CLIENT <subcommand>")


async def test_client_list_shows_a_non_admin_its_own_connections() -> None:
    _, d, mine = setup()
    other_mine = d.clients.open("10.1.2.4")
    theirs = d.clients.open("10.1.2.5")
    anonymous = d.clients.open("10.1.2.6")
    for conn, key in ((mine, KEY_VALIDATOR), (other_mine, KEY_VALIDATOR), (theirs, KEY_ISSUER)):
        await run(d, conn, "AUTH", key, SECRET)
    listed = (await run(d, mine, "CLIENT", "LIST")).decode()
    ids = [int(x) for x in re.findall(r"\bid=(\d+) ", listed)]
    assert ids == [mine.client_id, other_mine.client_id]
    assert f"id={mine.client_id} addr=10.1.2.3:5000 laddr=10.0.0.1:6379 " in listed
    assert "cmd=client|list " in listed and f"user={KEY_VALIDATOR} " in listed
    admin = d.clients.open("10.1.2.7")
    await run(d, admin, "AUTH", KEY_ADMIN, SECRET)
    listed = (await run(d, admin, "CLIENT", "LIST")).decode()
    for conn in (mine, other_mine, theirs, anonymous, admin):
        assert f"id={conn.client_id} " in listed
    by_id = await run(d, admin, "CLIENT", "LIST", "ID", str(theirs.client_id), "999999")
    assert by_id.count(b"id=") == 1 and b"id=%d " % theirs.client_id in by_id
    assert await run(d, admin, "CLIENT", "LIST", "TYPE", "pubsub") == b"$0\r\n\r\n"
    assert await run(d, admin, "CLIENT", "LIST", "TYPE", "x") == (
        b"-ERR Unknown client type 'x'\r\n"
    )
    assert await run(d, admin, "CLIENT", "LIST", "ID", "x") == b"-ERR Invalid client ID\r\n"
    assert await run(d, admin, "CLIENT", "LIST", "FOO") == b"-ERR syntax error\r\n"
    d.clients.close(theirs)
    assert b"id=%d " % theirs.client_id not in await run(d, admin, "CLIENT", "LIST")


# -- COMMAND ---------------------------------------------------------------------------------

# Redis 7.0.15's own bytes for COMMAND INFO get: TokMesh describes GET exactly as Redis.
REDIS_GET_INFO_RESP3 = (
    b"*10\r\n$3\r\nget\r\n:2\r\n~2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n"
    b"~3\r\n+@read\r\n+@string\r\n+@fast\r\n~0\r\n~1\r\n%3\r\n$5\r\nflags\r\n~2\r\n+RO\r\n"
    b"+access\r\n$12\r\nbegin_search\r\n%2\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n"
    b"%1\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n%2\r\n$4\r\ntype\r\n$5\r\nrange\r\n"
    b"$4\r\nspec\r\n%3\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n"
    b"~0\r\n"
)
REDIS_GET_INFO_RESP2 = (
    b"*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n*3\r\n"
    b"+@read\r\n+@string\r\n+@fast\r\n*0\r\n*1\r\n*6\r\n$5\r\nflags\r\n*2\r\n+RO\r\n"
    b"+access\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n"
    b"*2\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n"
    b"$4\r\nspec\r\n*6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n"
    b"*0\r\n"
)


async def test_command_info_count_and_docs() -> None:
    _, d, conn = setup()
    await run(d, conn, "AUTH", KEY_VALIDATOR, SECRET)
    assert await run(d, conn, "COMMAND", "INFO", "get", "nosuch") == (
        b"*2\r\n" + REDIS_GET_INFO_RESP2 + b"$-1\r\n"
    )
    assert await run(d, conn, "COMMAND", "COUNT") == b":%d\r\n" % len(d.specs)
    await run(d, conn, "HELLO", "3")
    assert await run(d, conn, "COMMAND", "INFO", "GET", "nosuch") == (
        b"*2\r\n" + REDIS_GET_INFO_RESP3 + b"_\r\n"
    )
    every = await run(d, conn, "COMMAND")
    assert every.startswith(b"*%d\r\n" % len(d.specs))
    assert b"$11\r\ntm.validate\r\n:-2\r\n" in every and b"$11\r\nclient|list\r\n:-2\r\n" in every
    del_info = await run(d, conn, "COMMAND", "INFO", "del")
    assert b"$3\r\ndel\r\n:-2\r\n~1\r\n+write\r\n:1\r\n:-1\r\n:1\r\n" in del_info
    docs = await run(d, conn, "COMMAND", "DOCS", "tm.validate", "client|setinfo", "nope")
    assert docs.startswith(b"%2\r\n$11\r\ntm.validate\r\n%5\r\n$7\r\nsummary\r\n")
    assert (
        b"$4\r\nname\r\n$5\r\ntouch\r\n$4\r\ntype\r\n$10\r\npure-token\r\n"
        b"$5\r\ntoken\r\n$5\r\nTOUCH\r\n$5\r\nflags\r\n~1\r\n+optional\r\n"
    ) in docs
    assert b"$14\r\nclient|setinfo\r\n" in docs
    client_docs = await run(d, conn, "COMMAND", "DOCS", "client")
    assert b"$11\r\nsubcommands\r\n%7\r\n" in client_docs
    assert await run(d, conn, "COMMAND", "NOPE") == (
        b"-ERR unknown subcommand 'NOPE'. Try COMMAND HELP.\r\n"
    )
    assert await run(d, conn, "COMMAND", "COUNT", "x") == (
        b"-ERR wrong number of arguments for 'COMMAND|COUNT' command\r\n"
    )


def test_every_command_has_docs_whose_arguments_redis_cli_can_read() -> None:
    _, d, _ = setup()

    def walk(args: object) -> None:
        assert isinstance(args, list)
        for arg in args:
            assert isinstance(arg["name"], str) and arg["type"] in {
                "key",
                "string",
                "integer",
                "pattern",
                "pure-token",
                "oneof",
                "block",
            }
            walk(arg.get("arguments", []))

    for spec in d.specs:
        docs = spec.docs()
        assert {"summary", "since", "group", "complexity"} <= set(docs)
        walk(docs.get("arguments", []))
        for sub in (spec.subcommands or {}).values():
            assert "|" in sub.info_name  # redis-cli splits subcommand names on "|"
            walk(sub.docs().get("arguments", []))


# -- INFO ------------------------------------------------------------------------------------

FACTS = InfoFacts(
    tokmesh_version="0.1.0",
    node_id="tmnd-x",
    run_id="r" * 40,
    process_id=7,
    os="Linux 6 x86_64",
    arch_bits=64,
    tcp_port=6379,
    server_time_usec=1,
    uptime_seconds=90000,
    connected_clients=3,
    max_clients=4000,
    resp3_clients=1,
    total_connections=9,
    total_commands=99,
    ops_per_sec=5,
    protocol_errors=0,
    timeouts=0,
    used_memory=76201984,
    peak_memory=76201984,
    restoring=False,
    sessions=12,
)


def test_info_text_format_and_sections() -> None:
    assert wanted_sections([]) == wanted_sections([b"ALL"]) == wanted_sections([b"default"])
    assert wanted_sections([b"Server", b"nope"]) == {"server"}
    text = render_info(FACTS, wanted_sections([b"clients", b"keyspace"]))
    assert text == (
        "# Clients\r\nconnected_clients:3\r\nmaxclients:4000\r\nblocked_clients:0\r\n"
        "tracking_clients:0\r\n"
        "pubsub_clients:0\r\n\r\n# Keyspace\r\ndb0:keys=12,expires=12,avg_ttl=0\r\n"
    )
    assert render_info(FACTS, frozenset()) == ""
    everything = render_info(FACTS, wanted_sections([]))
    assert "\r\nuptime_in_days:1\r\n" in everything and "used_memory_human:72.67M\r" in everything
    # redis-cli --stat finds "loading" with strstr: its first occurrence must be the field.
    assert everything.index("loading") == everything.index("\r\nloading:0\r\n") + 2
    assert all(line.endswith("\r") or not line for line in everything.split("\n"))
    assert human_bytes(1023) == "1023B" and human_bytes(1536) == "1.50K"


async def test_info_command_in_both_protocols() -> None:
    _, d, conn = setup()
    await run(d, conn, "AUTH", KEY_METRICS, SECRET)
    reply = await run(d, conn, "INFO", "server")
    assert reply.startswith(b"$") and b"\r\n# Server\r\nredis_version:7.2.0\r\n" in reply
    assert await run(d, conn, "INFO", "nosuch") == b"$0\r\n\r\n"
    await run(d, conn, "HELLO", "3")
    reply = await run(d, conn, "INFO", "keyspace", "tokmesh")
    assert reply.startswith(b"=") and b"txt:# Keyspace\r\n\r\n# TokMesh\r\n" in reply
    assert b"\r\nresp3_clients:1\r\n" in reply and b"\r\nnode_id:tmnd-fake\r\n" in reply


# -- the fast paths in RESP3 -------------------------------------------------------------------


async def test_a_run_of_copies_answers_resp3_nulls() -> None:
    _, d, conn = setup()
    await run(d, conn, "HELLO", "3", "AUTH", KEY_VALIDATOR, SECRET)
    replies: list[bytes] = []
    conn.checked = False
    d.run_inline(conn, [[b"GET", SID]] * 50, 0, replies)
    assert replies == [b"_\r\n"] * 50


async def test_mux_serves_a_resp3_pipeline(fake_server: RespServer) -> None:
    port = fake_server.port

    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(mb(b"HELLO", b"3", b"AUTH", KEY_VALIDATOR.encode(), SECRET.encode()))
            buf = b""
            while not buf.endswith(b"*0\r\n"):
                buf += s.recv(65536)
            s.sendall(mb(b"GET", SID) * 64 + mb(b"CLIENT", b"GETNAME"))
            want = b"_\r\n" * 65
            buf = b""
            while len(buf) < len(want):
                data = s.recv(65536)
                if not data:
                    break
                buf += data
            return buf

    assert await trio.to_thread.run_sync(exchange) == b"_\r\n" * 65
