"""Mixed load against a real cluster, a record of every operation, and the checks that
must hold afterwards whatever fault was injected meanwhile.

Each operation is recorded with when it started and ended and its outcome:

* ``ok``: the server acknowledged it (201/200 for writes; for validations the answer
  itself, valid or not, is recorded);
* ``failed``: the server said it did not happen (a 4xx, or ``TM-CLST-5030`` "no owner
  available", which routing answers before doing anything);
* ``unknown``: it may or may not have happened (a timeout, a reset connection, a 5xx
  other than 5030, ``TM-CLST-5040``).

The checks (:func:`check`):

1. nothing validates after its revoke was acknowledged: a validation that started after
   a revoke's acknowledgement returned must not say valid, on any node, at any time;
2. after the fault, every acknowledged revocation is refused by every live node;
3. every acknowledged create that was not (possibly) revoked still validates; losses are
   counted and reported with how long before the fault they were acknowledged (they are
   allowed only inside the replication lag, and never with ``ack: replica``).

A shard-map monitor (:class:`MapMonitor`) polls etcd during the run and checks that each
shard's epoch only grows and that no epoch of a shard ever had two owners.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.cluster.cluster_support import ClusterNodeProcess, TestCluster
from tokmesh.cluster.shard_map import ShardMap


@dataclass
class Op:
    """One operation as the client saw it."""

    kind: str  # create | revoke | validate
    node: str
    start: float
    end: float = 0.0
    outcome: str = "unknown"  # ok | failed | unknown
    session_id: str = ""
    token: str = ""
    valid: bool | None = None  # validations: the answer
    detail: str = ""


@dataclass
class History:
    """Every operation of a run (thread-safe append)."""

    ops: list[Op] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)

    def of(self, kind: str, outcome: str | None = None) -> list[Op]:
        with self.lock:
            return [
                o for o in self.ops if o.kind == kind and (outcome is None or o.outcome == outcome)
            ]


def _outcome(r: httpx.Response, ok: int) -> tuple[str, str]:
    if r.status_code == ok:
        return "ok", ""
    try:
        code = r.json().get("code", "")
    except ValueError:
        code = ""
    if r.status_code < 500 or code == "TM-CLST-5030":
        return "failed", f"{r.status_code} {code}"
    return "unknown", f"{r.status_code} {code}"


class Load:
    """``workers`` threads of mixed creates, validations and revocations on random
    live nodes, with a fixed seed, until :meth:`stop`."""

    def __init__(
        self,
        cluster: TestCluster,
        key: str,
        *,
        seed: int = 7,
        workers: int = 6,
        users: int = 200,
    ) -> None:
        self.cluster = cluster
        self.key = key
        self.seed = seed
        self.workers = workers
        self.users = users
        self.history = History()
        self.down: set[str] = set()  # nodes the test took away (not asked)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._created: list[Op] = []
        self._created_lock = threading.Lock()

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._run, args=(self.seed * 1000 + i,), daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _nodes(self) -> list[ClusterNodeProcess]:
        return [n for n in self.cluster.nodes if n.node_id not in self.down and n.proc]

    def _run(self, seed: int) -> None:
        rnd = random.Random(seed)
        clients: dict[str, httpx.Client] = {}
        headers = {"Authorization": f"Bearer {self.key}"}
        try:
            while not self._stop.is_set():
                nodes = self._nodes()
                if not nodes:
                    time.sleep(0.05)
                    continue
                node = rnd.choice(nodes)
                client = clients.get(node.node_id)
                if client is None:
                    client = clients[node.node_id] = httpx.Client(
                        base_url=node.base_url, headers=headers, timeout=3.0
                    )
                roll = rnd.random()
                with self._created_lock:
                    have = len(self._created)
                if roll < 0.35 or have < 20:
                    self._create(client, node, rnd)
                elif roll < 0.85:
                    self._validate(client, node, rnd)
                else:
                    self._revoke(client, node, rnd)
        finally:
            for c in clients.values():
                c.close()

    def _pick(self, rnd: random.Random) -> Op | None:
        with self._created_lock:
            if not self._created:
                return None
            return self._created[rnd.randrange(len(self._created))]

    def _create(self, client: httpx.Client, node: ClusterNodeProcess, rnd: random.Random) -> None:
        op = Op("create", node.node_id, time.monotonic())
        body = {"user_id": f"u{rnd.randrange(self.users)}", "ttl_seconds": 3600}
        try:
            r = client.post("/sessions", json=body)
            op.outcome, op.detail = _outcome(r, 201)
            if op.outcome == "ok":
                data = r.json()["data"]
                op.session_id, op.token = data["session_id"], data["token"]
        except httpx.HTTPError as exc:
            op.outcome, op.detail = "unknown", type(exc).__name__
        op.end = time.monotonic()
        self.history.add(op)
        if op.outcome == "ok":
            with self._created_lock:
                self._created.append(op)

    def _validate(self, client: httpx.Client, node: ClusterNodeProcess, rnd: random.Random) -> None:
        made = self._pick(rnd)
        if made is None:
            return
        op = Op("validate", node.node_id, time.monotonic(), session_id=made.session_id,
                token=made.token)  # fmt: skip
        try:
            r = client.post("/tokens/validate", json={"token": made.token})
            if r.status_code == 200:
                op.outcome, op.valid = "ok", True
            elif r.status_code == 401:
                op.outcome, op.valid = "ok", False
            else:
                op.outcome, op.detail = _outcome(r, 200)
        except httpx.HTTPError as exc:
            op.outcome, op.detail = "unknown", type(exc).__name__
        op.end = time.monotonic()
        self.history.add(op)

    def _revoke(self, client: httpx.Client, node: ClusterNodeProcess, rnd: random.Random) -> None:
        made = self._pick(rnd)
        if made is None:
            return
        op = Op("revoke", node.node_id, time.monotonic(), session_id=made.session_id,
                token=made.token)  # fmt: skip
        try:
            r = client.post(f"/sessions/{made.session_id}/revoke")
            op.outcome, op.detail = _outcome(r, 200)
        except httpx.HTTPError as exc:
            op.outcome, op.detail = "unknown", type(exc).__name__
        op.end = time.monotonic()
        self.history.add(op)


class MapMonitor:
    """Polls the shard map in etcd every 100 ms and checks the epoch rules."""

    def __init__(self, cluster: TestCluster) -> None:
        self.cluster = cluster
        self.seen: dict[tuple[int, int], str] = {}
        self.versions: list[int] = []
        self.violations: list[str] = []
        self._last: ShardMap | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                current = self.cluster.shard_map()
            except Exception:  # etcd member down meanwhile: poll another time
                time.sleep(0.1)
                continue
            self.observe(current)
            time.sleep(0.1)

    def observe(self, current: ShardMap) -> None:
        last = self._last
        if last is not None and current.version < last.version:
            self.violations.append(f"map version went back {last.version} -> {current.version}")
        if last is None or current.version != last.version:
            self.versions.append(current.version)
        for shard in range(len(current.owners)):
            epoch, owner = current.epochs[shard], current.owners[shard]
            if last is not None and epoch < last.epochs[shard]:
                self.violations.append(f"shard {shard}: epoch went back")
            held = self.seen.setdefault((shard, epoch), owner)
            if held != owner:
                self.violations.append(f"shard {shard} epoch {epoch}: owners {held} and {owner}")
        self._last = current


@dataclass
class Report:
    """What :func:`check` found."""

    creates_acknowledged: int
    revokes_acknowledged: int
    validations: int
    lost_creates: list[tuple[str, float]]  # (session id, seconds before the fault)
    revived: list[str]  # tokens valid after their revoke was acknowledged
    unknown: int


def check(
    load: Load,
    live: Sequence[ClusterNodeProcess],
    fault_at: float,
    final_valid: Callable[[ClusterNodeProcess, str], bool | None] | None = None,
) -> Report:
    """Run the checks of the module doc over ``load``'s history; returns the report (the
    caller asserts on it)."""
    ops = load.history
    creates = ops.of("create", "ok")
    revokes = ops.of("revoke")
    acked_revokes = {o.token: o.end for o in revokes if o.outcome == "ok"}
    maybe_revoked = {o.token for o in revokes if o.outcome != "failed"}
    revived = []
    for v in ops.of("validate", "ok"):
        acked = acked_revokes.get(v.token)
        if v.valid and acked is not None and v.start > acked:
            revived.append(f"{v.token[:12]}… valid on {v.node} {v.start - acked:.3f}s after revoke")
    final = final_valid or _final_valid(load.key)
    # Final state, asked of every live node.
    for token in acked_revokes:
        for node in live:
            if final(node, token):
                revived.append(f"{token[:12]}… still valid on {node.node_id} at the end")
    lost = []
    node0 = live[0]
    for c in creates:
        if c.token in maybe_revoked:
            continue
        if final(node0, c.token) is False:
            lost.append((c.session_id, fault_at - c.end))
    return Report(
        creates_acknowledged=len(creates),
        revokes_acknowledged=len(acked_revokes),
        validations=len(ops.of("validate", "ok")),
        lost_creates=lost,
        revived=revived,
        unknown=sum(1 for o in ops.ops if o.outcome == "unknown"),
    )


def _final_valid(key: str) -> Callable[[ClusterNodeProcess, str], bool | None]:
    clients: dict[str, httpx.Client] = {}

    def valid(node: ClusterNodeProcess, token: str) -> bool | None:
        client = clients.get(node.node_id)
        if client is None:
            client = clients[node.node_id] = httpx.Client(
                base_url=node.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=5
            )
        for _ in range(50):
            r = client.post("/tokens/validate", json={"token": token})
            if r.status_code in (200, 401):
                return r.status_code == 200
            time.sleep(0.1)
        raise AssertionError(f"{node.node_id} keeps answering {r.status_code}: {r.text}")

    return valid


def summary(report: Report) -> dict[str, Any]:
    """A printable summary of a report."""
    return {
        "creates_acknowledged": report.creates_acknowledged,
        "revokes_acknowledged": report.revokes_acknowledged,
        "validations": report.validations,
        "unknown_outcomes": report.unknown,
        "lost_creates": len(report.lost_creates),
        "lost_within_s_of_fault": max((w for _, w in report.lost_creates), default=0.0),
        "revived": len(report.revived),
    }
