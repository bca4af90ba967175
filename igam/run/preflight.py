"""Checks an entry script makes right after its config is loaded, before the device, the data
or any model: everything a user can get wrong that would otherwise stop the run late (after
the dataset is decoded, the models are built, or an hour of attacks). Each failure is one line
(an :class:`igam.errors.IGAMError`); nothing is written.

- :func:`check_run_dir` - the run folder: ``model_dir`` holding a run without ``--resume`` /
  ``--overwrite``, both flags at once, a ``model_dir`` that is a file (the same rules as
  :func:`igam.run.rundir.prepare_run_dir`, which applies them again when it creates the
  folder);
- :func:`check_checkpoints` - the folders a script starts from (``teacher_dir``,
  ``source_model_dir``) hold a checkpoint;
- :func:`check_data` - the dataset folder is there in its official layout (a cheap look at
  the folders, no decoding); the error names the download page;
- :func:`check_optional_packages` - the optional packages the chosen path needs
  (AutoAttack: ``pyautoattack``);
- :func:`check_model_settings` - the WideResNet's ``widths`` (the method's own rule).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from igam.errors import ConfigError, DataError, MissingDependencyError
from igam.run.checkpoint import checkpoint_path
from igam.run.rundir import CHECKPOINT_NAME

__all__ = ["check_checkpoints", "check_data", "check_model_settings", "check_optional_packages",
           "check_run_dir", "check_start"]

AUTOATTACK_INSTALL = "pip install -r requirements-autoattack.txt"


def check_run_dir(cfg: Mapping[str, Any]) -> None:
    """ConfigError if the run in ``cfg['model_dir']`` cannot start as asked."""
    resume, overwrite = bool(cfg.get("resume")), bool(cfg.get("overwrite"))
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pass only one")
    path = Path(cfg["model_dir"])
    if path.exists() and not path.is_dir():
        raise ConfigError(f"model_dir {path} exists and is not a folder")
    if (path / CHECKPOINT_NAME).exists() and not (resume or overwrite):
        raise ConfigError(f"{path} already holds a run; pass --resume to continue it, "
                          "--overwrite to start it over, or choose another model_dir")


def check_checkpoints(cfg: Mapping[str, Any], *keys: str) -> None:
    """CheckpointError unless each folder (or file) ``cfg[key]`` holds a checkpoint."""
    for key in keys:
        checkpoint_path(cfg[key])


def check_data(data: Mapping[str, Any]) -> None:
    """DataError (naming the download page and the layout) unless ``data['root']`` holds the
    dataset ``data['dataset']``: only the folders and marker files are looked at."""
    from igam.data import canonical_dataset_name
    from igam.data.cifar import CIFAR10_LAYOUT, CIFAR100_LAYOUT, find_data_dir
    from igam.data.tinyimagenet import DOWNLOAD, LAYOUT, find_root

    name = canonical_dataset_name(data["dataset"])
    if name == "cifar10":
        find_data_dir(data["root"], "data_batch_1", ("cifar-10-batches-py",), CIFAR10_LAYOUT,
                      "CIFAR-10")
    elif name == "cifar100":
        find_data_dir(data["root"], "train", ("cifar-100-python",), CIFAR100_LAYOUT,
                      "CIFAR-100")
    else:
        val = find_root(data["root"]) / "val" / "images"
        if not val.is_dir():
            raise DataError(f"missing folder {val} (expected the {LAYOUT}); download {DOWNLOAD} "
                            "and unzip it there (docs/pipeline.md, Datasets)")


def check_model_settings(cfg: Mapping[str, Any]) -> None:
    """ConfigError naming the key if the WideResNet of ``model`` / ``student`` cannot be built
    with its ``widths`` (the method's own check, :meth:`igam.models.WideResNet.check_widths`),
    before any data is loaded."""
    from igam.models import WideResNet

    for section in ("model", "student"):
        part = cfg.get(section)
        if isinstance(part, Mapping) and "widths" in part:
            try:
                WideResNet.check_widths(part["widths"])
            except ValueError as exc:
                raise ConfigError(f"config key '{section}.widths': {exc}") from None


def check_optional_packages(cfg: Mapping[str, Any]) -> None:
    """MissingDependencyError if the chosen path needs an optional package that is missing:
    ``attack.method: autoattack`` needs ``pyautoattack``."""
    attack = cfg.get("attack")
    if isinstance(attack, Mapping) and attack.get("method") == "autoattack":
        if importlib.util.find_spec("pyautoattack") is None:
            raise MissingDependencyError(
                "attack.method autoattack needs the optional package pyautoattack (official "
                f"AutoAttack); install it with: {AUTOATTACK_INSTALL}")


def check_start(cfg: Mapping[str, Any], *, run_dir: bool = False, checkpoints: tuple = (),
                data: bool = False) -> None:
    """The checks a script asks for, cheapest first; see the module docstring."""
    check_optional_packages(cfg)
    check_model_settings(cfg)
    if run_dir:
        check_run_dir(cfg)
    check_checkpoints(cfg, *checkpoints)
    if data:
        check_data(cfg["data"])
