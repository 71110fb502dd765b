"""Work run in a forked child (the snapshot writer): result, errors, cancellation."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from tokmesh.actors.forked_write import run_in_child
from tokmesh.domain.errors import E, TokMeshError
from tokmesh.storage.snapshot_files import SnapshotError


async def test_the_result_comes_back_from_another_process() -> None:
    pid, data = await run_in_child(lambda: (os.getpid(), {"n": [1, 2, 3]}))
    assert pid != os.getpid()
    assert data == {"n": [1, 2, 3]}


async def test_the_child_sees_the_state_of_the_fork_and_changes_nothing_here() -> None:
    state = {"count": 1}

    def work() -> int:
        state["count"] += 1  # the child's copy
        return state["count"]

    assert await run_in_child(work) == 2
    assert state == {"count": 1}


async def test_an_exception_is_raised_here_with_its_type() -> None:
    def fail() -> None:
        raise SnapshotError("snapshot directory unusable: No space left on device")

    with pytest.raises(SnapshotError, match="No space left"):
        await run_in_child(fail)


async def test_an_exception_that_does_not_pickle_comes_back_as_its_text() -> None:
    class Local(Exception):  # a local class cannot be pickled
        pass

    def fail() -> None:
        raise Local("odd")

    with pytest.raises(TokMeshError) as caught:
        await run_in_child(fail)
    assert caught.value.error is E.SYS_BACKUP
    assert "Local: odd" in str(caught.value)


async def test_a_child_killed_while_it_works_is_an_error_here() -> None:
    # What the kernel's out-of-memory killer does to a child whose copy-on-write copy
    # outgrew the memory limit: the caller gets an error, not a hang or a crash.
    def killed() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(TokMeshError) as caught:
        await run_in_child(killed)
    assert caught.value.error is E.SYS_BACKUP
    assert "no result" in str(caught.value)


async def test_a_cancellation_kills_the_child(tmp_path: Path) -> None:
    marker = tmp_path / "pid"

    def slow() -> None:
        marker.write_text(str(os.getpid()))
        time.sleep(60)

    with trio.move_on_after(5) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_in_child, slow)
            while not marker.exists() or not marker.read_text():
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught, "the cancellation waited for the child"
    with pytest.raises(ProcessLookupError):
        os.kill(int(marker.read_text()), 0)  # killed and reaped


async def test_a_cancelled_caller_forks_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with trio.CancelScope() as scope:
        scope.cancel()
        await run_in_child(lambda: marker.write_text("x"))
    assert not marker.exists()


async def test_the_child_holds_no_descriptor_of_the_node_but_its_pipe() -> None:
    """A listening socket inherited by the child would keep the node's port bound after a
    kill -9 of the node (its restart then fails with EADDRINUSE)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        fds = await run_in_child(lambda: sorted(int(fd) for fd in os.listdir("/proc/self/fd")))
    assert listener.fileno() not in fds
    # stdin, stdout, stderr, the result pipe, and the listing's own descriptor.
    assert len([fd for fd in fds if fd > 2]) <= 2


def test_the_child_dies_with_its_parent(tmp_path: Path) -> None:
    """A kill -9 of the node takes a snapshot child with it (no orphan writing a snapshot
    while the restarted node recovers)."""
    marker = tmp_path / "child"
    script = (
        "import os, sys, time, trio\n"
        "from tokmesh.actors.forked_write import run_in_child\n"
        "def slow():\n"
        f"    open({str(marker)!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(60)\n"
        "trio.run(run_in_child, slow)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while not (marker.exists() and marker.read_text()):
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.02)
        child = int(marker.read_text())
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 5
        while _alive(child):
            assert time.monotonic() < deadline, "the child outlived its parent"
            time.sleep(0.02)
    finally:
        parent.kill()
        parent.wait(10)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False
