"""``-t local`` looks for the local admin socket where a node puts it, in the same order:
the configured path (default ``/var/run/tokmesh-server/tokmesh-server.sock``), then
``tokmesh-server.sock`` in the data directory (``./data`` by default).

Both sides use ``tokmesh.api.local_socket_path``; these tests pin that rule to the
server's configuration defaults and drive the real CLI against a real node.
"""

from __future__ import annotations

import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.support import Cli
from tests.integration.runtime_support import RuntimeServer
from tokmesh.api.local_socket_path import (
    DEFAULT_DATA_DIR,
    DEFAULT_SOCKET_PATH,
    SOCKET_PATH_ENV,
    WAL_DIR_ENV,
    first_key_commands,
    first_key_hint,
    local_target_candidates,
    socket_candidates,
)
from tokmesh.config.schema import KEYS, env_name

KEY_RE = r"tmak-[0-9a-z]{26}:tmas_[0-9A-Za-z]+"


def _answers(path: str) -> bool:
    """True when something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def test_candidates_are_the_server_defaults() -> None:
    assert KEYS["server.local.socket_path"].default == DEFAULT_SOCKET_PATH
    assert Path(KEYS["storage.wal.dir"].default).parent == Path(DEFAULT_DATA_DIR)
    assert socket_candidates() == [
        Path("/var/run/tokmesh-server/tokmesh-server.sock"),
        Path("data/tokmesh-server.sock"),
    ]
    # a configured path inside the data directory: nothing to fall back to
    assert socket_candidates("/srv/d/tokmesh-server.sock", "/srv/d") == [
        Path("/srv/d/tokmesh-server.sock")
    ]
    assert socket_candidates("", "/srv/d") == []  # an empty path turns the channel off


def test_local_target_reads_the_server_variables() -> None:
    """What the CLI tries follows the server's own environment variables (the container
    image sets the WAL directory), relative paths against the current directory."""
    assert env_name("server.local.socket_path") == SOCKET_PATH_ENV
    assert env_name("storage.wal.dir") == WAL_DIR_ENV
    cwd = Path("/srv/tm")
    assert local_target_candidates({}, cwd) == [
        Path(DEFAULT_SOCKET_PATH),
        cwd / "data" / "tokmesh-server.sock",
    ]
    env = {WAL_DIR_ENV: "/var/lib/tokmesh-server/wal", SOCKET_PATH_ENV: "run/a.sock"}
    assert local_target_candidates(env, cwd) == [
        cwd / "run" / "a.sock",
        Path("/var/lib/tokmesh-server/tokmesh-server.sock"),
    ]


def test_first_key_hint_per_socket_location() -> None:
    cwd = Path("/srv/tm")
    prefix = "tokmesh-server: no API key exists yet; local admin socket: "
    assert first_key_hint(Path(DEFAULT_SOCKET_PATH), cwd, {}) == (
        f"{prefix}{DEFAULT_SOCKET_PATH}; create the first admin key with: "
        "tokmesh-cli -t local apikey create-emergency"
    )
    fallback = cwd / "data" / "tokmesh-server.sock"
    assert first_key_hint(fallback, cwd, {}) == (
        f"{prefix}{fallback}; create the first admin key with: "
        "tokmesh-cli -t local apikey create-emergency (run in /srv/tm), or from anywhere: "
        f"tokmesh-cli -t socket:{fallback} apikey create-emergency"
    )
    # the fallback of a node started elsewhere is not what -t local finds from /srv/tm
    elsewhere = Path("/opt/x/data/tokmesh-server.sock")
    assert first_key_commands(elsewhere, cwd, {}) == (
        "tokmesh-cli -t socket:/opt/x/data/tokmesh-server.sock apikey create-emergency",
    )
    # ... unless the server's WAL directory variable points there, which the CLI reads too
    assert first_key_commands(elsewhere, cwd, {WAL_DIR_ENV: "/opt/x/data/wal"})[0] == (
        "tokmesh-cli -t local apikey create-emergency"
    )
    off = first_key_hint(None, cwd, {})
    assert off.startswith("tokmesh-server: no API key exists yet and the local admin socket is off")


@pytest.fixture
def fallback_node(tmp_path: Path) -> Iterator[RuntimeServer]:
    """A node whose configured socket directory cannot be created, so its socket is
    ``<root>/data/tokmesh-server.sock`` (the root is short: sun_path holds 108 bytes)."""
    root = Path(f"/tmp/tmt-lt-{time.monotonic_ns() % 10**9}")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the socket directory should be")
    node = RuntimeServer(
        root, {"server": {"local": {"socket_path": str(blocker / "run" / "tokmesh-server.sock")}}}
    )
    try:
        node.start()
        node.socket_path = root / "data" / "tokmesh-server.sock"
        yield node
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_local_reaches_the_data_dir_socket_from_the_node_directory(
    cli: Cli, fallback_node: RuntimeServer, tmp_path: Path
) -> None:
    if _answers(DEFAULT_SOCKET_PATH):
        pytest.skip(f"a node listens on {DEFAULT_SOCKET_PATH}; -t local would reach it first")
    root = fallback_node.root
    r = cli.run("-t", "local", "-o", "json", "status", cwd=root)
    assert r.code == 0, r.err
    data = r.json()["data"]
    assert data["label"] == "local"
    assert data["address"] == f"socket:{root / 'data' / 'tokmesh-server.sock'}"
    r = cli.run("-t", "local", "apikey", "create-emergency", "-q", cwd=root)
    assert r.code == 0, r.err
    assert re.fullmatch(KEY_RE, r.out.strip()), r.out

    # From another directory neither candidate is there: 69, and both places are named.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = cli.run("-t", "local", "system", "status", cwd=elsewhere)
    assert r.code == 69, (r.out, r.err)
    assert DEFAULT_SOCKET_PATH in r.err and str(elsewhere / "data" / "tokmesh-server.sock") in r.err
    assert "Code: TM-CLI-1002" in r.err


def test_socket_target_does_not_fall_back(cli: Cli, fallback_node: RuntimeServer) -> None:
    """An explicit ``socket:<path>`` means that path only."""
    missing = fallback_node.root / "data" / "nothing.sock"
    r = cli.run("-t", f"socket:{missing}", "system", "status", cwd=fallback_node.root)
    assert r.code == 69 and str(missing) in r.err and "also tried" not in r.err, r.err
