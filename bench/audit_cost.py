"""What an audit record of a business write costs the server (issue 17).

Two figures, in one process, no network:

1. **on the loop**: µs per record for what the HTTP pipeline does after a write is
   answered (``ApiDeps.audit_request``'s call into the audit log), the writer not running;
2. **in all**: CPU of the whole process (event loop + writer thread) per record while a
   Trio task produces ``--rate`` records/s in bursts, as a busy node does, with the
   writer running and writing real files; the same loop without records is subtracted.
   The number of writer batches (thread hops) is printed as well.

Both are printed for the business-write path and for a general ``AuditRecord``
(admin actions, auth failures).

    python bench/audit_cost.py [--rate 10000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import loadavg

from tokmesh.telemetry import audit as audit_mod

KEY_ID = "tmak-01jf8xzm7e3xqh5p8n4r6s2w0t"
IP = "10.1.2.3"
AGENT = "idp-gateway/2.1 (+https://example.com)"


def producers(log: audit_mod.AuditLog) -> dict[str, Callable[[int], object]]:
    """One record per call: the business-write path and a general record."""

    def general(i: int) -> object:
        return log.append(
            audit_mod.AuditRecord.new(
                "POST /sessions",
                result="SUCCESS",
                resource="/sessions",
                request_id=f"req-{i:016d}",
                method="POST",
                route="/sessions",
                status=201,
                operator_id=KEY_ID,
                operator_role="issuer",
                ip_address=IP,
                tcp_remote_ip=IP,
                user_agent=AGENT,
            )
        )

    out: dict[str, Callable[[int], object]] = {"general record": general}
    write = getattr(log, "append_write", None)
    if write is not None:

        def business(i: int) -> object:
            return write(
                "POST /sessions",
                resource="/sessions",
                request_id=f"req-{i:016d}",
                method="POST",
                route="/sessions",
                status=201,
                operator_id=KEY_ID,
                operator_role="issuer",
                ip_address=IP,
                tcp_remote_ip=IP,
                user_agent=AGENT,
            )

        out["business write"] = business
    return out


def on_loop(kind: str, n: int) -> float:
    """µs per record on the caller's side, the writer not running."""
    root = Path(tempfile.mkdtemp(prefix="tm-audit-"))
    try:
        log = audit_mod.AuditLog(root, queue_size=n + 10)
        produce = producers(log)[kind]
        t0 = time.perf_counter()
        for i in range(n):
            produce(i)
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def loaded(kind: str | None, rate: int, seconds: float) -> tuple[float, int, int]:
    """(process CPU seconds, records, writer batches) of ``seconds`` at ``rate`` records/s."""
    root = Path(tempfile.mkdtemp(prefix="tm-audit-"))
    try:
        log = audit_mod.AuditLog(root)
        produce = producers(log)[kind] if kind else None
        batches = 0
        # Batches are counted by wrapping the writer's batch method (its arguments
        # differ between versions of the audit log, hence ``*args``).
        real_write: Any = log._write_batch

        async def counting(*args: Any) -> None:
            nonlocal batches
            batches += 1
            await real_write(*args)

        log._write_batch = counting  # type: ignore[method-assign,assignment]
        burst = 20
        interval = burst / rate
        n = 0
        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            cpu0 = time.process_time()
            deadline = trio.current_time() + seconds
            while trio.current_time() < deadline:
                if produce is not None:
                    for _ in range(burst):
                        produce(n)
                        n += 1
                await trio.sleep(interval)
            await log.flush()
            cpu = time.process_time() - cpu0
            nursery.cancel_scope.cancel()
        return cpu, n, batches
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("-n", type=int, default=200_000)
    a = ap.parse_args()
    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
        f"load average {loadavg()}"
    )
    root = Path(tempfile.mkdtemp())
    kinds = list(producers(audit_mod.AuditLog(root)))
    shutil.rmtree(root)
    interval = getattr(audit_mod, "WRITE_INTERVAL_S", None)
    print(f"writer: at most one write per {interval} s" if interval else "writer: per batch")
    for kind in kinds:
        per_loop = on_loop(kind, a.n)
        # The loop without records, measured next to each run: the machine drifts.
        idle_cpu, _, _ = trio.run(loaded, None, a.rate, a.seconds)
        cpu, n, batches = trio.run(loaded, kind, a.rate, a.seconds)
        per_all = (cpu - idle_cpu) / max(n, 1) * 1e6
        print(
            f"{kind:15s}: {per_loop:5.1f} µs/record on the loop; {per_all:5.1f} µs/record "
            f"of process CPU at {a.rate:,}/s ({n:,} records, {batches:,} writer batches)"
        )
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
