"""The dataset name -> loader dispatch: ``load_dataset("cifar10", root)`` -> (train, test)."""

from __future__ import annotations

from typing import Tuple

from igam.data.cifar import load_cifar10, load_cifar100
from igam.data.datasets import ArrayDataset, PathLike
from igam.data.tinyimagenet import load_tinyimagenet
from igam.errors import ConfigError

#: Dataset names accepted by ``load_dataset`` (and by configs).
DATASET_NAMES = ("cifar10", "cifar100", "tinyimagenet")

_LOADERS = {"cifar10": load_cifar10, "cifar100": load_cifar100,
            "tinyimagenet": load_tinyimagenet}


def canonical_dataset_name(name: str) -> str:
    """'CIFAR-10', 'cifar_10', 'tiny-imagenet' ... -> 'cifar10' / 'cifar100' / 'tinyimagenet'."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key == "tinyimagenet200":
        key = "tinyimagenet"
    if key not in DATASET_NAMES:
        raise ConfigError(f"unknown dataset '{name}' (expected one of: {', '.join(DATASET_NAMES)})")
    return key


def load_dataset(name: str, root: PathLike) -> Tuple[ArrayDataset, ArrayDataset]:
    """Load ``(train, test)`` of dataset ``name`` from folder ``root``.

    For Tiny-ImageNet the second set is the official validation split (its test split has no
    labels), as in the original code. ``root`` may be the dataset folder itself or its parent
    (e.g. ``datasets/`` holding ``cifar-10-batches-py/``).
    """
    return _LOADERS[canonical_dataset_name(name)](root)
