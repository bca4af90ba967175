"""A validation split carved from a CIFAR-10 training set, written in the official layout.

Settings (IGAM's beta and gamma, step counts, ...) must be chosen without looking at the test
set. This module holds out ``per_class`` training images of every class and writes a new
CIFAR-10 python-version folder whose ``test_batch`` is that held-out set and whose
``data_batch_1..5`` hold the remaining training images. Every script then runs on it unchanged
(``--data.root <out>``), and what it reports as "test" accuracy is validation accuracy.

The held-out images are drawn per class with ``numpy.random.default_rng(seed)``, so a split is
reproducible; the original file names are kept (``b'filenames'``) so each image can be traced.
A ``HOLDOUT.json`` beside the batches records the source folder, seed and counts.

CLI:  python -m igam.data.holdout --root datasets/cifar10 --out datasets/cifar10_val --per_class 100
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from igam.data.cifar import load_cifar10, write_cifar10_folder
from igam.data.datasets import PathLike
from igam.errors import ConfigError, IGAMError

MARKER = "HOLDOUT.json"


def write_cifar10_holdout(root: PathLike, out: PathLike, per_class: int, seed: int = 0) -> Path:
    """Split the CIFAR-10 training set at ``root`` into train / validation, written to ``out``.

    Args:
        root: a CIFAR-10 python-version folder (or its parent), read with ``load_cifar10``.
        out: output folder, created; it must be empty or hold an earlier split (``HOLDOUT.json``).
        per_class: held-out images per class (1 .. that class's count - 1).
        seed: seed of the per-class draw.
    Returns ``out``. Its ``test_batch`` holds ``10 * per_class`` held-out images (in their
    original order), ``data_batch_1..5`` the rest (original order, split as evenly as possible).
    """
    train, _ = load_cifar10(root)
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ConfigError(f"{out}: not empty and not a validation split made here ({MARKER})")
    rng = np.random.default_rng(seed)
    held = np.zeros(len(train), dtype=bool)
    for k in range(train.num_classes):
        idx = np.flatnonzero(train.labels == k)
        if not 1 <= per_class < len(idx):
            raise ConfigError(
                f"per_class {per_class}: class {k} has {len(idx)} training images, "
                f"expected 1 <= per_class < {len(idx)}"
            )
        held[rng.choice(idx, size=per_class, replace=False)] = True
    if train.filenames is None:  # the official batches have them; name the others by position
        train.filenames = [f"train_{i:05d}" for i in range(len(train))]
    keep = np.flatnonzero(~held)
    out.mkdir(parents=True, exist_ok=True)
    write_cifar10_folder(out, train.subset(keep), train.subset(np.flatnonzero(held)),
                         test_batch_label="validation batch (held-out training images)")
    record = {
        "source": str(Path(root).expanduser().resolve()),
        "seed": seed,
        "per_class": per_class,
        "n_train": int(len(keep)),
        "n_validation": int(held.sum()),
    }
    (out / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m igam.data.holdout",
        description="Write a CIFAR-10 folder whose test_batch is a held-out part of the "
        "training set (a validation split for choosing settings).",
    )
    p.add_argument("--root", required=True, help="CIFAR-10 python-version folder (or its parent)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--per_class", type=int, default=100, help="held-out images per class")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-class draw")
    args = p.parse_args(argv)
    try:
        out = write_cifar10_holdout(args.root, args.out, args.per_class, args.seed)
    except IGAMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rec = json.loads((out / MARKER).read_text())
    print(f"wrote {rec['n_train']} training / {rec['n_validation']} validation images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
