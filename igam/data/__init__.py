"""Datasets of the IGAM port: loaders, augmentation, batching, synthetic data.

- ``load_dataset(name, root)`` -> ``(train, test)`` ``ArrayDataset``s (uint8 NHWC + int64 labels)
  for 'cifar10', 'cifar100' (fine labels) and 'tinyimagenet' (test = official val split).
- ``TrainBatches`` / ``eval_batches``: float32 NCHW batches in [0, 255] on the device.
- ``resolve_classes`` / ``select_classes``: class subsets (``data.classes``), relabelled 0..k-1.
- ``augment_batch``: pad-2 random crop + horizontal flip, batched on the device.
- ``igam.data.synthetic``: writers of small synthetic datasets in the official file formats.
- ``igam.data.holdout``: a validation split of a CIFAR-10 training set, in the official layout.

Names are imported lazily (PEP 562), so ``python -m igam.data.synthetic`` / ``holdout`` and the
file loaders do not pay for importing torch.
"""

from importlib import import_module

_EXPORTS = {
    "ArrayDataset": "igam.data.datasets",
    "DATASET_NAMES": "igam.data.loaders",
    "canonical_dataset_name": "igam.data.loaders",
    "load_dataset": "igam.data.loaders",
    "load_cifar10": "igam.data.cifar",
    "load_cifar100": "igam.data.cifar",
    "load_tinyimagenet": "igam.data.tinyimagenet",
    "describe_classes": "igam.data.subsets",
    "resolve_classes": "igam.data.subsets",
    "select_classes": "igam.data.subsets",
    "augment_batch": "igam.data.augment",
    "crop_flip": "igam.data.augment",
    "draw_crop_flip_params": "igam.data.augment",
    "TrainBatches": "igam.data.sampler",
    "eval_batches": "igam.data.sampler",
    "to_tensor_images": "igam.data.sampler",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'igam.data' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
