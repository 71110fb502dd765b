"""Readiness: the storage phase plus the named checks other parts contribute."""

from __future__ import annotations

import pytest

from tokmesh.readiness import Phase, Readiness


def test_a_contributed_check_holds_ready_back_and_shows_in_checks() -> None:
    readiness = Readiness()
    readiness.set(Phase.READY)
    assert readiness.ready
    assert readiness.checks() == {"storage": "ok", "cluster": "ok"}  # standalone
    cluster = ["connecting"]
    readiness.add_check("cluster", lambda: cluster[0])
    assert not readiness.ready
    assert readiness.checks() == {"storage": "ok", "cluster": "connecting"}
    cluster[0] = "ok"
    assert readiness.ready
    readiness.set(Phase.FAILED, "disk full")
    assert not readiness.ready
    assert readiness.checks() == {
        "storage": "failed",
        "cluster": "ok",
        "storage_reason": "disk full",
    }


@pytest.mark.parametrize("name", ["storage", "storage_reason", "cluster_reason"])
def test_reserved_check_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        Readiness().add_check(name, lambda: "ok")
