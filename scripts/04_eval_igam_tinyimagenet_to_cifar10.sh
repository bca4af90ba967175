#!/usr/bin/env bash
# Step 4 (original run_eval_igam_tinyimagenettoc10_upresize.sh): FGSM, PGD-10, PGD-5,
# PGD-20 and PGD-100 on the IGAM student: generate (pgd_attack.py), then evaluate
# (run_attack.py). MODEL_DIR=models/other bash scripts/04_... attacks another model.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL_DIR=${MODEL_DIR:-models/igam_tinyimagenet_to_cifar10}
for attack in fgsm pgd10 pgds5 pgds20 pgds100; do
  python pgd_attack.py --config "configs/attack_${attack}.yaml" --model_dir "$MODEL_DIR" "$@"
  python run_attack.py --config "configs/attack_${attack}.yaml" --model_dir "$MODEL_DIR" "$@"
done
