"""Cluster RPC micro-benchmark: the cost of one call over the cluster port on loopback.

A server process (this script with ``--serve``) answers an ``echo`` method over mTLS
(trustme certificates); this process calls it, first one call at a time (the latency a
forwarded request adds), then with ``--concurrency`` calls in flight on the pooled
connections (the throughput and CPU cost per call when calls share TLS records). For
each phase it prints µs per round trip and CPU µs per call on the client and on the
server, measured from /proc, so the forwarding cost can be quoted per node.

    python bench/cluster_rpc.py [--calls 20000] [--concurrency 64] [--body-bytes 200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import trustme

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import process_cpu_seconds  # noqa: E402

from tokmesh.cluster.rpc_client import open_rpc_client  # noqa: E402
from tokmesh.cluster.rpc_server import RpcServer  # noqa: E402
from tokmesh.cluster.transport import ClusterTls  # noqa: E402


def write_certs(directory: Path) -> dict[str, list[str]]:
    """A CA and two node certificates as files: {"server": [cert, key, ca], "client": ...}."""
    ca = trustme.CA()
    ca_file = directory / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_file))
    out: dict[str, list[str]] = {}
    for name in ("server", "client"):
        leaf = ca.issue_cert("127.0.0.1", common_name=f"tmnd-bench-{name}")
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        out[name] = [str(cert), str(key), str(ca_file)]
    return out


async def serve(files: list[str]) -> None:
    """The server side: print the port, then answer until killed."""
    server = RpcServer(ClusterTls(*files), "tmnd-bench-server")

    async def echo(peer: str, body: Any) -> Any:
        return body

    server.register("echo", echo)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        print(port, flush=True)


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(files: list[str], port: int, server_pid: int, args: argparse.Namespace) -> None:
    address = f"127.0.0.1:{port}"
    body = {"session_id": "tmss-" + "x" * max(0, args.body_bytes - 40), "op": "validate"}
    async with open_rpc_client(ClusterTls(*files)) as client:
        for _ in range(200):  # connect and warm up
            await client.call(address, "echo", body, timeout=5)

        # One call at a time: the latency a forwarded request pays.
        latencies: list[float] = []
        c0, s0, t0 = cpu_self(), process_cpu_seconds(server_pid), time.perf_counter()
        for _ in range(args.calls):
            start = time.perf_counter()
            await client.call(address, "echo", body, timeout=5)
            latencies.append(time.perf_counter() - start)
        wall = time.perf_counter() - t0
        report(
            "sequential",
            args.calls,
            wall,
            cpu_self() - c0,
            process_cpu_seconds(server_pid) - s0,
            latencies,
        )

        # Many calls in flight on the pooled connections.
        per_task = args.calls // args.concurrency
        done = 0

        async def worker() -> None:
            nonlocal done
            for _ in range(per_task):
                await client.call(address, "echo", body, timeout=5)
                done += 1

        c0, s0, t0 = cpu_self(), process_cpu_seconds(server_pid), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(args.concurrency):
                nursery.start_soon(worker)
        wall = time.perf_counter() - t0
        report(
            f"concurrency {args.concurrency}",
            done,
            wall,
            cpu_self() - c0,
            process_cpu_seconds(server_pid) - s0,
            None,
        )


def report(
    phase: str,
    calls: int,
    wall: float,
    client_cpu: float,
    server_cpu: float,
    latencies: list[float] | None,
) -> None:
    line: dict[str, Any] = {
        "phase": phase,
        "calls": calls,
        "calls_per_s": round(calls / wall),
        "us_per_call": round(wall / calls * 1e6, 1),
        "client_cpu_us_per_call": round(client_cpu / calls * 1e6, 1),
        "server_cpu_us_per_call": round(server_cpu / calls * 1e6, 1),
    }
    if latencies:
        ordered = sorted(latencies)
        line["p50_us"] = round(statistics.median(ordered) * 1e6, 1)
        line["p99_us"] = round(ordered[int(len(ordered) * 0.99) - 1] * 1e6, 1)
    print(json.dumps(line), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--body-bytes", type=int, default=200)
    ap.add_argument("--serve", nargs=3, metavar=("CERT", "KEY", "CA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        trio.run(serve, args.serve)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        certs = write_certs(Path(tmp))
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", *certs["server"]],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            trio.run(measure, certs["client"], port, server.pid, args)
        finally:
            server.kill()
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
