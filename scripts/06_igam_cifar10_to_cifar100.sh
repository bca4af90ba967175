#!/usr/bin/env bash
# Step 5b (original run_IGAM_c10toc100.sh): IGAM student on CIFAR-100, batch 32, beta 2,
# gamma 10, img_random_pert on, 320k steps with the IGAM terms for the last 40k.
set -euo pipefail
cd "$(dirname "$0")/.."
python train_igam.py --config configs/igam_cifar10_to_cifar100.yaml "$@"
