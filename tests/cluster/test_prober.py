"""The prober actor over an in-memory network, under Trio's mock clock (autojump)."""

from __future__ import annotations

import random

import trio
import trio.testing

from tokmesh.cluster.prober import Prober, Transport
from tokmesh.cluster.swim import Message, PingReq, Status

LATENCY = 0.002


class Network:
    """Probers wired through memory: a lost message never answers (the caller times out)."""

    def __init__(self, nursery: trio.Nursery, names: list[str]) -> None:
        self.nursery = nursery
        self.names = names
        self.dead: set[str] = set()
        self.broken: set[frozenset[str]] = set()
        self.sent: list[tuple[str, str, Message]] = []
        self.changes: list[tuple[float, str, str, Status]] = []
        self.probers: dict[str, Prober] = {}
        self.scopes: dict[str, trio.CancelScope] = {}

    def transport(self, me: str) -> Transport:
        async def send(peer: str, message: Message) -> Message:
            self.sent.append((me, peer, message))
            await trio.sleep(LATENCY)
            if {me, peer} & self.dead or frozenset((me, peer)) in self.broken:
                await trio.sleep_forever()
            reply = await self.probers[peer].handle(me, message)
            await trio.sleep(LATENCY)
            return reply

        return send

    async def start(self, name: str) -> None:
        def on_change(node: str, status: Status) -> None:
            self.changes.append((trio.current_time(), name, node, status))

        prober = Prober(name, self.transport(name), rng=random.Random(name), on_change=on_change)
        self.probers[name] = prober
        self.scopes[name] = await self.nursery.start(self._run, prober)
        prober.set_members(self.names)

    async def _run(self, prober: Prober, *, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                await inner.start(prober.run)
                task_status.started(scope)

    def kill(self, name: str) -> None:
        self.dead.add(name)
        self.scopes[name].cancel()

    def suspected_at(self, observer: str, node: str) -> float | None:
        for t, who, about, status in self.changes:
            if who == observer and about == node and status is Status.SUSPECT:
                return t
        return None


async def test_killed_node_suspect_within_3_s(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    net = Network(nursery, ["a", "b", "c"])
    for name in net.names:
        await net.start(name)
    await trio.sleep(10)
    assert net.changes == []
    killed = trio.current_time()
    net.kill("c")
    await trio.sleep(3)
    for observer in ("a", "b"):
        seen = net.suspected_at(observer, "c")
        assert seen is not None and seen - killed <= 3.0
        assert net.probers[observer].state_of("c") is Status.SUSPECT
    assert net.probers["a"].state_of("b") is Status.ALIVE
    assert net.probers["b"].state_of("a") is Status.ALIVE


async def test_broken_direct_link_with_indirect_path_stays_alive(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    net = Network(nursery, ["a", "b", "c", "x"])
    net.broken.add(frozenset(("a", "x")))
    for name in net.names:
        await net.start(name)
    await trio.sleep(30)
    relayed = [m for who, _, m in net.sent if who == "a" and isinstance(m, PingReq)]
    assert relayed and all(m.target == "x" for m in relayed)
    assert net.changes == []
    assert net.probers["a"].state_of("x") is Status.ALIVE


async def test_cut_off_node_refutes_when_it_returns(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    net = Network(nursery, ["a", "b", "c"])
    for name in net.names:
        await net.start(name)
    cut = [frozenset(("c", "a")), frozenset(("c", "b"))]
    net.broken.update(cut)
    await trio.sleep(5)
    assert net.probers["a"].state_of("c") is Status.SUSPECT
    net.broken.difference_update(cut)
    await trio.sleep(5)
    assert net.probers["c"].incarnation >= 1
    assert net.probers["a"].state_of("c") is Status.ALIVE
    assert net.probers["b"].state_of("c") is Status.ALIVE
