"""How many connections the descriptor limit leaves room for (``server.max_connections``).

Every TCP connection holds a file descriptor, and so does everything the node must never
fail to open: the WAL segment it rotates to, a snapshot it writes, the audit day file, a
certificate it reloads, a connection to the local admin socket. When connections take
every descriptor, those fail instead (a WAL that cannot rotate stops all writes until a
restart). So the connection cap defaults to the process's soft ``RLIMIT_NOFILE`` minus
:data:`RESERVE`: about fifty descriptors are in use before the first client connects
(listeners, epoll sets, Trio's wake-up socket, the WAL segment, the audit file, standard
streams), and a snapshot or a rotation needs a handful more.
"""

from __future__ import annotations

import resource

#: Descriptors kept out of the derived cap for files, WAL segments, snapshots and the
#: local admin socket.
RESERVE = 64
#: The derived cap never goes below this, however low the descriptor limit.
MINIMUM_CAP = 16


def descriptor_limit() -> int | None:
    """The soft ``RLIMIT_NOFILE`` of this process, or ``None`` when unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def derived_max_connections(soft_limit: int | None) -> int:
    """The cap that ``server.max_connections: 0`` means under ``soft_limit`` (0 = none)."""
    if soft_limit is None:
        return 0
    return max(soft_limit - RESERVE, MINIMUM_CAP)


def effective_max_connections(configured: int, soft_limit: int | None) -> int:
    """The cap in force: ``configured`` when set, else the derived one (0 = no cap)."""
    return configured if configured > 0 else derived_max_connections(soft_limit)


def above_limit_warning(configured: int, soft_limit: int | None) -> str | None:
    """The start-up WARN for a configured cap the descriptor limit cannot honour."""
    if configured <= 0 or soft_limit is None or configured <= soft_limit - RESERVE:
        return None
    return (
        f"server.max_connections {configured} is above what the descriptor limit allows "
        f"(RLIMIT_NOFILE {soft_limit} minus {RESERVE} reserved): running out of descriptors, "
        "not the cap, will refuse connections, and WAL rotation or snapshots may fail; "
        "raise the limit (LimitNOFILE= in systemd, ulimit -n) or lower the key"
    )
