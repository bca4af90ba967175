"""Class subsets (data.classes / data.num_classes, igam.data.subsets) on the three datasets:
real CIFAR-10 and Tiny-ImageNet subsets ($IGAM_REAL_DATA), synthetic CIFAR-100 files."""

from __future__ import annotations

import numpy as np
import pytest

from igam.data import (
    describe_classes,
    load_cifar10,
    load_dataset,
    load_tinyimagenet,
    resolve_classes,
    select_classes,
)
from igam.data.synthetic import write_synthetic_cifar100
from igam.errors import ConfigError


def check_relabelled(full, sub, classes):
    """``sub`` holds exactly the examples of ``classes`` of ``full``, in their order, with
    original class classes[i] relabelled i."""
    keep = np.flatnonzero(np.isin(full.labels, classes))
    assert len(sub) == len(keep) > 0
    np.testing.assert_array_equal(sub.images, full.images[keep])
    want = np.array([classes.index(c) for c in full.labels[keep]])
    np.testing.assert_array_equal(sub.labels, want)
    assert sub.num_classes == len(classes)
    assert sub.class_names == [full.class_names[c] for c in classes]
    if full.filenames is not None:
        assert sub.filenames == [full.filenames[i] for i in keep]


def test_cifar10_real_subset_in_listed_order(real_data):
    train, test = load_cifar10(real_data / "cifar-10-batches-py")
    classes = resolve_classes({"classes": [7, 2, 9]}, train.num_classes, "cifar10")
    assert classes == [7, 2, 9]
    for full in (train, test):
        sub = select_classes(full, classes)
        check_relabelled(full, sub, classes)
        assert sub.class_names == ["horse", "bird", "truck"]
        assert sub.name == f"{full.name}[classes 7,2,9]"
    assert np.bincount(select_classes(train, classes).labels).tolist() == [500, 500, 500]
    assert len(select_classes(test, classes)) == 300


def test_cifar100_synthetic_subset(tmp_path):
    write_synthetic_cifar100(tmp_path / "cifar-100-python", n_train=400, n_test=200)
    train, test = load_dataset("cifar100", tmp_path)
    classes = resolve_classes({"classes": [99, 0, 42, 17]}, 100, "cifar100")
    for full in (train, test):
        check_relabelled(full, select_classes(full, classes), classes)
    first = resolve_classes({"num_classes": 6}, 100, "cifar100")
    assert first == [0, 1, 2, 3, 4, 5]
    sub = select_classes(test, first)
    check_relabelled(test, sub, first)
    assert sub.name == "cifar100/test[classes 0-5]" and sub.class_names[5] == "class005"


def test_tinyimagenet_real_subset(real_data, tmp_path, monkeypatch):
    monkeypatch.setenv("IGAM_CACHE_DIR", str(tmp_path / "cache"))
    train, val = load_tinyimagenet(real_data / "tiny-imagenet-200")
    classes = resolve_classes({"classes": [199, 0, 57]}, train.num_classes, "tinyimagenet")
    for full in (train, val):
        sub = select_classes(full, classes)
        check_relabelled(full, sub, classes)
        # every selected training image comes from the folder of its wnid
        for name, label in zip(sub.filenames, sub.labels):
            if name.startswith("train/"):
                assert name.split("/")[1] == sub.class_names[label]
    assert len(select_classes(train, classes)) == 60  # 20 training images per class
    assert len(select_classes(val, classes)) == 15  # 5 validation images per class
    assert resolve_classes({"num_classes": 10}, 200, "tinyimagenet") == list(range(10))


def test_all_classes_is_no_subset():
    assert resolve_classes({"classes": [], "num_classes": 0}, 10, "cifar10") is None
    assert resolve_classes({}, 10, "cifar10") is None
    assert resolve_classes({"num_classes": 10}, 10, "cifar10") is None
    assert resolve_classes({"classes": list(range(10))}, 10, "cifar10") is None
    assert resolve_classes({"classes": list(range(9, -1, -1))}, 10, "x") == list(range(9, -1, -1))
    assert describe_classes([]) == "all classes"
    assert describe_classes([0, 1, 2, 3, 7, 9, 8]) == "classes 0-3,7,9,8"
    assert describe_classes([5, 6]) == "classes 5,6"


@pytest.mark.parametrize("data, needles", [
    ({"classes": [0, 10]}, ["'data.classes'", "class 10 is out of range", "0..9"]),
    ({"classes": [-1, 2]}, ["'data.classes'", "class -1 is out of range"]),
    ({"classes": [3, 1, 3]}, ["'data.classes'", "class 3 is listed twice"]),
    ({"classes": [4]}, ["'data.classes'", "at least 2", "data.num_classes"]),
    ({"classes": ["cat", 1]}, ["'data.classes[0]'", "integer", "'cat'"]),
    ({"classes": [1.0, 2]}, ["'data.classes[0]'", "integer"]),
    ({"classes": [True, 2]}, ["'data.classes[0]'", "integer"]),
    ({"num_classes": 11}, ["'data.num_classes'", "2..10", "got 11"]),
    ({"num_classes": -3}, ["'data.num_classes'", "got -3"]),
    ({"num_classes": 1}, ["'data.num_classes'", "got 1"]),
    ({"classes": [1, 2], "num_classes": 2}, ["'data.classes' and 'data.num_classes'",
                                             "only one"]),
])  # fmt: skip
def test_bad_subsets_give_one_line_errors(data, needles):
    with pytest.raises(ConfigError) as e:
        resolve_classes(data, 10, "cifar10")
    msg = str(e.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
