"""Benchmark: Tiny-ImageNet loading (JPEG decode vs decoded-array cache) and augmentation.

1. ``igam.data.load_tinyimagenet`` on a Tiny-ImageNet folder, images per second (train + val):
   - ``cold``   no cache file yet: scan + decode every JPEG + write the ``.npz`` cache;
   - ``decode`` ``cache=False``: scan + decode only;
   - ``cached`` the cache exists: scan (file list fingerprint) + read the ``.npz``.
   Repetitions are interleaved (the cache file is deleted before each ``cold`` run). The
   operating system's page cache holds the JPEG files after the warm-up run, so "cold" means
   "not yet decoded by us", not "not yet read from disk". The data is the real subset at
   ``$IGAM_REAL_DATA/tiny-imagenet-200`` (the tests' real-image folder, README "Two commands"),
   or ``--data PATH``, or ``--data synthetic`` (written to a temporary folder with
   ``igam.data.synthetic``). ``IGAM_CACHE_DIR`` points at a temporary folder for the run, and a
   writable data folder is first copied there, so nothing is ever written next to your data.
2. Augmentation (pad 2, random crop, random horizontal flip) of a float batch (B, 3, H, W) in
   [0, 255], images per second:
   - ``augment_batch``   ``igam.data.augment_batch``: the whole batch at once on its device;
   - ``torchvision``     ``transforms.RandomCrop(H, padding=2)`` + ``RandomHorizontalFlip()``
     applied per image in a Python loop on tensors (on the same device), then stacked;
   - ``TrainBatches``    ``next()`` of ``igam.data.TrainBatches`` (index, uint8 -> float,
     augment_batch) on an in-memory uint8 set of the same size.
   For 32x32 (CIFAR) and 64x64 (Tiny-ImageNet) images.

    python -m bench.bench_data                  # real subset if found, else synthetic
    python -m bench.bench_data --data synthetic --batch_size 256 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional

if __package__ in (None, ""):  # run as a file: make ``bench`` and ``igam`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import common  # noqa: E402
from igam.data import TrainBatches, augment_batch, load_tinyimagenet  # noqa: E402
from igam.data.datasets import ArrayDataset  # noqa: E402
from igam.data.synthetic import write_synthetic_tinyimagenet  # noqa: E402
from igam.data.tinyimagenet import cache_paths, find_root  # noqa: E402

try:
    from torchvision import transforms
except ImportError:  # torchvision is a runtime dependency, but keep the rest usable
    transforms = None


def parse_args(argv=None) -> argparse.Namespace:
    p = common.make_parser("bench_data", __doc__, batch_size=128, reps=4, units=1)
    p.add_argument("--data", default="auto",
                   help="auto (real subset if found, else synthetic) | synthetic | PATH of a "
                        "tiny-imagenet-200 folder")
    p.add_argument("--synthetic_classes", type=int, default=20,
                   help="classes of the synthetic Tiny-ImageNet (default: 20)")
    p.add_argument("--synthetic_per_class", type=int, default=50,
                   help="synthetic training images per class (default: 50; val: 1/5 of it)")
    p.add_argument("--aug_reps", type=int, default=20,
                   help="timed repetitions of each augmentation (default: 20)")
    p.add_argument("--sizes", default="32,64", help="image sides for augmentation (32,64)")
    p.add_argument("--skip_decode", action="store_true", help="augmentation only")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Decode vs cache


def _real_tinyimagenet() -> Optional[Path]:
    env = os.environ.get("IGAM_REAL_DATA")
    cand = Path(env) / "tiny-imagenet-200" if env else None
    return cand if cand is not None and (cand / "train").is_dir() else None


def _writable(path: Path) -> bool:
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(path, os.W_OK)


@contextlib.contextmanager
def dataset_folder(args, tmp: Path) -> Iterator[tuple]:
    """(folder, description) of the Tiny-ImageNet data to decode; never writable user data."""
    choice = args.data
    src = None
    if choice == "auto":
        src = _real_tinyimagenet()
    elif choice != "synthetic":
        src = find_root(choice)
    if src is None:
        root = write_synthetic_tinyimagenet(
            tmp / "synthetic-tiny-imagenet", n_train_per_class=args.synthetic_per_class,
            n_val_per_class=max(1, args.synthetic_per_class // 5),
            num_classes=args.synthetic_classes, seed=args.seed, n_test=1)
        yield root, (f"synthetic Tiny-ImageNet ({args.synthetic_classes} classes, "
                     f"{args.synthetic_per_class}/class)")
        return
    if _writable(src) or cache_paths(src)[0].exists():
        # the cache would be written (or is already) next to the data: work on a copy
        dst = tmp / "copy" / src.name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".igam_cache_*"))
        yield dst, f"{src} (copied to a temporary folder)"
        return
    yield src, str(src)


def _remove_caches(root: Path, tmp: Path) -> None:
    """Delete the decoded-array cache of ``root`` - only files inside our temporary folder."""
    for path in cache_paths(root):
        if path.is_file() and path.resolve().is_relative_to(tmp.resolve()):
            path.unlink()


def bench_decode(args, device) -> dict:
    with tempfile.TemporaryDirectory(prefix="igam_bench_data_") as tmpdir:
        tmp = Path(tmpdir)
        saved = os.environ.get("IGAM_CACHE_DIR")
        os.environ["IGAM_CACHE_DIR"] = str(tmp / "cache")
        try:
            # the loader's tqdm bars (>= 2000 images) would flood the output: silence stderr
            with dataset_folder(args, tmp) as (root, description), \
                    open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
                root = find_root(root)
                train, val = load_tinyimagenet(root, cache=False)  # warm-up: OS page cache
                n = len(train) + len(val)

                def cold():
                    _remove_caches(root, tmp)
                    load_tinyimagenet(root, cache=True)

                def cached():
                    load_tinyimagenet(root, cache=True)

                fns = {"cold": cold, "decode": lambda: load_tinyimagenet(root, cache=False),
                       "cached": cached}
                times = common.interleave(fns, args.reps, 0, device)
                cache_file = next((p for p in cache_paths(root) if p.is_file()), None)
                cache_mb = cache_file.stat().st_size / common.MB if cache_file else None
                c_train, c_val = load_tinyimagenet(root, cache=True)  # served by the cache
                same = bool(np.array_equal(c_train.images, train.images)
                            and np.array_equal(c_val.images, val.images)
                            and np.array_equal(c_train.labels, train.labels))
        finally:
            if saved is None:
                os.environ.pop("IGAM_CACHE_DIR", None)
            else:
                os.environ["IGAM_CACHE_DIR"] = saved
    timing = {k: common.summarize(v) for k, v in times.items()}
    return {"data": description, "n_images": n, "cache_mb": cache_mb,
            "cached_equals_decoded": same, "timing_s": timing,
            "samples_s": times,
            "images_per_s": {k: n / t["median"] for k, t in timing.items()},
            "speedup_cached_over_cold": timing["cold"]["median"] / timing["cached"]["median"]}


# ----------------------------------------------------------------------------------------------
# Augmentation


def bench_augment(args, device, size: int) -> dict:
    b = args.batch_size
    g = torch.Generator().manual_seed(args.seed)
    x = (torch.rand(b, 3, size, size, generator=g) * 255.0).round().to(device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    fns = {"augment_batch": lambda: augment_batch(x, generator=gen)}
    if transforms is not None:
        per_image = transforms.Compose([transforms.RandomCrop(size, padding=2),
                                        transforms.RandomHorizontalFlip()])
        fns["torchvision"] = lambda: torch.stack([per_image(img) for img in x])
    rng = np.random.default_rng(args.seed)
    n = max(4 * b, 512)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    ds = ArrayDataset(images, rng.integers(0, 10, size=n), [str(i) for i in range(10)], "random")
    batches = TrainBatches(ds, b, device, seed=args.seed)
    fns["TrainBatches"] = lambda: next(batches)
    times = common.interleave(fns, args.aug_reps, args.warmup, device)
    timing = {k: common.summarize(v) for k, v in times.items()}
    out = {"size": size, "batch_size": b, "timing_s": timing,
           "images_per_s": {k: b / t["median"] for k, t in timing.items()}}
    if "torchvision" in timing:
        out["speedup_over_torchvision"] = (timing["torchvision"]["median"]
                                           / timing["augment_batch"]["median"])
    return out


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = common.setup(args)
    env = common.environment(device)
    print(f"bench_data: {common.describe_env(env)}")
    decode = None if args.skip_decode else bench_decode(args, device)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    augment = [bench_augment(args, device, s) for s in sizes]

    if decode is not None:
        print(f"\nTiny-ImageNet loading: {decode['data']}, {decode['n_images']} images "
              f"(train + val), cache file {decode['cache_mb'] or 0:.1f} MiB, "
              f"{args.reps} interleaved reps")
        rows = [{"what": {"cold": "cold (decode + write cache)", "decode": "decode only",
                          "cached": "cached (read .npz)"}[k],
                 "ms": decode["timing_s"][k]["median"], "img_s": decode["images_per_s"][k]}
                for k in ("cold", "decode", "cached")]
        print(common.format_table(rows, [("what", "load", ""), ("ms", "median ms", common.ms),
                                         ("img_s", "images/s", ",.0f")]))
        print(f"cached is {decode['speedup_cached_over_cold']:.1f}x faster than cold; cached "
              f"arrays equal the decoded ones: {decode['cached_equals_decoded']}")
    print(f"\nAugmentation (pad 2 + random crop + flip), batch {args.batch_size}, "
          f"{args.aug_reps} interleaved reps, device {device}")
    rows = []
    for a in augment:
        for k in a["timing_s"]:
            rows.append({"what": f"{k} {a['size']}x{a['size']}",
                         "ms": a["timing_s"][k]["median"], "img_s": a["images_per_s"][k]})
    print(common.format_table(rows, [("what", "augmentation", ""),
                                     ("ms", "median ms/batch", lambda v: f"{1000 * v:.2f}"),
                                     ("img_s", "images/s", ",.0f")]))
    for a in augment:
        if "speedup_over_torchvision" in a:
            r = a["speedup_over_torchvision"]
            print(f"{a['size']}x{a['size']}: augment_batch / per-image torchvision speed = "
                  f"{r:.2f}x ({'faster' if r >= 1 else 'SLOWER'})")
    env["load_average_end"] = common.load_average()
    result = {"benchmark": "data", "environment": env,
              "settings": {k: v for k, v in vars(args).items() if k not in ("out_dir", "tag")},
              "decode": decode, "augment": augment}
    common.write_result(args.out_dir, "data", device, result, args.tag)
    return result


if __name__ == "__main__":
    main()
