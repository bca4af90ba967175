#!/usr/bin/env bash
# Step 2 (original run_finetune_advtrainedtinyimagenet_on_cifar10_igamupresize.sh): fit a
# CIFAR-10 head on the frozen robust TinyImageNet model (32 -> 64 upresize), batch 64,
# 4700 steps. Needs datasets/cifar10 (cifar-10-batches-py).
set -euo pipefail
cd "$(dirname "$0")/.."
python finetune_teacher.py --config configs/finetune_tinyimagenet_to_cifar10.yaml "$@"
