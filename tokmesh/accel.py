"""The compiled accelerator this process uses, if any.

``tokmesh._accel`` (C, ``tokmesh/_accel.c``) answers a read's run of RESP
``TM.VALIDATE token`` frames without a Python object per command, and fills the store's
segmented maps in bulk at start-up. ``pip install`` builds it when a C compiler and the
Python headers are present; without them, or with ``TOKMESH_ACCEL=0`` in the environment,
:data:`validate_frames`, :data:`fill_segments`, :data:`presized_dicts` and
:data:`index_load` are ``None`` and the pure-Python paths do the same work. See
docs/architecture.md, "The compiled accelerator".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

ACCEL_ENV = "TOKMESH_ACCEL"
"""``0`` turns the accelerator off (the tests run the suite both ways)."""

#: A segmented map as the accelerator reads it: its list of dicts
#: (:attr:`tokmesh.actors.segmented_map.SegmentedMap.segments`).
Segments = list[dict[Any, Any]]
#: ``validate_frames(data, by_token, sessions, now_ms) -> (count, end)``.
FrameScan = Callable[[bytes, Segments, Segments, int], tuple[int, int]]
#: ``fill_segments(segments, items)``: see :func:`tokmesh.actors.segmented_map.fill_segments`.
SegmentFill = Callable[[Segments, Iterable[tuple[Any, Any]]], None]
#: ``presized_dicts(count, each)``: ``count`` empty dicts with room for ``each`` entries.
Presized = Callable[[int, int], Segments]
#: ``index_load(segments, keys, ids, small_max) -> added``: see ``IdIndex.load``.
IndexLoad = Callable[[Segments, Iterable[str], Iterable[str], int], int]


def _load() -> tuple[FrameScan, SegmentFill, Presized, IndexLoad] | tuple[None, None, None, None]:
    if os.environ.get(ACCEL_ENV, "1").strip() == "0":
        return None, None, None, None
    try:
        from tokmesh import _accel
    except ImportError:
        return None, None, None, None
    from tokmesh.domain.session import Session

    _accel.configure(Session)
    return _accel.validate_frames, _accel.fill_segments, _accel.presized_dicts, _accel.index_load


validate_frames: FrameScan | None
fill_segments: SegmentFill | None
presized_dicts: Presized | None
index_load: IndexLoad | None
validate_frames, fill_segments, presized_dicts, index_load = _load()
