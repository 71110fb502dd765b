"""Cold start of the storage engine (issue 2: 1M sessions + 100k WAL records ≤ 5 s).

Builds a data directory once - a snapshot of N sessions shaped like the ones
``core_bench.py scale`` creates, plus W WAL ``UPDATE`` records (renews of W distinct
sessions) after it - then times ``await nursery.start(engine.run)`` on a fresh copy of
it, each run in its own process so every start is a real cold start of the interpreter
state. Usage:

    python bench/cold_start.py                      # N=1,000,000, W=100,000, 3 runs
    python bench/cold_start.py [N] [W] [RUNS]
    python bench/cold_start.py prepare DIR [N] [W]  # build the data dir only
    python bench/cold_start.py once DIR             # one timed start on DIR (mutates it)
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DAY_MS, synthetic_sessions

from tokmesh.actors.engine import EngineSettings, StorageEngine
from tokmesh.actors.wal_writer import WalSettings
from tokmesh.storage import snapshot_files
from tokmesh.storage.cipher import Cipher, load_or_create_key
from tokmesh.storage.wal_codec import RecordType, WalRecord, encode_record
from tokmesh.storage.wal_files import SegmentWriter


def rss_mb() -> float:
    """Resident set size of this process in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def prepare(root: Path, n: int, w: int) -> None:
    """Write the key file, a snapshot of ``n`` sessions and ``w`` WAL renews after it."""
    wal_dir, snap_dir = root / "wal", root / "snapshots"
    cipher = Cipher(load_or_create_key(wal_dir, ""))
    now = int(time.time() * 1000)
    day = DAY_MS
    # Created one every ~3 ms over the last hour or so, as a real fill would: distinct
    # creation and expiry times (not one shared value per chunk), a data map per session.
    sessions = synthetic_sessions(n, now, spacing_ms=3)
    # Segment 1 holds nothing the snapshot does not already cover; the renews follow it.
    writer = SegmentWriter.open(wal_dir)
    position = writer.position
    snapshot_files.write_snapshot(snap_dir, sessions, [], position, "tmnd-bench", cipher, now)
    batch: list[bytes] = []
    for s in sessions[:w]:
        new = s.evolve(expires_at=now + 2 * day, ttl=2 * day, version=s.version + 1)
        rec = WalRecord(RecordType.UPDATE, now, new.id, new.version, new.to_record())
        batch.append(encode_record(rec, cipher))
        if len(batch) == 1000:
            writer.append(b"".join(batch), len(batch))
            batch.clear()
    if batch:
        writer.append(b"".join(batch), len(batch))
    writer.fsync()
    writer.seal_and_close()


async def start_once(root: Path) -> tuple[float, float, int, float]:
    """Seconds from creating the engine to ready, RSS delta (MiB), session count, CPU
    seconds of this process meanwhile (steadier than wall time on a shared machine)."""
    gc.collect()
    base = rss_mb()
    cpu0 = time.process_time()
    engine = StorageEngine(
        EngineSettings(
            wal_dir=root / "wal",
            snapshot_dir=root / "snapshots",
            wal=WalSettings(sync_mode="batch"),
        )
    )
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        count = len(engine.state.sessions)
        rss = rss_mb() - base
        await engine.stop()
    return elapsed, rss, count, cpu


def main() -> None:
    """Command-line entry point (see the module docstring)."""
    args = sys.argv[1:]
    if args and args[0] == "prepare":
        prepare(
            Path(args[1]),
            int(args[2]) if len(args) > 2 else 1_000_000,
            int(args[3]) if len(args) > 3 else 100_000,
        )
        return
    if args and args[0] == "once":
        elapsed, rss, count, cpu = trio.run(start_once, Path(args[1]))
        print(
            f"cold start to ready (fresh process): {elapsed:.2f} s; {count:,} sessions; "
            f"RSS +{rss:,.0f} MB; {cpu:.2f} s CPU in this process"
        )
        return
    n = int(args[0]) if args else 1_000_000
    w = int(args[1]) if len(args) > 1 else 100_000
    runs = int(args[2]) if len(args) > 2 else 3
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    base = Path(tempfile.mkdtemp(prefix="tm-cold-"))
    # the child must import the same tokmesh as this process
    repo = str(Path(__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
    }
    try:
        t0 = time.perf_counter()
        prepare(base / "data", n, w)
        print(f"prepared {n:,} sessions + {w:,} WAL records in {time.perf_counter() - t0:.0f} s")
        for _ in range(runs):
            copy = base / "run"
            shutil.copytree(base / "data", copy)
            subprocess.run([sys.executable, __file__, "once", str(copy)], check=True, env=env)
            shutil.rmtree(copy)
        print("target: cold start ≤ 5 s")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
