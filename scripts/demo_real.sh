#!/usr/bin/env bash
# IGAM on real images at CPU scale, two transfer pairs on the real CIFAR-10 and Tiny-ImageNet
# in their official layouts:
#   tinyimagenet_to_cifar10   Tiny-ImageNet (source) -> CIFAR-10 (target), teacher upresize 32 -> 64
#   cifar10_0-4_to_5-9        CIFAR-10 classes 0-4 (source) -> classes 5-9 (target), data.classes
# For each pair: PGD adversarial training of the source model -> teacher head finetuning on the
# target task -> an IGAM student and a baseline student trained identically with
# beta = gamma = 0 -> on the target test set, PGD-20 at L-inf eps 2, 4 and 8 (/255), APGD-CE +
# APGD-T at eps 4 and 8, and AutoAttack's standard version at eps 4 and 8 on fewer images ->
# input-gradient picture and alignment (igam.eval.visualize). One table (accuracy in %,
# alignment as a cosine), also written to models/demo_real/results.json as
# {pair: {finetuned_teacher | igam_student | baseline_student:
#           {clean, pgd20_eps2, pgd20_eps4, pgd20_eps8, apgd_eps4, apgd_eps8, autoattack_eps4,
#            autoattack_eps8, alignment},
#         chance,    (the best constant classifier's accuracy on those test images)
#         columns}}  (per column: the attack and how many test images it ran on)
# and the wall-clock seconds of every step to models/demo_real/times.tsv.
#
# Usage: bash scripts/demo_real.sh   (from anywhere; results and times: docs/results.md)
# Data: IGAM_REAL_DATA (default datasets/) holds cifar10/cifar-10-batches-py/ (or
#   cifar-10-batches-py/ directly) and tiny-imagenet-200/ (docs/pipeline.md "Datasets").
# Repeats: DEMO_REAL_SEEDS="0 1 2" runs the whole experiment once per seed (into
#   $DEMO_REAL_DIR/seed_<s>/) and writes their mean and spread to $DEMO_REAL_DIR/summary.json,
#   with per pair the share of the teacher's margin over the baseline the IGAM student recovers
#   and its clean cost ("transfer"). Pairs and seeds may also run as separate jobs
#   (DEMO_REAL_PAIRS=<pair> DEMO_REAL_SEED=<s> DEMO_REAL_DIR=<dir>) and be summarised together:
#   python -m igam.eval.report --summarize <dir>/results.json ... --transfer finetuned_teacher
#   igam_student baseline_student --out summary.json
# Validation: DEMO_REAL_VALIDATE=1 holds out 200 CIFAR-10 training images per class
#   (python -m igam.data.holdout, into $DEMO_REAL_DIR/validation_data/) and runs everything on
#   the rest, so the "test" columns are validation accuracies: choose settings this way, never
#   on the test set. The Tiny-ImageNet source keeps all its training images.
# Knobs (environment): DEMO_REAL_DIR (output folder), DEMO_REAL_SEED (one seed for every step),
#   DEMO_REAL_PAIRS (default "tinyimagenet_to_cifar10 cifar10_0-4_to_5-9": the pairs to run),
#   DEMO_REAL_TINY=1 (a few steps on a few test images: a smoke test, numbers meaningless),
#   DEMO_REAL_RESUME=1 (continue an interrupted run in the same DEMO_REAL_DIR with the same
#   settings: the steps times.tsv lists as finished are skipped, an interrupted training run
#   continues from its last checkpoint and its time in times.tsv is the resumed part's),
#   DEMO_REAL_ATTACKS (the result columns, see below),
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
  $PY -m igam.eval.report --summarize "${files[@]}" --out "$OUT/summary.json" \
    --transfer finetuned_teacher igam_student baseline_student
  echo "demo_real ($DEMO_REAL_SEEDS) finished in $(( $(date +%s) - start )) s; summary in $OUT/summary.json"
  exit 0
fi

# the transfer pairs to run (all by default), checked before any work
KNOWN_PAIRS="tinyimagenet_to_cifar10 cifar10_0-4_to_5-9"
read -r -a PAIR_NAMES <<< "${DEMO_REAL_PAIRS:-$KNOWN_PAIRS}"
for pair in "${PAIR_NAMES[@]}"; do
  [[ " $KNOWN_PAIRS " == *" $pair "* ]] ||
    fail "DEMO_REAL_PAIRS: unknown pair '$pair' (expected some of: $KNOWN_PAIRS)"
done
[ ${#PAIR_NAMES[@]} -gt 0 ] || fail "DEMO_REAL_PAIRS is empty (expected some of: $KNOWN_PAIRS)"

# 1. the real datasets (official layouts; the loaders accept a folder or its parent)
C10=""
for d in "$DATA/cifar10" "$DATA"; do
  if [ -f "$d/cifar-10-batches-py/data_batch_1" ] || [ -f "$d/data_batch_1" ]; then C10=$d; break; fi
done
[ -n "$C10" ] || fail "real CIFAR-10 not found in $DATA: put the official python version" \
  "(cifar-10-batches-py/) in $DATA/cifar10/, or set IGAM_REAL_DATA to the folder holding it"
TIN=$DATA/tiny-imagenet-200
if [[ " ${PAIR_NAMES[*]} " == *" tinyimagenet_to_cifar10 "* ]] && [ ! -d "$TIN/train" ]; then
  fail "real Tiny-ImageNet not found in $DATA: unzip the official tiny-imagenet-200.zip into" \
    "$DATA/ (giving $TIN/train/...), or set IGAM_REAL_DATA"
fi
mkdir -p "$OUT"
RESUME=${DEMO_REAL_RESUME:-0}
if [ "$RESUME" = 1 ]; then START=--resume; else START=--overwrite; : > "$OUT/times.tsv"; fi
if [ "${DEMO_REAL_VALIDATE:-0}" = 1 ]; then
  if [ "$RESUME" != 1 ] || [ ! -f "$OUT/validation_data/HOLDOUT.json" ]; then
    $PY -m igam.data.holdout --root "$C10" --out "$OUT/validation_data" --per_class 200 --seed 0
  fi
  C10=$OUT/validation_data
fi

# 2. settings of a pair: $1 = tin (Tiny-ImageNet -> CIFAR-10) or c10 (CIFAR-10 0-4 -> 5-9).
#    The defaults were chosen on a validation split (docs/results.md, "How the settings were
#    chosen"); DEMO_REAL_TINY=1 gives the smallest settings that run every step. Each
#    DEMO_REAL_* variable overrides its setting for both pairs.
settings() {
  if [ "${DEMO_REAL_TINY:-0}" = 1 ]; then
    D_WIDTHS=4,4,8,16; D_SRC=2; D_SRC_BATCH=8; D_FT=2; D_IGAM=2; D_WARM=1; D_DISC=1
    D_NEVAL=20; D_AA_N=10; D_APGD_N=10; D_AA_ITER=2; D_AA_Q=10; D_TIN_CLASSES=0
  else
    D_WIDTHS=16,16,32,64; D_FT=300; D_IGAM=600; D_WARM=150; D_DISC=5
    D_NEVAL=1000; D_AA_ITER=0; D_AA_Q=0
    if [ "$1" = tin ]; then
      # 64x64 source images cost 4x per image: a smaller batch. The teacher is attacked at
      # 64x64 and APGD-T / FAB-T try 9 target classes (4 in the other pair): AutoAttack on
      # fewer images, to fit the budget
      D_SRC=1500; D_SRC_BATCH=32; D_TIN_CLASSES=20; D_APGD_N=200; D_AA_N=50
    else
      D_SRC=1200; D_SRC_BATCH=64; D_TIN_CLASSES=0; D_APGD_N=500; D_AA_N=100
    fi
  fi
  WIDTHS=${DEMO_REAL_WIDTHS:-$D_WIDTHS}          # WideResNet widths of every model, 1 unit/stage
  SRC_STEPS=${DEMO_REAL_SRC_STEPS:-$D_SRC}       # adversarial training steps of the source model
  SRC_BATCH=${DEMO_REAL_SRC_BATCH:-$D_SRC_BATCH} # its batch size
  FT_STEPS=${DEMO_REAL_FT_STEPS:-$D_FT}          # teacher head finetuning steps (batch 64)
  IGAM_STEPS=${DEMO_REAL_IGAM_STEPS:-$D_IGAM}    # student steps, both students (batch 64)
  WARMUP=${DEMO_REAL_WARMUP:-$D_WARM}            # student steps before the IGAM terms start
  DISC_EVERY=${DEMO_REAL_DISC_EVERY:-$D_DISC}    # student steps per discriminator step
  BETA=${DEMO_REAL_BETA:-0.5}                    # IGAM student's discriminator weight
  GAMMA=${DEMO_REAL_GAMMA:-5}                    # IGAM student's L2 (gradient distance) weight
  NEVAL=${DEMO_REAL_NEVAL:-$D_NEVAL}             # test images of PGD-20 and alignment (0: all)
  AA_N=${DEMO_REAL_AA_EXAMPLES:-$D_AA_N}         # first test images AutoAttack attacks
  APGD_N=${DEMO_REAL_APGD_EXAMPLES:-$D_APGD_N}   # first test images of apgd_eps<E>
  AA_ITER=${DEMO_REAL_AA_ITER:-$D_AA_ITER}       # APGD/FAB iterations (0: standard's 100)
  AA_QUERIES=${DEMO_REAL_AA_QUERIES:-$D_AA_Q}    # Square queries (0: standard's 5000)
  TIN_CLASSES=${DEMO_REAL_TIN_CLASSES:-$D_TIN_CLASSES}  # first k Tiny-ImageNet classes (0: all 200)
  COMMON=(--device cpu "$START" --seed "$SEED" --log_every 50 --eval.batch_size 100
          --eval.num_examples "$NEVAL")
}
# attacks on the target test set, each a result column:
#   pgd20_eps<E>      PGD-20 (step E/4, random start) at L-inf eps E/255 on the first NEVAL images
#   apgd_eps<E>       AutoAttack's APGD-CE + APGD-T (standard settings) on the first APGD_N images
#   autoattack_eps<E> AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square) on the first AA_N
#                     images (AA_ITER / AA_QUERIES > 0 reduce it: its JSON then says "reduced")
#   fgsm, pgds20, ... configs/attack_<name>.yaml as it is, on the first NEVAL images
if [ "${DEMO_REAL_TINY:-0}" = 1 ]; then
  D_ATTACKS="pgd20_eps2 pgd20_eps4 pgd20_eps8 apgd_eps8 autoattack_eps8"
else
  D_ATTACKS="pgd20_eps2 pgd20_eps4 pgd20_eps8 apgd_eps4 apgd_eps8 autoattack_eps4 autoattack_eps8"
fi
read -r -a ATTACKS <<< "${DEMO_REAL_ATTACKS:-$D_ATTACKS}"
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

# learning rates: the source 0.1, 0.02 after 2/3 of its steps, 0.004 after 7/8 (0.1 throughout
# when too few steps to split); the students 0.05, then 0.01 for the last quarter
source_lr() {
  local a=$(( $1 * 2 / 3 )) b=$(( $1 * 7 / 8 ))
  if [ "$a" -gt 0 ] && [ "$b" -gt "$a" ]; then echo "[[0, 0.1], [$a, 0.02], [$b, 0.004]]"
  else echo "[[0, 0.1]]"; fi
}
student_lr() { echo "[[0, 0.05], [$(( $1 * 3 / 4 )), 0.01]]"; }

# wall-clock seconds of each step, one line "pair<TAB>step<TAB>seconds" in $OUT/times.tsv,
# written when the step has finished: DEMO_REAL_RESUME=1 skips the steps listed there
timed() {  # $1 pair, $2 step name, then the command
  if [ "$RESUME" = 1 ] && awk -F '\t' -v p="$1" -v s="$2" '$1 == p && $2 == s {f = 1}
       END {exit !f}' "$OUT/times.tsv"; then
    echo "resume: $1 $2 already done"; return
  fi
  local t0; t0=$(date +%s)
  "${@:3}"
  printf '%s\t%s\t%s\n' "$1" "$2" "$(( $(date +%s) - t0 ))" >> "$OUT/times.tsv"
}

# 3. one transfer pair: $1 pair name, $2 advtrain config, $3 finetune config, $4 IGAM config,
#    then the arrays SRC_DATA, TGT_DATA and TEACHER (extra options of the teacher) and the
#    settings are used.
run_pair() {
  local P=$OUT/$1
  echo "== $1 (seed $SEED): source $SRC_STEPS steps, teacher head $FT_STEPS, students $IGAM_STEPS"
  timed "$1" source $PY train_advtrain_tinyimagenet.py --config "$2" "${COMMON[@]}" "${SRC_DATA[@]}" \
    --model_dir "$P/source" --model.widths "$WIDTHS" --model.units_per_stage 1 \
    --train.steps "$SRC_STEPS" --train.batch_size "$SRC_BATCH" \
    --train.lr_schedule "$(source_lr "$SRC_STEPS")" \
    --attack.steps 3 --attack.step_size 3 --checkpoint_every 100
  timed "$1" finetuned_teacher $PY finetune_teacher.py --config "$3" "${COMMON[@]}" "${TGT_DATA[@]}" "${TEACHER[@]}" \
    --model_dir "$P/finetuned_teacher" --source_model_dir "$P/source" \
    --finetune.steps "$FT_STEPS" --finetune.batch_size 64 --finetune.lr 0.01 \
    --checkpoint_every 100
  for name in igam_student baseline_student; do
    if [ "$name" = igam_student ]; then W=(--igam.beta "$BETA" --igam.gamma "$GAMMA");
    else W=(--igam.beta 0 --igam.gamma 0); fi
    timed "$1" "$name" $PY train_igam.py --config "$4" "${COMMON[@]}" "${TGT_DATA[@]}" \
      --model_dir "$P/$name" --teacher_dir "$P/finetuned_teacher" \
      --student.widths "$WIDTHS" --student.units_per_stage 1 \
      --discriminator.num_conv_layers 3 --discriminator.base_channels 8 \
      --igam.steps_before_adv_opt "$WARMUP" --igam.disc_update_steps "$DISC_EVERY" "${W[@]}" \
      --train.steps "$IGAM_STEPS" --train.batch_size 64 \
      --train.lr_schedule "$(student_lr "$IGAM_STEPS")" --checkpoint_every 100
  done
  # attacks on the target test set (dataset and class subset from each model's checkpoint)
  for model in finetuned_teacher igam_student baseline_student; do
    for attack in "${ATTACKS[@]}"; do
      attack_args "$attack"
      timed "$1" "$model $attack" attack_and_evaluate "$P" "$model"
    done
  done
  timed "$1" input_gradients gradient_picture "$P"
}

attack_and_evaluate() {  # $1 pair folder, $2 model; the options A of attack_args
  for script in pgd_attack.py run_attack.py; do
    $PY "$script" "${A[@]}" --model_dir "$1/$2" --device cpu --seed "$SEED" \
      --attack_dir "$1/attacks" > /dev/null
  done
}

# input gradients of the teacher and both students: picture + alignment (mean cosine over the
# evaluated test images), $1/input_gradients.png and .json
gradient_picture() {
  $PY -m igam.eval.visualize --config configs/visualize.yaml --device cpu --seed "$SEED" \
    --teacher_dir "$1/finetuned_teacher" --student_dir "$1/igam_student" \
    --student_dir "$1/baseline_student" --alignment.num_examples "$NEVAL" \
    --out "$1/input_gradients.png" > /dev/null
}

for pair in "${PAIR_NAMES[@]}"; do
  case $pair in
    tinyimagenet_to_cifar10)
      # (a) the paper's pair: the teacher upresizes the 32x32 CIFAR-10 images to 64x64
      settings tin
      SRC_DATA=(--data.root "$TIN" --data.num_classes "$TIN_CLASSES")
      TGT_DATA=(--data.dataset cifar10 --data.root "$C10")
      TEACHER=()
      run_pair "$pair" configs/advtrain_tinyimagenet.yaml \
        configs/finetune_tinyimagenet_to_cifar10.yaml configs/igam_tinyimagenet_to_cifar10.yaml ;;
    cifar10_0-4_to_5-9)
      # (b) same image size, disjoint classes (like the paper's CIFAR-10 -> CIFAR-100)
      settings c10
      SRC_DATA=(--data.dataset cifar10 --data.root "$C10" --data.classes 0,1,2,3,4)
      TGT_DATA=(--data.dataset cifar10 --data.root "$C10" --data.classes 5,6,7,8,9)
      TEACHER=(--teacher.upresize_to 0 --teacher.standardization source)
      run_pair "$pair" configs/advtrain_cifar10.yaml \
        configs/finetune_cifar10_to_cifar100.yaml configs/igam_cifar10_to_cifar100.yaml ;;
  esac
done

# 4. one table (with --describe: which attack ran on how many images, per column)
DIRS=(); ALIGN=()
for pair in "${PAIR_NAMES[@]}"; do DIRS+=("$OUT/$pair"); ALIGN+=("$OUT/$pair/input_gradients.json"); done
$PY -m igam.eval.report "${DIRS[@]}" \
  --rows finetuned_teacher igam_student baseline_student --attacks "${ATTACKS[@]}" --chance \
  --describe --nest --alignment "${ALIGN[@]}" --out "$OUT/results.json"
echo "demo_real finished in $(( $(date +%s) - start )) s (seed $SEED); results in $OUT/results.json"
echo "times (s) per step: $OUT/times.tsv"
