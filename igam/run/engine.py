"""What every entry script does around its training step: set up the run, load models from
checkpoints, loop with progress / logging / atomic checkpoints / exact resume, and evaluate.

The skeleton follows pytorch/examples' imagenet ``main.py`` (train / validate /
save_checkpoint); the step itself lives in ``igam.training`` / ``igam.objective``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from igam.data import (
    canonical_dataset_name,
    describe_classes,
    eval_batches,
    load_dataset,
    resolve_classes,
    select_classes,
)
from igam.errors import CheckpointError, ConfigError
from igam.gradients import double_backward_failure, input_gradient
from igam.models import ExternalClassifier, Teacher, build_model
from igam.ops import frozen_bn_stats, model_mode, unwrap
from igam.run import distributed, external, tboard
from igam.run.checkpoint import (
    check_format,
    checkpoint_path,
    load_checkpoint,
    load_model_state,
    make_checkpoint,
    save_checkpoint,
)
from igam.run.device import set_fidelity
from igam.run.files import atomic_write
from igam.run.progress import interactive, progress
from igam.run.rundir import CHECKPOINT_NAME, MetricsLogger, write_run_info
from igam.run.seeding import rng_state, seed_everything, set_rng_state
from igam.run.stopping import Stopped, StopRequest
from igam.run.watch import Watcher, learning_rate, watch_split
from igam.training import evaluate, recalibrate_bn


def setup(cfg: Mapping[str, Any], data_parallel: bool = False) -> torch.device:
    """Pick the device, seed python/numpy/torch, set the TF32 policy.

    ``data_parallel``: the script supports torchrun; if launched by it (WORLD_SIZE > 1) join
    the process group (``igam.run.distributed``), use ``cuda:LOCAL_RANK`` on CUDA, and seed each
    rank with ``distributed.rank_seed(cfg['seed'])`` (rank 0: the seed itself). Scripts
    without it refuse to run under torchrun. Returns this process's device.
    """
    tboard.check_available(cfg.get("tensorboard", "off"))
    if not data_parallel and distributed.env_world_size() > 1:
        raise ConfigError("this script runs in a single process; launch it with python, "
                          "not torchrun")
    info, device = distributed.init(cfg["device"])
    seed_everything(distributed.rank_seed(int(cfg["seed"]), info.rank))
    set_fidelity(bool(cfg.get("allow_tf32", False)))
    if info.enabled and info.is_main:
        print(f"data parallel: {info.world_size} processes ({info.backend}, {device.type}); "
              "batch_size is per process", flush=True)
    return device


def load_train_test(cfg: dict[str, Any]):
    """(train, test) ArrayDatasets of ``cfg['data']``, restricted to its class subset
    (``data.classes`` / ``data.num_classes``, relabelled 0..k-1: igam.data.subsets).

    The subset is written back into ``cfg['data']`` as the full list of original indices
    (``classes``; [] = every class) with ``num_classes: 0``, so the run's saved config and
    checkpoints record the mapping. Resuming a run on another dataset or subset than it
    started with is refused (:func:`check_resume_data`). Under torchrun rank 0 loads first,
    so only it decodes and writes the TinyImageNet cache while the others wait, then read it.
    """
    data = cfg["data"]
    with distributed.main_first():
        train, test = load_dataset(data["dataset"], data["root"])
    classes = resolve_classes(data, train.num_classes, data["dataset"])
    data.update(classes=classes or [], num_classes=0)
    check_resume_data(cfg)
    return select_classes(train, classes), select_classes(test, classes)


def _saved_data(ckpt: Mapping[str, Any]) -> dict:
    """The ``data`` section of the config stored in a checkpoint ({} if none)."""
    return dict((ckpt.get("config") or {}).get("data") or {})


def check_resume_data(cfg: Mapping[str, Any]) -> None:
    """ConfigError if ``cfg`` resumes the run in ``model_dir`` with another ``data.dataset``
    or class subset than its checkpoint was trained on (the labels would mean other classes).
    Called before the run folder's config.yaml is rewritten, so a refused resume leaves it
    intact. ``cfg['data']['classes']`` must be resolved (:func:`load_train_test`)."""
    file = Path(cfg["model_dir"]) / CHECKPOINT_NAME
    if not (cfg.get("resume") and file.is_file()):
        return
    saved, data = _saved_data(load_checkpoint(file, verify=False)), cfg["data"]
    if "dataset" in saved and saved["dataset"] != data["dataset"]:
        raise ConfigError(f"cannot resume {cfg['model_dir']} on data.dataset {data['dataset']}: "
                          f"the run was started on {saved['dataset']}")
    if "classes" in saved and list(saved["classes"]) != list(data["classes"]):
        hint = (f"--data.classes {','.join(map(str, saved['classes']))}" if saved["classes"]
                else "an empty data.classes (every class)")
        raise ConfigError(f"cannot resume {cfg['model_dir']} with data.classes selecting "
                          f"{describe_classes(data['classes'])}: the run was started on "
                          f"{describe_classes(saved['classes'])} of {saved.get('dataset')}; "
                          f"pass {hint}, or --overwrite / another model_dir to start afresh")


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
    evaluation then decides between running and batch statistics, original.md §8).
    """
    model, ckpt = load_model(path, device, ("classifier", "teacher", "igam"))
    if isinstance(model, Teacher):
        model.set_bn(None)
    return model, ckpt


def eval_data(cfg_data: Mapping[str, Any], ckpt: Mapping[str, Any], model_dir) -> dict:
    """The dataset to evaluate a model on: ``data.dataset`` / ``data.root`` of the config,
    where empty taken from the config saved in the model's checkpoint (the data it was trained
    on, e.g. the target task of a teacher), so ``--model_dir`` alone suffices. Likewise the
    class subset: with ``data.classes`` and ``data.num_classes`` empty, the checkpoint's
    ``data.classes`` when the dataset is the one the model was trained on."""
    data = dict(cfg_data)
    saved = _saved_data(ckpt)
    for key in ("dataset", "root"):
        if not data.get(key):
            data[key] = saved.get(key, "")
    if not data["dataset"] or not data["root"]:
        raise ConfigError(f"the checkpoint in {model_dir} does not record its dataset; pass "
                          "--data.dataset and --data.root")
    if (not data.get("classes") and not data.get("num_classes")
            and data["dataset"] == saved.get("dataset")):
        data["classes"] = list(saved.get("classes") or [])
    return data


def eval_test_set(data: Mapping[str, Any]):
    """The test split of :func:`eval_data`'s dataset, restricted to its class subset."""
    _, test = load_dataset(data["dataset"], data["root"])
    return select_classes(test, resolve_classes(data, test.num_classes, data["dataset"]))


def load_compared_models(model_dirs, cfg_data: Mapping[str, Any], num_examples: int,
                         device) -> tuple[dict[str, nn.Module], Any]:
    """Models evaluated side by side (``igam.eval.sanity``, ``igam.eval.visualize``) and their one
    test set (the first ``num_examples`` examples; 0 = all).

    Each model comes from its checkpoint (:func:`load_classifier`), named by its folder (the
    path as given when two folders share a name; ``<name>#<position>`` for a folder given
    twice). The dataset is :func:`eval_data`'s, and must
    be the same for every model: ConfigError (one line) if two checkpoints record different
    datasets, roots or class subsets, or if a model's classes do not match the test set.
    Returns ({name: model on ``device``}, test ArrayDataset).
    """
    loaded = [(str(d), *load_classifier(d, device)) for d in model_dirs]
    if not loaded:
        raise ConfigError("no model given: pass at least one model folder")
    datas = [eval_data(cfg_data, ckpt, d) for d, _, ckpt in loaded]
    first = datas[0]
    for (d, _, _), data in zip(loaded[1:], datas[1:]):
        if (canonical_dataset_name(data["dataset"]) != canonical_dataset_name(first["dataset"])
                or os.path.normpath(data["root"]) != os.path.normpath(first["root"])
                or data.get("classes") != first.get("classes")):
            raise ConfigError(
                f"models of different datasets: {loaded[0][0]} is evaluated on "
                f"{first['dataset']} ({first['root']}, {describe_classes(first['classes'])}), "
                f"{d} on {data['dataset']} ({data['root']}, "
                f"{describe_classes(data['classes'])}); compare models of one task, or pass "
                "--data.dataset, --data.root (and --data.classes)")
    test = eval_subset(eval_test_set(first), num_examples)
    names = [Path(d).resolve().name for d, _, _ in loaded]
    models = {}
    for i, ((d, model, _), name) in enumerate(zip(loaded, names)):
        check_classes(model, test, d)
        key = name if names.count(name) == 1 else d
        models[key if key not in models else f"{name}#{i + 1}"] = model  # same folder twice
    return models, test


def check_classes(model: nn.Module, dataset, path) -> None:
    """ConfigError unless the model's logits match the dataset's classes."""
    k = getattr(unwrap(model), "num_classes", None)
    if k is not None and k != dataset.num_classes:
        raise ConfigError(f"model in {path} predicts {k} classes but {dataset.name} has "
                          f"{dataset.num_classes}: wrong --data.dataset for this model?")


def load_teacher(path: str | Path, device, bn: str,
                 data: Mapping[str, Any] | None = None) -> Teacher:
    """The frozen finetuned teacher for IGAM: parameters frozen, BatchNorm as ``bn``.

    ``data``: the student's resolved ``data`` config; ConfigError if the teacher's checkpoint
    records the same dataset with another class subset (label i would be another class for
    the teacher than for the student)."""
    model, ckpt = load_model(path, device, ("teacher",))
    if not isinstance(model, Teacher):
        raise CheckpointError(f"{checkpoint_path(path)} does not hold a teacher")
    saved = _saved_data(ckpt)
    if (data is not None and "classes" in saved and saved.get("dataset") == data["dataset"]
            and list(saved["classes"]) != list(data["classes"])):
        raise ConfigError(f"the teacher in {path} was finetuned on "
                          f"{describe_classes(saved['classes'])} of {data['dataset']}, but "
                          f"data.classes selects {describe_classes(data['classes'])}; "
                          "train the student on the teacher's classes")
    for p in model.parameters():
        p.requires_grad_(False)
    model.set_bn(bn)
    return model


def load_external_teacher(section: Mapping[str, Any], device, bn: str) -> Teacher:
    """An external model (``teacher.model`` of train_igam.py: a factory's or RobustBench's,
    igam.run.external) as the frozen teacher without finetuning: its own head is the target
    head (its classes must be the target task's), ``teacher.upresize_to`` applies, BatchNorm
    as ``bn``."""
    source = external.load_teacher_source(section, device)
    teacher = Teacher.keeping_head(source, section["upresize_to"] or None, bn).to(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def check_double_backward(student: nn.Module, train, device, name: str) -> None:
    """ConfigError (one line, naming the layer) unless IGAM can differentiate the student's
    input gradient w.r.t. its parameters, tried on the first 2 training images
    (:func:`igam.gradients.double_backward_failure`; the student is left unchanged)."""
    x, y = next(iter(eval_batches(train.subset(np.arange(min(2, len(train)))), 2, device)))
    failure = double_backward_failure(student, x, y)
    if failure and isinstance(student, ExternalClassifier):  # the layer's name in the user's model
        failure = failure.replace("layer body.", "layer ", 1)
    if failure:
        raise ConfigError(f"student {name} cannot be trained by IGAM, which needs double "
                          f"backward through it: {failure}")


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
    Written atomically to ``<run_dir>/checkpoint.pt``; only rank 0 writes (``enabled``,
    default: rank 0).

    Data parallel: :meth:`save` is collective (every rank calls it): each rank's RNG states
    (global and the trainer's ``generator``) are gathered into ``rank_states`` and on
    :meth:`restore` each rank takes its own, so a resumed run continues exactly. Everything
    else (model, optimisers, sampler) is identical on every rank and comes from rank 0.
    """

    def __init__(self, run_dir: Path, kind: str, config: Mapping[str, Any], model: nn.Module,
                 trainer=None, sampler=None, extras: Mapping[str, nn.Module] | None = None,
                 enabled: bool | None = None):
        self.path = Path(run_dir) / "checkpoint.pt"
        self.kind, self.config, self.model = kind, dict(config), model
        self.trainer, self.sampler, self.extras = trainer, sampler, dict(extras or {})
        self.enabled = distributed.is_main() if enabled is None else enabled
        self.info: dict[str, Any] = {}

    def _local_state(self) -> dict:
        """This rank's random state: global RNGs and the trainer's own generator, if any."""
        state = {"rng": rng_state()}
        gen = getattr(self.trainer, "generator", None)
        if gen is not None:
            state["generator"] = gen.get_state()
        return state

    def state(self, step: int) -> dict:
        extra: dict[str, Any] = {"rng": rng_state(), "config": self.config, **self.info}
        if distributed.info().enabled:
            extra["rank_states"] = distributed.all_gather_objects(self._local_state())
        if self.trainer is not None:
            extra["trainer"] = self.trainer.state_dict()
        if self.sampler is not None:
            extra["sampler"] = self.sampler.state_dict()
        for name, module in self.extras.items():
            extra[name] = unwrap(module).state_dict()
            extra[f"{name}_arch"] = unwrap(module).arch
        model = unwrap(self.model)
        return make_checkpoint(self.kind, model.arch, model.state_dict(), step=step, **extra)

    def save(self, step: int, path: Path | None = None) -> None:
        """Write the checkpoint of ``step`` (rank 0) to ``path`` (default: checkpoint.pt);
        collective when data parallel."""
        path = self.path if path is None else Path(path)
        if distributed.info().enabled:
            state = self.state(step)  # every rank takes part in gathering the RNG states
            if self.enabled:
                save_checkpoint(path, state)
        elif self.enabled:
            save_checkpoint(path, self.state(step))

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
        self._restore_local(ckpt, path)
        self.info.update({k: ckpt[k] for k in self.info if k in ckpt})
        return int(ckpt["step"])

    def _restore_local(self, ckpt: Mapping[str, Any], path: Path) -> None:
        info = distributed.info()
        states = ckpt.get("rank_states")
        if not info.enabled or states is None:
            return
        if len(states) != info.world_size:
            raise CheckpointError(f"{path} was written by {len(states)} processes; resume it "
                                  f"with as many (this run has {info.world_size})")
        mine = states[info.rank]
        set_rng_state(mine["rng"])
        gen = getattr(self.trainer, "generator", None)
        if gen is not None and "generator" in mine:
            gen.set_state(mine["generator"])


def restore_rng(ckpt: Mapping[str, Any]) -> None:
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])


def eval_subset(dataset, num_examples: int):
    """The first ``num_examples`` examples (0 = all) of an ArrayDataset."""
    if num_examples and num_examples < len(dataset):
        return dataset.subset(range(num_examples))
    return dataset


def shard_batches(n: int, batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """Indices of the evaluation batches ``rank, rank + world_size, ...`` of ``n`` examples.

    Each batch is exactly one of the single-process batches (the partial last one included),
    so batch-statistics evaluation (``bn_mode: train``) is unchanged by sharding.
    """
    starts = range(rank * batch_size, n, world_size * batch_size)
    parts = [np.arange(s, min(s + batch_size, n)) for s in starts]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def clean_accuracy(model: nn.Module, dataset, eval_cfg: Mapping[str, Any], device,
                   desc: str = "eval", show: bool | None = None) -> dict:
    """Clean accuracy of ``model`` on (a prefix of) ``dataset`` with the config's eval
    settings (``batch_size``, ``bn_mode``, ``num_examples``).

    Data parallel (collective): rank 0's parameters and buffers are broadcast first, each rank
    evaluates every ``world_size``-th batch (:func:`shard_batches`), and the counts and
    predictions are gathered, so every rank returns the single-process result.
    """
    data = eval_subset(dataset, int(eval_cfg.get("num_examples", 0)))
    bs = int(eval_cfg["batch_size"])
    info = distributed.info()
    show = (distributed.is_main() if show is None else show) and interactive()
    if info.enabled:
        distributed.broadcast_module(model)
        idx = shard_batches(len(data), bs, info.rank, info.world_size)
        shard = data.subset(idx)
    else:
        shard = data
    nb = -(-len(shard) // bs)
    res = evaluate(model, eval_batches(shard, bs, device), bn_mode=eval_cfg["bn_mode"],
                   progress=lambda it: progress(it, desc=desc, total=nb, show=show,
                                                leave=False))
    if not info.enabled:
        return res
    correct, n = distributed.all_reduce_sum([res["correct"], res["n"]])
    preds = torch.zeros(len(data), dtype=torch.long)
    for rank, p in enumerate(distributed.all_gather_objects(res["predictions"])):
        preds[torch.from_numpy(shard_batches(len(data), bs, rank, info.world_size))] = p
    return {"accuracy": correct / max(n, 1), "correct": int(correct), "n": int(n),
            "predictions": preds}


def fit(step_fn: Callable[[torch.Tensor, torch.Tensor], dict], batches: Iterator,
        start: int, total: int, checkpointer: Checkpointer, logger: MetricsLogger | None,
        log_every: int, checkpoint_every: int, desc: str, show: bool | None = None,
        watcher: Watcher | None = None, lr_fn: Callable[[], float | None] | None = None,
        tb: tboard.TensorBoardLogger | None = None) -> dict:
    """The training loop: ``step_fn(x, y)`` for steps ``start .. total-1``.

    Logs (a printed line, metrics.jsonl, TensorBoard ``tb``) every ``log_every`` steps and at
    the end, with the learning rate (``lr_fn``: ``lr``), steps and images per second;
    checkpoints every ``checkpoint_every`` steps and at the end, so a killed run loses at
    most the steps since the last checkpoint. Every ``watcher.every`` steps the
    :class:`igam.run.watch.Watcher` evaluates clean and PGD accuracy on its fixed subset
    (one more metrics.jsonl record: ``watch_*`` and ``lr``) and keeps checkpoint_best.pt;
    it leaves the training trajectory unchanged. Returns the last logged metrics.

    Progress: on a terminal a tqdm bar shows xent, accuracy and images/s; when stderr is not a
    terminal (a log file, CI, a cluster job) the bar is off and only the plain log lines are
    printed, so the log holds no carriage returns.

    SIGINT / SIGTERM (``igam.run.stopping``; handlers only inside this loop): the current step
    finishes, the checkpoint of the step reached is written like the periodic ones, and
    :class:`igam.run.stopping.Stopped` is raised (exit code 128 + the signal number; the entry
    point prints the command that continues the run). Nothing extra is logged, so the
    continued run's metrics.jsonl is the uninterrupted run's. A second signal acts at once.

    Data parallel: every rank runs the loop; logged metrics are averaged over ranks (one
    collective per log step); only rank 0 shows progress (``show`` default) and gets a
    ``logger``; checkpoints are collective (:meth:`Checkpointer.save`); a stop request is
    agreed on after every step (:func:`igam.run.distributed.max_over_ranks`), so every rank
    stops after the same step.
    """
    show = distributed.is_main() if show is None else show
    info = distributed.info()
    bs = getattr(batches, "batch_size", None)
    if info.enabled and show and bs is not None:
        tqdm.write(f"global batch {info.world_size} x {bs} = {info.world_size * bs}")
    images_per_step = (bs or 0) * max(info.world_size, 1)
    last: dict = {}
    bar = tqdm(range(start, total), desc=desc, initial=start, total=total,
               disable=not (show and interactive()), dynamic_ncols=True)
    t0 = time.time()
    with StopRequest(announce=show) as stop:
        try:
            for step in bar:
                x, y = next(batches)
                metrics = step_fn(x, y)
                done = step + 1
                signum = distributed.max_over_ranks(stop.signum) if info.enabled else stop.signum
                if done % log_every == 0 or done == total:
                    last = distributed.mean_scalars(scalars(metrics))
                    lr = lr_fn() if lr_fn is not None else None
                    if lr is not None:
                        last["lr"] = lr
                    last["steps_per_s"] = (done - start) / max(time.time() - t0, 1e-9)
                    if images_per_step:
                        last["images_per_s"] = last["steps_per_s"] * images_per_step
                    if logger is not None:
                        logger.log(done, **last)
                    if tb is not None:
                        tb.log_train(done, last)
                    bar.set_postfix_str(format_metrics(
                        {k: v for k, v in last.items()
                         if k in ("loss", "xent", "accuracy", "images_per_s")}))
                    if show:
                        tqdm.write(f"step {done}: {format_metrics(last)}")
                if watcher is not None and watcher.due(done):
                    res = watcher(done)
                    lr = lr_fn() if lr_fn is not None else None
                    record = {**res, **({"lr": lr} if lr is not None else {})}
                    if logger is not None:
                        logger.log(done, **record)
                    if tb is not None:
                        tb.log_eval(done, record)
                    if show:
                        tqdm.write(f"step {done}: watched on {res['watch_n']} {res['watch_split']} "
                                   f"examples: clean {100 * res['watch_clean_accuracy']:.2f}%, "
                                   f"PGD-{res['watch_pgd_steps']} "
                                   f"{100 * res['watch_robust_accuracy']:.2f}%"
                                   + (" (best so far)" if res["watch_best"] else ""))
                if done % checkpoint_every == 0 or done == total or signum:
                    checkpointer.save(done)
                if signum:
                    stop.consume()
                    raise Stopped(signum, f"after step {done} of {total}; checkpoint saved in "
                                          f"{checkpointer.path}", resume=True)
        finally:
            bar.close()
    return last


def make_watcher(cfg: Mapping[str, Any], ckpt: Checkpointer,
                 model: nn.Module | None = None) -> Watcher | None:
    """The run's :class:`igam.run.watch.Watcher` (None with ``watch.every`` 0 or no ``watch``
    section): its subset from :func:`igam.run.watch.watch_split`, evaluated with the
    config's ``eval.batch_size``; rank 0 prints where the subset comes from."""
    w = cfg.get("watch")
    if not w or not w["every"]:
        return None
    data, split, root = watch_split(cfg)
    if distributed.is_main():
        note = ("" if split == "validation" else
                "; checkpoint_best.pt is chosen on test images (set watch.root to a validation "
                "split for unbiased test numbers: docs/pipeline.md#validation-split)")
        print(f"watch: clean and PGD-{w['pgd_steps']} accuracy on {len(data)} {split} examples "
              f"({root}) every {w['every']} steps{note}", flush=True)
    return Watcher(unwrap(model if model is not None else ckpt.model), data, split, w["every"],
                   w["pgd_steps"], cfg["eval"]["batch_size"], cfg["seed"], ckpt)


def train(ckpt: Checkpointer, run, step_fn: Callable[[torch.Tensor, torch.Tensor], dict],
          batches: Iterator, total: int, cfg: Mapping[str, Any],
          desc: str) -> MetricsLogger | None:
    """Resume from the run folder's checkpoint if there is one, then :func:`fit` up to
    ``total`` steps, with the periodic evaluation (:func:`make_watcher`) and TensorBoard
    (config ``tensorboard``; rank 0). Returns the run's metrics logger (rank 0; None on the
    other ranks)."""
    watcher = make_watcher(cfg, ckpt)  # before restore: it restores the best result so far
    start = ckpt.restore(run.resume_from) if run.resume_from else 0
    main = distributed.is_main()
    logger = MetricsLogger(run.path, truncate_after=start) if main else None
    if main:  # versions, git commit, device, parameter counts: run_info.json
        model = unwrap(ckpt.model)
        write_run_info(run.path, {ckpt.kind: model, **{k: unwrap(m) for k, m in
                                                       ckpt.extras.items()}},
                       next(model.parameters()).device, start, distributed.info().world_size)
    tb = (tboard.TensorBoardLogger.open(cfg.get("tensorboard", "off"), run.path, ckpt.kind,
                                        start) if main else None)
    try:
        fit(step_fn, batches, start, total, ckpt, logger, cfg["log_every"],
            cfg["checkpoint_every"], desc=desc, watcher=watcher,
            lr_fn=lambda: learning_rate(ckpt.trainer), tb=tb)
    finally:
        if tb is not None:
            tb.close()
    return logger


def _counts(res: Mapping[str, Any]) -> dict:
    return {"accuracy": res["accuracy"], "correct": res["correct"], "n": res["n"]}


def _write_eval_clean(logger: MetricsLogger, what: str, test, bn_mode: str,
                      res: Mapping[str, Any], **extra: Any) -> None:
    """``eval_clean.json``, the same shape for every training script: ``model`` (what was
    trained), ``dataset``, ``bn_mode`` and the ``accuracy`` / ``correct`` / ``n`` of the
    final clean evaluation, plus script-specific entries."""
    logger.write_json("eval_clean.json", {"model": what, "dataset": test.name,
                                          "bn_mode": bn_mode, **_counts(res), **extra})


def report_clean_accuracy(model: nn.Module, test, cfg: Mapping[str, Any], device,
                          logger: MetricsLogger | None, what: str, run_path) -> dict:
    """Final clean evaluation on the full test set (collective under DDP); rank 0 writes
    ``eval_clean.json`` and prints one line."""
    res = clean_accuracy(model, test, cfg["eval"], device)
    if logger is not None:
        _write_eval_clean(logger, what, test, cfg["eval"]["bn_mode"], res)
        print(f"{what} clean accuracy on {test.name}: {100 * res['accuracy']:.2f}% "
              f"({res['correct']}/{res['n']}); model saved in {run_path}")
    return res


def report_teacher_clean_accuracy(teacher: Teacher, train, test, cfg: Mapping[str, Any],
                                  device, ckpt: Checkpointer, logger: MetricsLogger | None,
                                  run_path) -> dict:
    """The end of teacher finetuning (original.md §6).

    The teacher is evaluated in eval mode twice: with batch statistics (what its head was
    trained on, with ``teacher.bn: batch``), and with running statistics - after they have
    been re-estimated on the target training data (``finetune.recalibrate_bn``, with
    ``teacher.bn: batch``; saved in the checkpoint) - which is what the attack scripts
    evaluate. Rank 0 writes ``eval_clean.json`` (top level: running statistics; ``batch_bn`` /
    ``running_bn``: both; ``bn_recalibrated``) and prints one line. Collective under DDP.
    """
    f, bn = cfg["finetune"], cfg["teacher"]["bn"]
    ev = dict(cfg["eval"], bn_mode="eval")
    ckpt.info["bn_recalibrated"] = False
    teacher.set_bn("batch")
    batch = clean_accuracy(teacher, test, ev, device, "eval (batch BN)")
    if f["recalibrate_bn"] and bn == "batch":
        info = distributed.info()
        shard = train.subset(shard_batches(len(train), f["batch_size"], info.rank,
                                           info.world_size)) if info.enabled else train
        recalibrate_bn(teacher, eval_batches(shard, f["batch_size"], device))
        ckpt.info["bn_recalibrated"] = True
        ckpt.save(f["steps"])
    teacher.set_bn(None)
    running = clean_accuracy(teacher, test, ev, device, "eval (running BN)")
    teacher.set_bn(bn)
    if logger is not None:
        _write_eval_clean(logger, "teacher", test, "eval", running, batch_bn=_counts(batch),
                          running_bn=_counts(running),
                          bn_recalibrated=ckpt.info["bn_recalibrated"])
        print(f"teacher clean accuracy on {test.name}: {100 * batch['accuracy']:.2f}% with "
              f"batch statistics, {100 * running['accuracy']:.2f}% with running statistics; "
              f"saved in {run_path}")
    return running


def save_input_gradients(model: nn.Module, dataset, batch_size: int, device, path: Path) -> None:
    """Input gradients d softmax[y]/dx of every example of ``dataset``, float32 NHWC .npy.

    As the original (which saved them after finetuning the teacher and after IGAM training):
    the model in train mode, batches of ``batch_size`` in dataset order (the partial last one
    included), BatchNorm with batch statistics - without updating any running statistics
    (:func:`igam.ops.frozen_bn_stats`), so the model is unchanged. Written atomically.
    """
    grads = []
    with model_mode(model, "train"), frozen_bn_stats(model):
        for x, y in progress(eval_batches(dataset, batch_size, device), leave=False,
                             desc=f"gradients {path.name}",
                             total=-(-len(dataset) // batch_size)):
            grads.append(input_gradient(model, x, y).permute(0, 2, 3, 1).cpu().numpy())
    with atomic_write(path, "wb", encoding=None) as fh:
        np.save(fh, np.concatenate(grads).astype(np.float32))


def save_train_test_input_gradients(model: nn.Module, train, test, batch_size: int, device,
                                    run_dir: Path, who: str) -> None:
    """:func:`save_input_gradients` of both splits: ``<who>_input_gradients_{train,test}.npy``
    in ``run_dir``."""
    for name, data in (("train", train), ("test", test)):
        save_input_gradients(model, data, batch_size, device,
                             Path(run_dir) / f"{who}_input_gradients_{name}.npy")
