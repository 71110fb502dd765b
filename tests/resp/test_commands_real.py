"""Every RESP command of 03 §5.4 against the real services (storage engine with its WAL,
AuthCache with Argon2id, KeyService, Authenticator) over a real socket, with redis-py.
These are the RESP acceptance checks of 03 §8 (33-45) that need no external binary."""

from __future__ import annotations

import json
import re
import shutil
import socket

import pytest
import redis
import trio

from tokmesh.domain.ids import new_session_id
from tokmesh.services.sessions import local_sessions

from .conftest import RealStack, in_thread

NOAUTH = b"-NOAUTH TM-AUTH-4010 Authentication required\r\n"


def raw_exchange(port: int, payload: bytes, n_lines: int) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        buf = b""
        while buf.count(b"\r\n") < n_lines:
            data = s.recv(65536)
            if not data:
                break
            buf += data
        return buf.split(b"\r\n")[:n_lines]


def token_of(n: int) -> str:
    # A strictly formatted token (43 base64url chars, canonical last char).
    body = f"{n:042d}"[-42:].replace("0", "A") + "A"
    return "tmtk_" + body


async def test_unauthenticated_and_auth_forms(real_stack: RealStack) -> None:
    port = real_stack.server.port
    sid = new_session_id().encode()
    lines = await in_thread(
        raw_exchange,
        port,
        b"PING\r\nPING hi\r\nGET " + sid + b"\r\nEXISTS " + sid + b"\r\nTM.VALIDATE x\r\n",
        6,
    )
    assert lines[:2] == [b"+PONG", b"$2"] and lines[2] == b"hi"
    assert lines[3:] == [NOAUTH[:-2]] * 3
    kid, secret = await real_stack.new_key("issuer")
    two = real_stack.client_for(kid, secret)
    assert await in_thread(two.ping) == b"PONG"
    one = real_stack.server.client(password=f"{kid}:{secret}")
    assert await in_thread(one.exists, sid.decode()) == 0
    wrong = real_stack.server.client(username=kid, password="tmas_" + "x" * 43)
    with pytest.raises(redis.ResponseError, match=r"^TM-AUTH-4011 invalid credentials$"):
        await in_thread(wrong.ping)
    malformed = real_stack.server.client(username=kid, password="nope")
    with pytest.raises(redis.ResponseError, match=r"^TM-AUTH-4011 invalid credentials$"):
        await in_thread(malformed.ping)
    lines = await in_thread(raw_exchange, port, b"AUTH a b c\r\nAUTH x\r\n", 2)
    assert lines == [
        b"-ERR wrong number of arguments for 'AUTH' command",
        b"-ERR invalid AUTH format, expected 'key_id:key_secret' or 'key_id key_secret'",
    ]


async def test_set_create_update_and_errors(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("issuer")
    c = real_stack.client_for(kid, secret)
    sid = new_session_id()
    with pytest.raises(
        redis.ResponseError,
        match=r"^TM-ARG-1002 token is required when creating new session with SET$",
    ):
        await in_thread(c.set, sid, '{"user_id":"u1"}')
    token = token_of(1)
    value = json.dumps({"user_id": "u1", "token": token, "is_deleted": True, "version": 9})
    assert await in_thread(c.set, sid, value, ex=600) is True
    assert await in_thread(c.ttl, sid) in (599, 600)
    got = json.loads(await in_thread(c.get, sid))
    assert got["id"] == sid and got["user_id"] == "u1" and got["version"] == 1
    assert isinstance(got["expires_at"], int) and got["created_by"] == kid
    assert got["ip_address"] == "127.0.0.1" and got["user_agent"] == ""
    expires = got["expires_at"]
    # Update: data replaced, expiry kept without EX, token still valid.
    assert await in_thread(c.set, sid, '{"data":{"k":"v"}}') is True
    got = json.loads(await in_thread(c.get, sid))
    assert got["data"] == {"k": "v"} and got["expires_at"] == expires and got["version"] == 2
    assert await in_thread(c.execute_command, "TM.VALIDATE", token) == b"OK"
    with pytest.raises(redis.ResponseError, match=r"^TM-ARG-1001 token rotation via SET"):
        await in_thread(c.set, sid, json.dumps({"token": token_of(2)}))
    with pytest.raises(redis.ResponseError, match=r"^TM-ARG-1001 "):
        await in_thread(c.set, sid, '{"user_id":"other"}')
    with pytest.raises(redis.ResponseError, match=r"^syntax error$"):
        await in_thread(c.execute_command, "SET", "k", "v", "NX")
    with pytest.raises(redis.ResponseError, match=r"^syntax error$"):
        await in_thread(c.execute_command, "SET", sid, "{}", "EX")
    with pytest.raises(redis.ResponseError, match=r"^value is not an integer or out of range$"):
        await in_thread(c.execute_command, "SET", sid, "{}", "EX", "ten")
    for bad in ("0", "-5", str(720 * 3600 + 1)):
        with pytest.raises(
            redis.ResponseError,
            match=r"^TM-ARG-1001 ttl must be positive and not exceed session.ttl.max$",
        ):
            await in_thread(c.execute_command, "SET", sid, "{}", "EX", bad)
    with pytest.raises(redis.ResponseError, match=r"^TM-ARG-1001 invalid session_id format$"):
        await in_thread(c.set, "notakey", "{}")
    for bad_json in ("[1]", "{", "3", '"s"'):
        with pytest.raises(redis.ResponseError, match=r"^TM-SYS-4000 invalid JSON value"):
            await in_thread(c.set, new_session_id(), bad_json)
    with pytest.raises(redis.ResponseError, match=r"^TM-TOKN-4000 "):
        await in_thread(c.set, new_session_id(), '{"user_id":"u","token":"abc"}')
    with pytest.raises(redis.ResponseError, match=r"^TM-TOKN-4090 "):
        await in_thread(c.set, new_session_id(), json.dumps({"user_id": "u", "token": token}))
    # Upper-case key finds the same session.
    assert await in_thread(c.exists, sid.upper()) == 1


async def test_expire_ttl_exists_del(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("issuer")
    c = real_stack.client_for(kid, secret)
    sid = new_session_id()
    await in_thread(c.set, sid, json.dumps({"user_id": "u1", "token": token_of(3)}))
    assert 7190 <= await in_thread(c.ttl, sid) <= 7200  # session.ttl.default
    assert await in_thread(c.expire, sid, 1200) is True
    assert await in_thread(c.ttl, sid) in (1199, 1200)
    missing = new_session_id()
    assert await in_thread(c.expire, missing, 10) is False
    assert await in_thread(c.expire, "garbage", 10) is False
    with pytest.raises(redis.ResponseError, match=r"^TM-ARG-1001 "):
        await in_thread(c.expire, sid, 0)
    with pytest.raises(redis.ResponseError, match=r"^value is not an integer"):
        await in_thread(c.execute_command, "EXPIRE", sid, "x")
    assert await in_thread(c.exists, sid, sid, missing) == 2
    assert await in_thread(c.ttl, missing) == -2
    assert await in_thread(c.get, missing) is None
    assert await in_thread(c.delete, sid, missing, "junk") == 1
    assert await in_thread(c.delete, sid) == 0
    assert await in_thread(c.exists, sid) == 0
    keys = [new_session_id() for _ in range(1001)]
    with pytest.raises(
        redis.ResponseError, match=r"^TM-SESS-4002 maximum 1000 keys per DEL command$"
    ):
        await in_thread(c.delete, *keys)


async def test_tm_create_validate_touch_revoke_user(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("issuer")
    c = real_stack.client_for(kid, secret)
    sid = new_session_id()
    raw = await in_thread(c.execute_command, "TM.CREATE", sid, '{"user_id":"u2"}', "TTL", 60)
    body = json.loads(raw)
    assert set(body) == {"session_id", "token", "expires_at"}
    assert body["session_id"] == sid and isinstance(body["expires_at"], int)
    assert re.fullmatch(r"tmtk_[A-Za-z0-9_-]{43}", body["token"])
    with pytest.raises(redis.ResponseError, match=r"^TM-SESS-4090 session id conflict$"):
        await in_thread(c.execute_command, "TM.CREATE", sid, '{"user_id":"u2"}')
    for opts in (["TTL"], ["TTL", "5", "X"], ["EX", "5"]):
        with pytest.raises(redis.ResponseError, match=r"^syntax error$"):
            await in_thread(c.execute_command, "TM.CREATE", new_session_id(), "{}", *opts)
    with pytest.raises(redis.ResponseError, match=r"^TM-ARG-1002 "):
        await in_thread(c.execute_command, "TM.CREATE", new_session_id(), "{}")
    token = body["token"]
    before = json.loads(await in_thread(c.get, sid))
    await trio.sleep(0.01)
    assert await in_thread(c.execute_command, "TM.VALIDATE", token) == b"OK"
    assert json.loads(await in_thread(c.get, sid))["last_active"] == before["last_active"]
    assert await in_thread(c.execute_command, "TM.VALIDATE", token, "touch") == b"OK"
    after = json.loads(await in_thread(c.get, sid))
    assert after["last_active"] > before["last_active"]
    assert after["last_access_ip"] == "127.0.0.1"
    for bogus in ("bogus", "tmtk_" + "A" * 43):
        with pytest.raises(redis.ResponseError, match=r"^TM-TOKN-4010 Token invalid$"):
            await in_thread(c.execute_command, "TM.VALIDATE", bogus)
    with pytest.raises(redis.ResponseError, match=r"^syntax error, expected 'TOUCH' option$"):
        await in_thread(c.execute_command, "TM.VALIDATE", token, "FOO")
    with pytest.raises(redis.ResponseError, match=r"^wrong number of arguments for 'TM.VALIDATE'"):
        await in_thread(c.execute_command, "TM.VALIDATE", token, "TOUCH", "x")
    await trio.sleep(0.01)
    last = await in_thread(c.execute_command, "TM.TOUCH", sid)
    assert isinstance(last, int) and last >= after["last_active"]
    assert json.loads(await in_thread(c.get, sid))["expires_at"] == body["expires_at"]
    with pytest.raises(redis.ResponseError, match=r"^TM-SESS-4040 Session not found$"):
        await in_thread(c.execute_command, "TM.TOUCH", new_session_id())
    short = new_session_id()
    await in_thread(c.execute_command, "TM.CREATE", short, '{"user_id":"u3"}', "TTL", 1)
    await trio.sleep(1.2)
    with pytest.raises(redis.ResponseError, match=r"^TM-SESS-4041 Session expired$"):
        await in_thread(c.execute_command, "TM.TOUCH", short)
    assert await in_thread(c.get, short) is None
    assert await in_thread(c.execute_command, "TM.REVOKE_USER", "u2") == 1
    assert await in_thread(c.execute_command, "TM.REVOKE_USER", "u2") == 0
    with pytest.raises(redis.ResponseError, match=r"^TM-TOKN-4010 Token invalid$"):
        await in_thread(c.execute_command, "TM.VALIDATE", token)  # revoked


async def test_roles_and_unknown_commands(real_stack: RealStack) -> None:
    ikid, isecret = await real_stack.new_key("issuer")
    vkid, vsecret = await real_stack.new_key("validator")
    mkid, msecret = await real_stack.new_key("metrics")
    issuer = real_stack.client_for(ikid, isecret)
    sid = new_session_id()
    body = json.loads(await in_thread(issuer.execute_command, "TM.CREATE", sid, '{"user_id":"u9"}'))
    v = real_stack.client_for(vkid, vsecret)
    with pytest.raises(
        redis.ResponseError, match=r"^TM-AUTH-4030 permission denied for command 'SET'$"
    ):
        await in_thread(v.set, sid, "{}")
    assert json.loads(await in_thread(v.get, sid))["id"] == sid
    assert await in_thread(v.ttl, sid) > 0
    assert await in_thread(v.exists, sid) == 1
    assert sid.encode() in (await in_thread(v.scan, 0, None, 1000))[1]
    assert await in_thread(v.execute_command, "TM.VALIDATE", body["token"]) == b"OK"
    assert isinstance(await in_thread(v.execute_command, "TM.TOUCH", sid), int)
    m = real_stack.client_for(mkid, msecret)
    for cmd in (["GET", sid], ["TM.VALIDATE", body["token"]], ["DEL", sid]):
        with pytest.raises(redis.ResponseError, match=r"^TM-AUTH-4030 permission denied"):
            await in_thread(m.execute_command, *cmd)
    for name in ("FLUSHALL", "MULTI"):
        with pytest.raises(
            redis.ResponseError,
            match=rf"^unknown command '{name}', with args beginning with: '1' $",
        ):
            await in_thread(issuer.execute_command, name, "1")


async def test_scan_lists_each_live_session_once(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("issuer")
    c = real_stack.client_for(kid, secret)
    sids = {new_session_id() for _ in range(25)}
    for sid in sids:
        await in_thread(c.execute_command, "TM.CREATE", sid, '{"user_id":"scan"}')
    dead = sorted(sids)[0]
    await in_thread(c.delete, dead)
    live = sids - {dead}
    assert {k.decode() for k in await in_thread(lambda: list(c.scan_iter(match="tmss-*")))} == live
    seen: list[str] = []
    cursor = 0
    pages = 0
    while True:
        cursor, keys = await in_thread(c.scan, cursor, None, 2)
        pages += 1
        assert len(keys) <= 2
        seen += [k.decode() for k in keys]
        if cursor == 0:
            break
    assert sorted(seen) == sorted(live) and pages >= 12
    assert await in_thread(c.scan, 0, "tmak-*", 100) == (0, [])
    with pytest.raises(redis.ResponseError, match=r"^invalid cursor$"):
        await in_thread(c.execute_command, "SCAN", "x")


async def test_disabled_key_gets_noauth_on_next_command(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("issuer")
    sid = new_session_id().encode()

    def step(sock: socket.socket, payload: bytes) -> bytes:
        sock.sendall(payload)
        buf = b""
        while not buf.endswith(b"\r\n"):
            buf += sock.recv(4096)
        return buf

    with socket.create_connection(("127.0.0.1", real_stack.server.port), timeout=10) as s:
        auth = b"AUTH " + kid.encode() + b" " + secret.encode() + b"\r\n"
        assert await in_thread(step, s, auth) == b"+OK\r\n"
        assert await in_thread(step, s, b"EXISTS " + sid + b"\r\n") == b":0\r\n"
        await real_stack.keys.set_status(kid, "disabled")
        assert await in_thread(step, s, b"EXISTS " + sid + b"\r\n") == NOAUTH
        assert await in_thread(step, s, auth) == b"-ERR TM-AUTH-4012 api key disabled\r\n"
        await real_stack.keys.set_status(kid, "active")
        assert await in_thread(step, s, b"EXISTS " + sid + b"\r\n") == NOAUTH
        assert await in_thread(step, s, auth) == b"+OK\r\n"
        assert await in_thread(step, s, b"EXISTS " + sid + b"\r\n") == b":0\r\n"


async def test_maintenance_and_rate_limit(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("issuer", rate_limit=5)
    c = real_stack.client_for(kid, secret)
    sid = new_session_id()
    results = []
    for _ in range(10):
        try:
            results.append(await in_thread(c.exists, sid))
        except redis.ResponseError as exc:
            results.append(str(exc))
    assert "TM-SYS-4290 rate limit exceeded" in results and 0 in results
    kid2, secret2 = await real_stack.new_key("issuer")
    c2 = real_stack.client_for(kid2, secret2)
    real_stack.maintenance[0] = True
    with pytest.raises(
        redis.ResponseError,
        match=r"^TM-ADMIN-5031 service unavailable: restore in progress$",
    ):
        await in_thread(c2.exists, sid)
    assert await in_thread(c2.ping) == b"PONG"
    real_stack.maintenance[0] = False
    assert await in_thread(c2.exists, sid) == 0


async def test_pipeline_and_interop_with_http_service(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("issuer")
    c = real_stack.client_for(kid, secret)
    sessions = local_sessions(real_stack.engine)
    assert sessions is not None
    # A session created through the service (as HTTP does) is readable over RESP.
    from tokmesh.services.sessions import RequestContext

    made = await sessions.create(RequestContext(key_id=kid, client_ip="10.0.0.1"), "http-user")
    got = json.loads(await in_thread(c.get, made.session.id))
    assert got == json.loads(json.dumps(made.session.to_public()))

    def pipe() -> list[object]:
        p = c.pipeline(transaction=False)
        for _ in range(100):
            p.exists(made.session.id)
        return list(p.execute())

    assert await in_thread(pipe) == [1] * 100
    assert await in_thread(c.delete, made.session.id) == 1
    with pytest.raises(Exception) as info:
        sessions.get(made.session.id)
    assert getattr(info.value, "code", "") == "TM-SESS-4040"


async def test_set_and_tm_create_on_an_expired_key_create_it(real_stack: RealStack) -> None:
    kid, secret = await real_stack.new_key("issuer")
    c = real_stack.client_for(kid, secret)
    a, b = new_session_id(), new_session_id()
    for sid in (a, b):
        await in_thread(c.execute_command, "TM.CREATE", sid, '{"user_id":"u"}', "TTL", 1)
    await trio.sleep(1.2)
    value = json.dumps({"user_id": "u", "token": token_of(77)})
    assert await in_thread(c.set, a, value, ex=60) is True
    assert json.loads(await in_thread(c.get, a))["version"] == 1
    created = json.loads(await in_thread(c.execute_command, "TM.CREATE", b, '{"user_id":"u"}'))
    assert created["session_id"] == b


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")
async def test_redis_cli_interop(real_stack: RealStack) -> None:
    port = str(real_stack.server.port)
    kid, secret = await real_stack.new_key("issuer")

    async def cli(*args: str) -> str:
        proc = await trio.run_process(
            ["redis-cli", "-h", "127.0.0.1", "-p", port, *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        return (proc.stdout + proc.stderr).decode().strip()

    assert await cli("PING") == "PONG"
    assert await cli("GET", new_session_id()) == "NOAUTH TM-AUTH-4010 Authentication required"
    assert await cli("--user", kid, "--pass", secret, "--no-auth-warning", "PING") == "PONG"
    assert await cli("-a", f"{kid}:{secret}", "--no-auth-warning", "PING") == "PONG"
    # redis-cli reports the failed AUTH on stderr, then runs the (open) PING anyway.
    wrong = await cli("--user", kid, "--pass", "tmas_" + "B" * 43, "--no-auth-warning", "PING")
    assert "AUTH failed: ERR TM-AUTH-4011 invalid credentials" in wrong
    c = real_stack.client_for(kid, secret)
    sids = {new_session_id() for _ in range(7)}
    for sid in sids:
        await in_thread(c.execute_command, "TM.CREATE", sid, '{"user_id":"cli"}')
    listed = await cli(
        "--user", kid, "--pass", secret, "--no-auth-warning", "--scan", "--pattern", "tmss-*"
    )
    assert sorted(listed.split()) == sorted(sids)
