"""RESP mutations are audited: one record per session a command changed, none for reads
or for commands that changed nothing, and never a token in the log."""

from __future__ import annotations

from pathlib import Path

import orjson
import trio

from tokmesh.domain.ids import new_session_id
from tokmesh.domain.tokens import generate_token
from tokmesh.telemetry.audit import AuditLog

from .conftest import RealStack, in_thread


async def test_each_mutation_writes_one_record_without_secrets(
    real_stack: RealStack, nursery: trio.Nursery, tmp_path: Path
) -> None:
    audit = AuditLog(tmp_path / "audit")
    await nursery.start(audit.run)
    real_stack.server.dispatcher.audit = audit
    kid, secret = await real_stack.new_key("issuer")
    client = real_stack.client_for(kid, secret)
    created, put, missing = new_session_id(), new_session_id(), new_session_id()
    token = generate_token()

    def run() -> list[object]:
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("TM.CREATE", created, b'{"user_id":"u1"}')
        pipe.execute_command("SET", put, orjson.dumps({"user_id": "u2", "token": token}))
        pipe.execute_command("SET", put, b'{"data":{"k":"v"}}')
        pipe.execute_command("EXPIRE", created, 600)
        pipe.execute_command("EXPIRE", missing, 600)  # nothing to renew: no record
        pipe.execute_command("TM.TOUCH", created)
        pipe.execute_command("TM.VALIDATE", token)  # a read: no record
        pipe.execute_command("GET", put)
        pipe.execute_command("DEL", created, missing)
        pipe.execute_command("TM.REVOKE_USER", "u2")
        pipe.execute_command("TM.REVOKE_USER", "u2")  # nothing left: no record
        return list(pipe.execute())

    replies = await in_thread(run)
    assert replies[4] == 0 and replies[8:] == [1, 1, 0]
    await audit.flush()
    lines = b"".join(p.read_bytes() for p in sorted((tmp_path / "audit").glob("*.jsonl")))
    records = [orjson.loads(line) for line in lines.splitlines()]
    assert [(r["action"], r["resource"]) for r in records] == [
        ("TM.CREATE", created),
        ("SET", put),
        ("SET", put),
        ("EXPIRE", created),
        ("TM.TOUCH", created),
        ("DEL", created),
        ("TM.REVOKE_USER", "user:u2"),
    ]
    for r in records:
        assert (r["operator_id"], r["operator_role"], r["result"]) == (kid, "issuer", "SUCCESS")
        assert r["ip_address"] == r["tcp_remote_ip"] == "127.0.0.1"
        assert not {"method", "route", "status"} & r.keys()
    assert token.encode() not in lines
    assert b"tmtk_" not in lines
