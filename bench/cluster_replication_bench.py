"""Cluster part 2 (issue 13, acceptance 7): replication cost per write, failover time, and a
3-node throughput run with the per-node CPU and the model for N nodes.

    python bench/cluster_replication_bench.py [--writes 10000] [--rounds 2]
        [--failover-runs 10] [--failover-runs-5s 10] [--coordinator-runs 3]
        [--duration 10] [--connections 48] [--tokens 6000] [--skip cost,failover,throughput]

One invocation runs the three parts and prints Markdown tables and ratios:

1. **Replication cost per write.** Three 2-node clusters side by side (one etcd): RF 1,
   RF 2 (``ack: revoke``, creates replicated asynchronously) and RF 2 with ``ack:
   replica`` (every write waits for a replica). wrk posts ``POST /sessions`` of distinct
   random users whose shard node 1 owns, to node 1, a fixed number per run (each wrk
   thread stops itself after its quota); then the bench waits until node 1's replication
   queues are empty. CPU of both nodes (owner, replica) from ``/proc/<pid>/stat``
   (utime + stime) before/after, minus each node's idle CPU rate (measured just before
   over 2 s) times the elapsed time, divided by the creates: µs per write. The clusters
   run in turn, ``--rounds`` times, so a change in the machine's load hits all three.
2. **Failover time.** A fresh 3-node cluster, RF 2, per run: a token whose shard a
   non-coordinator node owns is created and replicated, the owner is killed (SIGKILL),
   and a survivor (not the shard's backup when there is one, so the request goes
   through the new map and a forward) is asked ``POST /tokens/validate`` every 20 ms
   until it answers 200 or 401: seconds from the kill to that answer; also when the
   shard map in etcd named a new owner. With ``cluster.etcd.lease_ttl`` 2 s and 5 s (the
   default). ``--coordinator-runs`` more runs at 2 s kill the coordinator itself.
3. **Throughput, 3 nodes vs standalone.** A 3-node cluster (RF 2, ``ack: revoke``) and a
   standalone node, each loaded in turn by three wrk processes (``-t1``, a third of
   ``--connections`` each; one per node for the cluster, all on the one node standalone):
   80% ``POST /tokens/validate`` of distinct tokens made beforehand, 20% ``POST
   /sessions`` of distinct users. The cluster runs twice: clients on random nodes (each
   wrk sends every token and user to its node, so (N-1)/N of the requests are
   forwarded) and owner-routed (each wrk sends only tokens and users of its node's
   shards: nothing forwarded). Per node: requests entered, CPU µs per request; for the
   cluster, all nodes' CPU over all requests; efficiency = standalone CPU/req ÷ cluster
   CPU/req; then the model for N nodes on N machines, with the cost of a forwarded
   request taken from the difference of the two cluster runs.

Everything runs on this machine: etcd on free loopback ports, ``tokmesh-server``
processes (batch WAL sync, mTLS between nodes from one ``trustme`` CA, via
``tests/cluster/cluster_support.TestCluster``), wrk on the same cores. The load average
is printed next to every figure. Rebalance throughput against ``max_rate`` is not
measured: live shards do not move yet.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import (
    WRK_DONE_LUA,
    ServerProcess,
    free_port,
    loadavg,
    parse_wrk,
    process_cpu_seconds,
    wrk_command,
)
from cluster_bench import keys, users_owned_by

from tests.cluster.cluster_support import ClusterNodeProcess, TestCluster
from tests.cluster.conftest import EtcdMember
from tokmesh.domain.tokens import token_shard

#: Adds the mean latency (ms) to what :data:`WRK_DONE_LUA` prints: with a fixed number
#: of requests wrk still runs for its whole ``-d``, so the rate of a quota run is taken
#: from Little's law (connections / mean latency).
MEAN_LUA = r"""
local done_base = done
done = function(summary, latency, requests)
  io.write(string.format("MEAN %.4f\n", latency.mean / 1000.0))
  done_base(summary, latency, requests)
end
"""

#: ``POST /sessions`` of the users in ``TM_INPUTS``, ``TM_QUOTA`` per thread (each thread
#: takes its own slice of the file and stops itself once it has that many answers).
CREATE_LUA = (
    r"""
local headers = {["Authorization"] = "Bearer " .. os.getenv("TM_AUTH"),
                 ["Content-Type"] = "application/json"}
local quota = tonumber(os.getenv("TM_QUOTA"))
local inputs = {}
for line in io.lines(os.getenv("TM_INPUTS")) do inputs[#inputs + 1] = line end
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local sent, got, offset = 0, 0, 0
init = function(args)
  offset = ((tid or 1) - 1) * quota
end
request = function()
  sent = sent + 1
  local user = inputs[(offset + sent - 1) % #inputs + 1]
  return wrk.format("POST", "/sessions", headers, '{"user_id":"' .. user .. '"}')
end
response = function(status, headers, body)
  got = got + 1
  if got >= quota then wrk.thread:stop() end
end
"""
    + WRK_DONE_LUA
    + MEAN_LUA
)

#: 80% ``POST /tokens/validate`` (the tokens of ``TM_INPUTS``, from offset ``TM_OFFSET``),
#: 20% ``POST /sessions`` of a user no other request uses (``TM_PREFIX`` + counter), or of
#: the users of ``TM_USERS`` in turn when that names a file.
MIXED_LUA = (
    r"""
local headers = {["Authorization"] = "Bearer " .. os.getenv("TM_AUTH"),
                 ["Content-Type"] = "application/json"}
local prefix = os.getenv("TM_PREFIX")
local offset = tonumber(os.getenv("TM_OFFSET"))
local tokens = {}
for line in io.lines(os.getenv("TM_INPUTS")) do tokens[#tokens + 1] = line end
local users = {}
if os.getenv("TM_USERS") ~= "" then
  for line in io.lines(os.getenv("TM_USERS")) do users[#users + 1] = line end
end
local n = 0
request = function()
  n = n + 1
  if n % 5 == 0 then
    local user = prefix .. n
    if #users > 0 then user = users[(n / 5) % #users + 1] end
    return wrk.format("POST", "/sessions", headers, '{"user_id":"' .. user .. '"}')
  end
  local tok = tokens[(n + offset) % #tokens + 1]
  return wrk.format("POST", "/tokens/validate", headers, '{"token":"' .. tok .. '"}')
end
"""
    + WRK_DONE_LUA
)


# -- processes ---------------------------------------------------------------------------------


def start_etcd(root: Path) -> EtcdMember:
    """One etcd member on free loopback ports."""
    member = EtcdMember(root / "etcd", "bench", free_port(), free_port())
    member.start()
    return member


def make_cluster(
    root: Path, etcd: EtcdMember, size: int, rf: int, ack: str, lease: str
) -> TestCluster:
    """A cluster (not started) of ``size`` nodes: batch WAL sync, lease ``lease``."""
    prefix = f"/tm-bench-{root.parent.name}-{root.name}-{uuid.uuid4().hex[:8]}/"
    c = TestCluster(root, etcd, size, prefix, replication_factor=rf, ack=ack)
    for node in c.nodes:
        node.config["cluster"]["etcd"]["lease_ttl"] = lease
        node.config["storage"]["wal"]["sync_mode"] = "batch"
    return c


#: Nodes that exited on their own during the run: (where, the log's last error line).
CRASHES: list[tuple[str, str]] = []


def last_error(node: ServerProcess) -> str:
    """The last line of ``node``'s log that names an exception (or its last line)."""
    lines = node.log_tail(20_000).splitlines() or [""]
    hits = [ln.strip(" |") for ln in lines if any(w in ln for w in ("Error", "ERROR", "Exception"))]
    return (hits or lines)[-1][:300]


def note_crashes(where: str, nodes: list[ClusterNodeProcess]) -> int:
    """Record every node of ``nodes`` that exited on its own; returns how many did."""
    dead = [n for n in nodes if n.proc is not None and n.proc.poll() is not None]
    for n in dead:
        CRASHES.append((f"{where} {n.node_id} (exit {n.proc.returncode if n.proc else '?'})",
                        last_error(n)))  # fmt: skip
    return len(dead)


def start_cluster(
    root: Path, etcd: EtcdMember, size: int, rf: int, ack: str, lease: str
) -> TestCluster:
    """:func:`make_cluster` started; a node that exits while starting is recorded in
    :data:`CRASHES` and the cluster started afresh (3 attempts)."""
    for attempt in range(3):
        c = make_cluster(root / f"try{attempt}", etcd, size, rf, ack, lease)
        try:
            c.start(90)
            return c
        except (RuntimeError, TimeoutError):
            if not note_crashes(f"start of {root.name}", c.nodes):
                end(c.nodes, graceful=False)
                raise
            print(f"  (a node of {root.name} exited while starting: {CRASHES[-1][1]})")
            end(c.nodes, graceful=False)
    raise RuntimeError(f"{root.name}: no clean start in 3 attempts")


def end(nodes: list[ClusterNodeProcess] | list[ServerProcess], graceful: bool = True) -> None:
    """Stop ``nodes`` all at once (SIGTERM, or SIGKILL when not ``graceful``)."""
    procs = [n.proc for n in nodes if n.proc is not None and n.proc.poll() is None]
    for p in procs:
        p.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    for n in nodes:
        n.proc = None


def pid(node: ServerProcess) -> int:
    """The process id of a running node."""
    assert node.proc is not None
    return node.proc.pid


def status(node: ServerProcess, key: str) -> dict[str, Any]:
    """``GET /admin/v1/cluster/status`` of ``node``."""
    r = httpx.get(
        node.base_url + "/admin/v1/cluster/status",
        headers={"Authorization": f"Bearer {key}"},
        timeout=5,
    )
    r.raise_for_status()
    return dict(r.json()["data"])


def wait_drained(nodes: list[ClusterNodeProcess], key: str, timeout: float = 60) -> float:
    """Wait until no node has anything queued for a replica; returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        queued = sum(
            p["queued"] for n in nodes for p in status(n, key)["replication"]["peers"].values()
        )
        if queued == 0:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"replication queues not empty after {timeout} s ({queued})")
        time.sleep(0.05)


def etcd_get(c: TestCluster, name: str) -> str:
    """The value of ``<prefix><name>`` in etcd, as text ("" when absent)."""
    key = base64.b64encode((c.prefix + name).encode()).decode()
    r = httpx.post(c.etcd.url + "/v3/kv/range", json={"key": key}, timeout=5)
    kvs = r.json().get("kvs") or []
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else ""


def cpu(nodes: list[ClusterNodeProcess] | list[ServerProcess]) -> list[float]:
    """CPU seconds (user + sys) of each node so far."""
    return [process_cpu_seconds(pid(n)) for n in nodes]


def wrk_run(
    url: str,
    script: Path,
    env: dict[str, str],
    duration: int,
    connections: int,
    threads: int,
) -> subprocess.Popen[str]:
    """A wrk process (started, not waited for)."""
    return subprocess.Popen(
        wrk_command(url, script, duration, connections, threads),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, **env),
    )


def header(what: str) -> None:
    """A part's title with the machine and its load."""
    print(f"\n== {what}")
    print(f"machine: {os.cpu_count()} cores, load average {loadavg()}", flush=True)


# -- 1. replication cost per write --------------------------------------------------------------


def part_cost(args: argparse.Namespace, root: Path, etcd: EtcdMember) -> dict[str, float]:
    """µs of CPU per create on the owner and the replica, RF 1 / RF 2 / RF 2 ack replica;
    returns the mean total µs per write of each configuration."""
    configs = [("RF 1", 1, "revoke"), ("RF 2, ack revoke", 2, "revoke"),
               ("RF 2, ack replica", 2, "replica")]  # fmt: skip
    header(
        f"1. replication cost per write: 2-node clusters, {args.writes:,} creates per run to "
        f"the owner (node 1), wrk -t2 -c{args.cost_connections}, {args.rounds} rounds"
    )
    work = root / "cost"
    work.mkdir()
    script = work / "create.lua"
    script.write_text(CREATE_LUA)
    clusters: list[tuple[str, TestCluster, str, str, list[str]]] = []
    try:
        for label, rf, ack in configs:
            c = start_cluster(work / f"rf{rf}{ack}", etcd, 2, rf, ack, "5s")
            clusters.append((label, c, "", "", []))
        ready: list[tuple[str, TestCluster, str, str, list[str]]] = []
        for label, c, _, _, _ in clusters:
            n1, n2 = c.nodes
            issuer, _ = keys(n1, [n2])
            admin = n1.admin_key or ""
            smap = c.shard_map()
            need = args.writes * args.rounds + 2_000
            users = users_owned_by(smap, n1.node_id, need, f"{len(ready)}x")
            ready.append((label, c, issuer, admin, users))
            held = sorted({b for s in smap.shards_of(n1.node_id) for b in smap.backups[s]})
            print(f"{label}: shards {smap.counts()}; backups of node 1's shards: {held}")
        used = {label: 0 for label, *_ in ready}

        def run(label: str, c: TestCluster, issuer: str, admin: str, users: list[str],
                writes: int) -> dict[str, Any]:  # fmt: skip
            data = work / f"users-{label.replace(' ', '').replace(',', '')}.txt"
            start = used[label]
            data.write_text("\n".join(users[start : start + writes]) + "\n")
            used[label] = start + writes
            quota = writes // 2
            duration = max(8, int(writes / 600))
            nodes = c.nodes
            idle0, t_idle = cpu(nodes), time.monotonic()
            time.sleep(2.0)
            idle_rate = [
                (b - a) / (time.monotonic() - t_idle)
                for a, b in zip(idle0, cpu(nodes), strict=True)
            ]
            load = loadavg()
            cpu0, t0 = cpu(nodes), time.monotonic()
            env = {"TM_AUTH": issuer, "TM_INPUTS": str(data), "TM_QUOTA": str(quota)}
            wrk = wrk_run(nodes[0].base_url, script, env, duration, args.cost_connections, 2)
            out, _ = wrk.communicate(timeout=duration + 60)
            drain = wait_drained(nodes, admin)
            time.sleep(0.3)
            cpu1, t1 = cpu(nodes), time.monotonic()
            r = parse_wrk(out, duration)
            mean_ms = float(out.split("MEAN ")[1].split()[0])
            n = max(r["requests"], 1)
            used_cpu = [
                max(b - a - rate * (t1 - t0), 0.0)
                for a, b, rate in zip(cpu0, cpu1, idle_rate, strict=True)
            ]
            return {
                "label": label,
                "requests": r["requests"],
                "non2xx": r["non2xx"] + r["socket_errors"],
                "rate": args.cost_connections / (mean_ms / 1000) if mean_ms else 0.0,
                "p50": r["p50_ms"],
                "p99": r["p99_ms"],
                "owner_us": used_cpu[0] / n * 1e6,
                "replica_us": used_cpu[1] / n * 1e6,
                "idle_us_s": [x * 1e6 for x in idle_rate],
                "drain_s": drain,
                "load": load,
            }

        for label, c, issuer, admin, users in ready:  # warm-up: caches, full copies done
            run(label, c, issuer, admin, users, 2_000)
        results: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in ready}
        print()
        print("| round | config | creates | ≈creates/s | P50 ms | P99 ms | owner µs/write | "
              "replica µs/write | total µs/write | drain s | load avg |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for rnd in range(args.rounds):
            for label, c, issuer, admin, users in ready:
                res = run(label, c, issuer, admin, users, args.writes)
                results[label].append(res)
                print(
                    f"| {rnd + 1} | {label} | {res['requests']:,} | {res['rate']:,.0f} | "
                    f"{res['p50']:.2f} | {res['p99']:.2f} | {res['owner_us']:.1f} | "
                    f"{res['replica_us']:.1f} | {res['owner_us'] + res['replica_us']:.1f} | "
                    f"{res['drain_s']:.2f} | {res['load']} |"
                    + (f" non-2xx {res['non2xx']}" if res["non2xx"] else ""),
                    flush=True,
                )
        mean: dict[str, dict[str, float]] = {}
        for label, runs in results.items():
            mean[label] = {
                k: statistics.fmean(r[k] for r in runs)
                for k in ("owner_us", "replica_us", "p50", "p99", "rate")
            }
        base = mean["RF 1"]
        print()
        print("| config (mean of rounds) | owner µs/write | replica µs/write | total | "
              "Δ owner vs RF 1 | Δ replica | Δ total | P50 ms | P99 ms | ≈creates/s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|")
        totals: dict[str, float] = {}
        for label, m in mean.items():
            tot = m["owner_us"] + m["replica_us"]
            totals[label] = tot
            btot = base["owner_us"] + base["replica_us"]
            print(
                f"| {label} | {m['owner_us']:.1f} | {m['replica_us']:.1f} | {tot:.1f} | "
                f"{m['owner_us'] - base['owner_us']:+.1f} | "
                f"{m['replica_us'] - base['replica_us']:+.1f} | {tot - btot:+.1f} "
                f"(×{tot / btot:.2f}) | {m['p50']:.2f} | {m['p99']:.2f} | {m['rate']:,.0f} |"
            )
        idle = [r["idle_us_s"] for runs in results.values() for r in runs]
        lo, hi = min(min(i) for i in idle), max(max(i) for i in idle)
        print(
            f"idle CPU subtracted: {lo:.0f}–{hi:.0f} µs per second per node; "
            f"load average after: {loadavg()}"
        )
        return totals
    finally:
        for _, c, *_ in clusters:
            end(c.nodes)


# -- 2. failover -------------------------------------------------------------------------------


def failover_once(
    root: Path, etcd: EtcdMember, lease: str, kill_coordinator: bool
) -> dict[str, Any]:
    """One failover on a fresh 3-node RF 2 cluster (see the module doc)."""
    c = start_cluster(root, etcd, 3, 2, "revoke", lease)
    try:
        admin = c.admin_key()
        coordinator = etcd_get(c, "coordinator")
        smap = c.shard_map()
        others = [n for n in c.nodes if n.node_id != coordinator and smap.shards_of(n.node_id)]
        victim = c.node(coordinator) if kill_coordinator else random.choice(others)
        survivors = [n for n in c.nodes if n is not victim]
        headers = {"Authorization": f"Bearer {admin}"}
        # a token of a random user whose shard the victim owns, made through a survivor
        user = users_owned_by(smap, victim.node_id, 1, "fo")[0]
        with httpx.Client(base_url=survivors[0].base_url, headers=headers, timeout=5) as h:
            r = h.post("/sessions", json={"user_id": user, "ttl_seconds": 3600})
            r.raise_for_status()
            token = r.json()["data"]["token"]
        shard = token_shard(token)
        assert smap.owner(shard) == victim.node_id, "token not in the victim's shard"
        backups = smap.backups[shard]
        entry = next((n for n in survivors if n.node_id not in backups), survivors[0])
        wait_drained([victim], admin)
        client = httpx.Client(base_url=entry.base_url, headers=headers, timeout=2)
        assert client.post("/tokens/validate", json={"token": token}).status_code == 200
        map_moved: list[float] = []
        stop = threading.Event()

        def watch_map(killed: float) -> None:
            while not stop.is_set():
                try:
                    if c.shard_map().owner(shard) != victim.node_id:
                        map_moved.append(time.monotonic() - killed)
                        return
                except (httpx.HTTPError, AssertionError, KeyError, ValueError):
                    pass
                time.sleep(0.02)

        load = loadavg()
        assert victim.proc is not None
        killed = time.monotonic()
        victim.proc.kill()
        watcher = threading.Thread(target=watch_map, args=(killed,), daemon=True)
        watcher.start()
        seen: Counter[str] = Counter()
        answer = 0
        try:
            while time.monotonic() - killed < 60:
                try:
                    r = client.post("/tokens/validate", json={"token": token})
                    if r.status_code in (200, 401):
                        answer = r.status_code
                        break
                    seen[f"{r.status_code} {r.json().get('code', '')}"] += 1
                except httpx.HTTPError as exc:
                    seen[type(exc).__name__] += 1
                time.sleep(0.02)
            moved = time.monotonic() - killed
        finally:
            client.close()
        watcher.join(5)
        stop.set()
        victim.proc.wait(10)
        victim.proc = None
        crashed = note_crashes(f"failover {root.name}", c.nodes)
        return {
            "crashed": crashed,
            "moved_s": moved if answer else float("nan"),
            "map_s": map_moved[0] if map_moved else float("nan"),
            "answer": answer,
            "meanwhile": dict(seen),
            "victim_is_coordinator": victim.node_id == coordinator,
            "entry_is_backup": entry.node_id in backups,
            "load": load,
        }
    finally:
        end(c.nodes, graceful=False)


def part_failover(args: argparse.Namespace, root: Path, etcd: EtcdMember) -> None:
    """Failover time over several runs, lease 2 s and 5 s (and the coordinator killed)."""
    header("2. failover: fresh 3-node RF 2 cluster per run, kill -9 a shard owner")
    plan = [("2s", args.failover_runs, False), ("5s", args.failover_runs_5s, False),
            ("2s", args.coordinator_runs, True)]  # fmt: skip
    print("| lease | victim | run | map in etcd s | traffic moved s | answer | "
          "meanwhile at the survivor | load avg |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    summary: list[str] = []
    for lease, runs, coord in plan:
        moved: list[float] = []
        mapped: list[float] = []
        for i in range(runs):
            res = failover_once(root / f"fo-{lease}-{int(coord)}-{i}", etcd, lease, coord)
            moved.append(res["moved_s"])
            mapped.append(res["map_s"])
            who = "coordinator" if res["victim_is_coordinator"] else "owner"
            print(
                f"| {lease} | {who} | {i + 1} | {res['map_s']:.2f} | {res['moved_s']:.2f} | "
                f"{res['answer']} | {res['meanwhile']} | {res['load']} |"
                + (f" {res['crashed']} survivor(s) crashed" if res["crashed"] else ""),
                flush=True,
            )
        moved = [x for x in moved if x == x]  # a run whose probe never answered is NaN
        mapped = [x for x in mapped if x == x]
        if moved and mapped:
            failed = f" ({runs - len(moved)} never answered)" if len(moved) < runs else ""
            summary.append(
                f"| {lease} | {'coordinator' if coord else 'owner (not coordinator)'} | {runs}"
                f"{failed} | {statistics.median(mapped):.2f} / {max(mapped):.2f} "
                f"| {statistics.median(moved):.2f} | {min(moved):.2f} | {max(moved):.2f} |"
            )
    print()
    print("| lease | victim | runs | map in etcd median / max s | traffic moved median s "
          "| min s | max s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    print("\n".join(summary))
    print(f"load average after: {loadavg()}")


# -- 3. throughput -----------------------------------------------------------------------------


def make_tokens(
    nodes: list[ClusterNodeProcess] | list[ServerProcess], key: str, n: int
) -> list[str]:
    """``n`` sessions of distinct random users, made through the nodes in turn."""

    def make(i: int) -> list[str]:
        node = nodes[i % len(nodes)]
        out = []
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=node.base_url, headers=headers, timeout=10) as h:
            for _ in range(n // 8):
                user = f"t{random.getrandbits(64):016x}"
                r = h.post("/sessions", json={"user_id": user})
                r.raise_for_status()
                out.append(r.json()["data"]["token"])
        return out

    with ThreadPoolExecutor(8) as pool:
        tokens = [t for part in pool.map(make, range(8)) for t in part]
    random.shuffle(tokens)
    return tokens


def mixed_run(
    targets: list[ServerProcess],
    watch: list[ServerProcess],
    work: Path,
    key: str,
    inputs: list[tuple[Path, Path | None]],
    duration: int,
    connections: int,
) -> dict[str, Any]:
    """Three wrk processes (one per target) at once; figures per target and CPU per node.
    ``inputs``: per target, its tokens file and its users file (``None``: made-up users)."""
    script = work / "mixed.lua"
    script.write_text(MIXED_LUA)
    per = max(connections // len(targets), 1)
    load = loadavg()
    cpu0 = cpu(watch)
    procs = []
    for i, (node, (tokens, users)) in enumerate(zip(targets, inputs, strict=True)):
        env = {
            "TM_AUTH": key,
            "TM_INPUTS": str(tokens),
            "TM_USERS": str(users) if users else "",
            "TM_OFFSET": str(i * 1000),
            "TM_PREFIX": f"m{random.getrandbits(40):010x}w{i}n",
        }
        procs.append(wrk_run(node.base_url, script, env, duration, per, 1))
    outs = [p.communicate(timeout=duration + 60)[0] for p in procs]
    used = [b - a for a, b in zip(cpu0, cpu(watch), strict=True)]
    runs = [parse_wrk(o, duration) for o in outs]
    total = sum(r["requests"] for r in runs)
    return {
        "rps": total / duration,
        "entered": [r["requests"] for r in runs],
        "p99": max(r["p99_ms"] for r in runs),
        "p50": statistics.median(r["p50_ms"] for r in runs),
        "bad": sum(r["non2xx"] + r["socket_errors"] for r in runs),
        "cpu_s": used,
        "cpu_us_req": sum(used) / max(total, 1) * 1e6,
        "cores": sum(used) / duration,
        "load": load,
    }


def part_throughput(
    args: argparse.Namespace, root: Path, etcd: EtcdMember, repl_us: float | None
) -> None:
    """A 3-node RF 2 cluster vs a standalone node under the same mixed load."""
    header(
        f"3. throughput: 3-node cluster RF 2 vs standalone, 80% validate / 20% create, "
        f"3 × wrk -t1 -c{args.connections // 3} -d{args.duration}s, {args.rounds} rounds"
    )
    work = root / "tp"
    work.mkdir()
    c = start_cluster(work / "cluster", etcd, 3, 2, "revoke", "5s")
    sa = ServerProcess(
        work / "standalone",
        {"storage": {"wal": {"sync_mode": "batch"}},
         "security": {"auth": {"argon2": {"memory": 8192, "iterations": 1, "parallelism": 1}}}},
    )  # fmt: skip
    try:
        sa.start()
        c_key, _ = keys(c.nodes[0], list(c.nodes[1:]))
        s_key, _ = keys(sa, [])
        admin = c.nodes[0].admin_key or ""
        t_cluster = work / "tokens-cluster.txt"
        t_cluster.write_text("\n".join(make_tokens(c.nodes, c_key, args.tokens)) + "\n")
        t_sa = work / "tokens-standalone.txt"
        t_sa.write_text("\n".join(make_tokens([sa], s_key, args.tokens)) + "\n")
        wait_drained(c.nodes, admin)
        smap = c.shard_map()
        print(f"{args.tokens:,} distinct tokens made on each; shards {smap.counts()}")
        # owner-routed: each node gets only tokens and users of the shards it owns
        owned: dict[str, list[str]] = {node.node_id: [] for node in c.nodes}
        for tok in t_cluster.read_text().split():
            owned[smap.owner(token_shard(tok))].append(tok)
        routed_tokens = []
        for node in c.nodes:
            path = work / f"tokens-{node.node_id}.txt"
            path.write_text("\n".join(owned[node.node_id]) + "\n")
            routed_tokens.append(path)
        print()
        print("| round | setup | req/s | P50 ms | P99 ms | requests entered per node | "
              "CPU µs per entered request, per node | CPU µs/req (all nodes) | "
              "cores used by the server(s) | non-2xx | load avg |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        setups = ("standalone", "cluster, clients on random nodes", "cluster, owner-routed")
        res: dict[str, list[dict[str, Any]]] = {label: [] for label in setups}
        for rnd in range(args.rounds):
            for label in setups:
                if label == "standalone":
                    r = mixed_run([sa, sa, sa], [sa], work, s_key, [(t_sa, None)] * 3,
                                  args.duration, args.connections)  # fmt: skip
                    per = f"{r['cpu_us_req']:.0f}"
                    entered = f"{sum(r['entered']):,}"
                else:
                    targets: list[ServerProcess] = list(c.nodes)
                    if label.endswith("routed"):
                        ins: list[tuple[Path, Path | None]] = []
                        for i, node in enumerate(c.nodes):
                            users = work / f"users-{node.node_id}.txt"
                            mine = users_owned_by(smap, node.node_id, 8_000, f"r{rnd}{i}x")
                            users.write_text("\n".join(mine) + "\n")
                            ins.append((routed_tokens[i], users))
                    else:
                        ins = [(t_cluster, None)] * 3
                    r = mixed_run(targets, targets, work, c_key, ins, args.duration,
                                  args.connections)  # fmt: skip
                    per = " / ".join(
                        f"{s / max(e, 1) * 1e6:.0f}"
                        for s, e in zip(r["cpu_s"], r["entered"], strict=True)
                    )
                    entered = " / ".join(f"{e:,}" for e in r["entered"])
                res[label].append(r)
                print(
                    f"| {rnd + 1} | {label} | {r['rps']:,.0f} | {r['p50']:.2f} | "
                    f"{r['p99']:.2f} | {entered} | {per} | {r['cpu_us_req']:.1f} | "
                    f"{r['cores']:.2f} | {r['bad']} | {r['load']} |",
                    flush=True,
                )
        s = statistics.fmean(r["cpu_us_req"] for r in res[setups[0]])
        cl = statistics.fmean(r["cpu_us_req"] for r in res[setups[1]])
        rt = statistics.fmean(r["cpu_us_req"] for r in res[setups[2]])
        rps = {label: statistics.fmean(r["rps"] for r in res[label]) for label in setups}
        print()
        for label, cost in zip(setups, (s, cl, rt), strict=True):
            print(
                f"{label}: {rps[label]:,.0f} req/s, {cost:.1f} CPU µs/req (sum of nodes), "
                f"efficiency {s / cost:.3f}, throughput vs standalone on this box "
                f"{rps[label] / rps[setups[0]]:.2f}"
            )
        w = 0.2
        repl = repl_us or 0.0
        n = 3
        fwd = (cl - rt) * n / (n - 1)
        other = rt - s - w * repl
        print(
            f"model: CPU/req(N) = {rt:.1f} (owner-routed 3-node cluster: standalone {s:.1f} "
            f"+ {w} × {repl:.1f} replication per write (part 1) + {other:.1f} the rest: "
            f"cluster mode, 3 servers on 2 cores) + (N-1)/N × {fwd:.1f} (extra CPU of a "
            f"forwarded request, measured: (random - routed) × N/(N-1) at N = 3)"
        )
        print("| N | forwarded (random entry) | CPU µs/req | efficiency | "
              "throughput ≈ N × single × eff | owner-routed: N × single × eff |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for nn in (1, 2, 3, 5, 10, 20):
            f = (nn - 1) / nn
            cost = s if nn == 1 else rt + f * fwd
            e = s / cost
            er = 1.0 if nn == 1 else s / rt
            print(
                f"| {nn} | {f:.2f} | {cost:.1f} | {e:.2f} | {nn * e:.2f} × single | "
                f"{nn * er:.2f} × single |"
            )
        print(f"load average after: {loadavg()}")
    finally:
        end([sa])
        end(c.nodes)


def main() -> None:
    """Run the parts asked for, in one go."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--writes", type=int, default=10_000, help="creates per cost run")
    ap.add_argument("--cost-connections", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--failover-runs", type=int, default=10, help="runs at lease 2 s")
    ap.add_argument("--failover-runs-5s", type=int, default=10, help="runs at lease 5 s")
    ap.add_argument("--coordinator-runs", type=int, default=3, help="coordinator killed, 2 s")
    ap.add_argument("--duration", type=int, default=10, help="seconds per throughput run")
    ap.add_argument("--connections", type=int, default=48, help="throughput: total wrk -c")
    ap.add_argument("--tokens", type=int, default=6_000)
    ap.add_argument("--skip", default="", help="comma-separated: cost,failover,throughput")
    args = ap.parse_args()
    if shutil.which("wrk") is None or shutil.which("etcd") is None:
        sys.exit("needs wrk and etcd on PATH")
    skip = set(filter(None, args.skip.split(",")))
    started = time.monotonic()
    print(f"cluster_replication_bench: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
          f"{os.cpu_count()} cores, load average {loadavg()}")  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="tm-crb-"))
    etcd = start_etcd(root)
    try:
        totals = part_cost(args, root, etcd) if "cost" not in skip else {}
        if "failover" not in skip:
            part_failover(args, root, etcd)
        if "throughput" not in skip:
            repl = None
            if totals:
                repl = totals["RF 2, ack revoke"] - totals["RF 1"]
            part_throughput(args, root, etcd, repl)
    finally:
        etcd.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nnodes that exited on their own: {len(CRASHES)}")
    for where, why in CRASHES:
        print(f"  {where}: {why}")
    print(f"\ntotal {time.monotonic() - started:.0f} s; load average at the end {loadavg()}")


if __name__ == "__main__":
    main()
