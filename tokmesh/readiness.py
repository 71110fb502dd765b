"""Node readiness: the storage lifecycle phase plus the named checks of ``/ready``.

The storage engine drives the :class:`Phase` (recovery, restore, stop, failure); other
parts of the node contribute a named check each with :meth:`Readiness.add_check`, a
function returning ``"ok"`` when that part can serve, or a word saying why not (for the
cluster layer: ``readiness.add_check("cluster", membership.readiness)`` answering
``"connecting"`` until the node has joined). ``/ready`` is 200 only when the phase is
:attr:`Phase.READY` and every check says ``"ok"``; its ``details.checks`` shows them all.

This module sits below the actors and the services so that both can use it; it knows
nothing of either.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

import trio

from tokmesh.domain.errors import E, TokMeshError

#: What a check answers when its part can serve.
OK: Final = "ok"

Check = Callable[[], str]


class Phase(enum.Enum):
    """Lifecycle phases of the storage engine, visible to ``/ready`` and the status routes."""

    STARTING = "starting"
    RECOVERING = "recovering"
    READY = "ready"
    RESTORING = "restoring"
    STOPPING = "stopping"
    FAILED = "failed"


def _standalone() -> str:
    # A node that is not part of a cluster has no cluster to wait for.
    return OK


class Readiness:
    """Observable readiness: the storage phase, its reason, and the contributed checks.

    The checks start with ``"cluster"`` answering ``"ok"`` (a standalone node); the
    cluster layer replaces it with its own by adding a check of the same name.
    """

    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.reason = ""
        self.changed = trio.Event()
        self._checks: dict[str, Check] = {"cluster": _standalone}

    def set(self, phase: Phase, reason: str = "") -> None:
        """Move to ``phase`` and wake waiters."""
        self.phase = phase
        self.reason = reason
        self.changed.set()
        self.changed = trio.Event()

    def add_check(self, name: str, check: Check) -> None:
        """Contribute (or replace) the check ``name`` of ``/ready``.

        ``check`` is called on every ``/ready`` and status request, on the Trio thread:
        it must answer at once from state its owner keeps (no I/O, no waiting).
        """
        if name == "storage" or name.endswith("_reason"):
            raise ValueError(f"readiness check name {name!r} is reserved")
        self._checks[name] = check

    @property
    def ready(self) -> bool:
        """True when the storage phase is READY and every contributed check is ok."""
        if self.phase is not Phase.READY:
            return False
        return all(check() == OK for check in self._checks.values())

    def checks(self) -> dict[str, str]:
        """The ``checks`` object of ``/ready``; a failed node adds its reason
        (``storage_reason``), so whoever reads the 503 sees why, e.g. a full disk."""
        checks = {"storage": _STORAGE[self.phase]}
        for name, check in self._checks.items():
            checks[name] = check()
        if self.phase is Phase.FAILED and self.reason:
            checks["storage_reason"] = self.reason
        return checks

    def require_serving(self) -> None:
        """Gate of business requests: 503 before recovery finished (``TM-SYS-5030``) and
        during a restore (``TM-ADMIN-5031``). While stopping, requests already accepted
        are still served (graceful shutdown drains them); a failed WAL answers
        ``TM-SYS-5001`` itself."""
        phase = self.phase
        if phase is Phase.RESTORING:
            raise TokMeshError(E.ADMIN_MAINTENANCE)
        if phase is Phase.STARTING or phase is Phase.RECOVERING:
            raise TokMeshError(E.SYS_UNAVAILABLE, "service not ready", {"status": "not_ready"})

    def require_ready(self) -> None:
        """Raise the 503 the front ends answer while storage is not ready (a restore
        answers ``TM-ADMIN-5031``)."""
        if self.phase is Phase.READY:
            return
        if self.phase is Phase.RESTORING:
            raise TokMeshError(E.ADMIN_MAINTENANCE)
        raise TokMeshError(E.SYS_UNAVAILABLE, "service not ready", {"status": "not_ready"})

    @property
    def loading(self) -> bool:
        """True before recovery finished: no API key is loaded yet."""
        return self.phase is Phase.STARTING or self.phase is Phase.RECOVERING


# The storage check of /ready is the phase's name, except that READY reads "ok".
_STORAGE: Final = {phase: (OK if phase is Phase.READY else phase.value) for phase in Phase}
