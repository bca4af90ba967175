#!/usr/bin/env bash
# Install the runtime dependencies (requirements.txt). scripts/demo.sh and scripts/test.sh
# install what they need themselves when it is missing.
# For a specific CUDA build of torch, install torch first following pytorch.org, then run this.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -r requirements.txt
# Optional: AutoAttack for scripts/04_* and 07_* (or run them with AUTOATTACK=0):
#   python -m pip install -r requirements-autoattack.txt
