"""Config schemas (defaults, allowed keys and types) of the five entry scripts and of the
evaluation tools (``igam.sanity``, ``igam.visualize``).

Each schema is the source of truth for its script's keys: ``configs/*.yaml`` override the
defaults, command-line ``--dotted.key value`` overrides the files (``igam.config``). Defaults
are the paper's settings (SPEC 4-6, 9); the YAML files document every key.
"""

from __future__ import annotations

PAPER_LR = [[0.0, 0.1], [160000.0, 0.01], [240000.0, 0.001]]  # [step, lr]; floats: one element type

_RUNTIME = {
    "seed": 0,                # seeds python, numpy and torch
    "device": "auto",         # auto | cpu | cuda | cuda:N | mps
    "allow_tf32": False,      # SPEC 1: TF32 off by default (input gradients are fp32-sensitive)
}

_RUN = {
    "model_dir": "models/run",
    "resume": False,          # continue the run in model_dir from its checkpoint
    "overwrite": False,       # start afresh even if model_dir holds a run
    "log_every": 100,         # steps between log lines / metrics.jsonl records
    "checkpoint_every": 1000,  # steps between atomic checkpoints
}

_DATA = {"dataset": "cifar10", "root": "datasets/cifar10"}

_WRN = {"widths": [16, 160, 320, 640], "units_per_stage": 5,
        "standardization": "zero_mean_l2"}

_EVAL = {"batch_size": 100, "bn_mode": "eval", "num_examples": 0}

# Speed options (igam.precision); the defaults keep the faithful fp32 computation (SPEC 1).
# Offered where only first-order gradients are taken: adversarial training, attacks, eval.
_PRECISION = {"autocast": "none", "channels_last": False, "compile": False}
_PRECISION_CHOICES = {"precision.autocast": ["none", "bf16"]}

_STD = ["per_image", "zero_mean_l2", "l2"]
_DATASETS = ["cifar10", "cifar100", "tinyimagenet"]

ADVTRAIN = {
    **_RUNTIME, **_RUN,
    "model_dir": "models/advtrain_tinyimagenet",
    "data": {"dataset": "tinyimagenet", "root": "datasets/tiny-imagenet-200"},
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

FINETUNE = {
    **_RUNTIME, **_RUN,
    "model_dir": "models/teacher_tinyimagenet_to_cifar10",
    "source_model_dir": "models/advtrain_tinyimagenet",
    "data": dict(_DATA),
    "teacher": {"upresize_to": 64, "standardization": "l2", "bn": "batch"},
    "finetune": {"steps": 4700, "batch_size": 64, "lr": 0.001, "whole_model": False,
                 "augment": True, "img_random_pert": False, "eps": 8.0,
                 "recalibrate_bn": True, "save_input_gradients": False},
    "eval": dict(_EVAL),
}
FINETUNE_CHOICES = {"data.dataset": _DATASETS, "teacher.standardization": _STD + ["source"],
                    "teacher.bn": ["batch", "running"], "eval.bn_mode": ["eval", "train"]}

IGAM = {
    **_RUNTIME, **_RUN,
    "model_dir": "models/igam_tinyimagenet_to_cifar10",
    "teacher_dir": "models/teacher_tinyimagenet_to_cifar10",
    "teacher_bn": "batch",
    "data": dict(_DATA),
    "student": dict(_WRN),
    "discriminator": {"num_conv_layers": 4, "base_channels": 8, "only_fully_connected": False,
                      "num_fc_layers": 3, "avg_pool": False},
    "igam": {"beta": 5.0, "gamma": 10.0, "disc_update_steps": 5,
             "steps_before_adv_opt": 280000, "img_random_pert": False, "eps": 8.0,
             "same_optimizer": True},
    "train": {"steps": 320000, "batch_size": 32, "lr_schedule": PAPER_LR, "momentum": 0.9,
              "weight_decay": 0.0002, "augment": True},
    "eval": dict(_EVAL),
}
IGAM_CHOICES = {"data.dataset": _DATASETS, "student.standardization": _STD,
                "teacher_bn": ["batch", "running"], "eval.bn_mode": ["eval", "train"]}

ATTACK = {
    **_RUNTIME,
    "model_dir": "models/igam_tinyimagenet_to_cifar10",
    "data": {"dataset": "", "root": ""},  # empty: the data recorded in the checkpoint
    "attack": {"method": "pgd", "eps": 8.0, "step_size": 2.0, "steps": 10,
               "random_start": True, "loss": "xent", "restarts": 1},
    "attack_name": "pgd",
    "attack_dir": "attacks",
    "attack_path": "",
    "eval": dict(_EVAL),
    "precision": dict(_PRECISION),
}
"""Shared by pgd_attack.py (writes the file) and run_attack.py (checks it against
``attack.eps`` / the method's norm and evaluates), as the original's config_attack.py."""
ATTACK_CHOICES = {"data.dataset": [""] + _DATASETS, "attack.method": ["pgd", "fgsm", "pgd_l2"],
                  "attack.loss": ["xent", "cw"], "eval.bn_mode": ["eval", "train"],
                  **_PRECISION_CHOICES}

# Gradient-masking checks (python -m igam.sanity; README "Evaluating robustness"). Accuracies
# are compared with ``tolerance`` (a fraction of the examples) to absorb random-start noise.
SANITY = {
    **_RUNTIME,
    "model_dir": ["models/igam_tinyimagenet_to_cifar10"],  # one or more (repeat --model_dir)
    "data": {"dataset": "", "root": ""},  # empty: the data recorded in the checkpoints
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

# Input-gradient pictures and the alignment number (python -m igam.visualize).
VISUALIZE = {
    **_RUNTIME,
    "teacher_dir": "models/teacher_tinyimagenet_to_cifar10",
    "student_dir": ["models/igam_tinyimagenet_to_cifar10"],  # one or more (repeat --student_dir)
    "data": {"dataset": "", "root": ""},  # empty: the data recorded in the checkpoints
    "out": "input_gradients.png",   # the picture
    "alignment_out": "",            # alignment JSON; "" = the picture's path with .json
    "picture": {"num_images": 8, "scale": 3, "clip_std": 3.0},
    "alignment": {"num_examples": 0, "batch_size": 100},  # 0 = the whole test set
}
VISUALIZE_CHOICES = {"data.dataset": [""] + _DATASETS}
