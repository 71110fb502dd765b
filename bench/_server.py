"""Shared helpers for the benchmarks: a real tokmesh-server process, keys, redis-server,
wrk runs and the machine's load."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.server import ServerProcess, free_port


def start_node(overrides: dict[str, Any] | None = None, name: str = "bench") -> ServerProcess:
    """A real node with fast test-grade Argon2 (only key creation is affected)."""
    root = Path(tempfile.mkdtemp(prefix=f"tm-{name}-"))
    base: dict[str, Any] = {"storage": {"wal": {"sync_mode": "batch"}}}
    if overrides:
        _merge(base, overrides)
    srv = ServerProcess(root, base)
    srv.start()
    srv.create_admin_key()
    return srv


def discard_node(srv: ServerProcess) -> None:
    """Stop a node made by :func:`start_node` and delete its directory (WAL included)."""
    srv.stop()
    shutil.rmtree(srv.root, ignore_errors=True)


def resp_overrides(port: int) -> dict[str, Any]:
    """The config that opens the plain RESP listener on ``127.0.0.1:port``."""
    return {"server": {"redis": {"enabled": True, "address": f"127.0.0.1:{port}"}}}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> None:
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _merge(a[k], v)
        else:
            a[k] = v


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def redis_server() -> Iterator[int]:
    """A ``redis-server`` without persistence on a free port; yields the port."""
    port = free_port()
    rdir = tempfile.mkdtemp(prefix="tm-redis-")
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            rdir,
            "--bind",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while port_free(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(rdir, ignore_errors=True)


def loadavg() -> str:
    """The 1, 5 and 15-minute load averages, as ``/proc/loadavg`` gives them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: A Lua ``done()`` for wrk that prints what :func:`parse_wrk` reads: one RESULT line
#: (requests, non-2xx, socket errors, P99 and P50 in ms) and the latency quantiles in ms,
#: fine-grained in the tail, so that two concurrent runs can be merged into one
#: distribution (:func:`merged_percentile`).
WRK_DONE_LUA = r"""
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %.3f %.3f\n", summary.requests,
    summary.errors.status, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout,
    latency:percentile(99) / 1000.0, latency:percentile(50) / 1000.0))
  local p = 0.5
  while p < 100 do
    io.write(string.format("PCT %.3f %.3f\n", p, latency:percentile(p) / 1000.0))
    if p < 90 then p = p + 0.5 elseif p < 99 then p = p + 0.1 else p = p + 0.01 end
  end
  io.write(string.format("PCT 100 %.3f\n", latency.max / 1000.0))
end
"""


def parse_wrk(out: str, duration: float) -> dict[str, Any]:
    """Figures of one wrk run whose script ends with :data:`WRK_DONE_LUA`."""
    m = re.search(r"RESULT (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+)", out)
    if not m:
        raise RuntimeError(out[-3000:])
    reqs, non2xx, sockerr, p99, p50 = m.groups()
    quantiles = [(float(p), float(v)) for p, v in re.findall(r"PCT ([\d.]+) ([\d.]+)", out)]
    return {
        "requests": int(reqs),
        "rps": int(reqs) / duration,
        "non2xx": int(non2xx),
        "socket_errors": int(sockerr),
        "p99_ms": float(p99),
        "p50_ms": float(p50),
        "quantiles": quantiles,
    }


def wrk_command(
    url: str, script: Path, duration: int, connections: int, threads: int = 2
) -> list[str]:
    """``wrk -t<threads> -c<connections> -d<duration>s -s <script> <url>``."""
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "-s",
        str(script),
        url,
    ]


def merged_percentile(runs: list[dict[str, Any]], pct: float) -> float:
    """The ``pct`` latency percentile (ms) of the requests of several concurrent wrk runs.

    Each run's distribution is known by its quantiles; the mixture's CDF at ``x`` is the
    request-weighted mean of the runs' CDFs (each interpolated between its quantiles), and
    the percentile is found by bisection on it.
    """

    def cdf(quantiles: list[tuple[float, float]], x: float) -> float:
        below = 0.0
        for p, v in quantiles:
            if v > x:
                return below
            below = p
        return 100.0

    total = sum(r["requests"] for r in runs)
    lo = 0.0
    hi = float(max(v for r in runs for _, v in r["quantiles"]))
    for _ in range(60):
        mid = (lo + hi) / 2
        f = sum(r["requests"] * cdf(r["quantiles"], mid) for r in runs) / total
        if f >= pct:
            hi = mid
        else:
            lo = mid
    return hi


__all__ = [
    "WRK_DONE_LUA",
    "ServerProcess",
    "discard_node",
    "free_port",
    "loadavg",
    "merged_percentile",
    "parse_wrk",
    "port_free",
    "process_cpu_seconds",
    "redis_server",
    "resp_overrides",
    "start_node",
    "wrk_command",
]
