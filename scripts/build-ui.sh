#!/usr/bin/env bash
# Vendor the dashboard's third-party files into tokmesh/ui/static/vendor (committed, so
# `pip install .` needs no Node and the page works offline). The page's own files are
# written by hand in tokmesh/ui/static and need no build.
#
#   1. `npm ci` in ui/: installs exactly what ui/package-lock.json pins (version and
#      sha512 integrity of every tarball); no install scripts run.
#   2. Copies the third-party files the page loads (uPlot) into the package, and records the vendored package's version, lock integrity and
#      the sha256 of each copied file in vendor/VENDOR.json, which
#      tests/dashboard/test_ui_files.py checks against the lock.
#
# Needs node and npm (any npm 7+). Run from anywhere: bash scripts/build-ui.sh
set -euo pipefail
cd "$(dirname "$0")/.."

(cd ui && npm ci --ignore-scripts --no-audit --no-fund)

out=tokmesh/ui/static
rm -rf "$out/vendor"
mkdir -p "$out/vendor"
uplot=ui/node_modules/uplot
cp "$uplot/dist/uPlot.iife.min.js" "$uplot/dist/uPlot.min.css" "$uplot/LICENSE" "$out/vendor/"

python3 - "$out/vendor" <<'PY'
import hashlib
import json
import sys
from pathlib import Path

vendor = Path(sys.argv[1])
lock = json.loads(Path("ui/package-lock.json").read_text())["packages"]["node_modules/uplot"]
files = {
    p.name: hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(vendor.iterdir())
    if p.name != "VENDOR.json"
}
record = {"uplot": {"version": lock["version"], "integrity": lock["integrity"], "files": files}}
(vendor / "VENDOR.json").write_text(json.dumps(record, indent=2) + "\n")
PY
echo "dashboard vendor files written to $out/vendor"
