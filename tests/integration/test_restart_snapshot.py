"""A graceful stop of the real server ends with a snapshot: the next start loads it and
replays no WAL record (issue 17, the restart path)."""

from __future__ import annotations

from pathlib import Path

from tests.integration.runtime_support import RuntimeServer


def test_sigterm_writes_a_snapshot_that_the_restart_loads(tmp_path: Path) -> None:
    srv = RuntimeServer(tmp_path)
    srv.start()
    try:
        key = srv.create_key("issuer")
        with srv.client(key) as c:
            made = []
            for i in range(20):
                r = c.post("/sessions", json={"user_id": f"user-{i}", "ttl_seconds": 600})
                assert r.status_code == 201, r.text
                made.append(r.json()["data"])
            revoked = made[0]["session_id"]
            assert c.post(f"/sessions/{revoked}/revoke").status_code == 200
        assert srv.terminate() == 0
        snaps = sorted((srv.data_dir() / "snapshots").glob("*.snap"))
        assert len(snaps) == 1

        since = len(srv.log_lines())
        srv.start()
        done = srv.wait_for_log(
            lambda line: line.get("message") == "recovery complete", since=since
        )
        assert done["snapshot"] == snaps[0].stem
        assert done["replayed_records"] == 0
        with srv.client(key) as c:
            for d in made[1:]:
                r = c.post("/tokens/validate", json={"token": d["token"]})
                assert r.status_code == 200 and r.json()["data"]["valid"] is True, r.text
            # the revocation survived, as a tombstone
            r = c.post("/tokens/validate", json={"token": made[0]["token"]})
            assert r.status_code == 401 and r.json()["code"] == "TM-TOKN-4012", r.text
    finally:
        srv.stop()
