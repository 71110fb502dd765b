"""Start-up time of ``tokmesh-cli --help`` and ``tokmesh-cli version`` (issue target < 300 ms).

Runs the installed console script (the one next to this interpreter, not a pyenv shim) N
times per command with an empty HOME and prints min / median / p90 wall time and the
median CPU time of the child. Uses hyperfine when it is installed (``--hyperfine``).

    python bench/cli_startup.py [-n 30] [--hyperfine]

Byte-code is compiled first (as ``pip install`` does), because an environment with
``PYTHONDONTWRITEBYTECODE=1`` would otherwise re-compile every changed module at each start.
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT_MS = 300.0
COMMANDS = (["--help"], ["version"])


def _exe() -> list[str]:
    script = Path(sys.executable).with_name("tokmesh-cli")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tokmesh.cli.main"]


def _env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKMESH_")}
    env["HOME"] = home
    env.pop("XDG_CONFIG_HOME", None)
    return env


def measure(cmd: list[str], env: dict[str, str], n: int) -> dict[str, float]:
    """Wall and CPU milliseconds of ``n`` runs of ``cmd``."""
    walls, cpus = [], []
    for _ in range(3):  # warm the page cache
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
        walls.append((time.perf_counter() - t) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(
            ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1000
        )
    walls.sort()
    return {
        "min": walls[0],
        "median": statistics.median(walls),
        "p90": walls[int(0.9 * (len(walls) - 1))],
        "cpu_median": statistics.median(cpus),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=30, help="runs per command")
    ap.add_argument("--hyperfine", action="store_true", help="also run hyperfine if installed")
    args = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    compileall.compile_dir(str(root / "tokmesh"), quiet=1)
    exe = _exe()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"executable: {' '.join(exe)}   runs: {args.n}   load average (1 min): {load:.2f}")
    base = measure([sys.executable, "-c", "pass"], _env(tempfile.mkdtemp()), args.n)
    print(
        f"{'python -c pass':<24} min {base['min']:6.1f} ms  median {base['median']:6.1f} ms"
        f"  p90 {base['p90']:6.1f} ms  cpu {base['cpu_median']:6.1f} ms"
    )
    worst = 0.0
    with tempfile.TemporaryDirectory() as home:
        env = _env(home)
        for extra in COMMANDS:
            r = measure(exe + extra, env, args.n)
            worst = max(worst, r["median"])
            label = "tokmesh-cli " + " ".join(extra)
            print(
                f"{label:<24} min {r['min']:6.1f} ms  median {r['median']:6.1f} ms"
                f"  p90 {r['p90']:6.1f} ms  cpu {r['cpu_median']:6.1f} ms"
            )
        if args.hyperfine and shutil.which("hyperfine"):
            subprocess.run(
                [
                    "hyperfine",
                    "-N",
                    "--warmup",
                    "3",
                    "-r",
                    str(args.n),
                    *[" ".join(exe + extra) for extra in COMMANDS],
                ],
                env=env,
                check=False,
            )
    verdict = "OK" if worst < LIMIT_MS else "OVER"
    print(f"worst median {worst:.1f} ms vs limit {LIMIT_MS:.0f} ms: {verdict}")
    return 0 if worst < LIMIT_MS else 1


if __name__ == "__main__":
    sys.exit(main())
