#!/usr/bin/env bash
# IGAM on real images at CPU scale, two transfer pairs on the real CIFAR-10 and Tiny-ImageNet
# in their official layouts:
#   tinyimagenet_to_cifar10   Tiny-ImageNet (source) -> CIFAR-10 (target), teacher upresize 32 -> 64
#   cifar10_0-4_to_5-9        CIFAR-10 classes 0-4 (source) -> classes 5-9 (target), data.classes
# For each pair: PGD adversarial training of the source model -> teacher head finetuning on the
# target task -> an IGAM student and a baseline student trained identically with
# beta = gamma = 0 -> PGD-20 at L-inf eps 2, 4 and 8 (/255) and AutoAttack (standard version,
# eps 8, on the first test images) on the target test set -> input-gradient picture and
# alignment (igam.eval.visualize). One table (accuracy in %, alignment as a cosine), also
# written to models/demo_real/results.json as
# {pair: {finetuned_teacher | igam_student | baseline_student:
#           {clean, pgd20_eps2, pgd20_eps4, pgd20_eps8, autoattack_eps8, alignment},
#         chance}}   (chance: the best constant classifier's accuracy on those test images)
#
# Usage: bash scripts/demo_real.sh   (from anywhere; measured times: docs/results.md)
# Data: IGAM_REAL_DATA (default datasets/) holds cifar10/cifar-10-batches-py/ (or
#   cifar-10-batches-py/ directly) and tiny-imagenet-200/ (docs/pipeline.md "Datasets").
# Repeats: DEMO_REAL_SEEDS="0 1 2" runs the whole experiment once per seed (into
#   $DEMO_REAL_DIR/seed_<s>/) and writes their mean and spread to $DEMO_REAL_DIR/summary.json.
# Validation: DEMO_REAL_VALIDATE=1 holds out 100 CIFAR-10 training images per class
#   (python -m igam.data.holdout, into $DEMO_REAL_DIR/validation_data/) and runs everything on
#   the rest, so the "test" columns are validation accuracies: choose settings this way, never
#   on the test set. The Tiny-ImageNet source keeps all its training images.
# Knobs (environment): DEMO_REAL_DIR (output folder), DEMO_REAL_SEED (one seed for every step),
#   DEMO_REAL_TINY=1 (a few steps on a few test images: a smoke test, numbers meaningless),
#   DEMO_REAL_ATTACKS (default "pgd20_eps2 pgd20_eps4 pgd20_eps8 autoattack_eps8", see below),
#   and the per-step ones below (DEMO_REAL_*).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${DEMO_REAL_DIR:-models/demo_real}
DATA=${IGAM_REAL_DATA:-datasets}
SEED=${DEMO_REAL_SEED:-0}
PY=${PYTHON:-python}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
start=$(date +%s)

fail() { echo "error: $*" >&2; exit 2; }

# repeated runs: this script once per seed, then the summary (mean and spread per cell)
if [ -n "${DEMO_REAL_SEEDS:-}" ]; then
  files=()
  for s in $DEMO_REAL_SEEDS; do
    DEMO_REAL_SEEDS="" DEMO_REAL_SEED=$s DEMO_REAL_DIR=$OUT/seed_$s bash "$ROOT/scripts/demo_real.sh"
    files+=("$OUT/seed_$s/results.json")
  done
  $PY -m igam.eval.report --summarize "${files[@]}" --out "$OUT/summary.json"
  echo "demo_real ($DEMO_REAL_SEEDS) finished in $(( $(date +%s) - start )) s; summary in $OUT/summary.json"
  exit 0
fi

# 1. the real datasets (official layouts; the loaders accept a folder or its parent)
C10=""
for d in "$DATA/cifar10" "$DATA"; do
  if [ -f "$d/cifar-10-batches-py/data_batch_1" ] || [ -f "$d/data_batch_1" ]; then C10=$d; break; fi
done
[ -n "$C10" ] || fail "real CIFAR-10 not found in $DATA: put the official python version" \
  "(cifar-10-batches-py/) in $DATA/cifar10/, or set IGAM_REAL_DATA to the folder holding it"
TIN=$DATA/tiny-imagenet-200
[ -d "$TIN/train" ] || fail "real Tiny-ImageNet not found in $DATA: unzip the official" \
  "tiny-imagenet-200.zip into $DATA/ (giving $TIN/train/...), or set IGAM_REAL_DATA"
if [ "${DEMO_REAL_VALIDATE:-0}" = 1 ]; then
  $PY -m igam.data.holdout --root "$C10" --out "$OUT/validation_data" --per_class 100 --seed 0
  C10=$OUT/validation_data
fi

# 2. settings (DEMO_REAL_TINY=1: the smallest settings that run every step)
if [ "${DEMO_REAL_TINY:-0}" = 1 ]; then
  D_WIDTHS=4,4,8,16; D_SRC=2; D_FT=2; D_IGAM=2; D_WARM=1; D_NEVAL=20; D_AA_N=10; D_AA_ITER=2
  D_AA_Q=10
else
  D_WIDTHS=8,8,16,32; D_SRC=300; D_FT=200; D_IGAM=300; D_WARM=100; D_NEVAL=0; D_AA_N=200
  D_AA_ITER=0; D_AA_Q=1000
fi
WIDTHS=${DEMO_REAL_WIDTHS:-$D_WIDTHS}          # WideResNet widths of every model, 1 unit per stage
SRC_STEPS=${DEMO_REAL_SRC_STEPS:-$D_SRC}       # adversarial training steps of the source model
FT_STEPS=${DEMO_REAL_FT_STEPS:-$D_FT}          # teacher head finetuning steps
IGAM_STEPS=${DEMO_REAL_IGAM_STEPS:-$D_IGAM}    # student steps (both students)
WARMUP=${DEMO_REAL_WARMUP:-$D_WARM}            # student steps before the IGAM terms start
BETA=${DEMO_REAL_BETA:-1}                      # IGAM student's discriminator weight
GAMMA=${DEMO_REAL_GAMMA:-10}                   # IGAM student's L2 (gradient distance) weight
TIN_CLASSES=${DEMO_REAL_TIN_CLASSES:-0}        # first k Tiny-ImageNet classes as source (0: all 200)
NEVAL=${DEMO_REAL_NEVAL:-$D_NEVAL}             # test images attacked and evaluated (0: all)
AA_N=${DEMO_REAL_AA_EXAMPLES:-$D_AA_N}         # first test images AutoAttack attacks
AA_ITER=${DEMO_REAL_AA_ITER:-$D_AA_ITER}       # APGD/FAB iterations (0: standard's 100)
AA_QUERIES=${DEMO_REAL_AA_QUERIES:-$D_AA_Q}    # Square queries (0: standard's 5000)
# attacks on the target test set, each a result column:
#   pgd20_eps<E>      PGD-20 (step E/4, random start) at L-inf eps E/255 on the first NEVAL images
#   apgd_eps<E>       AutoAttack's APGD-CE + APGD-T (standard settings) on the first APGD_N images
#   autoattack_eps<E> AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square) on the first AA_N
#                     images (AA_ITER / AA_QUERIES > 0 reduce it: its JSON then says "reduced")
#   fgsm, pgds20, ... configs/attack_<name>.yaml as it is, on the first NEVAL images
read -r -a ATTACKS <<< "${DEMO_REAL_ATTACKS:-pgd20_eps2 pgd20_eps4 pgd20_eps8 autoattack_eps8}"
APGD_N=${DEMO_REAL_APGD_EXAMPLES:-$NEVAL}      # first test images of apgd_eps<E>
attack_args() {  # $1 attack name -> the array A of pgd_attack.py / run_attack.py options
  local e
  case $1 in
    pgd20_eps*) e=${1#pgd20_eps}
      A=(--config configs/attack_pgds20.yaml --attack.eps "$e"
         --attack.step_size "$(awk "BEGIN {print $e / 4}")" --eval.num_examples "$NEVAL") ;;
    apgd_eps*) e=${1#apgd_eps}
      A=(--config configs/attack_autoattack.yaml --attack.eps "$e"
         --attack.attacks apgd-ce,apgd-t --eval.num_examples "$APGD_N") ;;
    autoattack_eps*) e=${1#autoattack_eps}
      A=(--config configs/attack_autoattack.yaml --attack.eps "$e" --eval.num_examples "$AA_N"
         --attack.n_iter "$AA_ITER" --attack.n_queries "$AA_QUERIES") ;;
    *) A=(--config "configs/attack_$1.yaml" --eval.num_examples "$NEVAL") ;;
  esac
  A+=(--attack_name "$1")
}

COMMON=(--device cpu --overwrite --seed "$SEED" --log_every 50 --eval.batch_size 100
        --eval.num_examples "$NEVAL")
decay() { echo $(( $1 * 3 / 4 )); }  # lr 0.05, then 0.01 for the last quarter of the steps

# 3. one transfer pair: $1 pair name, $2 advtrain config, $3 finetune config, $4 IGAM config,
#    then the arrays SRC_DATA, TGT_DATA and TEACHER (extra options of the teacher) are used.
run_pair() {
  local P=$OUT/$1
  $PY train_advtrain_tinyimagenet.py --config "$2" "${COMMON[@]}" "${SRC_DATA[@]}" \
    --model_dir "$P/source" --model.widths "$WIDTHS" --model.units_per_stage 1 \
    --train.steps "$SRC_STEPS" --train.batch_size 32 \
    --train.lr_schedule "[[0, 0.05], [$(decay "$SRC_STEPS"), 0.01]]" \
    --attack.steps 3 --attack.step_size 4 --checkpoint_every 100
  $PY finetune_teacher.py --config "$3" "${COMMON[@]}" "${TGT_DATA[@]}" "${TEACHER[@]}" \
    --model_dir "$P/finetuned_teacher" --source_model_dir "$P/source" \
    --finetune.steps "$FT_STEPS" --finetune.batch_size 64 --finetune.lr 0.01 \
    --checkpoint_every 100
  for name in igam_student baseline_student; do
    if [ "$name" = igam_student ]; then W=(--igam.beta "$BETA" --igam.gamma "$GAMMA");
    else W=(--igam.beta 0 --igam.gamma 0); fi
    $PY train_igam.py --config "$4" "${COMMON[@]}" "${TGT_DATA[@]}" \
      --model_dir "$P/$name" --teacher_dir "$P/finetuned_teacher" \
      --student.widths "$WIDTHS" --student.units_per_stage 1 \
      --discriminator.num_conv_layers 3 --discriminator.base_channels 8 \
      --igam.steps_before_adv_opt "$WARMUP" --igam.disc_update_steps 1 "${W[@]}" \
      --train.steps "$IGAM_STEPS" --train.batch_size 32 \
      --train.lr_schedule "[[0, 0.05], [$(decay "$IGAM_STEPS"), 0.01]]" --checkpoint_every 100
  done
  # attacks on the target test set (dataset and class subset from each model's checkpoint)
  for model in finetuned_teacher igam_student baseline_student; do
    for attack in "${ATTACKS[@]}"; do
      attack_args "$attack"
      for script in pgd_attack.py run_attack.py; do
        $PY "$script" "${A[@]}" --model_dir "$P/$model" --device cpu --seed "$SEED" \
          --attack_dir "$P/attacks" > /dev/null
      done
    done
  done
  gradient_picture "$P"
}

# input gradients of the teacher and both students: picture + alignment (mean cosine over the
# evaluated test images), $1/input_gradients.png and .json
gradient_picture() {
  $PY -m igam.eval.visualize --config configs/visualize.yaml --device cpu --seed "$SEED" \
    --teacher_dir "$1/finetuned_teacher" --student_dir "$1/igam_student" \
    --student_dir "$1/baseline_student" --alignment.num_examples "$NEVAL" \
    --out "$1/input_gradients.png" > /dev/null
}

# (a) Tiny-ImageNet -> CIFAR-10: the paper's pair, teacher upresizes the 32x32 images to 64x64
SRC_DATA=(--data.root "$TIN" --data.num_classes "$TIN_CLASSES")
TGT_DATA=(--data.dataset cifar10 --data.root "$C10")
TEACHER=()
run_pair tinyimagenet_to_cifar10 configs/advtrain_tinyimagenet.yaml \
  configs/finetune_tinyimagenet_to_cifar10.yaml configs/igam_tinyimagenet_to_cifar10.yaml

# (b) CIFAR-10 classes 0-4 -> 5-9: same images size, disjoint classes (like CIFAR-10 -> 100)
SRC_DATA=(--data.dataset cifar10 --data.root "$C10" --data.classes 0,1,2,3,4)
TGT_DATA=(--data.dataset cifar10 --data.root "$C10" --data.classes 5,6,7,8,9)
TEACHER=(--teacher.upresize_to 0 --teacher.standardization source)
run_pair cifar10_0-4_to_5-9 configs/advtrain_cifar10.yaml \
  configs/finetune_cifar10_to_cifar100.yaml configs/igam_cifar10_to_cifar100.yaml

# 4. one table
PAIRS=("$OUT/tinyimagenet_to_cifar10" "$OUT/cifar10_0-4_to_5-9")
$PY -m igam.eval.report "${PAIRS[@]}" \
  --rows finetuned_teacher igam_student baseline_student --attacks "${ATTACKS[@]}" --chance \
  --alignment "${PAIRS[0]}/input_gradients.json" "${PAIRS[1]}/input_gradients.json" \
  --out "$OUT/results.json"
echo "demo_real finished in $(( $(date +%s) - start )) s (seed $SEED); results in $OUT/results.json"
