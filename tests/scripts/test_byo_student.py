"""Bring your own student (issue #18, docs/byo_teacher.md): a factory's model - torchvision's
ResNet-18 - as the IGAM student, with a factory teacher taking [0, 1] pixels used as it is
(its classes are the target task's); then the attack files, AutoAttack, the sanity checks and
the input-gradient pictures from the run folder alone; and the one-line error at start for a
student IGAM cannot differentiate twice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from e2e import FAST, REPO, attack_file, run, synth
from torch.autograd.function import once_differentiable

import pgd_attack
import run_attack
import train_igam
from igam.errors import ConfigError
from igam.eval import sanity, visualize
from igam.gradients import double_backward_failure
from igam.models import ExternalClassifier, build_model
from igam.run import engine, external, schemas
from igam.run.checkpoint import load_checkpoint
from igam.zoo import robustbench_model

TEACHER = ["--teacher.model", "igam.zoo:robustbench_model", "--teacher.kwargs",
           '{"name": "Standard", "depth": 10, "widen_factor": 1}']
IGAM = ["--train.batch_size", "8", "--igam.steps_before_adv_opt", "2",
        "--igam.disc_update_steps", "2", "--discriminator.num_conv_layers", "2"]


class _ReluOnce(torch.autograd.Function):
    """A ReLU whose backward cannot be differentiated (``@once_differentiable``)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0)


class _OnceRelu(nn.Module):
    def forward(self, x):
        return _ReluOnce.apply(x)


def once_differentiable_net(num_classes: int = 10) -> nn.Module:
    """A student factory (``test_byo_student:once_differentiable_net``) IGAM cannot train."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _OnceRelu(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, num_classes))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Synthetic CIFAR-10 and a factory teacher's weights file (a tiny RobustBench WRN,
    [0, 1] inputs, 10 classes)."""
    w = tmp_path_factory.mktemp("byo_student")
    synth("cifar10", w / "data/c10", "--n_train", "40", "--n_test", "20")
    torch.manual_seed(1)
    torch.save(robustbench_model("Standard", depth=10, widen_factor=1).state_dict(),
               w / "teacher.pt")
    return w


def test_torchvision_resnet18_double_backward_works():
    """torchvision's ResNet-18 (in-place ReLUs after BatchNorm, max pool) takes IGAM's double
    backward: nothing its backward needs is overwritten."""
    student = ExternalClassifier.from_factory("torchvision.models:resnet18", {"num_classes": 10})
    x, y = torch.rand(2, 3, 32, 32) * 255, torch.tensor([1, 7])
    before = {k: v.clone() for k, v in student.state_dict().items()}
    assert double_backward_failure(student, x, y) is None
    for k, v in student.state_dict().items():  # the check leaves the student as it was
        torch.testing.assert_close(v, before[k])


def test_factory_student_takes_the_data_classes():
    section = {**schemas.IGAM_SCHEMA.defaults["student"], "model": "torchvision.models:resnet18"}
    student = external.build_student(section, 5, "cpu")
    assert student.arch["kwargs"] == {"num_classes": 5} and student.num_classes == 5
    with pytest.raises(ConfigError, match="predicts 7 classes"):
        external.build_student({**section, "kwargs": {"num_classes": 7}}, 5, "cpu")
    with pytest.raises(ConfigError, match="student.model.*cannot import"):
        external.build_student({**section, "model": "no_such_package:net"}, 5, "cpu")


def test_student_without_double_backward_fails_at_start_naming_the_layer(work, tmp_path):
    with pytest.raises(ConfigError) as err:
        train_igam.main([*FAST, *TEACHER, "--teacher.weights", str(work / "teacher.pt"),
                         "--data.root", str(work / "data/c10"),
                         "--student.model", "test_byo_student:once_differentiable_net",
                         "--model_dir", str(tmp_path / "run"), "--train.steps", "2", *IGAM])
    message = str(err.value)
    assert "\n" not in message and "double backward" in message
    assert "layer 1 (_OnceRelu)" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_torchvision_student_through_igam_attacks_and_tools(work, monkeypatch):
    """train_igam.py (its command line) with a ResNet-18 student and the factory teacher;
    pgd_attack.py and run_attack.py (PGD, AutoAttack), the sanity checks and the input-gradient
    pictures then need nothing but the run folder (in-process: one torch import less each);
    the run resumes."""
    w = work
    args = [*FAST, *TEACHER, "--teacher.weights", "teacher.pt", "--teacher_bn", "running",
            "--data.root", "data/c10", "--student.model", "torchvision.models:resnet18",
            "--model_dir", "models/igam", *IGAM]
    run("train_igam.py", *args, "--train.steps", "4", cwd=w)
    ckpt = load_checkpoint(w / "models/igam")
    assert ckpt["arch"] == {"type": "external", "factory": "torchvision.models:resnet18",
                            "kwargs": {"num_classes": 10}, "input_range": 1.0, "mean": None,
                            "std": None, "head": "fc"}
    records = [json.loads(x) for x in (w / "models/igam/metrics.jsonl").read_text().splitlines()]
    assert "disc_xent" in records[-1] and records[-1]["l2"] > 0
    student = build_model(ckpt["arch"])  # the checkpoint alone rebuilds the student
    assert isinstance(student.body, torchvision.models.ResNet)
    model, _ = engine.load_classifier(w / "models/igam")
    assert model.num_classes == 10

    monkeypatch.chdir(w)  # in-process from here: the paths the checkpoint records are relative
    for script in (pgd_attack, run_attack):
        script.main(["--config", str(REPO / "configs/attack_pgds5.yaml"), "--device", "cpu",
                     "--model_dir", "models/igam"])
    adv = np.load(attack_file(w, "models/igam", "pgds5"))
    assert adv.shape == (20, 32, 32, 3) and 0 <= adv.min() and adv.max() <= 255
    assert json.loads((w / "models/igam/eval_pgds5.json").read_text())["n"] == 20

    # AutoAttack (official, pyautoattack) on the factory student, at a tiny cost
    pgd_attack.main(["--config", str(REPO / "configs/attack_autoattack.yaml"), "--device", "cpu",
                     "--model_dir", str(w / "models/igam"), "--attack_dir", str(w / "attacks"),
                     "--attack.attacks", "apgd-ce", "--attack.n_iter", "2",
                     "--eval.num_examples", "8", "--eval.batch_size", "8"])
    meta = json.loads(attack_file(w, "models/igam", "autoattack").with_suffix(".json")
                      .read_text())
    assert meta["data"]["n"] == 8 and list(meta["autoattack"]["robust_accuracy"]) == [
        "clean", "apgd-ce"]

    sanity.main(["--model_dir", str(w / "models/igam"), "--device", "cpu",
                 "--sanity.num_examples", "8", "--sanity.batch_size", "8",
                 "--sanity.steps", "1,2", "--sanity.eps_sweep", "8,64",
                 "--sanity.sweep_steps", "2", "--sanity.square_queries", "10"])
    assert json.loads((w / "models/igam/sanity.json").read_text())["n"] == 8

    # input-gradient pictures: the student against itself (the teacher was not finetuned,
    # so it has no run folder); every gradient is w.r.t. [0, 255] pixels
    out = w / "grads.png"
    visualize.main(["--teacher_dir", str(w / "models/igam"), "--student_dir",
                    str(w / "models/igam"), "--device", "cpu", "--out", str(out),
                    "--picture.num_images", "4", "--alignment.num_examples", "8"])
    (res,) = json.loads(out.with_suffix(".json").read_text())["students"].values()
    assert out.is_file() and res["n"] + res["undefined"] == 8  # 4 steps: saturated softmax
    assert res["n"] == 0 or res["mean_cosine"] == pytest.approx(1.0, abs=1e-6)

    # the run continues from its checkpoint: the factory student rebuilt, its state restored
    train_igam.main([*args, "--resume", "--train.steps", "5"])
    assert load_checkpoint(w / "models/igam")["step"] == 5
