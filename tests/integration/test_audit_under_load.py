"""Every session mutation leaves exactly one audit record, also under concurrent load.

One real ``tokmesh-server`` process takes creates, renews, touches and revokes from many
HTTP clients and pipelined RESP clients at once; after a graceful stop (which writes what
the audit log still buffers) the audit files are read back and the records counted per
session id and action.
"""

from __future__ import annotations

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.support.server import ServerProcess, free_port
from tokmesh.domain.ids import new_session_id

HTTP_WORKERS = 16
HTTP_SESSIONS = 30  # per worker; each session is created, renewed, touched, revoked
RESP_WORKERS = 4
RESP_SESSIONS = 50  # per worker, in pipelines of RESP_PIPELINE commands
RESP_PIPELINE = 25

#: The business-write routes a session goes through over HTTP, after its create.
HTTP_STEPS: tuple[tuple[str, dict[str, int]], ...] = (
    ("renew", {"ttl_seconds": 3600}),
    ("touch", {}),
    ("revoke", {}),
)
_SESSION_PATH = re.compile(r"/sessions/(tmss-[0-9a-z]{26})/(renew|touch|revoke)")


class Load:
    """What the clients did (the ledger) and the audit records the node wrote."""

    def __init__(self) -> None:
        self.issuer_id = ""
        #: request id of each HTTP create -> the session it made
        self.http_creates: dict[str, str] = {}
        #: (session id, step) of every other HTTP mutation, one entry each
        self.http_steps: list[tuple[str, str]] = []
        #: session ids mutated over RESP (TM.CREATE, EXPIRE, TM.TOUCH, DEL each)
        self.resp_sessions: list[str] = []
        self.records: list[dict[str, Any]] = []
        self.dropped: dict[str, float] = {}


def _http_worker(node: ServerProcess, key: str, worker: int, load: Load) -> None:
    with node.client(key) as client:
        for i in range(HTTP_SESSIONS):
            rid = f"audit-load-{worker}-{i}"
            made = client.post(
                "/sessions", json={"user_id": f"h{worker}-{i}"}, headers={"X-Request-ID": rid}
            )
            assert made.status_code == 201, made.text
            sid = made.json()["data"]["session_id"]
            load.http_creates[rid] = sid
            for step, body in HTTP_STEPS:
                r = client.post(f"/sessions/{sid}/{step}", json=body)
                assert r.status_code == 200, r.text
                load.http_steps.append((sid, step))


def _resp_worker(port: int, key: str, worker: int, load: Load) -> None:
    key_id, secret = key.split(":", 1)
    client = redis.Redis(host="127.0.0.1", port=port, username=key_id, password=secret)
    sids = [new_session_id() for _ in range(RESP_SESSIONS)]
    for start in range(0, len(sids), RESP_PIPELINE):
        chunk = sids[start : start + RESP_PIPELINE]
        # One pipeline per step: a read carries many mutations of different sessions.
        for command in ("TM.CREATE", "EXPIRE", "TM.TOUCH", "DEL"):
            pipe: Any = client.pipeline(transaction=False)  # redis-py's pipeline is untyped
            for n, sid in enumerate(chunk):
                if command == "TM.CREATE":
                    user = orjson.dumps({"user_id": f"r{worker}-{start + n}"})
                    pipe.execute_command(command, sid, user)
                elif command == "EXPIRE":
                    pipe.execute_command(command, sid, 3600)
                else:
                    pipe.execute_command(command, sid)
            replies = pipe.execute()
            assert all(reply not in (0, None) for reply in replies), (command, replies)
    client.close()
    load.resp_sessions.extend(sids)


def _dropped(node: ServerProcess) -> dict[str, float]:
    """``tokmesh_audit_dropped_total`` by reason, from the node's /metrics."""
    text = httpx.get(
        node.base_url + "/metrics", headers={"Authorization": f"Bearer {node.admin_key}"}
    ).text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'tokmesh_audit_dropped_total\{reason="(\w+)"\} ([\d.e+]+)', text)
    }


@pytest.fixture(scope="module")
def load(tmp_path_factory: pytest.TempPathFactory) -> Load:
    port = free_port()
    root = tmp_path_factory.mktemp("audit-load")
    node = ServerProcess(
        root,
        {
            "server": {"redis": {"enabled": True, "address": f"127.0.0.1:{port}"}},
            "storage": {"wal": {"sync_mode": "batch"}},
        },
    )
    out = Load()
    node.start()
    try:
        node.create_admin_key()
        key = node.create_key("issuer", rate_limit=1_000_000)
        out.issuer_id = key.split(":", 1)[0]
        with ThreadPoolExecutor(HTTP_WORKERS + RESP_WORKERS) as pool:
            jobs = [pool.submit(_http_worker, node, key, w, out) for w in range(HTTP_WORKERS)]
            jobs += [pool.submit(_resp_worker, port, key, w, out) for w in range(RESP_WORKERS)]
            for job in jobs:
                job.result()
        out.dropped = _dropped(node)
        assert node.terminate() == 0  # a graceful stop writes what the log still buffers
    finally:
        node.stop()
    for path in sorted(root.rglob("audit-*.jsonl")):
        out.records.extend(orjson.loads(line) for line in path.read_bytes().splitlines())
    return out


def test_no_audit_record_was_dropped(load: Load) -> None:
    assert load.dropped and set(load.dropped.values()) == {0.0}


def test_every_http_mutation_has_exactly_one_record(load: Load) -> None:
    writes = [r for r in load.records if r.get("method") == "POST" and r["route"][:7] != "/admin/"]
    creates = Counter(r["request_id"] for r in writes if r["route"] == "/sessions")
    steps = Counter(
        (m.group(1), m.group(2))
        for r in writes
        if (m := _SESSION_PATH.fullmatch(r["resource"])) is not None
    )
    assert len(load.http_creates) == HTTP_WORKERS * HTTP_SESSIONS
    assert creates == Counter(load.http_creates.keys())  # one record per create request
    assert steps == Counter(load.http_steps)  # one per (session, renew|touch|revoke)
    assert len(writes) == len(load.http_creates) + len(load.http_steps)  # nothing else
    for r in writes:
        assert (r["result"], r["operator_id"], r["operator_role"]) == (
            "SUCCESS",
            load.issuer_id,
            "issuer",
        )
        assert r["action"] == f"POST {r['route']}"
        assert r["status"] == (201 if r["route"] == "/sessions" else 200)
        assert re.fullmatch(r"audit-[0-7][0-9a-hjkmnp-tv-z]{25}", r["id"])
    ids = [r["id"] for r in load.records]
    assert len(set(ids)) == len(ids)


def test_every_resp_mutation_has_exactly_one_record(load: Load) -> None:
    sids = set(load.resp_sessions)
    assert len(sids) == RESP_WORKERS * RESP_SESSIONS
    actions: dict[str, Counter[str]] = {sid: Counter() for sid in sids}
    for r in load.records:
        if r["resource"] in sids:
            actions[r["resource"]][r["action"]] += 1
    # TM.CREATE, EXPIRE, TM.TOUCH and DEL of each session: four actions, one record each.
    assert [sid for sid, seen in actions.items() if sorted(seen.values()) != [1, 1, 1, 1]] == []
