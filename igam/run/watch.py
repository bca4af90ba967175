"""Watching a run while it trains (docs/pipeline.md#watching-a-run).

Every ``watch.every`` steps the training loop (:func:`igam.run.engine.fit`) evaluates the
model's clean and PGD accuracy on a fixed subset (the first ``watch.num_examples`` examples of
the validation or test split), logs both to metrics.jsonl with the step and the learning rate,
and keeps ``checkpoint_best.pt``, the checkpoint of the highest robust accuracy seen so far,
beside the latest ``checkpoint.pt`` (which every later step of the pipeline keeps using).

Where the subset comes from (:func:`watch_split`): the test split of ``watch.root``, a
validation folder written by ``python -m igam.data.holdout``, or, with ``watch.root`` empty,
the test split of ``data.root`` - validation data if that folder is itself a holdout split
(its ``HOLDOUT.json``), else the test set. The run's records say which (``watch_split``:
``"validation"`` or ``"test"``): a checkpoint chosen on test images biases every number
later reported on them.

The evaluation does not change the training trajectory: eval mode (running BatchNorm
statistics), PGD's random start drawn from its own ``torch.Generator`` seeded afresh with the
run's seed at every evaluation (so evaluations are comparable across steps and a resumed run
repeats them exactly), and the global RNG states, every buffer and every module's train/eval
flag are restored afterwards.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from igam.attacks import PGD
from igam.data import eval_batches, load_dataset, select_classes
from igam.data.holdout import MARKER
from igam.errors import ConfigError
from igam.run.files import to_json_value
from igam.run.seeding import rng_state, set_rng_state
from igam.training import evaluate

BEST_NAME = "checkpoint_best.pt"
WATCH_EPS = 8.0  # the paper's L-inf budget and PGD step, [0, 255] scale
WATCH_STEP_SIZE = 2.0

__all__ = ["BEST_NAME", "Watcher", "learning_rate", "preserved_state", "watch_split"]


def learning_rate(trainer: Any) -> float | None:
    """The learning rate of the trainer's last step (its main optimiser's; None if unknown)."""
    for name in ("optimizer", "student_opt"):
        opt = getattr(trainer, name, None)
        if opt is not None and opt.param_groups:
            return float(opt.param_groups[0]["lr"])
    return None


def _holdout_source(root: Path) -> Path | None:
    """The training folder a holdout split at ``root`` was carved from (None: not one)."""
    marker = root / MARKER
    if not marker.is_file():
        return None
    try:
        return Path(json.loads(marker.read_text())["source"]).resolve()
    except (ValueError, KeyError, TypeError):
        return None


def watch_split(cfg: Mapping[str, Any]):
    """(dataset, split, folder) watched by a training config: the test split of ``watch.root``
    (or of ``data.root`` when empty) with the run's class subset; ``split`` is
    ``"validation"`` when that folder is a holdout split (``HOLDOUT.json``) not carved from
    the training folder itself, else ``"test"``. ConfigError if ``watch.root`` holds
    held-out images of ``data.root`` (they are training images of this run).
    ``cfg['data']['classes']`` must be resolved (:func:`igam.run.engine.load_train_test`)."""
    data, w = cfg["data"], cfg["watch"]
    root = Path(w["root"] or data["root"])
    source = _holdout_source(root)
    train_root = Path(data["root"]).resolve()
    if w["root"] and source is not None and train_root in (source, source.parent):
        raise ConfigError(f"watch.root {w['root']} holds images held out of data.root "
                          f"{data['root']}, which this run trains on; train on the split "
                          f"instead (--data.root {w['root']}) and leave watch.root empty")
    _, test = load_dataset(data["dataset"], root)
    test = select_classes(test, list(data["classes"]) or None)
    split = "validation" if source is not None else "test"
    n = int(w["num_examples"])
    if n < len(test):
        test = test.subset(range(n))
    return test, split, root


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore the global RNG states (python, numpy, torch, CUDA), every buffer of ``model``
    and every module's train/eval flag on leaving."""
    rng = rng_state()
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, training in modes:
            m.training = training
        set_rng_state(rng)


class Watcher:
    """The periodic evaluation of a run and its best checkpoint.

    Args:
        model: the model to evaluate (not a DDP wrapper); its own BatchNorm settings apply
            (a teacher with ``teacher.bn: batch`` uses batch statistics in eval mode too).
        dataset: the fixed subset (:func:`watch_split`).
        split: ``"validation"`` or ``"test"``, recorded with every result.
        every: steps between evaluations (0 = never).
        pgd_steps: PGD steps (eps 8, step 2, random start).
        batch_size: evaluation batch size.
        seed: seeds the attack's generator at every evaluation.
        checkpointer: the run's :class:`igam.run.engine.Checkpointer`; the best checkpoint is
            written with it (collective under torchrun) and the best result so far is kept in
            its ``info`` (``watch_best``), so it is saved in checkpoint.pt and a resumed run
            continues the comparison.
    """

    def __init__(self, model: nn.Module, dataset, split: str, every: int, pgd_steps: int,
                 batch_size: int, seed: int, checkpointer, device=None):
        self.model, self.dataset, self.split = model, dataset, split
        self.every, self.pgd_steps, self.batch_size = int(every), int(pgd_steps), int(batch_size)
        self.seed = int(seed)
        self.ckpt = checkpointer
        self.device = device if device is not None else next(model.parameters()).device
        self.best_path = Path(checkpointer.path).parent / BEST_NAME
        self.ckpt.info.setdefault("watch_best", {})

    @property
    def best(self) -> dict:
        return self.ckpt.info.get("watch_best") or {}

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def evaluate(self) -> dict[str, Any]:
        """Clean and PGD accuracy on the subset, leaving every state as it was."""
        with preserved_state(self.model):
            gen = torch.Generator(device=self.device).manual_seed(self.seed)
            attack = PGD(self.model, WATCH_EPS, WATCH_STEP_SIZE, self.pgd_steps,
                         random_start=True, bn_mode="eval", generator=gen)
            clean = evaluate(self.model, eval_batches(self.dataset, self.batch_size,
                                                      self.device), bn_mode="eval")
            robust = evaluate(self.model, eval_batches(self.dataset, self.batch_size,
                                                       self.device), attack=attack,
                              bn_mode="eval")
        return {"watch_clean_accuracy": clean["accuracy"],
                "watch_robust_accuracy": robust["accuracy"], "watch_n": clean["n"],
                "watch_pgd_steps": self.pgd_steps, "watch_split": self.split}

    def __call__(self, step: int) -> dict[str, Any]:
        """Evaluate at ``step``; write checkpoint_best.pt if the robust accuracy is the best
        so far (ties keep the earlier). Returns the result with ``watch_best`` (bool)."""
        res = self.evaluate()
        best = self.best
        improved = not best or res["watch_robust_accuracy"] > best["watch_robust_accuracy"]
        if improved:
            self.ckpt.info["watch_best"] = to_json_value({"step": int(step), **res})
            self.ckpt.save(step, path=self.best_path)
        return {**res, "watch_best": bool(improved)}
