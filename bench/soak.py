"""Soak (issue 15): mixed load with expiry against a real server, sampled every 10 s.

Validations are 90 % of the requests, creates, renews and revokes the other 10 %; every
create has its own token and a random user, and a TTL drawn from 30-120 s, so sessions
expire all the time once the first two minutes have passed. Each 10 s window prints the
server's RSS and stored sessions, the request rate, p50/p99 of every request and p99 of
validations and of writes alone, the errors, and what a Trio instrument in the server saw
of its event loop: the longest batch (wall time between two looks at the sockets) and
how many batches used more than 1 ms / 5 ms of the loop thread's CPU.

Before the main run a reference run on a fresh server applies the same mix with TTLs
longer than the whole run (nothing expires there), so the summary can compare the p99
with expiry to the p99 without it. Goals: RSS growth over the last 10 minutes < 5 %,
p99 with expiry within 1.5x of p99 without, no error.

    python bench/soak.py [--minutes 20] [--reference-minutes 3] [--rate 5000]
    python bench/soak.py --minutes 3 --reference-minutes 0 --ttl 60 --writes create=10

The load generator is asyncio, one process per 32 connections, on the same two cores as
the server. By default it is paced: each connection sends on a fixed schedule (5,000
requests/s in all, well under what this machine serves, so the p99 shows stalls rather
than queueing at saturation), and a request's latency counts from when it was due, so a
stalled server is not hidden by the client waiting for it. ``--rate 0`` is a closed loop
(each connection sends its next request when the previous answer arrived).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import multiprocessing as mp
import os
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import ServerProcess, loadavg, process_cpu_seconds

#: histogram of latencies: 10 µs buckets below 100 ms, then 1 ms buckets up to ~10 s
FINE_US = 10
FINE_BUCKETS = 10_000
COARSE_BUCKETS = 9_900
#: a session is no longer validated or renewed this close to its expiry (client and
#: server read the same wall clock; the margin covers the request's own latency)
MARGIN_MS = 2_000
#: event-loop stall histogram bounds (ms) of the server-side monitor
STALL_BOUNDS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


# -- latency histograms ---------------------------------------------------------------


def bucket_of(seconds: float) -> int:
    us = int(seconds * 1e6)
    if us < FINE_US * FINE_BUCKETS:
        return us // FINE_US
    return FINE_BUCKETS + min((us - FINE_US * FINE_BUCKETS) // 1000, COARSE_BUCKETS - 1)


def bucket_upper_ms(b: int) -> float:
    if b < FINE_BUCKETS:
        return (b + 1) * FINE_US / 1000
    return FINE_US * FINE_BUCKETS / 1000 + (b - FINE_BUCKETS + 1)


def merge(into: dict[Any, int], other: dict[Any, int]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + v


def percentile(hist: dict[int, int], q: float) -> float:
    total = sum(hist.values())
    if not total:
        return float("nan")
    rank = q * total
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return bucket_upper_ms(b)
    return bucket_upper_ms(max(hist))


# -- load generator (one process) ---------------------------------------------------------


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, Content-Length replies."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None:
            return
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        i = head.find(b"content-length:")
        length = 0
        if i >= 0:
            j = head.find(b"\r\n", i)
            length = int(head[i + 15 : j if j >= 0 else len(head)])
        total = end + 4 + length
        if len(buf) < total:
            return
        status = int(buf[9:12])
        body = bytes(buf[end + 4 : total])
        del buf[:total]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))
        self.waiter = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


class Entry:
    """A session this process created: its token, id and the expiry the server gave."""

    __slots__ = ("expires_ms", "renewing", "revoked", "sid", "token")

    def __init__(self, token: str, sid: str, expires_ms: int) -> None:
        self.token = token
        self.sid = sid
        self.expires_ms = expires_ms
        self.revoked = False
        # One renewal at a time: two in flight may be answered in the other order than
        # the server applied them, and the expiry kept here would be the wrong one.
        self.renewing = False


class Window:
    """What one process saw during one sampling window."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.samples: list[str] = []
        self.all: dict[int, int] = {}
        self.validate: dict[int, int] = {}
        self.write: dict[int, int] = {}

    def record(self, kind: str, seconds: float, ok: bool, detail: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        b = bucket_of(seconds)
        self.all[b] = self.all.get(b, 0) + 1
        h = self.validate if kind == "validate" else self.write
        h[b] = h.get(b, 0) + 1
        if not ok:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            if len(self.samples) < 3:
                self.samples.append(f"{kind}: {detail[:200]}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "errors": self.errors,
            "samples": self.samples,
            "all": self.all,
            "validate": self.validate,
            "write": self.write,
        }


def new_token() -> str:
    return "tmtk_" + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def http(method: str, path: str, body: bytes, auth: str) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Load:
    """The closed-loop load of one process."""

    def __init__(self, cfg: dict[str, Any], index: int, out: Any) -> None:
        self.cfg = cfg
        self.index = index
        self.out = out
        self.pool: list[Entry] = []
        self.win = Window()
        kinds, weights = zip(*cfg["writes"].items(), strict=True)
        self.write_kinds: list[str] = list(kinds)
        self.write_weights: list[int] = list(weights)
        self.ttl_lo, self.ttl_hi = cfg["ttl"]

    def pick(self, now_ms: int) -> Entry | None:
        """A random session that is neither revoked nor about to expire."""
        pool = self.pool
        for _ in range(16):
            if not pool:
                return None
            i = random.randrange(len(pool))
            e = pool[i]
            if not e.revoked and e.expires_ms - now_ms > MARGIN_MS:
                return e
            pool[i] = pool[-1]
            pool.pop()
        return None

    async def one(self, conn: Conn, due: float | None) -> None:
        """One request; its latency counts from ``due`` (``perf_counter``) when paced."""
        cfg = self.cfg
        now_ms = time.time_ns() // 1_000_000
        kind = "validate"
        if random.random() >= cfg["validate_share"]:
            kind = random.choices(self.write_kinds, self.write_weights)[0]
        entry = None if kind == "create" else self.pick(now_ms)
        if entry is None:
            kind = "create"
        elif kind == "renew" and entry.renewing:
            kind = "validate"
        ttl = random.randint(self.ttl_lo, self.ttl_hi)
        if kind == "validate":
            assert entry is not None
            req = http(
                "POST",
                "/tokens/validate",
                b'{"token":"%s"}' % entry.token.encode(),
                cfg["validator"],
            )
        elif kind == "create":
            token = new_token()
            user = f"soak-{self.index}-{random.randrange(1_000_000)}"
            body = orjson.dumps({"user_id": user, "ttl_seconds": ttl, "token": token})
            req = http("POST", "/sessions", body, cfg["issuer"])
        elif kind == "renew":
            assert entry is not None
            entry.renewing = True
            body = b'{"ttl_seconds":%d}' % ttl
            req = http("POST", f"/sessions/{entry.sid}/renew", body, cfg["issuer"])
        else:
            assert entry is not None
            entry.revoked = True  # no new validation or renewal of it from now on
            req = http("POST", f"/sessions/{entry.sid}/revoke", b"{}", cfg["issuer"])
        remaining_ms = entry.expires_ms - now_ms if entry is not None else 0
        t = time.perf_counter() if due is None else due
        try:
            status, body = await conn.request(req)
        finally:
            if kind == "renew" and entry is not None:
                entry.renewing = False
        elapsed = time.perf_counter() - t
        ok = True
        if kind == "validate":
            # a validation racing a revoke of the same session may see the revoke
            ok = status == 200 or (entry is not None and entry.revoked and status == 401)
        elif kind == "create":
            ok = status == 201
            if ok:
                data = orjson.loads(body)["data"]
                self.pool.append(Entry(token, data["session_id"], data["expires_at"]))
        elif kind == "renew":
            ok = status == 200 or (entry is not None and entry.revoked and status == 404)
            if status == 200 and entry is not None:
                entry.expires_ms = orjson.loads(body)["data"]["new_expires_at"]
        else:
            ok = status == 200
        detail = f"{status} {body[:160]!r}; expiry known to the client {remaining_ms} ms ahead"
        self.win.record(kind, elapsed, ok, detail)

    async def connection(self, end: float) -> None:
        loop = asyncio.get_running_loop()
        # Paced (``--rate``): each connection sends on its own schedule, and a request's
        # latency counts from when it was due, so a stalled server is not hidden by the
        # client waiting for it (coordinated omission). Unpaced: closed loop.
        rate = self.cfg["rate_per_connection"]
        gap = 1.0 / rate if rate else 0.0
        due = time.perf_counter() + random.random() * gap
        while time.monotonic() < end:
            try:
                _, conn = await loop.create_connection(Conn, "127.0.0.1", self.cfg["port"])
            except OSError as exc:
                self.win.record("connect", 0.0, False, str(exc))
                await asyncio.sleep(0.1)
                continue
            try:
                while time.monotonic() < end:
                    if not gap:
                        await self.one(conn, None)
                        continue
                    wait = due - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    await self.one(conn, due)
                    due += gap
            except ConnectionError as exc:
                self.win.record("connect", 0.0, False, str(exc))
            finally:
                if conn.transport is not None:
                    conn.transport.close()

    async def flusher(self, t0: float, interval: float, windows: int) -> None:
        for k in range(windows):
            await asyncio.sleep(max(0.0, t0 + (k + 1) * interval - time.monotonic()))
            win, self.win = self.win, Window()
            self.out.put((self.index, k, win.as_dict()))

    async def run(self) -> None:
        cfg = self.cfg
        t0 = cfg["t0"]
        end = t0 + cfg["windows"] * cfg["interval"]
        await asyncio.sleep(max(0.0, t0 - time.monotonic()))
        conns = [self.connection(end) for _ in range(cfg["connections"])]
        await asyncio.gather(self.flusher(t0, cfg["interval"], cfg["windows"]), *conns)


def load_process(cfg: dict[str, Any], index: int, out: Any) -> None:
    random.seed(os.urandom(16))
    asyncio.run(Load(cfg, index, out).run())


# -- the server, with an event-loop monitor ------------------------------------------------


def bucket_index(ms: float) -> int:
    for i, bound in enumerate(STALL_BOUNDS_MS):
        if ms <= bound:
            return i
    return len(STALL_BOUNDS_MS)


def monitored_server(stats_path: str, argv: list[str]) -> None:
    """Run ``tokmesh-server`` with a Trio instrument that measures the event loop.

    The instrument times each *batch*: from the moment Trio comes back from waiting for
    I/O to the moment it waits again; no socket is read in between, so that is the stall
    a request arriving then sees. It keeps two histograms: wall time (what a client
    sees, including time the machine gave to other processes) and the CPU time of the
    loop's thread (the work done, which other jobs on a shared machine do not inflate).
    It also keeps the task steps that used the most CPU, by task name, and how long the
    store shards take per message (start to reply, awaits included: a message that
    takes long holds up every later message of that shard). A thread writes the figures
    to ``stats_path`` every half second.
    """
    import trio

    from tokmesh import server as server_mod
    from tokmesh import server_cli
    from tokmesh.actors.store import SessionShard

    class LoopMonitor(trio.abc.Instrument):
        def __init__(self) -> None:
            self.wall = [0] * (len(STALL_BOUNDS_MS) + 1)
            self.cpu = [0] * (len(STALL_BOUNDS_MS) + 1)
            self.batch_wall = self.batch_cpu = 0.0
            self.step_cpu = 0.0
            self.max_wall = self.max_cpu = 0.0
            self.worst_steps: list[tuple[float, str]] = []

        def after_io_wait(self, timeout: float) -> None:
            self.batch_wall = time.perf_counter()
            self.batch_cpu = time.thread_time()

        def before_io_wait(self, timeout: float) -> None:
            if not self.batch_wall:  # added in the middle of a batch
                return
            wall = (time.perf_counter() - self.batch_wall) * 1000
            cpu = (time.thread_time() - self.batch_cpu) * 1000
            self.wall[bucket_index(wall)] += 1
            self.cpu[bucket_index(cpu)] += 1
            self.max_wall = max(self.max_wall, wall)
            self.max_cpu = max(self.max_cpu, cpu)

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self.step_cpu = time.thread_time()

        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            if not self.step_cpu:  # added in the middle of this step
                return
            ms = (time.thread_time() - self.step_cpu) * 1000
            if ms > 1.0:
                worst = self.worst_steps
                worst.append((round(ms, 2), task.name))
                if len(worst) > 200:
                    worst.sort(reverse=True)
                    del worst[100:]

    monitor = LoopMonitor()
    # Garbage collections by generation: count, longest and total ms. A full collection
    # walks every tracked object not frozen yet and holds whatever step triggered it.
    collections: dict[int, list[float]] = {}
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - gc_started[0]) * 1000
        entry = collections.setdefault(info["generation"], [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] = max(entry[1], ms)
        entry[2] += ms

    gc.callbacks.append(on_gc)
    shard_messages: dict[str, list[float]] = {}
    handle = SessionShard._handle

    async def timed_handle(self: Any, msg: Any) -> None:
        started = time.perf_counter()
        try:
            await handle(self, msg)
        finally:
            ms = (time.perf_counter() - started) * 1000
            entry = shard_messages.setdefault(type(msg).__name__, [0, 0.0, 0.0])
            entry[0] += 1
            entry[1] = max(entry[1], ms)
            entry[2] += ms

    SessionShard._handle = timed_handle  # type: ignore[method-assign]

    def writer() -> None:
        while True:
            time.sleep(0.5)
            data = {
                "wall": list(monitor.wall),
                "cpu": list(monitor.cpu),
                "max_wall_ms": monitor.max_wall,
                "max_cpu_ms": monitor.max_cpu,
                "worst_steps": sorted(list(monitor.worst_steps), reverse=True)[:20],
                "shard_messages": {k: list(v) for k, v in list(shard_messages.items())},
                "gc": {str(k): list(v) for k, v in list(collections.items())},
            }
            tmp = stats_path + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(data, fh)
            os.replace(tmp, stats_path)

    threading.Thread(target=writer, daemon=True).start()
    original = server_mod.TokMeshServer.run

    async def run(self: Any, **kwargs: Any) -> int:
        trio.lowlevel.add_instrument(monitor)
        return await original(self, **kwargs)

    server_mod.TokMeshServer.run = run  # type: ignore[method-assign]
    sys.argv = ["tokmesh-server", *argv]
    server_cli.main()


class SoakServer(ServerProcess):
    """A real node, optionally started through :func:`monitored_server`."""

    def __init__(self, root: Path, overrides: dict[str, Any], monitor: bool) -> None:
        super().__init__(root, overrides)
        self.stats_path = str(root / "loop-stats.json") if monitor else None

    def start(self, wait_ready: bool = True, extra_args: list[str] | None = None) -> None:
        if self.stats_path is None:
            super().start(wait_ready, extra_args)
            return
        self.config_path.write_text(yaml.safe_dump(self.config))
        cmd = [sys.executable, __file__, "--serve", self.stats_path, "--"]
        cmd += ["--config", str(self.config_path), *(extra_args or [])]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        if wait_ready:
            self.wait_ready()

    def loop_stats(self) -> dict[str, Any] | None:
        if self.stats_path is None:
            return None
        try:
            return dict(json.loads(Path(self.stats_path).read_text()))
        except (OSError, ValueError):
            return None


# -- sampling and the report ---------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stored_sessions(srv: ServerProcess) -> int:
    """``tokmesh_sessions_active_total``: sessions held, revoked ones excluded (O(1) on
    the server, unlike the status summary, which counts live sessions one by one)."""
    try:
        r = httpx.get(
            srv.base_url + "/metrics",
            headers={"Authorization": f"Bearer {srv.admin_key}"},
            timeout=5,
        )
        for line in r.text.splitlines():
            if line.startswith("tokmesh_sessions_active_total"):
                return int(float(line.split()[-1]))
    except httpx.HTTPError:
        pass
    return -1


def delta(now: list[int], before: list[int] | None) -> list[int]:
    return [a - b for a, b in zip(now, before or [0] * len(now), strict=True)]


def top_bound(hist: list[int]) -> float:
    """Upper bound (ms) of the highest non-empty bucket."""
    top = max((i for i, n in enumerate(hist) if n), default=0)
    return STALL_BOUNDS_MS[top] if top < len(STALL_BOUNDS_MS) else float("inf")


HEADER = (
    f"{'t(s)':>6} {'RSS MB':>8} {'stored':>8} {'req/s':>7} {'p50':>6} {'p99':>7} "
    f"{'val p99':>7} {'wr p99':>7} {'err':>4} {'stall':>6} {'cpu>1ms':>7} {'cpu>5ms':>7} "
    f"{'srv cpu':>7} {'load1':>5}"
)


def run_phase(
    name: str, args: argparse.Namespace, minutes: float, ttl: tuple[int, int]
) -> dict[str, Any]:
    """One fresh server, one load; returns the per-window rows and the loop figures."""
    root = Path(tempfile.mkdtemp(prefix="tm-soak-"))
    srv = SoakServer(root, {"storage": {"wal": {"sync_mode": args.sync_mode}}}, args.loop_monitor)
    srv.start()
    srv.create_admin_key()
    try:
        issuer = srv.create_key("issuer", rate_limit=1_000_000)
        validator = srv.create_key("validator", rate_limit=1_000_000)
        for key in (issuer, validator):  # their one Argon2 verification, before the clock runs
            httpx.post(
                srv.base_url + "/tokens/validate",
                json={"token": new_token()},
                headers={"Authorization": f"Bearer {key}"},
            )
        assert srv.proc is not None
        pid = srv.proc.pid
        interval = args.interval
        windows = max(1, round(minutes * 60 / interval))
        procs = max(1, args.connections // 32)
        t0 = time.monotonic() + 1.0
        cfg = {
            "port": srv.http_port,
            "issuer": issuer,
            "validator": validator,
            "validate_share": args.validate_share,
            "writes": args.writes,
            "ttl": ttl,
            "connections": args.connections // procs,
            "rate_per_connection": args.rate / args.connections,
            "t0": t0,
            "interval": interval,
            "windows": windows,
        }
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        workers = [ctx.Process(target=load_process, args=(cfg, i, out)) for i in range(procs)]
        for w in workers:
            w.start()
        print(
            f"\n== {name}: {minutes:g} min, TTL {ttl[0]}-{ttl[1]} s, {args.connections} "
            f"connections in {procs} load processes, server pid {pid}"
        )
        print(HEADER)
        rows: list[dict[str, Any]] = []
        pending: dict[int, list[dict[str, Any]]] = {}
        cpu_prev = process_cpu_seconds(pid)
        stats_prev = srv.loop_stats()
        samples: list[str] = []
        for k in range(windows):
            time.sleep(max(0.0, t0 + (k + 1) * interval - time.monotonic()))
            rss = rss_mb(pid)
            cpu = process_cpu_seconds(pid)
            stored = stored_sessions(srv)
            stats = srv.loop_stats()
            load1 = float(loadavg().split()[0])
            while len(pending.get(k, [])) < procs:
                try:
                    _, wk, data = out.get(timeout=interval * 3)
                except queue.Empty:
                    sys.exit(f"a load process did not report window {k}")
                pending.setdefault(wk, []).append(data)
            counts: dict[str, int] = {}
            errors: dict[str, int] = {}
            hists: dict[str, dict[int, int]] = {"all": {}, "validate": {}, "write": {}}
            for data in pending.pop(k):
                merge(counts, data["counts"])
                merge(errors, data["errors"])
                for key, hist in hists.items():
                    merge(hist, {int(b): n for b, n in data[key].items()})
                samples.extend(data["samples"])
            wall = cpu_hist = []
            if stats:
                wall = delta(stats["wall"], stats_prev["wall"] if stats_prev else None)
                cpu_hist = delta(stats["cpu"], stats_prev["cpu"] if stats_prev else None)
            stats_prev = stats
            row = {
                "t": (k + 1) * interval,
                "rss_mb": rss,
                "stored": stored,
                "rps": sum(counts.values()) / interval,
                "p50": percentile(hists["all"], 0.50),
                "p99": percentile(hists["all"], 0.99),
                "val_p99": percentile(hists["validate"], 0.99),
                "wr_p99": percentile(hists["write"], 0.99),
                "errors": sum(errors.values()),
                "stall_ms": top_bound(wall) if wall else float("nan"),
                # batches that used more than 1 ms / 5 ms of the loop thread's CPU
                "cpu_over_1ms": sum(cpu_hist[2:]),
                "cpu_over_5ms": sum(cpu_hist[4:]),
                "server_cpu_pct": (cpu - cpu_prev) / interval * 100,
                "load1": load1,
                "hists": hists,
                "counts": counts,
            }
            cpu_prev = cpu
            rows.append(row)
            print(
                f"{row['t']:>6.0f} {rss:>8.1f} {stored:>8} {row['rps']:>7.0f} "
                f"{row['p50']:>6.2f} {row['p99']:>7.2f} {row['val_p99']:>7.2f} "
                f"{row['wr_p99']:>7.2f} {row['errors']:>4} {'≤' + format(row['stall_ms'], 'g'):>6} "
                f"{row['cpu_over_1ms']:>7} {row['cpu_over_5ms']:>7} "
                f"{row['server_cpu_pct']:>6.0f}% {load1:>5.2f}",
                flush=True,
            )
        for w in workers:
            w.join(30)
        final = srv.loop_stats()
        if final is not None:
            print(
                "most CPU in one task step (ms, task):",
                ", ".join(f"{ms} {task}" for ms, task in final["worst_steps"][:6]),
            )
            print(
                "store shard messages, start to reply (count, longest ms, mean ms):",
                ", ".join(
                    f"{kind} {n} {longest:.1f} {total / max(n, 1):.2f}"
                    for kind, (n, longest, total) in sorted(final["shard_messages"].items())
                ),
            )
            print(
                "garbage collections (generation: count, longest ms, total ms):",
                ", ".join(
                    f"{gen}: {n} {longest:.1f} {total:.0f}"
                    for gen, (n, longest, total) in sorted(final["gc"].items())
                ),
            )
        for sample in samples[:5]:
            print("error sample:", sample)
        return {"rows": rows, "loop": final}
    finally:
        srv.stop()


def latency(rows: list[dict[str, Any]], after_s: float, until_s: float = 1e18) -> dict[str, float]:
    """p50/p99 over the windows ending in (after_s, until_s], and the request rate."""
    hists: dict[str, dict[int, int]] = {"all": {}, "validate": {}, "write": {}}
    picked = [r for r in rows if after_s < r["t"] <= until_s]
    for r in picked:
        for key, hist in hists.items():
            merge(hist, r["hists"][key])
    requests = sum(sum(r["counts"].values()) for r in picked)
    span = len(picked) * (rows[0]["t"] if rows else 1)
    return {
        "windows": len(picked),
        "p50": percentile(hists["all"], 0.5),
        "p99": percentile(hists["all"], 0.99),
        "val_p99": percentile(hists["validate"], 0.99),
        "wr_p99": percentile(hists["write"], 0.99),
        "rps": requests / span if span else 0.0,
    }


def describe(label: str, figures: dict[str, float]) -> str:
    return (
        f"{label}: p50 {figures['p50']:.2f} ms, p99 {figures['p99']:.2f} ms, validations "
        f"p99 {figures['val_p99']:.2f} ms, writes p99 {figures['wr_p99']:.2f} ms, "
        f"{figures['rps']:,.0f} req/s ({figures['windows']} windows)"
    )


def parse_writes(text: str) -> dict[str, int]:
    out = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind not in ("create", "renew", "revoke"):
            raise argparse.ArgumentTypeError(f"unknown write kind {kind!r}")
        out[kind] = int(weight)
    return out


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        monitored_server(sys.argv[2], sys.argv[4:])
        return
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="main run, with expiry")
    ap.add_argument(
        "--reference-minutes",
        type=float,
        default=3.0,
        help="reference run first, TTLs longer than everything (0: none)",
    )
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument(
        "--rate",
        type=float,
        default=5000,
        help="requests/s offered in all (paced; 0 = closed loop, as fast as answered)",
    )
    ap.add_argument("--interval", type=float, default=10.0, help="sampling window, seconds")
    ap.add_argument("--ttl", default="30-120", help="TTL range in seconds: 60 or 30-120")
    ap.add_argument("--validate-share", type=float, default=0.9)
    ap.add_argument(
        "--writes",
        type=parse_writes,
        default=parse_writes("create=6,renew=2,revoke=2"),
        help="weights of the writes (default create=6,renew=2,revoke=2)",
    )
    ap.add_argument("--sync-mode", default="batch", choices=["batch", "sync"])
    ap.add_argument("--no-loop-monitor", dest="loop_monitor", action="store_false")
    args = ap.parse_args()
    lo, _, hi = args.ttl.partition("-")
    ttl = (int(lo), int(hi or lo))
    offered = f"{args.rate:g} req/s offered" if args.rate else "closed loop"
    print(
        f"machine: {os.cpu_count()} cores; load average at start {loadavg()}; {offered}, "
        f"{args.connections} connections; validate {args.validate_share:.0%}, writes "
        f"{args.writes}, TTL {ttl[0]}-{ttl[1]} s, WAL {args.sync_mode}"
    )
    reference = None
    if args.reference_minutes > 0:
        long_ttl = int((args.minutes + args.reference_minutes) * 60 + 3600)
        reference = run_phase(
            "reference, nothing expires",
            args,
            args.reference_minutes,
            (long_ttl, long_ttl + 3600),
        )
    main_run = run_phase("with expiry", args, args.minutes, ttl)
    rows = main_run["rows"]
    warm = 30.0
    steady = ttl[1] + 10.0  # every session alive by then was created after the first expiry
    print("\n== summary")
    expiring = latency(rows, steady)
    if ttl[0] > warm + 10:
        print(
            describe(f"before the first expiry ({warm:g}-{ttl[0]} s)", latency(rows, warm, ttl[0]))
        )
    print(describe(f"with expiry (after {steady:g} s)", expiring))
    if reference is not None:
        without = latency(reference["rows"], warm)
        print(describe(f"without expiry (reference, after {warm:g} s)", without))
        ratio = expiring["p99"] / without["p99"]
        print(
            f"p99 with / without expiry: {ratio:.2f}x (validations "
            f"{expiring['val_p99'] / without['val_p99']:.2f}x, writes "
            f"{expiring['wr_p99'] / without['wr_p99']:.2f}x); goal ≤ 1.5x: "
            f"{'PASS' if ratio <= 1.5 else 'FAIL'}"
        )
    end = rows[-1]["t"]
    span = min(600.0, end / 2)
    window = [r for r in rows if r["t"] > end - span]
    per_minute = max(1, round(60 / args.interval))
    if len(window) >= 2 * per_minute:
        first = statistics.median(r["rss_mb"] for r in window[:per_minute])
        last = statistics.median(r["rss_mb"] for r in window[-per_minute:])
        growth = (last - first) / first * 100
        stored_first = statistics.median(r["stored"] for r in window[:per_minute])
        stored_last = statistics.median(r["stored"] for r in window[-per_minute:])
        print(
            f"RSS over the last {span / 60:g} min (median of its first and last minute): "
            f"{first:.1f} -> {last:.1f} MB ({growth:+.1f} %; stored sessions "
            f"{stored_first:,.0f} -> {stored_last:,.0f}; range in the window "
            f"{min(r['rss_mb'] for r in window):.1f}-{max(r['rss_mb'] for r in window):.1f} "
            f"MB); goal < 5 %: {'PASS' if growth < 5 else 'FAIL'}"
        )
    errors = sum(r["errors"] for r in rows)
    if reference is not None:
        errors += sum(r["errors"] for r in reference["rows"])
    print(f"errors: {errors}; goal 0: {'PASS' if errors == 0 else 'FAIL'}")
    loop = main_run["loop"]
    if loop is not None:
        print(
            f"server loop, whole run with expiry: {sum(loop['cpu'][2:])} batches over 1 ms "
            f"of CPU, {sum(loop['cpu'][4:])} over 5 ms, longest {loop['max_cpu_ms']:.1f} ms "
            f"CPU / {loop['max_wall_ms']:.1f} ms wall"
        )
    print(f"load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
