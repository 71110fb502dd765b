"""Real clients against a real ``tokmesh-server`` process (plain and TLS): redis-py (sync
and asyncio), node-redis and ioredis, redis-cli and redis-benchmark, each constructed
with its defaults (so redis-py and ioredis open with ``HELLO 3 AUTH``), plus HTTP/RESP
interoperability."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import trustme

from tests.support.server import ServerProcess, free_port

needs_redis_cli = pytest.mark.skipif(
    shutil.which("redis-cli") is None, reason="redis-cli not installed (redis-tools)"
)
needs_redis_benchmark = pytest.mark.skipif(
    shutil.which("redis-benchmark") is None, reason="redis-benchmark not installed (redis-tools)"
)
NODE_CLIENTS = Path(__file__).resolve().parents[1] / "clients" / "node"
WRONG_SECRET = "tmas_" + "x" * 43


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("resp-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    cert.private_key_pem.write_to_path(str(d / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(d / "server.crt"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    client = ca.issue_cert("client")
    client.cert_chain_pems[0].write_to_path(str(d / "client.crt"))
    client.private_key_pem.write_to_path(str(d / "client.key"))
    return {
        k: str(d / f)
        for k, f in {
            "cert": "server.crt",
            "key": "server.key",
            "ca": "ca.pem",
            "client_cert": "client.crt",
            "client_key": "client.key",
        }.items()
    }


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, tls_files: dict[str, str]
) -> Iterator[ServerProcess]:
    resp_port, tls_port = free_port(), free_port()
    srv = ServerProcess(
        tmp_path_factory.mktemp("resp-node"),
        {
            "server": {
                "redis": {"enabled": True, "address": f"127.0.0.1:{resp_port}"},
                "redis_tls": {
                    "enabled": True,
                    "address": f"127.0.0.1:{tls_port}",
                    "tls": {"cert_file": tls_files["cert"], "key_file": tls_files["key"]},
                },
            }
        },
    )
    srv.resp_port = resp_port  # type: ignore[attr-defined]
    srv.tls_port = tls_port  # type: ignore[attr-defined]
    srv.start()
    srv.create_admin_key()
    yield srv
    srv.stop()


def _credentials(cred: str | None) -> dict[str, Any]:
    if not cred:
        return {}
    kid, secret = cred.split(":", 1)
    return {"username": kid, "password": secret}


def rclient(node: ServerProcess, cred: str | None = None) -> redis.Redis:
    """redis-py as its users construct it (RESP3 by HELLO, CLIENT SETINFO: the defaults)."""
    return redis.Redis(
        host="127.0.0.1",
        port=node.resp_port,  # type: ignore[attr-defined]
        socket_timeout=10,
        **_credentials(cred),
    )


def test_redis_py_session_lifecycle_and_http_interop(node: ServerProcess) -> None:
    issuer = node.create_key("issuer")
    r = rclient(node, issuer)
    assert r.ping() is True
    created = json.loads(r.execute_command("TM.CREATE", _sid(), '{"user_id":"u-resp"}', "TTL", 60))
    token = created["token"]
    assert len(token) == 48 and isinstance(created["expires_at"], int)
    assert r.execute_command("TM.VALIDATE", token) == b"OK"
    # created over RESP, validated over HTTP
    with node.client(issuer) as http:
        v = http.post("/tokens/validate", json={"token": token})
        assert v.status_code == 200 and v.json()["data"]["session"]["id"] == created["session_id"]
        # created over HTTP, read and revoked over RESP
        h = http.post("/sessions", json={"user_id": "u-http", "ttl_seconds": 600}).json()["data"]
    got = json.loads(r.get(h["session_id"]))
    assert got["user_id"] == "u-http" and isinstance(got["expires_at"], int)
    assert 590 <= r.ttl(h["session_id"]) <= 600
    assert r.expire(h["session_id"], 1200) is True
    assert r.exists(h["session_id"], created["session_id"], _sid()) == 2
    assert r.delete(h["session_id"]) == 1
    with node.client(issuer) as http:
        v = http.post("/tokens/validate", json={"token": h["token"]})
        assert v.status_code == 401 and v.json()["code"] == "TM-TOKN-4012"


def test_unauthenticated_and_wrong_secret(node: ServerProcess) -> None:
    r = rclient(node)
    assert r.ping() is True
    with pytest.raises(redis.AuthenticationError):
        r.get(_sid())
    kid = (node.admin_key or "").split(":")[0]
    bad = rclient(node, f"{kid}:tmas_{'A' * 43}")
    with pytest.raises(redis.ResponseError, match="TM-AUTH-4011 invalid credentials"):
        bad.ping()


def test_pipeline_of_1000_mixed_commands_in_order(node: ServerProcess) -> None:
    r = rclient(node, node.create_key("issuer"))
    sids = [_sid() for _ in range(250)]
    pipe = r.pipeline(transaction=False)
    for sid in sids:
        pipe.execute_command("TM.CREATE", sid, json.dumps({"user_id": f"pipe-{sid}"}), "TTL", 120)
        pipe.exists(sid)
        pipe.ttl(sid)
        pipe.ping()
    results = pipe.execute()
    assert len(results) == 1000
    for i, sid in enumerate(sids):
        created, exists, ttl, pong = results[i * 4 : i * 4 + 4]
        assert json.loads(created)["session_id"] == sid
        assert exists == 1 and 110 <= ttl <= 120 and pong is True


def test_validator_cannot_write(node: ServerProcess) -> None:
    r = rclient(node, node.create_key("validator"))
    with pytest.raises(
        redis.ResponseError, match="TM-AUTH-4030 permission denied for command 'SET'"
    ):
        r.set(_sid(), '{"user_id":"x"}')
    with pytest.raises(redis.ResponseError, match="unknown command 'FLUSHALL'"):
        r.execute_command("FLUSHALL")


def test_redis_py_defaults_open_with_hello_3(node: ServerProcess) -> None:
    r = rclient(node, node.create_key("validator"))
    assert r.ping() is True
    conn = r.connection_pool.get_connection()
    try:
        hello = conn.handshake_metadata
        assert hello[b"proto"] == 3 and hello[b"server"] == b"tokmesh"
        assert hello[b"mode"] == b"standalone" and hello[b"modules"] == []
    finally:
        r.connection_pool.release(conn)
    info = r.client_info()
    assert info["resp"] == "3" and info["db"] == 0
    assert info["lib-name"] == "redis-py" and info["lib-ver"] == redis.__version__
    assert r.get(_sid()) is None  # RESP3 null
    assert r.select(0) is True and r.echo("hi") == b"hi"
    assert r.info("server")["redis_version"] == "7.2.0"
    # The connection cap, as Redis reports its maxclients (tools size pools from it).
    clients = r.info("clients")
    assert clients["maxclients"] > 0 and clients["connected_clients"] >= 1


async def _asyncio_scenario(port: int, issuer: str, validator: str) -> None:
    """The redis-py scenario through ``redis.asyncio`` (its own connection code)."""
    kid, secret = issuer.split(":", 1)
    async with redis.asyncio.Redis(host="127.0.0.1", port=port, username=kid, password=secret) as r:
        assert await r.ping() is True
        info = await r.client_info()
        assert info["resp"] == "3" and info["lib-name"] == "redis-py"
        sid = _sid()
        created = json.loads(
            await r.execute_command("TM.CREATE", sid, '{"user_id":"u-async"}', "TTL", 60)
        )
        assert created["session_id"] == sid
        assert await r.execute_command("TM.VALIDATE", created["token"]) == b"OK"
        with pytest.raises(redis.ResponseError, match=r"^TM-TOKN-4010 Token invalid$"):
            await r.execute_command("TM.VALIDATE", "tmtk_" + "A" * 43)
        assert json.loads(await r.get(sid))["user_id"] == "u-async"
        assert 50 < await r.ttl(sid) <= 60
        assert await r.expire(sid, 120) is True
        assert await r.delete(sid) == 1 and await r.get(sid) is None
        sids = [_sid() for _ in range(20)]
        async with r.pipeline(transaction=False) as pipe:
            for i, s in enumerate(sids):
                pipe.execute_command("TM.CREATE", s, json.dumps({"user_id": f"p{i}"}), "TTL", 120)
                pipe.exists(s)
                pipe.ttl(s)
                pipe.echo(f"m{i}")
                pipe.get(s)
            results = await pipe.execute()
        assert len(results) == 100
        for i, s in enumerate(sids):
            created_i, exists, ttl, echoed, got = results[i * 5 : i * 5 + 5]
            assert json.loads(created_i)["session_id"] == s and exists == 1
            assert 110 <= ttl <= 120 and echoed == f"m{i}".encode()
            assert json.loads(got)["user_id"] == f"p{i}"
        with pytest.raises(redis.ResponseError, match=r"^unknown command 'FLUSHALL'"):
            await r.execute_command("FLUSHALL")
    vkid, vsecret = validator.split(":", 1)
    async with redis.asyncio.Redis(
        host="127.0.0.1", port=port, username=vkid, password=vsecret
    ) as v:
        with pytest.raises(
            redis.ResponseError, match=r"^TM-AUTH-4030 permission denied for command 'SET'$"
        ):
            await v.set(_sid(), "{}")
    async with redis.asyncio.Redis(
        host="127.0.0.1", port=port, username=vkid, password=WRONG_SECRET
    ) as wrong:
        with pytest.raises(redis.ResponseError, match=r"^TM-AUTH-4011 invalid credentials$"):
            await wrong.ping()


def test_redis_asyncio_handshake_pipeline_and_errors(node: ServerProcess) -> None:
    port = node.resp_port  # type: ignore[attr-defined]
    asyncio.run(_asyncio_scenario(port, node.create_key("issuer"), node.create_key("validator")))


@pytest.fixture(scope="module")
def node_clients() -> Path:
    """tests/clients/node with its packages installed (``npm ci`` when they are missing)."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.skip("node and npm are needed for the Node.js client tests (apt: nodejs npm)")
    version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
    if int(version.lstrip("v").split(".")[0] or 0) < 20:
        pytest.skip(f"ioredis 6 needs Node.js 20 or later, found {version.strip()}")
    if not (NODE_CLIENTS / "node_modules").is_dir():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_CLIENTS,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    return NODE_CLIENTS


@pytest.mark.parametrize(("script", "resp"), [("node_redis.mjs", 2), ("ioredis.mjs", 3)])
def test_node_clients(node: ServerProcess, node_clients: Path, script: str, resp: int) -> None:
    """node-redis v5 (RESP2 by default) and ioredis v6 (HELLO 3 by default) run the same
    scenario: handshake, TM.CREATE/TM.VALIDATE, GET/TTL/EXPIRE/DEL, a pipeline of 100
    mixed commands, unknown command, wrong role, wrong password."""
    scenario = {
        "port": node.resp_port,  # type: ignore[attr-defined]
        "issuer": node.create_key("issuer"),
        "validator": node.create_key("validator"),
        "sids": [_sid() for _ in range(22)],
    }
    done = subprocess.run(
        ["node", script],
        cwd=node_clients,
        env={**os.environ, "TM_SCENARIO": json.dumps(scenario)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["resp"] == resp, summary


@needs_redis_cli
def test_redis_cli_plain_auth_forms_and_scan(node: ServerProcess) -> None:
    cred = node.create_key("issuer")
    kid, secret = cred.split(":", 1)
    port = str(node.resp_port)  # type: ignore[attr-defined]
    base = ["redis-cli", "-h", "127.0.0.1", "-p", port, "--no-auth-warning"]
    assert _cli([*base, "PING"]) == "PONG"
    assert "NOAUTH" in _cli([*base, "GET", _sid()])
    sid = _sid()
    out = _cli([*base, "--user", kid, "--pass", secret, "TM.CREATE", sid, '{"user_id":"cli"}'])
    assert json.loads(out)["session_id"] == sid
    listed = _cli([*base, "-a", cred, "--scan", "--pattern", "tmss-*"]).split()
    assert sid in listed and len(listed) == len(set(listed))


@needs_redis_cli
def test_redis_cli_over_tls(node: ServerProcess, tls_files: dict[str, str]) -> None:
    cred = node.create_key("validator")
    port = str(node.tls_port)  # type: ignore[attr-defined]
    base = ["redis-cli", "-h", "127.0.0.1", "-p", port, "--tls", "--cacert", tls_files["ca"]]
    assert _cli([*base, "PING"]) == "PONG"
    assert _cli([*base, "--no-auth-warning", "-a", cred, "EXISTS", _sid()]) == "0"
    # plaintext to the TLS port does not get a RESP answer
    plain = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", port, "PING"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert "PONG" not in plain.stdout


@needs_redis_cli
@pytest.mark.parametrize("proto", [[], ["-3"]], ids=["resp2", "resp3"])
def test_redis_cli_info_client_and_stat(node: ServerProcess, proto: list[str]) -> None:
    """redis-cli (RESP2, and RESP3 with ``-3``) with a metrics key: INFO, INFO server,
    CLIENT INFO, and ``--stat``, which reads its columns out of INFO."""
    rclient(node, node.create_key("issuer")).execute_command(
        "TM.CREATE", _sid(), '{"user_id":"stat"}'
    )
    kid, secret = node.create_key("metrics").split(":", 1)
    port = str(node.resp_port)  # type: ignore[attr-defined]
    base = ["redis-cli", *proto, "-h", "127.0.0.1", "-p", port, "--user", kid, "--pass", secret]
    base.append("--no-auth-warning")
    info = _cli([*base, "INFO"])
    titles = re.findall(r"^# (\w+)$", info, re.M)
    assert titles == ["Server", "Clients", "Memory", "Persistence", "Stats", "Keyspace", "TokMesh"]
    assert re.search(r"^redis_version:7\.2\.0$", info, re.M)
    assert re.search(r"^db0:keys=[1-9][0-9]*,expires=[0-9]+,avg_ttl=0$", info, re.M)
    server = _cli([*base, "INFO", "server"])
    assert server.startswith("# Server") and "# Clients" not in server
    assert f"tcp_port:{port}" in server
    line = _cli([*base, "CLIENT", "INFO"])
    assert f" resp={3 if proto else 2} " in line and f" user={kid} " in line
    # --stat prints one row per INFO; stdbuf keeps the rows when the process is stopped.
    if shutil.which("stdbuf") is None:
        pytest.skip("stdbuf (coreutils) is needed to read redis-cli --stat")
    stat = subprocess.Popen(
        ["stdbuf", "-oL", *base, "--stat", "-i", "0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    stat.terminate()
    out, err = stat.communicate(timeout=10)
    assert "keys       mem      clients blocked requests" in out, out + err
    rows = [
        m.groups()
        for m in re.finditer(
            r"^(\d+)\s+(\d+(?:\.\d+)?[BKMGTP])\s+(\d+)\s+0\s+(\d+) \(\+(\d+)\)\s+(\d+)\s*$",
            out,
            re.M,
        )
    ]
    assert len(rows) >= 2 and not err, out + err
    keys, _, clients, first, _, _ = rows[0]
    assert int(keys) >= 1 and int(clients) >= 1
    assert int(rows[-1][3]) > int(first)  # each INFO is a command


@needs_redis_cli
@pytest.mark.parametrize("proto", [[], ["-3"]], ids=["resp2", "resp3"])
def test_redis_cli_interactive_help_reads_command_docs(
    node: ServerProcess, proto: list[str], tmp_path: Path
) -> None:
    """Interactive redis-cli builds its help from COMMAND DOCS and asserts the type of
    every field: a wrong shape aborts it."""
    import pexpect

    kid, secret = node.create_key("validator").split(":", 1)
    port = str(node.resp_port)  # type: ignore[attr-defined]
    child = pexpect.spawn(
        "redis-cli",
        [*proto, "-p", port, "--user", kid, "--pass", secret, "--no-auth-warning"],
        encoding="utf-8",
        timeout=10,
        env={**os.environ, "TERM": "dumb", "HOME": str(tmp_path)},
    )
    try:
        child.expect(r":\d+> ")
        for line, shown in (
            ("help TM.VALIDATE", "token [TOUCH]"),
            ("help CLIENT SETINFO", "LIB-NAME libname|LIB-VER libver"),
            ("help @tokmesh", "Revokes every live session of a user"),
        ):
            child.sendline(line)
            child.expect_exact(shown)
        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0 and child.signalstatus is None


def _benchmark_speaks_resp3() -> bool:
    helptext = subprocess.run(["redis-benchmark", "--help"], capture_output=True, text=True)
    return " -3 " in helptext.stdout + helptext.stderr


@needs_redis_benchmark
@pytest.mark.parametrize("proto", [[], ["-3"]], ids=["resp2", "resp3"])
def test_redis_benchmark_ping_and_validate(node: ServerProcess, proto: list[str]) -> None:
    if proto and not _benchmark_speaks_resp3():
        pytest.skip("this redis-benchmark has no -3 option")
    cred = node.create_key("issuer", rate_limit=1_000_000)
    r = rclient(node, cred)
    token = json.loads(r.execute_command("TM.CREATE", _sid(), '{"user_id":"bench"}'))["token"]
    kid, secret = cred.split(":", 1)
    port = str(node.resp_port)  # type: ignore[attr-defined]
    base = ["redis-benchmark", *proto, "-h", "127.0.0.1", "-p", port, "--user", kid, "-a", secret]
    for command in (["PING"], ["TM.VALIDATE", token]):
        done = subprocess.run(
            [*base, "-n", "2000", "-c", "4", "-P", "4", "-q", *command],
            capture_output=True,
            text=True,
            timeout=60,
        )
        text = done.stdout + done.stderr
        assert done.returncode == 0 and "requests per second" in text, text
        assert "rror" not in text, text  # redis-benchmark prints "Error from server: ..."


def _cli(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    return (proc.stdout + proc.stderr).strip()


def _sid() -> str:
    from tokmesh.domain.ids import new_session_id

    return new_session_id()
