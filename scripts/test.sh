#!/usr/bin/env bash
# The test suite in one command (what CI runs): installs what the tests need if it is missing
# (requirements-dev.txt, and the optional requirements-autoattack.txt and
# requirements-tensorboard.txt, whose paths the tests exercise), then runs pytest on every core;
# its exit code is this script's.
# Usage: bash scripts/test.sh [pytest arguments]     e.g. bash scripts/test.sh -x -k config
# Tests that need real CIFAR-10 / Tiny-ImageNet images read $IGAM_REAL_DATA (README, "Two commands").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
source scripts/_deps.sh
ensure_requirements requirements-dev.txt
for optional in requirements-autoattack.txt requirements-tensorboard.txt; do
  if [ -f "$optional" ]; then
    ensure_requirements "$optional"
  fi
done
# One pytest worker per core (at most 4; IGAM_TEST_WORKERS=1 for a single process); each test
# file runs in one worker, so a module's shared fixture (e.g. the tiny pipeline) is built once.
exec "$PY" -m pytest -q -n "${IGAM_TEST_WORKERS:-auto}" --maxprocesses 4 --dist loadfile tests "$@"
