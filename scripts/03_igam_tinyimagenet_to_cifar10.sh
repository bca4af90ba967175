#!/usr/bin/env bash
# Step 3 (original run_IGAM_tinyimagenettoc10_upresize.sh): IGAM student on CIFAR-10,
# batch 32, beta 5, gamma 10, 320k steps with the IGAM terms for the last 40k.
set -euo pipefail
cd "$(dirname "$0")/.."
python train_igam.py --config configs/igam_tinyimagenet_to_cifar10.yaml "$@"
