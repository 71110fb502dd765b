"""``backup`` and ``system wal`` against a real node (06 §9.5, §9.6, §7.3, §8; §12 check 15).

The module has its own node: restores replace the whole state, which must not disturb
the node the other CLI tests share.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
import yaml

from tests.cli.support import EXE, Cli, Result
from tests.support.server import ServerProcess

WAL_KEYS = {
    "enabled",
    "sync_mode",
    "current_segment",
    "current_segment_file",
    "total_segments",
    "total_size_bytes",
    "oldest_entry_time",
    "newest_entry_time",
    "last_offset",
}


@pytest.fixture(scope="module")
def bnode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A node of this module only, anti-replay mandatory (the CLI always sends it)."""
    s = ServerProcess(
        tmp_path_factory.mktemp("backup-node"),
        {"security": {"anti_replay": {"required": True}}},
    )
    s.start()
    s.create_admin_key()
    yield s
    s.stop()


class Admin:
    """The CLI bound to the module's node with its admin key."""

    def __init__(self, cli: Cli, node: ServerProcess) -> None:
        assert node.admin_key is not None
        self.cli, self.node, self.key = cli, node, node.admin_key

    def __call__(self, *args: str, stdin: str | None = "", timeout: float = 60) -> Result:
        return self.cli.run(
            "-t", self.node.base_url, "-k", self.key, *args, stdin=stdin, timeout=timeout
        )

    def json(self, *args: str) -> Any:
        r = self("-o", "json", *args)
        assert r.code == 0, (r.out, r.err)
        doc = r.json()
        assert doc["success"] is True
        return doc["data"]

    def spawn(self, *args: str) -> pexpect.spawn:
        return pexpect.spawn(
            EXE,
            ["-t", self.node.base_url, "-k", self.key, *args],
            env=self.cli.env(),
            encoding="utf-8",
            timeout=30,
            dimensions=(50, 200),
            cwd=str(self.cli.home),
        )


@pytest.fixture
def adm(cli: Cli, bnode: ServerProcess) -> Admin:
    return Admin(cli, bnode)


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(adm: Admin, description: str = "") -> dict[str, Any]:
    args = ["backup", "snapshot"] + (["-d", description] if description else [])
    data: dict[str, Any] = adm.json(*args)
    return data


def _session(adm: Admin, user: str) -> str:
    return str(adm.json("session", "create", "-u", user)["session_id"])


def test_snapshot_list_download_restore_round_trip(adm: Admin, tmp_path: Path) -> None:
    kept = _session(adm, "bk-kept")
    r = adm("backup", "snapshot", "-d", "round trip")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith("[REMOTE: ") and lines[0].endswith("Creating snapshot...")
    assert lines[1] == "✓ Snapshot created successfully."
    assert lines[2].startswith("  ID:        snap-")
    assert lines[3].startswith("  Size:      ") and lines[3].endswith(" KB")
    assert lines[4].startswith("  Checksum:  sha256:")
    sid = lines[2].split()[-1]
    assert adm("-q", "backup", "snapshot").out == ""  # a mutation prints nothing under -q

    listed = adm.json("backup", "list")
    entry = next(s for s in listed["items"] if s["snapshot_id"] == sid)
    assert entry["description"] == "round trip" and entry["checksum"].startswith("sha256:")
    assert listed["total_items"] == len(listed["items"]) >= 2
    assert entry["created_at"].endswith("Z")  # Unix ms → RFC 3339 (06 §7.1)
    table = adm("backup", "list").out.splitlines()
    assert table[0].split() == ["SNAPSHOT", "ID", "CREATED", "SIZE", "DESCRIPTION"]
    assert table[-1] == f"Total: {len(listed['items'])} snapshots"
    assert sid in [row.split()[0] for row in table[1:-2]]  # IDs are never shortened
    wide = adm("backup", "list", "-o", "wide").out.splitlines()[0].split()
    assert wide[-3:] == ["TYPE", "ENCRYPTED", "CHECKSUM"]
    assert sid in adm("-q", "backup", "list").out.split()

    # download: streamed to disk, SHA-256 equal to the listed checksum
    dest = tmp_path / "dl"
    dest.mkdir()
    r = adm("backup", "download", sid, "-o", str(dest))
    assert r.code == 0, r.err
    bak = dest / f"{sid}.bak"
    assert r.out.splitlines()[0] == f"Downloaded to: {bak}"
    assert _sha256(bak) == entry["checksum"]
    assert bak.read_bytes().startswith(b"TOKMESH_BAK_V1\n")
    assert not (dest / f"{sid}.bak.part").exists()

    # state changes after the snapshot, then a restore from the uploaded file
    later = _session(adm, "bk-later")
    r = adm("backup", "restore", "--file", str(bak), "-f")
    assert r.code == 0, (r.out, r.err)
    assert "⚠️  Restoring from file" in r.out
    assert "✓ Restore completed successfully." in r.out
    job_id = r.out.split("Restore started (job ")[1].split(")")[0]
    assert adm("session", "get", kept).code == 0
    gone = adm("-o", "json", "session", "get", later)
    assert gone.code == 1 and gone.json()["error"]["code"] == "TM-SESS-4040"

    job = adm.json("backup", "status", job_id)
    assert job["status"] == "IDLE" and job["progress"] == 100 and job["job_id"] == job_id
    human = adm("backup", "status", job_id)
    assert human.code == 0 and "  Status:         IDLE" in human.out
    assert "  Progress:       100%" in human.out
    missing = adm("-o", "json", "backup", "status", "job-nope")
    assert missing.code == 1 and missing.json()["error"]["code"] == "TM-ADMIN-4041"

    # restore by ID, JSON: the finished job
    data = adm.json("backup", "restore", "--id", sid, "-f")
    assert data["status"] == "IDLE" and data["snapshot_id"] == sid and data["progress"] == 100


def _listed_ids(adm: Admin, fmt: str) -> list[str]:
    """The snapshot IDs ``backup list`` shows in output format ``fmt`` (``quiet`` = -q)."""
    r = adm("backup", "list", "-q") if fmt == "quiet" else adm("backup", "list", "-o", fmt)
    assert r.code == 0, r.err
    if fmt in ("json", "yaml"):
        doc = json.loads(r.out) if fmt == "json" else yaml.safe_load(r.out)
        return [str(item["snapshot_id"]) for item in doc["data"]["items"]]
    lines = r.out.splitlines()
    if fmt == "quiet":
        return lines
    # header, one row per snapshot, a blank line, the total
    assert lines[0].startswith("SNAPSHOT ID") and lines[-1].startswith("Total: "), lines
    return [row.split()[0] for row in lines[1:-2]]


@pytest.mark.parametrize("fmt", ["table", "wide", "json", "yaml", "quiet"])
def test_listed_ids_are_what_download_and_restore_take(
    adm: Admin, tmp_path: Path, fmt: str
) -> None:
    """Every output format of ``backup list`` shows IDs ``download`` and ``restore`` accept."""
    sid = _snapshot(adm, f"format {fmt}")["snapshot_id"]
    listed = _listed_ids(adm, fmt)
    assert listed == _listed_ids(adm, "json")  # the same IDs, in the same order
    (shown,) = [i for i in listed if i == sid]
    r = adm("backup", "download", shown, "-o", str(tmp_path))
    assert r.code == 0, r.err
    assert (tmp_path / f"{sid}.bak").read_bytes().startswith(b"TOKMESH_BAK_V1\n")
    job = adm.json("backup", "restore", "--id", shown, "-f")
    assert job["status"] == "IDLE" and job["snapshot_id"] == sid


def test_restore_usage_errors_and_bad_files(adm: Admin, tmp_path: Path) -> None:
    r = adm("backup", "restore", "-f")
    assert r.code == 64 and "either --id or --file is required" in r.err
    r = adm("backup", "restore", "--id", "snap-x", "--file", "x.bak", "-f")
    assert r.code == 64 and "cannot specify both --id and --file" in r.err
    r = adm("backup", "restore", "--file", str(tmp_path / "missing.bak"), "-f")
    assert r.code == 64 and "cannot read" in r.err
    # no terminal and no --force: 64 before anything is sent
    r = adm("backup", "restore", "--id", "snap-20000101-000000")
    assert r.code == 64 and "stdin is not a terminal" in r.err
    # --dry-run sends nothing and needs no confirmation
    r = adm("backup", "restore", "--id", "snap-20000101-000000", "--dry-run")
    assert r.code == 0 and "[DRY RUN] Would restore the node from snapshot" in r.out

    r = adm("-o", "json", "backup", "restore", "--id", "snap-20000101-000000", "-f")
    assert r.code == 1 and r.json()["error"]["code"] == "TM-ADMIN-4041"
    assert r.json()["error"]["message"] == "Snapshot not found"

    sid = _snapshot(adm)["snapshot_id"]
    good = tmp_path / "good.bak"
    assert adm("backup", "download", sid, "-o", str(good)).code == 0
    tampered = tmp_path / "tampered.bak"
    raw = bytearray(good.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    tampered.write_bytes(bytes(raw))
    before = _session(adm, "bk-untouched")
    r = adm("backup", "restore", "--file", str(tampered), "-f")
    assert r.code == 1
    assert "Error: Invalid backup file format" in r.err and "TM-ADMIN-4221" in r.err
    assert adm("session", "get", before).code == 0  # running state untouched


def test_download_resume_failure_cleanup_and_json(adm: Admin, tmp_path: Path) -> None:
    entry = _snapshot(adm, "resume")
    sid = entry["snapshot_id"]
    out = tmp_path / "r.bak"
    full = tmp_path / "full.bak"
    assert adm("backup", "download", sid, "-o", str(full)).code == 0
    blob = full.read_bytes()
    # a partial download of the first half is continued with a Range request
    part = tmp_path / "r.bak.part"
    part.write_bytes(blob[: len(blob) // 2])
    data = adm.json("backup", "download", sid, "-o", str(out), "--resume", "-v")
    assert out.read_bytes() == blob and not part.exists()
    assert data == {
        "snapshot_id": sid,
        "path": str(out),
        "size_bytes": len(blob),
        "checksum": entry["checksum"],
        "verified": True,
    }
    # a corrupt partial file fails the checksum: exit 1, nothing left behind
    part.write_bytes(b"X" * (len(blob) // 2))
    out.unlink()
    r = adm("backup", "download", sid, "-o", str(out), "--resume")
    assert r.code == 1 and "checksum mismatch" in r.err
    assert not out.exists() and not part.exists()
    # unknown snapshot: 1, no file created
    r = adm("backup", "download", "snap-20000101-000000", "-o", str(tmp_path / "n.bak"))
    assert r.code == 1 and "Snapshot not found" in r.err
    assert list(tmp_path.glob("n.bak*")) == []
    # an output directory that does not exist: usage error
    r = adm("backup", "download", sid, "-o", str(tmp_path / "nodir" / "x.bak"))
    assert r.code == 64


def test_wal_status_and_compact_json(adm: Admin, bnode: ServerProcess) -> None:
    with bnode.client(bnode.admin_key) as c:
        direct = c.get("/admin/v1/wal/status").json()["data"]
    data = adm.json("system", "wal", "status")
    assert set(data) == WAL_KEYS
    assert data == direct  # nothing written in between: exactly the server's data
    assert data["enabled"] is True and data["sync_mode"] == "sync"
    human = adm("sys", "wal", "status").out.splitlines()
    assert human[0] == "WAL Status" and human[1] == "─" * 55
    assert f"  Last Offset:    {data['last_offset']}" in human
    assert f"  Segments:       {data['total_segments']}" in human

    compact = adm.json("system", "wal", "compact")
    assert set(compact) == {"snapshot_id", "removed_segments", "removed_files", "freed_bytes"}
    assert isinstance(compact["removed_segments"], int)
    assert compact["removed_segments"] == len(compact["removed_files"])
    assert isinstance(compact["freed_bytes"], int) and compact["freed_bytes"] >= 0
    listed = adm.json("backup", "list")["items"]
    assert any(s["snapshot_id"] == compact["snapshot_id"] for s in listed)
    r = adm("system", "wal", "compact")
    assert r.code == 0 and "✓ WAL compaction completed." in r.out
    assert r.out.splitlines()[0].endswith("Compacting the WAL...")
    assert adm("system", "wal", "compact", "--dry-run").out.startswith("[REMOTE: ")


def test_unauthorised_and_unreachable(cli: Cli, bnode: ServerProcess) -> None:
    bad = cli.run("-t", bnode.base_url, "-k", "tmak-x:tmas_nope", "backup", "list")
    assert bad.code == 1 and "TM-AUTH-" in bad.err
    r = cli.run("-t", "http://127.0.0.1:9", "-k", "tmak-x:y", "system", "wal", "status")
    assert r.code == 69


def test_typed_restore_confirmation_and_progress_on_a_terminal(adm: Admin, tmp_path: Path) -> None:
    # snapshot on a terminal: the spinner ends with ✓ on stderr
    c = adm.spawn("backup", "snapshot", "-d", "pty")
    c.expect("✓ Snapshot created successfully.")
    c.expect(r"ID:\s+(snap-[0-9-]+)")
    sid = c.match.group(1)
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0

    # download on a terminal draws the 40-cell progress bar
    c = adm.spawn("backup", "download", sid, "-o", str(tmp_path / "p.bak"))
    c.expect(r"Downloading \[(█{40})\] 100% \(")
    c.expect("Downloaded to: ")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0

    # the typed confirmation: a wrong word cancels (2) and nothing is restored
    after = _session(adm, "bk-pty")
    c = adm.spawn("backup", "restore", "--file", str(tmp_path / "p.bak"))
    for line in (
        "⚠️  WARNING: This operation will:",
        "   - Stop accepting new requests",
        "   - Replace all current data",
        "   - Cause brief service interruption",
    ):
        c.expect_exact(line)
    c.expect_exact("Type 'RESTORE' to confirm: ")
    c.sendline("restore")
    c.expect_exact("Cancelled.")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 2
    assert adm("session", "get", after).code == 0

    # typing RESTORE uploads (bar) and follows the job to the end
    c = adm.spawn("backup", "restore", "--file", str(tmp_path / "p.bak"))
    c.expect_exact("Type 'RESTORE' to confirm: ")
    c.sendline("RESTORE")
    c.expect(r"Uploading \[█{40}\] 100%")
    c.expect_exact("✓ Restore completed successfully.")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
    gone = adm("-o", "json", "session", "get", after)
    assert gone.code == 1 and json.loads(gone.out)["error"]["code"] == "TM-SESS-4040"
