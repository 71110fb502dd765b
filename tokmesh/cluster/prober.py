"""The gossip prober actor: runs the SWIM state machine on Trio over a pluggable transport.

The state machine (:mod:`tokmesh.cluster.swim`) decides; this actor keeps its clock
(``trio.current_time()``, so tests can run it under a mock clock), sends what it asks for,
feeds answers back, and answers probes from other nodes (:meth:`Prober.handle`, which the
cluster port calls for each incoming prober message).

The transport is one call, ``await transport(peer, message) -> reply``. The real one
speaks over the mTLS cluster port; tests use an in-memory network. A transport signals an
unreachable peer by raising :class:`TransportError` (or ``OSError`` / a broken Trio
stream), or by not answering: every call runs under a deadline here, so a lost message is
simply a probe without an ack.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable
from typing import Protocol

import trio

from tokmesh.cluster.swim import (
    Ack,
    Action,
    Message,
    Nack,
    Ping,
    PingReq,
    SendGossip,
    SendPing,
    SendPingReq,
    Status,
    StatusChanged,
    Swim,
    SwimConfig,
)

log = logging.getLogger("tokmesh.cluster.prober")

#: Called with (node id, new status) whenever the prober's belief about a member changes.
ChangeCallback = Callable[[str, Status], None]


class TransportError(Exception):
    """The transport could not deliver a message or get its answer."""


class Transport(Protocol):
    """Sends one prober message to a peer and returns the peer's answer."""

    async def __call__(self, peer: str, message: Message) -> Message:
        """Deliver ``message`` to ``peer``; its reply (``Ack`` / ``Nack``)."""
        ...


#: What a failed delivery may raise; anything else is a bug and crashes the actor.
_UNREACHABLE = (TransportError, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class Prober:
    """One node's failure detector. Start :meth:`run` in a nursery, then feed it members."""

    def __init__(
        self,
        node_id: str,
        transport: Transport,
        *,
        config: SwimConfig | None = None,
        rng: random.Random | None = None,
        on_change: ChangeCallback | None = None,
    ) -> None:
        self.node_id = node_id
        self._swim = Swim(node_id, config, rng)
        self._config = self._swim.config
        self._transport = transport
        self._on_change = on_change
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()

    # -- queries -----------------------------------------------------------------------------

    def state_of(self, node_id: str) -> Status | None:
        """The believed status of ``node_id`` (``None``: not a member)."""
        return self._swim.status_of(node_id)

    def members(self) -> dict[str, Status]:
        """Every other member and its believed status."""
        return self._swim.members()

    @property
    def incarnation(self) -> int:
        """This node's own incarnation (raised each time it refutes a suspicion)."""
        return self._swim.incarnation

    # -- control -----------------------------------------------------------------------------

    def set_members(self, node_ids: Iterable[str]) -> None:
        """Replace the member list (from etcd's membership); this node may be in it."""
        self._swim.set_members(node_ids)
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe until cancelled. Probes in flight run in a child nursery, so a slow peer
        never delays the next period."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                while True:
                    self._apply(self._swim.tick(trio.current_time()))
                    deadline = self._swim.next_deadline()
                    with trio.move_on_at(math.inf if deadline is None else deadline):
                        await self._wake.wait()
                    self._wake = trio.Event()
            finally:
                self._nursery = None

    # -- the answering side ------------------------------------------------------------------

    async def handle(self, sender: str, message: Message) -> Message:
        """Answer a prober message from ``sender`` (called by the cluster port).

        A ``PingReq`` is answered after pinging its target, within the probe timeout.
        """
        if isinstance(message, Ping):
            ack, actions = self._swim.on_ping(sender, message)
            self._apply(actions)
            return ack
        if isinstance(message, PingReq):
            ping, actions = self._swim.on_ping_req(sender, message)
            self._apply(actions)
            reply = await self._call(message.target, ping, self._config.probe_timeout)
            answer, actions = self._swim.relay_result(
                sender, reply if isinstance(reply, Ack) else None
            )
            self._apply(actions)
            return answer
        raise TransportError(f"unexpected prober message {type(message).__name__}")

    # -- internals ---------------------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, StatusChanged):
                log.info(
                    "member %s is %s (incarnation %d)",
                    action.node,
                    action.status.value,
                    action.incarnation,
                )
                if self._on_change is not None:
                    self._on_change(action.node, action.status)
            elif self._nursery is not None:
                self._nursery.start_soon(self._send, action)

    async def _send(self, action: SendPing | SendPingReq | SendGossip) -> None:
        cfg = self._config
        if isinstance(action, SendGossip):
            reply = await self._call(action.target, action.message, cfg.probe_timeout)
            if isinstance(reply, Ack):
                self._apply(self._swim.receive(reply.updates))
            return
        if isinstance(action, SendPing):
            # A late direct ack still counts until the period ends.
            reply = await self._call(action.target, action.message, cfg.probe_interval)
        else:
            # The relay spends up to the probe timeout on the target; what is left of the
            # period is our budget for its answer.
            budget = cfg.probe_interval - cfg.probe_timeout
            reply = await self._call(action.via, action.message, budget)
        if isinstance(reply, Ack):
            self._apply(self._swim.on_ack(action.probe, reply))
        elif isinstance(reply, Nack):
            self._apply(self._swim.on_nack(action.probe, reply))
        self._wake.set()  # the probe may be over: let run() recompute its deadline

    async def _call(self, peer: str, message: Message, timeout: float) -> Message | None:
        """``transport(peer, message)`` under ``timeout``; ``None`` when it fails."""
        with trio.move_on_after(timeout):
            try:
                return await self._transport(peer, message)
            except _UNREACHABLE as err:
                log.debug("probe message to %s failed: %s", peer, err)
        return None
