"""Issue 4 acceptance 1: the real ``redis`` client and ``redis-cli`` against a real
``tokmesh-server`` process (plain and TLS), and HTTP/RESP interoperability."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator

import pytest
import redis
import trustme

from tests.support.server import ServerProcess, free_port

needs_redis_cli = pytest.mark.skipif(
    shutil.which("redis-cli") is None, reason="redis-cli not installed (redis-tools)"
)


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


def rclient(node: ServerProcess, cred: str | None = None) -> redis.Redis:
    kwargs: dict[str, object] = {}
    if cred:
        kid, secret = cred.split(":", 1)
        kwargs = {"username": kid, "password": secret}
    return redis.Redis(
        lib_name=None,  # no CLIENT SETINFO: it would get NOAUTH before AUTH, as in Redis
        lib_version=None,
        host="127.0.0.1",
        port=node.resp_port,
        protocol=2,
        socket_timeout=10,
        **kwargs,  # type: ignore[attr-defined]
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


def _cli(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    return (proc.stdout + proc.stderr).strip()


def _sid() -> str:
    from tokmesh.domain.ids import new_session_id

    return new_session_id()
