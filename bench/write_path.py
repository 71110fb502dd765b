"""Write-path benchmarks (issue 17): one subcommand per row of the issue's table.

    python bench/write_path.py creates [--sync-mode batch|sync]   # POST /sessions, wrk
    python bench/write_path.py creates-sync                      # same, sync mode
    python bench/write_path.py creates-sustained                 # batch mode for 30 s
    python bench/write_path.py mixed                             # 90% validate + 10% writes
    python bench/write_path.py resp-create                       # TM.CREATE, pipelines of 1,000
    python bench/write_path.py resp-validate-distinct            # TM.VALIDATE vs redis GET
    python bench/write_path.py restart [--signal term|kill|both] # ready after a restart
    python bench/write_path.py all                               # every row, in that order

Every run starts its own node (and its own redis-server where Redis is the reference) in
the same invocation, prints the figure, the goal of the issue and the ratio to the
reference, and the load average before and after (the load generator shares the cores).
``--reference REV`` (creates, creates-sync, mixed, resp-create) runs the row first on the
code of commit REV, then on this tree, and prints this tree's figures over REV's:

    python bench/write_path.py creates --reference 4c89e84
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import DAY_MS, create_sessions_resp, create_token_sessions_resp, resp_client
from _server import (
    WRK_DONE_LUA,
    ServerProcess,
    discard_node,
    free_port,
    loadavg,
    merged_percentile,
    parse_wrk,
    process_cpu_seconds,
    redis_server,
    resp_overrides,
    start_node,
    wrk_command,
)
from resp_validate import DISTINCT_PREFIX, DISTINCT_SUFFIX, bench

from tokmesh.domain.ids import new_session_id

#: The goals of issue 17's table.
GOAL_CREATES_BATCH = 10_000
GOAL_CREATES_SYNC = 8_000
GOAL_CREATE_P99_MS = 10.0
GOAL_MIXED_RPS = 20_000
GOAL_MIXED_P99_MS = 10.0
GOAL_RESP_CREATES = 15_000
GOAL_VALIDATE_P16 = 0.6
GOAL_VALIDATE_P1 = 0.9
GOAL_READY_S = 5.0
#: Seconds of the sustained creates row: long enough for the WAL to reach the default
#: size trigger (100 MB) and a snapshot to run under the load, as it does in production.
SUSTAINED_S = 30

#: One wrk script for every HTTP run; ``TM_MODE`` picks the requests it sends:
#: ``create`` (POST /sessions, a user id no other request of the run uses), ``validate``
#: (POST /tokens/validate, cycling over the distinct tokens of ``TM_TOKENS``), ``write``
#: (creates and renews of the sessions of ``TM_SIDS``, alternately) and ``mixed`` (every
#: tenth request a write, the other nine validations: exactly 90/10).
HTTP_LUA = (
    r"""
local mode = os.getenv("TM_MODE")
local headers = {["Authorization"] = "Bearer " .. os.getenv("TM_AUTH"),
                 ["Content-Type"] = "application/json"}
local tokens, sids = {}, {}
local function load(path, into)
  if path and path ~= "" then
    for line in io.lines(path) do into[#into + 1] = line end
  end
end
load(os.getenv("TM_TOKENS"), tokens)
load(os.getenv("TM_SIDS"), sids)
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n, w, salt, offset = 0, 0, "", 0
init = function(args)
  math.randomseed(os.time() * 131 + (tid or 0) * 7919)
  salt = string.format("%06x%02d", math.random(0, 0xffffff), tid or 0)
  offset = math.random(0, 1000000)
end
local function create()
  -- fixed width, so every create has the same head (Content-Length) as a real IdP's
  local body = string.format('{"user_id":"u%s%08x%06x"}', salt, n, math.random(0, 0xffffff))
  return wrk.format("POST", "/sessions", headers, body)
end
local function validate()
  local body = '{"token":"' .. tokens[(n + offset) % #tokens + 1] .. '"}'
  return wrk.format("POST", "/tokens/validate", headers, body)
end
local function write()
  w = w + 1
  if w % 2 == 1 then return create() end
  local sid = sids[(w + offset) % #sids + 1]
  return wrk.format("POST", "/sessions/" .. sid .. "/renew", headers, '{"ttl_seconds":7200}')
end
request = function()
  n = n + 1
  if mode == "create" then return create() end
  if mode == "validate" then return validate() end
  if mode == "write" then return write() end
  if n % 10 == 0 then return write() end
  return validate()
end
"""
    + WRK_DONE_LUA
)


def header(what: str) -> None:
    """What runs, on which machine, under which load."""
    print(f"== {what}")
    print(f"machine: {os.cpu_count()} cores; load average before: {loadavg()}")
    # The node runs under this interpreter (tokmesh-server beside it): a PGO build such
    # as Debian's python3 runs the server's Python code 10-15% faster than one without.
    print(
        f"interpreter of the node: {os.path.realpath(sys.executable)} {platform.python_version()}"
    )


def verdict(name: str, value: float, goal: float, higher_is_better: bool = True) -> None:
    """One line: the figure, the goal and the ratio to it, with PASS/FAIL."""
    ratio = value / goal
    ok = ratio >= 1 if higher_is_better else ratio <= 1
    sign = "≥" if higher_is_better else "≤"
    print(
        f"{name}: {value:,.2f}   goal {sign} {goal:,.2f}   ratio to goal {ratio:.2f}   "
        f"{'PASS' if ok else 'FAIL'}"
    )


def keys(node: ServerProcess) -> tuple[str, str]:
    """An issuer and a validator key without a practical rate limit, the cache warmed."""
    issuer = node.create_key("issuer", rate_limit=1_000_000)
    validator = node.create_key("validator", rate_limit=1_000_000)
    for key in (issuer, validator):
        # one Argon2 per key now, cache hits during the run
        httpx.post(
            node.base_url + "/tokens/validate",
            json={"token": "tmtk_" + "A" * 43},
            headers={"Authorization": f"Bearer {key}"},
        )
    return issuer, validator


class WrkRun:
    """One wrk process over :data:`HTTP_LUA`, started now, read by :meth:`result`."""

    def __init__(
        self,
        node: ServerProcess,
        work: Path,
        mode: str,
        key: str,
        duration: int,
        connections: int,
        threads: int = 2,
    ) -> None:
        script = work / "write_path.lua"
        if not script.exists():
            script.write_text(HTTP_LUA)
        env = dict(
            os.environ,
            TM_MODE=mode,
            TM_AUTH=key,
            TM_TOKENS=str(work / "tokens.txt") if (work / "tokens.txt").exists() else "",
            TM_SIDS=str(work / "sids.txt") if (work / "sids.txt").exists() else "",
        )
        self.duration = duration
        self.proc = subprocess.Popen(
            wrk_command(node.base_url, script, duration, connections, threads),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )

    def result(self) -> dict[str, Any]:
        """Wait for wrk; its figures (see ``_server.parse_wrk``)."""
        out, _ = self.proc.communicate(timeout=self.duration + 60)
        return parse_wrk(out, self.duration)


def quantile(r: dict[str, Any], pct: float) -> float:
    """The latency (ms) at ``pct`` from a run's quantile table (the nearest listed one
    at or above it)."""
    return next((v for p, v in r["quantiles"] if p >= pct - 1e-9), r["quantiles"][-1][1])


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """A run's figures without the quantile table."""
    return {
        k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items() if k != "quantiles"
    }


# -- POST /sessions ----------------------------------------------------------------------------


def run_creates(
    sync_mode: str, duration: int, connections: int, profile: str | None = None
) -> dict[str, Any]:
    """``POST /sessions`` with a distinct random user id per request.

    ``profile``: a file for a py-spy profile of the node during the run (collapsed stacks).
    """
    header(f"POST /sessions, {sync_mode} mode, wrk -t2 -c{connections} -d{duration}s")
    node = start_node({"storage": {"wal": {"sync_mode": sync_mode}}}, name="creates")
    work = Path(tempfile.mkdtemp(prefix="tm-wrk-"))
    try:
        issuer, _ = keys(node)
        assert node.proc is not None
        cpu0 = process_cpu_seconds(node.proc.pid)
        run = WrkRun(node, work, "create", issuer, duration, connections)
        spy = None
        if profile:
            # py-spy samples the node (all threads, idle ones too) for the run's length;
            # ``--format raw`` writes collapsed stacks: one line per stack and its count.
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(node.proc.pid),
                    "--duration",
                    str(duration),
                    "--rate",
                    "250",
                    "--threads",
                    # Only the thread holding the GIL: a thread waiting for it would
                    # otherwise show wherever it was preempted, as if busy there.
                    "--gil",
                    "--format",
                    "raw",
                    "--output",
                    profile,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        r = run.result()
        if spy is not None:
            spy.wait(60)
            print(f"py-spy profile of the node: {profile}")
        cpu = process_cpu_seconds(node.proc.pid) - cpu0
        r["server_us_per_req"] = cpu / max(r["requests"], 1) * 1e6
        r["snapshots"] = len(list((node.root / "data" / "snapshots").glob("*.snap")))
    finally:
        discard_node(node)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary(r)))
    print(
        f"P99.9 {quantile(r, 99.9):.2f} ms, max {quantile(r, 100):.2f} ms; "
        f"snapshots written during the run: {r['snapshots']}"
    )
    print(f"load average after: {loadavg()}")
    goal = GOAL_CREATES_BATCH if sync_mode == "batch" else GOAL_CREATES_SYNC
    verdict(f"creates/s ({sync_mode})", r["rps"], goal)
    if sync_mode == "batch":
        verdict("P99 ms", r["p99_ms"], GOAL_CREATE_P99_MS, higher_is_better=False)
    else:
        print(f"P99 ms: {r['p99_ms']:.2f} (no goal in sync mode)")
    if r["non2xx"] or r["socket_errors"]:
        print(f"WARNING: {r['non2xx']} non-2xx answers, {r['socket_errors']} socket errors")
    return r


# -- 90% validate + 10% create/renew --------------------------------------------------------


def run_mixed(duration: int, connections: int, tokens: int) -> dict[str, float]:
    """The gateway + IdP mix: one exact 90/10 run, then split runs for per-type P99s.

    wrk measures every request's latency but cannot tell its script which request a
    response belongs to (a response callback with one connection per wrk thread can,
    but cost 15-30% of the throughput here), so the P99 of validations alone comes from
    two concurrent wrk processes, one validating and one writing, both as fast as they
    can on ``connections`` connections in all. A 90/10 split of the connections gives
    writes only ~3% of the requests, as a write waits several times longer than a
    validation; in the exact run, too, a connection spends that much longer on its
    writes. So the split follows Little's law: a calibration run gives each type's mean
    latency (connections / rate), from which the split that yields a tenth of writes is
    computed, and the second run, with that split, is the one reported.
    """
    header(f"mixed 90% validate + 10% create/renew, wrk -t2 -c{connections} -d{duration}s")
    port = free_port()
    node = start_node(resp_overrides(port), name="mixed")
    work = Path(tempfile.mkdtemp(prefix="tm-wrk-"))
    try:
        issuer, validator = keys(node)
        made = create_sessions_resp(resp_client(port, issuer), tokens)
        (work / "tokens.txt").write_text("\n".join(t for _, t in made) + "\n")
        (work / "sids.txt").write_text("\n".join(s for s, _ in made) + "\n")
        # Validations and writes come from one key each, as a gateway and an IdP would;
        # in the exact-mix run one wrk sends both, so it uses the issuer (allowed both).
        exact = WrkRun(node, work, "mixed", issuer, duration, connections).result()
        print("exact 90/10 mix:", json.dumps(summary(exact)))
        writers = connections // 2
        for attempt in range(2):
            readers = connections - writers
            vrun = WrkRun(node, work, "validate", validator, duration, readers)
            wrun = WrkRun(node, work, "write", issuer, duration, writers, threads=1)
            v, wr = vrun.result(), wrun.result()
            if attempt == 0:
                mean_v = readers / max(v["rps"], 1)
                mean_w = writers / max(wr["rps"], 1)
                print(
                    f"calibration ({readers} validating, {writers} writing connections): "
                    f"{v['rps']:,.0f} + {wr['rps']:,.0f} req/s, mean latency "
                    f"{mean_v * 1000:.1f} / {mean_w * 1000:.1f} ms"
                )
                writers = round(connections * mean_w / (mean_w + 9 * mean_v))
                writers = min(max(writers, 1), connections - 2)
    finally:
        discard_node(node)
        shutil.rmtree(work, ignore_errors=True)
    share = wr["requests"] / max(v["requests"] + wr["requests"], 1)
    merged = merged_percentile([v, wr], 99.0)
    print(f"split run, validations ({readers} connections):", json.dumps(summary(v)))
    print(f"split run, writes ({writers} connections):", json.dumps(summary(wr)))
    print(
        f"split run: {v['rps'] + wr['rps']:,.0f} req/s, write share {share:.1%}, "
        f"P99 of both {merged:.2f} ms"
    )
    print(f"load average after: {loadavg()}")
    verdict("mixed req/s (exact mix)", exact["rps"], GOAL_MIXED_RPS)
    verdict("mixed P99 ms, all requests (exact mix)", exact["p99_ms"], GOAL_MIXED_P99_MS, False)
    verdict("mixed P99 ms, validations alone (split run)", v["p99_ms"], GOAL_MIXED_P99_MS, False)
    for name, r in (("exact", exact), ("validate", v), ("write", wr)):
        if r["non2xx"] or r["socket_errors"]:
            print(f"WARNING {name}: {r['non2xx']} non-2xx, {r['socket_errors']} socket errors")
    return {"rps": exact["rps"], "p99_ms": exact["p99_ms"], "validate_p99_ms": v["p99_ms"]}


# -- a reference run of another commit ----------------------------------------------------------


@contextlib.contextmanager
def code_of(rev: str | None) -> Iterator[None]:
    """Nodes started inside run the code of commit ``rev`` (None: this working tree).

    ``git archive`` extracts that commit's tree into a temporary directory, and
    ``PYTHONPATH`` puts its ``tokmesh`` package ahead of the installed one for the
    ``tokmesh-server`` processes started meanwhile (they inherit the environment); the
    benchmark's own code and clients stay this tree's.
    """
    if rev is None:
        yield
        return
    tree = Path(tempfile.mkdtemp(prefix="tm-ref-"))
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", rev, "tokmesh"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree) + (os.pathsep + before if before else "")
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before
        shutil.rmtree(tree, ignore_errors=True)


def with_reference(rev: str | None, row: Callable[[], dict[str, float]]) -> None:
    """Run ``row`` on commit ``rev``'s code, then on this tree's, and print the ratios."""
    if rev is None:
        row()
        return
    print(f"== reference: the same row on the code of {rev}")
    with code_of(rev):
        before = row()
    print("== this tree")
    after = row()
    for key, value in before.items():
        if key in after and value and isinstance(value, int | float):
            now = after[key]
            print(f"{key}: this tree {now:,.1f} / {rev} {value:,.1f} = {now / value:.2f}")


# -- RESP --------------------------------------------------------------------------------------


def run_resp_create(pipelines: int, pipeline: int) -> dict[str, float]:
    """``TM.CREATE`` in redis-py pipelines of ``pipeline`` commands, one client."""
    header(f"TM.CREATE, redis-py pipelines of {pipeline}, {pipelines} pipelines, one client")
    port = free_port()
    node = start_node(resp_overrides(port), name="resp-create")
    try:
        issuer, _ = keys(node)
        client = resp_client(port, issuer)
        bodies = [orjson.dumps({"user_id": f"u{i:08d}"}) for i in range(pipelines * pipeline)]
        sids = [new_session_id() for _ in bodies]
        create_sessions_resp(client, 1000)  # connection, auth and code paths warm
        assert node.proc is not None
        cpu0 = process_cpu_seconds(node.proc.pid)
        t0 = time.perf_counter()
        for start in range(0, len(bodies), pipeline):
            pipe: Any = client.pipeline(transaction=False)  # redis-py's pipeline is untyped
            for i in range(start, start + pipeline):
                pipe.execute_command("TM.CREATE", sids[i], bodies[i])
            pipe.execute()
        elapsed = time.perf_counter() - t0
        cpu = process_cpu_seconds(node.proc.pid) - cpu0
    finally:
        discard_node(node)
    rate = len(bodies) / elapsed
    print(
        f"{len(bodies):,} creates in {elapsed:.2f} s; server CPU "
        f"{cpu / len(bodies) * 1e6:.0f} µs per create"
    )
    # Information: what the same client reaches against Redis (SET of as many keys).
    with redis_server() as rport:
        import redis

        r = redis.Redis(host="127.0.0.1", port=rport)
        t0 = time.perf_counter()
        for start in range(0, len(bodies), pipeline):
            pipe = r.pipeline(transaction=False)
            for i in range(start, start + pipeline):
                pipe.execute_command("SET", sids[i], bodies[i])
            pipe.execute()
        redis_rate = len(bodies) / (time.perf_counter() - t0)
    print(f"load average after: {loadavg()}")
    print(
        f"information: redis-server SET with the same client: {redis_rate:,.0f}/s "
        f"(TokMesh/Redis {rate / redis_rate:.2f})"
    )
    verdict("TM.CREATE creates/s", rate, GOAL_RESP_CREATES)
    return {"rps": rate, "server_us_per_req": cpu / len(bodies) * 1e6}


def run_resp_validate_distinct(
    n: int, clients: int, distinct: int, value_size: int, rounds: int, python_too: bool = False
) -> None:
    """redis-benchmark, ``TM.VALIDATE`` of distinct tokens vs ``GET`` of distinct keys.

    The same generator runs against both servers: redis-benchmark replaces
    ``__rand_int__`` with a random 12-digit number below ``-r`` in every command it sends,
    pipelined or not, so each command of a pipeline names a (nearly always) different
    key. The node holds one session per number (its token is the number between a fixed
    prefix and suffix, a strictly formatted token); Redis holds one key per number. A
    ``-P 16`` run lasts about a second and Redis alone varies ±20% between runs on the
    shared cores, so each round runs both servers back to back and the median ratio of
    the rounds is the figure.

    ``python_too`` adds the previous code path to every round: a second node started with
    ``TOKMESH_ACCEL=0`` (the pure-Python path the compiled loop stands in for).
    """
    header(
        f"TM.VALIDATE of {distinct:,} distinct tokens vs redis GET of {distinct:,} distinct "
        f"keys ({value_size} B), redis-benchmark -c {clients} -n {n}"
    )
    nodes: dict[str, tuple[ServerProcess, list[str]]] = {}
    results: dict[int, list[float]] = {}
    python_ratios: dict[int, list[float]] = {}
    tokens = [f"{DISTINCT_PREFIX}{i:012d}{DISTINCT_SUFFIX}" for i in range(distinct)]
    try:
        for name in ("TM.VALIDATE", "TM.VALIDATE (python)") if python_too else ("TM.VALIDATE",):
            port = free_port()
            with accel_env("0" if name.endswith("(python)") else None):
                node = start_node(resp_overrides(port), name="resp-validate")
            nodes[name] = (node, [])
            issuer, validator = keys(node)
            create_token_sessions_resp(resp_client(port, issuer), tokens)
            kid, secret = validator.split(":", 1)
            nodes[name][1].extend(["-p", str(port), "--user", kid, "-a", secret])
        with redis_server() as rport:
            import redis

            r = redis.Redis(host="127.0.0.1", port=rport)
            value = b"x" * value_size
            for start in range(0, distinct, 1000):
                pipe = r.pipeline(transaction=False)
                for i in range(start, min(start + 1000, distinct)):
                    pipe.set(f"bench:{i:012d}", value)
                pipe.execute()
            rand = ("-r", str(distinct))
            tm_command = ["TM.VALIDATE", f"{DISTINCT_PREFIX}__rand_int__{DISTINCT_SUFFIX}"]
            for round_ in range(rounds):
                for p in (16, 1):
                    # Alternate which server goes first: the shared cores drift.
                    runs = [("GET", ["-p", str(rport)], ["GET", "bench:__rand_int__"])]
                    runs += [(name, args, tm_command) for name, (_, args) in nodes.items()]
                    if round_ % 2:
                        runs.reverse()
                    rates = {
                        name: bench(args, cmd, n, clients, p, rand) for name, args, cmd in runs
                    }
                    tm, red = rates["TM.VALIDATE"], rates["GET"]
                    results.setdefault(p, []).append(tm / red)
                    line = (
                        f"round {round_ + 1} -P {p:2d}: tokmesh TM.VALIDATE {tm:12,.0f}/s   "
                        f"redis GET {red:12,.0f}/s   ratio {tm / red:.2f}"
                    )
                    py = rates.get("TM.VALIDATE (python)")
                    if py is not None:
                        python_ratios.setdefault(p, []).append(tm / py)
                        line += f"   pure Python {py:10,.0f}/s ({py / red:.2f})"
                    print(f"{line}   (load {loadavg()})")
    finally:
        for node, _ in nodes.values():
            discard_node(node)
    print(f"load average after: {loadavg()}")
    for p, goal in ((16, GOAL_VALIDATE_P16), (1, GOAL_VALIDATE_P1)):
        ratio = statistics.median(results[p])
        print(
            f"-P {p}: median ratio to redis-server GET {ratio:.2f} over {rounds} rounds   "
            f"goal ≥ {goal}   {'PASS' if ratio >= goal else 'FAIL'}"
        )
        if p in python_ratios:
            print(
                f"-P {p}: compiled loop / pure Python, median "
                f"{statistics.median(python_ratios[p]):.2f}×"
            )


@contextlib.contextmanager
def accel_env(value: str | None) -> Iterator[None]:
    """``TOKMESH_ACCEL`` for the nodes started inside (``None``: as the caller has it)."""
    before = os.environ.get("TOKMESH_ACCEL")
    if value is not None:
        os.environ["TOKMESH_ACCEL"] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKMESH_ACCEL", None)
        else:
            os.environ["TOKMESH_ACCEL"] = before


# -- restart -----------------------------------------------------------------------------------


def fill_node(config_path: str, n: int) -> None:
    """Run a real node in this process and create ``n`` sessions through its service layer.

    The node is the one ``tokmesh-server`` runs (same configuration loading, same
    ``TokMeshServer``, same signal handling); the sessions are created by 64 tasks calling
    its ``SessionService`` directly, which is the fastest way to give a node a million
    sessions created since its start. Prints ``FILLED`` once done and keeps serving until
    a signal stops it.
    """
    import trio

    from tokmesh.config.validate import load_and_validate
    from tokmesh.server import TokMeshServer
    from tokmesh.services.sessions import RequestContext
    from tokmesh.telemetry.logging import setup_logging

    result, report = load_and_validate(
        config_path, dict(os.environ), {}, Path.cwd(), create_dirs=True
    )
    if report.errors:
        sys.exit(str(report.errors))
    cfg = result.config
    setup_logging(cfg.telemetry.logging.level)
    ctx = RequestContext(
        key_id="tmak-01jf8xzm7e3xqh5p8n4r6s2w0t", client_ip="10.1.2.3", user_agent="bench/1.0"
    )

    async def main() -> None:
        server = TokMeshServer(cfg, config_file=result.source.file)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            svc = server.deps.sessions
            assert svc is not None
            t0 = time.perf_counter()

            async def fill(k: int) -> None:
                for i in range(k, n, 64):
                    await svc.create(
                        ctx, f"user-{i // 5}", data={"role": "member"}, ttl_seconds=DAY_MS // 1000
                    )

            async with trio.open_nursery() as inner:
                for k in range(64):
                    inner.start_soon(fill, k)
            print(f"FILLED {n} {time.perf_counter() - t0:.1f}", flush=True)

    trio.run(main)


def wait_ready(node: ServerProcess, timeout: float) -> float:
    """Seconds from now until ``/ready`` answers 200 (polled every 10 ms)."""
    t0 = time.perf_counter()
    deadline = t0 + timeout
    with httpx.Client(timeout=1) as client:
        while time.perf_counter() < deadline:
            assert node.proc is not None
            if node.proc.poll() is not None:
                raise RuntimeError(f"node exited {node.proc.returncode}:\n{node.log_tail()}")
            try:
                if client.get(node.base_url + "/ready").status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
    raise TimeoutError(node.log_tail())


def tail_mb(root: Path) -> float:
    """MB of WAL after the newest snapshot's position (all of it without a snapshot)."""
    from tokmesh.storage.snapshot_files import list_snapshots, peek_snapshot_info
    from tokmesh.storage.wal_files import wal_bytes_after

    data = root / "data"
    newest = list_snapshots(data / "snapshots")[:1]
    position = peek_snapshot_info(newest[0]).wal_last_offset if newest else 0
    return wal_bytes_after(data / "wal", position) / 1e6


def compile_package() -> None:
    """Cache the bytecode of the ``tokmesh`` package, as ``pip install .`` does.

    An editable checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (set on this machine kind)
    has none, and every start of the node then compiles each of its modules again:
    0.15-0.25 s of the time to ``/ready`` that an installed node does not spend.
    """
    import compileall

    import tokmesh

    pkg = Path(tokmesh.__file__).parent
    fresh = not any(pkg.glob("__pycache__/*.pyc"))
    compileall.compile_dir(pkg, quiet=1)
    state = "compiled first" if fresh else "already cached"
    print(f"bytecode of {pkg.name}/ {state} (as pip install does)")


def run_restart(sessions: int, how: str) -> None:
    """Fill a node with ``sessions`` creates, stop it (SIGTERM or kill -9), time the restart."""
    header(f"ready after {how} of a node with {sessions:,} sessions created since its start")
    compile_package()
    root = Path(tempfile.mkdtemp(prefix="tm-restart-"))
    node = ServerProcess(root, {"storage": {"wal": {"sync_mode": "batch"}}})
    node.config_path.write_text(yaml.safe_dump(node.config))
    try:
        with open(node.log_path, "ab") as log:
            filler = subprocess.Popen(
                [sys.executable, __file__, "_fill", str(node.config_path), str(sessions)],
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=root,
                text=True,
            )
        assert filler.stdout is not None
        line = ""
        for line in filler.stdout:
            if line.startswith("FILLED"):
                break
        if not line.startswith("FILLED"):
            raise RuntimeError(f"fill failed:\n{node.log_tail()}")
        print(f"{sessions:,} sessions created in {line.split()[2]} s (service layer, 64 tasks)")
        wal_mb = sum(f.stat().st_size for f in (root / "data" / "wal").glob("*")) / 1e6
        snaps = sorted(p.name for p in (root / "data" / "snapshots").glob("*.snap"))
        print(f"before the stop: WAL {wal_mb:,.0f} MB, snapshots {snaps or 'none'}")
        print(f"WAL after the newest snapshot (what a crash replays): {tail_mb(root):,.0f} MB")
        t0 = time.perf_counter()
        if how == "SIGTERM":
            filler.terminate()
        else:
            filler.kill()
        code = filler.wait(300)
        stop_s = time.perf_counter() - t0
        before_stop = snaps
        snaps = sorted(p.name for p in (root / "data" / "snapshots").glob("*.snap"))
        print(f"stopped in {stop_s:.1f} s (exit {code}); snapshots now {snaps or 'none'}")
        if how == "SIGTERM" and snaps == before_stop:
            print("WARNING: the graceful stop wrote no snapshot (the restart replays the WAL)")
        print(f"WAL after the newest snapshot, to replay: {tail_mb(root):,.0f} MB")
        node.start(wait_ready=False)
        ready_s = wait_ready(node, 600)
        for line in node.log_tail(200_000).splitlines():
            if '"recovery' in line:  # "recovery complete" and any "recovery took" warning
                print("log:", line[:400])
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"load average after: {loadavg()}")
    verdict(f"seconds to /ready after {how}", ready_s, GOAL_READY_S, higher_is_better=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    for name in ("creates", "creates-sync", "creates-sustained"):
        p = sub.add_parser(name)
        p.add_argument(
            "--reference",
            metavar="REV",
            help="first run the row on this commit's code (git archive), then print ratios",
        )
        p.add_argument("--sync-mode", choices=("batch", "sync"), default=None)
        p.add_argument("--duration", type=int, default=SUSTAINED_S if "sus" in name else 10)
        p.add_argument("--connections", type=int, default=64)
        p.add_argument("--py-spy", metavar="FILE", help="record a py-spy profile of the node")
    p = sub.add_parser("mixed")
    p.add_argument("--reference", metavar="REV")
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--tokens", type=int, default=10_000)
    p = sub.add_parser("resp-create")
    p.add_argument("--reference", metavar="REV")
    p.add_argument("--pipelines", type=int, default=50)
    p.add_argument("--pipeline", type=int, default=1000)
    p = sub.add_parser("resp-validate-distinct")
    p.add_argument("-n", type=int, default=1_000_000)
    p.add_argument("-c", type=int, default=50)
    p.add_argument("--distinct", type=int, default=10_000)
    p.add_argument("--value-size", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--python-too",
        action="store_true",
        help="also run a node on the pure-Python path (TOKMESH_ACCEL=0) in every round",
    )
    p = sub.add_parser("restart")
    p.add_argument("--sessions", type=int, default=1_000_000)
    p.add_argument("--signal", choices=("term", "kill", "both"), default="both")
    p = sub.add_parser("all")
    p = sub.add_parser("_fill")
    p.add_argument("config")
    p.add_argument("n", type=int)
    a = ap.parse_args()
    for tool in ("wrk", "redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install -y wrk redis-server redis-tools)")
    if a.what in ("creates", "creates-sync", "creates-sustained"):
        mode = a.sync_mode or ("sync" if a.what == "creates-sync" else "batch")
        with_reference(a.reference, lambda: run_creates(mode, a.duration, a.connections, a.py_spy))
    elif a.what == "mixed":
        with_reference(a.reference, lambda: run_mixed(a.duration, a.connections, a.tokens))
    elif a.what == "resp-create":
        with_reference(a.reference, lambda: run_resp_create(a.pipelines, a.pipeline))
    elif a.what == "resp-validate-distinct":
        run_resp_validate_distinct(a.n, a.c, a.distinct, a.value_size, a.rounds, a.python_too)
    elif a.what == "restart":
        hows = {"term": ["SIGTERM"], "kill": ["kill -9"], "both": ["SIGTERM", "kill -9"]}
        for how in hows[a.signal]:
            run_restart(a.sessions, how)
    elif a.what == "all":
        run_creates("batch", 10, 64)
        run_creates("sync", 10, 64)
        run_creates("batch", SUSTAINED_S, 64)
        run_mixed(10, 64, 10_000)
        run_resp_create(50, 1000)
        run_resp_validate_distinct(1_000_000, 50, 10_000, 300, 3)
        run_restart(1_000_000, "SIGTERM")
        run_restart(1_000_000, "kill -9")
    elif a.what == "_fill":
        fill_node(a.config, a.n)


if __name__ == "__main__":
    main()
