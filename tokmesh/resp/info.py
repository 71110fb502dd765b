"""The text of INFO, in Redis' format, from facts gathered by the caller (sans-IO).

Redis' format: sections ``# Title`` followed by ``field:value`` lines, every line ended
by CRLF, sections separated by an empty line. Tools parse it loosely but exactly:
``redis-cli --stat`` finds each field with ``strstr`` and reads up to the next ``\\r`` or
``,``, so every field it reads must be present (a missing one prints garbage), every
line must end with ``\\r``, and the first occurrence of ``loading`` must be that field.
It reads ``db<N>:keys``, ``used_memory``, ``connected_clients``, ``blocked_clients``,
``total_commands_processed``, ``total_connections_received``,
``rdb_bgsave_in_progress``, ``aof_rewrite_in_progress`` and ``loading``. ioredis waits
while ``loading:1``, which TokMesh reports while a restore runs.

Fields Redis reports about machinery TokMesh does not have (forks, replication
buffers, allocator internals) are left out rather than invented; ``used_memory`` is the
resident set size, since a Python process has no cheaper honest figure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import attrs

#: The Redis version whose replies TokMesh's RESP front end gives (HELLO, INFO): clients
#: that turn features on by server version see Redis 7.2, whose commands they may send.
REDIS_COMPAT_VERSION: Final = "7.2.0"


@attrs.frozen
class InfoFacts:
    """Everything INFO reports, read once per INFO command."""

    tokmesh_version: str
    node_id: str
    run_id: str
    process_id: int
    os: str
    arch_bits: int
    tcp_port: int
    server_time_usec: int
    uptime_seconds: int
    connected_clients: int
    max_clients: int
    resp3_clients: int
    total_connections: int
    total_commands: int
    ops_per_sec: int
    protocol_errors: int
    timeouts: int
    used_memory: int
    peak_memory: int
    restoring: bool
    sessions: int


def human_bytes(n: int) -> str:
    """Redis' ``bytesToHuman``: ``100B``, ``1.23K``, ``11.84M``..."""
    if n < 1024:
        return f"{n}B"
    value = float(n)
    for unit in "KMGTP":
        value /= 1024
        if value < 1024 or unit == "P":
            return f"{value:.2f}{unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def _server(f: InfoFacts) -> list[str]:
    return [
        f"redis_version:{REDIS_COMPAT_VERSION}",
        "redis_mode:standalone",
        f"os:{f.os}",
        f"arch_bits:{f.arch_bits}",
        "multiplexing_api:epoll",
        f"process_id:{f.process_id}",
        "process_supervised:no",
        f"run_id:{f.run_id}",
        f"tcp_port:{f.tcp_port}",
        f"server_time_usec:{f.server_time_usec}",
        f"uptime_in_seconds:{f.uptime_seconds}",
        f"uptime_in_days:{f.uptime_seconds // 86400}",
        "server_name:tokmesh",
        f"tokmesh_version:{f.tokmesh_version}",
    ]


def _clients(f: InfoFacts) -> list[str]:
    return [
        f"connected_clients:{f.connected_clients}",
        f"maxclients:{f.max_clients}",
        "blocked_clients:0",
        "tracking_clients:0",
        "pubsub_clients:0",
    ]


def _memory(f: InfoFacts) -> list[str]:
    return [
        f"used_memory:{f.used_memory}",
        f"used_memory_human:{human_bytes(f.used_memory)}",
        f"used_memory_rss:{f.used_memory}",
        f"used_memory_rss_human:{human_bytes(f.used_memory)}",
        f"used_memory_peak:{f.peak_memory}",
        f"used_memory_peak_human:{human_bytes(f.peak_memory)}",
        "maxmemory:0",
        "maxmemory_human:0B",
        "maxmemory_policy:noeviction",
    ]


def _persistence(f: InfoFacts) -> list[str]:
    # TokMesh never forks: its snapshots are written by a task of the server process.
    return [
        f"loading:{int(f.restoring)}",
        "async_loading:0",
        "rdb_bgsave_in_progress:0",
        "aof_rewrite_in_progress:0",
    ]


def _stats(f: InfoFacts) -> list[str]:
    return [
        f"total_connections_received:{f.total_connections}",
        f"total_commands_processed:{f.total_commands}",
        f"instantaneous_ops_per_sec:{f.ops_per_sec}",
        "rejected_connections:0",
    ]


def _keyspace(f: InfoFacts) -> list[str]:
    if not f.sessions:
        return []  # Redis lists only non-empty databases
    # Every session counts as a key with an expiry: counting the rare ones without one
    # would need a walk over all sessions, and INFO must stay O(1).
    return [f"db0:keys={f.sessions},expires={f.sessions},avg_ttl=0"]


def _tokmesh(f: InfoFacts) -> list[str]:
    return [
        f"tokmesh_version:{f.tokmesh_version}",
        f"node_id:{f.node_id}",
        f"sessions:{f.sessions}",
        f"maintenance:{int(f.restoring)}",
        f"resp3_clients:{f.resp3_clients}",
        f"resp_protocol_errors:{f.protocol_errors}",
        f"resp_timeouts:{f.timeouts}",
    ]


#: The sections in the order INFO writes them: name, title, lines.
SECTIONS: Final[tuple[tuple[str, str, Callable[[InfoFacts], list[str]]], ...]] = (
    ("server", "Server", _server),
    ("clients", "Clients", _clients),
    ("memory", "Memory", _memory),
    ("persistence", "Persistence", _persistence),
    ("stats", "Stats", _stats),
    ("keyspace", "Keyspace", _keyspace),
    ("tokmesh", "TokMesh", _tokmesh),
)
_ALL: Final = frozenset(name for name, _, _ in SECTIONS)
# Redis' names for "every section" (TokMesh has no module or error-stat sections).
_EVERYTHING: Final = frozenset({"default", "all", "everything"})


def wanted_sections(args: Sequence[bytes]) -> frozenset[str]:
    """The sections ``INFO [section ...]`` asks for (names are case-insensitive; an
    unknown one adds nothing, as in Redis)."""
    if not args:
        return _ALL
    names = {arg.decode("latin-1").lower() for arg in args}
    if names & _EVERYTHING:
        return _ALL
    return frozenset(names & _ALL)


def render_info(facts: InfoFacts, sections: frozenset[str]) -> str:
    """The INFO text for ``sections`` (empty for none)."""
    blocks = [
        f"# {title}\r\n" + "".join(line + "\r\n" for line in lines(facts))
        for name, title, lines in SECTIONS
        if name in sections
    ]
    return "\r\n".join(blocks)
