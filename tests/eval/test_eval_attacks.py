"""Evaluation attacks through pgd_attack.py / run_attack.py on a trained tiny model: AutoAttack
(igam.eval.autoattack; optional pyautoattack, installed in CI from requirements-autoattack.txt) and
its one-line errors for bad input; early-stopping PGD (default on, off under bn_mode train)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from e2e import REPO, attack_file, call, run, synth

from igam.errors import ConfigError, MissingDependencyError
from igam.eval import autoattack

CONFIG = str(REPO / "configs/attack_autoattack.yaml")
# reduced cost for CI: three of the four standard sub-attacks, 5 iterations, 40 queries
REDUCED = ["--attack.attacks", "apgd-ce,apgd-t,square", "--attack.n_iter", "5",
           "--attack.n_queries", "40", "--eval.num_examples", "24", "--eval.batch_size", "10"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CIFAR-10 classifier trained (plainly) for 60 steps on synthetic data."""
    w = tmp_path_factory.mktemp("autoattack")
    synth("cifar10", w / "data/c10", "--n_train", "200", "--n_test", "40")
    call("train_advtrain_tinyimagenet.py", "--config", str(REPO / "configs/advtrain_cifar10.yaml"),
         "--device", "cpu", "--model.widths", "4,4,8,16", "--model.units_per_stage", "1",
         "--data.root", "data/c10", "--model_dir", "models/c10", "--train.steps", "60",
         "--train.batch_size", "16", "--train.steps_before_adv_training", "60",
         "--log_every", "30", "--eval.batch_size", "40", cwd=w)
    return w


@pytest.mark.slow
def test_autoattack_end_to_end_then_run_attack(trained):
    w = trained
    call("pgd_attack.py", "--config", CONFIG, "--device", "cpu", "--model_dir", "models/c10",
         *REDUCED, cwd=w)
    npy = attack_file(w, "models/c10", "autoattack")
    adv = np.load(npy)
    assert adv.shape == (24, 32, 32, 3) and adv.dtype == np.float32
    assert adv.min() >= 0 and adv.max() <= 255
    meta = json.loads(npy.with_suffix(".json").read_text())
    rep = meta["autoattack"]
    assert meta["attack"] == {"name": "autoattack", "method": "autoattack", "norm": "linf",
                              "eps": 8.0, "seed": 0, "bn_mode": "eval", "version": "standard",
                              "attacks": ["apgd-ce", "apgd-t", "square"], "n_iter": 5,
                              "n_queries": 40}
    assert meta["data"]["n"] == 24
    assert list(rep["robust_accuracy"]) == ["clean", "apgd-ce", "apgd-t", "square"]
    accs = list(rep["robust_accuracy"].values())
    assert all(a >= b for a, b in zip(accs, accs[1:]))  # non-increasing
    assert accs[0] > 0.2 and accs[0] == rep["clean_accuracy"]  # the model learnt something
    assert rep["settings"]["custom"] and rep["settings"]["reduced"]
    assert rep["settings"]["eps"] == 8.0 and rep["settings"]["norm"] == "Linf"
    assert rep["seconds"]["total"] > 0 and set(rep["seconds"]) >= {"apgd-ce", "square"}
    assert isinstance(rep["flags"], list) and rep["pyautoattack"] == "0.2.0"
    proc = call("run_attack.py", "--config", CONFIG, "--device", "cpu", "--model_dir",
                "models/c10", *REDUCED, cwd=w)
    ev = json.loads((w / "models/c10/eval_autoattack.json").read_text())
    assert ev["attack"] == meta["attack"] and ev["transfer"] is False
    assert ev["adv_accuracy"] == pytest.approx(rep["final_accuracy"])
    assert ev["clean_accuracy"] == pytest.approx(rep["clean_accuracy"])
    assert ev["adv_accuracy"] <= ev["clean_accuracy"] and "adversarial accuracy" in proc.stdout


def test_autoattack_without_the_package_says_how_to_install(trained, tmp_path):
    # a pyautoattack that fails to import, ahead of the installed one on the path
    (tmp_path / "pyautoattack").mkdir()
    (tmp_path / "pyautoattack/__init__.py").write_text("raise ImportError('blocked')\n")
    env_path = f"{tmp_path}:{REPO}"
    import os
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(REPO / "pgd_attack.py"), "--config", CONFIG, "--device", "cpu",
         "--model_dir", "models/c10", *REDUCED], cwd=trained, capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=env_path, OMP_NUM_THREADS="1"), timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "pip install -r requirements-autoattack.txt" \
        in lines[-1]


def test_import_error_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # import now raises ImportError
    with pytest.raises(MissingDependencyError) as err:
        autoattack.import_pyautoattack()
    assert autoattack.INSTALL in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("cfg, key", [
    ({"version": "strong"}, "attack.version"),
    ({"attacks": ["apgd-ce", "deepfool"]}, "attack.attacks"),
    ({"attacks": ["square", "square"]}, "attack.attacks"),
    ({"norm": "L1"}, "attack.norm"),
    ({"eps": 0.0}, "attack.eps"),
    ({"eps": -8.0}, "attack.eps"),
    ({"n_iter": -1}, "attack.n_iter"),
    ({"n_queries": 2.5}, "attack.n_queries"),
])
def test_bad_settings_are_one_line_errors(cfg, key):
    with pytest.raises(ConfigError) as err:
        autoattack.settings_from_config({"eps": 8.0, **cfg}, seed=0, batch_size=10)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_settings_subset_and_defaults():
    s = autoattack.settings_from_config({"eps": 8, "version": "standard", "attacks": []}, 3, 50)
    assert s.attacks == ("apgd-ce", "apgd-t", "fab-t", "square") and not s.custom
    assert not s.reduced and s.seed == 3 and s.eps == 8.0
    s = autoattack.settings_from_config({"eps": 8, "version": "plus",
                                         "attacks": ["square", "apgd-ce"], "n_queries": 10},
                                        0, 50)
    assert s.attacks == ("square", "apgd-ce") and s.custom and s.reduced


@pytest.mark.slow
def test_bad_input_through_the_command_line(trained):
    for args, needle in ((["--attack.version", "strong"], "attack.version"),
                         (["--attack.attacks", "apgd-x"], "attack.attacks"),
                         (["--attack.eps", "0"], "attack.eps"),
                         (["--eval.bn_mode", "train"], "eval.bn_mode")):
        proc = run("pgd_attack.py", "--config", CONFIG, "--device", "cpu", "--model_dir",
                   "models/c10", *REDUCED, *args, cwd=trained, check=False)
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and needle in last


class ChannelsLastNet(nn.Module):
    """Its forward turns the input channels_last, so autograd's input gradient is too."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.conv(x.contiguous(memory_format=torch.channels_last) / 255.0)
        return self.fc(h.mean(dim=(2, 3)))


def test_scale01_feeds_the_model_255x_and_returns_contiguous_gradients():
    net = ChannelsLastNet()
    x01 = torch.rand(2, 3, 8, 8, requires_grad=True)
    out = autoattack.Scale01(net)(x01)
    assert torch.equal(out, net(x01.detach() * 255.0))
    (g,) = torch.autograd.grad(out[:, 0].sum(), x01)
    assert g.is_contiguous()
    g.view(2, -1)  # what pyautoattack's zero-gradient check does
    ref = x01.detach().clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(net(ref * 255.0)[:, 0].sum(), ref)
    torch.testing.assert_close(g, g_ref)


def test_run_restores_the_model_and_stays_in_the_eps_ball():
    torch.manual_seed(0)
    net = ChannelsLastNet().train()
    x = torch.rand(6, 3, 8, 8) * 255
    with torch.no_grad():
        y = net.eval()(x).argmax(1)  # all correct: every example is attacked
    net.train()
    s = autoattack.settings_from_config({"eps": 4.0, "attacks": ["apgd-ce"], "n_iter": 5},
                                        0, 4)
    x_adv, rep = autoattack.run(net, x, y, s, "cpu", show=False)
    assert net.training and all(p.requires_grad and p.grad is None for p in net.parameters())
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= 4.0 + 1e-3
    assert rep["clean_accuracy"] == 1.0 and rep["n"] == 6
    with torch.no_grad():
        assert float((net.eval()(x_adv).argmax(1) == y).float().mean()) == \
            pytest.approx(rep["final_accuracy"])


def test_targeted_sub_attacks_target_every_other_class_of_a_small_model():
    """A 5-class model (e.g. a CIFAR-10 class subset) has 4 wrong classes, not the standard
    9: APGD-T and FAB-T target 4 (the library itself would index past the logits)."""
    torch.manual_seed(0)
    net = ChannelsLastNet()
    net.fc = nn.Linear(4, 5)
    net.eval()
    x = torch.rand(4, 3, 8, 8) * 255
    with torch.no_grad():
        y = net(x).argmax(1)
    s = autoattack.settings_from_config({"eps": 4.0, "attacks": ["apgd-t", "fab-t"],
                                         "n_iter": 2}, 0, 4)
    x_adv, rep = autoattack.run(net, x, y, s, "cpu", show=False)
    assert rep["target_classes"] == 4 and x_adv.shape == x.shape
    assert list(rep["robust_accuracy"]) == ["clean", "apgd-t", "fab-t"]


def _pgd_eval(w, *args):
    """pgd_attack.py + run_attack.py with PGD-5 at eps 4; (attack JSON, eval JSON, stderr)."""
    common = ["--config", str(REPO / "configs/attack_pgds5.yaml"), "--device", "cpu",
              "--model_dir", "models/c10", "--attack.eps", "4", "--attack.step_size", "1",
              *args]
    proc = call("pgd_attack.py", *common, cwd=w)
    call("run_attack.py", *common, cwd=w)
    meta = json.loads(attack_file(w, "models/c10", "pgds5").with_suffix(".json").read_text())
    ev = json.loads((w / "models/c10/eval_pgds5.json").read_text())
    return meta, ev, proc.stderr


@pytest.mark.slow
def test_pgd_attack_early_stops_by_default_and_not_under_bn_mode_train(trained):
    meta, ev_es, _ = _pgd_eval(trained)
    assert meta["attack"]["early_stop"] is True and meta["seconds"] > 0
    meta, ev_full, _ = _pgd_eval(trained, "--attack.early_stop", "false")
    assert meta["attack"]["early_stop"] is False
    assert ev_es["adv_accuracy"] <= ev_full["adv_accuracy"] < ev_full["clean_accuracy"]
    meta, ev_train, err = _pgd_eval(trained, "--eval.bn_mode", "train")
    assert meta["attack"]["early_stop"] is False and "early_stop is off" in err
