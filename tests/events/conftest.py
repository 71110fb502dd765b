"""Fixtures of the session event stream tests: real ``tokmesh-server`` processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import ServerProcess, _merge


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start nodes (stopped at the end of the test); each gets an admin key."""
    made: list[ServerProcess] = []

    def make(name: str = "node", overrides: dict[str, Any] | None = None) -> ServerProcess:
        # GET /events is served by the native HTTP engine only (docs/events.md), also
        # when a whole suite runs against Hypercorn (TOKMESH_TEST_HTTP_ENGINE).
        node = ServerProcess(tmp_path / name, {"server": {"http": {"engine": "native"}}})
        if overrides:
            _merge(node.config, overrides)
        made.append(node)
        node.start()
        node.create_admin_key()
        return node

    yield make
    for node in made:
        node.stop()
