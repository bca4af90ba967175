"""Input-gradient pictures and the alignment number (igam.eval.visualize, igam.gradients)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid

from igam.data import ArrayDataset, eval_batches, load_dataset
from igam.data.synthetic import write_synthetic_cifar10, write_synthetic_cifar100
from igam.eval import visualize
from igam.gradients import cosine_per_example
from igam.models import Teacher, WideResNet
from igam.run.checkpoint import make_checkpoint, save_checkpoint
from igam.run.cli import run_main
from igam.run.engine import load_classifier

TINY = {"widths": (4, 4, 8, 16), "units_per_stage": 1}


class Complement(nn.Module):
    """Logits log(1 - softmax(model(x))): its softmax is (1 - p) / (K - 1), so its true-class
    probability has exactly the input gradient -grad p_y / (K - 1) of the wrapped model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.log1p(-self.model(x).softmax(dim=1))


class Constant(nn.Module):
    """Logits that do not depend on the input: an exactly zero input gradient."""

    def forward(self, x):
        return torch.zeros(x.shape[0], 10) + 0.0 * x.sum(dim=(1, 2, 3))[:, None]


def images(n: int = 12, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                        rng.integers(0, 10, n), [f"c{k}" for k in range(10)], "random")


def test_cosine_per_example_is_exact_for_tiny_gradients():
    a = torch.tensor([[1e-30, 0.0], [1e-30, 1e-30], [1e-30, 0.0], [0.0, 0.0]])
    b = torch.tensor([[3e-31, 0.0], [-1e-30, 1e-30], [-2e-30, 0.0], [1.0, 0.0]])
    cos = cosine_per_example(a, b)
    assert cos.dtype == torch.float64
    assert cos[:3].tolist() == pytest.approx([1.0, 0.0, -1.0], abs=1e-12)
    assert torch.isnan(cos[3])                               # a zero gradient has no direction


def test_alignment_of_a_model_with_itself_is_one_and_with_its_negation_minus_one():
    torch.manual_seed(0)
    teacher = Teacher(WideResNet(10, **TINY), 10, upresize_to=64, bn=None)  # target head, upresize
    res = visualize.gradient_alignment(
        teacher, {"itself": teacher, "negated": Complement(teacher), "flat": Constant()},
        images(), batch_size=5, device="cpu")
    assert res["itself"]["mean_cosine"] == pytest.approx(1.0, abs=1e-9)
    assert res["negated"]["mean_cosine"] == pytest.approx(-1.0, abs=1e-6)
    assert res["itself"]["n"] == res["negated"]["n"] == 12
    assert res["negated"]["std_cosine"] < 1e-6
    assert res["flat"]["n"] == 0 and res["flat"]["undefined"] == 12
    other = visualize.gradient_alignment(teacher, {"student": WideResNet(10, **TINY)}, images(),
                                         batch_size=12, device="cpu")["student"]
    assert -0.9 < other["mean_cosine"] < 0.9                 # an unrelated model is neither


def test_display_gradients_is_per_image_and_zero_is_grey():
    g = torch.randn(3, 3, 8, 8)
    g[0, 0, 0, :2] = torch.tensor([100.0, -100.0])           # far beyond 3 std
    g[1] = g[0] * 1e-6                                       # the scale of an image is divided out
    g[2] = 0
    d = visualize.display_gradients(g, clip_std=3.0)
    assert d.min() >= 0 and d.max() <= 1
    torch.testing.assert_close(d[1], d[0])
    assert torch.all(d[2] == 0.5)
    assert d[0, 0, 0, :2].tolist() == [1.0, 0.0]             # clipped


def _save(model, kind, root, dataset, out):
    cfg = {"data": {"dataset": dataset, "root": str(root)}}
    save_checkpoint(out / "checkpoint.pt",
                    make_checkpoint(kind, model.arch, model.state_dict(), config=cfg))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    w = tmp_path_factory.mktemp("visualize")
    write_synthetic_cifar10(w / "c10", n_train=10, n_test=14, seed=1)
    torch.manual_seed(0)
    teacher = _save(Teacher(WideResNet(10, **TINY), 10, upresize_to=64), "teacher", w / "c10",
                    "cifar10", w / "teacher")
    students = [_save(WideResNet(10, **TINY), "igam", w / "c10", "cifar10", w / name)
                for name in ("s1", "s2")]
    return w, teacher, students


def test_picture_and_alignment_json(runs, tmp_path):
    w, teacher, (s1, s2) = runs
    out = tmp_path / "grads.png"
    visualize.main(["--teacher_dir", str(teacher), "--student_dir", str(s1), "--student_dir",
                    str(s2), "--student_dir", str(teacher), "--device", "cpu", "--out", str(out),
                    "--picture.num_images", "5", "--picture.scale", "2"])
    res = json.loads(out.with_suffix(".json").read_text())
    assert list(res["students"]) == ["s1", "s2", "teacher#4"]
    assert res["students"]["teacher#4"]["mean_cosine"] == pytest.approx(1.0, abs=1e-9)
    assert res["students"]["s1"]["n"] == 14 and res["students"]["s1"]["model_dir"] == str(s1)
    assert res["config"]["picture"]["num_images"] == 5
    # the picture: the make_grid of [images, teacher, s1, s2, teacher] x 5, labels left/above
    _, test = load_dataset("cifar10", w / "c10")
    x, y = next(iter(eval_batches(test.subset(range(5)), 5, "cpu")))
    rows = []
    for d in (teacher, s1, s2, teacher):
        model, _ = load_classifier(d)
        rows.append(visualize.display_gradients(visualize.eval_input_gradient(model, x, y)))
    cells = torch.cat([x / 255] + rows)
    big = torch.nn.functional.interpolate(cells, scale_factor=2, mode="nearest")
    want = to_pil_image(make_grid(big, nrow=5, padding=2, pad_value=1.0))
    assert want.size == (5 * (64 + 2) + 2, 5 * (64 + 2) + 2)
    with Image.open(out) as img:
        got = np.asarray(img.convert("RGB"))
    assert got.shape[1] > want.width and got.shape[0] > want.height   # label margins
    corner = got[-want.height:, -want.width:]
    assert np.abs(corner.astype(int) - np.asarray(want).astype(int)).max() <= 1


def test_models_of_different_datasets_are_refused(runs, tmp_path, capsys):
    w, teacher, (s1, _) = runs
    write_synthetic_cifar100(tmp_path / "c100", n_train=10, n_test=5)
    other = _save(WideResNet(100, **TINY), "classifier", tmp_path / "c100", "cifar100",
                  tmp_path / "c100model")
    with pytest.raises(SystemExit) as exc:
        run_main(visualize.main, ["--teacher_dir", str(teacher), "--student_dir", str(s1),
                                  "--student_dir", str(other), "--device", "cpu",
                                  "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert "models of different datasets" in err and "cifar100" in err
    assert not (tmp_path / "g.png").exists()


def test_bad_picture_settings_are_one_line_errors(runs, tmp_path, capsys):
    _, teacher, (s1, _) = runs
    with pytest.raises(SystemExit):
        run_main(visualize.main, ["--teacher_dir", str(teacher), "--student_dir", str(s1),
                                  "--picture.num_images", "0", "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert err == ("error: config key 'picture.num_images' on the command line: expected an "
                   "integer >= 1, got 0\n")
