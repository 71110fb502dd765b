"""Cluster benchmarks (issue 12): the cost of forwarding, and cluster mode vs standalone.

    python bench/cluster_bench.py forward [--duration 8] [--connections 1,32] [--py-spy DIR]
    python bench/cluster_bench.py local   [--duration 10] [--connections 64] [--rounds 2]
                                          [--mode validate|create] [--py-spy DIR]
    python bench/cluster_bench.py rss     [--sessions 1000000]

``forward``: a 2-node cluster on one etcd. wrk sends ``POST /tokens/validate`` (distinct
tokens made beforehand) and ``POST /sessions`` (distinct users) to node 1, once with
inputs whose shard node 1 owns (answered locally) and once with inputs node 2 owns
(forwarded one hop over the mTLS cluster port). For each it prints P50/P99 and the CPU
µs per request of both nodes, from ``/proc/<pid>/stat``, and the difference.

``local``: the acceptance "a node in cluster mode serves local validations within 10% of
standalone throughput". A standalone node and a 1-node cluster (``expect_nodes: 1``, so it
owns every shard) run side by side; the same wrk command validates distinct tokens on
each, alternately, ``--rounds`` times. ``--mode create`` does the same with creates of
distinct users (information, no goal).

``rss``: the acceptance "RSS within 10% of standalone": RSS of a standalone node and of
a 1-node cluster node after ``--sessions`` ``TM.CREATE`` of distinct users (RESP
pipelines of 1,000 on several connections).

Everything runs here: etcd on free loopback ports, certificates from one ``trustme`` CA,
``tokmesh-server`` processes with batch WAL sync. The load generator shares the cores
with the servers; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import resp_client
from _server import (
    WRK_DONE_LUA,
    ServerProcess,
    free_port,
    loadavg,
    parse_wrk,
    process_cpu_seconds,
    wrk_command,
)

from tokmesh.cluster.shard_map import ShardMap
from tokmesh.domain.ids import new_session_id
from tokmesh.domain.shards import shard_of
from tokmesh.domain.tokens import token_shard

#: Goals of issue 12, acceptance 5: cluster mode within 10% of standalone (throughput
#: ratio at least, RSS ratio at most).
GOAL_RATIO = 0.9
GOAL_RSS_RATIO = 1.1

#: ``TM_MODE=validate`` cycles over the tokens of ``TM_INPUTS``; ``create`` posts one
#: session per line of ``TM_INPUTS`` (a user id), each thread starting at its own offset
#: so that no user is reused within a run while the file lasts.
LUA = (
    r"""
local mode = os.getenv("TM_MODE")
local headers = {["Authorization"] = "Bearer " .. os.getenv("TM_AUTH"),
                 ["Content-Type"] = "application/json"}
local inputs = {}
for line in io.lines(os.getenv("TM_INPUTS")) do inputs[#inputs + 1] = line end
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n, offset = 0, 0
init = function(args)
  offset = ((tid or 1) - 1) * math.floor(#inputs / 4)
end
request = function()
  n = n + 1
  local item = inputs[(n + offset) % #inputs + 1]
  if mode == "validate" then
    return wrk.format("POST", "/tokens/validate", headers, '{"token":"' .. item .. '"}')
  end
  return wrk.format("POST", "/sessions", headers, '{"user_id":"' .. item .. '"}')
end
"""
    + WRK_DONE_LUA
)


# -- processes ---------------------------------------------------------------------------------


class Etcd:
    """One ``etcd`` member on free loopback ports, data in a temp dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        """Start etcd and wait until ``/health`` says true."""
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            "etcd", "--name", "bench", "--data-dir", str(self.root / "etcd-data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"bench={peer}", "--log-level", "warn",
        ]  # fmt: skip
        with open(self.root / "etcd.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=0.5).json().get("health") == "true":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError("etcd not healthy in 20 s")

    def stop(self) -> None:
        """Stop etcd."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


class Cluster:
    """``size`` cluster nodes on one etcd with mTLS certificates from one CA."""

    def __init__(self, root: Path, etcd: Etcd, size: int) -> None:
        self.root = root
        self.prefix = f"/tm-bench-{os.getpid()}-{size}/"
        self.etcd = etcd
        root.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        ca_path = root / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_path))
        self.nodes: list[ServerProcess] = []
        for i in range(size):
            node_id = f"tmnd-bench{i + 1}"
            home = root / node_id
            home.mkdir(parents=True)
            leaf = ca.issue_cert("127.0.0.1", "localhost", common_name=node_id)
            leaf.cert_chain_pems[0].write_to_path(str(home / "node.pem"))
            leaf.private_key_pem.write_to_path(str(home / "node.key"))
            port = free_port()
            cluster = {
                "enabled": True,
                "node_id": node_id,
                "listen_address": f"127.0.0.1:{port}",
                "advertise_address": f"127.0.0.1:{port}",
                "tls": {
                    "cert_file": str(home / "node.pem"),
                    "key_file": str(home / "node.key"),
                    "client_ca_file": str(ca_path),
                },
                "etcd": {"endpoints": [etcd.url], "prefix": self.prefix},
                "bootstrap": {"expect_nodes": size},
            }
            self.nodes.append(ServerProcess(home, node_overrides(cluster)))

    def start(self) -> None:
        """Start every node, wait until all are ready (a shard map in force)."""
        for node in self.nodes:
            node.start(wait_ready=False)
        for node in self.nodes:
            node.wait_ready(90)

    def shard_map(self) -> ShardMap:
        """The shard map in etcd, read through etcd's JSON gateway."""
        key = base64.b64encode((self.prefix + "shardmap").encode()).decode()
        kvs = httpx.post(self.etcd.url + "/v3/kv/range", json={"key": key}, timeout=5).json()
        return ShardMap.decode(base64.b64decode(kvs["kvs"][0]["value"]))

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


def node_overrides(cluster: dict[str, Any] | None) -> dict[str, Any]:
    """The config of every node here: batch WAL sync, RESP on, and ``cluster`` if given."""
    out: dict[str, Any] = {
        "storage": {"wal": {"sync_mode": "batch"}},
        "server": {"redis": {"enabled": True, "address": f"127.0.0.1:{free_port()}"}},
    }
    if cluster is not None:
        out["cluster"] = cluster
    return out


def resp_port(node: ServerProcess) -> int:
    """The port of ``node``'s RESP listener."""
    return int(node.config["server"]["redis"]["address"].rsplit(":", 1)[1])


@contextmanager
def machine(size: int) -> Iterator[tuple[ServerProcess, Cluster]]:
    """A standalone node and a ``size``-node cluster (with its etcd), all running."""
    root = Path(tempfile.mkdtemp(prefix="tm-clb-"))
    etcd = Etcd(root)
    standalone = ServerProcess(root / "standalone", node_overrides(None))
    cluster: Cluster | None = None
    try:
        etcd.start()
        cluster = Cluster(root / "cluster", etcd, size)
        cluster.start()
        standalone.start()
        yield standalone, cluster
    finally:
        standalone.stop()
        if cluster is not None:
            cluster.stop()
        etcd.stop()
        shutil.rmtree(root, ignore_errors=True)


def keys(entry: ServerProcess, others: list[ServerProcess]) -> tuple[str, str]:
    """An issuer and a validator key without a practical rate limit, made on ``entry`` and
    usable on every node of ``others`` (in cluster mode keys reach them through etcd)."""
    entry.create_admin_key()
    issuer = entry.create_key("issuer", rate_limit=1_000_000)
    validator = entry.create_key("validator", rate_limit=1_000_000)
    for node in [entry, *others]:
        for key in (issuer, validator):
            deadline = time.monotonic() + 10
            while True:  # one Argon2 per key and node now, cache hits during the runs
                r = httpx.post(
                    node.base_url + "/tokens/validate",
                    json={"token": "tmtk_" + "A" * 43},
                    headers={"Authorization": f"Bearer {key}"},
                )
                if not str(r.json()["code"]).startswith("TM-AUTH"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"key not usable on {node.base_url}: {r.text}")
                time.sleep(0.1)
    return issuer, validator


# -- measuring ---------------------------------------------------------------------------------


def run_wrk(
    node: ServerProcess,
    work: Path,
    mode: str,
    key: str,
    inputs: list[str],
    duration: int,
    connections: int,
    watch: list[ServerProcess],
    profile: str | None = None,
) -> dict[str, Any]:
    """One wrk run against ``node``; its figures plus CPU µs per request of each of
    ``watch`` (``cpu_us`` in the same order).

    ``profile``: a path prefix; each node of ``watch`` is then sampled by py-spy for the
    run (collapsed stacks, ``<prefix>-node<i>.txt``). Sampling slows the nodes, so the
    figures of a profiled run are not comparable with the others.
    """
    script = work / "cluster.lua"
    script.write_text(LUA)
    data = work / f"inputs-{mode}.txt"
    data.write_text("\n".join(inputs) + "\n")
    env = dict(os.environ, TM_MODE=mode, TM_AUTH=key, TM_INPUTS=str(data))
    threads = 1 if connections == 1 else 2
    pids = [n.proc.pid for n in watch if n.proc is not None]
    cpu0 = [process_cpu_seconds(p) for p in pids]
    wrk = subprocess.Popen(
        wrk_command(node.base_url, script, duration, connections, threads),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    spies = [
        subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(duration),
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                f"{profile}-node{i + 1}.txt",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i, pid in enumerate(pids if profile else [])
    ]
    out, _ = wrk.communicate(timeout=duration + 60)
    for spy in spies:
        spy.wait(60)
    cpu = [process_cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
    result = parse_wrk(out, duration)
    reqs = max(result["requests"], 1)
    result["cpu_us"] = [round(c / reqs * 1e6, 1) for c in cpu]
    del result["quantiles"]
    return result


def line(label: str, r: dict[str, Any]) -> str:
    """A run's figures in one line."""
    cpu = " ".join(f"node{i + 1} {c:7.1f}" for i, c in enumerate(r["cpu_us"]))
    return (
        f"{label:<30} {r['rps']:>8,.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
        f"p99 {r['p99_ms']:6.2f} ms  CPU µs/req: {cpu}  non2xx {r['non2xx']}"
    )


def users_owned_by(shard_map: ShardMap, node_id: str, n: int, tag: str) -> list[str]:
    """``n`` distinct random user ids whose shard ``node_id`` owns."""
    out: list[str] = []
    while len(out) < n:
        user = f"u{tag}{random.getrandbits(48):012x}"
        if shard_map.owner(shard_of(user)) == node_id:
            out.append(user)
    return out


def header(what: str) -> None:
    """What runs, on which machine, under which load."""
    print(f"== {what}")
    print(f"machine: {os.cpu_count()} cores; load average before: {loadavg()}", flush=True)


# -- subcommands -------------------------------------------------------------------------------


def cmd_forward(args: argparse.Namespace) -> None:
    """Local vs forwarded validations and creates on a 2-node cluster."""
    header("forward: 2-node cluster, requests to node 1, owner node 1 (local) or 2 (forwarded)")
    root = Path(tempfile.mkdtemp(prefix="tm-clf-"))
    etcd = Etcd(root)
    cluster: Cluster | None = None
    try:
        etcd.start()
        cluster = Cluster(root / "cluster", etcd, 2)
        cluster.start()
        n1, n2 = cluster.nodes
        issuer, validator = keys(n1, [n2])
        smap = cluster.shard_map()
        ids = [f"tmnd-bench{i}" for i in (1, 2)]
        print(f"shards owned: {smap.counts()}")
        # distinct tokens per owner: made through node 1 for random users, sorted by the
        # shard their first byte names
        tokens: dict[str, list[str]] = {i: [] for i in ids}
        with httpx.Client(
            base_url=n1.base_url, headers={"Authorization": f"Bearer {issuer}"}, timeout=10
        ) as http:
            for user in (f"v{random.getrandbits(48):012x}" for _ in range(args.tokens)):
                tok = http.post("/sessions", json={"user_id": user}).json()["data"]["token"]
                tokens[smap.owner(token_shard(tok))].append(tok)
        print(f"tokens per owner: { {k: len(v) for k, v in tokens.items()} }")
        work = root / "wrk"
        work.mkdir()
        conns = [int(c) for c in args.connections.split(",")]
        for c in conns:
            print(f"-- wrk -t{1 if c == 1 else 2} -c{c} -d{args.duration}s, to node 1")
            for mode, key in (("validate", validator), ("create", issuer)):
                runs: dict[str, dict[str, Any]] = {}
                for owner, where in ((ids[0], "local"), (ids[1], "forwarded")):
                    if mode == "validate":
                        inputs = tokens[owner]
                    else:  # enough distinct users for the run at 20k/s
                        inputs = users_owned_by(smap, owner, 20_000 * args.duration, where[0])
                    prof = f"{args.py_spy}/{mode}-{where}-c{c}" if args.py_spy else None
                    r = run_wrk(n1, work, mode, key, inputs, args.duration, c, [n1, n2], prof)
                    runs[where] = r
                    print(line(f"{mode} {where}", r), flush=True)
                loc, fwd = runs["local"], runs["forwarded"]
                print(
                    f"{mode}: forwarding adds p50 {fwd['p50_ms'] - loc['p50_ms']:+.2f} ms, "
                    f"p99 {fwd['p99_ms'] - loc['p99_ms']:+.2f} ms; CPU µs/req "
                    f"node1 (entry) {fwd['cpu_us'][0] - loc['cpu_us'][0]:+.1f}, "
                    f"node2 (owner) {fwd['cpu_us'][1] - loc['cpu_us'][1]:+.1f}, "
                    f"total {sum(fwd['cpu_us']) - sum(loc['cpu_us']):+.1f}; "
                    f"throughput forwarded/local {fwd['rps'] / max(loc['rps'], 1):.2f}"
                )
    finally:
        if cluster is not None:
            cluster.stop()
        etcd.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"load average after: {loadavg()}")


def cmd_local(args: argparse.Namespace) -> None:
    """Throughput of local requests: standalone vs a 1-node cluster, same wrk command.

    ``--mode validate`` (the acceptance) validates distinct tokens; ``--mode create``
    (information) posts sessions of distinct random users.
    """
    what = "POST /tokens/validate" if args.mode == "validate" else "POST /sessions"
    header(
        f"local: standalone vs 1-node cluster, {what}, "
        f"wrk -t2 -c{args.connections} -d{args.duration}s, "
        + (f"{args.tokens:,} distinct tokens" if args.mode == "validate" else "distinct users")
    )
    with machine(1) as (standalone, cluster):
        node = cluster.nodes[0]
        work = Path(tempfile.mkdtemp(prefix="tm-cll-"))
        try:
            setups = []
            for label, srv in (("standalone", standalone), ("cluster", node)):
                issuer, validator = keys(srv, [])
                if args.mode == "validate":
                    made = create_sessions(srv, issuer, args.tokens, connections=1, keep=True)
                    setups.append((label, srv, validator, made))
                else:  # distinct users for every run at up to 20k/s
                    users = [f"u{random.getrandbits(64):016x}" for _ in range(20_000 * 30)]
                    setups.append((label, srv, issuer, users))
            rates: dict[str, list[float]] = {"standalone": [], "cluster": []}
            for rnd in range(args.rounds):
                for label, srv, key, inputs in setups:
                    fresh = inputs[rnd * 20_000 * 10 :] if args.mode == "create" else inputs
                    prof = f"{args.py_spy}/{args.mode}-{label}-{rnd + 1}" if args.py_spy else None
                    r = run_wrk(
                        srv, work, args.mode, key, fresh, args.duration,
                        args.connections, [srv], prof,
                    )  # fmt: skip
                    rates[label].append(r["rps"])
                    print(line(f"round {rnd + 1} {label}", r).replace("node1", "server"))
            s = sum(rates["standalone"]) / len(rates["standalone"])
            c = sum(rates["cluster"]) / len(rates["cluster"])
            ratio = c / s
            verdict = "PASS" if ratio >= GOAL_RATIO else "FAIL"
            print(
                f"mean: standalone {s:,.0f} req/s, cluster {c:,.0f} req/s, ratio {ratio:.3f} "
                f"(goal ≥ {GOAL_RATIO}): {verdict if args.mode == 'validate' else 'no goal'}"
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {loadavg()}")


def create_sessions(
    node: ServerProcess, issuer: str, n: int, connections: int, keep: bool = False
) -> list[str]:
    """``n`` sessions of distinct users by ``TM.CREATE`` pipelines of 1,000 over
    ``connections`` RESP connections; their tokens if ``keep``."""
    tokens: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        try:
            client = resp_client(resp_port(node), issuer)
            for start in range(w * 1000, n, connections * 1000):
                pipe = client.pipeline(transaction=False)
                for i in range(start, min(start + 1000, n)):
                    body = orjson.dumps({"user_id": f"user-{i:07d}"})
                    pipe.execute_command("TM.CREATE", new_session_id(), body)
                replies = pipe.execute()
                if keep:
                    with lock:
                        tokens.extend(orjson.loads(r)["token"] for r in replies)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return tokens


def rss_kib(pid: int) -> int:
    """``VmRSS`` of process ``pid`` in KiB."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1])
    raise RuntimeError("no VmRSS")


def cmd_rss(args: argparse.Namespace) -> None:
    """RSS after ``--sessions`` creates: standalone vs a 1-node cluster node."""
    header(f"rss: {args.sessions:,} sessions of distinct users, standalone vs 1-node cluster")
    with machine(1) as (standalone, cluster):
        figures: dict[str, tuple[int, int, float]] = {}
        for label, srv in (("standalone", standalone), ("cluster", cluster.nodes[0])):
            assert srv.proc is not None
            issuer, _ = keys(srv, [])
            before = rss_kib(srv.proc.pid)
            t0 = time.monotonic()
            create_sessions(srv, issuer, args.sessions, connections=args.resp_connections)
            took = time.monotonic() - t0
            time.sleep(2)
            after = rss_kib(srv.proc.pid)
            figures[label] = (before, after, took)
            print(
                f"{label:<11} RSS empty {before / 1024:7.1f} MiB, after {after / 1024:7.1f} MiB "
                f"({(after - before) * 1024 / args.sessions:.0f} B/session); created in "
                f"{took:.1f} s ({args.sessions / took:,.0f}/s)",
                flush=True,
            )
        s, c = figures["standalone"][1], figures["cluster"][1]
        ratio = c / s
        print(
            f"RSS cluster/standalone {ratio:.3f} (goal ≤ {GOAL_RSS_RATIO}): "
            f"{'PASS' if ratio <= GOAL_RSS_RATIO else 'FAIL'}"
        )
    print(f"load average after: {loadavg()}")


def main() -> None:
    """Parse the subcommand and run it."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("forward", help="local vs forwarded requests on a 2-node cluster")
    f.add_argument("--duration", type=int, default=8)
    f.add_argument("--connections", default="1,32", help="comma-separated wrk -c values")
    f.add_argument("--tokens", type=int, default=2000)
    f.add_argument("--py-spy", metavar="DIR", help="py-spy profiles of both nodes, every run")
    lo = sub.add_parser("local", help="validations: standalone vs 1-node cluster")
    lo.add_argument("--duration", type=int, default=10)
    lo.add_argument("--connections", type=int, default=64)
    lo.add_argument("--rounds", type=int, default=2)
    lo.add_argument("--tokens", type=int, default=10_000)
    lo.add_argument("--mode", choices=["validate", "create"], default="validate")
    lo.add_argument("--py-spy", metavar="DIR", help="py-spy profiles of the node, every run")
    r = sub.add_parser("rss", help="RSS after N creates: standalone vs 1-node cluster")
    r.add_argument("--sessions", type=int, default=1_000_000)
    r.add_argument("--resp-connections", type=int, default=4)
    args = ap.parse_args()
    if shutil.which("wrk") is None or shutil.which("etcd") is None:
        sys.exit("needs wrk and etcd on PATH")
    {"forward": cmd_forward, "local": cmd_local, "rss": cmd_rss}[args.cmd](args)


if __name__ == "__main__":
    main()
