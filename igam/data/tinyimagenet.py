"""Tiny-ImageNet-200 from its JPEG folders, with a cache of the decoded arrays.

Accepted layouts under ``root`` (``root`` may also be the parent of ``tiny-imagenet-200/``):

- train: ``train/<wnid>/images/*.JPEG`` for every wnid of ``wnids.txt`` (if ``wnids.txt`` is
  missing, the sub-folders of ``train/`` are the classes).
- val, official download: ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``
  (lines ``file<TAB>wnid<TAB>x0 y0 x1 y1``);
- val, re-arranged (what the original code globbed): ``val/images/<wnid>/*.JPEG``.

Class index = position of the wnid in the SORTED wnid list. [fix] The original used the
unsorted order of ``pathlib.glob`` over ``train/``, which depends on the file system; sorting
makes the labels reproducible (and equals the usual ImageFolder order).

Images must be 64x64; grayscale (mode L) and other modes are converted to RGB (grayscale is
replicated to 3 equal channels, like the original). Examples are ordered by class, then by
file name (natural order), for both splits and both val layouts.

Decoding 110k JPEGs takes a while, so the decoded uint8 arrays are cached in an uncompressed
``.npz``: in ``$IGAM_CACHE_DIR`` whenever it is set (file named after a hash of ``root``; the
data folder is then never written); else ``root/.igam_cache_v1.npz`` if ``root`` is writable,
else in ``~/.cache/igam``; if none can be written, nothing is cached. The cache stores a
fingerprint of the file list (relative paths, sizes, mtimes), so an edited dataset is decoded
again. It is written atomically (temp file + os.replace).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from igam.data.datasets import ArrayDataset, PathLike
from igam.errors import DataError

IMAGE_SIZE = 64
CACHE_VERSION = 1
CACHE_NAME = f".igam_cache_v{CACHE_VERSION}.npz"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
DOWNLOAD = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
LAYOUT = (
    "Tiny-ImageNet-200 layout: wnids.txt, train/<wnid>/images/*.JPEG, and val/images/*.JPEG "
    "with val/val_annotations.txt (or val/images/<wnid>/*.JPEG)"
)


def _natural_key(name: str):
    """'val_10.JPEG' sorts after 'val_9.JPEG'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _list_images(folder: Path) -> List[os.DirEntry]:
    """Image files directly in ``folder``, in natural name order."""
    with os.scandir(folder) as it:
        entries = [e for e in it if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file()]
    return sorted(entries, key=lambda e: _natural_key(e.name))


@dataclass
class _Plan:
    """Everything found by scanning the folders, before decoding."""

    root: Path
    wnids: List[str]
    train: List[Tuple[str, int]] = field(default_factory=list)  # (relative path, label)
    val: List[Tuple[str, int]] = field(default_factory=list)
    stat_lines: List[str] = field(default_factory=list)  # for the fingerprint

    def add(self, split: str, entry: os.DirEntry, label: int) -> None:
        rel = os.path.relpath(entry.path, self.root).replace(os.sep, "/")
        st = entry.stat()  # follows symlinks: a re-linked file changes the fingerprint
        self.stat_lines.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}")
        (self.train if split == "train" else self.val).append((rel, label))

    def add_file(self, path: Path) -> None:
        st = path.stat()
        rel = os.path.relpath(path, self.root).replace(os.sep, "/")
        self.stat_lines.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}")

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"igam-tinyimagenet-cache-v{CACHE_VERSION}\n".encode())
        h.update(("\n".join(self.wnids) + "\n").encode())
        h.update("\n".join(self.stat_lines).encode())
        return h.hexdigest()


def find_root(root: PathLike) -> Path:
    """The Tiny-ImageNet folder: ``root`` or ``root/tiny-imagenet-200``; DataError if absent."""
    root = Path(root).expanduser()
    get = f"; download {DOWNLOAD} and unzip it there (docs/pipeline.md, Datasets)"
    if not root.is_dir():
        raise DataError(f"Tiny-ImageNet folder not found: {root} (expected the {LAYOUT}){get}")
    if (root / "train").is_dir():
        return root
    if (root / "tiny-imagenet-200" / "train").is_dir():
        return root / "tiny-imagenet-200"
    raise DataError(f"missing folder {root / 'train'} (expected the {LAYOUT}){get}")


def _read_wnids(root: Path) -> List[str]:
    path = root / "wnids.txt"
    if path.is_file():
        try:
            wnids = [w.strip() for w in path.read_text().splitlines() if w.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: unreadable ({exc}); expected one wnid per line") from None
    else:  # fall back to the class folders of train/
        wnids = [e.name for e in os.scandir(root / "train") if e.is_dir()]
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{path}: duplicate wnids; expected each class once")
    if len(wnids) < 2:
        raise DataError(f"{path}: {len(wnids)} classes found, expected at least 2 wnids")
    return sorted(wnids)  # [fix] sorted, not file-system order


def _read_val_annotations(path: Path, index: Dict[str, int]) -> Dict[str, int]:
    """val_annotations.txt -> {file name: class index}."""
    out: Dict[str, int] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 2:
            raise DataError(f"{path}: line {lineno} malformed, expected 'file<TAB>wnid<TAB>box'")
        if parts[1] not in index:
            raise DataError(f"{path}: line {lineno}: wnid {parts[1]} is not in wnids.txt")
        out[parts[0]] = index[parts[1]]
    return out


def scan(root: PathLike) -> _Plan:
    """List the train/val files and their labels (no decoding); DataError on a bad layout."""
    root = find_root(root)
    wnids = _read_wnids(root)
    index = {w: i for i, w in enumerate(wnids)}
    plan = _Plan(root=root, wnids=wnids)
    if (root / "wnids.txt").is_file():
        plan.add_file(root / "wnids.txt")

    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            raise DataError(f"missing folder {folder} (expected the training images of {wnid})")
        entries = _list_images(folder)
        if not entries:
            raise DataError(f"empty class folder {folder} (expected {wnid}_<k>.JPEG images)")
        for e in entries:
            plan.add("train", e, label)

    val_images = root / "val" / "images"
    if not val_images.is_dir():
        raise DataError(f"missing folder {val_images} (expected the {LAYOUT})")
    direct = _list_images(val_images)
    if direct:  # official layout: labels from val_annotations.txt
        ann_path = root / "val" / "val_annotations.txt"
        if not ann_path.is_file():
            raise DataError(
                f"missing file {ann_path} (expected it to label the images in {val_images})"
            )
        plan.add_file(ann_path)
        ann = _read_val_annotations(ann_path, index)
        labelled = []
        for e in direct:
            if e.name not in ann:
                raise DataError(f"{ann_path}: no line for {e.name} (expected one per val image)")
            labelled.append((ann[e.name], _natural_key(e.name), e))
        for label, _, e in sorted(labelled, key=lambda t: (t[0], t[1])):
            plan.add("val", e, label)
    else:  # re-arranged layout: val/images/<wnid>/*.JPEG
        subdirs = sorted(e.name for e in os.scandir(val_images) if e.is_dir())
        for name in subdirs:
            if name not in index:
                raise DataError(f"{val_images / name}: class folder {name} is not in wnids.txt")
        for name in sorted(subdirs, key=index.__getitem__):
            entries = _list_images(val_images / name)
            if not entries:
                raise DataError(f"empty class folder {val_images / name} (expected JPEG images)")
            for e in entries:
                plan.add("val", e, index[name])
    if not plan.val:
        raise DataError(
            f"no images in {val_images} (expected val_<k>.JPEG files or <wnid>/ sub-folders)"
        )
    return plan


def decode_image(path: Path) -> np.ndarray:
    """One image file -> uint8 (64, 64, 3) RGB; grayscale is replicated to 3 channels."""
    try:
        with Image.open(path) as im:
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise DataError(
                    f"{path}: image is {im.size[0]}x{im.size[1]}, expected "
                    f"{IMAGE_SIZE}x{IMAGE_SIZE} (Tiny-ImageNet)"
                )
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for corrupt/truncated data
        text = " ".join(str(exc).split())
        raise DataError(f"{path}: cannot decode image ({text}); expected a 64x64 JPEG") from None
    return arr


def _decode_all(root: Path, items: List[Tuple[str, int]], desc: str) -> np.ndarray:
    out = np.empty((len(items), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    show = len(items) >= 2000  # no progress for tiny sets (tests)
    bar = show and sys.stderr.isatty()  # a log file gets a line per 5000 images, no bar
    for i, (rel, _) in enumerate(tqdm(items, desc=desc, unit="img", disable=not bar)):
        out[i] = decode_image(root / rel)
        if show and not bar and ((i + 1) % 5000 == 0 or i + 1 == len(items)):
            print(f"{desc}: {i + 1}/{len(items)} images", file=sys.stderr, flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# Cache


def _has_write_bits(path: Path) -> bool:
    """Writable for us AND not marked read-only (root bypasses permission bits, but a folder
    with no write bits, like a shared read-only data folder, must not be written into)."""
    try:
        return bool(path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and (
            os.access(path, os.W_OK)
        )
    except OSError:
        return False


def fallback_cache_dir() -> Path:
    """``$IGAM_CACHE_DIR`` if set, else ``~/.cache/igam``."""
    env = os.environ.get("IGAM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "igam"


def cache_paths(root: Path) -> List[Path]:
    """Candidate cache files, in order of preference: ``$IGAM_CACHE_DIR`` alone when it is set;
    else next to the data, then ``~/.cache/igam``."""
    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    fallback = fallback_cache_dir() / f"tinyimagenet_{tag}_v{CACHE_VERSION}.npz"
    if os.environ.get("IGAM_CACHE_DIR"):
        return [fallback]
    return [root / CACHE_NAME, fallback]


def _read_cache(path: Path, fingerprint: str, train_labels: np.ndarray, val_labels: np.ndarray):
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint:
                return None
            arrays = {k: z[k] for k in ("train_images", "train_labels", "val_images", "val_labels")}
    except Exception:  # missing, truncated or foreign file: just decode again
        return None
    if not (
        np.array_equal(arrays["train_labels"], train_labels)
        and np.array_equal(arrays["val_labels"], val_labels)
        and arrays["train_images"].shape == (len(train_labels), IMAGE_SIZE, IMAGE_SIZE, 3)
        and arrays["val_images"].shape == (len(val_labels), IMAGE_SIZE, IMAGE_SIZE, 3)
        and arrays["train_images"].dtype == np.uint8
        and arrays["val_images"].dtype == np.uint8
    ):
        return None
    return arrays


def _write_cache(root: Path, fingerprint: str, arrays: Dict[str, np.ndarray]) -> Optional[Path]:
    *primary, fallback = cache_paths(root)  # no primary when $IGAM_CACHE_DIR is set
    targets = [p for p in primary if _has_write_bits(root)]
    targets.append(fallback)
    for target in targets:
        tmp = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, fingerprint=np.array(fingerprint), **arrays)
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; others may share the data folder
            os.replace(tmp, target)
            return target
        except OSError:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    warnings.warn(
        f"could not cache the decoded Tiny-ImageNet arrays (tried {', '.join(map(str, targets))})",
        stacklevel=3,
    )
    return None


def load_tinyimagenet(root: PathLike, cache: bool = True) -> Tuple[ArrayDataset, ArrayDataset]:
    """Tiny-ImageNet ``(train, val)`` as uint8 (N, 64, 64, 3) arrays with int64 labels.

    Args:
        root: the ``tiny-imagenet-200`` folder (or its parent).
        cache: read/write the decoded-array cache described in the module docstring.
    """
    plan = scan(root)
    root_dir = plan.root
    fingerprint = plan.fingerprint()
    train_labels = np.array([lab for _, lab in plan.train], dtype=np.int64)
    val_labels = np.array([lab for _, lab in plan.val], dtype=np.int64)
    arrays = None
    if cache:
        for path in cache_paths(root_dir):
            arrays = _read_cache(path, fingerprint, train_labels, val_labels)
            if arrays is not None:
                break
    if arrays is None:
        arrays = {
            "train_images": _decode_all(root_dir, plan.train, "decode Tiny-ImageNet train"),
            "train_labels": train_labels,
            "val_images": _decode_all(root_dir, plan.val, "decode Tiny-ImageNet val"),
            "val_labels": val_labels,
        }
        if cache:
            _write_cache(root_dir, fingerprint, arrays)
    train = ArrayDataset(
        arrays["train_images"],
        arrays["train_labels"],
        list(plan.wnids),
        "tinyimagenet/train",
        [rel for rel, _ in plan.train],
    )
    val = ArrayDataset(
        arrays["val_images"],
        arrays["val_labels"],
        list(plan.wnids),
        "tinyimagenet/val",
        [rel for rel, _ in plan.val],
    )
    return train, val
