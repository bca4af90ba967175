"""Tests of igam.data: loaders (real subsets + bad files), cache, augmentation, batching."""

from __future__ import annotations

import io
import os
import pickle
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import igam.data.tinyimagenet as tin
from igam.data import (
    ArrayDataset,
    TrainBatches,
    augment_batch,
    crop_flip,
    eval_batches,
    load_cifar10,
    load_cifar100,
    load_dataset,
    load_tinyimagenet,
    to_tensor_images,
)
from igam.data.cifar import dumps_py2, write_cifar_batch
from igam.data.synthetic import (
    write_synthetic_cifar10,
    write_synthetic_cifar100,
    write_synthetic_tinyimagenet,
)
from igam.errors import CheckpointError, ConfigError, DataError

CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


@pytest.fixture(scope="module")
def cifar10_real(real_data):
    return load_cifar10(real_data / "cifar-10-batches-py")


@pytest.fixture(scope="module")
def tiny_real(real_data, tmp_path_factory):
    """Real Tiny-ImageNet subset, first load (decodes; cache goes to a temp IGAM_CACHE_DIR)."""
    cache_dir = tmp_path_factory.mktemp("igam_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IGAM_CACHE_DIR", str(cache_dir))
        train, val = load_tinyimagenet(real_data / "tiny-imagenet-200")
    return train, val, cache_dir


def _one_line_error(excinfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------------
# Real CIFAR-10 subset


def test_cifar10_real_counts_shapes_names(cifar10_real):
    train, test = cifar10_real
    assert train.images.shape == (5000, 32, 32, 3) and test.images.shape == (1000, 32, 32, 3)
    assert train.images.dtype == np.uint8 and test.images.dtype == np.uint8
    assert train.labels.dtype == np.int64 and test.labels.dtype == np.int64
    assert np.bincount(train.labels, minlength=10).tolist() == [500] * 10
    assert np.bincount(test.labels, minlength=10).tolist() == [100] * 10
    assert train.class_names == CIFAR10_NAMES and test.class_names == CIFAR10_NAMES
    assert train.num_classes == 10 and len(train) == 5000


def test_cifar10_real_known_pixels_and_labels(cifar10_real, real_data):
    """The exact copies of official images keep their official labels and pixels."""
    train, test = cifar10_real
    pos = {name: i for i, name in enumerate(train.filenames)}
    first20 = [pos[f"cifar10_train_{k:05d}_exact.png"] for k in range(20)]
    assert train.labels[first20].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3, 4, 7, 7, 2, 9, 9, 9,
                                              3, 2, 6]  # fmt: skip
    i0 = test.filenames.index("cifar10_test_00000_exact.png")
    assert test.images[i0, 0, :8, 0].tolist() == [158, 159, 165, 166, 160, 156, 162, 159]
    assert test.labels[i0] == 3  # the first official test image is a cat
    # NHWC conversion: pixel (row 0, col 0) = element 0 / 1024 / 2048 of the b'data' row.
    with open(real_data / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"][i0]
    assert test.images[i0, 0, 0].tolist() == [raw[0], raw[1024], raw[2048]]
    assert test.images[i0, 1, 2, 0] == raw[32 + 2]


def test_load_dataset_dispatch(real_data):
    train, test = load_dataset("CIFAR-10", real_data)  # parent folder + alias
    assert len(train) == 5000 and train.name == "cifar10/train" and test.name == "cifar10/test"
    with pytest.raises(ConfigError) as e:
        load_dataset("mnist", real_data)
    _one_line_error(e, "mnist", "cifar10")


# ---------------------------------------------------------------------------------------------
# Real Tiny-ImageNet subset


def test_tinyimagenet_real(tiny_real, real_data):
    train, val, cache_dir = tiny_real
    root = real_data / "tiny-imagenet-200"
    wnids = [w for w in (root / "wnids.txt").read_text().split()]
    assert len(wnids) == 200 and wnids != sorted(wnids)  # the official file is not sorted
    assert train.class_names == sorted(wnids) and val.class_names == sorted(wnids)
    assert train.images.shape == (4000, 64, 64, 3) and val.images.shape == (1000, 64, 64, 3)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert np.bincount(train.labels, minlength=200).tolist() == [20] * 200
    assert np.bincount(val.labels, minlength=200).tolist() == [5] * 200

    # label = index of the file's wnid in the sorted list; pixels = PIL decode of the file
    for i in (0, 1234, 3999):
        wnid = train.filenames[i].split("/")[1]
        assert train.labels[i] == sorted(wnids).index(wnid)
        ref = np.asarray(Image.open(root / train.filenames[i]).convert("RGB"))
        assert np.array_equal(train.images[i], ref)
    ann = dict(line.split()[:2] for line in (root / "val/val_annotations.txt").read_text()
               .splitlines())  # fmt: skip
    for i in (0, 500, 999):
        name = val.filenames[i].split("/")[-1]
        assert val.labels[i] == sorted(wnids).index(ann[name])

    # grayscale files (70 train + 18 val in the real subset) come out as 3 equal channels
    for ds, expected in ((train, 70), (val, 18)):
        gray = [i for i, f in enumerate(ds.filenames) if Image.open(root / f).mode == "L"]
        assert len(gray) == expected
        g = ds.images[gray]
        assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 1], g[..., 2])

    # the real-data folder may have no write bits: nothing written there, cache in IGAM_CACHE_DIR
    assert not (root / tin.CACHE_NAME).exists()
    assert len(list(cache_dir.glob("tinyimagenet_*.npz"))) == 1


def test_tinyimagenet_real_second_load_uses_cache(tiny_real, real_data, monkeypatch):
    train, val, cache_dir = tiny_real
    monkeypatch.setenv("IGAM_CACHE_DIR", str(cache_dir))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a JPEG although the cache is valid")

    monkeypatch.setattr(Image, "open", no_decoding)
    train2, val2 = load_tinyimagenet(real_data / "tiny-imagenet-200")
    assert np.array_equal(train.images, train2.images)
    assert np.array_equal(train.labels, train2.labels)
    assert np.array_equal(val.images, val2.images) and np.array_equal(val.labels, val2.labels)
    assert train2.filenames == train.filenames


def test_tinyimagenet_real_rearranged_val_layout(tiny_real, real_data, tmp_path):
    """val/images/<wnid>/*.JPEG (the layout the original expected) gives the same data."""
    _, val, _ = tiny_real
    src = real_data / "tiny-imagenet-200"
    root = tmp_path / "tiny-imagenet-200"
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").symlink_to(src / "wnids.txt")
    (root / "train").symlink_to(src / "train", target_is_directory=True)
    for line in (src / "val/val_annotations.txt").read_text().splitlines():
        name, wnid = line.split()[:2]
        (root / "val/images" / wnid).mkdir(exist_ok=True)
        (root / "val/images" / wnid / name).symlink_to(src / "val/images" / name)
    _, val2 = load_tinyimagenet(tmp_path, cache=False)  # parent folder is accepted too

    def multiset(ds):
        return Counter((int(y), x.tobytes()) for x, y in zip(ds.images, ds.labels))

    assert multiset(val2) == multiset(val)
    assert np.array_equal(val2.images, val.images)  # same order: by class, then file name
    assert [f.split("/")[-1] for f in val2.filenames] == [f.split("/")[-1] for f in val.filenames]


# ---------------------------------------------------------------------------------------------
# Cache behaviour (synthetic Tiny-ImageNet, writable)


def _tiny_synth(path: Path, **kw) -> Path:
    args = dict(n_train_per_class=3, n_val_per_class=2, num_classes=3, n_test=1)
    args.update(kw)
    return write_synthetic_tinyimagenet(path, **args)


def test_tinyimagenet_cache_next_to_data_and_invalidation(tmp_path, monkeypatch):
    root = _tiny_synth(tmp_path / "tin")
    monkeypatch.delenv("IGAM_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    train, _ = load_tinyimagenet(root)
    assert (root / tin.CACHE_NAME).is_file() and not (tmp_path / "home").exists()
    assert not list(root.glob("*.tmp"))  # atomic write leaves no temp file

    # a changed file is decoded again (fingerprint: list + sizes + mtimes)
    target = root / train.filenames[4]
    Image.new("RGB", (64, 64), (10, 200, 30)).save(target, quality=100, subsampling=0)
    os.utime(target, ns=(1, 1))
    train2, _ = load_tinyimagenet(root)
    assert np.abs(train2.images[4].astype(int) - [10, 200, 30]).max() <= 2
    assert np.array_equal(train2.images[:4], train.images[:4])

    # and an added file too
    shutil.copy(target, target.with_name("extra_99.JPEG"))
    train3, _ = load_tinyimagenet(root)
    assert len(train3) == len(train) + 1


def test_tinyimagenet_cache_dir_env_wins_over_writable_root(tmp_path, monkeypatch):
    """$IGAM_CACHE_DIR, when set, is the cache even if the data folder is writable."""
    root = _tiny_synth(tmp_path / "tin")
    cache = tmp_path / "cache"
    monkeypatch.setenv("IGAM_CACHE_DIR", str(cache))
    train, _ = load_tinyimagenet(root)
    assert not (root / tin.CACHE_NAME).exists()
    assert len(list(cache.glob("tinyimagenet_*.npz"))) == 1
    monkeypatch.setattr(Image, "open", lambda *a, **k: 1 / 0)
    train2, _ = load_tinyimagenet(root)  # served from $IGAM_CACHE_DIR
    assert np.array_equal(train.images, train2.images)


def test_tinyimagenet_cache_fallback_dir_for_read_only_root(tmp_path, monkeypatch):
    root = _tiny_synth(tmp_path / "tin")
    fallback = tmp_path / "fallback"
    monkeypatch.setenv("IGAM_CACHE_DIR", str(fallback))
    root.chmod(0o555)
    try:
        train, _ = load_tinyimagenet(root)
        assert not (root / tin.CACHE_NAME).exists()
        assert len(list(fallback.glob("tinyimagenet_*.npz"))) == 1
        monkeypatch.setattr(Image, "open", lambda *a, **k: 1 / 0)
        train2, _ = load_tinyimagenet(root)  # served from the fallback cache
        assert np.array_equal(train.images, train2.images)
        monkeypatch.undo()

        # no writable cache location at all: warn, but load
        blocker = tmp_path / "blocker"
        blocker.write_text("a file, so no directory can be made below it")
        monkeypatch.setenv("IGAM_CACHE_DIR", str(blocker / "cache"))
        with pytest.warns(UserWarning, match="could not cache"):
            train3, _ = load_tinyimagenet(root)
        assert np.array_equal(train.images, train3.images)
    finally:
        root.chmod(0o755)


def test_tinyimagenet_corrupt_cache_is_ignored(tmp_path, monkeypatch):
    monkeypatch.delenv("IGAM_CACHE_DIR", raising=False)  # the cache next to the data
    root = _tiny_synth(tmp_path / "tin")
    train, _ = load_tinyimagenet(root)
    (root / tin.CACHE_NAME).write_bytes(b"not an npz")
    train2, _ = load_tinyimagenet(root)
    assert np.array_equal(train.images, train2.images)
    assert np.load(root / tin.CACHE_NAME)["train_images"].shape == train.images.shape


# ---------------------------------------------------------------------------------------------
# Bad files -> DataError with one line naming the file


def test_missing_folders(tmp_path):
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path / "nope")
    _one_line_error(e, str(tmp_path / "nope"), "data_batch_1..5, test_batch, batches.meta",
                    "https://www.cs.toronto.edu/~kriz/cifar.html")
    with pytest.raises(DataError) as e:
        load_cifar100(tmp_path / "nope")
    _one_line_error(e, str(tmp_path / "nope"), "train, test, meta",
                    "https://www.cs.toronto.edu/~kriz/cifar.html")
    with pytest.raises(DataError) as e:
        load_tinyimagenet(tmp_path / "nope")
    _one_line_error(e, str(tmp_path / "nope"), "wnids.txt", "val_annotations.txt",
                    "http://cs231n.stanford.edu/tiny-imagenet-200.zip")
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path)  # exists, but empty
    _one_line_error(e, "data_batch_1")


@pytest.fixture
def cifar_dir(tmp_path) -> Path:
    return write_synthetic_cifar10(tmp_path / "c10", n_train=20, n_test=10)


def test_cifar_truncated_and_non_pickle(cifar_dir):
    path = cifar_dir / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError) as e:
        load_cifar10(cifar_dir)
    _one_line_error(e, str(path), "truncated or not a pickle")
    write_synthetic_cifar10(cifar_dir, n_train=20, n_test=10)
    (cifar_dir / "test_batch").write_text("hello, I am a text file\n")
    with pytest.raises(DataError) as e:
        load_cifar10(cifar_dir)
    _one_line_error(e, "test_batch", "pickle")


def test_cifar_missing_meta(cifar_dir):
    (cifar_dir / "batches.meta").unlink()
    with pytest.raises(DataError) as e:
        load_cifar10(cifar_dir)
    _one_line_error(e, str(cifar_dir / "batches.meta"), "missing")


@pytest.mark.parametrize(
    "data, labels, needle",
    [
        (np.zeros((4, 3000), np.uint8), [0, 1, 2, 3], "(N, 3072)"),
        (np.zeros((4, 3072), np.float32), [0, 1, 2, 3], "uint8"),
        (np.zeros((4, 32, 32, 3), np.uint8), [0, 1, 2, 3], "(N, 3072)"),
        (np.zeros((4, 3072), np.uint8), [0, 1, 2], "3 labels for 4 images"),
        (np.zeros((4, 3072), np.uint8), [0, 1, 2, 10], "label 10 out of range 0..9"),
        (np.zeros((4, 3072), np.uint8), [0, -1, 2, 3], "label -1 out of range"),
    ],
)
def test_cifar_malformed_batch(cifar_dir, data, labels, needle):
    path = cifar_dir / "data_batch_2"
    write_cifar_batch(path, {b"batch_label": b"x", b"labels": labels, b"data": data})
    with pytest.raises(DataError) as e:
        load_cifar10(cifar_dir)
    _one_line_error(e, str(path), needle)


def test_cifar_missing_key_and_wrong_type(cifar_dir):
    path = cifar_dir / "test_batch"
    write_cifar_batch(path, {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DataError) as e:
        load_cifar10(cifar_dir)
    _one_line_error(e, str(path), "b'labels'")
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(DataError) as e:
        load_cifar10(cifar_dir)
    _one_line_error(e, str(path), "list")


def test_cifar_pickle_cannot_run_code(cifar_dir, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    (cifar_dir / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError) as e:
        load_cifar10(cifar_dir)
    _one_line_error(e, "test_batch", "unexpected object")
    assert not (tmp_path / "pwned").exists()


def test_cifar_accepts_any_n_and_str_keys(tmp_path):
    """Batches of any size; pickles written by Python 3 (str keys, bytes via _codecs) load."""
    root = write_synthetic_cifar10(tmp_path / "c10", n_train=13, n_test=3)
    d = pickle.loads((root / "test_batch").read_bytes(), encoding="latin1")  # str keys
    (root / "test_batch").write_bytes(pickle.dumps(d, protocol=2))
    train, test = load_cifar10(root)
    assert len(train) == 13 and len(test) == 3
    assert test.labels.tolist() == d["labels"]


def test_tinyimagenet_empty_class_folder(tmp_path):
    root = _tiny_synth(tmp_path / "tin")
    wnid = sorted((root / "wnids.txt").read_text().split())[1]
    folder = root / "train" / wnid / "images"
    for f in folder.iterdir():
        f.unlink()
    with pytest.raises(DataError) as e:
        load_tinyimagenet(root, cache=False)
    _one_line_error(e, str(folder), "empty class folder")
    shutil.rmtree(root / "train" / wnid)
    with pytest.raises(DataError) as e:
        load_tinyimagenet(root, cache=False)
    _one_line_error(e, str(folder), "missing folder")


@pytest.mark.parametrize("kind", ["garbage", "truncated", "wrong_size"])
def test_tinyimagenet_bad_jpeg(tmp_path, kind):
    root = _tiny_synth(tmp_path / "tin")
    train, _ = load_tinyimagenet(root, cache=False)
    path = root / train.filenames[2]
    if kind == "garbage":
        path.write_bytes(b"\x00not a jpeg at all" * 10)
        needle = "cannot decode"
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:400])
        needle = "cannot decode"
    else:
        Image.new("RGB", (32, 32)).save(path, format="JPEG")
        needle = "32x32, expected 64x64"
    with pytest.raises(DataError) as e:
        load_tinyimagenet(root, cache=False)
    _one_line_error(e, str(path), needle)


def test_tinyimagenet_val_annotation_problems(tmp_path):
    root = _tiny_synth(tmp_path / "tin")
    ann = root / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines()
    ann.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError) as e:
        load_tinyimagenet(root, cache=False)
    _one_line_error(e, str(ann), "no line for val_0.JPEG")
    ann.write_text("\n".join(lines + ["val_0.JPEG\tn12345678\t0\t0\t1\t1"]) + "\n")
    with pytest.raises(DataError) as e:
        load_tinyimagenet(root, cache=False)
    _one_line_error(e, str(ann), "n12345678 is not in wnids.txt")
    ann.unlink()
    with pytest.raises(DataError) as e:
        load_tinyimagenet(root, cache=False)
    _one_line_error(e, str(ann), "missing file")
    for f in (root / "val" / "images").iterdir():
        f.unlink()
    with pytest.raises(DataError) as e:
        load_tinyimagenet(root, cache=False)
    _one_line_error(e, "no images in", str(root / "val" / "images"))


def test_tinyimagenet_unknown_rearranged_class(tmp_path):
    root = _tiny_synth(tmp_path / "tin", val_layout="rearranged")
    (root / "val" / "images" / "n00000001").mkdir()
    with pytest.raises(DataError) as e:
        load_tinyimagenet(root, cache=False)
    _one_line_error(e, "n00000001", "not in wnids.txt")


# ---------------------------------------------------------------------------------------------
# Augmentation


def _numpy_crop_flip(x: np.ndarray, oy, ox, flips, pad=2) -> np.ndarray:
    """Reference: per image, like tf resize_image_with_crop_or_pad + random_crop + flip."""
    b, c, h, w = x.shape
    out = np.empty_like(x)
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    for i in range(b):
        crop = padded[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w]
        out[i] = crop[:, :, ::-1] if flips[i] else crop
    return out


@pytest.mark.parametrize("size", [32, 64])
def test_augment_matches_numpy_reference(size):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(1, 256, (16, 3, size, size), generator=g).float()  # no zeros inside
    out, (oy, ox, fl) = augment_batch(x, generator=g, return_params=True)
    ref = _numpy_crop_flip(x.numpy(), oy.numpy(), ox.numpy(), fl.numpy())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert np.array_equal(out.numpy(), ref)
    assert torch.equal(crop_flip(x, oy, ox, fl), out)
    assert out.min() >= 0 and out.max() <= 255
    # pixels only move: every output value of image i occurs in padded image i
    for i in range(4):
        allowed = set(np.unique(x[i].numpy())) | {0.0}
        assert set(np.unique(out[i].numpy())) <= allowed
    # zero border exactly where the crop leaves the image
    for i in range(16):
        assert (out[i] == 0).any().item() == (oy[i] != 2 or ox[i] != 2).item()


def test_augment_distribution_and_reproducibility():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    oys, oxs, fls = [], [], []
    for _ in range(2):
        _, (oy, ox, fl) = augment_batch(x.repeat(2000, 1, 1, 1), generator=g, return_params=True)
        oys.append(oy), oxs.append(ox), fls.append(fl)
    oy, ox, fl = torch.cat(oys), torch.cat(oxs), torch.cat(fls)
    assert sorted(oy.unique().tolist()) == [0, 1, 2, 3, 4] == sorted(ox.unique().tolist())
    assert abs(fl.float().mean().item() - 0.5) < 0.03  # 8000 draws
    counts = torch.bincount(oy, minlength=5).float() / len(oy)
    assert (counts - 0.2).abs().max() < 0.03
    assert not torch.equal(oy, ox)  # independent axes
    a = augment_batch(x, generator=torch.Generator().manual_seed(5))
    b = augment_batch(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# Batching


def _indexed_dataset(n: int, size: int = 8) -> ArrayDataset:
    """Image i has pixel value i everywhere (n <= 255), label i % 4."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, 3))
    return ArrayDataset(images.copy(), np.arange(n) % 4, ["a", "b", "c", "d"], "indexed")


def _ids(x: torch.Tensor) -> list:
    return x[:, 0, 3, 3].long().tolist()  # centre pixel survives the pad-2 crop


def test_train_batches_full_batches_and_passes():
    ds = _indexed_dataset(50)
    it = TrainBatches(ds, batch_size=8, device="cpu", seed=1, augment=False)
    assert it.batches_per_pass == 6
    seen = []
    for step in range(18):
        x, y = next(it)
        assert x.shape == (8, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        ids = _ids(x)
        assert y.tolist() == [i % 4 for i in ids]
        seen.append(ids)
        assert it.passes == step // 6 + 1
    for p in range(3):  # within a pass: 48 distinct samples; the 2 left over are skipped
        ids = sum(seen[6 * p : 6 * p + 6], [])
        assert len(set(ids)) == 48
    assert sum(seen[:6], []) != sum(seen[6:12], [])  # a fresh permutation per pass


def test_train_batches_augments_on_device():
    ds = _indexed_dataset(20, size=16)
    x, _ = next(TrainBatches(ds, 10, "cpu", seed=0, augment=True))
    assert (x == 0).any()  # padding visible in some crops
    assert x.max() <= 255 and x.min() >= 0


def test_train_batches_exact_resume():
    ds = _indexed_dataset(30)
    a = TrainBatches(ds, batch_size=7, device="cpu", seed=5, augment=True)
    for _ in range(6):  # crosses a pass boundary (4 batches per pass)
        next(a)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # as inside a checkpoint
    expected = [next(a) for _ in range(9)]
    b = TrainBatches(ds, batch_size=7, device="cpu", seed=999, augment=True)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    got = [next(b) for _ in range(9)]
    for (xa, ya), (xb, yb) in zip(expected, got):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = TrainBatches(ds, batch_size=7, device="cpu", seed=5, augment=True)
    assert not torch.equal(next(c)[0], expected[0][0])  # a fresh iterator differs

    with pytest.raises(CheckpointError):
        TrainBatches(ds, batch_size=6, device="cpu").load_state_dict(a.state_dict())
    with pytest.raises(CheckpointError):
        b.load_state_dict({"n": 30})


def test_train_batches_two_ranks_disjoint_shards():
    ds = _indexed_dataset(64)
    r0 = TrainBatches(ds, batch_size=5, device="cpu", seed=3, augment=False, rank=0, world_size=2)
    r1 = TrainBatches(ds, batch_size=5, device="cpu", seed=3, augment=False, rank=1, world_size=2)
    single = TrainBatches(ds, batch_size=10, device="cpu", seed=3, augment=False)
    for _ in range(14):  # 6 global batches per pass: crosses two pass boundaries
        a, b, g = _ids(next(r0)[0]), _ids(next(r1)[0]), _ids(next(single)[0])
        assert not set(a) & set(b)
        assert a + b == g  # rank r gets slice r of the same global batch
    aug0 = TrainBatches(ds, 5, "cpu", seed=3, rank=0, world_size=2)
    aug1 = TrainBatches(ds, 5, "cpu", seed=3, rank=1, world_size=2)
    x0, x1 = next(aug0)[0], next(aug1)[0]
    assert not torch.equal(x0 == 0, x1 == 0)  # augmentation differs across ranks


def test_train_batches_config_errors():
    ds = _indexed_dataset(10)
    with pytest.raises(ConfigError) as e:
        TrainBatches(ds, batch_size=6, device="cpu", world_size=2)
    _one_line_error(e, "exceeds the 10 training examples")
    with pytest.raises(ConfigError):
        TrainBatches(ds, batch_size=2, device="cpu", rank=2, world_size=2)


def test_eval_batches_cover_every_example_once():
    ds = _indexed_dataset(50)
    batches = list(eval_batches(ds, 16, "cpu"))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    ids = sum((_ids(x) for x, _ in batches), [])
    assert ids == list(range(50))
    assert torch.cat([y for _, y in batches]).tolist() == ds.labels.tolist()
    x = batches[0][0]
    assert x.dtype == torch.float32 and x.shape == (16, 3, 8, 8) and x.is_contiguous()


def test_to_tensor_images_layout():
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    t = to_tensor_images(images, "cpu")
    assert t.shape == (2, 3, 4, 5) and t.dtype == torch.float32
    assert t[1, 2, 3, 4].item() == images[1, 3, 4, 2]


def test_cifar100_synthetic_via_load_dataset(tmp_path):
    root = write_synthetic_cifar100(tmp_path / "cifar-100-python", n_train=30, n_test=20)
    train, test = load_dataset("cifar100", tmp_path)  # found in the sub-folder
    assert train.num_classes == 100 and len(train) == 30 and len(test) == 20
    meta = pickle.loads((root / "meta").read_bytes(), encoding="bytes")
    assert train.class_names == [n.decode() for n in meta[b"fine_label_names"]]


def test_py2_pickle_writer_matches_official_style():
    blob = dumps_py2({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]})
    assert b"numpy.core.multiarray\n_reconstruct" in blob and b"\x80\x02" == blob[:2]
    assert b"U\x04data" in blob  # SHORT_BINSTRING, as Python 2 wrote str
    d = pickle.loads(blob, encoding="latin1")
    assert set(d) == {"data", "labels"} and d["data"].dtype == np.uint8
