"""RESP benchmark (issue 4): redis-benchmark -c 50 -n 200000 with ``TM.VALIDATE <token>``
against TokMesh and ``GET <key>`` (300-byte value) against redis-server (no persistence),
same machine, same invocation, at -P 1 and -P 16. Target: TokMesh ≥ 0.6× Redis at both.

    python bench/resp_validate.py [-n 200000] [-c 50]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import free_port, start_node


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("-c", type=int, default=50)
    a = ap.parse_args()
    for tool in ("redis-benchmark", "redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install -y redis-server redis-tools)")
    print(f"machine: {os.cpu_count()} cores; redis-benchmark -c {a.c} -n {a.n}")

    # Redis reference: no persistence, one 300-byte key.
    rport = free_port()
    rdir = tempfile.mkdtemp(prefix="tm-redis-")
    redis = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(rport),
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
        results = {}
        for p in (1, 16):
            r = bench(["-p", str(rport)], ["GET", "bench:key"], a.n, a.c, p)
            auth = ["-p", str(tport), "--user", kid, "-a", secret]
            t = bench(auth, ["TM.VALIDATE", token], a.n, a.c, p)
            results[p] = (t, r)
            print(
                f"-P {p:2d}: tokmesh TM.VALIDATE {t:10,.0f}/s   redis GET {r:10,.0f}/s   "
                f"ratio {t / r:.2f}"
            )
        ok = all(t / r >= 0.6 for t, r in results.values())
        print(f"target ≥ 0.6× Redis at -P 1 and -P 16: {'PASS' if ok else 'FAIL'}")
        # For information: a pipeline of distinct tokens cannot be coalesced.
        with node.client(issuer) as c:
            for i in range(DISTINCT_KEYS):
                tok = f"{DISTINCT_PREFIX}{i:012d}{DISTINCT_SUFFIX}"
                r = c.post("/sessions", json={"user_id": f"d{i}", "token": tok})
                assert r.status_code == 201, r.text
        template = f"{DISTINCT_PREFIX}__rand_int__{DISTINCT_SUFFIX}"
        d = bench(auth, ["TM.VALIDATE", template], a.n, a.c, 16, ("-r", str(DISTINCT_KEYS)))
        print(
            f"-P 16, {DISTINCT_KEYS} distinct tokens (information): {d:10,.0f}/s   "
            f"ratio to redis GET {d / results[16][1]:.2f}"
        )
    finally:
        node.stop()
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(rdir, ignore_errors=True)


if __name__ == "__main__":
    main()
