"""The gossip prober's messages as JSON values for the cluster port (no I/O here).

A message is ``{"t": kind, "u": [[node, status, incarnation], ...]}`` plus ``"target"``
for a ping request. Anything else is refused with :class:`ValueError`, which the cluster
port turns into an error answer: a peer cannot make the prober act on a half-read message.
"""

from __future__ import annotations

from typing import Any

from tokmesh.cluster.swim import Ack, Message, Nack, Ping, PingReq, Status, Update

__all__ = ["decode", "encode"]

_KINDS: dict[type, str] = {Ping: "ping", PingReq: "ping_req", Ack: "ack", Nack: "nack"}


def encode(message: Message) -> dict[str, Any]:
    """The JSON value of ``message``."""
    body: dict[str, Any] = {
        "t": _KINDS[type(message)],
        "u": [[u.node, u.status.value, u.incarnation] for u in message.updates],
    }
    if isinstance(message, PingReq):
        body["target"] = message.target
    return body


def _updates(raw: Any) -> tuple[Update, ...]:
    if not isinstance(raw, list):
        raise ValueError("updates must be a list")
    out = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 3):
            raise ValueError("an update must be [node, status, incarnation]")
        node, status, incarnation = item
        if not isinstance(node, str) or not node:
            raise ValueError("an update's node must be a non-empty string")
        if isinstance(incarnation, bool) or not isinstance(incarnation, int) or incarnation < 0:
            raise ValueError("an update's incarnation must be a non-negative integer")
        out.append(Update(node, Status(status), incarnation))
    return tuple(out)


def decode(body: Any) -> Message:
    """The message a JSON value holds; :class:`ValueError` if it holds none."""
    if not isinstance(body, dict):
        raise ValueError("a prober message must be an object")
    kind = body.get("t")
    updates = _updates(body.get("u", []))
    if kind == "ping":
        return Ping(updates)
    if kind == "ack":
        return Ack(updates)
    if kind == "nack":
        return Nack(updates)
    if kind == "ping_req":
        target = body.get("target")
        if not isinstance(target, str) or not target:
            raise ValueError("a ping request needs a target")
        return PingReq(target, updates)
    raise ValueError(f"unknown prober message kind {kind!r}")
