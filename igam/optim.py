"""Optimisers and learning-rate schedule of the original (original.md §2, §4, §6).

* Weight decay of the original is an L2 loss term ``wd * sum(w^2) / 2`` over the variables
  named ``DW`` - the conv kernels and FC weights only (no biases, no BatchNorm). Its gradient
  ``wd * w`` is exactly SGD's ``weight_decay=wd``, so :func:`sgd` puts those weights in a
  decayed parameter group and everything else in an undecayed one.
* ``tf.train.MomentumOptimizer`` (v = m v + g; w -= lr v) is ``torch.optim.SGD`` with
  ``dampening=0`` and ``nesterov=False``.
* ``tf.train.piecewise_constant``: values[k] while step <= boundaries[k]; at
  step == boundary the OLD value still holds (PyTorch's MultiStepLR switches one step earlier).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
import torch.nn as nn


def decay_parameters(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split trainable parameters into (conv/FC weights, everything else).

    The first list holds the ``weight`` of every ``nn.Conv2d`` and ``nn.Linear`` (TF ``DW``).
    """
    decay, other, seen = [], [], set()
    for m in module.modules():
        for name, p in m.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if name == "weight" and isinstance(m, (nn.Conv2d, nn.Linear)):
                decay.append(p)
            else:
                other.append(p)
    return decay, other


def sgd(module: nn.Module, lr: float, momentum: float = 0.9,
        weight_decay: float = 2e-4) -> torch.optim.SGD:
    """SGD with momentum and weight decay on conv/FC weights only (see module docstring)."""
    decay, other = decay_parameters(module)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": other, "weight_decay": 0.0}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=momentum)


def weight_decay_loss(module: nn.Module) -> torch.Tensor:
    """The original's ``sum(tf.nn.l2_loss(DW))`` = sum(w^2) / 2 over trainable conv/FC weights.

    Differentiable. SGD gets this term through ``weight_decay`` (:func:`sgd`); the teacher's
    whole-model Adam finetuning adds it to its loss (``igam.training.HeadFinetuner``).
    """
    decay, _ = decay_parameters(module)
    if not decay:
        return torch.zeros(())
    return sum(p.pow(2).sum() for p in decay) / 2


def adam(module: nn.Module, lr: float = 1e-3, weight_decay: float = 2e-4) -> torch.optim.Adam:
    """Adam minimising loss + ``weight_decay`` * :func:`weight_decay_loss`: ``torch.optim.Adam``'s
    ``weight_decay`` adds ``wd * w`` to the gradient (L2, not AdamW's decoupled decay), on
    conv/FC weights only, exactly the gradient of that term."""
    decay, other = decay_parameters(module)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": other, "weight_decay": 0.0}]
    return torch.optim.Adam([g for g in groups if g["params"]], lr=lr)


PAPER_LR_SCHEDULE = ((0.0, 0.1), (160000.0, 0.01), (240000.0, 0.001))
"""The paper's learning rate, ((step, lr), ...): 0.1, divided by 10 at 160k and 240k steps of
320k (adversarial training of the source model and IGAM alike)."""


class PiecewiseConstant:
    """``tf.train.piecewise_constant`` on the global step.

    Args:
        schedule: [[step_0, value_0], [step_1, value_1], ...] as in the original configs
            (``step_size_schedule``); step_0 is ignored (it is 0), the others are boundaries.

    ``schedule(step)`` = value_k for boundary_{k-1} < step <= boundary_k.
    """

    def __init__(self, schedule: Sequence[Sequence[float]]):
        if not schedule:
            raise ValueError("learning-rate schedule must have at least one [step, value] pair")
        self.boundaries = [int(s[0]) for s in schedule][1:]
        self.values = [float(s[1]) for s in schedule]
        if self.boundaries != sorted(self.boundaries):
            raise ValueError(f"schedule boundaries must increase, got {self.boundaries}")

    def __call__(self, step: int) -> float:
        return self.values[bisect.bisect_left(self.boundaries, int(step))]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr

