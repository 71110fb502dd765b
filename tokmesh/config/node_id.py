"""The node identity (ruling R1, spec 05 §3.2, D2, D15).

A configured ``cluster.node_id`` wins. Otherwise the ID lives in the ``node-id`` file of
the data directory (the parent of ``storage.wal.dir``, e.g.
``/var/lib/tokmesh-server/node-id``): read it if present, else generate ``tmnd-`` +
lowercase ULID once, write it atomically with mode 0600 and reuse it on every restart.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from tokmesh.config.schema import Config
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.domain.ids import new_node_id

__all__ = ["NODE_ID_FILE", "data_dir_of", "resolve_node_id"]

NODE_ID_FILE = "node-id"
_STORED_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def data_dir_of(cfg: Config) -> Path:
    """The data directory: the parent of ``storage.wal.dir``."""
    return Path(cfg.storage.wal.dir).parent


def write_atomic(path: Path, text: str) -> None:
    """Write a small state file (mode 0600): write, fsync, rename, fsync the directory,
    so after a crash it holds the old text or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)  # the umask cannot widen it, but be explicit
    os.replace(tmp, path)
    # fsync the directory so the rename survives a crash.
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(dfd)
    finally:
        os.close(dfd)


def resolve_node_id(cfg: Config, data_dir: Path | None = None) -> str:
    """Return this node's ID, creating and persisting one if needed (R1).

    ``data_dir`` defaults to :func:`data_dir_of`; it is created (mode 0750) if missing.
    A ``node-id`` file with unusable content raises ``TokMeshError(TM-CFG-1001)`` rather
    than silently replacing an identity peers may know.
    """
    if cfg.cluster.node_id:
        return cfg.cluster.node_id
    directory = data_dir if data_dir is not None else data_dir_of(cfg)
    path = directory / NODE_ID_FILE
    try:
        stored = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        stored = None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokMeshError(
            E.CFG_PERMISSION, f"cannot read node id file {path}", details={"path": str(path)}
        ) from exc
    if stored is not None:
        if not _STORED_ID.fullmatch(stored):
            raise TokMeshError(
                E.CFG_TYPE,
                f"node id file {path} holds no valid node id",
                details={"path": str(path)},
            )
        return stored
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    node_id = new_node_id()
    write_atomic(path, node_id + "\n")
    return node_id
