#!/usr/bin/env bash
# The test suite in one command (what CI runs): installs what the tests need if it is missing
# (requirements-dev.txt, and requirements-autoattack.txt when the repository has it), then runs
# pytest; its exit code is this script's.
# Usage: bash scripts/test.sh [pytest arguments]     e.g. bash scripts/test.sh -x -k config
# Tests that need real CIFAR-10 / Tiny-ImageNet images read $IGAM_REAL_DATA (README, "Two commands").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
source scripts/_deps.sh
ensure_requirements requirements-dev.txt
if [ -f requirements-autoattack.txt ]; then
  ensure_requirements requirements-autoattack.txt
fi
exec "$PY" -m pytest -q tests "$@"
