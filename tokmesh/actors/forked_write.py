"""Blocking work run in a forked child process, so that its Python does not take the
event loop's GIL.

A snapshot encodes every session in Python. In a worker thread that code holds the GIL for
part of every millisecond, and under a write load that keeps the event loop busy, the loop
then runs at about half speed for the whole snapshot: that was the P99 of sustained creates
(docs/performance.md). A child made by ``fork`` sees the parent's memory as it was at the
fork (copy on write, the consistent view the caller took) and has an interpreter of its
own, as Redis' ``BGSAVE`` does. The child runs only ``work``, sends the pickled result or
exception back over a pipe and leaves with ``os._exit``: no Trio, no ``atexit``, no
buffered output of the parent flushed twice.
"""

from __future__ import annotations

import ctypes
import gc
import os
import pickle
import signal
from collections.abc import Callable
from typing import NoReturn, TypeVar

import trio

from tokmesh.domain.errors import E, TokMeshError

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1

#: Whether this platform can fork (callers fall back to a worker thread).
FORK_AVAILABLE = hasattr(os, "fork")


async def run_in_child(work: Callable[[], T]) -> T:
    """``work()`` in a forked child: its result, or its exception raised here.

    A cancellation before the fork forks nothing; one while the child works kills it (a
    file it was writing is left for its owner's start-up cleanup, as after a crash). An
    exception that does not survive pickling comes back as ``TokMeshError(E.SYS_BACKUP)``
    (``TM-SYS-5002``) carrying its type and text.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    r, w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        _child(work, r, w, parent)
    os.close(w)
    try:
        data = await trio.to_thread.run_sync(_read_all, r, abandon_on_cancel=True)
    except BaseException:
        # Not reaped yet, so the pid is still the child's; SIGKILL ends it at once (the
        # reading thread then sees the end of the pipe).
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    await trio.to_thread.run_sync(os.waitpid, pid, 0)  # it exits right after writing
    try:
        kind, value = pickle.loads(data)
    except Exception:
        raise TokMeshError(E.SYS_BACKUP, "the child process gave no result") from None
    if kind == "ok":
        return value  # type: ignore[no-any-return]
    if isinstance(value, BaseException):
        raise value
    raise TokMeshError(E.SYS_BACKUP, str(value))


def _read_all(r: int) -> bytes:
    """Everything the child writes, until it closes the pipe (blocking; in a thread)."""
    chunks: list[bytes] = []
    try:
        while part := os.read(r, 1 << 16):
            chunks.append(part)
    finally:
        os.close(r)
    return b"".join(chunks)


def _die_with(parent: int) -> None:
    """Have the kernel kill this child when its parent dies (Linux), and leave at once if
    that already happened: a child orphaned by a kill -9 of the node must not write a
    snapshot while the restarted node recovers."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the parent's cancellation still kills the child
    if os.getppid() != parent:
        os._exit(1)


def _child(work: Callable[[], object], r: int, w: int, parent: int) -> NoReturn:
    code = 1
    try:
        _die_with(parent)
        # Every descriptor of the node but the result pipe: an inherited listening socket
        # would keep the node's ports bound after the node itself died.
        os.closerange(3, w)
        os.closerange(w + 1, _max_fd())  # the read end ``r`` included
        # A collection would touch every object and copy the parent's pages for nothing.
        gc.disable()
        # The parent's signal handling is not ours: a Ctrl-C of the process group must
        # end the child, not run Trio's handler or wake the parent's loop.
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:
            pass  # not the main thread: nothing of the parent's to undo
        result: tuple[str, object]
        try:
            result = ("ok", work())
        except BaseException as exc:
            result = ("error", exc)
        try:
            data = pickle.dumps(result)
        except Exception:
            data = pickle.dumps(("error", f"{type(result[1]).__name__}: {result[1]}"))
        view = memoryview(data)
        while view:
            view = view[os.write(w, view) :]
        code = 0
    finally:
        os._exit(code)


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 65536
