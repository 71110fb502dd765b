#!/usr/bin/env bash
# Refresh the dependency locks from pyproject.toml (and requirements/build.in):
#   requirements/test.txt     runtime + test/dev tools + build backend (.ci/run, README)
#   requirements/runtime.txt  runtime + build backend (Containerfile)
# Both are universal (every platform, Python >= 3.11) and hash-pinned, so plain pip
# installs them with hash checking. Extra arguments go to uv, e.g. --upgrade-package redis.
# Needs uv (pip install uv); run it, run the tests, commit the two files together.
set -euo pipefail
cd "$(dirname "$0")/.."
common=(--universal --python-version 3.11 --generate-hashes --no-header --quiet)
uv pip compile pyproject.toml requirements/build.in --extra test "${common[@]}" "$@" \
    -o requirements/test.txt
uv pip compile pyproject.toml requirements/build.in "${common[@]}" "$@" \
    -o requirements/runtime.txt
