"""Event-loop stall while a snapshot of N sessions is written (issue 2: ≤ 50 ms).

Builds N synthetic sessions, then writes a snapshot in a worker thread (as the
snapshotter does) while a Trio task ticks every millisecond and records how late each
tick is. Prints the snapshot time and the longest / p99 stall.

    python bench/snapshot_stall.py [N]      # default 1,000,000
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import synthetic_sessions

from tokmesh.actors.snapshotter import frozen_view
from tokmesh.storage import snapshot_files
from tokmesh.storage.cipher import Cipher


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    now = int(time.time() * 1000)
    sessions = synthetic_sessions(n, now)
    gc.collect()
    gc.freeze()  # as the engine does for long-lived records
    root = Path(tempfile.mkdtemp(prefix="tm-stall-"))
    cipher = Cipher(os.urandom(32))

    async def run() -> None:
        stalls: list[float] = []
        stop = trio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                await trio.sleep(0.001)
                stalls.append(time.perf_counter() - t - 0.001)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            started = time.perf_counter()
            view = frozen_view(sessions)  # as the Snapshotter takes its view
            info = await trio.to_thread.run_sync(
                lambda: snapshot_files.write_snapshot(root, view, [], 0, "tmnd-bench", cipher, now)
            )
            elapsed = time.perf_counter() - started
            stop.set()
        stalls.sort()
        print(f"machine: {os.cpu_count()} cores; {n:,} sessions")
        print(f"snapshot {elapsed:.2f} s, {info.size / 1e6:.0f} MB (target ≤ 10 s)")
        print(
            f"loop stall: max {stalls[-1] * 1000:.1f} ms, p99 "
            f"{stalls[int(len(stalls) * 0.99)] * 1000:.2f} ms (target ≤ 50 ms)"
        )

    trio.run(run)


if __name__ == "__main__":
    main()
