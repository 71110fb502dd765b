"""Event-loop stall and memory while a snapshot of N sessions is written (issues 2 and 17).

Builds N synthetic sessions, then writes a snapshot twice in the same invocation, as the
snapshotter does: first in a worker thread (the previous path, and the one kept where
``fork`` is missing), then in a forked child (``tokmesh/actors/forked_write.py``). A Trio
task ticks every millisecond meanwhile and records how late each tick is, and a second
task spins pure-Python work on the loop, as a loop serving requests does, and counts its
iterations: the child's ratio of those to the thread's is the loop's speed during a
snapshot. For the child it also samples the memory the child copied from the node
(``Private_Dirty`` of ``/proc/<pid>/smaps_rollup``: pages the child wrote, reference
counts of the records it walked included), which is what a container's memory limit has
to leave room for.

    python bench/snapshot_stall.py [N]      # default 1,000,000
"""

from __future__ import annotations

import gc
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import synthetic_sessions

from tokmesh.actors.forked_write import FORK_AVAILABLE, run_in_child
from tokmesh.actors.snapshotter import frozen_view
from tokmesh.storage import snapshot_files
from tokmesh.storage.cipher import Cipher
from tokmesh.storage.snapshot_files import SnapshotInfo


def rss_mb(pid: int) -> float:
    """The process' resident memory (MB)."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024  # type: ignore[union-attr]


def private_dirty_mb(pid: int) -> float:
    """Pages the process wrote since the fork (MB); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except OSError:
        return 0.0
    m = re.search(r"Private_Dirty:\s+(\d+)", text)
    return int(m.group(1)) / 1024 if m else 0.0


def children() -> list[int]:
    """Pids of this process' children."""
    pids: list[int] = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            pids += [int(p) for p in f.read().split()]
    return pids


async def measure(
    label: str, write: Callable[[], SnapshotInfo], forked: bool
) -> tuple[float, int, float]:
    """Write one snapshot with ``write``: prints its figures; (seconds, loop
    iterations, peak MB the child copied)."""
    stalls: list[float] = []
    spins = 0
    peak = 0.0
    stop = trio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await trio.sleep(0.001)
            stalls.append(time.perf_counter() - t - 0.001)

    async def spinner() -> None:
        # Python work on the loop between checkpoints, as request handling is.
        nonlocal spins
        while not stop.is_set():
            sum(range(200))
            spins += 1
            await trio.lowlevel.checkpoint()

    async def sampler() -> None:
        nonlocal peak
        while not stop.is_set():
            for pid in children():
                peak = max(peak, await trio.to_thread.run_sync(private_dirty_mb, pid))
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        nursery.start_soon(spinner)
        if forked:
            nursery.start_soon(sampler)
        started = time.perf_counter()
        info = await (run_in_child(write) if forked else trio.to_thread.run_sync(write))
        elapsed = time.perf_counter() - started
        stop.set()
    stalls.sort()
    line = (
        f"{label}: snapshot {elapsed:.2f} s, {info.size / 1e6:.0f} MB; loop stall max "
        f"{stalls[-1] * 1000:.1f} ms, p99 {stalls[int(len(stalls) * 0.99)] * 1000:.2f} ms; "
        f"loop iterations {spins / elapsed:,.0f}/s"
    )
    if forked:
        line += f"; the child copied up to {peak:,.0f} MB"
    print(line)
    return elapsed, spins, peak


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    now = int(time.time() * 1000)
    before = rss_mb(os.getpid())
    sessions = synthetic_sessions(n, now)
    gc.collect()
    gc.freeze()  # as the engine does for long-lived records
    heap = rss_mb(os.getpid()) - before
    root = Path(tempfile.mkdtemp(prefix="tm-stall-"))
    cipher = Cipher(os.urandom(32))
    print(f"machine: {os.cpu_count()} cores; {n:,} sessions, {heap:,.0f} MB of session heap")
    print("targets: loop stall ≤ 50 ms (issue 2); snapshot ≤ 10 s")

    async def run() -> None:
        view = frozen_view(sessions)  # as the Snapshotter takes its view

        def write() -> SnapshotInfo:
            return snapshot_files.write_snapshot(root, view, [], 0, "tmnd-bench", cipher, now)

        t_s, t_spins, _ = await measure("worker thread (previous path)", write, forked=False)
        if not FORK_AVAILABLE:
            print("no fork on this platform: the snapshotter uses the worker thread")
            return
        f_s, f_spins, peak = await measure("forked child", write, forked=True)
        print(
            f"forked / thread: loop iterations per second "
            f"{(f_spins / f_s) / max(t_spins / t_s, 1):.2f}, snapshot time {f_s / t_s:.2f}; "
            f"memory copied {peak / max(heap, 1):.2f} × the session heap"
        )

    trio.run(run)


if __name__ == "__main__":
    main()
