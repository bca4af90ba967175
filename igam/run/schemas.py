"""Config schemas (defaults, allowed keys and types) of the five entry scripts and of the
evaluation tools (``igam.eval.sanity``, ``igam.eval.visualize``).

Each schema is the source of truth for its script's keys: ``configs/*.yaml`` override the
defaults, command-line ``--dotted.key value`` overrides the files (``igam.run.config``). Defaults
are the paper's settings (original.md §4-6, §9); the YAML files document every key. Beside
each schema, ``*_CHOICES`` lists the allowed values of its string keys and ``*_RANGES`` the
allowed range of every numeric key (``">= 1"``, ``"> 0"``, ``"[0, 1]"``, ``"schedule"``;
checked by ``igam.run.config``).
"""

from __future__ import annotations

import inspect

from igam.eval.autoattack import NORMS, SUB_ATTACKS, VERSIONS
from igam.models import InputGradientDiscriminator
from igam.objective import IGAMSettings
from igam.optim import PAPER_LR_SCHEDULE

PAPER_LR = [list(p) for p in PAPER_LR_SCHEDULE]  # [step, lr]; floats: one element type
_IGAM_DEFAULTS = IGAMSettings()  # the method's defaults of the igam section
_DISC_DEFAULTS = {name: param.default for name, param in
                  inspect.signature(InputGradientDiscriminator).parameters.items()
                  if name not in ("image_size", "standardization")}

_RUNTIME = {
    "seed": 0,                # seeds python, numpy and torch
    "device": "auto",         # auto | cpu | cuda | cuda:N | mps
    "allow_tf32": False,      # TF32 off: input gradients are fp32-sensitive (original.md §1)
}

_RUN = {
    "model_dir": "models/run",
    "resume": False,          # continue the run in model_dir from its checkpoint
    "overwrite": False,       # start afresh even if model_dir holds a run
    "log_every": 100,         # steps between log lines / metrics.jsonl records
    "checkpoint_every": 1000,  # steps between atomic checkpoints
}

# Class subset (igam.data.subsets): ``classes`` lists original class indices (relabelled
# 0..k-1 in that order), ``num_classes: k`` takes the first k; both empty = every class.
_CLASSES = {"classes": [], "num_classes": 0}
_DATA = {"dataset": "cifar10", "root": "datasets/cifar10", **_CLASSES}

_CLASSES_RANGES = {"data.num_classes": ">= 0"}  # 0: every class; data.classes: igam.data.subsets
_RUNTIME_RANGES = {"seed": ">= 0"}
_RUN_RANGES = {**_RUNTIME_RANGES, "log_every": ">= 1", "checkpoint_every": ">= 1"}

_WRN = {"widths": [16, 160, 320, 640], "units_per_stage": 5,
        "standardization": "zero_mean_l2"}

_EVAL = {"batch_size": 100, "bn_mode": "eval", "num_examples": 0}


def _in(section: str, ranges: dict) -> dict:
    """``{"steps": r}`` -> ``{"section.steps": r}``."""
    return {f"{section}.{key}": spec for key, spec in ranges.items()}


_WRN_RANGES = {"widths": ">= 1", "units_per_stage": ">= 1"}
_EVAL_RANGES = _in("eval", {"batch_size": ">= 1", "num_examples": ">= 0"})  # 0 = all
_SGD_RANGES = {"steps": ">= 1", "batch_size": ">= 1", "lr_schedule": "schedule",
               "momentum": "[0, 1]", "weight_decay": ">= 0"}
_ATTACK_RANGES = {"eps": "> 0", "step_size": "> 0", "steps": ">= 1"}

# Speed options (igam.run.precision); the defaults keep the faithful fp32 computation
# (original.md §1).
# Offered where only first-order gradients are taken: adversarial training, attacks, eval.
_PRECISION = {"autocast": "none", "channels_last": False, "compile": False}
_PRECISION_CHOICES = {"precision.autocast": ["none", "bf16"]}

_STD = ["per_image", "zero_mean_l2", "l2"]
_DATASETS = ["cifar10", "cifar100", "tinyimagenet"]

ADVTRAIN = {
    **_RUNTIME, **_RUN,
    "model_dir": "models/advtrain_tinyimagenet",
    "data": {"dataset": "tinyimagenet", "root": "datasets/tiny-imagenet-200", **_CLASSES},
    "model": dict(_WRN),
    "train": {"steps": 320000, "batch_size": 16, "lr_schedule": PAPER_LR, "momentum": 0.9,
              "weight_decay": 0.0002, "augment": True, "steps_before_adv_training": 0},
    "attack": {"eps": 8.0, "step_size": 2.0, "steps": 7, "random_start": True,
               "loss": "xent"},
    "eval": dict(_EVAL),
    "precision": dict(_PRECISION),  # PGD + training forward (autocast), attack/eval (compile)
}
ADVTRAIN_CHOICES = {"data.dataset": _DATASETS, "model.standardization": _STD,
                    "attack.loss": ["xent", "cw"], "eval.bn_mode": ["eval", "train"],
                    **_PRECISION_CHOICES}
ADVTRAIN_RANGES = {**_RUN_RANGES, **_CLASSES_RANGES, **_in("model", _WRN_RANGES), **_EVAL_RANGES,
                   **_in("train", {**_SGD_RANGES, "steps_before_adv_training": ">= 0"}),
                   **_in("attack", _ATTACK_RANGES)}

FINETUNE = {
    **_RUNTIME, **_RUN,
    "model_dir": "models/teacher_tinyimagenet_to_cifar10",
    "source_model_dir": "models/advtrain_tinyimagenet",
    "data": dict(_DATA),
    "teacher": {"upresize_to": 64, "standardization": "l2", "bn": "batch"},
    "finetune": {"steps": 4700, "batch_size": 64, "lr": 0.001, "whole_model": False,
                 "weight_decay": 0.0002, "augment": True, "img_random_pert": False, "eps": 8.0,
                 "recalibrate_bn": True, "save_input_gradients": False},
    "eval": dict(_EVAL),
}
FINETUNE_CHOICES = {"data.dataset": _DATASETS, "teacher.standardization": _STD + ["source"],
                    "teacher.bn": ["batch", "running"], "eval.bn_mode": ["eval", "train"]}
FINETUNE_RANGES = {**_RUN_RANGES, **_CLASSES_RANGES, **_EVAL_RANGES,
                   "teacher.upresize_to": ">= 0",  # 0: no resize
                   **_in("finetune", {"steps": ">= 1", "batch_size": ">= 1", "lr": "> 0",
                                      "weight_decay": ">= 0", "eps": ">= 0"})}

IGAM = {
    **_RUNTIME, **_RUN,
    "model_dir": "models/igam_tinyimagenet_to_cifar10",
    "teacher_dir": "models/teacher_tinyimagenet_to_cifar10",
    "teacher_bn": "batch",
    "data": dict(_DATA),
    "student": dict(_WRN),
    "discriminator": {**_DISC_DEFAULTS, "standardization": "student"},
    "igam": {**{k: getattr(_IGAM_DEFAULTS, k) for k in (
        "beta", "gamma", "disc_update_steps", "steps_before_adv_opt", "img_random_pert", "eps",
        "same_optimizer")}, "save_input_gradients": False},
    "train": {"steps": 320000, "batch_size": 32, "lr_schedule": PAPER_LR,
              "momentum": _IGAM_DEFAULTS.momentum, "weight_decay": _IGAM_DEFAULTS.weight_decay,
              "augment": True},
    "eval": dict(_EVAL),
}
IGAM_CHOICES = {"data.dataset": _DATASETS, "student.standardization": _STD,
                "discriminator.standardization": ["student"] + _STD,
                "teacher_bn": ["batch", "running"], "eval.bn_mode": ["eval", "train"]}
IGAM_RANGES = {**_RUN_RANGES, **_CLASSES_RANGES, **_in("student", _WRN_RANGES), **_EVAL_RANGES,
               # base_channels >= 2: the last FC layer of the FC variant has base // 2 units
               **_in("discriminator", {"num_conv_layers": ">= 1", "base_channels": ">= 2",
                                       "num_fc_layers": ">= 1"}),
               **_in("igam", {"beta": ">= 0", "gamma": ">= 0", "disc_update_steps": ">= 1",
                              "steps_before_adv_opt": ">= 0", "eps": ">= 0"}),
               **_in("train", _SGD_RANGES)}

ATTACK = {
    **_RUNTIME,
    "model_dir": "models/igam_tinyimagenet_to_cifar10",
    "data": {"dataset": "", "root": "", **_CLASSES},  # empty: the data recorded in the checkpoint
    "attack": {"method": "pgd", "eps": 8.0, "step_size": 2.0, "steps": 10,
               "random_start": True, "loss": "xent", "restarts": 1,
               "early_stop": True,   # pgd / fgsm / pgd_l2 (README "Early-stopping PGD")
               # autoattack only (README "AutoAttack"):
               "version": "standard", "attacks": [], "norm": "Linf", "n_iter": 0,
               "n_queries": 0},
    "attack_name": "pgd",
    "attack_dir": "attacks",
    "attack_path": "",
    "transfer": False,        # run_attack.py: evaluate examples made from another model (black-box)
    "eval": dict(_EVAL),
    "precision": dict(_PRECISION),
}
"""Shared by pgd_attack.py (writes the file) and run_attack.py (checks it against
``attack.eps`` / the method's norm and evaluates), as the original's config_attack.py."""
ATTACK_CHOICES = {"data.dataset": [""] + _DATASETS,
                  "attack.method": ["pgd", "fgsm", "pgd_l2", "autoattack"],
                  "attack.loss": ["xent", "cw"], "eval.bn_mode": ["eval", "train"],
                  "attack.version": list(VERSIONS), "attack.attacks": list(SUB_ATTACKS),
                  "attack.norm": list(NORMS),
                  **_PRECISION_CHOICES}
ATTACK_RANGES = {**_RUNTIME_RANGES, **_CLASSES_RANGES, **_EVAL_RANGES,
                 **_in("attack", {**_ATTACK_RANGES, "restarts": ">= 1",
                                  "n_iter": ">= 0", "n_queries": ">= 0"})}  # 0: standard

# Gradient-masking checks (python -m igam.eval.sanity; README "Evaluating robustness"). Accuracies
# are compared with ``tolerance`` (a fraction of the examples) to absorb random-start noise.
SANITY = {
    **_RUNTIME,
    "model_dir": ["models/igam_tinyimagenet_to_cifar10"],  # one or more (repeat --model_dir)
    "data": {"dataset": "", "root": "", **_CLASSES},  # empty: the data in the checkpoints
    "out": "",                # JSON of all models; "" = <model_dir>/sanity.json per model
    "curve": "",              # robustness-curve PNG; "" = beside the JSON
    "sanity": {
        "num_examples": 500,          # first test examples checked (0 = all)
        "batch_size": 100,
        "eps": 8.0,                   # L-inf budget of the steps, Square and noise checks
        "step_size": 2.0,             # PGD step of the steps check
        "steps": [5, 20, 100],        # PGD steps compared (accuracy must not rise)
        "eps_sweep": [2.0, 4.0, 8.0, 16.0, 32.0, 64.0],  # the robustness curve
        "sweep_steps": 20,            # PGD steps at each eps of the sweep
        "sweep_step_fraction": 0.25,  # PGD step = fraction * eps in the sweep (2 at eps 8)
        "square_queries": 1000,       # Square attack queries per example (0 = skip the check)
        "square_p_init": 0.8,         # Square's initial fraction of pixels per square
        "noise_draws": 10,            # uniform-noise draws per example (worst case kept)
        "tolerance": 0.01,
        "zero_accuracy": 0.05,        # largest eps of the sweep: accuracy must be <= this
        "max_zero_gradient": 0.01,    # fraction of examples allowed an all-zero input gradient
    },
}
SANITY_CHOICES = {"data.dataset": [""] + _DATASETS}
SANITY_RANGES = {**_RUNTIME_RANGES, **_CLASSES_RANGES, **_in("sanity", {
    "num_examples": ">= 0", "batch_size": ">= 1", "eps": "> 0", "step_size": "> 0",
    "steps": ">= 1", "eps_sweep": "> 0", "sweep_steps": ">= 1", "sweep_step_fraction": "> 0",
    "square_queries": ">= 0", "square_p_init": "[0, 1]", "noise_draws": ">= 1",
    "tolerance": ">= 0", "zero_accuracy": "[0, 1]", "max_zero_gradient": "[0, 1]"})}

# Input-gradient pictures and the alignment number (python -m igam.eval.visualize).
VISUALIZE = {
    **_RUNTIME,
    "teacher_dir": "models/teacher_tinyimagenet_to_cifar10",
    "student_dir": ["models/igam_tinyimagenet_to_cifar10"],  # one or more (repeat --student_dir)
    "data": {"dataset": "", "root": "", **_CLASSES},  # empty: the data in the checkpoints
    "out": "input_gradients.png",   # the picture
    "alignment_out": "",            # alignment JSON; "" = the picture's path with .json
    "picture": {"num_images": 8, "scale": 3, "clip_std": 3.0},
    "alignment": {"num_examples": 0, "batch_size": 100},  # 0 = the whole test set
}
VISUALIZE_CHOICES = {"data.dataset": [""] + _DATASETS}
VISUALIZE_RANGES = {**_RUNTIME_RANGES, **_CLASSES_RANGES,
                    **_in("picture", {"num_images": ">= 1", "scale": ">= 1", "clip_std": "> 0"}),
                    **_in("alignment", {"num_examples": ">= 0", "batch_size": ">= 1"})}
