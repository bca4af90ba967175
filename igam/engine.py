"""What every entry script does around its training step: set up the run, load models from
checkpoints, loop with progress / logging / atomic checkpoints / exact resume, and evaluate.

The skeleton follows pytorch/examples' imagenet ``main.py`` (train / validate /
save_checkpoint); the step itself lives in ``igam.training`` / ``igam.objective``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from igam.checkpoint import (
    check_format,
    checkpoint_path,
    load_checkpoint,
    load_model_state,
    make_checkpoint,
    save_checkpoint,
)
from igam.data import eval_batches
from igam.errors import CheckpointError, ConfigError
from igam.models import Teacher, build_model
from igam.runtime import (
    MetricsLogger,
    resolve_device,
    rng_state,
    seed_everything,
    set_fidelity,
    set_rng_state,
)
from igam.training import evaluate


def setup(cfg: Mapping[str, Any]) -> torch.device:
    """Seed python/numpy/torch with ``cfg['seed']``, set the TF32 policy, pick the device."""
    seed_everything(int(cfg["seed"]))
    set_fidelity(bool(cfg.get("allow_tf32", False)))
    return resolve_device(cfg["device"])


def load_model(path: str | Path, device: torch.device | str = "cpu",
               kinds: tuple[str, ...] | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model stored in a port checkpoint (a run folder or a ``.pt`` file).

    The architecture comes from the checkpoint's ``arch``, so no other flags are needed.
    Returns (module on ``device``, checkpoint dict). Raises CheckpointError (one line) for a
    missing, corrupt, foreign or mismatching checkpoint, or one of the wrong ``kinds``.
    """
    file = checkpoint_path(path)
    ckpt = check_format(load_checkpoint(file), file, kinds)
    model = build_model(ckpt["arch"])
    load_model_state(model, ckpt["model"], file)
    return model.to(device), ckpt


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A model for attacks and evaluation: classifier, teacher or IGAM student.

    Teachers are switched to follow train/eval for their BatchNorm (``bn_mode`` of the
    evaluation then decides between running and batch statistics, SPEC 8).
    """
    model, ckpt = load_model(path, device, ("classifier", "teacher", "igam"))
    if isinstance(model, Teacher):
        model.set_bn(None)
    return model, ckpt


def check_classes(model: nn.Module, dataset, path) -> None:
    """ConfigError unless the model's logits match the dataset's classes."""
    k = getattr(unwrap(model), "num_classes", None)
    if k is not None and k != dataset.num_classes:
        raise ConfigError(f"model in {path} predicts {k} classes but {dataset.name} has "
                          f"{dataset.num_classes}: wrong --data.dataset for this model?")


def load_teacher(path: str | Path, device, bn: str) -> Teacher:
    """The frozen finetuned teacher for IGAM: parameters frozen, BatchNorm as ``bn``."""
    model, _ = load_model(path, device, ("teacher",))
    if not isinstance(model, Teacher):
        raise CheckpointError(f"{checkpoint_path(path)} does not hold a teacher")
    for p in model.parameters():
        p.requires_grad_(False)
    model.set_bn(bn)
    return model


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Detached scalar tensors -> floats (one host sync, at log time only)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)}


def format_metrics(metrics: Mapping[str, float]) -> str:
    parts = []
    for k, v in metrics.items():
        parts.append(f"{k} {100 * v:.2f}%" if "accuracy" in k else f"{k} {v:.4g}")
    return ", ".join(parts)


class Checkpointer:
    """Saves and restores everything a run needs to continue exactly.

    Checkpoint entries: ``arch`` / ``model`` of the main model, optional extra modules (e.g.
    ``discriminator`` with ``discriminator_arch``), ``trainer`` (optimisers, step counters),
    ``sampler`` (batch order and position), ``rng`` (python/numpy/torch states), ``config``.
    Written atomically to ``<run_dir>/checkpoint.pt``; only rank 0 writes (``enabled``).
    """

    def __init__(self, run_dir: Path, kind: str, config: Mapping[str, Any], model: nn.Module,
                 trainer=None, sampler=None, extras: Mapping[str, nn.Module] | None = None,
                 enabled: bool = True):
        self.path = Path(run_dir) / "checkpoint.pt"
        self.kind, self.config, self.model = kind, dict(config), model
        self.trainer, self.sampler, self.extras = trainer, sampler, dict(extras or {})
        self.enabled = enabled
        self.info: dict[str, Any] = {}

    def state(self, step: int) -> dict:
        extra: dict[str, Any] = {"rng": rng_state(), "config": self.config, **self.info}
        if self.trainer is not None:
            extra["trainer"] = self.trainer.state_dict()
        if self.sampler is not None:
            extra["sampler"] = self.sampler.state_dict()
        for name, module in self.extras.items():
            extra[name] = unwrap(module).state_dict()
            extra[f"{name}_arch"] = unwrap(module).arch
        model = unwrap(self.model)
        return make_checkpoint(self.kind, model.arch, model.state_dict(), step=step, **extra)

    def save(self, step: int) -> None:
        if self.enabled:
            save_checkpoint(self.path, self.state(step))

    def restore(self, path: Path) -> int:
        """Load a checkpoint written by :meth:`save` into the run's objects; return its step."""
        ckpt = check_format(load_checkpoint(path), path, (self.kind,))
        load_model_state(unwrap(self.model), ckpt["model"], path)
        for name, module in self.extras.items():
            if name not in ckpt:
                raise CheckpointError(f"{path} has no '{name}' entry; cannot resume this run")
            load_model_state(unwrap(module), ckpt[name], path)
        try:
            if self.trainer is not None:
                self.trainer.load_state_dict(ckpt["trainer"])
            if self.sampler is not None:
                self.sampler.load_state_dict(ckpt["sampler"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path} cannot resume this run: {exc}") from None
        restore_rng(ckpt)
        self.info.update({k: ckpt[k] for k in self.info if k in ckpt})
        return int(ckpt["step"])


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or compile) wrapper, else itself."""
    while hasattr(module, "module") and isinstance(module.module, nn.Module):
        module = module.module
    return getattr(module, "_orig_mod", module)


def restore_rng(ckpt: Mapping[str, Any]) -> None:
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])


def eval_subset(dataset, num_examples: int):
    """The first ``num_examples`` examples (0 = all) of an ArrayDataset."""
    if num_examples and num_examples < len(dataset):
        return dataset.subset(range(num_examples))
    return dataset


def clean_accuracy(model: nn.Module, dataset, eval_cfg: Mapping[str, Any], device,
                   desc: str = "eval", show: bool = True) -> dict:
    """Clean accuracy of ``model`` on (a prefix of) ``dataset`` with the config's eval
    settings (``batch_size``, ``bn_mode``, ``num_examples``)."""
    data = eval_subset(dataset, int(eval_cfg.get("num_examples", 0)))
    batches = eval_batches(data, int(eval_cfg["batch_size"]), device)
    nb = -(-len(data) // int(eval_cfg["batch_size"]))
    res = evaluate(model, batches, bn_mode=eval_cfg["bn_mode"],
                   progress=lambda it: tqdm(it, desc=desc, total=nb, disable=not show,
                                            leave=False))
    return res


def fit(step_fn: Callable[[torch.Tensor, torch.Tensor], dict], batches: Iterator,
        start: int, total: int, checkpointer: Checkpointer, logger: MetricsLogger | None,
        log_every: int, checkpoint_every: int, desc: str, show: bool = True) -> dict:
    """The training loop: ``step_fn(x, y)`` for steps ``start .. total-1``.

    Logs (tqdm postfix, a printed line, metrics.jsonl) every ``log_every`` steps and at the
    end; checkpoints every ``checkpoint_every`` steps and at the end, so an interrupted run
    loses at most the steps since the last checkpoint. Returns the last logged metrics.
    """
    last: dict = {}
    bar = tqdm(range(start, total), desc=desc, initial=start, total=total, disable=not show,
               dynamic_ncols=True)
    t0 = time.time()
    for step in bar:
        x, y = next(batches)
        metrics = step_fn(x, y)
        done = step + 1
        if done % log_every == 0 or done == total:
            last = scalars(metrics)
            last["steps_per_s"] = (done - start) / max(time.time() - t0, 1e-9)
            if logger is not None:
                logger.log(done, **last)
            bar.set_postfix_str(format_metrics({k: v for k, v in last.items()
                                                if "accuracy" in k or k == "xent"}))
            if show:
                tqdm.write(f"step {done}: {format_metrics(last)}")
        if done % checkpoint_every == 0 or done == total:
            checkpointer.save(done)
    bar.close()
    return last
