#!/usr/bin/env bash
# The whole IGAM pipeline at tiny scale on CPU, on synthetic data, in a few minutes:
#   synthetic TinyImageNet (source) + CIFAR-10 (target) -> adversarial training of the source
#   model -> finetuned teacher (32 -> 64 upresize) -> IGAM student and a baseline student
#   trained identically with beta = gamma = 0 -> FGSM and PGD-20 -> input-gradient picture and
#   alignment (python -m igam.eval.visualize) -> gradient-masking checks and robustness curve
#   (python -m igam.eval.sanity) -> one table, also written to models/demo/results.json.
# Usage: bash scripts/demo.sh            (from anywhere; DEMO_DIR=... to put runs elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${DEMO_DIR:-models/demo}
DATA=${DEMO_DATA:-datasets/demo}
ATT=$OUT/attacks
PY=${PYTHON:-python}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)

# 1. environment: install the dependencies if they are missing
source scripts/_deps.sh
ensure_requirements requirements.txt
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [ -z "${DEMO_SQUARE_QUERIES:-}" ] && ! $PY -c "import pyautoattack" 2>/dev/null; then
  # the sanity step's Square check needs the optional package: say so now, skip it there
  echo "note: pyautoattack is not installed, so step 8 skips the Square check" \
    "(pip install -r requirements-autoattack.txt to run it)" >&2
  DEMO_SQUARE_QUERIES=0
fi

# 2. synthetic datasets in the official on-disk formats
NCLS=${DEMO_CLASSES:-10}
$PY -m igam.data.synthetic --dataset tinyimagenet --out "$DATA/tiny-imagenet-200" \
  --num_classes "$NCLS" --n_train_per_class ${DEMO_SRC_PER_CLASS:-100} --n_val_per_class ${DEMO_SRC_VAL:-20} --seed 1
$PY -m igam.data.synthetic --dataset cifar10 --out "$DATA/cifar10" \
  --n_train ${DEMO_TGT_TRAIN:-1000} --n_test ${DEMO_TGT_TEST:-500} --seed 2

COMMON=(--device cpu --overwrite --log_every 50 --eval.batch_size 100)
NET=(8,8,16,32)

# 3. adversarial training of the source model (PGD eps 8; 3 steps of 4 to fit the CPU budget)
$PY train_advtrain_tinyimagenet.py --config configs/advtrain_tinyimagenet.yaml "${COMMON[@]}" \
  --model_dir "$OUT/teacher" --data.root "$DATA/tiny-imagenet-200" \
  --model.widths "${NET[@]}" --model.units_per_stage 1 \
  --train.steps ${DEMO_SRC_STEPS:-150} --train.batch_size 16 \
  --train.lr_schedule "[[0, 0.05], [112, 0.01]]" --attack.steps 3 --attack.step_size 4 \
  --checkpoint_every 50

# 4. finetune a CIFAR-10 head on it (upresize 32 -> 64)
$PY finetune_teacher.py --config configs/finetune_tinyimagenet_to_cifar10.yaml "${COMMON[@]}" \
  --model_dir "$OUT/finetuned_teacher" --source_model_dir "$OUT/teacher" \
  --data.root "$DATA/cifar10" --finetune.steps ${DEMO_FT_STEPS:-100} \
  --finetune.batch_size 64 --finetune.lr 0.01 --checkpoint_every 50

# 5. IGAM student and a baseline student trained identically with beta = gamma = 0
for name in igam_student baseline_student; do
  if [ "$name" = igam_student ]; then W=(--igam.beta ${DEMO_BETA:-1} --igam.gamma ${DEMO_GAMMA:-10}); \
  else W=(--igam.beta 0 --igam.gamma 0); fi
  $PY train_igam.py --config configs/igam_tinyimagenet_to_cifar10.yaml "${COMMON[@]}" \
    --model_dir "$OUT/$name" --teacher_dir "$OUT/finetuned_teacher" --data.root "$DATA/cifar10" \
    --student.widths "${NET[@]}" --student.units_per_stage 1 \
    --discriminator.num_conv_layers 3 --discriminator.base_channels 8 \
    --igam.steps_before_adv_opt ${DEMO_WARMUP:-100} --igam.disc_update_steps 1 "${W[@]}" \
    --train.steps ${DEMO_IGAM_STEPS:-300} --train.batch_size 32 \
    --train.lr_schedule "[[0, 0.05], [225, 0.01]]" --checkpoint_every 100
done

# 6. attacks: FGSM and PGD-20 on every model (the source model on its own validation set)
for model in teacher finetuned_teacher igam_student baseline_student; do
  if [ "$model" = teacher ]; then D=(--data.dataset tinyimagenet --data.root "$DATA/tiny-imagenet-200"); \
  else D=(--data.dataset cifar10 --data.root "$DATA/cifar10"); fi
  for attack in fgsm pgds20; do
    $PY pgd_attack.py --config "configs/attack_${attack}.yaml" --model_dir "$OUT/$model" \
      "${D[@]}" --device cpu --attack_dir "$ATT"
    $PY run_attack.py --config "configs/attack_${attack}.yaml" --model_dir "$OUT/$model" \
      "${D[@]}" --device cpu --attack_dir "$ATT" > /dev/null
  done
done

# 7. input gradients of the teacher and both students: picture + alignment (mean cosine)
$PY -m igam.eval.visualize --config configs/visualize.yaml --device cpu \
  --teacher_dir "$OUT/finetuned_teacher" --student_dir "$OUT/igam_student" \
  --student_dir "$OUT/baseline_student" --out "$OUT/input_gradients.png"

# 8. gradient-masking checks and the robustness curve of the CIFAR-10 models
$PY -m igam.eval.sanity --config configs/sanity.yaml --device cpu \
  --model_dir "$OUT/finetuned_teacher" --model_dir "$OUT/igam_student" \
  --model_dir "$OUT/baseline_student" --sanity.num_examples ${DEMO_SANITY_EXAMPLES:-50} \
  --sanity.square_queries ${DEMO_SQUARE_QUERIES:-300} ${DEMO_SANITY_ARGS:-} \
  --out "$OUT/sanity.json" --curve "$OUT/robustness_curve.png"

# 9. one table
$PY -m igam.eval.report "$OUT" --rows teacher finetuned_teacher igam_student baseline_student \
  --attacks fgsm pgds20 --alignment "$OUT/input_gradients.json" --out "$OUT/results.json"
echo "demo finished in $(( $(date +%s) - start )) s; results in $OUT/results.json," \
  "pictures $OUT/input_gradients.png and $OUT/robustness_curve.png"
echo "AutoAttack (standard, L-inf eps 8) on the students, beyond the demo's time budget:"
echo "  for m in igam_student baseline_student; do for s in pgd_attack.py run_attack.py; do" \
  "$PY \$s --config configs/attack_autoattack.yaml --model_dir $OUT/\$m --attack_dir $ATT; done; done"
