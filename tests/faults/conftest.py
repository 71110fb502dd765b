"""Fixtures of the fault tests: real file systems that fill up (a small tmpfs per node)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

FILLER = "filler"

MountTmpfs = Callable[[Path, int], Path]


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        # Still busy (a server that would not die): detach it, the kernel frees it later.
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def mount_tmpfs() -> Iterator[MountTmpfs]:
    """``mount_tmpfs(path, size_kib)`` mounts a tmpfs there, unmounted after the test.

    Skips the test when this process may not mount (not root, or a container without
    ``CAP_SYS_ADMIN``); any other mount failure fails it.
    """
    mounted: list[Path] = []

    def mount(path: Path, size_kib: int) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root; the full-disk tests run as root only")
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            reason = done.stderr.strip()
            if "permission denied" in reason.lower() or "not permitted" in reason.lower():
                pytest.skip(f"mounting a tmpfs is not permitted here: {reason}")
            raise RuntimeError(f"mount -t tmpfs {path} failed: {reason}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        _unmount(path)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer could still put on ``path``'s file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(root: Path, leave: int) -> None:
    """Grow the filler file until about ``leave`` bytes of ``root``'s disk stay free."""
    with open(root / FILLER, "ab") as fh:
        fh.write(bytes(max(free_bytes(root) - leave, 0)))


def fill_up(root: Path) -> None:
    """Grow the filler file until the disk refuses another byte."""
    fd = os.open(root / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block = bytes(4096)
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        # A short last write may have left room for less than a page: take it too.
        for size in (1024, 64, 1):
            try:
                while os.write(fd, bytes(size)):
                    pass
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)


def free_space(root: Path) -> None:
    """Delete the filler file."""
    (root / FILLER).unlink()
