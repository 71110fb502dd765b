"""Where the local admin socket lives: the paths a node tries to bind, in order, which are
also the paths ``tokmesh-cli -t local`` tries to connect to.

A node binds the first path that works of: ``server.local.socket_path`` (by default
``/var/run/tokmesh-server/tokmesh-server.sock``, which needs root or a prepared
directory), then ``tokmesh-server.sock`` in its data directory, so that someone trying
the server without root still gets a socket. The CLI knows neither the node's
configuration nor its working directory, so it applies the same rule to the defaults
(data directory ``./data``): a node started without a configuration file is found from
the directory it was started in. The two inputs may also come from the server's own
environment variables (``TOKMESH_SERVER_LOCAL_SOCKET_PATH``, ``TOKMESH_STORAGE_WAL_DIR``,
which the container image sets); the CLI reads them too, so that ``podman exec`` finds
the socket wherever the node put it. Only the standard library is imported here, because
every CLI start-up pays for what this module imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_SOCKET_PATH",
    "FALLBACK_NAME",
    "FIRST_KEY_COMMAND",
    "SOCKET_PATH_ENV",
    "WAL_DIR_ENV",
    "first_key_commands",
    "first_key_hint",
    "local_target_candidates",
    "socket_candidates",
]

#: the default of ``server.local.socket_path``
DEFAULT_SOCKET_PATH: Final = "/var/run/tokmesh-server/tokmesh-server.sock"
#: the default data directory: the parent of the default ``storage.wal.dir`` (``./data/wal``)
DEFAULT_DATA_DIR: Final = "data"
#: the socket's file name inside the data directory when the configured path is unusable
FALLBACK_NAME: Final = "tokmesh-server.sock"
#: what creates the first admin key on a node the CLI finds by itself
FIRST_KEY_COMMAND: Final = "tokmesh-cli -t local apikey create-emergency"
#: the server's environment variables for ``server.local.socket_path`` and ``storage.wal.dir``
SOCKET_PATH_ENV: Final = "TOKMESH_SERVER_LOCAL_SOCKET_PATH"
WAL_DIR_ENV: Final = "TOKMESH_STORAGE_WAL_DIR"


def socket_candidates(
    configured: str | Path = DEFAULT_SOCKET_PATH, data_dir: str | Path = DEFAULT_DATA_DIR
) -> list[Path]:
    """The socket paths to try, first choice first; ``[]`` when ``configured`` is empty
    (an empty ``server.local.socket_path`` turns the channel off)."""
    if not str(configured):
        return []
    first = Path(configured)
    fallback = Path(data_dir) / FALLBACK_NAME
    return [first] if fallback == first else [first, fallback]


def local_target_candidates(env: Mapping[str, str], cwd: Path) -> list[Path]:
    """The sockets ``tokmesh-cli -t local`` tries: the paths a node without a
    configuration file, started in ``cwd`` with the environment ``env``, would try to bind
    (relative paths resolved against ``cwd``, as the server does without a file)."""
    configured = env.get(SOCKET_PATH_ENV) or DEFAULT_SOCKET_PATH
    wal_dir = env.get(WAL_DIR_ENV)
    data_dir = Path(wal_dir).parent if wal_dir else Path(DEFAULT_DATA_DIR)
    return socket_candidates(cwd / configured, cwd / data_dir)


def first_key_commands(socket_path: Path, cwd: Path, env: Mapping[str, str]) -> tuple[str, ...]:
    """The commands that create the first admin key on a node listening on
    ``socket_path``, started in ``cwd`` with environment ``env``, the shortest first.

    ``-t local`` is offered when the CLI's own search finds the socket (for the data
    directory fallback: when run in ``cwd``); ``-t socket:<path>`` whenever it might not.
    """
    explicit = f"tokmesh-cli -t socket:{socket_path} apikey create-emergency"
    found_by_cli = local_target_candidates(env, cwd)
    if socket_path == found_by_cli[0]:
        return (FIRST_KEY_COMMAND,)
    if socket_path in found_by_cli:
        return (FIRST_KEY_COMMAND, explicit)
    return (explicit,)


def first_key_hint(socket_path: Path | None, cwd: Path, env: Mapping[str, str]) -> str:
    """The one plain line a node without any API key prints on stderr: where its local
    admin socket is and the exact command that creates the first admin key there."""
    prefix = "tokmesh-server: no API key exists yet"
    if socket_path is None:
        return (
            f"{prefix} and the local admin socket is off, so none can be created; set "
            "server.local.socket_path to a path this user can create and restart"
        )
    commands = first_key_commands(socket_path, cwd, env)
    line = f"{prefix}; local admin socket: {socket_path}; create the first admin key with: "
    if len(commands) == 1:
        return line + commands[0]
    return f"{line}{commands[0]} (run in {cwd}), or from anywhere: {commands[1]}"
