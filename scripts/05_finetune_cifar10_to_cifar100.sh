#!/usr/bin/env bash
# Step 5a (first half of the original run_IGAM_c10toc100.sh): fit a CIFAR-100 head on the
# robust CIFAR-10 model in models/adv_trained - Madry's released checkpoint converted with
#   python -m igam.tf.convert --tf_checkpoint models/adv_trained_tf --arch madry --out models/adv_trained
# or one trained with configs/advtrain_cifar10.yaml (then pass --source_model_dir models/advtrain_cifar10).
# Needs datasets/cifar100 (cifar-100-python).
set -euo pipefail
cd "$(dirname "$0")/.."
python finetune_teacher.py --config configs/finetune_cifar10_to_cifar100.yaml "$@"
