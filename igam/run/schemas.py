"""Config schemas of the five entry scripts and of the evaluation tools (``igam.eval.sanity``,
``igam.eval.visualize``): every key declared once, with its default, its help line and, where
it has them, its choices and range (:class:`igam.run.config.Key`).

Keys shared by several scripts (seed, device, the run folder's keys, the data section, the
WideResNet, the SGD schedule, evaluation, precision) are declared once below and reused; a
script that needs another default or a more specific help line derives it with
``dataclasses.replace``. Defaults are the paper's settings (original.md §4-6, §9); some come
from the method itself - the ``igam`` section and the IGAM optimiser from
:class:`igam.objective.IGAMSettings`, the discriminator from the signature of
:class:`igam.models.InputGradientDiscriminator`, the learning-rate schedule from
:data:`igam.optim.PAPER_LR_SCHEDULE` - and AutoAttack's versions, sub-attacks and norms from
:mod:`igam.eval.autoattack`.

One :class:`Schema` per script (``ADVTRAIN_SCHEMA``, ...; ``SCHEMAS`` lists them), with its
derived views ``ADVTRAIN_SCHEMA.defaults`` (the nested dict of defaults), ``.choices`` and
``.ranges`` (dotted keys).
``configs/*.yaml`` hold only what a step or transfer pair sets differently; the reference page
of every key, docs/config_keys.md, is generated from here::

    python -m igam.run.schemas > docs/config_keys.md
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from dataclasses import replace
from typing import Any

from igam.data.subsets import canonical_class_subset
from igam.eval.autoattack import NORMS, SUB_ATTACKS, VERSIONS
from igam.models import InputGradientDiscriminator
from igam.objective import IGAMSettings
from igam.optim import PAPER_LR_SCHEDULE
from igam.run.config import Key, Schema

PAPER_LR = [list(p) for p in PAPER_LR_SCHEDULE]  # [step, lr]; floats: one element type
_IGAM_DEFAULTS = IGAMSettings()  # the method's defaults of the igam section
_DISC_DEFAULTS = {name: param.default for name, param in
                  inspect.signature(InputGradientDiscriminator).parameters.items()
                  if name not in ("image_size", "standardization")}

_STD = ("per_image", "zero_mean_l2", "l2")
_DATASETS = ("cifar10", "cifar100", "tinyimagenet")

# ----------------------------------------------------------------------------------------------
# Shared keys

_RUNTIME = {
    "seed": Key(0, "seeds python, numpy and torch (one seed for the whole run)", range=">= 0"),
    "device": Key("auto", "compute device: auto (CUDA if available), cpu, cuda, cuda:N or mps",
                  resumable=True),
    "allow_tf32": Key(False, "TF32 matmuls/convolutions on Ampere+ GPUs: faster, less faithful; "
                             "off because input gradients are fp32-sensitive (original.md §1)"),
}


def _run(model_dir: str, what: str) -> dict[str, Key]:
    """The run-folder keys of a training script whose run folder holds ``what``."""
    return {
        "model_dir": Key(model_dir, f"run folder of {what}: checkpoint.pt, config.yaml, "
                                    "metrics.jsonl", resumable=True),
        "resume": Key(False, "continue the run in model_dir from its last checkpoint, with the "
                             "config.yaml it started with as the base", resumable=True),
        "overwrite": Key(False, "start afresh even if model_dir already holds a run",
                         resumable=True),
        "log_every": Key(100, "steps between log lines and metrics.jsonl records", range=">= 1",
                         resumable=True),
        "checkpoint_every": Key(1000, "steps between atomic checkpoints (a crash loses at most "
                                      "this many)", range=">= 1", resumable=True),
    }


# Class subsets (igam.data.subsets; docs/pipeline.md#class-subsets)
_CLASSES = {
    "classes": Key([], "class subset: original class indices, relabelled 0..k-1 in this order, "
                       "e.g. [5, 6, 7, 8, 9]; [] = every class (set only one of classes and "
                       "num_classes)"),
    "num_classes": Key(0, "or k >= 2: the first k classes; 0 = every class", range=">= 0"),
}
_ROOT_HELP = ("dataset folder: the official download layout (cifar-10-batches-py, "
              "cifar-100-python, tiny-imagenet-200) or its contents (docs/pipeline.md#datasets)")


def _train_data(dataset: str, root: str, what: str) -> dict[str, Key]:
    """The data section of a training script."""
    return {"dataset": Key(dataset, what, choices=_DATASETS),
            "root": Key(root, _ROOT_HELP, resumable=True),
            **_CLASSES}


# Evaluation tools: the data recorded in the model's checkpoint unless given
_CHECKPOINT_DATA = {
    "dataset": Key("", 'the test split used; "" = the dataset recorded in the checkpoint(s)',
                   choices=("",) + _DATASETS),
    "root": Key("", 'dataset folder, e.g. datasets/cifar10; "" = the one recorded in the '
                    "checkpoint(s)"),
    "classes": replace(_CLASSES["classes"], help=(
        "class subset ([] and num_classes 0: the checkpoint's, if the dataset is the one it was "
        "trained on), e.g. [5, 6, 7, 8, 9]")),
    "num_classes": replace(_CLASSES["num_classes"], help=(
        "or k >= 2: the first k classes (set only one of classes and num_classes)")),
}

# The Madry WideResNet ("WRN-34-10"; original.md §2)
_WRN = {
    "widths": Key([16, 160, 320, 640], "channels of the initial conv and of stages 1, 2, 3 "
                                       "(a small debugging net: 16,16,32,64)", range=">= 1",
                  length=4),
    "units_per_stage": Key(5, "residual units per stage", range=">= 1"),
    "standardization": Key("zero_mean_l2", "per-image input standardisation (Madry's models: "
                                           "per_image)", choices=_STD),
}

# Models of other architectures (igam.run.external; docs/byo_teacher.md)
_ADAPTER = {
    "kwargs": Key({}, "keyword arguments of the factory (robustbench: overrides of the "
                      "architecture's arguments, e.g. a tiny depth / widen_factor)"),
    "input_range": Key(0.0, "pixel range the model takes: 1 ([0, 1]) or 255; 0 = 1, as "
                            "RobustBench's and torchvision's models (the port's take [0, 255])",
                       range=">= 0"),
    "mean": Key([], "per-channel mean subtracted on the [0, input_range] scale, 3 values; [] = "
                    "none (the model normalises itself)"),
    "std": Key([], "per-channel std (> 0) divided by after the mean, 3 values; [] = none"),
    "head": Key("", 'the head layer (dotted module name of an nn.Linear, the last operation); "" '
                    "= the model's last nn.Linear"),
}
_EXTERNAL_TEACHER = {
    **_ADAPTER,
    "weights": Key("", "weights file of a factory teacher: a state dict, or a checkpoint with "
                       "one under state_dict or model"),
    "trust_weights": Key(False, "read the weights with torch.load(weights_only=False), which "
                                "runs pickled code: only for files you trust"),
    "robustbench_dir": Key("models/robustbench", "RobustBench's model_dir: the weights of "
                                                 "robustbench:<name> are read from "
                                                 "<dir>/<dataset>/<threat_model>/<name>.pt"),
    "robustbench_dataset": Key("cifar10", "the dataset of the RobustBench model (its leaderboard)",
                               choices=("cifar10", "cifar100", "imagenet")),
    "threat_model": Key("Linf", "the threat model of the RobustBench model (its leaderboard)",
                        choices=("Linf", "L2", "corruptions")),
}
_TEACHER_MODEL_HELP = ("package.module:function (a factory: kwargs, weights) or "
                       "robustbench:<name> (local weights); docs/byo_teacher.md")

# SGD with the original's piecewise-constant learning rate (original.md §4, §5)
_STEPS = Key(320000, "SGD steps (the original's train_steps)", range=">= 1", resumable=True)
_BATCH = Key(32, "training batch per process (torchrun: global batch = N x this)", range=">= 1")
_LR_SCHEDULE = Key(PAPER_LR, "[step, lr] pairs: lr_k holds while step <= the next boundary "
                             "(the original's step_size_schedule)", range="schedule")
_MOMENTUM = Key(0.9, "SGD momentum", range="[0, 1]")
_WEIGHT_DECAY = Key(0.0002, "weight decay on conv/FC weights only (TF's DW variables)",
                    range=">= 0")
_AUGMENT = Key(True, "pad 2 + random crop + horizontal flip")

# Noise on the training images, input gradients saved after training
_IMG_RANDOM_PERT = Key(False, "add U(-eps, eps) noise to the training images")
_PERT_EPS = Key(8.0, "noise level of img_random_pert ([0, 255] pixel scale)", range=">= 0")
_SAVE_GRADIENTS = Key(False, "also save the trained model's input gradients on the train and "
                             "test sets (.npy)", resumable=True)

_TEACHER_BN = Key("batch", "teacher BatchNorm: batch statistics (the original) or its running "
                           "statistics", choices=("batch", "running"))

# PGD (igam.attacks)
_EPS = Key(8.0, "L-inf budget on the [0, 255] pixel scale (8 = 8/255)", range="> 0")
_STEP_SIZE = Key(2.0, "PGD step on the [0, 255] pixel scale", range="> 0")
_PGD_STEPS = Key(7, "PGD steps", range=">= 1")
_RANDOM_START = Key(True, "start PGD at a uniform random point of the eps-ball")
_LOSS = Key("xent", "loss the attack ascends: xent (cross-entropy) or cw (margin loss on logits)",
            choices=("xent", "cw"))

_EVAL = {
    "batch_size": Key(100, "evaluation batch size", range=">= 1", resumable=True),
    "bn_mode": Key("eval", "BatchNorm when evaluating: eval (running statistics) or train "
                           "(batch statistics, the original's evaluation mode)",
                   choices=("eval", "train"), resumable=True),
    "num_examples": Key(0, "first test examples evaluated (0 = the whole test set)", range=">= 0",
                        resumable=True),
}

# Speed options (igam.run.precision; docs/performance.md#precision-and-kernels); the defaults
# keep the faithful fp32 computation (original.md §1). Offered where only first-order
# gradients are taken: adversarial training, attacks, evaluation.
_PRECISION = {
    "autocast": Key("none", "bf16: model forward under bf16 autocast (PGD and training forwards, "
                            "attacks, evaluation); losses and PGD updates stay fp32",
                    choices=("none", "bf16")),
    "channels_last": Key(False, "NHWC memory layout for weights and inputs (same numbers)"),
    "compile": Key(False, "torch.compile the forward of attacks and evaluation (first-order "
                          "gradients only; on CPU needs a C++ compiler)"),
}


# Watching a run (igam.run.watch; docs/pipeline.md#watching-a-run): a periodic clean + PGD
# evaluation on a fixed subset, the best checkpoint by its robust accuracy, TensorBoard.
def _watch(every: int, why: str) -> dict[str, Key]:
    return {
        "every": Key(every, "steps between clean + PGD evaluations of a fixed subset "
                            f"(metrics.jsonl, checkpoint_best.pt); 0 = off; {why}", range=">= 0",
                     resumable=True),
        "num_examples": Key(1000, "examples of the fixed subset (the first ones of the "
                                  "validation / test split)", range=">= 1", resumable=True),
        "pgd_steps": Key(10, "PGD steps of the watched robust accuracy (eps 8, step 2, random "
                             "start from its own seeded generator)", range=">= 1",
                         resumable=True),
        "root": Key("", "validation split (python -m igam.data.holdout) whose test split is "
                        'watched; "" = data.root\'s test split: validation if data.root is such a '
                        "split, else the test set (watch_split test)",
                    resumable=True),
    }


_WATCH_PAPER = "5000: 64 points in 320k steps, at a few per cent of the training compute"
_TENSORBOARD = Key("auto", "TensorBoard event files in <model_dir>/tensorboard: auto (when the "
                           "tensorboard package is installed), on (required), off",
                   choices=("auto", "on", "off"), resumable=True)


def _canonical_data(cfg: dict) -> dict:
    """A training config with its class subset written one way (igam.data.subsets)."""
    return {**cfg, "data": canonical_class_subset(cfg["data"])}


# ----------------------------------------------------------------------------------------------
# The scripts

ADVTRAIN_SCHEMA = Schema({
    **_RUNTIME,
    **_run("models/advtrain_tinyimagenet", "the robust source model"),
    "data": _train_data("tinyimagenet", "datasets/tiny-imagenet-200",
                        "the source task trained on"),
    "model": dict(_WRN),
    "train": {"steps": _STEPS, "batch_size": replace(_BATCH, default=16),
              "lr_schedule": _LR_SCHEDULE, "momentum": _MOMENTUM,
              "weight_decay": _WEIGHT_DECAY, "augment": _AUGMENT,
              "steps_before_adv_training": Key(0, "natural (not adversarial) batches before "
                                                  "this step", range=">= 0")},
    # PGD crafting the training batches, against the model in train mode (original.md §5)
    "attack": {"eps": _EPS, "step_size": _STEP_SIZE, "steps": _PGD_STEPS,
               "random_start": _RANDOM_START, "loss": _LOSS},
    "eval": dict(_EVAL),
    "precision": dict(_PRECISION),  # PGD + training forward (autocast), attack/eval (compile)
    "watch": _watch(5000, _WATCH_PAPER),
    "tensorboard": _TENSORBOARD,
}, name="ADVTRAIN", commands=("train_advtrain_tinyimagenet.py",), configs="advtrain_*.yaml",
   canonical=_canonical_data)

FINETUNE_SCHEMA = Schema({
    **_RUNTIME,
    **_run("models/teacher_tinyimagenet_to_cifar10", "the finetuned teacher"),
    "source_model_dir": Key("models/advtrain_tinyimagenet", "run folder of the robust source "
                                                            "model (step 1, or a converted TF "
                                                            "checkpoint)"),
    "data": _train_data("cifar10", "datasets/cifar10", "the target task"),
    "teacher": {
        "model": Key("", 'the robust source model: "" = the run folder source_model_dir; '
                         + _TEACHER_MODEL_HELP),
        **_EXTERNAL_TEACHER,
        "upresize_to": Key(64, "resize the target images to this size with TF1 bilinear "
                               "(0: no resize; original.md §3)", range=">= 0"),
        "standardization": Key("l2", "input standardisation of the teacher (a port "
                                     "WideResNet source only); source keeps the source model's "
                                     "own (original.md §3)",
                               choices=_STD + ("source",)),
        "bn": _TEACHER_BN,
    },
    # Adam on the new head (original.md §6)
    "finetune": {
        "steps": Key(4700, "Adam steps", range=">= 1", resumable=True),
        "batch_size": replace(_BATCH, default=64),
        "lr": Key(0.001, "Adam learning rate", range="> 0"),
        "whole_model": Key(False, "also finetune the source network, not only the new head"),
        "weight_decay": replace(_WEIGHT_DECAY, help="whole_model only: + wd * sum(w^2)/2 of the "
                                                    "source's conv/FC weights"),
        "augment": _AUGMENT,
        "img_random_pert": _IMG_RANDOM_PERT,
        "eps": _PERT_EPS,
        "recalibrate_bn": Key(True, "re-estimate the BatchNorm running statistics on the target "
                                    "data afterwards (original.md §6)"),
        "save_input_gradients": _SAVE_GRADIENTS,
    },
    "eval": dict(_EVAL),
    "watch": _watch(0, "off: costly next to cheap head-only steps; e.g. 1000 of 4700"),
    "tensorboard": _TENSORBOARD,
}, name="FINETUNE", commands=("finetune_teacher.py",), configs="finetune_*.yaml",
   canonical=_canonical_data)

_DISC_HELP = {
    "num_conv_layers": ("4x4 stride-2 convs, channels base_channels * 2^i", ">= 1"),
    # >= 2: the last FC layer of the FC variant has base // 2 units
    "base_channels": ("channels of the first conv (units of the FC variant's layers)", ">= 2"),
    "only_fully_connected": ("num_fc_layers FC layers (base, ..., base, base // 2) instead of "
                             "the convs", None),
    "num_fc_layers": ("FC layers of the only_fully_connected variant", ">= 1"),
    "avg_pool": ("global average pool before the logit layer", None),
}

IGAM_SCHEMA = Schema({
    **_RUNTIME,
    **_run("models/igam_tinyimagenet_to_cifar10", "the student"),
    "teacher_dir": Key("models/teacher_tinyimagenet_to_cifar10",
                       "run folder of the finetuned teacher (step 2)"),
    "teacher_bn": _TEACHER_BN,
    # an external model used as the teacher as it is (its classes are the target task's)
    "teacher": {
        "model": Key("", '"" = the teacher in teacher_dir; or a model of the target classes, '
                         "not finetuned: " + _TEACHER_MODEL_HELP),
        **_EXTERNAL_TEACHER,
        "upresize_to": Key(0, "external teacher: resize the images to this size with TF1 "
                              "bilinear (0: no resize; original.md §3)", range=">= 0"),
    },
    "data": {**_train_data("cifar10", "datasets/cifar10", "the target task (the teacher's)"),
             "classes": replace(_CLASSES["classes"], help=_CLASSES["classes"].help
                                + "; the teacher's subset")},
    # the student, trained on natural images only: the WideResNet, or a factory's model
    "student": {
        "model": Key("", '"" = the port\'s WideResNet (widths, units_per_stage, '
                         "standardization); or package.module:function, e.g. "
                         "torchvision.models:resnet18 (num_classes set from the data); "
                         "docs/byo_teacher.md"),
        **_WRN,
        **_ADAPTER,
    },
    # input-gradient discriminator, student label 0, teacher label 1 (igam/models.py)
    "discriminator": {
        **{name: Key(default, _DISC_HELP[name][0], range=_DISC_HELP[name][1])
           for name, default in _DISC_DEFAULTS.items()},
        "standardization": Key("student", "standardisation of its input gradients: student (the "
                                          "student's, as the original tied both to one flag)",
                               choices=("student",) + _STD),
    },
    # the IGAM objective (original.md §4)
    "igam": {
        "beta": Key(_IGAM_DEFAULTS.beta, "weight of -D_xent in the student loss (adversarial "
                                         "matching)", range=">= 0"),
        "gamma": Key(_IGAM_DEFAULTS.gamma, "weight of the L2 term: batch sum of (g_s - g_t)^2 "
                                           "(per rank under torchrun)", range=">= 0"),
        "disc_update_steps": Key(_IGAM_DEFAULTS.disc_update_steps,
                                 "a discriminator step every k-th iteration", range=">= 1"),
        "steps_before_adv_opt": Key(_IGAM_DEFAULTS.steps_before_adv_opt,
                                    "plain classification steps before the IGAM terms start",
                                    range=">= 0"),
        "img_random_pert": replace(_IMG_RANDOM_PERT, default=_IGAM_DEFAULTS.img_random_pert,
                                   help=_IMG_RANDOM_PERT.help + " (both phases)"),
        "eps": replace(_PERT_EPS, default=_IGAM_DEFAULTS.eps),
        "same_optimizer": Key(_IGAM_DEFAULTS.same_optimizer, "discriminator: SGD on the student's "
                                                             "schedule (false: Adam 1e-3)"),
        "save_input_gradients": _SAVE_GRADIENTS,
    },
    "train": {"steps": _STEPS, "batch_size": _BATCH, "lr_schedule": _LR_SCHEDULE,
              "momentum": replace(_MOMENTUM, default=_IGAM_DEFAULTS.momentum),
              "weight_decay": replace(_WEIGHT_DECAY, default=_IGAM_DEFAULTS.weight_decay,
                                      help="weight decay on the conv/FC weights of the student "
                                           "and the discriminator (TF's DW variables)"),
              "augment": _AUGMENT},
    "eval": dict(_EVAL),
    "watch": _watch(5000, _WATCH_PAPER),
    "tensorboard": _TENSORBOARD,
}, name="IGAM", commands=("train_igam.py",), configs="igam_*.yaml",
   canonical=_canonical_data)

_NOT_AUTOATTACK = " (not read by autoattack)"
_AUTOATTACK_ONLY = " (autoattack only; docs/evaluation.md#autoattack)"
ATTACK_SCHEMA = Schema({
    **_RUNTIME,
    "seed": replace(_RUNTIME["seed"], help="seeds python, numpy and torch: PGD's random start, "
                                           "AutoAttack's seed"),
    "model_dir": Key("models/igam_tinyimagenet_to_cifar10",
                     "the model to attack (any port checkpoint)"),
    "data": dict(_CHECKPOINT_DATA),
    "attack": {
        "method": Key("pgd", "pgd (L-inf), fgsm, pgd_l2 (per-example L2) or autoattack",
                      choices=("pgd", "fgsm", "pgd_l2", "autoattack")),
        "eps": replace(_EPS, help="budget on the [0, 255] pixel scale (8 = 8/255; AutoAttack "
                                  "gets eps / 255)"),
        "step_size": replace(_STEP_SIZE, help=_STEP_SIZE.help + "; FGSM: equal to eps"
                             + _NOT_AUTOATTACK),
        "steps": replace(_PGD_STEPS, default=10, help="PGD steps; FGSM: 1" + _NOT_AUTOATTACK),
        "random_start": replace(_RANDOM_START, help=_RANDOM_START.help + "; FGSM: false"
                                + _NOT_AUTOATTACK),
        "loss": replace(_LOSS, help=_LOSS.help + _NOT_AUTOATTACK),
        "restarts": Key(1, "attack restarts; per example the worst case is kept" + _NOT_AUTOATTACK,
                        range=">= 1"),
        "early_stop": Key(True, "skip clean-misclassified examples, stop each at its first "
                                "fooling iterate: same or lower accuracy, faster; off with "
                                "eval.bn_mode train (pgd, fgsm, pgd_l2; "
                                "docs/evaluation.md#early-stopping-pgd)"),
        "version": Key("standard", "AutoAttack version: " + "; ".join(
            f"{v} ({', '.join(subs)})" for v, subs in VERSIONS.items()) + _AUTOATTACK_ONLY,
            choices=tuple(VERSIONS)),
        "attacks": Key([], "[] = all of the version's sub-attacks; else a subset, run in this "
                           "order with the version's settings, e.g. [apgd-ce, square]"
                           + _AUTOATTACK_ONLY, choices=SUB_ATTACKS),
        "norm": Key("Linf", "threat model of autoattack (the other methods' norm is fixed by "
                            "the method)", choices=NORMS),
        "n_iter": Key(0, "reduced-cost option: APGD/FAB iterations (0 = the version's); not "
                         "standard AutoAttack" + _AUTOATTACK_ONLY, range=">= 0"),
        "n_queries": Key(0, "reduced-cost option: Square queries (0 = the version's); not "
                            "standard AutoAttack" + _AUTOATTACK_ONLY, range=">= 0"),
    },
    "attack_name": Key("pgd", "file name: <attack_dir>/<model_name>-<hash>_<attack_name>_attack"
                              ".npy (<hash>: of the run folder's absolute path; "
                              "_c100attack.npy for CIFAR-100), its record beside it (.json)"),
    "attack_dir": Key("attacks", "folder of the adversarial-example files"),
    "attack_path": Key("", 'explicit file path; "" = from attack_dir and attack_name'),
    "transfer": Key(False, "run_attack.py: true evaluates examples made from another model as a "
                           "transfer (black-box) attack, recorded as such; false refuses them"),
    "eval": {**_EVAL, "bn_mode": replace(_EVAL["bn_mode"], help=_EVAL["bn_mode"].help
                                         + "; autoattack: eval only")},
    "precision": dict(_PRECISION),
}, name="ATTACK", commands=("pgd_attack.py", "run_attack.py"), configs="attack_*.yaml")
"""Shared by pgd_attack.py (writes the file) and run_attack.py (checks it against
``attack.eps`` / the method's norm and evaluates), as the original's config_attack.py."""

# Gradient-masking checks (python -m igam.eval.sanity; docs/evaluation.md#gradient-masking-checks)
SANITY_SCHEMA = Schema({
    **_RUNTIME,
    "seed": replace(_RUNTIME["seed"], help="seeds python, numpy and torch; every attack has its "
                                           "own generator seeded with it"),
    "model_dir": Key(["models/igam_tinyimagenet_to_cifar10"], "the models checked, one or more",
                     repeatable=True),
    "data": dict(_CHECKPOINT_DATA),
    "out": Key("", 'one JSON for all models; "" = <model_dir>/sanity.json for each model'),
    "curve": Key("", 'robustness-curve PNG; "" = <out stem>_curve.png, or '
                     "<first model_dir>/robustness_curve.png"),
    "sanity": {
        "num_examples": Key(500, "first test examples checked (0 = the whole test set)",
                            range=">= 0"),
        "batch_size": Key(100, "batch size of the checks", range=">= 1"),
        "eps": Key(8.0, "L-inf budget ([0, 255] scale) of the steps, Square and noise checks",
                   range="> 0"),
        "step_size": Key(2.0, "PGD step of the steps check", range="> 0"),
        "steps": Key([5, 20, 100], "PGD steps compared: accuracy must not rise with more steps",
                     range=">= 1"),
        "eps_sweep": Key([2.0, 4.0, 8.0, 16.0, 32.0, 64.0], "the robustness curve: accuracy must "
                                                            "not rise with eps", range="> 0"),
        "sweep_steps": Key(20, "PGD steps at each eps of the sweep", range=">= 1"),
        "sweep_step_fraction": Key(0.25, "PGD step = this fraction * eps in the sweep",
                                   range="> 0"),
        "square_queries": Key(1000, "black-box Square attack queries per example (0 = skip the "
                                    "check; AutoAttack uses 5000)", range=">= 0"),
        "square_p_init": Key(0.8, "Square's initial fraction of pixels changed per square",
                             range="[0, 1]"),
        "noise_draws": Key(10, "uniform noise U(-eps, eps) draws per example; the worst case is "
                               "kept", range=">= 1"),
        # absorbs random-start noise
        "tolerance": Key(0.01, "accuracy margin (fraction of the examples) of every comparison",
                         range=">= 0"),
        "zero_accuracy": Key(0.05, "at the largest eps of the sweep accuracy must be <= this",
                             range="[0, 1]"),
        "max_zero_gradient": Key(0.01, "fraction of examples allowed an all-zero input gradient",
                                 range="[0, 1]"),
    },
}, name="SANITY", commands=("python -m igam.eval.sanity",), configs="sanity.yaml")

# Input-gradient pictures and the alignment number (python -m igam.eval.visualize)
VISUALIZE_SCHEMA = Schema({
    **_RUNTIME,
    "seed": replace(_RUNTIME["seed"], help="seeds python, numpy and torch (nothing here is "
                                           "random)"),
    "teacher_dir": Key("models/teacher_tinyimagenet_to_cifar10",
                       "the reference model (a teacher: target head, upresize)"),
    "student_dir": Key(["models/igam_tinyimagenet_to_cifar10"],
                       "the students compared with it, one or more", repeatable=True),
    "data": dict(_CHECKPOINT_DATA),
    "out": Key("input_gradients.png", "the picture (PNG)"),
    "alignment_out": Key("", 'alignment JSON; "" = the picture\'s path with .json'),
    "picture": {
        "num_images": Key(8, "columns: the first test images", range=">= 1"),
        "scale": Key(3, "each image upscaled (nearest neighbour) by this factor", range=">= 1"),
        "clip_std": Key(3.0, "display: gradient / (clip_std * its std), clipped to [-1, 1] -> "
                             "[0, 1]", range="> 0"),
    },
    "alignment": {
        "num_examples": Key(0, "first test examples averaged over (0 = the whole test set)",
                            range=">= 0"),
        "batch_size": Key(100, "batch size", range=">= 1"),
    },
}, name="VISUALIZE", commands=("python -m igam.eval.visualize",), configs="visualize.yaml")

SCHEMAS = (ADVTRAIN_SCHEMA, FINETUNE_SCHEMA, IGAM_SCHEMA, ATTACK_SCHEMA, SANITY_SCHEMA,
           VISUALIZE_SCHEMA)

# ----------------------------------------------------------------------------------------------
# docs/config_keys.md

_ABOUT = {
    "ADVTRAIN": "Step 1: PGD adversarial training of the robust source model.",
    "FINETUNE": "Step 2: a new head for the target task on the frozen robust source model "
                "(the teacher).",
    "IGAM": "Step 3: IGAM, a student trained on the target task whose input gradients are "
            "matched to the teacher's.",
    "ATTACK": "Steps 4-5: write adversarial examples (pgd_attack.py) and evaluate a model on "
              "them (run_attack.py); one config serves both.",
    "SANITY": "Gradient-masking checks and the robustness curve "
              "([evaluation.md](evaluation.md#gradient-masking-checks)).",
    "VISUALIZE": "Input-gradient pictures and the alignment number "
                 "([evaluation.md](evaluation.md#input-gradient-pictures-and-alignment)).",
}

_HEADER = """\
# Config keys

<!-- Generated by `python -m igam.run.schemas > docs/config_keys.md`; do not edit by hand. -->

Every config key of every entry script and tool: its default, its allowed values and what it
does. Look a key up here; the YAML files in [`configs/`](../configs/) hold only what each step
and transfer pair sets differently from these defaults, and a script's `--help` prints the
same list for that script. How defaults, YAML files and the command line combine:
[configs.md](configs.md).

This page is generated from the key declarations in
[`igam/run/schemas.py`](../igam/run/schemas.py) by
`python -m igam.run.schemas > docs/config_keys.md`; `tests/run/test_schemas.py` fails when it
differs from what the code generates. Some defaults come from the method itself:
`igam.*` and `train.momentum` / `train.weight_decay` of `train_igam.py` from `IGAMSettings`
([`igam/objective.py`](../igam/objective.py)), `discriminator.*` (but its standardization)
from the signature of `InputGradientDiscriminator` ([`igam/models.py`](../igam/models.py)),
`train.lr_schedule` from `PAPER_LR_SCHEDULE` ([`igam/optim.py`](../igam/optim.py));
AutoAttack's versions, sub-attacks and norms from
[`igam/eval/autoattack.py`](../igam/eval/autoattack.py).

Values are written as in YAML; "original.md §N" is a section of [original.md](original.md).
Allowed values: `one of` lists the choices (`each one of`: of every element of a list); `>= 1`,
`> 0` and `[0, 1]` bound a number (every element, for a list key); a schedule is a list of
[step, value] pairs whose steps start at 0 and strictly increase, every value > 0; a repeatable
key accumulates its command-line occurrences (`--model_dir a --model_dir b`). Keys marked
"may change on resume" are the only ones a resumed run (`--resume`) may give another value
than its run folder's `config.yaml`: they cannot alter the steps already made (more steps,
log and checkpoint frequency, device, data folder, the final evaluation); any other change is
refused, naming each key with both values, and every resume is recorded in the run folder's
`config_history.jsonl`.
"""


def _value(value: Any) -> str:
    """A default as YAML writes it in a config file."""
    if value == "":
        return '""'
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if isinstance(value, list):
        if not value:
            return "list"
        return "list of pairs" if isinstance(value[0], list) else f"list of {_type(value[0])}s"
    return names.get(type(value), type(value).__name__)


def _cell(text: str) -> str:
    """Plain text in a Markdown table cell: escape |, < (an HTML tag otherwise) and an
    underscore that could start or end emphasis (one not inside a word)."""
    text = text.replace("|", "\\|").replace("<", "\\<")
    return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)


def _anchor(title: str) -> str:
    """The anchor GitHub gives a heading."""
    text = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def _title(schema: Schema) -> str:
    return ", ".join(schema.commands)


def config_keys_markdown() -> str:
    """The text of docs/config_keys.md: every key of every schema, generated."""
    lines = [_HEADER]
    lines += [f"- [{_title(s)}](#{_anchor(_title(s))})" for s in SCHEMAS]
    for schema in SCHEMAS:
        lines += ["", f"## {_title(schema)}", "", _ABOUT[schema.name], "",
                  f"Config files: [`configs/{schema.configs}`](../configs/); declared as "
                  f"`{schema.name}_SCHEMA`.", "",
                  "| key | default | type | allowed | help |", "|---|---|---|---|---|"]
        for key, declared in schema.flat.items():
            allowed = []
            if declared.choices is not None:
                each = "each one of " if isinstance(declared.default, list) else "one of "
                allowed.append(each + ", ".join(f"`{_value(c)}`" for c in declared.choices))
            if declared.range is not None:
                allowed.append(f"`{declared.range}`")
            if declared.length is not None:
                allowed.append(f"{declared.length} values")
            if declared.repeatable:
                allowed.append("repeatable")
            if declared.resumable and "resume" in schema.flat:
                allowed.append("may change on resume")
            lines.append(f"| `{key}` | `{_cell(_value(declared.default))}` | "
                         f"{_type(declared.default)} | {_cell('; '.join(allowed))} | "
                         f"{_cell(declared.help)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(config_keys_markdown())
