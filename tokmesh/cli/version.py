"""Version and build information of ``tokmesh-cli`` (06 §9.7): the package version."""

from __future__ import annotations

import platform
import sys

from tokmesh import __version__

VERSION = __version__
USER_AGENT = f"tokmesh-cli/{__version__}"


def build_info() -> dict[str, str]:
    """Version, git commit, build date, Python version and OS/arch of this build."""
    try:
        from tokmesh import _build  # type: ignore[attr-defined]

        commit, built = str(_build.COMMIT), str(_build.BUILD_TIME)
    except ImportError:  # a source checkout or editable install: no build stamp
        commit, built = "unknown", "unknown"
    return {
        "version": VERSION,
        "git_commit": commit,
        "build_date": built,
        "python_version": platform.python_version(),
        "os_arch": f"{sys.platform}/{platform.machine() or 'unknown'}",
    }
