"""SWIM-style failure detection as a pure state machine: events in, actions out, no I/O.

Each protocol period (1 s) the node probes one member, cycling through the members in a
random order fixed when they join, so each of the M other members is probed once every M
periods (a new shuffle per round, as in the SWIM paper, can leave 2M-1 periods between two
probes of one member). The probe is a direct ``Ping``; if no ``Ack`` has come after the
probe timeout (500 ms), up to three other members are asked to ping the target for us
(``PingReq``), which tells a dead member from a broken link between two live ones. If no
ack, direct or relayed, has come by the end of the period, the member becomes *suspect*.

Suspicion is gossiped as small updates ``(node, status, incarnation)``, piggy-backed on
every message and, while there is news, pushed to a few random members every 200 ms. A
node that hears it is suspect at its own incarnation (or later) refutes by bumping its
incarnation and gossiping itself alive; an ``Alive`` update only overrides a ``Suspect``
one with a higher incarnation, so stale news cannot undo newer news. Pings to a suspect
member always carry its suspicion, so it learns of it from the next probe.

This machine only says *alive* or *suspect*. The final verdict (dead, and its shards given
away) is etcd's: the member's lease expiring. So there is no suspicion timeout here, and
the member list is set from outside (from etcd), never grown by gossip.

Time is whatever the caller passes (seconds, any origin) and randomness comes from an
injected :class:`random.Random`, so a run is reproducible.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass


class Status(enum.Enum):
    """What the prober believes of a member."""

    ALIVE = "alive"
    SUSPECT = "suspect"


@dataclass(frozen=True, slots=True)
class Update:
    """One piece of gossip: ``node`` is ``status`` at ``incarnation``."""

    node: str
    status: Status
    incarnation: int


# -- messages between probers (the transport carries them; encoding is the transport's) ------


@dataclass(frozen=True, slots=True)
class Ping:
    """Are you there? Answered by :class:`Ack`."""

    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    """Please ping ``target`` for me. Answered by :class:`Ack` (it answered) or :class:`Nack`."""

    target: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """I am there (or, from a relay: the target answered)."""

    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """From a relay: the target did not answer me in time."""

    updates: tuple[Update, ...] = ()


Message = Ping | PingReq | Ack | Nack


# -- actions for the driver ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send ``message`` to ``target``; report its ``Ack`` with :meth:`Swim.on_ack`."""

    probe: int
    target: str
    message: Ping


@dataclass(frozen=True, slots=True)
class SendPingReq:
    """Ask ``via`` to ping ``target``; report its answer with :meth:`Swim.on_ack` or
    :meth:`Swim.on_nack`."""

    probe: int
    via: str
    target: str
    message: PingReq


@dataclass(frozen=True, slots=True)
class SendGossip:
    """Send pending gossip to ``target`` as a ``Ping``; merge its ``Ack`` with
    :meth:`Swim.receive` (the ack says nothing about any probe)."""

    target: str
    message: Ping


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """The prober's belief about ``node`` changed."""

    node: str
    status: Status
    incarnation: int


Action = SendPing | SendPingReq | SendGossip | StatusChanged


@dataclass(frozen=True, slots=True)
class SwimConfig:
    """Timing and fan-out (defaults: the LAN profile of hashicorp/memberlist)."""

    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    #: while there is news, it is also pushed to this many members every gossip interval
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    #: each update is sent ``retransmit_mult * ceil(log10(cluster size + 1))`` times
    retransmit_mult: int = 4
    #: at most this many updates ride on one message
    max_piggyback: int = 8


@dataclass(slots=True)
class _Member:
    status: Status
    incarnation: int


@dataclass(slots=True)
class _Probe:
    id: int
    target: str
    started: float
    indirect_sent: bool = False


class Swim:
    """The failure detector of one node. Feed it events; carry out the actions it returns."""

    def __init__(
        self, node_id: str, config: SwimConfig | None = None, rng: random.Random | None = None
    ) -> None:
        self.node_id = node_id
        self.config = config or SwimConfig()
        self.incarnation = 0
        self._rng = rng or random.Random()
        self._members: dict[str, _Member] = {}
        #: probe order (a random permutation, cycled through) and the next index in it
        self._order: list[str] = []
        self._cursor = 0
        self._probe: _Probe | None = None
        self._next_probe_at: float | None = None
        self._next_gossip_at = 0.0
        self._seq = 0
        #: node -> (update, sends left); one rumour per node, the newest
        self._rumours: dict[str, tuple[Update, int]] = {}

    # -- queries ---------------------------------------------------------------------------

    def status_of(self, node_id: str) -> Status | None:
        """The believed status of a member (``None`` for an unknown node)."""
        member = self._members.get(node_id)
        return member.status if member is not None else None

    def incarnation_of(self, node_id: str) -> int | None:
        """The highest incarnation heard of a member (``None`` for an unknown node)."""
        member = self._members.get(node_id)
        return member.incarnation if member is not None else None

    def members(self) -> dict[str, Status]:
        """Every member (this node excluded) and its believed status."""
        return {node: m.status for node, m in self._members.items()}

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do (``None``: nothing until an event)."""
        times = []
        if self._next_probe_at is not None and self._members:
            times.append(self._next_probe_at)
        probe = self._probe
        if probe is not None:
            if not probe.indirect_sent:
                times.append(probe.started + self.config.probe_timeout)
            times.append(probe.started + self.config.probe_interval)
        if self._rumours and self._members:
            times.append(self._next_gossip_at)
        return min(times, default=None)

    # -- events ----------------------------------------------------------------------------

    def set_members(self, node_ids: Iterable[str]) -> None:
        """Replace the member list (from etcd). New members start alive at incarnation 0."""
        wanted = set(node_ids) - {self.node_id}
        for gone in set(self._members) - wanted:
            del self._members[gone]
            self._rumours.pop(gone, None)
            at = self._order.index(gone)
            del self._order[at]
            if at < self._cursor:
                self._cursor -= 1
        for node in sorted(wanted - set(self._members)):
            self._members[node] = _Member(Status.ALIVE, 0)
            # A random place in the cycle: inserting one by one builds a random permutation.
            at = self._rng.randint(0, len(self._order))
            self._order.insert(at, node)
            if at < self._cursor:
                self._cursor += 1
        if self._probe is not None and self._probe.target not in self._members:
            self._probe = None

    def tick(self, now: float) -> list[Action]:
        """Advance to ``now``: send indirect probes, conclude a probe, start the next one."""
        actions: list[Action] = []
        cfg = self.config
        probe = self._probe
        timed_out = probe is not None and now >= probe.started + cfg.probe_timeout
        if probe is not None and timed_out and not probe.indirect_sent:
            probe.indirect_sent = True
            # Suspect members make poor relays; sorted so the seeded choice is reproducible.
            helpers = sorted(
                node
                for node, member in self._members.items()
                if node != probe.target and member.status is Status.ALIVE
            )
            for via in self._rng.sample(helpers, min(cfg.indirect_checks, len(helpers))):
                message = PingReq(probe.target, self._outgoing(via))
                actions.append(SendPingReq(probe.id, via, probe.target, message))
        if probe is not None and now >= probe.started + cfg.probe_interval:
            self._probe = None
            actions.extend(self._suspect(probe.target))
        if self._next_probe_at is None:
            # Spread the first probe over one period so nodes started together do not
            # probe in lockstep.
            self._next_probe_at = now + self._rng.uniform(0, cfg.probe_interval)
        if self._probe is None and now >= self._next_probe_at:
            target = self._next_target()
            if target is not None:
                self._seq += 1
                self._probe = _Probe(self._seq, target, now)
                actions.append(SendPing(self._seq, target, Ping(self._outgoing(target))))
                self._next_probe_at = now + cfg.probe_interval
        if self._rumours and now >= self._next_gossip_at:
            # Piggy-backing alone would spread news at the probe rate (one message a
            # second); pushing it spreads a suspicion to everyone within a few hundred ms.
            self._next_gossip_at = now + cfg.gossip_interval
            peers = sorted(self._members)
            for peer in self._rng.sample(peers, min(cfg.gossip_nodes, len(peers))):
                actions.append(SendGossip(peer, Ping(self._outgoing(peer))))
        return actions

    def on_ack(self, probe: int, ack: Ack) -> list[Action]:
        """An ``Ack`` for probe ``probe`` arrived (direct, or relayed by a ``PingReq``)."""
        actions = self.receive(ack.updates)
        if self._probe is not None and self._probe.id == probe:
            self._probe = None
        return actions

    def on_nack(self, probe: int, nack: Nack) -> list[Action]:
        """A relay could not reach the target of probe ``probe``; only its gossip counts."""
        return self.receive(nack.updates)

    def on_ping(self, sender: str, ping: Ping) -> tuple[Ack, list[Action]]:
        """Answer a ``Ping`` from ``sender``."""
        actions = self.receive(ping.updates)
        return Ack(self._outgoing(sender)), actions

    def on_ping_req(self, sender: str, request: PingReq) -> tuple[Ping, list[Action]]:
        """A ``PingReq`` from ``sender``: the ``Ping`` to send to its target for it."""
        actions = self.receive(request.updates)
        return Ping(self._outgoing(request.target)), actions

    def relay_result(self, sender: str, reply: Ack | None) -> tuple[Ack | Nack, list[Action]]:
        """The target of a relayed ping answered with ``reply`` (``None``: it did not in
        time); the answer to send back to ``sender``."""
        actions = self.receive(reply.updates) if reply is not None else []
        updates = self._outgoing(sender)
        return (Ack(updates) if reply is not None else Nack(updates)), actions

    def receive(self, updates: Iterable[Update]) -> list[Action]:
        """Merge gossip. Higher incarnations win; at equal incarnation suspect beats alive."""
        actions: list[Action] = []
        for update in updates:
            if update.node == self.node_id:
                if update.status is Status.SUSPECT and update.incarnation >= self.incarnation:
                    # Refute: only this node may raise its own incarnation.
                    self.incarnation = update.incarnation + 1
                    self._spread(Update(self.node_id, Status.ALIVE, self.incarnation))
                continue
            member = self._members.get(update.node)
            if member is None:
                continue  # membership comes from etcd, not from gossip
            newer = update.incarnation > member.incarnation
            if update.status is Status.SUSPECT:
                newer = newer or (
                    update.incarnation == member.incarnation and member.status is Status.ALIVE
                )
            if not newer:
                continue
            changed = member.status is not update.status
            member.status, member.incarnation = update.status, update.incarnation
            self._spread(update)
            if changed:
                actions.append(StatusChanged(update.node, update.status, update.incarnation))
        return actions

    # -- internals -------------------------------------------------------------------------

    def _suspect(self, node: str) -> list[Action]:
        member = self._members.get(node)
        if member is None or member.status is Status.SUSPECT:
            return []
        member.status = Status.SUSPECT
        self._spread(Update(node, Status.SUSPECT, member.incarnation))
        return [StatusChanged(node, Status.SUSPECT, member.incarnation)]

    def _next_target(self) -> str | None:
        """The next member in the probe cycle."""
        if not self._order:
            return None
        if self._cursor >= len(self._order):
            self._cursor = 0
        node = self._order[self._cursor]
        self._cursor += 1
        return node

    def _spread(self, update: Update) -> None:
        size = len(self._members) + 1
        sends = self.config.retransmit_mult * max(1, math.ceil(math.log10(size + 1)))
        self._rumours[update.node] = (update, sends)

    def _outgoing(self, to: str) -> tuple[Update, ...]:
        """The updates to piggy-back on a message to ``to``, freshest first.

        A suspect recipient always hears of its suspicion, however often it was gossiped,
        so it can refute it.
        """
        out: list[Update] = []
        member = self._members.get(to)
        if member is not None and member.status is Status.SUSPECT:
            out.append(Update(to, Status.SUSPECT, member.incarnation))
        ranked = sorted(self._rumours.items(), key=lambda item: (-item[1][1], item[0]))
        for node, (update, sends) in ranked:
            if len(out) >= self.config.max_piggyback:
                break
            if node == to and out and out[0].node == to:
                continue  # its suspicion is already in
            out.append(update)
            if sends <= 1:
                del self._rumours[node]
            else:
                self._rumours[node] = (update, sends - 1)
        return tuple(out)
