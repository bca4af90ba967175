"""TensorBoard event files of a training run (optional: the ``tensorboard`` package,
``pip install -r requirements-tensorboard.txt``).

Config key ``tensorboard``: ``auto`` writes them when the package is installed and does
nothing otherwise, ``on`` requires it (:func:`check_available`, called before anything else
happens), ``off`` never writes. Like the original, which wrote ``model_dir/train`` and
``model_dir/eval``, two writers: ``<run>/tensorboard/train`` gets every training log record
(every ``log_every`` steps) and ``<run>/tensorboard/eval`` the periodic evaluation
(``watch.every``). Tags are the original's where the quantity is the same (:data:`TAGS`, by
checkpoint kind), the metrics.jsonl name otherwise; plus ``learning rate`` and
``images per second``. A resumed run drops the events after its checkpoint's step
(``purge_step``), as metrics.jsonl does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from igam.errors import MissingDependencyError

INSTALL = "pip install -r requirements-tensorboard.txt"
FOLDER = "tensorboard"

# metrics.jsonl name -> the original's tag (train writer), by checkpoint kind. The original's
# IGAM scripts (train_igam*.py) and Madry's train.py (adversarial training); finetuning logged
# no summaries. The original's gradient-norm tags (model_xent_logit_grad_norm, ...) have no
# counterpart: the port does not compute those norms.
TAGS: dict[str, dict[str, str]] = {
    "igam": {"accuracy": "C accuracy", "disc_accuracy": "D accuracy", "xent": "C xent",
             "disc_xent": "D xent", "loss": "total C loss"},
    "classifier": {"accuracy": "accuracy adv train", "xent": "xent adv train"},
    "teacher": {},
}
# The periodic evaluation (eval writer); the original's eval 'C accuracy' was the clean
# accuracy of the IGAM student on held-out images, as watch_clean_accuracy is.
EVAL_TAGS: dict[str, dict[str, str]] = {
    "igam": {"watch_clean_accuracy": "C accuracy"},
    "classifier": {}, "teacher": {},
}
COMMON_TAGS = {"lr": "learning rate", "images_per_s": "images per second",
               "steps_per_s": "steps per second",
               "watch_clean_accuracy": "clean accuracy", "watch_robust_accuracy": "PGD accuracy"}


def _summary_writer():
    """SummaryWriter, or None when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def check_available(mode: str) -> None:
    """MissingDependencyError (one line) if ``mode`` is ``on`` and the package is missing."""
    if mode == "on" and _summary_writer() is None:
        raise MissingDependencyError(f"tensorboard: on needs the tensorboard package: {INSTALL}")


def tag(kind: str, name: str, eval_: bool = False) -> str:
    table = (EVAL_TAGS if eval_ else TAGS).get(kind, {})
    return table.get(name) or COMMON_TAGS.get(name, name)


class TensorBoardLogger:
    """The train and eval writers of one run; :meth:`open` returns None when nothing is to
    be written."""

    def __init__(self, writer_cls, run_dir: Path, kind: str, purge_step: int | None):
        root = Path(run_dir) / FOLDER
        self.kind = kind
        self.train = writer_cls(log_dir=str(root / "train"), purge_step=purge_step)
        self.eval = writer_cls(log_dir=str(root / "eval"), purge_step=purge_step)

    @classmethod
    def open(cls, mode: str, run_dir: Path, kind: str, start: int = 0):
        if mode == "off":
            return None
        writer_cls = _summary_writer()
        if writer_cls is None:
            check_available(mode)
            return None
        return cls(writer_cls, run_dir, kind, start or None)

    def _write(self, writer, step: int, metrics: Mapping[str, Any], eval_: bool) -> None:
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            writer.add_scalar(tag(self.kind, name, eval_), float(value), step)
        writer.flush()

    def log_train(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._write(self.train, step, metrics, False)

    def log_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._write(self.eval, step, {k: v for k, v in metrics.items()
                                      if k not in ("watch_n", "watch_pgd_steps")}, True)

    def close(self) -> None:
        self.train.close()
        self.eval.close()
