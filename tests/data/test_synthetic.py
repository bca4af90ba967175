"""Tests of igam.data.synthetic: official formats, loader round trips, feature design."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from igam.data import load_cifar10, load_cifar100, load_tinyimagenet
from igam.data.synthetic import (
    MARKER,
    SyntheticStyle,
    main,
    nonrobust_tile,
    render_class,
    robust_template,
    synthetic_wnids,
    write_synthetic_cifar10,
    write_synthetic_cifar100,
    write_synthetic_tinyimagenet,
)
from igam.errors import ConfigError, IGAMError

REPO = Path(__file__).resolve().parents[2]


def _raw(path: Path) -> dict:
    return pickle.loads(path.read_bytes(), encoding="bytes")


# ---------------------------------------------------------------------------------------------
# Formats and round trips


def test_cifar10_official_format_round_trip(tmp_path):
    root = write_synthetic_cifar10(tmp_path / "c10", n_train=23, n_test=7, seed=3)
    train, test = load_cifar10(root)
    assert train.images.shape == (23, 32, 32, 3) and test.images.shape == (7, 32, 32, 3)
    sizes, labels, rows = [], [], []
    for i in range(1, 6):
        d = _raw(root / f"data_batch_{i}")
        assert set(d) == {b"batch_label", b"labels", b"data", b"filenames"}
        assert d[b"batch_label"] == f"training batch {i} of 5".encode()
        assert d[b"data"].dtype == np.uint8 and d[b"data"].shape[1] == 3072
        assert all(isinstance(f, bytes) for f in d[b"filenames"])
        sizes.append(len(d[b"labels"]))
        labels += d[b"labels"]
        rows.append(d[b"data"])
    assert sizes == [5, 5, 5, 4, 4]
    assert train.labels.tolist() == labels
    rows = np.concatenate(rows)
    assert np.array_equal(train.images[:, :, :, 0].reshape(23, -1), rows[:, :1024])  # R plane
    assert np.array_equal(train.images[:, :, :, 2].reshape(23, -1), rows[:, 2048:])  # B plane
    assert np.bincount(train.labels, minlength=10).max() - np.bincount(train.labels).min() <= 1
    meta = _raw(root / "batches.meta")
    assert set(meta) == {b"num_cases_per_batch", b"label_names", b"num_vis"}
    assert [n.decode() for n in meta[b"label_names"]] == train.class_names
    assert _raw(root / "test_batch")[b"batch_label"] == b"testing batch 1 of 1"
    latin = pickle.loads((root / "test_batch").read_bytes(), encoding="latin1")  # py2 str
    assert set(latin) == {"batch_label", "labels", "data", "filenames"}


def test_cifar100_fine_labels_round_trip(tmp_path):
    root = write_synthetic_cifar100(tmp_path / "c100", n_train=250, n_test=101)
    train, test = load_cifar100(root)
    assert len(train) == 250 and len(test) == 101 and train.num_classes == 100
    d = _raw(root / "train")
    assert set(d) == {b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"data"}
    assert train.labels.tolist() == d[b"fine_labels"]
    assert d[b"coarse_labels"] == [f // 5 for f in d[b"fine_labels"]]
    assert set(train.labels.tolist()) == set(range(100))
    meta = _raw(root / "meta")
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20
    assert test.labels.tolist() == _raw(root / "test")[b"fine_labels"]


def test_tinyimagenet_layouts_round_trip(tmp_path):
    kw = dict(n_train_per_class=5, n_val_per_class=3, num_classes=4, seed=2, gray_fraction=0.3)
    official = write_synthetic_tinyimagenet(tmp_path / "off", val_layout="official", **kw)
    rearranged = write_synthetic_tinyimagenet(tmp_path / "rea", val_layout="rearranged", **kw)
    wnids = synthetic_wnids(4)
    assert sorted((official / "wnids.txt").read_text().split()) == wnids
    assert len((official / "words.txt").read_text().splitlines()) == 4
    for w in wnids:
        assert len(list((official / "train" / w / "images").glob("*.JPEG"))) == 5
        assert len((official / "train" / w / f"{w}_boxes.txt").read_text().splitlines()) == 5
        assert len(list((rearranged / "val" / "images" / w).glob("*.JPEG"))) == 3
    assert len(list((official / "val" / "images").glob("val_*.JPEG"))) == 12
    assert len((official / "val" / "val_annotations.txt").read_text().splitlines()) == 12
    assert len(list((official / "test" / "images").glob("test_*.JPEG"))) == 10

    train, val = load_tinyimagenet(official, cache=False)
    train2, val2 = load_tinyimagenet(rearranged, cache=False)
    assert train.images.shape == (20, 64, 64, 3) and val.images.shape == (12, 64, 64, 3)
    assert train.class_names == wnids
    for ds in (train, val):
        assert np.bincount(ds.labels).tolist() == [len(ds) // 4] * 4
    for f, y in zip(train.filenames, train.labels):
        assert f.split("/")[1] == wnids[y]  # class index = position in sorted wnids
    assert np.array_equal(train.images, train2.images)
    assert np.array_equal(val.images, val2.images) and np.array_equal(val.labels, val2.labels)
    gray = [i for i, f in enumerate(train.filenames) if Image.open(official / f).mode == "L"]
    assert gray, "gray_fraction=0.3 should give some grayscale JPEGs"
    g = train.images[gray]
    assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 0], g[..., 2])


def test_marker_determinism_and_guards(tmp_path):
    a = write_synthetic_cifar10(tmp_path / "a", n_train=10, n_test=5, seed=1, robust_amp=30.0)
    record = json.loads((a / MARKER).read_text())
    assert record["dataset"] == "cifar10" and record["seed"] == 1
    assert record["style"]["robust_amp"] == 30.0
    assert record["style"]["nonrobust_amp"] == SyntheticStyle().nonrobust_amp
    b = write_synthetic_cifar10(tmp_path / "b", n_train=10, n_test=5, seed=1, robust_amp=30.0)
    c = write_synthetic_cifar10(tmp_path / "c", n_train=10, n_test=5, seed=2, robust_amp=30.0)
    assert (a / "data_batch_1").read_bytes() == (b / "data_batch_1").read_bytes()
    assert (a / "data_batch_1").read_bytes() != (c / "data_batch_1").read_bytes()
    # re-generating into a generated folder replaces it; foreign folders are refused
    write_synthetic_cifar10(a, n_train=10, n_test=5, seed=1, robust_amp=30.0)
    assert (a / "data_batch_1").read_bytes() == (b / "data_batch_1").read_bytes()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(IGAMError, match="refusing"):
        write_synthetic_cifar10(tmp_path / "mine", n_train=10, n_test=5)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"
    with pytest.raises(ConfigError, match="robust_ampp"):
        write_synthetic_cifar10(tmp_path / "d", n_train=10, n_test=5, robust_ampp=3)


def test_cli(tmp_path, capsys):
    out = tmp_path / "t"
    rc = main(["--dataset", "tinyimagenet", "--out", str(out), "--num_classes", "3",
               "--n_train_per_class", "2", "--n_val_per_class", "1", "--noise_std", "4",
               "--val_layout", "rearranged"])  # fmt: skip
    assert rc == 0 and "wrote synthetic tinyimagenet" in capsys.readouterr().out
    record = json.loads((out / MARKER).read_text())
    assert record["style"]["noise_std"] == 4.0 and record["val_layout"] == "rearranged"
    train, val = load_tinyimagenet(out, cache=False)
    assert len(train) == 6 and len(val) == 3
    assert main(["--dataset", "cifar10", "--out", str(tmp_path / "x"), "--n_train", "2"]) == 2
    assert "error:" in capsys.readouterr().err
    proc = subprocess.run(
        [sys.executable, "-m", "igam.data.synthetic", "--dataset", "cifar100", "--out",
         str(tmp_path / "c100"), "--n_train", "100", "--n_test", "10", "--seed", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(load_cifar100(tmp_path / "c100")[0]) == 100


@pytest.mark.parametrize("out", ["README.md", "README.md/sub"])
def test_cli_out_an_existing_file_is_one_line(out):
    """--out naming an existing file (or a path through one): one line, exit 2, file intact."""
    before = (REPO / "README.md").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "igam.data.synthetic", "--dataset", "cifar10",
                           "--out", out, "--n_train", "10", "--n_test", "10"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "README.md" in lines[0]
    assert (REPO / "README.md").read_bytes() == before


# ---------------------------------------------------------------------------------------------
# Feature design


def test_robust_templates_shared_across_resolutions_and_datasets():
    st = SyntheticStyle()
    for k in range(10):
        t32 = robust_template(k, 32, st)
        t64 = robust_template(k, 64, st)
        down = t64.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))  # 64 -> 32 by 2x2 averaging
        assert np.abs(t32 - down).max() < 0.05
        assert np.abs(t32).max() <= 1.01
    # Class templates are robustly separable at eps = 8: for the template-difference classifier
    # w = d = T_i - T_j, the margin of T_i (|d|^2 / 2) exceeds what an eps-Linf attack can
    # remove (eps * |d|_1), i.e. mean(d^2) / (2 mean|d|) > eps, for every pair of classes.
    ts = [st.robust_amp * robust_template(k, 32, st).astype(np.float64) for k in range(10)]
    ratios = [
        (d**2).mean() / (2 * np.abs(d).mean())
        for i in range(10)
        for j in range(i + 1, 10)
        for d in [ts[i] - ts[j]]
    ]
    assert min(ratios) > 8
    # a different family_seed gives a different bank
    other = robust_template(0, 32, SyntheticStyle(family_seed=7))
    assert np.abs(other - robust_template(0, 32, st)).mean() > 0.1

    # class means of the rendered data: CIFAR class k matches Tiny-ImageNet class k
    def class_means(size, dataset):
        means = []
        for k in range(10):
            m = render_class(k, 60, size, dataset, seed=0, split=0, style=st).astype(float)
            m = m.mean(0)
            if size == 64:
                m = m.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
            means.append((m - m.mean()).ravel())
        return np.array(means)

    a, b = class_means(32, "cifar10"), class_means(64, "tinyimagenet")
    corr = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (
        b / np.linalg.norm(b, axis=1, keepdims=True)
    ).T
    assert (corr.argmax(axis=1) == np.arange(10)).all()
    assert np.diag(corr).min() > 0.9


def test_nonrobust_texture_small_zero_mean_and_per_dataset():
    st = SyntheticStyle()
    tiles = [nonrobust_tile(k, "cifar10", 0, st) for k in range(10)]
    for t in tiles:
        assert t.shape == (4, 4, 3) and set(np.unique(t)) == {-1.0, 1.0}
        assert np.allclose(t.mean(axis=(0, 1)), 0)  # removed exactly by a 4x4 average pool
    assert len({t.tobytes() for t in tiles}) == 10  # one texture per class
    for k in range(10):  # drawn independently per dataset: no transfer of non-robust features
        assert not np.array_equal(tiles[k], nonrobust_tile(k, "tinyimagenet", 0, st))
    assert st.nonrobust_amp < 8 < st.robust_amp

    # composition without nuisance: background + robust_amp * template + nonrobust_amp * tile
    quiet = SyntheticStyle(noise_std=0.0, colour_jitter=0.0, robust_jitter=0.0, max_shift=0,
                           background_min=128.0, background_max=128.0)  # fmt: skip
    img = render_class(3, 1, 32, "cifar10", seed=0, split=0, style=quiet)[0].astype(float)
    expected = (
        128
        + quiet.robust_amp * robust_template(3, 32, quiet)
        + quiet.nonrobust_amp * (np.tile(nonrobust_tile(3, "cifar10", 0, quiet), (8, 8, 1)))
    )
    assert np.abs(img - np.clip(np.rint(expected), 0, 255)).max() == 0


def _ridge_accuracy(xtr, ytr, xte, yte, num_classes=10, lam=1.0):
    """Least-squares (ridge, dual form) linear classifier on standardised features."""
    xtr, xte = xtr.double(), xte.double()
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    targets = F.one_hot(ytr, num_classes).double()
    alpha = torch.linalg.solve(xtr @ xtr.T + lam * len(xtr) * torch.eye(len(xtr),
                               dtype=torch.float64), targets)  # fmt: skip
    w = xtr.T @ alpha
    return ((xte @ w).argmax(1) == yte).double().mean().item()


def test_synthetic_cifar10_is_learnable(tmp_path):
    """Linear models reach far-above-chance accuracy (chance = 10 %) from the whole image, from
    its low-frequency part alone (4x4 average pool: robust feature only), and from its
    high-frequency part alone (shift-invariant spectrum of the residual: texture only)."""
    root = write_synthetic_cifar10(tmp_path / "c10", n_train=1500, n_test=500)
    train, test = load_cifar10(root)
    xtr = torch.from_numpy(train.images).permute(0, 3, 1, 2).float()
    xte = torch.from_numpy(test.images).permute(0, 3, 1, 2).float()
    ytr, yte = torch.from_numpy(train.labels), torch.from_numpy(test.labels)

    acc_full = _ridge_accuracy(xtr.flatten(1), ytr, xte.flatten(1), yte, lam=0.1)
    assert acc_full > 0.6, acc_full

    def low(x):
        return F.avg_pool2d(x, 4)

    acc_low = _ridge_accuracy(low(xtr).flatten(1), ytr, low(xte).flatten(1), yte)
    assert acc_low > 0.6, acc_low

    def high_spectrum(x):
        residual = x - F.interpolate(low(x), scale_factor=4, mode="nearest")
        return torch.fft.rfft2(residual).abs()[:, :, ::8, ::8].flatten(1)  # texture harmonics

    acc_high = _ridge_accuracy(high_spectrum(xtr), ytr, high_spectrum(xte), yte)
    assert acc_high > 0.6, acc_high


def test_tinyimagenet_texture_survives_jpeg(tmp_path):
    """After JPEG (q95, 4:4:4) the pixel-scale texture still identifies the class."""
    root = write_synthetic_tinyimagenet(tmp_path / "t", n_train_per_class=6, n_val_per_class=2,
                                        num_classes=5, gray_fraction=0.0)  # fmt: skip
    train, _ = load_tinyimagenet(root, cache=False)
    st = SyntheticStyle()
    x = train.images.astype(np.float64)
    blocks = x.reshape(-1, 16, 4, 16, 4, 3).mean(axis=(2, 4), keepdims=True)
    residual = (x.reshape(-1, 16, 4, 16, 4, 3) - blocks).reshape(x.shape)
    scores = np.zeros((len(x), 5))
    for k in range(5):
        tile = np.tile(nonrobust_tile(k, "tinyimagenet", 0, st), (16, 16, 1))
        for dy in range(4):
            for dx in range(4):
                shifted = np.roll(tile, (dy, dx), axis=(0, 1))
                score = (residual * shifted).mean(axis=(1, 2, 3))
                scores[:, k] = np.maximum(scores[:, k], score)
    accuracy = (scores.argmax(1) == train.labels).mean()
    assert accuracy > 0.9, accuracy
    best = scores.max(1)
    assert np.median(best) > 0.5 * st.nonrobust_amp  # most of the amplitude survives
