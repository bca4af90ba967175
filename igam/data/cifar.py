"""CIFAR-10 / CIFAR-100 "python version" pickles: reading (and writing, for synthetic data).

Layout (Krizhevsky's official files, as read by the original cifar10_input.py /
cifar100_input.py):

- CIFAR-10 folder (``cifar-10-batches-py``): ``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
  ``batches.meta``. Each batch is a pickled dict with ``b'data'`` (uint8 (N, 3072): the 1024 red
  values, then green, then blue, each plane row-major 32x32), ``b'labels'`` (N ints),
  ``b'batch_label'``, ``b'filenames'``. The meta file has ``b'label_names'``.
- CIFAR-100 folder (``cifar-100-python``): ``train``, ``test``, ``meta``; batches carry
  ``b'fine_labels'`` and ``b'coarse_labels'``; meta has ``b'fine_label_names'``. The port uses the
  fine labels, as the original.

The official files are Python-2 pickles, read with ``encoding='bytes'``. Any N is accepted (the
original hard-coded 10000 per batch). Unpickling is restricted to the few numpy globals such
files contain, so a stray or hostile file cannot run code; anything wrong raises ``DataError``
with a one-line message naming the file.
"""

from __future__ import annotations

import importlib
import io
import pickle
import struct
import warnings
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from igam.data.datasets import ArrayDataset, PathLike
from igam.errors import DataError

CIFAR10_LAYOUT = "CIFAR-10 python version: data_batch_1..5, test_batch, batches.meta"
CIFAR100_LAYOUT = "CIFAR-100 python version: train, test, meta"
CIFAR_DOWNLOAD = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))

_NUMPY2 = int(np.__version__.split(".")[0]) >= 2
# The only globals an official CIFAR pickle references (numpy arrays and dtypes), plus
# _codecs.encode, which Python-3 protocol-2 pickles use for bytes objects.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals found in CIFAR pickles."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        if _NUMPY2 and module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core") :]  # avoid the deprecation shim
        return getattr(importlib.import_module(module), name)


def read_pickle(path: Path, expected: str) -> Any:
    """Unpickle ``path`` (``encoding='bytes'``, like the original loaders).

    Raises DataError naming the file if it is missing, truncated, or not a pickle;
    ``expected`` says what the file should be (used in the message).
    """
    if not path.is_file():
        raise DataError(f"missing file {path} (expected {expected})")
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # unpickling garbage can raise almost any exception type
        raise DataError(
            f"{path}: truncated or not a pickle ({_one_line(exc)}); expected {expected}"
        ) from None


def _get(d: dict, key: str, path: Path, expected: str) -> Any:
    """``d[b'key']`` (official bytes keys) or ``d['key']`` (str keys), else DataError."""
    for k in (key.encode("ascii"), key):
        if k in d:
            return d[k]
    raise DataError(f"{path}: no key b'{key}' in the pickled dict (expected {expected})")


def _decode_names(names: Any, path: Path, key: str) -> List[str]:
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{path}: b'{key}' must be a non-empty list of class names")
    out = []
    for n in names:
        if isinstance(n, bytes):
            n = n.decode("utf-8", errors="replace")
        if not isinstance(n, str):
            raise DataError(f"{path}: b'{key}' must hold byte strings, found {type(n).__name__}")
        out.append(n)
    return out


def _read_batch(
    path: Path, label_key: str, num_classes: int, layout: str
) -> Tuple[np.ndarray, np.ndarray, Optional[List[str]]]:
    """One batch file -> (images uint8 (N,32,32,3), labels int64 (N,), filenames or None)."""
    expected = f"a pickled dict with b'data' and b'{label_key}' ({layout})"
    d = read_pickle(path, expected)
    if not isinstance(d, dict):
        raise DataError(f"{path}: pickle holds a {type(d).__name__}, expected {expected}")
    data = _get(d, "data", path, expected)
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3072
    ):
        got = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DataError(f"{path}: b'data' is a {got}, expected a uint8 array of shape (N, 3072)")
    raw_labels = _get(d, label_key, path, expected)
    try:
        labels = np.asarray(raw_labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{path}: b'{label_key}' is not a list of integers") from None
    n = data.shape[0]
    if labels.shape[0] != n:
        raise DataError(f"{path}: {labels.shape[0]} labels for {n} images in b'data'")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels[(labels < 0) | (labels >= num_classes)][0])
        raise DataError(f"{path}: label {bad} out of range 0..{num_classes - 1}")
    images = np.ascontiguousarray(data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
    filenames = None
    raw_names = d.get(b"filenames", d.get("filenames"))
    if isinstance(raw_names, (list, tuple)) and len(raw_names) == n:
        filenames = [
            x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x)
            for x in raw_names
        ]
    return images, labels, filenames


def find_data_dir(root: PathLike, marker: str, subdirs: Sequence[str], layout: str, what: str):
    """The folder holding ``marker``: ``root`` itself, or ``root/<subdir>`` (e.g. the extracted
    ``cifar-10-batches-py`` inside a datasets folder). DataError if neither exists, naming
    the download page."""
    root = Path(root).expanduser()
    get = (f"; download the python version from {CIFAR_DOWNLOAD} and extract it there "
           "(docs/pipeline.md, Datasets)")
    if not root.is_dir():
        raise DataError(f"{what} folder not found: {root} (expected {layout}){get}")
    if (root / marker).exists():
        return root
    for sub in subdirs:
        if (root / sub / marker).exists():
            return root / sub
    raise DataError(f"missing file {root / marker} (expected {layout}){get}")


def _load(
    root: PathLike,
    *,
    dataset: str,
    layout: str,
    subdirs: Sequence[str],
    train_files: Sequence[str],
    test_file: str,
    meta_file: str,
    names_key: str,
    label_key: str,
) -> Tuple[ArrayDataset, ArrayDataset]:
    what = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[dataset]
    folder = find_data_dir(root, train_files[0], subdirs, layout, what)
    meta_path = folder / meta_file
    meta = read_pickle(meta_path, f"a pickled dict with b'{names_key}' ({layout})")
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: pickle holds a {type(meta).__name__}, expected a dict")
    class_names = _decode_names(
        _get(meta, names_key, meta_path, f"b'{names_key}'"), meta_path, names_key
    )

    def load_split(files: Sequence[str], split: str) -> ArrayDataset:
        parts = [_read_batch(folder / f, label_key, len(class_names), layout) for f in files]
        images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        if len(images) == 0:
            raise DataError(f"{folder}: the {split} files hold no images (expected {layout})")
        filenames: Optional[List[str]] = None
        if all(p[2] is not None for p in parts):
            filenames = [name for p in parts for name in p[2]]
        return ArrayDataset(images, labels, list(class_names), f"{dataset}/{split}", filenames)

    return load_split(train_files, "train"), load_split([test_file], "test")


def load_cifar10(root: PathLike) -> Tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10 ``(train, test)`` from the python-version folder ``root`` (or its parent).

    train: data_batch_1..5 concatenated in order; test: test_batch. Images uint8 (N,32,32,3),
    labels int64 in 0..9, class names from batches.meta (b'label_names').
    """
    return _load(
        root,
        dataset="cifar10",
        layout=CIFAR10_LAYOUT,
        subdirs=("cifar-10-batches-py",),
        train_files=CIFAR10_TRAIN_FILES,
        test_file="test_batch",
        meta_file="batches.meta",
        names_key="label_names",
        label_key="labels",
    )


def load_cifar100(root: PathLike) -> Tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-100 ``(train, test)`` from the python-version folder ``root`` (or its parent).

    Uses the 100 fine labels (b'fine_labels') and names (meta b'fine_label_names').
    """
    return _load(
        root,
        dataset="cifar100",
        layout=CIFAR100_LAYOUT,
        subdirs=("cifar-100-python",),
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        names_key="fine_label_names",
        label_key="fine_labels",
    )


# ---------------------------------------------------------------------------------------------
# Writing (used by igam.data.synthetic and by tests)


class _Py2StrPickler(pickle._Pickler):  # the pure-Python pickler lets us override opcodes
    """Protocol-2 pickler that writes ``bytes`` as Python-2 ``str`` (SHORT_BINSTRING/BINSTRING)
    and numpy globals under ``numpy.core``, byte-for-byte in the style of the official
    Python-2 CIFAR pickles. They load with ``encoding='bytes'`` (bytes keys) or ``'latin1'``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str

    def save_global(self, obj: Any, name: Optional[str] = None) -> None:
        name = name or getattr(obj, "__qualname__", None) or obj.__name__
        module = pickle.whichmodule(obj, name)
        if module.startswith("numpy._core"):
            module = "numpy.core" + module[len("numpy._core") :]
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))
        self.memoize(obj)


def dumps_py2(obj: Any) -> bytes:
    """Pickle ``obj`` like the official Python-2 CIFAR files (protocol 2, str opcodes)."""
    buf = io.BytesIO()
    _Py2StrPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def write_cifar_batch(path: PathLike, obj: dict) -> None:
    """Write one CIFAR pickle (a dict with bytes keys) to ``path``."""
    Path(path).write_bytes(dumps_py2(obj))


def images_to_cifar_rows(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 32, 32, 3) NHWC -> uint8 (N, 3072) rows of R, G, B planes (official b'data')."""
    images = np.asarray(images, dtype=np.uint8)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(images.shape[0], -1))


def write_cifar10_folder(
    root: PathLike,
    train: ArrayDataset,
    test: ArrayDataset,
    test_batch_label: str = "testing batch 1 of 1",
) -> None:
    """Write ``train`` / ``test`` into the existing folder ``root`` in the CIFAR-10 python
    layout: ``data_batch_1..5`` (``train`` in order, split as evenly as possible),
    ``test_batch`` and ``batches.meta`` (the class names of ``train``). Both datasets need
    ``filenames`` (stored as b'filenames')."""
    root = Path(root)

    def write(path: Path, label: str, ds: ArrayDataset) -> None:
        if ds.filenames is None:
            raise ValueError(f"{ds.name}: a CIFAR batch needs file names")
        write_cifar_batch(
            path,
            {
                b"batch_label": label.encode(),
                b"labels": [int(v) for v in ds.labels],
                b"data": images_to_cifar_rows(ds.images),
                b"filenames": [name.encode() for name in ds.filenames],
            },
        )

    parts = np.array_split(np.arange(len(train)), len(CIFAR10_TRAIN_FILES))
    for i, (fname, idx) in enumerate(zip(CIFAR10_TRAIN_FILES, parts), 1):
        write(root / fname, f"training batch {i} of {len(parts)}", train.subset(idx))
    write(root / "test_batch", test_batch_label, test)
    write_cifar_batch(
        root / "batches.meta",
        {
            b"num_cases_per_batch": len(parts[0]),
            b"label_names": [n.encode() for n in train.class_names],
            b"num_vis": 3072,
        },
    )
