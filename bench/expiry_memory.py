"""Memory given back after a mass expiry (issue 15): N sessions created, then all expire.

Runs the real engine in-process (real WAL in batch mode, an injected wall clock): creates N
sessions through the session service (64 concurrent callers, distinct users, TTL 60 s),
moves the clock past their expiry and lets the sweeper purge them. Prints the RSS before,
full, after the purge, after one more ``malloc_trim(0)``, and after creating N new
sessions (the memory kept is reused), with the purge rate.

    python bench/expiry_memory.py [N]        # default 200,000
    python bench/expiry_memory.py N --no-trim  # without the sweeper's malloc_trim
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

import trio

from tokmesh.actors import memory
from tokmesh.actors.engine import EngineSettings, StorageEngine
from tokmesh.actors.wal_writer import WalSettings
from tokmesh.domain.clock import ManualClock
from tokmesh.services.sessions import RequestContext, SessionSettings, local_sessions

CTX = RequestContext(
    key_id="tmak-01jf8xzm7e3xqh5p8n4r6s2w0t", client_ip="10.1.2.3", user_agent="bench/1.0"
)


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def run(n: int, trim: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="tm-expmem-"))
    clock = ManualClock(time.time_ns() // 1_000_000)
    settings = EngineSettings(
        wal_dir=root / "wal",
        snapshot_dir=root / "snapshots",
        wal=WalSettings(sync_mode="batch"),
        sessions=SessionSettings(max_per_user=10_000),
    )
    engine = StorageEngine(settings, clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        assert engine.sweeper is not None
        if not trim:
            engine.sweeper.memory = memory.MemoryReturn(trim=None)
        service = local_sessions(engine)

        async def fill(tag: str) -> None:
            async def caller(first: int) -> None:
                for i in range(first, n, 64):
                    await service.create(
                        CTX, f"user-{tag}-{i}", ttl_seconds=60, data={"role": "member"}
                    )

            async with trio.open_nursery() as callers:
                for k in range(64):
                    callers.start_soon(caller, k)

        base = rss_mb()
        await fill("a")
        gc.collect()
        gc.freeze()  # as the engine's periodic freeze would have done by now
        full = rss_mb()
        clock.advance(61_000)
        started = time.perf_counter()
        while engine.state.sessions:
            await trio.sleep(0.02)
        purge_s = time.perf_counter() - started
        await trio.sleep(1.0)  # the tick after the last purge: sampling array, malloc_trim
        gc.collect()
        after = rss_mb()
        trimmed = after
        if memory.MALLOC_TRIM is not None:
            memory.MALLOC_TRIM(0)
            trimmed = rss_mb()
        await fill("b")
        refilled = rss_mb()
        grown = full - base
        print(f"machine: {os.cpu_count()} cores; {n:,} sessions; sweeper malloc_trim: {trim}")
        print(f"RSS before {base:.0f} MB, full {full:.0f} MB (+{grown:.0f})")
        print(
            f"after the purge ({n / purge_s:,.0f} sessions/s): {after:.0f} MB, "
            f"{full - after:.0f} MB given back ({(full - after) / grown:.0%} of the growth)"
        )
        print(f"after one more malloc_trim(0): {trimmed:.0f} MB ({full - trimmed:.0f} MB back)")
        print(f"after {n:,} new sessions: {refilled:.0f} MB ({refilled - full:+.0f} MB vs full)")
        await engine.stop()
        await engine.wait_stopped()
        nursery.cancel_scope.cancel()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=200_000)
    ap.add_argument("--no-trim", dest="trim", action="store_false")
    args = ap.parse_args()
    trio.run(run, args.n, args.trim)


if __name__ == "__main__":
    main()
