"""igam.data.holdout: a validation split of a CIFAR-10 training set, in the official layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from igam.data.cifar import load_cifar10, read_pickle
from igam.data.holdout import write_cifar10_holdout
from igam.data.synthetic import write_synthetic_cifar10
from igam.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def rows(ds) -> set:
    return {(bytes(img.tobytes()), int(y)) for img, y in zip(ds.images, ds.labels)}


def test_real_split_is_a_disjoint_stratified_partition(real_data, tmp_path):
    out = write_cifar10_holdout(real_data, tmp_path / "val", per_class=100, seed=0)
    full, test = load_cifar10(real_data)
    train, val = load_cifar10(out)
    assert len(train) == 4000 and len(val) == 1000
    assert np.bincount(val.labels, minlength=10).tolist() == [100] * 10
    assert rows(train) | rows(val) == rows(full) and not rows(train) & rows(val)
    assert not rows(val) & rows(test)  # never the official test images
    assert set(train.filenames) | set(val.filenames) == set(full.filenames)
    assert train.class_names == full.class_names
    # the official file format: Python-2 str pickles with the official keys
    batch = read_pickle(out / "test_batch", "a CIFAR batch")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].shape == (1000, 3072) and batch[b"data"].dtype == np.uint8
    rec = json.loads((out / "HOLDOUT.json").read_text())
    assert rec["n_train"] == 4000 and rec["n_validation"] == 1000 and rec["seed"] == 0


def test_split_is_reproducible_and_seeded(tmp_path):
    src = write_synthetic_cifar10(tmp_path / "c10", n_train=60, n_test=10)
    a = load_cifar10(write_cifar10_holdout(src, tmp_path / "a", per_class=2, seed=5))[1]
    b = load_cifar10(write_cifar10_holdout(src, tmp_path / "b", per_class=2, seed=5))[1]
    c = load_cifar10(write_cifar10_holdout(src, tmp_path / "c", per_class=2, seed=6))[1]
    assert a.filenames == b.filenames and np.array_equal(a.images, b.images)
    assert a.filenames != c.filenames
    # rewriting an earlier split in place is allowed (HOLDOUT.json marks it)
    write_cifar10_holdout(src, tmp_path / "a", per_class=3, seed=5)
    assert len(load_cifar10(tmp_path / "a")[1]) == 30


def test_bad_input_is_refused(tmp_path):
    src = write_synthetic_cifar10(tmp_path / "c10", n_train=60, n_test=10)
    with pytest.raises(ConfigError, match="per_class 6: class 0 has 6 training images"):
        write_cifar10_holdout(src, tmp_path / "v", per_class=6)
    with pytest.raises(ConfigError, match="per_class 0"):
        write_cifar10_holdout(src, tmp_path / "v", per_class=0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and not a validation split"):
        write_cifar10_holdout(src, tmp_path / "busy", per_class=1)
    proc = subprocess.run(
        [sys.executable, "-m", "igam.data.holdout", "--root", str(tmp_path / "nowhere"),
         "--out", str(tmp_path / "v")], capture_output=True, text=True, cwd=REPO)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "CIFAR-10 folder not found" in lines[0]
