"""HTTP validate benchmark (issue 3): wrk -t2 -c64 -d10s posting 1,000 distinct valid
tokens with a validator key, against the native front and against
``server.http.engine: hypercorn`` in the same run.

Target: native ≥ 10,000 req/s, P99 < 10 ms, no non-2xx.

    python bench/http_validate.py [--duration 10] [--connections 64] [--vary-head]
                                  [--compare-ui ROUNDS]

``--compare-ui`` (issue 16) runs only the native front, with the dashboard served and
with ``server.http.ui.enabled: false``, alternating for ROUNDS rounds, and prints the
ratio of the medians (serving ``/ui`` must cost the hot path nothing: within ±5%).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import process_cpu_seconds, start_node

LUA = r"""
local tokens = {}
local auth = os.getenv("TM_AUTH")
for line in io.lines(os.getenv("TM_TOKENS")) do tokens[#tokens + 1] = line end
local vary = os.getenv("TM_VARY_HEAD") == "1"
local i = 0
request = function()
  i = i + 1
  local body = '{"token":"' .. tokens[(i % #tokens) + 1] .. '"}'
  local headers = {["Authorization"] = "Bearer " .. auth, ["Content-Type"] = "application/json"}
  if vary then headers["X-Request-ID"] = "gw-" .. i end
  return wrk.format("POST", "/tokens/validate", headers, body)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %.3f %.3f\n", summary.requests,
    summary.errors.status, summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout,
    latency:percentile(99) / 1000.0, latency:percentile(50) / 1000.0))
end
"""


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children (wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(
    engine: str, duration: int, connections: int, vary_head: bool = False, ui: bool = True
) -> dict[str, float]:
    http = {"engine": engine, "ui": {"enabled": ui}}
    srv = start_node({"server": {"http": http}}, name=engine)
    try:
        issuer = srv.create_key("issuer", rate_limit=1_000_000)
        validator = srv.create_key("validator", rate_limit=1_000_000)
        tokens = []
        with srv.client(issuer) as c:
            for i in range(1000):
                r = c.post("/sessions", json={"user_id": f"bench-{i % 50}-{i}"})
                tokens.append(r.json()["data"]["token"])
        work = Path(tempfile.mkdtemp(prefix="tm-wrk-"))
        (work / "tokens.txt").write_text("\n".join(tokens) + "\n")
        (work / "validate.lua").write_text(LUA)
        # warm the validation cache (one Argon2 per key, then cache hits only)
        httpx.post(
            srv.base_url + "/tokens/validate",
            json={"token": tokens[0]},
            headers={"Authorization": f"Bearer {validator}"},
        )
        env = dict(
            os.environ,
            TM_TOKENS=str(work / "tokens.txt"),
            TM_AUTH=validator,
            TM_VARY_HEAD="1" if vary_head else "0",
        )
        assert srv.proc is not None
        server_cpu0 = process_cpu_seconds(srv.proc.pid)
        wrk_cpu0 = children_cpu_seconds()
        out = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{connections}",
                f"-d{duration}s",
                "-s",
                str(work / "validate.lua"),
                srv.base_url,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=duration + 60,
        ).stdout
        server_cpu = process_cpu_seconds(srv.proc.pid) - server_cpu0
        wrk_cpu = children_cpu_seconds() - wrk_cpu0
        m = re.search(r"RESULT (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+)", out)
        if not m:
            raise RuntimeError(out)
        reqs, non2xx, sockerr, p99, p50 = m.groups()
        return {
            "rps": int(reqs) / duration,
            "non2xx": int(non2xx),
            "socket_errors": int(sockerr),
            "p99_ms": float(p99),
            "p50_ms": float(p50),
            # CPU (user + sys) per request over the run: the server's, and wrk's own.
            "server_us_per_req": round(server_cpu / max(int(reqs), 1) * 1e6, 1),
            "wrk_us_per_req": round(wrk_cpu / max(int(reqs), 1) * 1e6, 1),
        }
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument(
        "--vary-head",
        action="store_true",
        help="also run the native front with a distinct X-Request-ID on every request",
    )
    ap.add_argument("--compare-ui", type=int, default=0, metavar="ROUNDS")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    print(f"machine: {os.cpu_count()} cores; wrk -t2 -c{args.connections} -d{args.duration}s")
    if args.compare_ui:
        compare_ui(args.compare_ui, args.duration, args.connections)
        return
    native = run_one("native", args.duration, args.connections)
    print("native   ", json.dumps(native))
    hyper = run_one("hypercorn", args.duration, args.connections)
    print("hypercorn", json.dumps(hyper))
    ok = native["rps"] >= 10_000 and native["p99_ms"] < 10 and native["non2xx"] == 0
    print(f"native/hypercorn throughput ratio: {native['rps'] / max(hyper['rps'], 1):.1f}x")
    print(f"target native ≥ 10,000 req/s, P99 < 10 ms, no non-2xx: {'PASS' if ok else 'FAIL'}")
    if args.vary_head:
        # Information: a gateway adding its own X-Request-ID makes every head different,
        # so each request is parsed by llhttp in full (no reuse of the previous head).
        varied = run_one("native", args.duration, args.connections, vary_head=True)
        print("native, X-Request-ID per request (information)", json.dumps(varied))


def compare_ui(rounds: int, duration: int, connections: int) -> None:
    """The native front with the dashboard on and off, alternating; ratio of medians."""
    runs: dict[bool, list[float]] = {True: [], False: []}
    for i in range(rounds):
        for ui in (True, False) if i % 2 == 0 else (False, True):
            result = run_one("native", duration, connections, ui=ui)
            runs[ui].append(result["rps"])
            print(f"round {i + 1} ui={'on ' if ui else 'off'}", json.dumps(result))
    on, off = statistics.median(runs[True]), statistics.median(runs[False])
    ratio = on / off
    print(f"median req/s with /ui {on:,.0f}, without {off:,.0f}: ratio {ratio:.3f}")
    print(f"target within ±5%: {'PASS' if abs(ratio - 1) <= 0.05 else 'FAIL'}")


if __name__ == "__main__":
    main()
