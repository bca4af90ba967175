"""AutoAttack (Croce & Hein, ICML 2020, arXiv 2003.01690) on the port's models, through the
official implementation as packaged on PyPI: ``pyautoattack`` (MIT; an optional dependency,
``requirements-autoattack.txt``, imported only when AutoAttack is asked for).

AutoAttack is the ensemble behind RobustBench: parameter-free sub-attacks run one after the
other, each only on the examples still classified correctly (after a clean prefilter), so the
robust accuracy after each sub-attack never rises. Standard version (Linf / L2):

- ``apgd-ce``  - APGD on cross-entropy, 100 iterations, step size adapted from the loss;
- ``apgd-t``   - targeted APGD on the DLR loss (scale-invariant margin), 9 target classes;
- ``fab-t``    - targeted FAB, minimal-perturbation attack (no loss to mask), 9 targets;
- ``square``   - Square Attack, black-box random search, 5000 queries: needs no gradient,
  so it catches gradient masking (if it beats the white-box ones, their gradients lie).

``plus`` adds ``apgd-dlr`` and untargeted ``fab`` with 5 restarts each; ``rand`` (for
randomised defences) runs ``apgd-ce`` + ``apgd-dlr`` with 20 EOT iterations.

The library works on images in [0, 1]; the port's models take [0, 255]. :class:`Scale01`
wraps the model as ``x01 -> model(255 * x01)``, eps is divided by 255 (Linf and L2 alike),
and the adversarial examples are returned as ``255 * x_adv01`` - the very tensor the model
classified inside AutoAttack. Progress and checks are read from the library's logger
``auto-attack``: its per-batch lines drive a tqdm bar and give the robust accuracy after each
sub-attack; its warnings (the library's own checks: randomised / dynamic defence, probability
outputs, too few classes, zero input gradients, Square beating the gradient attacks) are the
*flags* of the run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch
import torch.nn as nn
from tqdm import tqdm

from igam.errors import ConfigError, MissingDependencyError

INSTALL = "pip install -r requirements-autoattack.txt"
PACKAGE_VERSION = "0.2.0"  # the version whose log lines this module reads (and pins)
VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
SUB_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
NORMS = ("Linf", "L2")
LOGGER = "auto-attack"
CONFIG_KEYS = ("version", "attacks", "norm", "n_iter", "n_queries")  # autoattack-only keys


def import_pyautoattack():
    """The ``pyautoattack`` module, or a one-line MissingDependencyError with the command."""
    try:
        import pyautoattack
    except ImportError:
        raise MissingDependencyError(
            "attack.method autoattack needs the optional package pyautoattack "
            f"(official AutoAttack); install it with: {INSTALL}") from None
    return pyautoattack


@dataclass(frozen=True)
class Settings:
    """A validated AutoAttack run: ``eps`` on the [0, 255] scale; ``attacks`` the sub-attacks
    in order (the version's, or the subset asked for); ``n_iter`` / ``n_queries`` 0 = the
    version's (100 / 5000), else a reduced-cost run that is not the standard evaluation."""

    version: str
    attacks: tuple
    norm: str
    eps: float
    seed: int
    batch_size: int
    n_iter: int = 0
    n_queries: int = 0

    @property
    def custom(self) -> bool:
        """True if the sub-attacks are not exactly the version's."""
        return self.attacks != VERSIONS[self.version]

    @property
    def reduced(self) -> bool:
        """True if iterations or queries were cut (a cheap check, not a robustness claim)."""
        return bool(self.n_iter or self.n_queries)


def settings_from_config(attack: Mapping[str, Any], seed: int, batch_size: int) -> Settings:
    """:class:`Settings` from a config's ``attack`` section (keys ``eps``, ``version``,
    ``attacks``, ``norm``, ``n_iter``, ``n_queries``); ConfigError (one line, naming the
    key) for an unknown version, norm or sub-attack name, a repeated sub-attack, eps <= 0
    or negative n_iter / n_queries."""
    version = attack.get("version", "standard")
    if version not in VERSIONS:
        raise ConfigError(f"attack.version must be one of {list(VERSIONS)}, got {version!r}")
    norm = attack.get("norm", "Linf")
    if norm not in NORMS:
        raise ConfigError(f"attack.norm must be one of {list(NORMS)} for autoattack, "
                          f"got {norm!r}")
    eps = attack.get("eps")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ConfigError(f"attack.eps must be a number > 0 (on the [0, 255] scale), "
                          f"got {eps!r}")
    names = list(attack.get("attacks") or [])
    for name in names:
        if name not in SUB_ATTACKS:
            raise ConfigError(f"attack.attacks: unknown AutoAttack sub-attack {name!r} "
                              f"(expected some of {list(SUB_ATTACKS)})")
    if len(set(names)) != len(names):
        raise ConfigError(f"attack.attacks lists a sub-attack twice: {names}")
    counts = {}
    for key in ("n_iter", "n_queries"):
        value = attack.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"attack.{key} must be an integer >= 0 (0 = the version's), "
                              f"got {value!r}")
        counts[key] = value
    return Settings(version=version, attacks=tuple(names) or VERSIONS[version], norm=norm,
                    eps=float(eps), seed=int(seed), batch_size=int(batch_size), **counts)


class _Scale255Grad(torch.autograd.Function):
    """``255 * x`` whose input gradient is made contiguous (pyautoattack's zero-gradient
    check calls ``.view`` on it, which fails for e.g. channels_last gradients)."""

    @staticmethod
    def forward(ctx, x01):
        return x01 * 255.0

    @staticmethod
    def backward(ctx, grad):
        return (grad * 255.0).contiguous()


class Scale01(nn.Module):
    """Images (B, 3, H, W) in [0, 1] -> ``model(255 * x01)`` logits (B, K)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.model(_Scale255Grad.apply(x01))


class _Monitor(logging.Handler):
    """Reads pyautoattack's log records: progress bar, fooled counts per sub-attack, flags."""

    _RUNNING = re.compile(r"^running (\S+)$")
    _BATCH = re.compile(r"^(\S+) - (\d+)/(\d+) - (\d+) out of (\d+) successfully perturbed$")

    def __init__(self, n_correct: int, batch_size: int, show: bool):
        super().__init__(level=logging.DEBUG)
        self.robust = n_correct
        self.batch_size = batch_size
        self.show = show
        self.fooled: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.flags: dict[str, int] = {}
        self.bar = None
        self.current = None
        self.t_start = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            if msg not in self.flags:
                tqdm.write(f"AutoAttack flag: {msg}")
            self.flags[msg] = self.flags.get(msg, 0) + 1
            return
        m = self._RUNNING.match(msg)
        if m:
            self._finish()
            self.current, self.t_start = m.group(1), time.perf_counter()
            self.fooled[self.current] = 0
            total = math.ceil(self.robust / self.batch_size)
            # a bar on a terminal only; a log file gets the line per sub-attack below
            self.bar = tqdm(total=total, desc=f"autoattack {self.current}", unit="batch",
                            disable=not (self.show and sys.stderr.isatty()), leave=False)
            return
        m = self._BATCH.match(msg)
        if m and m.group(1) == self.current:
            k = int(m.group(4))
            self.fooled[self.current] += k
            self.robust -= k
            self.bar.update(1)
            self.bar.set_postfix_str(f"robust {self.robust}")

    def _finish(self) -> None:
        if self.current is not None:
            self.seconds[self.current] = time.perf_counter() - self.t_start
            self.bar.close()
            if self.show:
                tqdm.write(f"autoattack {self.current}: {self.fooled[self.current]} fooled, "
                           f"{self.robust} robust ({self.seconds[self.current]:.1f} s)")
        self.current = None

    def close(self) -> None:
        self._finish()
        super().close()


@contextlib.contextmanager
def _listening(handler: logging.Handler) -> Iterator[None]:
    """Attach ``handler`` to the ``auto-attack`` logger at DEBUG level, without passing its
    records on to the root logger; restore the logger afterwards."""
    logger = logging.getLogger(LOGGER)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
        handler.close()


@contextlib.contextmanager
def _frozen_eval(model: nn.Module) -> Iterator[None]:
    """Model in eval mode with parameters frozen (FAB calls ``.backward``, which would fill
    parameter grads); modes and ``requires_grad`` flags restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


@torch.no_grad()
def _correct(model: nn.Module, x01: torch.Tensor, y: torch.Tensor, batch_size: int,
             device) -> torch.Tensor:
    """Bool (N,) on the CPU: model(255 * x01) predicts y, in batches of ``batch_size``."""
    out = []
    for s in range(0, len(y), batch_size):
        xb = x01[s:s + batch_size].to(device)
        out.append((model(xb).argmax(1) == y[s:s + batch_size].to(device)).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: Settings,
        device: torch.device | str, show: bool = True) -> tuple[torch.Tensor, dict]:
    """AutoAttack ``model`` on x (N, 3, H, W) float in [0, 255] (CPU or device), y (N,) int64.

    The model is run in eval mode (restored afterwards) through :class:`Scale01`, with
    eps / 255, the version's settings, the subset ``settings.attacks`` and ``seed``.
    Returns (x_adv (N, 3, H, W) float32 in [0, 255] on the CPU: the adversarial example where
    a sub-attack fooled the model, else the image as classified; report dict) with report
    keys ``n``, ``clean_accuracy``, ``robust_accuracy`` ({'clean': a, <sub-attack>: a, ...}
    in run order, non-increasing), ``final_accuracy`` (re-evaluated on x_adv, as run_attack.py
    will; differs only if a boundary example flips), ``flags`` ([{'message', 'count'}] from
    the library's checks, plus one if final_accuracy differs), ``seconds`` ({'total',
    <sub-attack>: s}),
    ``settings``, ``pyautoattack`` (version) and ``target_classes`` (of APGD-T / FAB-T: 9,
    or K - 1 for a model with K <= 9 classes).
    """
    aa_module = import_pyautoattack()
    if getattr(aa_module, "__version__", None) != PACKAGE_VERSION:
        tqdm.write(f"warning: pyautoattack {getattr(aa_module, '__version__', '?')} installed; "
                   f"progress and per-sub-attack accuracies are read for {PACKAGE_VERSION} "
                   f"({INSTALL})")
    wrapped = Scale01(model)
    x01 = (x.detach().float() / 255.0).cpu().contiguous()
    y = y.detach().long().cpu()
    bs = settings.batch_size
    t0 = time.perf_counter()
    with _frozen_eval(model):
        clean = _correct(wrapped, x01, y, bs, device)
        monitor = _Monitor(int(clean.sum()), bs, show)
        with _listening(monitor):
            adversary = aa_module.AutoAttack(wrapped, device=device, eps=settings.eps / 255.0,
                                             norm=settings.norm, seed=settings.seed,
                                             version=settings.version)
            adversary.attacks_to_run = list(settings.attacks)  # the subset, version's settings
            if settings.n_iter:
                for sub in (adversary.apgd, adversary.apgd_targeted, adversary.fab):
                    sub.n_iter = settings.n_iter
            if settings.n_queries:
                adversary.square.n_queries = settings.n_queries
            # the targeted sub-attacks aim at the 9 most likely wrong classes; with fewer
            # classes (e.g. a 5-class subset) only K - 1 exist (the library would index past
            # the logits): target them all
            with torch.no_grad():
                num_classes = int(wrapped(x01[:1].to(device)).shape[1])
            targets = min(adversary.apgd_targeted.n_target_classes, num_classes - 1)
            adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = targets
            x_adv01, y_adv = adversary.run_standard_evaluation(x01, y, batch_size=bs)
        total = time.perf_counter() - t0
        x_adv = (x_adv01.detach().float().cpu() * 255.0).contiguous()  # what the model saw
        final = _correct(wrapped, x_adv01.detach().float().cpu(), y, bs, device)
    n = len(y)
    robust = {"clean": float(clean.sum()) / max(n, 1)}
    left = int(clean.sum())
    for name in settings.attacks:
        if name not in monitor.fooled:  # skipped: nothing robust was left
            continue
        left -= monitor.fooled[name]
        robust[name] = left / max(n, 1)
    if left != int((y_adv.cpu() == y).sum()):
        raise RuntimeError(f"AutoAttack bookkeeping: {left} robust examples counted from its "
                           f"log, {int((y_adv.cpu() == y).sum())} in its result (pyautoattack "
                           f"{getattr(aa_module, '__version__', '?')} != {PACKAGE_VERSION}?)")
    flags = [{"message": m, "count": c} for m, c in monitor.flags.items()]
    if int(final.sum()) != left:  # boundary examples (FAB) flipped by float differences
        flags.append({"message": f"re-evaluated in other batches, the returned examples give "
                                 f"{int(final.sum())} correct, AutoAttack counted {left}",
                      "count": 1})
    report = {
        "n": n,
        "clean_accuracy": robust["clean"],
        "robust_accuracy": robust,
        "final_accuracy": float(final.sum()) / max(n, 1),
        "flags": flags,
        "seconds": {"total": total, **monitor.seconds},
        "settings": {**asdict(settings), "attacks": list(settings.attacks),
                     "custom": settings.custom, "reduced": settings.reduced},
        "pyautoattack": getattr(aa_module, "__version__", None),
        "target_classes": targets,
    }
    return x_adv, report


def run_on_dataset(model: nn.Module, dataset, attack_cfg: Mapping[str, Any], seed: int,
                   eval_cfg: Mapping[str, Any], device) -> tuple:
    """pgd_attack.py's AutoAttack step: validate the config (``attack`` section, ``seed``,
    ``eval.batch_size``; ``eval.bn_mode`` must be 'eval'), attack every example of
    ``dataset`` (an ArrayDataset, uint8 NHWC) and return (x_adv float32 (N, H, W, 3) NHWC in
    [0, 255] as a numpy array - the adversarial-file format -, report of :func:`run`)."""
    if eval_cfg.get("bn_mode", "eval") != "eval":
        raise ConfigError("attack.method autoattack runs the model in eval mode; "
                          f"eval.bn_mode must be 'eval', got {eval_cfg.get('bn_mode')!r}")
    settings = settings_from_config(attack_cfg, seed, int(eval_cfg["batch_size"]))
    import_pyautoattack()  # fail before any work if the package is missing
    x = torch.from_numpy(dataset.images).permute(0, 3, 1, 2).float()
    y = torch.from_numpy(dataset.labels.astype("int64"))
    x_adv, report = run(model, x, y, settings, device)
    return x_adv.permute(0, 2, 3, 1).numpy(), report


def format_report(report: Mapping[str, Any]) -> str:
    """A few lines: accuracy after each sub-attack, then the flags (or 'no flags')."""
    s = report["settings"]
    lines = [f"AutoAttack {s['version']}{' (custom subset)' if s['custom'] else ''}"
             f"{' (REDUCED cost)' if s['reduced'] else ''}, {s['norm']} eps {s['eps']:g}/255, "
             f"{report['n']} examples, {report['seconds']['total']:.1f} s"]
    for name, acc in report["robust_accuracy"].items():
        lines.append(f"  {name:<8} {100 * acc:6.2f}%")
    flags: Sequence[Mapping[str, Any]] = report["flags"]
    if flags:
        lines += [f"  FLAG ({f['count']}x): {f['message']}" for f in flags]
    else:
        lines.append("  no flags raised by AutoAttack's checks")
    return "\n".join(lines)
