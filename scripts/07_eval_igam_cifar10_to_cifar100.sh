#!/usr/bin/env bash
# Step 6 (original run_eval_igam_c10to100.sh): PGD-5, PGD-20 and PGD-100 on the CIFAR-100
# IGAM student (files attacks/<model>-<path hash>_<attack>_c100attack.npy, each with its
# record .json; results $MODEL_DIR/eval_<attack>.json), then standard AutoAttack
# (L-inf eps 8; needs pip install -r requirements-autoattack.txt, checked at the start;
# AUTOATTACK=0 skips it, AUTOATTACK_EXAMPLES=N attacks the first N test images only). Ends by
# listing the model's evaluation records.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL_DIR=${MODEL_DIR:-models/igam_cifar10_to_cifar100}
AUTOATTACK=${AUTOATTACK:-1}
AUTOATTACK_EXAMPLES=${AUTOATTACK_EXAMPLES:-0}
if [ "$AUTOATTACK" != 0 ] && ! python -c "import pyautoattack" 2>/dev/null; then
  # checked now, not after hours of PGD attacks
  echo "error: the AutoAttack step needs the optional package pyautoattack: pip install -r" \
    "requirements-autoattack.txt (or skip the step: AUTOATTACK=0 bash $0)" >&2
  exit 2
fi
for attack in pgds5 pgds20 pgds100; do
  for script in pgd_attack.py run_attack.py; do
    python "$script" --config "configs/attack_${attack}.yaml" --model_dir "$MODEL_DIR" \
      --data.dataset cifar100 --data.root datasets/cifar100 "$@"
  done
done
if [ "$AUTOATTACK" != 0 ]; then
  for script in pgd_attack.py run_attack.py; do
    python "$script" --config configs/attack_autoattack.yaml --model_dir "$MODEL_DIR" \
      --data.dataset cifar100 --data.root datasets/cifar100 \
      --eval.num_examples "$AUTOATTACK_EXAMPLES" "$@"
  done
fi
python -m igam.eval.report --records "$MODEL_DIR"
