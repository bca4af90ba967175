"""Speed options (igam.run.precision): each runs on CPU and moves the clean and PGD accuracy of a
fixed tiny model by at most a stated tolerance.

Tolerances (points of accuracy on 200 examples, i.e. 1 point = 2 examples):
* channels_last, torch.compile: 2 - the same arithmetic in another memory order / fused
  kernels; only float rounding differs, which can flip an example whose logits (or a PGD
  gradient sign) are within rounding of a tie;
* bf16 autocast: 5 - bf16 keeps 8 significant bits (relative error ~0.4% per op), enough to
  flip examples near the decision boundary and some PGD gradient signs along the way.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from igam.attacks import PGD
from igam.errors import ConfigError
from igam.models import WideResNet
from igam.run import precision, schemas
from igam.run.config import load_config
from igam.training import ClassifierTrainer, evaluate

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = {"channels_last": 2.0, "compile": 2.0, "bf16": 5.0}


def _data(n: int, seed: int):
    """Easy classes: a colour and a sinusoidal grating per class + uniform noise, in [0, 255]."""
    g = torch.Generator().manual_seed(seed)
    g0 = torch.Generator().manual_seed(0)
    colours = torch.rand(10, 3, 1, 1, generator=g0) * 120 + 68
    freq = torch.randint(1, 4, (10, 2), generator=g0).float()
    ii = torch.arange(32.0)
    phase = freq[:, 0, None, None] * ii[:, None] + freq[:, 1, None, None] * ii[None, :]
    gratings = 50 * torch.sin(2 * torch.pi * phase / 32)[:, None]  # (10, 1, 32, 32)
    y = torch.randint(0, 10, (n,), generator=g)
    x = colours[y] + gratings[y] + (torch.rand(n, 3, 32, 32, generator=g) * 2 - 1) * 30
    return x.clamp(0, 255), y


@pytest.fixture(scope="module")
def trained():
    """A tiny WideResNet after 80 SGD steps (fixed seed), and its fp32 clean / PGD accuracy."""
    torch.manual_seed(0)
    model = WideResNet(10, (4, 4, 8, 16), 1, "zero_mean_l2")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(80):
        x, y = _data(64, 100 + step)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = _data(200, 7)
    return model, test, _accuracies(model, test)


def _accuracies(forward, test) -> tuple[float, float]:
    """(clean, PGD-5 eps 4) accuracy in percent, eval mode, batches of 100."""
    x, y = test
    batches = [(x[i:i + 100], y[i:i + 100]) for i in range(0, len(y), 100)]
    clean = evaluate(forward, batches)["accuracy"]
    attack = PGD(forward, eps=4.0, step_size=1.0, steps=5, random_start=False, bn_mode="eval")
    robust = evaluate(forward, batches, attack=attack)["accuracy"]
    return 100 * clean, 100 * robust


def test_fixture_model_is_meaningful(trained):
    _, _, (clean, robust) = trained
    assert clean >= 70 and 20 <= robust <= clean - 20  # otherwise the comparisons below say little


@pytest.mark.parametrize("option", ["channels_last", "bf16",
                                    pytest.param("compile", marks=pytest.mark.slow)])
def test_option_runs_and_keeps_accuracy(trained, option):
    model, test, (clean, robust) = trained
    prec = precision.from_config({"autocast": "bf16" if option == "bf16" else "none",
                                  "channels_last": option == "channels_last",
                                  "compile": option == "compile"})
    m = WideResNet(10, (4, 4, 8, 16), 1, "zero_mean_l2")
    m.load_state_dict(model.state_dict())
    m.eval()
    forward = precision.compiled(precision.wrap(m, prec), prec)
    if option == "channels_last":
        assert m.init_conv.weight.is_contiguous(memory_format=torch.channels_last)
    got_clean, got_robust = _accuracies(forward, test)
    tol = TOLERANCE[option]
    assert abs(got_clean - clean) <= tol, (option, got_clean, clean)
    assert abs(got_robust - robust) <= tol, (option, got_robust, robust)
    for k, v in model.state_dict().items():  # attacks/eval leave the model untouched
        torch.testing.assert_close(m.state_dict()[k].contiguous(), v)


def test_bf16_channels_last_adversarial_training_step():
    torch.manual_seed(0)
    model = WideResNet(10, (4, 4, 8, 16), 1, "zero_mean_l2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prec = precision.Precision(autocast="bf16", channels_last=True)
    net = precision.wrap(model, prec)
    x, y = _data(8, 1)
    assert net(x).dtype == torch.float32  # logits back in fp32; weights stay fp32
    attack = PGD(net, eps=8.0, step_size=2.0, steps=2, keep_buffers=False)
    trainer = ClassifierTrainer(net, [[0, 0.1]], attack=attack)
    out = trainer.step(x, y)
    assert torch.isfinite(out["xent"]) and 0 <= float(out["accuracy"]) <= 1
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert (model.init_conv.weight - before["init_conv.weight"]).abs().max() > 0


def test_defaults_change_nothing_and_bad_values_are_refused(monkeypatch):
    model = WideResNet(10, (4, 4, 8, 16), 1)
    prec = precision.from_config(schemas.ADVTRAIN_SCHEMA.defaults["precision"])
    assert prec.is_default and prec.autocast_dtype is None
    assert precision.compiled(precision.wrap(model, prec), prec) is model
    with pytest.raises(ConfigError, match="precision.autocast"):
        load_config(schemas.ATTACK_SCHEMA, ["--precision.autocast", "fp16"])
    # double backward: no bf16 / compile for IGAM
    assert "precision" not in schemas.IGAM_SCHEMA.defaults

    def broken(module):
        def fail(x):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\nmore")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    forward = precision.compiled(model, precision.Precision(compile=True))
    with pytest.raises(ConfigError, match="precision.compile.*C\\+\\+ compiler"):
        forward(torch.zeros(1, 3, 32, 32))


@pytest.mark.slow
def test_advtrain_script_with_bf16_and_channels_last(tmp_path):
    from e2e import call, synth

    synth("cifar10", tmp_path / "c10", "--n_train", "32", "--n_test", "20")
    proc = call("train_advtrain_tinyimagenet.py", "--config",
                str(REPO / "configs/advtrain_cifar10.yaml"), "--device", "cpu",
                "--model.widths", "4,4,8,16", "--model.units_per_stage", "1",
                "--data.root", "c10", "--model_dir", "m", "--train.steps", "2",
                "--train.batch_size", "8", "--attack.steps", "1", "--log_every", "1",
                "--eval.batch_size", "10", "--precision.autocast", "bf16",
                "--precision.channels_last", "true", cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "m/eval_clean.json").is_file()
    ckpt = torch.load(tmp_path / "m/checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["model"]["init_conv.weight"].dtype == torch.float32
