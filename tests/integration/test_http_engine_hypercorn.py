"""Issue 3 acceptance 5: the same HTTP contract suite passes with
``server.http.engine: hypercorn`` (every route served by Quart-Trio under Hypercorn)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CONTRACT = sorted(
    str(p) for p in Path(__file__).parent.glob("test_http_*.py") if "engine" not in p.name
)


def test_contract_suite_passes_under_hypercorn() -> None:
    env = dict(os.environ, TOKMESH_TEST_HTTP_ENGINE="hypercorn")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CONTRACT],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
