"""Shared helpers for the benchmarks: a real tokmesh-server process and keys."""

from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.server import ServerProcess, free_port


def start_node(overrides: dict[str, Any] | None = None, name: str = "bench") -> ServerProcess:
    """A real node with fast test-grade Argon2 (only key creation is affected)."""
    root = Path(tempfile.mkdtemp(prefix=f"tm-{name}-"))
    base: dict[str, Any] = {"storage": {"wal": {"sync_mode": "batch"}}}
    if overrides:
        _merge(base, overrides)
    srv = ServerProcess(root, base)
    srv.start()
    srv.create_admin_key()
    return srv


def _merge(a: dict[str, Any], b: dict[str, Any]) -> None:
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _merge(a[k], v)
        else:
            a[k] = v


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


__all__ = ["ServerProcess", "free_port", "port_free", "start_node"]
