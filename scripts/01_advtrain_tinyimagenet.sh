#!/usr/bin/env bash
# Step 1 (original run_advtrain_tinyimagenet.sh): PGD adversarial training of the robust
# TinyImageNet source model, batch 16, 320k steps. Needs datasets/tiny-imagenet-200
# (the official download, unzipped as is). Extra arguments are passed on, e.g. --device cuda:1.
# Interrupted? Run again with --resume.
set -euo pipefail
cd "$(dirname "$0")/.."
python train_advtrain_tinyimagenet.py --config configs/advtrain_tinyimagenet.yaml "$@"
