"""The IGAM objective and one IGAM training iteration (original.md §4; original ``train_igam.py``).

Student loss (minimised by the student):

    L_S = CE(student(x), y) + wd-term - beta * D_xent + gamma * sum_{i, pixels} (g_s - g_t)^2

Discriminator loss (minimised by the discriminator): L_D = D_xent + its wd-term, where

* g_s = d sum softmax(student(x))[y] / dx, with ``create_graph=True`` so second-order terms
  flow into the student; g_t the same for the teacher's target head, a constant;
* D_xent = mean cross-entropy of the discriminator over the 2B rows concat([g_s, g_t])
  with labels 0 (student) and 1 (teacher);
* the L2 term is a batch SUM (the original's ``reduce_mean(reduce_sum(..., keepdims=True))``
  is a mean over a single element).

The weight-decay terms are applied by the optimisers (``igam.optim.sgd`` / ``igam.optim.adam``),
not added here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from igam.gradients import input_gradient, input_gradient_from_logits
from igam.ops import unwrap
from igam.optim import PAPER_LR_SCHEDULE, PiecewiseConstant, adam, set_lr, sgd


def random_pert(x: torch.Tensor, eps: float, generator: torch.Generator | None = None):
    """``img_random_pert``: x + U(-eps, eps), clipped to [0, 255]. x (B, 3, H, W)."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + (2 * noise - 1) * eps).clamp(0, 255)


def discriminator_xent(discriminator: nn.Module, g_student: torch.Tensor,
                       g_teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """D_xent (mean CE over the 2B rows) and the discriminator's accuracy (a tensor)."""
    logits = discriminator(g_student, g_teacher)
    b = g_student.shape[0]
    labels = torch.cat([torch.zeros(b, dtype=torch.long, device=logits.device),
                        torch.ones(b, dtype=torch.long, device=logits.device)])
    xent = F.cross_entropy(logits, labels)
    acc = (logits.argmax(1) == labels).float().mean()
    return xent, acc


def student_loss(student: nn.Module, discriminator: nn.Module, x: torch.Tensor,
                 y: torch.Tensor, g_teacher: torch.Tensor, beta: float,
                 gamma: float) -> dict[str, torch.Tensor]:
    """The student's IGAM loss (without weight decay) and its parts.

    Args:
        student: classifier in the mode the caller chose (train: batch statistics).
        discriminator: input-gradient discriminator.
        x: (B, 3, H, W) images in [0, 255]; y: (B,) labels.
        g_teacher: (B, 3, H, W) teacher input gradient (constant).
    Returns:
        dict with ``loss`` (differentiable w.r.t. student AND discriminator parameters; step
        only the student with it), ``xent``, ``disc_xent``, ``l2``, ``accuracy``,
        ``disc_accuracy`` and ``g_student``.
    """
    x = x.detach().requires_grad_(True)
    logits = student(x)
    xent = F.cross_entropy(logits, y)
    g_s = input_gradient_from_logits(logits, x, y, create_graph=True)
    disc_xent, disc_acc = discriminator_xent(discriminator, g_s, g_teacher)
    l2 = (g_s - g_teacher).pow(2).sum()
    loss = xent - beta * disc_xent + gamma * l2
    acc = (logits.argmax(1) == y).float().mean()
    return {"loss": loss, "xent": xent, "disc_xent": disc_xent, "l2": l2, "accuracy": acc,
            "disc_accuracy": disc_acc, "g_student": g_s}


@dataclass
class IGAMSettings:
    """Hyper-parameters of an IGAM run (names of the original's config_igam.py), with the
    paper's Tiny-ImageNet -> CIFAR-10 values as defaults; train_igam.py's config takes its
    ``igam`` defaults from here (``igam.run.schemas``), and :meth:`from_config` takes the
    values of a resolved config's ``igam`` and ``train`` sections by name."""

    beta: float = 5.0
    gamma: float = 10.0
    weight_decay: float = 2e-4
    momentum: float = 0.9
    lr_schedule: tuple = PAPER_LR_SCHEDULE
    disc_update_steps: int = 5
    steps_before_adv_opt: int = 280000
    img_random_pert: bool = False
    eps: float = 8.0
    same_optimizer: bool = True
    disc_adam_lr: float = 1e-3  # the original's AdamOptimizer(0.001), not a flag (AdamTF1)

    @classmethod
    def from_config(cls, cfg) -> IGAMSettings:
        """The settings of train_igam.py's resolved config ``cfg``."""
        names = {f.name for f in fields(cls)}
        sections = {**cfg["train"], **cfg["igam"]}
        return cls(**{k: v for k, v in sections.items() if k in names})


class IGAMTrainer:
    """One IGAM training iteration at a time, in the original's order (original.md §4).

    Iteration ii (``self.iteration``):
      1. the caller draws an augmented batch (x, y); if ``img_random_pert``, add
         U(-eps, eps) and clip (student and teacher see the same x);
      2. ii < steps_before_adv_opt: classification step (CE + wd) only; global_step += 1;
      3. otherwise: student step on the full IGAM loss; global_step += 1; then, if
         ii % disc_update_steps == 0, a discriminator step on the same batch with g_s
         RECOMPUTED from the updated student (the teacher gradient is reused: the frozen
         teacher gives the same g_t for the same x).
    One SGD optimiser (one momentum buffer) serves both student losses. The discriminator's
    optimiser is SGD on the same schedule (``same_optimizer``) - read at the incremented
    global step, as the original's shared ``learning_rate`` tensor - or the original's
    ``tf.train.AdamOptimizer(1e-3)`` (``igam.optim.adam``: :class:`igam.optim.AdamTF1`, TF1's
    epsilon placement); either minimises D_xent + weight_decay * the discriminator's conv/FC
    weight term.

    Data parallel (``igam.run.distributed``): g_s is taken with ``torch.autograd.grad`` w.r.t. x
    only, which fires no DDP hook; the student's ``backward(inputs=student params)`` fires the
    student wrapper's all-reduce only, the discriminator's ordinary ``backward`` its own. The
    update equals the average over ranks of each rank's gradient (tests/run/test_distributed.py).
    The L2 term is a per-rank batch sum, so ranks average per-rank sums.

    Args:
        student, teacher, discriminator: modules (the student and discriminator may be
            DistributedDataParallel wrappers; the teacher is frozen and in its own BN mode).
        settings: :class:`IGAMSettings`.
        generator: torch.Generator (on the data's device) for ``img_random_pert``.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, discriminator: nn.Module,
                 settings: IGAMSettings, generator: torch.Generator | None = None):
        self.student, self.teacher, self.discriminator = student, teacher, discriminator
        self.s = settings
        self.schedule = PiecewiseConstant(settings.lr_schedule)
        self.student_opt = sgd(student, self.schedule(0), settings.momentum,
                               settings.weight_decay)
        if settings.same_optimizer:
            self.disc_opt = sgd(discriminator, self.schedule(0), settings.momentum,
                                settings.weight_decay)
        else:
            self.disc_opt = adam(discriminator, settings.disc_adam_lr, settings.weight_decay)
        self.generator = generator
        self.iteration = 0
        self.global_step = 0
        self._student_params = [p for p in student.parameters() if p.requires_grad]

    def teacher_gradient(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """g_t (B, 3, H, W): the teacher's target-head input gradient (constant)."""
        return input_gradient(self.teacher, x, y, create_graph=False)

    def _student_step(self, loss: torch.Tensor) -> None:
        set_lr(self.student_opt, self.schedule(self.global_step))
        self.student_opt.zero_grad(set_to_none=True)
        loss.backward(inputs=self._student_params)
        self.student_opt.step()
        self.global_step += 1

    def discriminator_step(self, x: torch.Tensor, y: torch.Tensor,
                           g_teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        """One discriminator step; g_s is computed from the current student (train mode).

        That forward and its gradient w.r.t. x only run through the bare student (not its
        DDP wrapper): nothing of the student is to be synchronised there.
        """
        g_s = input_gradient(unwrap(self.student), x, y, create_graph=False)
        disc_xent, disc_acc = discriminator_xent(self.discriminator, g_s, g_teacher)
        if self.s.same_optimizer:
            set_lr(self.disc_opt, self.schedule(self.global_step))
        self.disc_opt.zero_grad(set_to_none=True)
        disc_xent.backward()
        self.disc_opt.step()
        return {"d_step_disc_xent": disc_xent.detach(), "d_step_disc_accuracy": disc_acc}

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run iteration ``self.iteration`` on the batch x (B, 3, H, W) in [0, 255], y (B,).

        Returns detached scalar tensors (no host sync): accuracy, xent, and in the IGAM
        phase disc_xent, l2, disc_accuracy, loss.
        """
        self.student.train()
        self.discriminator.train()
        if self.s.img_random_pert:
            x = random_pert(x, self.s.eps, self.generator)
        ii = self.iteration
        if ii < self.s.steps_before_adv_opt:
            logits = self.student(x)
            xent = F.cross_entropy(logits, y)
            self._student_step(xent)
            out = {"xent": xent.detach(), "accuracy": (logits.argmax(1) == y).float().mean()}
        else:
            g_t = self.teacher_gradient(x, y)
            parts = student_loss(self.student, self.discriminator, x, y, g_t,
                                 self.s.beta, self.s.gamma)
            self._student_step(parts["loss"])
            out = {k: v.detach() for k, v in parts.items() if k != "g_student"}
            if ii % self.s.disc_update_steps == 0:
                out.update(self.discriminator_step(x, y, g_t))
        self.iteration += 1
        return out

    def state_dict(self) -> dict:
        state = {"iteration": self.iteration, "global_step": self.global_step,
                 "student_opt": self.student_opt.state_dict(),
                 "disc_opt": self.disc_opt.state_dict()}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self.global_step = int(state["global_step"])
        self.student_opt.load_state_dict(state["student_opt"])
        self.disc_opt.load_state_dict(state["disc_opt"])
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])
