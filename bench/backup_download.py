"""Backup download memory benchmark (issue 6, acceptance 4).

Starts a real ``tokmesh-server`` whose snapshot directory holds a snapshot larger than
500 MB, downloads it as a ``.bak`` over HTTP and prints the server's RSS before, at its
peak during, and after the download, next to the target (growth < 50 MB).

The big snapshot is layout-valid and correctly checksummed (magic, header, length-framed
chunks, encrypted key part, SHA-256 trailer) but its session chunks are random bytes, so
building it takes seconds instead of encoding millions of sessions. It is dated 2001 and a
newer valid (empty) snapshot sits beside it, so recovery never loads it; the download path
does not care what the chunks contain. Usage (from the repository root)::

    python bench/backup_download.py [SIZE_MB]      # default 600
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.server import ServerProcess
from tests.support.snapshots import rss, write_big_snapshot
from tokmesh.storage import snapshot_files
from tokmesh.storage.cipher import Cipher

KEY_HEX = "5a17c0ffee" * 6 + "0123"
BIG_ID = "snap-20010101-000000"
TARGET_MB = 50


def main() -> int:
    """Run the benchmark; exit status 1 when the target is missed."""
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    with tempfile.TemporaryDirectory(prefix="tokmesh-bak-bench-") as tmp:
        root = Path(tmp)
        node = ServerProcess(
            root / "node",
            {
                "security": {"storage": {"wal_encryption_key": KEY_HEX}},
                "server": {"http": {"max_body_size": "1GB"}},
            },
        )
        cipher = Cipher(bytes.fromhex(KEY_HEX))
        snap_dir = root / "node" / "data" / "snapshots"
        started = time.perf_counter()
        write_big_snapshot(snap_dir, size_mb << 20, cipher)
        now = int(time.time() * 1000)
        snapshot_files.write_snapshot(snap_dir, [], [], 0, "tmnd-bench", cipher, now)
        print(f"built a {size_mb} MB snapshot in {time.perf_counter() - started:.1f} s")
        node.start()
        try:
            client = node.client(node.create_admin_key())
            client.timeout = httpx.Timeout(600)
            started = time.perf_counter()
            listing = client.get("/admin/v1/backups/snapshots").json()["data"]["items"]
            big = next(i for i in listing if i["snapshot_id"] == BIG_ID)
            print(f"listing (checksum computed once): {time.perf_counter() - started:.2f} s")
            assert node.proc is not None
            pid = node.proc.pid
            before = rss(pid)
            peak = [before]
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], rss(pid))
                    time.sleep(0.005)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            digest = hashlib.sha256()
            received = 0
            started = time.perf_counter()
            try:
                url = f"/admin/v1/backups/snapshots/{BIG_ID}/file"
                with client.stream("GET", url) as resp:
                    resp.raise_for_status()
                    for part in resp.iter_bytes(1 << 20):
                        digest.update(part)
                        received += len(part)
            finally:
                stop.set()
                sampler.join()
            elapsed = time.perf_counter() - started
            after = rss(pid)
        finally:
            node.stop()
    growth = (peak[0] - before) / 2**20
    ok = received == big["size_bytes"] and "sha256:" + digest.hexdigest() == big["checksum"]
    print(
        f"downloaded {received / 2**20:.0f} MiB in {elapsed:.2f} s "
        f"({received / 2**20 / elapsed:.0f} MiB/s); checksum {'OK' if ok else 'MISMATCH'}"
    )
    print(
        f"server RSS before {before / 2**20:.1f} MiB, peak {peak[0] / 2**20:.1f} MiB, "
        f"after {after / 2**20:.1f} MiB"
    )
    print(
        f"RSS growth {growth:.1f} MiB (target < {TARGET_MB} MB): "
        f"{'PASS' if growth < TARGET_MB and ok else 'FAIL'}"
    )
    return 0 if growth < TARGET_MB and ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
