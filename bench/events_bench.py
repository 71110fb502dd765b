"""Session events: delivery to 10 watchers under a create load, and what they cost writers.

One node (batch mode); wrk sends ``POST /sessions`` for ``--duration`` seconds, three
times in one invocation: without watchers, with ``--watchers`` WebSocket watchers of
``GET /events`` (a separate process counting the events each receives), and without
again. Prints the creates/s of each run, the throughput lost with watchers against the
mean of the runs without (goal: at most 10%), and the events delivered per second.

    python bench/events_bench.py [--duration 10] [--connections 64] [--watchers 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--watchers", type=int, default=10)
    args = ap.parse_args()
    node = start_node(name="events")
    work = Path(tempfile.mkdtemp(prefix="tm-events-"))
    try:
        issuer, _ = keys(node)
        admin = node.admin_key
        assert admin is not None and node.proc is not None
        print(f"POST /sessions, batch mode, wrk -t2 -c{args.connections} -d{args.duration}s")
        without_1, us_1 = run_creates(node, work, issuer, args.duration, args.connections)
        print(f"  without watchers:        {without_1:9.0f} creates/s, {us_1:6.1f} us CPU each")
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
        started = time.monotonic()
        with_watchers, us_w = run_creates(node, work, issuer, args.duration, args.connections)
        report = json.loads(watchers.stdout.readline())
        elapsed = time.monotonic() - started
        watchers.wait(30)
        print(
            f"  with {args.watchers} watchers:        {with_watchers:9.0f} creates/s, "
            f"{us_w:6.1f} us CPU each (events included)"
        )
        without_2, us_2 = run_creates(node, work, issuer, args.duration, args.connections)
        print(f"  without watchers again:  {without_2:9.0f} creates/s, {us_2:6.1f} us CPU each")
        baseline = (without_1 + without_2) / 2
        loss = 1 - with_watchers / baseline
        counts = report["counts"]
        created = with_watchers * args.duration
        delivered = sum(counts)
        print(f"throughput with / without watchers: {with_watchers / baseline:.3f}")
        verdict = "OK" if loss <= GOAL_LOSS else "NOT MET"
        print(f"throughput lost: {loss * 100:.1f}% (goal <= {GOAL_LOSS * 100:.0f}%: {verdict})")
        print(
            f"events delivered: {delivered} = {delivered / args.duration:,.0f}/s of load "
            f"over {args.watchers} watchers (counted until {elapsed:.1f}s after the start)"
        )
        print(f"events per watcher: min {min(counts)}, max {max(counts)}")
        print(
            f"delivered / (creates x watchers): {delivered / max(created * args.watchers, 1):.3f}"
        )
        us_base = (us_1 + us_2) / 2
        print(
            f"node CPU per create with / without watchers: {us_w / us_base:.3f} "
            f"(the throughput cost on a node that is not shared: {1 - us_base / us_w:.1%})"
        )
        print(f"load average after: {loadavg()}")
    finally:
        discard_node(node)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
