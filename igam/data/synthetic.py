"""Small synthetic datasets written in the OFFICIAL on-disk formats (for demos and tests).

The files are exactly what the loaders of ``igam.data`` (and the original code) read:
CIFAR-10/100 python-version pickles (Python-2 style, bytes keys) and the Tiny-ImageNet-200
folder layout (JPEG folders, wnids.txt, words.txt, val_annotations.txt, boxes files).

Why this design: the demo must show that robustness TRANSFERS from a robust teacher (trained
adversarially on synthetic Tiny-ImageNet) to a student on synthetic CIFAR. Each class therefore
carries two features, both perfectly predictive of the class:

- a ROBUST feature: a smooth, low-frequency colour template (a few Gaussian colour blobs plus a
  tint), peak amplitude ``robust_amp`` grey levels (default 40, far above the attack eps 8).
  Templates come from a bank shared by all datasets, seeded by ``family_seed``: class k of
  every dataset uses template k, sampled at the dataset's resolution (the 32x32 CIFAR template
  is the 64x64 Tiny-ImageNet template of the same class resized). A robust source model's
  features thus carry over to the target;
- a NON-ROBUST feature: a pixel-scale random +-1 texture (a ``nonrobust_period`` x
  ``nonrobust_period`` tile, zero mean per channel, repeated over the image) of small amplitude
  ``nonrobust_amp`` (default 6, below eps 8), so an eps-8 attack can erase or fake it. Its
  tiles are drawn independently per dataset (from ``seed``), so it does NOT transfer.

Per-image nuisance: a random background grey level, a random colour offset, a random template
amplitude (+-``robust_jitter``), a random shift of the whole picture by up to ``max_shift``
pixels (at 32x32; doubled at 64x64) and Gaussian pixel noise ``noise_std``. Pixels are rounded
and clipped to uint8. Because the texture tile is zero-mean, a ``nonrobust_period`` average pool
removes it exactly: the low-frequency part of an image carries only the robust feature.

The style used is stored in ``root/SYNTHETIC.json`` for traceability.

CLI: ``python -m igam.data.synthetic --dataset cifar10|cifar100|tinyimagenet --out DIR
[--n_train N] [--n_test N] [--n_train_per_class N] [--n_val_per_class N] [--num_classes K]
[--val_layout official|rearranged] [--seed S] [--robust_amp A ...]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from igam.data.cifar import images_to_cifar_rows, write_cifar10_folder, write_cifar_batch
from igam.data.datasets import ArrayDataset, PathLike
from igam.errors import ConfigError, IGAMError

MARKER = "SYNTHETIC.json"
FORMAT_VERSION = 1
# Per-dataset stream tags: the non-robust textures and the images differ across datasets.
_TAGS = {"cifar10": 10, "cifar100": 100, "tinyimagenet": 200}


@dataclass(frozen=True)
class SyntheticStyle:
    """Appearance parameters of the synthetic data (all have defaults; pass as keywords).

    Attributes:
        family_seed: seed of the shared bank of robust class templates. Source and target
            datasets must use the same value for robustness to transfer.
        robust_amp: peak amplitude (grey levels) of the smooth class template.
        robust_jitter: per-image relative template amplitude jitter (uniform +-).
        template_blobs: Gaussian colour blobs per class template.
        blob_sigma_min, blob_sigma_max: blob width range, as a fraction of the image side.
        template_saturation: the blob field f is passed through tanh(s * f / std(f)), which
            spreads the template over the whole image (bigger robust margins between classes)
            while keeping it smooth; 0 keeps f as is.
        nonrobust_amp: amplitude (grey levels) of the pixel-scale +-1 class texture.
        nonrobust_period: side (pixels) of the repeated texture tile.
        noise_std: std of the i.i.d. Gaussian pixel noise.
        background_min, background_max: range of the random per-image background grey level.
        colour_jitter: std of a random per-image, per-channel colour offset.
        max_shift: largest random shift of the picture, in pixels at 32x32 (x2 at 64x64).
    """

    family_seed: int = 1234
    robust_amp: float = 40.0
    robust_jitter: float = 0.2
    template_blobs: int = 6
    blob_sigma_min: float = 0.15
    blob_sigma_max: float = 0.35
    template_saturation: float = 1.5
    nonrobust_amp: float = 6.0
    nonrobust_period: int = 4
    noise_std: float = 8.0
    background_min: float = 64.0
    background_max: float = 192.0
    colour_jitter: float = 8.0
    max_shift: int = 2

    @classmethod
    def from_kwargs(cls, **style) -> SyntheticStyle:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(style) - names)
        if unknown:
            raise ConfigError(
                f"unknown synthetic style parameter(s) {', '.join(unknown)} "
                f"(expected some of: {', '.join(sorted(names))})"
            )
        out = cls(**style)
        if out.nonrobust_period < 2 or out.nonrobust_period % 2:
            raise ConfigError(f"nonrobust_period must be even and >= 2, got {out.nonrobust_period}")
        if out.max_shift < 0 or out.template_blobs < 1:
            raise ConfigError("max_shift must be >= 0 and template_blobs >= 1")
        return out


# ---------------------------------------------------------------------------------------------
# Features


def _blob_params(k: int, style: SyntheticStyle):
    rng = np.random.default_rng([style.family_seed, 0x7E3, k])
    nb = style.template_blobs
    centres = rng.uniform(0.15, 0.85, size=(nb, 2))
    sigmas = rng.uniform(style.blob_sigma_min, style.blob_sigma_max, size=nb)
    colours = rng.normal(size=(nb, 3))
    tint = 0.3 * rng.normal(size=3)
    return centres, sigmas, colours, tint


def _eval_template(params, coords: np.ndarray) -> np.ndarray:
    """Template function at pixel-centre coordinates ``coords`` (in [0,1] units) -> (L, L, 3)."""
    centres, sigmas, colours, tint = params
    v, u = np.meshgrid(coords, coords, indexing="ij")  # v: rows, u: columns
    out = np.broadcast_to(tint, (len(coords), len(coords), 3)).astype(np.float64)
    for (cy, cx), s, c in zip(centres, sigmas, colours):
        g = np.exp(-((v - cy) ** 2 + (u - cx) ** 2) / (2.0 * s * s))
        out = out + g[..., None] * c
    return out


def robust_template(k: int, size: int, style: SyntheticStyle, margin: int = 0) -> np.ndarray:
    """Smooth template of class ``k`` of the shared bank, float32 (size+2m, size+2m, 3).

    The blob field f is optionally saturated, t = tanh(s * f / std(f)), then scaled so that
    max |t| = 1 over the image; multiply by ``robust_amp``. Normalisers are computed on a fixed
    64x64 reference grid, and the same continuous function is sampled at every resolution, so
    size 32 equals size 64 resized. ``margin`` extra pixels on each side allow shifted crops.
    """
    params = _blob_params(k, style)
    sat = style.template_saturation

    def field(coords: np.ndarray, f_std: float) -> np.ndarray:
        f = _eval_template(params, coords)
        return np.tanh(sat * f / f_std) if sat > 0 else f

    ref_f = _eval_template(params, (np.arange(64) + 0.5) / 64)
    f_std = max(float(ref_f.std()), 1e-6)
    ref = field((np.arange(64) + 0.5) / 64, f_std)
    scale = 1.0 / max(float(np.abs(ref).max()), 1e-6)
    coords = (np.arange(size + 2 * margin) - margin + 0.5) / size
    return (scale * field(coords, f_std)).astype(np.float32)


def nonrobust_tile(k: int, dataset: str, seed: int, style: SyntheticStyle) -> np.ndarray:
    """+-1 texture tile of class ``k`` for ``dataset``: float32 (p, p, 3), zero mean per channel
    (half the entries of each channel are +1)."""
    p = style.nonrobust_period
    rng = np.random.default_rng([seed, _TAGS[dataset], 0xB0B, k])
    half = np.r_[np.ones(p * p // 2), -np.ones(p * p // 2)]
    tile = np.stack([rng.permutation(half).reshape(p, p) for _ in range(3)], axis=-1)
    return tile.astype(np.float32)


def render_class(
    k: int,
    n: int,
    size: int,
    dataset: str,
    seed: int,
    split: int,
    style: SyntheticStyle,
) -> np.ndarray:
    """``n`` images of class ``k`` at ``size`` x ``size``: uint8 (n, size, size, 3).

    Deterministic in (seed, dataset, split, k): independent of the other classes' counts.
    """
    m = style.max_shift * max(1, size // 32)
    canvas = size + 2 * m
    template = robust_template(k, size, style, margin=m)
    tile = nonrobust_tile(k, dataset, seed, style)
    reps = -(-canvas // tile.shape[0])
    texture = np.tile(tile, (reps, reps, 1))[:canvas, :canvas]
    rng = np.random.default_rng([seed, _TAGS[dataset], split, k])
    dy = rng.integers(0, 2 * m + 1, size=n)
    dx = rng.integers(0, 2 * m + 1, size=n)
    # windows[i, j] = canvas[i:i+size, j:j+size] (as (3, size, size))
    t_win = sliding_window_view(template, (size, size), axis=(0, 1))
    p_win = sliding_window_view(texture, (size, size), axis=(0, 1))
    t_crop = t_win[dy, dx].transpose(0, 2, 3, 1)  # (n, size, size, 3)
    p_crop = p_win[dy, dx].transpose(0, 2, 3, 1)
    background = rng.uniform(style.background_min, style.background_max, size=(n, 1, 1, 1))
    colour = rng.normal(0.0, style.colour_jitter, size=(n, 1, 1, 3))
    amp = style.robust_amp * (1.0 + rng.uniform(-1, 1, size=(n, 1, 1, 1)) * style.robust_jitter)
    noise = rng.normal(0.0, style.noise_std, size=(n, size, size, 3))
    img = background + colour + amp * t_crop + style.nonrobust_amp * p_crop + noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_split(
    labels: np.ndarray, size: int, dataset: str, seed: int, split: int, style: SyntheticStyle
) -> np.ndarray:
    """Images for the given label sequence: uint8 (N, size, size, 3)."""
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        out[idx] = render_class(int(k), len(idx), size, dataset, seed, split, style)
    return out


def balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels, class counts differing by at most one, in random order."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Writers


def _prepare_root(root: PathLike) -> Path:
    """Create ``root``; an existing non-empty folder is only reused if we wrote it before, an
    existing file never."""
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise IGAMError(f"refusing to write synthetic data to {root}: it exists and is not a "
                        "folder (--out names the folder to create)")
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            raise IGAMError(
                f"refusing to write synthetic data into {root}: the folder is not empty and "
                f"has no {MARKER} (expected an empty or previously generated folder)"
            )
        for child in root.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a file on the way, no permission
        raise IGAMError(f"cannot create {root}: {exc.strerror or exc}") from None
    return root


def _write_marker(root: Path, dataset: str, seed: int, style: SyntheticStyle, **info) -> None:
    record = {
        "generator": "igam.data.synthetic",
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "seed": seed,
        **info,
        "style": dataclasses.asdict(style),
    }
    (root / MARKER).write_text(json.dumps(record, indent=2) + "\n")


def write_synthetic_cifar10(
    root: PathLike, n_train: int = 5000, n_test: int = 1000, seed: int = 0, **style
) -> Path:
    """Write a synthetic CIFAR-10 python-version folder at ``root`` (created if needed).

    Files: data_batch_1..5 (``n_train`` images split as evenly as possible), test_batch
    (``n_test``), batches.meta, SYNTHETIC.json. Classes are balanced (counts differ by <= 1).
    ``style``: keyword overrides of ``SyntheticStyle``. Returns ``root``.
    """
    st = SyntheticStyle.from_kwargs(**style)
    if n_train < 5 or n_test < 1:
        raise ConfigError("synthetic CIFAR-10 needs n_train >= 5 and n_test >= 1")
    root = _prepare_root(root)
    names = [f"class{k:02d}" for k in range(10)]
    rng = np.random.default_rng([seed, _TAGS["cifar10"], 0x1AB])
    splits = {}
    for split, split_id, n in (("train", 0, n_train), ("test", 1, n_test)):
        labels = balanced_labels(n, 10, rng)
        splits[split] = ArrayDataset(
            render_split(labels, 32, "cifar10", seed, split_id, st), labels, names,
            filenames=[f"synthetic_{split}_{j:05d}_{names[y]}.png" for j, y in enumerate(labels)],
        )
    write_cifar10_folder(root, splits["train"], splits["test"])
    _write_marker(root, "cifar10", seed, st, n_train=n_train, n_test=n_test, num_classes=10)
    return root


def write_synthetic_cifar100(
    root: PathLike, n_train: int = 5000, n_test: int = 1000, seed: int = 0, **style
) -> Path:
    """Write a synthetic CIFAR-100 python-version folder at ``root``: train, test, meta
    (100 fine classes sharing robust templates 0..99 of the bank; coarse label = fine // 5).
    Returns ``root``."""
    st = SyntheticStyle.from_kwargs(**style)
    if n_train < 1 or n_test < 1:
        raise ConfigError("synthetic CIFAR-100 needs n_train >= 1 and n_test >= 1")
    root = _prepare_root(root)
    fine_names = [f"class{k:03d}" for k in range(100)]
    coarse_names = [f"superclass{k:02d}" for k in range(20)]
    rng = np.random.default_rng([seed, _TAGS["cifar100"], 0x1AB])
    for split, split_id, n in (("train", 0, n_train), ("test", 1, n_test)):
        labels = balanced_labels(n, 100, rng)
        images = render_split(labels, 32, "cifar100", seed, split_id, st)
        kind = "training" if split == "train" else "testing"
        write_cifar_batch(
            root / split,
            {
                b"filenames": [
                    f"synthetic_{split}_{j:05d}_{fine_names[labels[j]]}.png".encode()
                    for j in range(n)
                ],
                b"batch_label": f"{kind} batch 1 of 1".encode(),
                b"fine_labels": [int(v) for v in labels],
                b"coarse_labels": [int(v) // 5 for v in labels],
                b"data": images_to_cifar_rows(images),
            },
        )
    write_cifar_batch(
        root / "meta",
        {
            b"fine_label_names": [n.encode() for n in fine_names],
            b"coarse_label_names": [n.encode() for n in coarse_names],
        },
    )
    _write_marker(root, "cifar100", seed, st, n_train=n_train, n_test=n_test, num_classes=100)
    return root


def synthetic_wnids(num_classes: int) -> List[str]:
    """WordNet-like ids whose SORTED order is the class order (class k = k-th smallest)."""
    return [f"n{99000000 + k:08d}" for k in range(num_classes)]


def _save_jpeg(img: np.ndarray, path: Path, quality: int, gray: bool) -> None:
    im = Image.fromarray(img)
    if gray:
        im = im.convert("L")
    # 4:4:4 chroma: keeps the pixel-scale colour texture (4:2:0 would blur it away).
    im.save(path, format="JPEG", quality=quality, subsampling=0)


def write_synthetic_tinyimagenet(
    root: PathLike,
    n_train_per_class: int = 50,
    n_val_per_class: int = 10,
    num_classes: int = 200,
    seed: int = 0,
    val_layout: str = "official",
    n_test: int = 10,
    gray_fraction: float = 0.02,
    jpeg_quality: int = 95,
    **style,
) -> Path:
    """Write a synthetic Tiny-ImageNet-200 folder at ``root`` in the official layout.

    Files: wnids.txt (shuffled order, like the official file), words.txt,
    train/<wnid>/images/<wnid>_<i>.JPEG + train/<wnid>/<wnid>_boxes.txt, val images with
    val/val_annotations.txt, test/images/test_<i>.JPEG (``n_test`` unlabelled), SYNTHETIC.json.

    Args:
        num_classes: number of wnids written (>= 2); class k uses robust template k.
        val_layout: 'official' (val/images/val_<j>.JPEG) or 'rearranged'
            (val/images/<wnid>/val_<j>.JPEG, as the original code expected).
        gray_fraction: fraction of images saved as grayscale JPEGs (the real set has ~1.7%).
        jpeg_quality: JPEG quality (4:4:4 chroma), high so the class features survive.
        style: keyword overrides of ``SyntheticStyle``.
    Returns ``root``.
    """
    st = SyntheticStyle.from_kwargs(**style)
    if num_classes < 2 or n_train_per_class < 1 or n_val_per_class < 1:
        raise ConfigError("synthetic Tiny-ImageNet needs >= 2 classes and >= 1 image per class")
    if val_layout not in ("official", "rearranged"):
        raise ConfigError(f"val_layout must be 'official' or 'rearranged', got '{val_layout}'")
    root = _prepare_root(root)
    tag = _TAGS["tinyimagenet"]
    wnids = synthetic_wnids(num_classes)
    rng = np.random.default_rng([seed, tag, 0x1AB])
    (root / "wnids.txt").write_text("".join(w + "\n" for w in rng.permutation(wnids)))
    (root / "words.txt").write_text(
        "".join(f"{w}\tsynthetic class {k}\n" for k, w in enumerate(wnids))
    )
    box = "\t0\t0\t63\t63"
    for k, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        images = render_class(k, n_train_per_class, 64, "tinyimagenet", seed, 0, st)
        gray = rng.random(n_train_per_class) < gray_fraction
        lines = []
        for i, img in enumerate(images):
            name = f"{wnid}_{i}.JPEG"
            _save_jpeg(img, folder / name, jpeg_quality, bool(gray[i]))
            lines.append(name + box + "\n")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(lines))

    labels = balanced_labels(num_classes * n_val_per_class, num_classes, rng)
    images = render_split(labels, 64, "tinyimagenet", seed, 1, st)
    gray = rng.random(len(labels)) < gray_fraction
    val_dir = root / "val" / "images"
    val_dir.mkdir(parents=True)
    lines = []
    for j, (img, k) in enumerate(zip(images, labels)):
        name = f"val_{j}.JPEG"
        folder = val_dir if val_layout == "official" else val_dir / wnids[k]
        folder.mkdir(exist_ok=True)
        _save_jpeg(img, folder / name, jpeg_quality, bool(gray[j]))
        lines.append(f"{name}\t{wnids[k]}{box}\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))

    test_dir = root / "test" / "images"
    test_dir.mkdir(parents=True)
    test_labels = rng.integers(0, num_classes, size=n_test)
    for i, img in enumerate(render_split(test_labels, 64, "tinyimagenet", seed, 2, st)):
        _save_jpeg(img, test_dir / f"test_{i}.JPEG", jpeg_quality, False)

    _write_marker(
        root,
        "tinyimagenet",
        seed,
        st,
        n_train_per_class=n_train_per_class,
        n_val_per_class=n_val_per_class,
        num_classes=num_classes,
        val_layout=val_layout,
        n_test=n_test,
        gray_fraction=gray_fraction,
        jpeg_quality=jpeg_quality,
    )
    return root


# ---------------------------------------------------------------------------------------------
# CLI


def _parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m igam.data.synthetic",
        description="Write a synthetic dataset in the official file format (see module doc).",
    )
    p.add_argument("--dataset", required=True, choices=sorted(_TAGS))
    p.add_argument(
        "--out",
        required=True,
        help="output folder (created; must be empty or previously generated)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_train", type=int, default=5000, help="CIFAR: training images")
    p.add_argument("--n_test", type=int, default=1000, help="CIFAR: test images")
    p.add_argument("--n_train_per_class", type=int, default=50, help="Tiny-ImageNet")
    p.add_argument("--n_val_per_class", type=int, default=10, help="Tiny-ImageNet")
    p.add_argument("--num_classes", type=int, default=200, help="Tiny-ImageNet")
    p.add_argument("--val_layout", default="official", choices=("official", "rearranged"))
    style = p.add_argument_group("style (defaults of SyntheticStyle)")
    for f in dataclasses.fields(SyntheticStyle):
        style.add_argument(
            f"--{f.name}", type=type(f.default), default=None, help=f"default {f.default}"
        )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse_args(argv)
    style: Dict[str, object] = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(SyntheticStyle)
        if getattr(args, f.name) is not None
    }
    try:
        if args.dataset == "cifar10":
            root = write_synthetic_cifar10(args.out, args.n_train, args.n_test, args.seed, **style)
        elif args.dataset == "cifar100":
            root = write_synthetic_cifar100(args.out, args.n_train, args.n_test, args.seed, **style)
        else:
            root = write_synthetic_tinyimagenet(
                args.out,
                args.n_train_per_class,
                args.n_val_per_class,
                num_classes=args.num_classes,
                seed=args.seed,
                val_layout=args.val_layout,
                **style,
            )
    except IGAMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote synthetic {args.dataset} to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
