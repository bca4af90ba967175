"""Class subsets: carve a smaller task out of a dataset (config keys ``data.classes`` and
``data.num_classes``), e.g. CIFAR-10 classes 0-4 as a source task and 5-9 as a disjoint target.

- ``data.classes: [5, 6, 7, 8, 9]``: these original class indices, in this order;
- ``data.num_classes: 5``: the first 5 classes (the same as ``classes: [0, 1, 2, 3, 4]``);
- both empty / 0 (the defaults): every class, labels unchanged.

The selected classes are relabelled 0..k-1 in the listed order (original class
``classes[i]`` becomes label ``i``), so models are built with k outputs. The entry scripts
store the resolved list in ``data.classes`` of the run's config (and so in its checkpoint),
which is how attacks and evaluation find the same subset again.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

import numpy as np

from igam.data.datasets import ArrayDataset
from igam.errors import ConfigError, DataError

MIN_CLASSES = 2  # a softmax over one class has no input gradient: nothing to learn or align


def canonical_class_subset(data_cfg: Mapping[str, Any]) -> dict:
    """The ``data`` section with its class selection written one way: ``classes`` as a list and
    ``num_classes`` 0 (a count k becomes ``[0, ..., k-1]``, also when the list already says
    so). Lets a resumed run compare, and merge, ``--data.num_classes 5`` with the
    ``classes: [0, 1, 2, 3, 4]`` its run folder saved. Selections that contradict each other
    are left for :func:`resolve_classes` to refuse."""
    classes = list(data_cfg.get("classes") or [])
    count = data_cfg.get("num_classes") or 0
    if count and (not classes or classes == list(range(count))):
        classes, count = list(range(count)), 0
    return {**data_cfg, "classes": classes, "num_classes": count}


def resolve_classes(data_cfg: Mapping[str, Any], total: int, dataset: str) -> Optional[List[int]]:
    """The original class indices selected by ``data.classes`` / ``data.num_classes``.

    Args:
        data_cfg: the config's ``data`` section (``classes``: list of ints, ``num_classes``:
            int; missing keys count as empty).
        total: number of classes of the full dataset.
        dataset: its name, for messages.

    Returns None for "every class in its own order" (both keys empty, or a selection that is
    exactly 0..total-1); else the list. Raises ConfigError (one line, naming the key) for
    non-integers, duplicates, indices out of range 0..total-1, counts outside
    MIN_CLASSES..total, and for both keys set at once.
    """
    classes = list(data_cfg.get("classes") or [])
    count = data_cfg.get("num_classes", 0)
    if classes and count:
        raise ConfigError(
            f"config keys 'data.classes' and 'data.num_classes' are both set ({classes} and "
            f"{count}); set only one: a list of class indices, or a count for the first k"
        )
    if count:
        if count < MIN_CLASSES or count > total:
            raise ConfigError(
                f"config key 'data.num_classes': expected a count of {MIN_CLASSES}..{total} "
                f"(the first k of the {total} classes of {dataset}; 0 = all), got {count}"
            )
        classes = list(range(count))
    if not classes:
        return None
    for i, c in enumerate(classes):
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise ConfigError(
                f"config key 'data.classes[{i}]': expected a class index (an integer), got {c!r}"
            )
    classes = [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < total]
    if bad:
        raise ConfigError(
            f"config key 'data.classes': class {bad[0]} is out of range for {dataset} "
            f"(classes 0..{total - 1})"
        )
    seen = set()
    for c in classes:
        if c in seen:
            raise ConfigError(
                f"config key 'data.classes': class {c} is listed twice; list each class once"
            )
        seen.add(c)
    if len(classes) < MIN_CLASSES:
        raise ConfigError(
            f"config key 'data.classes': expected at least {MIN_CLASSES} class indices, got "
            f"{classes} (for the first k classes, set data.num_classes: k)"
        )
    return None if classes == list(range(total)) else classes


def describe_classes(classes: Sequence[int]) -> str:
    """'classes 0-4' for a resolved ``data.classes`` subset, 'all classes' for []."""
    return f"classes {format_classes(classes)}" if classes else "all classes"


def format_classes(classes: Sequence[int]) -> str:
    """Compact text of a class list: ascending runs of 3 or more as ranges, e.g.
    ``[0, 1, 2, 3, 7, 9]`` -> ``'0-3,7,9'``, ``[9, 8]`` -> ``'9,8'``."""
    parts: List[str] = []
    i = 0
    while i < len(classes):
        j = i
        while j + 1 < len(classes) and classes[j + 1] == classes[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{classes[i]}-{classes[j]}")
        else:
            parts.extend(str(c) for c in classes[i : j + 1])
        i = j + 1
    return ",".join(parts)


def select_classes(dataset: ArrayDataset, classes: Optional[Sequence[int]]) -> ArrayDataset:
    """The examples of ``classes`` (original indices, as from :func:`resolve_classes`),
    relabelled: original class ``classes[i]`` -> label ``i``. Examples keep their order;
    ``class_names`` follow the new labels; the name gets the subset, e.g.
    ``cifar10/test[classes 5-9]``. None returns ``dataset`` itself.

    DataError if none of the dataset's examples belongs to the classes.
    """
    if classes is None:
        return dataset
    classes = [int(c) for c in classes]
    lookup = np.full(dataset.num_classes, -1, dtype=np.int64)
    lookup[classes] = np.arange(len(classes))
    new_labels = lookup[dataset.labels]
    idx = np.flatnonzero(new_labels >= 0)
    name = f"{dataset.name}[{describe_classes(classes)}]"
    if idx.size == 0:
        raise DataError(f"{name}: no examples of these classes in {dataset.name}")
    return ArrayDataset(
        images=dataset.images[idx],
        labels=new_labels[idx],
        class_names=[dataset.class_names[c] for c in classes],
        name=name,
        filenames=None if dataset.filenames is None else [dataset.filenames[i] for i in idx],
    )
