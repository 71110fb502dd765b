"""Fixtures of the CLI tests: one real ``tokmesh-server`` shared by the module's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.support import Cli
from tests.support.server import ServerProcess


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A running node with an admin key; anti-replay headers are mandatory on it (R2)."""
    s = ServerProcess(
        tmp_path_factory.mktemp("cli-node"),
        {"security": {"anti_replay": {"required": True}}},
    )
    s.start()
    s.create_admin_key()
    yield s
    s.stop()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """The real executable with an empty HOME (no config file, no history)."""
    return Cli(tmp_path / "home")


@pytest.fixture
def admin(node: ServerProcess) -> tuple[str, str]:
    """(URL, admin key) of the shared node."""
    assert node.admin_key is not None
    return node.base_url, node.admin_key
