"""The SWIM state machine alone: probes, indirect probes, suspicion, refutation."""

from __future__ import annotations

import random

from tokmesh.cluster.swim import (
    Ack,
    Action,
    Nack,
    SendPing,
    SendPingReq,
    Status,
    StatusChanged,
    Swim,
    Update,
)

STEP = 0.05


class Net:
    """Instant delivery between machines; nodes can be dead and links broken."""

    def __init__(self, names: list[str], seed: int) -> None:
        self.nodes = {n: Swim(n, rng=random.Random(f"{seed}-{n}")) for n in names}
        for swim in self.nodes.values():
            swim.set_members(names)
        self.dead: set[str] = set()
        self.broken: set[frozenset[str]] = set()
        self.log: list[tuple[float, str, Action]] = []

    def up(self, a: str, b: str) -> bool:
        return b not in self.dead and frozenset((a, b)) not in self.broken

    def run(self, until: float, start: float = 0.0) -> float:
        t = start
        while t < until:
            for name, swim in self.nodes.items():
                if name not in self.dead:
                    self.carry_out(name, t, swim.tick(t))
            t = round(t + STEP, 6)
        return t

    def carry_out(self, name: str, t: float, actions: list[Action]) -> None:
        me = self.nodes[name]
        for action in actions:
            self.log.append((t, name, action))
            if isinstance(action, SendPing) and self.up(name, action.target):
                ack, more = self.nodes[action.target].on_ping(name, action.message)
                self.carry_out(action.target, t, more)
                self.carry_out(name, t, me.on_ack(action.probe, ack))
            elif isinstance(action, SendPingReq) and self.up(name, action.via):
                relay = self.nodes[action.via]
                ping, more = relay.on_ping_req(name, action.message)
                reply = None
                if self.up(action.via, action.target):
                    reply, _ = self.nodes[action.target].on_ping(action.via, ping)
                answer, more2 = relay.relay_result(name, reply)
                self.carry_out(action.via, t, more + more2)
                if isinstance(answer, Ack):
                    self.carry_out(name, t, me.on_ack(action.probe, answer))
                else:
                    self.carry_out(name, t, me.on_nack(action.probe, answer))

    def changes(self, observer: str, node: str) -> list[tuple[float, Status]]:
        return [
            (t, a.status)
            for t, who, a in self.log
            if who == observer and isinstance(a, StatusChanged) and a.node == node
        ]


def test_dead_member_becomes_suspect_after_direct_and_indirect_probes_fail() -> None:
    swim = Swim("a", rng=random.Random(1))
    swim.set_members(["a", "b", "c", "d", "x"])
    t = 0.0
    while True:  # answer every probe until x is the target
        actions = swim.tick(t)
        pings = [a for a in actions if isinstance(a, SendPing)]
        if pings and pings[0].target == "x":
            probe, started = pings[0].probe, t
            break
        for ping in pings:
            swim.on_ack(ping.probe, Ack())
        t += STEP
    assert [a for a in swim.tick(started + 0.49) if isinstance(a, SendPingReq)] == []
    actions = swim.tick(started + 0.5)
    requests = [a for a in actions if isinstance(a, SendPingReq)]
    assert len(requests) == len(actions)
    assert sorted(a.via for a in requests) == ["b", "c", "d"]
    assert all(a.target == "x" and a.probe == probe for a in requests)
    for _ in requests:
        swim.on_nack(probe, Nack())
    assert swim.tick(started + 0.99) == []
    assert swim.status_of("x") is Status.ALIVE
    end = swim.tick(started + 1.0)
    assert StatusChanged("x", Status.SUSPECT, 0) in end
    assert swim.status_of("x") is Status.SUSPECT


def test_member_reachable_only_indirectly_stays_alive() -> None:
    net = Net(["a", "b", "c", "x"], seed=3)
    net.broken.add(frozenset(("a", "x")))
    net.run(until=20.0)
    relayed = [a for _, who, a in net.log if who == "a" and isinstance(a, SendPingReq)]
    assert relayed and all(a.target == "x" for a in relayed)
    assert net.changes("a", "x") == []
    assert net.nodes["a"].status_of("x") is Status.ALIVE


def test_killed_member_suspected_by_every_other_member() -> None:
    net = Net(["a", "b", "c"], seed=4)
    t = net.run(until=5.0)
    net.dead.add("c")
    net.run(until=t + 3.0, start=t)
    assert net.nodes["a"].status_of("c") is Status.SUSPECT
    assert net.nodes["b"].status_of("c") is Status.SUSPECT


def test_refutation_with_higher_incarnation_clears_suspicion() -> None:
    a, x = Swim("a", rng=random.Random(1)), Swim("x", rng=random.Random(2))
    a.set_members(["a", "x"])
    x.set_members(["a", "x"])
    a.receive([Update("x", Status.SUSPECT, 0)])
    assert a.status_of("x") is Status.SUSPECT
    # Stale news of x being alive at the suspected incarnation does not clear it.
    assert a.receive([Update("x", Status.ALIVE, 0)]) == []
    assert a.status_of("x") is Status.SUSPECT
    # a's next ping to x carries the suspicion; x refutes in its ack.
    a.tick(0.0)
    ping = next(act for act in a.tick(5.0) if isinstance(act, SendPing))
    assert ping.target == "x"
    ack, _ = x.on_ping("a", ping.message)
    assert x.incarnation == 1
    assert a.on_ack(ping.probe, ack) == [StatusChanged("x", Status.ALIVE, 1)]
    assert a.status_of("x") is Status.ALIVE


def test_runs_are_deterministic() -> None:
    def run(seed: int) -> list[tuple[float, str, Action]]:
        net = Net(["a", "b", "c", "d", "e"], seed=seed)
        net.broken.add(frozenset(("a", "b")))
        t = net.run(until=4.0)
        net.dead.add("e")
        net.run(until=t + 4.0, start=t)
        return net.log

    first = run(7)
    assert first == run(7)
    assert first != run(8)


def test_each_member_probed_once_every_m_periods() -> None:
    # A fixed cycle bounds detection: a dead member is probed within M periods.
    swim = Swim("a", rng=random.Random(9))
    swim.set_members(["a", "b", "c", "d", "e"])
    targets: list[str] = []
    t = 0.0
    while len(targets) < 12:
        for action in swim.tick(t):
            if isinstance(action, SendPing):
                targets.append(action.target)
                swim.on_ack(action.probe, Ack())
        t += STEP
    assert sorted(targets[:4]) == ["b", "c", "d", "e"]
    assert targets[4:8] == targets[:4] and targets[8:] == targets[:4]
    swim.set_members(["a", "b", "c", "e"])
    after: list[str] = []
    while len(after) < 6:
        for action in swim.tick(t):
            if isinstance(action, SendPing):
                after.append(action.target)
                swim.on_ack(action.probe, Ack())
        t += STEP
    assert sorted(after[:3]) == ["b", "c", "e"] and after[3:] == after[:3]
