"""Backup and restore against real servers (issue 6; 03 §4.3, §4.7, §8 checks 28-29, 32).

Every node here uses the same fixed ``security.storage.wal_encryption_key``: a backup stays
encrypted with the data key, so only a node with that key can restore it.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.server import ServerProcess
from tests.support.snapshots import rss, write_big_snapshot
from tokmesh.domain.session import Session
from tokmesh.storage import snapshot_files
from tokmesh.storage.cipher import Cipher

KEY_HEX = "5a17c0ffee" * 6 + "0123"
OTHER_KEY_HEX = "0b" * 32
ENC: dict[str, Any] = {"security": {"storage": {"wal_encryption_key": KEY_HEX}}}
BAK_MAGIC = b"TOKMESH_BAK_V1\n"
P = "/admin/v1"

Factory = Callable[..., ServerProcess]


def _enc(key_hex: str = KEY_HEX, **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"security": {"storage": {"wal_encryption_key": key_hex}}}
    out.update(more)
    return out


def _err(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    assert r.headers["X-Error-Code"] == code
    return body


def _data(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()["data"]


def _snapshot_dir(node: ServerProcess) -> Path:
    return node.root / "data" / "snapshots"


def _wait_job(node: ServerProcess, keys: list[str], job_id: str, timeout: float = 60) -> Any:
    """Poll a restore job; tries each admin key (a restore replaces the node's keys)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for key in keys:
            r = httpx.get(
                f"{node.base_url}{P}/backups/restores/{job_id}",
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )
            if r.status_code == 200:
                data = r.json()["data"]
                if data["status"] != "RUNNING":
                    return data
                break
        time.sleep(0.05)
    raise TimeoutError(f"restore job {job_id} still running:\n{node.log_tail()}")


def _all_sessions(client: httpx.Client) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    page = 1
    while True:
        d = _data(client.get("/sessions", params={"page": page, "size": 100}))
        for item in d["items"]:
            out[item["id"]] = item
        if page * 100 >= d["total_items"]:
            return out
        page += 1


def _all_keys(client: httpx.Client) -> dict[str, dict[str, Any]]:
    d = _data(client.get(f"{P}/keys", params={"size": 100}))
    return {k["key_id"]: {f: v for f, v in k.items() if f != "last_used_at"} for k in d["items"]}


def _download(client: httpx.Client, snapshot_id: str) -> bytes:
    r = client.get(f"{P}/backups/snapshots/{snapshot_id}/file")
    assert r.status_code == 200, r.text
    return r.content


def _upload(client: httpx.Client, content: bytes, name: str = "backup.bak") -> httpx.Response:
    return client.post(f"{P}/backups/restores", files={"file": (name, content)})


# ---------------------------------------------------------------------------- 1. round trip


def test_round_trip_to_a_fresh_node(server_factory: Factory) -> None:
    a = server_factory("a", _enc())
    admin_a = a.create_admin_key()
    issuer = a.create_key("issuer")
    validator = a.create_key("validator", description="reader", rate_limit=500)
    disabled = a.create_key("metrics")
    ca, ci, cv = a.client(admin_a), a.client(issuer), a.client(validator)
    _data(ca.post(f"{P}/keys/{disabled.split(':')[0]}/status", json={"status": "disabled"}))
    rotated = a.create_key("validator")
    _data(ca.post(f"{P}/keys/{rotated.split(':')[0]}/rotate"))

    tokens: dict[str, str] = {}
    for i in range(24):
        body: dict[str, Any] = {"user_id": f"user-{i % 6}", "data": {"n": str(i)}}
        if i % 4 == 0:
            body["ttl_seconds"] = 3600
        d = _data(ci.post("/sessions", json=body), 201)
        tokens[d["session_id"]] = d["token"]
    ids = list(tokens)
    for sid in ids[:6]:
        _data(ci.post(f"/sessions/{sid}/renew", json={"ttl_seconds": 7200}))
        _data(ci.post(f"/sessions/{sid}/renew", json={"ttl_seconds": 7300}))
    for sid in ids[6:10]:
        _data(cv.post(f"/sessions/{sid}/touch"))
    revoked = ids[10:14]
    for sid in revoked:
        _data(ci.post(f"/sessions/{sid}/revoke"))
    _data(ci.post("/users/user-5/sessions/revoke"))

    sessions_a = _all_sessions(ca)
    keys_a = _all_keys(ca)
    assert any(s["version"] > 2 for s in sessions_a.values())

    # Snapshot, listed with the same fields; the download's SHA-256 is the checksum (check 28).
    snap = _data(ca.post(f"{P}/backups/snapshots", json={"description": "round trip"}))
    assert snap["snapshot_id"].startswith("snap-") and snap["description"] == "round trip"
    listed = _data(ca.get(f"{P}/backups/snapshots"))
    assert snap in listed["items"] and listed["total_items"] >= 1
    bak = _download(ca, snap["snapshot_id"])
    assert bak.startswith(BAK_MAGIC)
    assert len(bak) == snap["size_bytes"]
    assert "sha256:" + hashlib.sha256(bak).hexdigest() == snap["checksum"]

    b = server_factory("b", _enc())
    admin_b = b.create_admin_key()
    cb = b.client(admin_b)
    r = _upload(cb, bak, f"{snap['snapshot_id']}.bak")
    job = _data(r)
    assert job["status"] == "RUNNING" and job["progress"] == 0 and job["job_id"]
    done = _wait_job(b, [admin_b, admin_a], job["job_id"])
    assert done["status"] == "IDLE", done
    assert done["progress"] == 100 and done["finished_at"] >= done["started_at"] > 0
    assert done["snapshot_id"] == snap["snapshot_id"]
    b.wait_ready()

    # The restored node answers with node A's keys only; they authenticate.
    cb_a = b.client(admin_a)
    _err(b.client(admin_b).get(f"{P}/keys"), 401, "TM-AUTH-4011")
    assert _all_keys(cb_a) == keys_a
    assert _all_sessions(cb_a) == sessions_a
    cbv, cbi = b.client(validator), b.client(issuer)
    for sid, token in tokens.items():
        if sid in sessions_a:
            assert _data(cbv.get(f"/sessions/{sid}")) == _data(cv.get(f"/sessions/{sid}"))
        else:  # tombstones survive: a revoked token stays revoked
            _err(cbv.post("/tokens/validate", json={"token": token}), 401, "TM-TOKN-4012")
            _err(cv.post("/tokens/validate", json={"token": token}), 401, "TM-TOKN-4012")
    _err(b.client(disabled).get("/metrics"), 401, "TM-AUTH-4012")
    _data(cbi.post("/sessions", json={"user_id": "after-restore"}), 201)

    # The restore is audited on the node that ran it.
    deadline = time.monotonic() + 10
    actions: set[str] = set()
    while time.monotonic() < deadline and not {"RESTORE_STARTED", "RESTORE_COMPLETED"} <= actions:
        items = _data(cb_a.get(f"{P}/audit/logs", params={"size": 100}))["items"]
        actions = {i["action"] for i in items}
        time.sleep(0.1)
    assert {"RESTORE_STARTED", "RESTORE_COMPLETED"} <= actions
    items = _data(ca.get(f"{P}/audit/logs", params={"action": "SNAPSHOT_CREATED"}))["items"]
    assert items and items[0]["operator_id"] == admin_a.split(":")[0]


# ---------------------------------------------------------------------------- 2. refusals


def test_bad_backups_are_refused_and_state_untouched(server_factory: Factory) -> None:
    node = server_factory("n", _enc())
    admin = node.create_admin_key()
    c = node.client(admin)
    issuer = node.client(node.create_key("issuer"))
    for i in range(5):
        _data(issuer.post("/sessions", json={"user_id": f"u{i}"}), 201)
    snap = _data(c.post(f"{P}/backups/snapshots"))
    bak = _download(c, snap["snapshot_id"])
    before = _all_sessions(c)
    snaps_before = sorted(p.name for p in _snapshot_dir(node).iterdir())

    flipped = bytearray(bak)
    flipped[len(bak) // 2] ^= 0x01
    cases = {
        "flipped": bytes(flipped),
        "truncated": bak[:-100],
        "wrong magic": b"TOKMESH_BAK_V2\n" + bak[len(BAK_MAGIC) :],
        "no magic": bak[len(BAK_MAGIC) :],
        "txt": b"just some notes\n",
        "empty": b"",
        "magic only": BAK_MAGIC,
    }
    for name, content in cases.items():
        r = _upload(c, content, "notes.txt" if name == "txt" else "x.bak")
        body = _err(r, 422, "TM-ADMIN-4221")
        assert body["message"], name
    # Both inputs, neither input, unknown ids.
    r = c.post(
        f"{P}/backups/restores",
        files={"file": ("x.bak", bak)},
        data={"snapshot_id": snap["snapshot_id"]},
    )
    _err(r, 400, "TM-ARG-1003")
    _err(c.post(f"{P}/backups/restores", json={}), 400, "TM-ARG-1002")
    _err(c.post(f"{P}/backups/restores", files={"other": ("x", b"1")}), 400, "TM-SYS-4000")
    _err(c.post(f"{P}/backups/restores", data={"note": "x"}), 400, "TM-SYS-4000")
    _err(
        c.post(f"{P}/backups/restores", json={"snapshot_id": "snap-19990101-000000"}),
        404,
        "TM-ADMIN-4041",
    )
    _err(
        c.post(f"{P}/backups/restores", json={"snapshot_id": "x", "file": "y"}), 400, "TM-SYS-4000"
    )
    _err(c.get(f"{P}/backups/restores/job-nope"), 404, "TM-ADMIN-4041")
    _err(c.get(f"{P}/backups/snapshots/snap-19990101-000000/file"), 404, "TM-ADMIN-4041")
    _err(c.get(f"{P}/backups/snapshots/../file"), 404, "TM-SYS-4040")

    # Nothing changed: same sessions, still ready, no new or temp files.
    assert _all_sessions(c) == before
    assert httpx.get(node.base_url + "/ready").status_code == 200
    assert sorted(p.name for p in _snapshot_dir(node).iterdir()) == snaps_before

    # A node with another data key refuses the (valid) backup the same way.
    other = server_factory("other", _enc(OTHER_KEY_HEX))
    co = other.client(other.create_admin_key())
    body = _err(_upload(co, bak), 422, "TM-ADMIN-4221")
    assert "different key" in body["message"]
    assert httpx.get(other.base_url + "/ready").status_code == 200


def test_upload_size_limit(server_factory: Factory) -> None:
    node = server_factory("n", _enc(server={"http": {"max_body_size": "1MB"}}))
    c = node.client(node.create_admin_key())
    big = BAK_MAGIC + os.urandom(2 << 20)
    _err(_upload(c, big), 413, "TM-ADMIN-4130")

    def chunked() -> Any:  # no Content-Length: the limit is enforced while streaming
        boundary = b"bnd42"
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
        yield b'filename="x.bak"\r\n\r\n' + BAK_MAGIC
        for _ in range(32):
            yield os.urandom(64 * 1024)
        yield b"\r\n--" + boundary + b"--\r\n"

    r = httpx.post(
        f"{node.base_url}{P}/backups/restores",
        content=chunked(),
        headers={
            "Authorization": f"Bearer {node.admin_key}",
            "Content-Type": "multipart/form-data; boundary=bnd42",
        },
        timeout=10,
    )
    _err(r, 413, "TM-ADMIN-4130")
    # The refused upload released the restore slot and left no temp file behind.
    assert not [p for p in _snapshot_dir(node).glob("upload-*")]
    _err(
        c.post(f"{P}/backups/restores", json={"snapshot_id": "snap-19990101-000000"}),
        404,
        "TM-ADMIN-4041",
    )


# ---------------------------------------------------------------------------- downloads


def test_download_ranges(server_factory: Factory) -> None:
    node = server_factory("n", _enc())
    c = node.client(node.create_admin_key())
    snap = _data(c.post(f"{P}/backups/snapshots"))
    url = f"{P}/backups/snapshots/{snap['snapshot_id']}/file"
    whole = _download(c, snap["snapshot_id"])
    total = len(whole)
    r = c.get(url)
    assert r.headers["Accept-Ranges"] == "bytes"
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Disposition"] == (f'attachment; filename="{snap["snapshot_id"]}.bak"')
    assert r.headers["X-Request-ID"]
    for header, first, last in [
        ("bytes=0-99", 0, 99),
        ("bytes=10-", 10, total - 1),
        ("bytes=-20", total - 20, total - 1),
        (f"bytes=5-{total + 50}", 5, total - 1),
    ]:
        r = c.get(url, headers={"Range": header})
        assert r.status_code == 206, (header, r.text)
        assert r.content == whole[first : last + 1]
        assert r.headers["Content-Range"] == f"bytes {first}-{last}/{total}"
        assert int(r.headers["Content-Length"]) == last - first + 1
    r = c.get(url, headers={"Range": f"bytes={total}-"})
    body = _err(r, 416, "TM-ARG-1001")
    assert r.headers["Content-Range"] == f"bytes */{total}"
    assert body["request_id"] == r.headers["X-Request-ID"]
    assert c.get(url, headers={"Range": "bytes=0-1,4-5"}).content == whole
    # Admin only.
    issuer = node.client(node.create_key("issuer"))
    _err(issuer.get(url), 403, "TM-ADMIN-4030")
    _err(node.client().get(url), 401, "TM-AUTH-4010")


def _write_big_snapshot(snapshot_dir: Path, size: int) -> Path:
    return write_big_snapshot(snapshot_dir, size, Cipher(bytes.fromhex(KEY_HEX)))


def test_large_download_streams_with_flat_memory(server_factory: Factory) -> None:
    node = server_factory("n", _enc(), start=False)
    _write_big_snapshot(_snapshot_dir(node), 120 << 20)
    _prefill(node, 0)  # a newer valid snapshot: recovery loads it, never the big one
    node.start()
    c = node.client(node.create_admin_key())
    newest = _data(c.post(f"{P}/backups/snapshots"))  # the valid one recovery would use
    items = _data(c.get(f"{P}/backups/snapshots"))["items"]
    big = next(i for i in items if i["snapshot_id"] == "snap-20010101-000000")
    assert big["size_bytes"] > 120 << 20 and newest in items
    assert node.proc is not None
    pid = node.proc.pid
    before = rss(pid)
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    digest = hashlib.sha256()
    size = 0
    try:
        with c.stream("GET", f"{P}/backups/snapshots/snap-20010101-000000/file") as r:
            assert r.status_code == 200
            for part in r.iter_bytes(1 << 20):
                digest.update(part)
                size += len(part)
    finally:
        stop.set()
        sampler.join()
    assert size == big["size_bytes"]
    assert "sha256:" + digest.hexdigest() == big["checksum"]
    growth = peak[0] - before
    assert growth < 20 << 20, f"server RSS grew by {growth / 2**20:.1f} MiB during the download"


# ---------------------------------------------------------------------------- 3. concurrency, crash


def _prefill(node: ServerProcess, n: int) -> None:
    """Give a not-yet-started node ``n`` sessions through a snapshot file (fast set-up)."""
    now = int(time.time() * 1000)
    sessions = [
        Session.from_record(
            {
                "id": f"tmss-{i:026d}",
                "user_id": f"bulk-{i % 1000}",
                "token_hash": "tmth_" + hashlib.sha256(b"%d" % i).hexdigest(),
                "created_at": now,
                "expires_at": now + 86_400_000,
                "last_active": now,
                "data": {"blob": "x" * 200},
                "version": 1,
            }
        )
        for i in range(n)
    ]
    snapshot_files.write_snapshot(
        _snapshot_dir(node), sessions, [], 0, "tmnd-prefill", Cipher(bytes.fromhex(KEY_HEX)), now
    )


class _MaintenanceProbe:
    """Two threads polling ``/ready`` and a write back to back until ``stop()``.

    A restore's maintenance window lasts a fraction of a second; polling from the test's
    own loop between other requests can miss it, two dedicated threads do not.
    ``seen`` collects ``(probe, status, code)``; ``maintenance`` is set on the first 503.
    """

    def __init__(self, node: ServerProcess, issuer_key: str | None = None) -> None:
        self.seen: set[tuple[str, int, str | None]] = set()
        self.maintenance = threading.Event()
        self._done = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(node, None, "ready"), daemon=True),
        ]
        if issuer_key is not None:
            self._threads.append(
                threading.Thread(target=self._loop, args=(node, issuer_key, "write"), daemon=True)
            )
        for t in self._threads:
            t.start()

    def _loop(self, node: ServerProcess, key: str | None, what: str) -> None:
        with node.client(key) as client:
            while not self._done.is_set():
                try:
                    if what == "ready":
                        r = client.get("/ready")
                    else:
                        r = client.post("/sessions", json={"user_id": "during"})
                except httpx.HTTPError:
                    continue  # the kill -9 test kills the server under the probe
                code = r.json().get("code") if r.status_code >= 400 else None
                self.seen.add((what, r.status_code, code))
                if r.status_code == 503:
                    self.maintenance.set()

    def stop(self) -> None:
        self._done.set()
        for t in self._threads:
            t.join(timeout=15)


def test_restore_by_id_maintenance_and_conflict(server_factory: Factory) -> None:
    node = server_factory("n", _enc(), start=False)
    _prefill(node, 20_000)
    node.start()
    admin = node.create_admin_key()
    c = node.client(admin)
    issuer_key = node.create_key("issuer")
    issuer = node.client(issuer_key)
    snap = _data(c.post(f"{P}/backups/snapshots", json={"description": "base"}))
    extra = [_data(issuer.post("/sessions", json={"user_id": "extra"}), 201) for _ in range(3)]

    probe = _MaintenanceProbe(node, issuer_key)
    job = _data(c.post(f"{P}/backups/restores", json={"snapshot_id": snap["snapshot_id"]}))
    assert job["status"] == "RUNNING" and job["progress"] == 0
    _err(
        c.post(f"{P}/backups/restores", json={"snapshot_id": snap["snapshot_id"]}),
        409,
        "TM-ADMIN-4091",
    )
    _err(_upload(c, b"whatever"), 409, "TM-ADMIN-4091")
    _err(c.post(f"{P}/backups/snapshots"), 409, "TM-ADMIN-4091")
    statuses = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = _data(c.get(f"{P}/backups/restores/{job['job_id']}"))  # admin stays up
        statuses.add((st["status"], st["progress"]))
        if st["status"] != "RUNNING":
            break
        assert httpx.get(node.base_url + "/health").status_code == 200
    probe.stop()
    assert st["status"] == "IDLE", st
    assert st["progress"] == 100
    # Seen from outside during maintenance: /ready 503 TM-SYS-5030, writes TM-ADMIN-5031.
    assert ("ready", 503, "TM-SYS-5030") in probe.seen, (probe.seen, statuses)
    assert ("write", 503, "TM-ADMIN-5031") in probe.seen, (probe.seen, statuses)
    assert probe.seen <= {
        ("ready", 200, None),
        ("ready", 503, "TM-SYS-5030"),
        ("write", 201, None),
        ("write", 503, "TM-ADMIN-5031"),
    }, probe.seen
    node.wait_ready()
    # Back to exactly the snapshot: the sessions created after it are gone.
    v = node.client(node.create_key("validator"))
    for d in extra:
        _err(v.get(f"/sessions/{d['session_id']}"), 404, "TM-SESS-4040")
    summary = _data(c.get(f"{P}/status/summary"))
    during = _data(c.get("/sessions", params={"user_id": "during", "size": 1}))["total_items"]
    assert summary["total_sessions"] == 20_000 + during  # the probe's writes after the restore
    listed = {i["snapshot_id"]: i for i in _data(c.get(f"{P}/backups/snapshots"))["items"]}
    assert {i["type"] for i in listed.values()} >= {"manual", "pre-restore", "restore"}


def test_kill9_during_restore_gives_old_or_new_state(server_factory: Factory) -> None:
    node = server_factory("n", _enc(), start=False)
    _prefill(node, 20_000)
    node.start()
    admin = node.create_admin_key()
    c = node.client(admin)
    issuer = node.client(node.create_key("issuer"))
    snap = _data(c.post(f"{P}/backups/snapshots"))
    killed = False
    for attempt in range(5):  # a restore that finishes before the probe sees it is retried
        extra = [
            _data(issuer.post("/sessions", json={"user_id": f"extra-{attempt}-{i}"}), 201)
            for i in range(5)
        ]
        probe = _MaintenanceProbe(node)
        job = _data(c.post(f"{P}/backups/restores", json={"snapshot_id": snap["snapshot_id"]}))
        deadline = time.monotonic() + 30
        while not probe.maintenance.wait(0.001):
            assert time.monotonic() < deadline, "restore never entered maintenance"
            if _data(c.get(f"{P}/backups/restores/{job['job_id']}"))["status"] != "RUNNING":
                break
        else:
            node.kill9()
            killed = True
        probe.stop()
        if killed:
            break
        node.wait_ready()
    assert killed, "no restore was caught in maintenance in 5 attempts"
    node.start()
    v = node.client(admin)
    present = [v.get(f"/sessions/{d['session_id']}").status_code == 200 for d in extra]
    assert all(present) or not any(present), present
    summary = _data(v.get(f"{P}/status/summary"))
    expected = 20_005 if all(present) else 20_000
    assert summary["total_sessions"] == expected


# ---------------------------------------------------------------------------- WAL routes


def test_wal_status_logs_and_compact(server_factory: Factory) -> None:
    node = server_factory("n", _enc())
    c = node.client(node.create_admin_key())
    issuer = node.client(node.create_key("issuer"))
    for i in range(3):
        _data(issuer.post("/sessions", json={"user_id": f"plain-wal-user-{i}"}), 201)
    st = _data(c.get(f"{P}/wal/status"))
    assert set(st) >= {
        "enabled",
        "sync_mode",
        "current_segment",
        "total_segments",
        "total_size_bytes",
        "oldest_entry_time",
        "newest_entry_time",
        "last_offset",
    }
    assert st["enabled"] is True and st["sync_mode"] == "sync"
    assert st["total_segments"] >= 1 and st["total_size_bytes"] > 0
    now = int(time.time() * 1000)
    assert now - 120_000 < st["oldest_entry_time"] <= st["newest_entry_time"] <= now
    assert st["last_offset"] >> 32 == st["current_segment"]

    r = c.get(f"{P}/wal/logs", params={"offset": 0, "limit": 16})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/octet-stream"
    assert len(r.content) <= 16 and r.content.startswith(b"TOKMWAL\x01")
    whole = c.get(f"{P}/wal/logs", params={"limit": 1 << 30}).content
    assert len(whole) == st["total_size_bytes"]
    assert b"plain-wal-user" not in whole  # encrypted at rest
    r = c.get(f"{P}/wal/logs", params={"offset": st["last_offset"] + 10_000})
    assert r.status_code == 200 and r.content == b""
    for bad in ({"offset": -1}, {"limit": 0}, {"limit": "x"}, {"follow": "maybe"}):
        _err(c.get(f"{P}/wal/logs", params=bad), 400, "TM-ARG-1001")

    # follow=true streams bytes written after the request started
    with c.stream(
        "GET", f"{P}/wal/logs", params={"offset": st["last_offset"], "follow": "true"}
    ) as resp:
        assert resp.status_code == 200
        _data(issuer.post("/sessions", json={"user_id": "followed"}), 201)
        first = next(resp.iter_raw())
        assert len(first) > 0

    compacted = _data(c.post(f"{P}/wal/compact"))
    assert compacted["snapshot_id"].startswith("snap-")
    assert isinstance(compacted["removed_segments"], int) and compacted["freed_bytes"] >= 0
    ids = [i["snapshot_id"] for i in _data(c.get(f"{P}/backups/snapshots"))["items"]]
    assert compacted["snapshot_id"] in ids
    _err(c.post(f"{P}/wal/compact", json={"x": 1}), 400, "TM-SYS-4000")
