"""Adversarial-example files of ``pgd_attack.py`` / ``run_attack.py`` (original.md §1, §8).

Format of the original: ``attacks/<model_name>[_<attack_name>]_attack.npy`` (``c100attack``
for CIFAR-100, ``l2attack`` for L2 attacks), a float32 array (N, H, W, 3) - NHWC - with pixels
in [0, 255], in the order of the test set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from igam.errors import AttackFileError
from igam.run import engine
from igam.run.files import atomic_write

RANGE_TOL = 1e-4
EPS_TOL = 1e-4


def attack_file_path(out_dir: str | os.PathLike, model_name: str, attack_name: str | None,
                     dataset: str, norm: str = "linf") -> Path:
    """Where the original stored the adversarial examples of ``model_name``.

    ``dataset``: 'cifar10' / 'cifar100' / 'tinyimagenet', or a split name like 'cifar100/test'.
    """
    suffix = "c100attack.npy" if dataset.split("/")[0] == "cifar100" else "attack.npy"
    if norm == "l2":
        suffix = suffix.replace("attack.npy", "l2attack.npy")
    stem = f"{model_name}_{attack_name}_" if attack_name else f"{model_name}_"
    return Path(out_dir) / (stem + suffix)


def save_adversarial(path: str | os.PathLike, x_adv: np.ndarray) -> Path:
    """Write float32 NHWC adversarial examples atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb", encoding=None) as fh:
        np.save(fh, np.ascontiguousarray(x_adv, dtype=np.float32))
    return path


def load_adversarial(path: str | os.PathLike, x_nat: np.ndarray, eps: float,
                     norm: str = "linf") -> np.ndarray:
    """Load and validate adversarial examples against the natural images they perturb.

    Args:
        path: .npy file written by pgd_attack.py (or the original).
        x_nat: uint8/float (N, H, W, 3) natural test images in [0, 255], same order.
        eps: perturbation budget on the [0, 255] scale (L-inf, or per-example L2).
    Returns:
        float32 (N, H, W, 3).
    Raises:
        AttackFileError (one line, naming the file) for a missing/unreadable file, a wrong
        shape, pixels outside [0, 255] (+-1e-4), non-finite values or a perturbation larger
        than eps + 1e-4.
    """
    path = Path(path)
    if not path.is_file():
        raise AttackFileError(f"adversarial examples file {path} not found (run pgd_attack.py "
                              "first, or pass --attack_path)")
    try:
        x_adv = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise AttackFileError(f"{path} is not a readable .npy file ({exc})") from None
    if x_adv.shape != x_nat.shape:
        raise AttackFileError(f"{path} has shape {tuple(x_adv.shape)}; expected "
                              f"{tuple(x_nat.shape)} (N, H, W, 3 NHWC, matching the test set)")
    if not np.issubdtype(x_adv.dtype, np.floating) and not np.issubdtype(x_adv.dtype,
                                                                           np.integer):
        raise AttackFileError(f"{path} has dtype {x_adv.dtype}; expected float32 pixels")
    x_adv = x_adv.astype(np.float32)
    if not np.all(np.isfinite(x_adv)):
        raise AttackFileError(f"{path} contains NaN or infinite values")
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if lo < -RANGE_TOL or hi > 255 + RANGE_TOL:
        raise AttackFileError(f"{path} has pixels in [{lo:.4g}, {hi:.4g}]; expected [0, 255] "
                              "(pixels must be on the 0-255 scale)")
    diff = x_adv - x_nat.astype(np.float32)
    if norm == "l2":
        dist = float(np.sqrt((diff.reshape(len(diff), -1) ** 2).sum(1)).max(initial=0.0))
    else:
        dist = float(np.abs(diff).max(initial=0.0))
    if dist > eps + EPS_TOL:
        raise AttackFileError(f"{path} perturbs by up to {dist:.4g} ({norm}); expected at most "
                              f"eps = {eps:g}")
    return x_adv


def adversarial_batches(x_adv: np.ndarray, labels: np.ndarray, batch_size: int, device):
    """Batches (x (b, 3, H, W) float32 in [0, 255], y (b,) int64) on ``device`` of float32
    NHWC adversarial examples, in order, partial last batch included."""
    for start in range(0, len(x_adv), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(x_adv[start:start + batch_size]))
        y = torch.from_numpy(labels[start:start + batch_size].astype(np.int64))
        yield x.to(device).permute(0, 3, 1, 2).contiguous(), y.to(device)


def load_attack_target(cfg: Mapping[str, Any], device) -> tuple[nn.Module, Any, Path, str]:
    """What pgd_attack.py and run_attack.py share: the model of ``model_dir``, its test set
    (``eval.num_examples`` first examples), the adversarial-example file and the norm."""
    model, ckpt = engine.load_classifier(cfg["model_dir"], device)
    data = engine.eval_data(cfg["data"], ckpt, cfg["model_dir"])
    test = engine.eval_subset(engine.eval_test_set(data), cfg["eval"]["num_examples"])
    engine.check_classes(model, test, cfg["model_dir"])
    norm = attack_norm(cfg["attack"])
    name = Path(cfg["model_dir"]).resolve().name
    path = Path(cfg["attack_path"]) if cfg["attack_path"] else attack_file_path(
        cfg["attack_dir"], name, cfg["attack_name"], data["dataset"], norm)
    return model, test, path, norm


def attack_norm(attack: Mapping[str, Any]) -> str:
    """'l2' or 'linf': the norm of the ``attack`` config section's method (pgd_l2: L2;
    autoattack: its ``norm`` key; pgd / fgsm: L-inf)."""
    if attack["method"] == "autoattack":
        return "l2" if attack.get("norm") == "L2" else "linf"
    return "l2" if attack["method"] == "pgd_l2" else "linf"
