#!/usr/bin/env bash
# Step 4 (original run_eval_igam_tinyimagenettoc10_upresize.sh): FGSM, PGD-10, PGD-5,
# PGD-20 and PGD-100 on the IGAM student: generate (pgd_attack.py; files
# attacks/<model>-<path hash>_<attack>_attack.npy, each with its record .json), then evaluate
# (run_attack.py; results $MODEL_DIR/eval_<attack>.json). MODEL_DIR=models/other bash
# scripts/04_... attacks another model. Ends by listing the model's evaluation records.
# Then standard AutoAttack (L-inf eps 8; needs pip install -r requirements-autoattack.txt,
# checked at the start; AUTOATTACK=0 skips it, e.g. AUTOATTACK_EXAMPLES=1000 attacks the first
# 1000 test images).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL_DIR=${MODEL_DIR:-models/igam_tinyimagenet_to_cifar10}
AUTOATTACK=${AUTOATTACK:-1}
AUTOATTACK_EXAMPLES=${AUTOATTACK_EXAMPLES:-0}
if [ "$AUTOATTACK" != 0 ] && ! python -c "import pyautoattack" 2>/dev/null; then
  # checked now, not after hours of PGD attacks
  echo "error: the AutoAttack step needs the optional package pyautoattack: pip install -r" \
    "requirements-autoattack.txt (or skip the step: AUTOATTACK=0 bash $0)" >&2
  exit 2
fi
for attack in fgsm pgd10 pgds5 pgds20 pgds100; do
  python pgd_attack.py --config "configs/attack_${attack}.yaml" --model_dir "$MODEL_DIR" "$@"
  python run_attack.py --config "configs/attack_${attack}.yaml" --model_dir "$MODEL_DIR" "$@"
done
if [ "$AUTOATTACK" != 0 ]; then
  for script in pgd_attack.py run_attack.py; do
    python "$script" --config configs/attack_autoattack.yaml --model_dir "$MODEL_DIR" \
      --eval.num_examples "$AUTOATTACK_EXAMPLES" "$@"
  done
fi
python -m igam.eval.report --records "$MODEL_DIR"
