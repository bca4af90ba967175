"""In-memory image datasets (the name -> loader dispatch is :mod:`igam.data.loaders`).

Every loader of this package returns ``ArrayDataset`` objects: the decoded images as one uint8
NHWC array (the layout of the files and of the original code) plus int64 labels. Conversion to
float NCHW tensors happens later, on the training device (see ``igam.data.sampler``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

import numpy as np

PathLike = Union[str, Path]



@dataclass
class ArrayDataset:
    """A labelled image set held in memory.

    Attributes:
        images: uint8 array (N, H, W, 3), NHWC, pixel values 0..255.
        labels: int64 array (N,), values in 0..num_classes-1.
        class_names: one name per class; ``labels`` index into it.
        name: short description, e.g. ``"cifar10/train"``.
        filenames: optional per-image source names (file paths relative to the dataset root,
            or the names stored in the CIFAR pickles); for tracing an image back to its file.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: List[str]
    name: str = ""
    filenames: Optional[List[str]] = None

    def __post_init__(self) -> None:
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8:
            raise ValueError(f"{self.name}: images must be a uint8 numpy array")
        if self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(
                f"{self.name}: images must have shape (N, H, W, 3), got {self.images.shape}"
            )
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"{self.name}: labels must have shape ({self.images.shape[0]},), got {labels.shape}"
            )
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{self.name}: labels must be integers, got {labels.dtype}")
        self.labels = labels.astype(np.int64, copy=False)
        self.class_names = [str(c) for c in self.class_names]
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(f"{self.name}: labels must lie in 0..{self.num_classes - 1}")
        if self.filenames is not None and len(self.filenames) != len(self):
            raise ValueError(f"{self.name}: {len(self.filenames)} filenames for {len(self)} images")

    @property
    def num_classes(self) -> int:
        """Number of classes (= len(class_names))."""
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        """Side length H of the (square) images, e.g. 32 for CIFAR, 64 for Tiny-ImageNet."""
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices, name: Optional[str] = None) -> ArrayDataset:
        """A new dataset with the examples at ``indices`` (any numpy index: array, slice)."""
        idx = np.arange(len(self))[indices]
        return ArrayDataset(
            images=self.images[idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            name=name if name is not None else self.name,
            filenames=None if self.filenames is None else [self.filenames[i] for i in idx],
        )
