"""Watching a run (igam.run.watch, igam.run.tboard): the periodic evaluation leaves every
state as it was and keeps the best checkpoint; TensorBoard's tags and its optional import."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch

from igam.data.datasets import ArrayDataset
from igam.errors import MissingDependencyError
from igam.models import WideResNet
from igam.run import tboard
from igam.run.checkpoint import load_checkpoint
from igam.run.engine import Checkpointer
from igam.run.watch import BEST_NAME, Watcher, learning_rate
from igam.training import ClassifierTrainer


def tiny_data(n=12, k=3, seed=0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    return ArrayDataset(images, (np.arange(n) % k).astype(np.int64), [str(c) for c in range(k)],
                        name="tiny/test")


def tiny_model(k=3) -> WideResNet:
    torch.manual_seed(1)
    return WideResNet(k, [4, 4, 8, 16], 1, "per_image")


def make_watcher(tmp_path, model, every=2):
    ckpt = Checkpointer(tmp_path, "classifier", {"seed": 0}, model)
    return Watcher(model, tiny_data(), "test", every, 2, 5, 0, ckpt), ckpt


def test_evaluation_leaves_rng_buffers_and_modes_unchanged(tmp_path):
    model = tiny_model()
    model.train()
    with torch.no_grad():  # running statistics that eval mode would use, not update
        model(torch.rand(4, 3, 32, 32) * 255)
    watcher, _ = make_watcher(tmp_path, model)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    random.seed(4)
    np.random.seed(5)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    first = watcher.evaluate()
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    assert watcher.evaluate() == first  # its own generator, seeded afresh each time
    assert first["watch_n"] == 12 and first["watch_split"] == "test"
    assert 0 <= first["watch_robust_accuracy"] <= first["watch_clean_accuracy"] <= 1


def test_best_checkpoint_follows_the_robust_accuracy(tmp_path, monkeypatch):
    model = tiny_model()
    watcher, ckpt = make_watcher(tmp_path, model)
    results = iter([0.2, 0.5, 0.5, 0.1])
    monkeypatch.setattr(watcher, "evaluate", lambda: {
        "watch_clean_accuracy": 0.9, "watch_robust_accuracy": next(results), "watch_n": 12,
        "watch_pgd_steps": 2, "watch_split": "validation"})
    assert [watcher(s)["watch_best"] for s in (2, 4, 6, 8)] == [True, True, False, False]
    best = load_checkpoint(tmp_path / BEST_NAME)
    assert best["step"] == 4
    assert best["watch_best"]["watch_split"] == "validation"
    assert best["watch_best"]["watch_robust_accuracy"] == 0.5
    assert ckpt.info["watch_best"]["step"] == 4  # saved in checkpoint.pt for a resume
    assert watcher.due(4) and not watcher.due(3)
    assert not make_watcher(tmp_path, model, every=0)[0].due(4)


def test_learning_rate_is_the_last_step_s():
    model = tiny_model()
    trainer = ClassifierTrainer(model, [[0, 0.1], [1, 0.01]])
    x, y = torch.rand(2, 3, 32, 32) * 255, torch.tensor([0, 1])
    trainer.step(x, y)
    assert learning_rate(trainer) == pytest.approx(0.1)
    trainer.step(x, y)
    trainer.step(x, y)  # step 2 > boundary 1: the second rate
    assert learning_rate(trainer) == pytest.approx(0.01)
    assert learning_rate(object()) is None


def test_original_tag_names():
    assert tboard.tag("igam", "accuracy") == "C accuracy"
    assert tboard.tag("igam", "disc_xent") == "D xent"
    assert tboard.tag("igam", "loss") == "total C loss"
    assert tboard.tag("classifier", "accuracy") == "accuracy adv train"
    assert tboard.tag("igam", "watch_clean_accuracy", eval_=True) == "C accuracy"
    assert tboard.tag("teacher", "watch_robust_accuracy", eval_=True) == "PGD accuracy"
    assert tboard.tag("igam", "lr") == "learning rate"
    assert tboard.tag("igam", "l2") == "l2"


def test_missing_tensorboard(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    assert tboard.TensorBoardLogger.open("auto", tmp_path, "igam") is None
    assert tboard.TensorBoardLogger.open("off", tmp_path, "igam") is None
    tboard.check_available("auto")
    with pytest.raises(MissingDependencyError, match="pip install -r requirements-tensorboard"):
        tboard.check_available("on")
    assert not (tmp_path / "tensorboard").exists()
