#!/usr/bin/env bash
# Build the dashboard's static files into tokmesh/ui/static (committed, so `pip install .`
# needs no Node and the page works offline).
#
#   1. `npm ci` in ui/: installs exactly what ui/package-lock.json pins (version and
#      sha512 integrity of every tarball); no install scripts run.
#   2. Copies the page's own files (ui/src) and the third-party files it loads (uPlot)
#      into the package, and records the vendored package's version, lock integrity and
#      the sha256 of each copied file in vendor/VENDOR.json, which
#      tests/dashboard/test_ui_files.py checks against the lock.
#
# Needs node and npm (any npm 7+). Run from anywhere: bash scripts/build-ui.sh
set -euo pipefail
cd "$(dirname "$0")/.."

(cd ui && npm ci --ignore-scripts --no-audit --no-fund)

out=tokmesh/ui/static
rm -rf "$out"
mkdir -p "$out/vendor"
cp ui/src/index.html ui/src/app.js ui/src/app.css "$out/"
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
echo "dashboard files written to $out"
