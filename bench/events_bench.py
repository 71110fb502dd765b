"""Session events: delivery to 10 watchers under a create load, and what they cost writers.

One node (batch mode); wrk sends ``POST /sessions`` for ``--duration`` seconds, without
watchers and with ``--watchers`` WebSocket watchers of ``GET /events`` (a separate
process counting the events each receives). Prints the creates/s of each run, the
throughput lost with watchers against the mean of the runs without (goal: at most 10%),
the node's CPU per create with and without, and the events delivered per second. The
verdict uses the medians of the alternating runs (the means are printed too).
Watched and unwatched runs alternate (``--rounds``): on a shared machine the load of
others moves every figure.

    python bench/events_bench.py [--duration 8] [--connections 64] [--watchers 10] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._server import discard_node, loadavg, process_cpu_seconds, start_node
from bench.write_path import WrkRun, keys
from tests.support.server import ServerProcess

GOAL_LOSS = 0.10

#: The watchers' process: N connections counting events until the time is up. It speaks
#: the handshake itself and counts the ``{"cursor"`` each event frame starts with instead
#: of parsing frames: on a 2-core box a full client per watcher would take the CPU the
#: node needs and blur what the node itself pays for its watchers.
WATCHERS = textwrap.dedent(
    """
    import asyncio, base64, json, os, sys

    host, port, path, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    n, seconds = int(sys.argv[5]), float(sys.argv[6])
    counts = [0] * n
    ready = []

    async def watch(i):
        reader, writer = await asyncio.open_connection(host, port)
        nonce = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\\r\\nHost: {host}:{port}\\r\\nUpgrade: websocket\\r\\n"
            f"Connection: Upgrade\\r\\nSec-WebSocket-Key: {nonce}\\r\\n"
            f"Sec-WebSocket-Version: 13\\r\\nAuthorization: Bearer {key}\\r\\n\\r\\n".encode()
        )
        head = await reader.readuntil(b"\\r\\n\\r\\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        ready.append(i)
        tail = b""
        while True:
            data = await reader.read(1 << 20)
            if not data:
                return
            chunk = tail + data
            counts[i] += chunk.count(b'{"cursor"')
            tail = chunk[-8:]
            counts[i] -= tail.count(b'{"cursor"')

    async def main():
        tasks = [asyncio.create_task(watch(i)) for i in range(n)]
        while len(ready) < n:
            await asyncio.sleep(0.01)
        print("ready", flush=True)
        await asyncio.sleep(seconds)
        for t in tasks:
            t.cancel()
        print(json.dumps({"counts": counts}), flush=True)

    asyncio.run(main())
    """
)


def run_creates(
    node: ServerProcess, work: Path, issuer: str, duration: int, connections: int
) -> tuple[float, float]:
    """creates/s of one wrk run, and the node's CPU microseconds per create."""
    assert node.proc is not None
    cpu0 = process_cpu_seconds(node.proc.pid)
    r = WrkRun(node, work, "create", issuer, duration, connections).result()
    cpu = process_cpu_seconds(node.proc.pid) - cpu0
    if r["non2xx"] or r["socket_errors"]:
        print(f"WARNING: {r['non2xx']} non-2xx answers, {r['socket_errors']} socket errors")
    return float(r["rps"]), cpu / max(r["requests"], 1) * 1e6


def watched_run(
    node: ServerProcess, work: Path, issuer: str, admin: str, args: argparse.Namespace
) -> tuple[float, float, list[int]]:
    """One wrk run with the watchers connected: creates/s, CPU per create, event counts."""
    script = work / "watchers.py"
    script.write_text(WATCHERS)
    watchers = subprocess.Popen(
        [
            sys.executable,
            str(script),
            "127.0.0.1",
            str(node.http_port),
            "/events?types=created",
            admin,
            str(args.watchers),
            str(args.duration + 3),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert watchers.stdout is not None
    assert watchers.stdout.readline().strip() == "ready"
    rps, us = run_creates(node, work, issuer, args.duration, args.connections)
    report = json.loads(watchers.stdout.readline())
    watchers.wait(30)
    return rps, us, list(report["counts"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--watchers", type=int, default=10)
    ap.add_argument(
        "--rounds", type=int, default=4, help="watched runs, each between two unwatched ones"
    )
    args = ap.parse_args()
    node = start_node(name="events")
    work = Path(tempfile.mkdtemp(prefix="tm-events-"))
    try:
        issuer, _ = keys(node)
        admin = node.admin_key
        assert admin is not None
        print(f"POST /sessions, batch mode, wrk -t2 -c{args.connections} -d{args.duration}s")
        without: list[tuple[float, float]] = []
        watched: list[tuple[float, float]] = []
        counts: list[int] = []
        for _ in range(args.rounds):
            without.append(run_creates(node, work, issuer, args.duration, args.connections))
            print(
                f"  no watchers:  {without[-1][0]:7.0f} creates/s, "
                f"{without[-1][1]:6.1f} us CPU each"
            )
            rps, us, got = watched_run(node, work, issuer, admin, args)
            watched.append((rps, us))
            counts += got
            print(f"  {args.watchers} watchers:  {rps:7.0f} creates/s, {us:6.1f} us CPU each")
        without.append(run_creates(node, work, issuer, args.duration, args.connections))
        print(f"  no watchers:  {without[-1][0]:7.0f} creates/s, {without[-1][1]:6.1f} us CPU each")
        # Medians: a snapshot or another process's burst lands in one run now and then
        # (the node keeps every session of every run), on either side; a median over the
        # alternating runs is not moved by one such run, a mean is.
        base_rps = statistics.median(r for r, _ in without)
        base_us = statistics.median(u for _, u in without)
        with_rps = statistics.median(r for r, _ in watched)
        with_us = statistics.median(u for _, u in watched)
        mean_loss = 1 - statistics.mean(r for r, _ in watched) / statistics.mean(
            r for r, _ in without
        )
        print(f"throughput lost, means instead of medians: {mean_loss * 100:.1f}%")
        loss = 1 - with_rps / base_rps
        verdict = "OK" if loss <= GOAL_LOSS else "NOT MET"
        print(f"throughput with / without watchers: {with_rps / base_rps:.3f}")
        print(f"throughput lost: {loss * 100:.1f}% (goal <= {GOAL_LOSS * 100:.0f}%: {verdict})")
        print(
            f"node CPU per create with / without watchers: {with_us / base_us:.3f} "
            f"(+{with_us - base_us:.1f} us per create for {args.watchers} watchers)"
        )
        delivered = sum(counts)
        expected = sum(r for r, _ in watched) * args.duration * args.watchers
        print(
            f"events delivered: {delivered / (args.duration * args.rounds):,.0f}/s over "
            f"{args.watchers} watchers; delivered / (creates x watchers): "
            f"{delivered / max(expected, 1):.3f}"
        )
        print(f"load average after: {loadavg()}")
    finally:
        discard_node(node)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
