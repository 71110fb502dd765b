"""The local emergency admin socket (03 §6, 02 §9.5): a Unix socket, never TCP.

One command per line, one compact JSON envelope per reply line. Trust is the file mode
(0660 under a restrictive umask): callers act as admin without an API key and every
command is audited as ``LOCAL_ADMIN``. The kernel tells who is on the other end (the
peer's uid and pid), so audit records and logs can still name the operating-system user.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import trio

from tokmesh.api.accept import accept_loop
from tokmesh.api.http_request_id import new_request_id
from tokmesh.domain.errors import E, TokMeshError

log = logging.getLogger("tokmesh.local")

MAX_LINE = 4096


@dataclass(frozen=True)
class Peer:
    """The process on the other end of a connection, as the kernel reports it."""

    pid: int | None = None
    uid: int | None = None
    user: str | None = None

    def fields(self) -> dict[str, Any]:
        """``{peer_uid, peer_user, peer_pid}`` for an audit record or a log line."""
        return {"peer_uid": self.uid, "peer_user": self.user, "peer_pid": self.pid}


def peer_of(sock: trio.socket.SocketType) -> Peer:
    """The connected peer's credentials (``SO_PEERCRED``) and user name; an empty
    :class:`Peer` where the platform has no such option. May block on a name lookup."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:  # pragma: no cover - Linux CI
        return Peer()
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return Peer()
    pid, uid, _gid = struct.unpack("3i", raw)
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except (KeyError, OSError):  # unknown uid, or the directory service is unreachable
        user = None
    return Peer(pid=pid, uid=uid, user=user)


#: command name -> handler(args, peer) returning the ``data`` object
CommandHandler = Callable[[list[str], Peer], Awaitable[dict[str, Any]]]


def envelope_ok(data: dict[str, Any]) -> bytes:
    """A success envelope line."""
    return (
        orjson.dumps(
            {
                "code": "OK",
                "message": "Success",
                "request_id": new_request_id(),
                "timestamp": time.time_ns() // 1_000_000,
                "data": data,
            }
        )
        + b"\n"
    )


def envelope_error(exc: TokMeshError) -> bytes:
    """An error envelope line."""
    doc: dict[str, Any] = {
        "code": exc.code,
        "message": exc.message,
        "request_id": new_request_id(),
        "timestamp": time.time_ns() // 1_000_000,
    }
    if exc.details:
        doc["details"] = exc.details
    return orjson.dumps(doc) + b"\n"


def parse_command(line: bytes) -> tuple[str, list[str]]:
    """Split one line into (UPPER-CASE command, args); ``TM-ARG-1001`` if empty."""
    text = line.decode("utf-8", errors="replace").strip()
    parts = text.split()
    if not parts:
        raise TokMeshError(E.ARG_INVALID, "empty command")
    return parts[0].upper(), parts[1:]


class LocalSocketServer:
    """Serves the emergency commands on a Unix socket."""

    def __init__(self, path: Path, commands: Mapping[str, CommandHandler]) -> None:
        self.path = path
        self.commands = commands

    def bind(self) -> trio.socket.SocketType:
        """Create the socket file (stale file replaced) with mode 0660, never briefly wider."""
        parent = self.path.parent
        parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)
        try:
            # bind() is synchronous for AF_UNIX paths; trio's wrapper is async-only.
            sock._sock.bind(str(self.path))  # type: ignore[attr-defined]
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        sock.listen(64)
        return sock

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until cancelled; removes the socket file at exit.

        Out of descriptors, accepting pauses and retries like every listener's (the
        caller waits in the backlog and is answered once one is free); this socket is
        not counted against ``server.max_connections``, so the cap keeps it usable.
        """
        sock = self.bind()
        listener = trio.SocketListener(sock)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept_loop, listener, nursery, self._handle)
                task_status.started()
        finally:
            # Unlink first: aclose() is a checkpoint that raises Cancelled at shutdown.
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            with trio.CancelScope(shield=True):
                await listener.aclose()

    async def _handle(self, stream: trio.SocketStream) -> None:
        buf = b""
        try:
            # The user name may come from a directory service: look it up off the loop.
            peer = await trio.to_thread.run_sync(peer_of, stream.socket)
            while True:
                while b"\n" not in buf:
                    if len(buf) > MAX_LINE:
                        await stream.send_all(
                            envelope_error(TokMeshError(E.ARG_INVALID, "line too long"))
                        )
                        return
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        if buf.strip():
                            await stream.send_all(await self.execute(buf, peer))
                        return
                    buf += chunk
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    await stream.send_all(await self.execute(line, peer))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    async def execute(self, line: bytes, peer: Peer) -> bytes:
        """Run one command line for ``peer`` and return its reply line."""
        try:
            name, args = parse_command(line.rstrip(b"\r"))
            handler = self.commands.get(name)
            if handler is None:
                raise TokMeshError(E.ARG_INVALID, f"unknown command: {name.lower()}")
            return envelope_ok(await handler(args, peer))
        except TokMeshError as exc:
            return envelope_error(exc)
        except Exception:
            log.exception("local socket command failed")
            return envelope_error(TokMeshError(E.SYS_INTERNAL))
