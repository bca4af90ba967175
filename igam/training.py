"""Training steps shared by the entry scripts, besides IGAM itself (``igam.objective``).

* :class:`ClassifierTrainer` - plain or PGD adversarial training of a classifier (original.md §5).
* :class:`HeadFinetuner` - fit the teacher's new target head with TF1's Adam (original.md §6).
* :func:`evaluate` - accuracy on every example once (clean or under an attack).
* :func:`recalibrate_bn` - re-estimate BatchNorm running statistics on target data (original.md §6).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from igam.ops import frozen_bn_stats, model_mode, set_bn_stats
from igam.optim import AdamTF1, PiecewiseConstant, set_lr, sgd, weight_decay_loss


class ClassifierTrainer:
    """SGD training of a classifier, optionally on PGD adversarial examples (Madry et al.).

    Each step: if ``attack`` is given and ``step >= steps_before_adv_training``, replace the
    batch by the attack's adversarial examples, crafted against the current model in train
    mode (as the original); then one SGD step on CE (+ weight decay on conv/FC weights) with
    the piecewise-constant learning rate of the global step. The natural accuracy it logs
    comes from a batch-statistics forward that updates no buffer, so BatchNorm running averages
    are updated exactly as in the original: once per PGD iteration and once by the training
    forward (``attack.steps + 1`` times per step).

    Data parallel / precision: ``model`` may be a DistributedDataParallel and/or
    ``igam.run.precision`` wrapper (the step's forward then runs e.g. under bf16 autocast, the loss
    and backward stay fp32); give the attack the model without the DDP wrapper, since its
    gradients w.r.t. the input are not to be synchronised.

    Args:
        model: classifier, (B, 3, H, W) in [0, 255] -> logits.
        lr_schedule: [[0, lr0], [boundary1, lr1], ...].
        momentum, weight_decay: SGD settings (original: 0.9, 2e-4).
        attack: an ``igam.attacks.Attack`` (e.g. PGD eps 8, step 2, 7 steps) or None.
        steps_before_adv_training: natural batches before this step.
    """

    def __init__(self, model: nn.Module, lr_schedule, momentum: float = 0.9,
                 weight_decay: float = 2e-4, attack=None, steps_before_adv_training: int = 0):
        self.model = model
        self.schedule = PiecewiseConstant(lr_schedule)
        self.optimizer = sgd(model, self.schedule(0), momentum, weight_decay)
        self.attack = attack
        self.steps_before_adv_training = steps_before_adv_training
        self.global_step = 0

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training step on x (B, 3, H, W) in [0, 255], y (B,). Returns detached scalars."""
        self.model.train()
        out = {}
        if self.attack is not None and self.global_step >= self.steps_before_adv_training:
            with torch.no_grad(), frozen_bn_stats(self.model):
                out["nat_accuracy"] = (self.model(x).argmax(1) == y).float().mean()
            x = self.attack(x, y)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        set_lr(self.optimizer, self.schedule(self.global_step))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.global_step += 1
        out.update(xent=loss.detach(), accuracy=(logits.argmax(1) == y).float().mean())
        return out

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        self.optimizer.load_state_dict(state["optimizer"])


class HeadFinetuner:
    """Fit the teacher's new target head (or the whole teacher) with Adam (original.md §6).

    Optimiser, in both modes: :class:`igam.optim.AdamTF1` (lr ``lr``, betas 0.9 / 0.999,
    eps 1e-8), the original's ``tf.train.AdamOptimizer`` with TF1's epsilon placement.
    Loss, as the original's: CE of the target head + ``weight_decay`` * the source network's
    weight-decay term ``sum(w^2) / 2`` over its conv/FC weights (the source head's included,
    the new head's not: the original built that term before the new head existed). With the
    source frozen the term has no gradient, so only ``whole_model`` training computes it; the
    new head is never decayed. Adam sees the term as part of the loss (its gradient
    ``wd * w`` is rescaled by Adam like any other), so the source head's weight, which the
    target logits do not use, is still decayed; its bias gets no gradient and is frozen.
    The teacher's BatchNorm runs as its ``bn`` setting says ('batch' in the original).
    ``wrap`` (e.g. ``igam.run.distributed.wrap``) is applied to the teacher after freezing, so
    that DistributedDataParallel synchronises only the trained parameters.
    """

    def __init__(self, teacher: nn.Module, lr: float = 1e-3, whole_model: bool = False,
                 weight_decay: float = 2e-4, wrap=None):
        if whole_model and teacher.source.fc.bias is not None:
            teacher.source.fc.bias.requires_grad_(False)
        else:
            teacher.freeze_source()
        self.source = teacher.source
        self.weight_decay = weight_decay if whole_model else 0.0
        params = [p for p in teacher.parameters() if p.requires_grad]
        self.teacher = wrap(teacher) if wrap is not None else teacher
        self.optimizer = AdamTF1(params, lr=lr)
        self.global_step = 0

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        self.teacher.train()
        logits = self.teacher(x)
        xent = F.cross_entropy(logits, y)
        loss = xent
        if self.weight_decay:
            loss = loss + self.weight_decay * weight_decay_loss(self.source)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.global_step += 1
        return {"xent": xent.detach(), "accuracy": (logits.argmax(1) == y).float().mean()}

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        self.optimizer.load_state_dict(state["optimizer"])


def evaluate(model: nn.Module, batches: Iterable, attack=None, bn_mode: str = "eval",
             progress=None) -> dict:
    """Accuracy over every example of ``batches`` (an iterable of (x, y) on the device).

    Args:
        model: classifier (B, 3, H, W) in [0, 255] -> logits.
        batches: e.g. ``igam.data.eval_batches(dataset, 100, device)`` (partial last batch
            included, original.md §7 [fix]).
        attack: optional attack applied to each batch before classification.
        bn_mode: 'eval' (running statistics, the port's default) or 'train' (the original's
            batch statistics; the model's running statistics are then restored afterwards).
        progress: optional callable wrapping the iterable (e.g. tqdm).
    Returns:
        {"accuracy": float in [0, 1], "correct": int, "n": int, "predictions": LongTensor (N,)}
    """
    preds, correct, n = [], 0, 0
    with model_mode(model, bn_mode, restore_buffers=bn_mode == "train"):
        for x, y in (progress(batches) if progress else batches):
            if attack is not None:
                x = attack(x, y)
            with torch.no_grad():
                p = model(x).argmax(1)
            preds.append(p)
            correct += (p == y).sum()
            n += y.numel()
    correct = int(correct)
    return {"accuracy": correct / max(n, 1), "correct": correct, "n": n,
            "predictions": torch.cat(preds).cpu() if preds else torch.zeros(0, dtype=torch.long)}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, progress=None) -> int:
    """Re-estimate every BatchNorm's running statistics as a cumulative average over batches.

    Used after finetuning a teacher with batch-statistics BN (original.md §6 [option]): its saved
    running statistics come from the source task, so eval-mode use would feed the new head
    features it never saw. The statistics are estimated in train mode with every ``stats``
    switch cleared; afterwards the switches are restored and the model is left in eval mode.
    Returns the number of batches used.

    Data parallel: give each rank its own share of the batches (``igam.run.engine.shard_batches``);
    the per-rank averages are then combined, weighted by their batch counts (collective), so
    every rank ends with the average over all batches. Returns the total count.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = {m: m.momentum for m in bns}
    count = 0
    with model_mode(model, "train", restore_buffers=False):  # switches restored afterwards
        set_bn_stats(model, None)
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        try:
            for x, _ in (progress(batches) if progress else batches):
                model(x)
                count += 1
        finally:
            for m in bns:
                m.momentum = momenta[m]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = bns[0].running_mean.device if bns else torch.device("cpu")
        total_t = torch.tensor([float(count)], dtype=torch.float64, device=device)
        dist.all_reduce(total_t)
        total = int(total_t.item())
        for m in bns:
            for buf in (m.running_mean, m.running_var):
                buf.mul_(count / max(total, 1))
                dist.all_reduce(buf)
            m.num_batches_tracked.fill_(total)
        count = total
    model.eval()
    return count
