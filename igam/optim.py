"""Optimisers and learning-rate schedule of the original (original.md §2, §4, §6).

* Weight decay of the original is an L2 loss term ``wd * sum(w^2) / 2`` over the variables
  named ``DW`` - the conv kernels and FC weights only (no biases, no BatchNorm). Its gradient
  ``wd * w`` is exactly SGD's ``weight_decay=wd``, so :func:`sgd` puts those weights in a
  decayed parameter group and everything else in an undecayed one.
* ``tf.train.MomentumOptimizer`` (v = m v + g; w -= lr v) is ``torch.optim.SGD`` with
  ``dampening=0`` and ``nesterov=False``.
* ``tf.train.piecewise_constant``: values[k] while step <= boundaries[k]; at
  step == boundary the OLD value still holds (PyTorch's MultiStepLR switches one step earlier).
* ``tf.train.AdamOptimizer`` (the discriminator's optimiser when ``same_optimizer`` is false,
  and the teacher's head finetuning) adds epsilon where ``torch.optim.Adam`` does not: see
  :class:`AdamTF1`, which the port uses wherever the original uses Adam.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

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

    Differentiable. SGD and the discriminator's Adam get this term through ``weight_decay``
    (:func:`sgd`, :func:`adam`); the teacher's whole-model Adam finetuning adds it to its loss
    (``igam.training.HeadFinetuner``).
    """
    decay, _ = decay_parameters(module)
    if not decay:
        return torch.zeros(())
    return sum(p.pow(2).sum() for p in decay) / 2


class AdamTF1(torch.optim.Optimizer):
    """Adam as ``tf.train.AdamOptimizer`` computes it (TF1's ``ApplyAdam`` kernel).

    At step t = 1, 2, ... of a parameter w with gradient g (plus ``weight_decay * w``, see
    below), with the moments of ``torch.optim.Adam``:

        m_t  = m + (1 - beta1) (g - m)            (= beta1 m + (1 - beta1) g)
        v_t  = v + (1 - beta2) (g^2 - v)          (= beta2 v + (1 - beta2) g^2)
        lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
        w   <- w - lr_t * m_t / (sqrt(v_t) + eps)

    Epsilon is added to the raw sqrt(v_t), outside the bias correction. ``torch.optim.Adam``
    divides by sqrt(v_t / (1 - beta2^t)) + eps instead, which is this rule with epsilon
    eps * sqrt(1 - beta2^t): at step 1 TF's effective epsilon is 1 / sqrt(1 - beta2) ~ 31.6
    times PyTorch's (3.2e-7 for eps 1e-8), falling to 1x as t grows. The two agree where
    |g| >> eps / sqrt(1 - beta2^t) and differ for small gradients: in a discriminator's first
    step, its conv biases (~1e-9: they sit ahead of batch-statistics BatchNorm) and weights
    whose gradient is mostly the weight-decay term (~1e-6) move 20-90% differently.

    ``weight_decay`` adds ``weight_decay * w`` to the gradient before the moments: the
    gradient of an L2 loss term ``weight_decay * sum(w^2) / 2`` (the original adds that term
    to its loss; not AdamW's decoupled decay). Defaults are TF1's (lr 1e-3, betas 0.9 /
    0.999, eps 1e-8).

    State per parameter, as ``torch.optim.Adam`` names it: ``step`` (a Python int, so that
    lr_t is a Python float: no host sync, any device), ``exp_avg`` (m) and ``exp_avg_sq`` (v),
    tensors like the parameter on its device. TF keeps one ``beta1_power`` / ``beta2_power``
    per optimiser; the per-parameter step equals it because every parameter the port hands
    an Adam gets a gradient at every step. TF evaluates beta^t and lr_t in float32 (a
    relative difference in lr_t of ~1e-5 at most; here they are Python floats).

    Every parameter group carries ``update_rule`` = :attr:`UPDATE_RULE`, so the rule is
    recorded in ``state_dict()`` and hence in run checkpoints. :meth:`load_state_dict`
    refuses (ValueError; ``igam.run.engine.Checkpointer`` turns it into a one-line
    CheckpointError naming the file) a state written by another optimiser - in particular
    by ``torch.optim.Adam``, which earlier versions of the port used here: its moments are
    the same, but continuing them under another rule would switch rules mid-run.
    """

    UPDATE_RULE = "igam.optim.AdamTF1"

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, "
                             f"{weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "update_rule": self.UPDATE_RULE}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        param_group["update_rule"] = self.UPDATE_RULE  # not a setting: what this class does
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient (see the class docstring)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamTF1 does not support sparse gradients")
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p,
                                                           memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - beta1)  # m + (1 - beta1) (g - m), TF's expression
                v.lerp_(g * g, 1 - beta2)
                lr_t = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-lr_t)
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state written by :class:`AdamTF1`; ValueError for any other optimiser's."""
        for group in state_dict.get("param_groups", []):
            rule = group.get("update_rule")
            if rule != self.UPDATE_RULE:
                raise ValueError(
                    f"the state of its Adam was written by {_written_by(group)}, but this version "
                    f"applies TensorFlow 1's Adam rule ({self.UPDATE_RULE}: epsilon added to "
                    "the raw sqrt(v)); refusing to switch update rules mid-run (start the run "
                    "afresh, e.g. with --overwrite, or finish it with the version that wrote "
                    "it)")
        super().load_state_dict(state_dict)


def _written_by(group: dict) -> str:
    """What wrote an optimiser's saved param group (for error messages)."""
    if group.get("update_rule") is not None:
        return repr(group["update_rule"])
    if "amsgrad" in group:
        return "torch.optim.Adam (epsilon added after the bias correction)"
    if "dampening" in group:
        return "torch.optim.SGD"
    return "an unknown optimiser"


def adam(module: nn.Module, lr: float = 1e-3, weight_decay: float = 2e-4) -> AdamTF1:
    """The original's ``tf.train.AdamOptimizer(lr)`` (:class:`AdamTF1`) minimising
    loss + ``weight_decay`` * :func:`weight_decay_loss`: the term enters as its gradient
    ``wd * w`` added to the gradient (L2, not AdamW's decoupled decay), on conv/FC weights
    only."""
    decay, other = decay_parameters(module)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": other, "weight_decay": 0.0}]
    return AdamTF1([g for g in groups if g["params"]], lr=lr)


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

