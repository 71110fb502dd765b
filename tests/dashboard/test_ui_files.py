"""The dashboard's committed files: vendored as the npm lock pins, and
shipped in the wheel."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.dashboard.conftest import repo_root
from tokmesh.ui.serve import ASSETS_PATH, load_bundle

ROOT = repo_root()
STATIC = ROOT / "tokmesh" / "ui" / "static"
VENDOR = STATIC / "vendor"


def _lock_entry() -> dict[str, str]:
    lock = json.loads((ROOT / "ui" / "package-lock.json").read_text())
    entry: dict[str, str] = lock["packages"]["node_modules/uplot"]
    return entry


def test_vendored_uplot_is_the_locked_version() -> None:
    record = json.loads((VENDOR / "VENDOR.json").read_text())["uplot"]
    entry = _lock_entry()
    assert (record["version"], record["integrity"]) == (entry["version"], entry["integrity"])
    package = json.loads((ROOT / "ui" / "package.json").read_text())
    assert package["dependencies"] == {"uplot": entry["version"]}  # exact pin, no range
    on_disk = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in VENDOR.iterdir()
        if p.name != "VENDOR.json"
    }
    assert on_disk == record["files"]
    # The file itself names its release in its banner.
    banner = (VENDOR / "uPlot.iife.min.js").read_text()[:80]
    assert f"(v{entry['version']})" in banner


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_vendored_files_match_a_fresh_npm_ci(tmp_path: Path) -> None:
    # npm ci checks each tarball against the lock's sha512; the vendored copies must be
    # byte for byte what it unpacks.
    for name in ("package.json", "package-lock.json"):
        shutil.copy(ROOT / "ui" / name, tmp_path / name)
    subprocess.run(
        ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=tmp_path,
        check=True,
        timeout=120,
    )
    dist = tmp_path / "node_modules" / "uplot"
    for name, path in {
        "uPlot.iife.min.js": dist / "dist" / "uPlot.iife.min.js",
        "uPlot.min.css": dist / "dist" / "uPlot.min.css",
        "LICENSE": dist / "LICENSE",
    }.items():
        assert (VENDOR / name).read_bytes() == path.read_bytes(), name


def test_index_names_every_asset_by_its_hash() -> None:
    bundle = load_bundle()
    html = bundle.index.body.decode()
    referenced = {name for name in bundle.assets if f'"{ASSETS_PATH}{name}"' in html}
    # The page loads its script, its style sheet and uPlot's two files, all hashed.
    assert len(referenced) == 4
    assert sorted(n.split(".")[0] for n in referenced) == ["app", "app", "uPlot", "uPlot"]
    assert html.count(ASSETS_PATH) == 4


def test_wheel_ships_the_static_files(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes build/ and egg-info next to the sources.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "tokmesh", source / "tokmesh", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-q", "-w", str(tmp_path), str(source)],
        check=True,
        timeout=120,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("tokmesh-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "tokmesh/ui/static/" + str(p.relative_to(STATIC)) for p in STATIC.rglob("*") if p.is_file()
    }
    assert expected <= names
    assert "tokmesh/ui/serve.py" in names
