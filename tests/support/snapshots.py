"""Helpers shared by the large-download test and ``bench/backup_download.py``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tokmesh.storage.cipher import Cipher
from tokmesh.storage.snapshot_codec import encode_header, encode_keys


def write_big_snapshot(snapshot_dir: Path, size: int, cipher: Cipher) -> Path:
    """A layout-valid, correctly checksummed snapshot of about ``size`` bytes whose session
    chunks are random bytes: it lists and downloads like any snapshot, and is never loaded
    when a newer valid snapshot exists (it is dated 2001)."""
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    path = snapshot_dir / "snapshot-20010101000000-0001.snap"
    digest = hashlib.sha256()
    chunk = 8 << 20
    with open(path, "wb") as fh:

        def put(data: bytes) -> None:
            digest.update(data)
            fh.write(data)

        put(
            encode_header(
                session_count=0,
                key_count=0,
                wal_last_offset=0,
                node_id="tmnd-bench",
                created_at=978_307_200_000,
                cipher=cipher,
            )
        )
        written = 0
        while written < size:
            n = min(chunk, size - written)
            put(n.to_bytes(4, "big") + os.urandom(n))
            written += n
        put(encode_keys([], cipher))
        fh.write(digest.digest())
    return path


def rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")
