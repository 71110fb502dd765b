"""Fixtures of the session event stream tests: real ``tokmesh-server`` processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import ServerProcess


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start nodes (stopped at the end of the test); each gets an admin key."""
    made: list[ServerProcess] = []

    def make(name: str = "node", overrides: dict[str, Any] | None = None) -> ServerProcess:
        node = ServerProcess(tmp_path / name, overrides)
        made.append(node)
        node.start()
        node.create_admin_key()
        return node

    yield make
    for node in made:
        node.stop()
