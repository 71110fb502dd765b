"""The committed dependency locks agree with pyproject.toml and are what gets installed.

A lock that drifted from ``pyproject.toml`` (a new dependency not in it, a pin outside the
declared range, an entry without hashes) would make CI install something other than what
the project declares, or fail only on a fresh machine. These checks catch that on every run.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)")


def _pins(lock: Path) -> dict[str, list[tuple[Version, str]]]:
    """Each locked name with its pinned versions (one per marker branch) and entry text."""
    text = lock.read_text()
    pins: dict[str, list[tuple[Version, str]]] = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = _PIN.match(entry)
        if m:
            pins.setdefault(canonicalize_name(m[1]), []).append((Version(m[2]), entry))
    return pins


@pytest.mark.parametrize(
    ("lock", "groups"),
    [("requirements/runtime.txt", ["runtime"]), ("requirements/test.txt", ["runtime", "test"])],
)
def test_lock_pins_every_declared_dependency_within_its_range(lock: str, groups: list[str]) -> None:
    pins = _pins(ROOT / lock)
    declared = {
        "runtime": PYPROJECT["project"]["dependencies"],
        "test": PYPROJECT["project"]["optional-dependencies"]["test"],
    }
    for group in groups:
        for spec in declared[group]:
            req = Requirement(spec)
            name = canonicalize_name(req.name)
            assert name in pins, f"{req.name} ({group}) is not in {lock}: run scripts/lock-deps.sh"
            for version, _ in pins[name]:
                assert req.specifier.contains(version, prereleases=True), (
                    f"{lock} pins {req.name}=={version}, outside {spec!r}"
                )
    build = [canonicalize_name(Requirement(r).name) for r in PYPROJECT["build-system"]["requires"]]
    assert set(build) <= set(pins), f"the build backend is not locked in {lock}"
    for name, entries in pins.items():
        for _, entry in entries:
            assert "--hash=sha256:" in entry, f"{name} has no hash in {lock}"


def test_ci_and_container_install_from_the_locks() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q -r requirements/test.txt" in ci
    assert "--no-deps --no-build-isolation -e ." in ci
    containerfile = (ROOT / "Containerfile").read_text()
    assert "--require-hashes" in containerfile
    assert "-r /src/requirements/runtime.txt" in containerfile
    readme = (ROOT / "README.md").read_text()
    assert "pip install -r requirements/test.txt" in readme
