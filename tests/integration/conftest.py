"""Fixtures starting real ``tokmesh-server`` processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[object]:
    made: list[ServerProcess] = []

    def make(
        name: str = "node", overrides: dict | None = None, start: bool = True
    ) -> ServerProcess:
        s = ServerProcess(tmp_path / name, overrides)
        made.append(s)
        if start:
            s.start()
        return s

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def server(server_factory) -> ServerProcess:  # type: ignore[no-untyped-def]
    s: ServerProcess = server_factory()
    s.create_admin_key()
    return s
