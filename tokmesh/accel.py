"""The compiled accelerator this process uses, if any.

``tokmesh._accel`` (C, ``tokmesh/_accel.c``) answers a read's run of RESP
``TM.VALIDATE token`` frames without a Python object per command. ``pip install`` builds
it when a C compiler and the Python headers are present; without them, or with
``TOKMESH_ACCEL=0`` in the environment, :data:`validate_frames` is ``None`` and the
pure-Python path answers every command with the same replies. See docs/architecture.md,
"The compiled accelerator".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

ACCEL_ENV = "TOKMESH_ACCEL"
"""``0`` turns the accelerator off (the tests run the suite both ways)."""

#: ``validate_frames(data, by_token, sessions, now_ms) -> (count, end)``, or ``None``.
FrameScan = Callable[[bytes, dict[bytes, str], dict[str, Any], int], tuple[int, int]]


def _load() -> FrameScan | None:
    if os.environ.get(ACCEL_ENV, "1").strip() == "0":
        return None
    try:
        from tokmesh import _accel
    except ImportError:
        return None
    from tokmesh.domain.session import Session

    _accel.configure(Session)
    return _accel.validate_frames


validate_frames: FrameScan | None = _load()
