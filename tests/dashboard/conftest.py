"""Fixtures for the dashboard tests: one real node for the whole directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess


@pytest.fixture(scope="package")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A running ``tokmesh-server`` with the dashboard on (the default) and an admin key."""
    server = ServerProcess(tmp_path_factory.mktemp("dashboard-node"))
    server.start()
    try:
        server.create_admin_key()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def admin_key(node: ServerProcess) -> str:
    """The node's first admin key (``key_id:secret``)."""
    assert node.admin_key is not None
    return node.admin_key


def repo_root() -> Path:
    """The checkout this test file lives in."""
    return Path(__file__).resolve().parents[2]
