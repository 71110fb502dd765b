"""RESP benchmark (issue 4): redis-benchmark -c 50 -n 200000 with ``TM.VALIDATE <token>``
against TokMesh and ``GET <key>`` (300-byte value) against redis-server (no persistence),
same machine, same invocation, at -P 1 and -P 16. Target: TokMesh ≥ 0.6× Redis at both.

``--resp 3`` runs both servers over RESP3 connections (``redis-benchmark -3``: every
connection opens with ``HELLO 3``); ``--resp both`` runs RESP2 and RESP3 one after the
other at each pipeline depth, so the two can be compared within one run.

    python bench/resp_validate.py [-n 200000] [-c 50] [--resp 2|3|both]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import free_port, redis_server, start_node


def rps(output: str) -> float:
    """Requests per second from ``redis-benchmark -q`` (or the summary) output."""
    found = re.findall(r"([\d.]+) requests per second", output)
    if not found:
        raise RuntimeError(output[-2000:])
    return float(found[-1])


# Distinct tokens for the informational run: redis-benchmark replaces ``__rand_int__``
# with a 12-digit number below ``-r``; the rest keeps the token strictly formatted.
DISTINCT_PREFIX = "tmtk_" + "D" * 15
DISTINCT_SUFFIX = "E" * 15 + "A"
DISTINCT_KEYS = 1000


def bench(
    args: list[str], command: list[str], n: int, c: int, pipeline: int, extra: tuple[str, ...] = ()
) -> float:
    """One redis-benchmark run: options first, then the command to repeat."""
    cmd = [
        "redis-benchmark",
        *args,
        *extra,
        "-n",
        str(n),
        "-c",
        str(c),
        "-P",
        str(pipeline),
        "-q",
        *command,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return rps(out.stdout + out.stderr)


def speaks_resp3() -> bool:
    """True when this redis-benchmark has ``-3`` (Redis 7 and later)."""
    out = subprocess.run(["redis-benchmark", "--help"], capture_output=True, text=True)
    return " -3 " in out.stdout + out.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("-c", type=int, default=50)
    ap.add_argument(
        "--resp",
        choices=("2", "3", "both"),
        default="2",
        help="protocol of the benchmark connections (3: redis-benchmark -3, HELLO 3)",
    )
    a = ap.parse_args()
    for tool in ("redis-benchmark", "redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install -y redis-server redis-tools)")
    protos = [2, 3] if a.resp == "both" else [int(a.resp)]
    if 3 in protos and not speaks_resp3():
        sys.exit("this redis-benchmark has no -3 option (Redis 7 tools are needed for RESP3)")
    print(f"machine: {os.cpu_count()} cores; redis-benchmark -c {a.c} -n {a.n}")

    # Redis reference: no persistence, one 300-byte key.
    with redis_server() as rport:
        tport = free_port()
        node = start_node(
            {"server": {"redis": {"enabled": True, "address": f"127.0.0.1:{tport}"}}}, name="resp"
        )
        try:
            time.sleep(0.5)
            subprocess.run(
                ["redis-cli", "-p", str(rport), "SET", "bench:key", "x" * 300],
                check=True,
                capture_output=True,
            )
            issuer = node.create_key("issuer", rate_limit=1_000_000)
            validator = node.create_key("validator", rate_limit=1_000_000)
            with node.client(issuer) as c:
                token = c.post("/sessions", json={"user_id": "bench"}).json()["data"]["token"]
            kid, secret = validator.split(":", 1)
            auth = ["-p", str(tport), "--user", kid, "-a", secret]
            results: dict[tuple[int, int], tuple[float, float]] = {}
            for p in (1, 16):
                for proto in protos:
                    flag = ("-3",) if proto == 3 else ()
                    r = bench(["-p", str(rport)], ["GET", "bench:key"], a.n, a.c, p, flag)
                    t = bench(auth, ["TM.VALIDATE", token], a.n, a.c, p, flag)
                    results[p, proto] = (t, r)
                    print(
                        f"-P {p:2d} RESP{proto}: tokmesh TM.VALIDATE {t:10,.0f}/s   "
                        f"redis GET {r:10,.0f}/s   ratio {t / r:.2f}"
                    )
            ok = all(t / r >= 0.6 for t, r in results.values())
            print(f"target ≥ 0.6× Redis at -P 1 and -P 16: {'PASS' if ok else 'FAIL'}")
            if len(protos) == 2:
                for p in (1, 16):
                    two, three = results[p, 2][0], results[p, 3][0]
                    print(f"-P {p:2d}: tokmesh RESP3 / RESP2 = {three / two:.2f}")
            # For information: a pipeline of distinct tokens cannot be coalesced.
            with node.client(issuer) as c:
                for i in range(DISTINCT_KEYS):
                    tok = f"{DISTINCT_PREFIX}{i:012d}{DISTINCT_SUFFIX}"
                    made = c.post("/sessions", json={"user_id": f"d{i}", "token": tok})
                    assert made.status_code == 201, made.text
            template = f"{DISTINCT_PREFIX}__rand_int__{DISTINCT_SUFFIX}"
            for proto in protos:
                extra = ("-r", str(DISTINCT_KEYS), *(("-3",) if proto == 3 else ()))
                d = bench(auth, ["TM.VALIDATE", template], a.n, a.c, 16, extra)
                print(
                    f"-P 16 RESP{proto}, {DISTINCT_KEYS} distinct tokens (information): "
                    f"{d:10,.0f}/s   ratio to redis GET {d / results[16, proto][1]:.2f}"
                )
        finally:
            node.stop()


if __name__ == "__main__":
    main()
