"""Adversarial-example files of ``pgd_attack.py`` / ``run_attack.py`` (original.md §1, §8).

Format of the original: ``attacks/<model_name>[_<attack_name>]_attack.npy`` (``c100attack``
for CIFAR-100, ``l2attack`` for L2 attacks), a float32 array (N, H, W, 3) - NHWC - with pixels
in [0, 255], in the order of the test set. The port's ``<model_name>`` is the run folder's
name and a short hash of its absolute path (:func:`run_name`), so two runs never share a file;
the record beside each file (what made it) is :mod:`igam.eval.records`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from igam.data import load_dataset, resolve_classes, select_classes
from igam.errors import AttackFileError, CheckpointError
from igam.run import engine
from igam.run.checkpoint import checkpoint_path
from igam.run.files import atomic_write
from igam.run.provenance import file_sha256

RANGE_TOL = 1e-4
EPS_TOL = 1e-4


def run_name(model_dir: str | os.PathLike) -> str:
    """``<name>-<hash>``: the run folder's name (a checkpoint file's stem, or its folder's name
    for ``checkpoint.pt``) and the first 8 hex digits of the SHA-256 of its absolute path.

    The name of the adversarial-example files of the model: ``models/seed0/net`` and
    ``models/seed1/net`` give ``net-<h0>`` and ``net-<h1>``, two different files."""
    path = Path(model_dir).resolve()
    name = path.name
    if path.is_file() or path.suffix == ".pt":
        name = path.parent.name if path.stem == "checkpoint" else path.stem
    return f"{name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


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


@dataclass
class AttackTarget:
    """What pgd_attack.py and run_attack.py share (:func:`load_attack_target`).

    ``model``: on the device; ``test``: the test set attacked (``eval.num_examples`` first
    examples); ``path``: the adversarial-example file; ``norm``: 'linf' or 'l2'; ``data``: the
    resolved data section (``dataset``, ``root``, ``classes``: the full list of original class
    indices, [] = every class); ``checkpoint``: the checkpoint file, ``sha256`` its hash,
    ``ckpt`` its dict (``step``, ``kind``, ...)."""

    model: nn.Module
    test: Any
    path: Path
    norm: str
    data: dict
    checkpoint: Path
    sha256: str
    ckpt: dict


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def load_attack_target(cfg: Mapping[str, Any], device) -> AttackTarget:
    """The model of ``model_dir`` with its checkpoint's hash, its test set and the
    adversarial-example file (``attack_path``, or ``<attack_dir>/<run_name>_<attack_name>
    _attack.npy``). CheckpointError if the checkpoint is replaced while it is read (a run
    still writing it), so the hash is that of the weights loaded."""
    file = checkpoint_path(cfg["model_dir"])
    before = _stat_key(file)
    sha = file_sha256(file)
    model, ckpt = engine.load_classifier(file, device)
    if _stat_key(file) != before:
        raise CheckpointError(f"{file} changed while it was read (a run still saving it?); "
                              "try again when it is finished")
    data = engine.eval_data(cfg["data"], ckpt, cfg["model_dir"])
    _, full = load_dataset(data["dataset"], data["root"])
    classes = resolve_classes(data, full.num_classes, data["dataset"])
    data.update(classes=list(classes or []), num_classes=0)
    test = engine.eval_subset(select_classes(full, classes), cfg["eval"]["num_examples"])
    engine.check_classes(model, test, cfg["model_dir"])
    norm = attack_norm(cfg["attack"])
    path = Path(cfg["attack_path"]) if cfg["attack_path"] else attack_file_path(
        cfg["attack_dir"], run_name(cfg["model_dir"]), cfg["attack_name"], data["dataset"],
        norm)
    return AttackTarget(model, test, path, norm, data, file, sha, ckpt)


def attack_norm(attack: Mapping[str, Any]) -> str:
    """'l2' or 'linf': the norm of the ``attack`` config section's method (pgd_l2: L2;
    autoattack: its ``norm`` key; pgd / fgsm: L-inf)."""
    if attack["method"] == "autoattack":
        return "l2" if attack.get("norm") == "L2" else "linf"
    return "l2" if attack["method"] == "pgd_l2" else "linf"
