"""Gradient-masking checks (igam.eval.sanity) on a plain-trained tiny model, and their bad input.

The model is trained here in a few seconds (tiny WideResNet, plain cross-entropy, synthetic
CIFAR-10) and stored as a port checkpoint recording its dataset, so the checks run through
``python -m igam.eval.sanity``'s main exactly as on a real run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from igam.data import TrainBatches, load_dataset
from igam.data.synthetic import write_synthetic_cifar10, write_synthetic_cifar100
from igam.errors import MissingDependencyError
from igam.eval import sanity
from igam.models import WideResNet
from igam.run.checkpoint import make_checkpoint, save_checkpoint
from igam.run.cli import run_main
from igam.training import ClassifierTrainer

REPO = Path(__file__).resolve().parents[2]
FAST = ["--device", "cpu", "--sanity.num_examples", "40", "--sanity.batch_size", "40"]


def train_plain(root, dataset: str, out, steps: int = 60, num_classes: int = 10):
    """A tiny plain-trained classifier of ``dataset`` at ``root``, saved in the run folder
    ``out`` with the data recorded as the training scripts record it."""
    torch.manual_seed(0)
    train, _ = load_dataset(dataset, root)
    model = WideResNet(num_classes, widths=(4, 4, 8, 16), units_per_stage=1)
    trainer = ClassifierTrainer(model, [[0, 0.1]], weight_decay=0.0)
    batches = TrainBatches(train, 32, "cpu", seed=0, augment=False)
    for _ in range(steps):
        trainer.step(*next(batches))
    cfg = {"data": {"dataset": dataset, "root": str(root)}}
    save_checkpoint(out / "checkpoint.pt",
                    make_checkpoint("classifier", model.arch, model.state_dict(), config=cfg))
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    w = tmp_path_factory.mktemp("sanity")
    write_synthetic_cifar10(w / "c10", n_train=320, n_test=40, seed=3)
    return train_plain(w / "c10", "cifar10", w / "plain")


def test_plain_model_passes_every_check_and_writes_json_and_curve(plain, tmp_path, capsys):
    # the sweep's eps 8 is the steps check's PGD-20 (run once); eps 64 must reach ~0
    sanity.main(["--config", str(REPO / "configs/sanity.yaml"), "--model_dir", str(plain), *FAST,
                 "--sanity.eps_sweep", "8,64", "--sanity.square_queries", "100"])
    printed = capsys.readouterr().out
    res = json.loads((plain / "sanity.json").read_text())
    assert res["config"]["sanity"]["num_examples"] == 40 and res["n"] == 40
    steps = [r["accuracy"] for r in res["pgd_steps"]]
    sweep = {r["eps"]: r["accuracy"] for r in res["eps_sweep"]}
    assert res["clean_accuracy"] > 0.5                       # it learned something
    assert steps[0] >= steps[1] >= steps[2]                  # PGD-5 >= PGD-20 >= PGD-100
    assert steps[-1] < res["clean_accuracy"]
    assert sweep[max(sweep)] <= 0.05                         # ~0 at a large eps
    assert res["noise_accuracy"] > steps[-1]
    assert res["square_accuracy"] is not None and res["square_accuracy"] >= steps[-1]
    status = {c["check"]: c["status"] for c in res["checks"]}
    assert status == dict.fromkeys(
        ["steps", "eps_monotone", "eps_large", "square", "noise", "gradients"], "pass")
    assert res["flags"] == 0
    assert "eps_large" in printed and "FLAG" not in printed
    from PIL import Image
    with Image.open(plain / "robustness_curve.png") as img:
        assert img.size == (640, 420)


def test_judge_flags_masking_patterns():
    """Synthetic measurements with the signs of masked gradients raise the matching flags."""
    s = {"tolerance": 0.01, "zero_accuracy": 0.05, "max_zero_gradient": 0.01,
         "square_queries": 1000, "noise_draws": 10}
    masked = {"clean_accuracy": 0.9, "square_accuracy": 0.2, "noise_accuracy": 0.3,
              "zero_gradient_fraction": 0.4, "square_note": "",
              "pgd_steps": [{"steps": 5, "accuracy": 0.5}, {"steps": 20, "accuracy": 0.6},
                            {"steps": 100, "accuracy": 0.7}],
              "eps_sweep": [{"eps": 8.0, "accuracy": 0.5}, {"eps": 32.0, "accuracy": 0.6}]}
    status = {c["check"]: c["status"] for c in sanity.judge(masked, s)}
    assert status == dict.fromkeys(
        ["steps", "eps_monotone", "eps_large", "square", "noise", "gradients"], sanity.FLAG)
    skipped = dict(masked, square_accuracy=None, square_note="not run: pyautoattack missing")
    square = [c for c in sanity.judge(skipped, s) if c["check"] == "square"][0]
    assert square["status"] == sanity.NOT_RUN and "pyautoattack" in square["detail"]


def test_square_without_pyautoattack_fails_at_start(tmp_path, monkeypatch):
    """The command line stops before loading any model (the folder does not even exist)."""
    monkeypatch.setattr(sanity, "square_attack_class", lambda: None)
    monkeypatch.setattr(sanity.engine, "setup", lambda *a, **k: pytest.fail("set up"))
    with pytest.raises(MissingDependencyError) as e:
        sanity.main(["--model_dir", str(tmp_path / "none"), *FAST])
    assert "pip install -r requirements-autoattack.txt" in str(e.value)
    assert "--sanity.square_queries 0" in str(e.value) and "\n" not in str(e.value)


def test_square_not_run_without_pyautoattack(plain, tmp_path, monkeypatch):
    """Used as a library, measure() records the Square check as not run (never passed)."""
    monkeypatch.setattr(sanity, "square_attack_class", lambda: None)
    s = dict(sanity.schemas.SANITY_SCHEMA.defaults["sanity"], steps=[2], eps_sweep=[64.0],
             sweep_steps=2, num_examples=20, noise_draws=1)
    model, ckpt = sanity.engine.load_classifier(plain)
    test = sanity.engine.eval_subset(sanity.engine.eval_test_set(
        sanity.engine.eval_data(sanity.schemas.SANITY_SCHEMA.defaults["data"], ckpt, plain)), 20)
    res = sanity.measure(model, test, s, "cpu", 0, "plain")
    assert res["square_accuracy"] is None
    assert "pip install -r requirements-autoattack.txt" in res["square_note"]


@pytest.mark.parametrize("args, message", [
    (["--sanity.eps", "0"],
     "config key 'sanity.eps' on the command line: expected a number > 0, got 0.0"),
    (["--sanity.eps_sweep", "8,-2"],
     "config key 'sanity.eps_sweep[1]' on the command line: expected a number > 0, got -2.0"),
    (["--sanity.steps", "0"],
     "config key 'sanity.steps[0]' on the command line: expected an integer >= 1, got 0"),
    (["--sanity.steps", "[]"], "config key 'sanity.steps': expected a non-empty list, got []"),
])
def test_bad_settings_are_one_line_errors(plain, args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        run_main(sanity.main, ["--model_dir", str(plain), "--device", "cpu", *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and message in err


def test_models_of_different_datasets_are_refused(plain, tmp_path, capsys):
    write_synthetic_cifar100(tmp_path / "c100", n_train=40, n_test=10)
    other = train_plain(tmp_path / "c100", "cifar100", tmp_path / "c100model", steps=1,
                        num_classes=100)
    with pytest.raises(SystemExit):
        run_main(sanity.main, ["--model_dir", str(plain), "--model_dir", str(other),
                               "--device", "cpu"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "models of different datasets" in err
    assert "cifar10" in err and "cifar100" in err
