"""Bring your own teacher (issue #18, docs/byo_teacher.md): an external model - a factory's or
RobustBench's - adapted to [0, 255] pixels, loaded from a weights file or RobustBench's local
layout, finetuned to the target task and used by IGAM; its run folders rebuild from their
checkpoints alone.

RobustBench's weights cannot be downloaded here: the worked example runs with the same
architecture (Carmon2019Unlabeled's WRN, at a tiny depth / width), randomly initialised and
saved into the local layout as RobustBench's files are (``state_dict`` entry, ``module.``
prefixes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from e2e import FAST, REPO, STUDENT, run, synth

import finetune_teacher
import pgd_attack
import run_attack
import train_igam
from igam import zoo
from igam.data.synthetic import write_synthetic_cifar10, write_synthetic_cifar100
from igam.errors import CheckpointError, ConfigError
from igam.eval import visualize
from igam.gradients import input_gradient, true_class_probability
from igam.models import ExternalClassifier, Teacher, build_model
from igam.ops import upresize
from igam.run import engine, external, schemas
from igam.run.checkpoint import load_checkpoint
from igam.zoo import (
    MODELS,
    RobustBenchDMWideResNet,
    RobustBenchWideResNet,
    known_names,
    robustbench_model,
)

TINY_RB = {"depth": 10, "widen_factor": 1}  # WRN-10-1: Carmon2019Unlabeled's module names
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def teacher_section(**keys) -> dict:
    """The ``teacher`` section of finetune_teacher.py's defaults with ``keys`` set."""
    return {**schemas.FINETUNE_SCHEMA.defaults["teacher"], **keys}


def save_robustbench_layout(root: Path, name: str = "Carmon2019Unlabeled") -> Path:
    """A randomly initialised tiny ``name`` saved where RobustBench keeps it, as its files
    are (a ``state_dict`` entry with DataParallel's ``module.`` prefixes)."""
    model = robustbench_model(name, **TINY_RB)
    file = root / "cifar10" / "Linf" / f"{name}.pt"
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "epoch": 3}, file)
    return file


def test_input_gradient_of_a_01_model_is_the_chain_rule():
    """A [0, 1] model with mean/std: the adapter's input gradient (w.r.t. [0, 255] pixels) is
    the wrapped model's gradient w.r.t. its own input times 1 / (255 std)."""
    inner = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    model = ExternalClassifier(inner, "test:none", input_range=1.0, mean=MEAN, std=STD).double()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64) * 255
    y = torch.tensor([0, 3, 4])
    g = input_gradient(model, x, y)
    z = ((x / 255 - torch.tensor(MEAN).double().view(1, 3, 1, 1))
         / torch.tensor(STD).double().view(1, 3, 1, 1)).requires_grad_(True)
    logits = model.fc(model.body(z))  # the wrapped model on its own (normalised) input
    (g_z,) = torch.autograd.grad(true_class_probability(logits, y).sum(), z)
    torch.testing.assert_close(g, g_z / (255 * torch.tensor(STD).double().view(1, 3, 1, 1)))
    # input_range 255 and no normalisation: the model sees the pixels as they are
    plain = ExternalClassifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5)), "test:none",
                               input_range=255)
    torch.testing.assert_close(plain.adapt(x.float()), x.float())


def test_the_names_built_without_the_package_are_documented():
    page = (REPO / "docs/byo_teacher.md").read_text()
    for (dataset, threat), names in MODELS.items():
        for name in names:
            assert f"`{name}`" in page, f"{dataset} {threat} {name} missing in byo_teacher.md"


def test_robustbench_architecture_and_head(monkeypatch):
    """The port's RobustBench WRN: the names it builds without the package, its head found
    as the last nn.Linear (``fc``), one-line errors for other names and a wrong head."""
    monkeypatch.setattr(zoo, "robustbench_available", lambda: False)  # even if it imports
    assert {"Carmon2019Unlabeled", "Standard"} <= set(known_names("cifar10", "Linf"))
    net = robustbench_model("Carmon2019Unlabeled", **TINY_RB)
    assert isinstance(net, RobustBenchWideResNet) and hasattr(net, "sub_block1")
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="only with the robustbench package") as err:
        robustbench_model("Andriushchenko2020Understanding")  # a PreAct ResNet
    assert "\n" not in str(err.value) and "igam.zoo.MODELS" in str(err.value)
    dm = robustbench_model("Wang2023Better_WRN-28-10", "cifar100", depth=10, width=1)
    assert isinstance(dm, RobustBenchDMWideResNet) and dm(torch.rand(2, 3, 32, 32)).shape == (
        2, 100)
    assert "mean" not in dm.state_dict()  # its normalisation is inside, not in the weights
    wrapped = ExternalClassifier(net, external.ROBUSTBENCH_FACTORY)
    assert wrapped.head_name == "fc" and wrapped.num_features == 64
    with pytest.raises(ValueError, match="not an nn.Linear"):
        ExternalClassifier(robustbench_model("Standard", **TINY_RB), "x", head="bn1")


def test_external_teacher_rebuilds_from_its_arch():
    """A teacher around a RobustBench model: ``arch`` -> build_model -> the same module (the
    checkpoint rebuild of every tool), BatchNorm switch included."""
    source = ExternalClassifier.from_factory(
        external.ROBUSTBENCH_FACTORY, {"name": "Standard", "dataset": "cifar10",
                                       "threat_model": "Linf", **TINY_RB})
    teacher = Teacher(source, 7, upresize_to=None, bn="running")
    teacher.eval()
    copy = build_model(json.loads(json.dumps(teacher.arch)))  # as stored: plain values
    copy.load_state_dict(teacher.state_dict())
    copy.eval()
    x = torch.rand(4, 3, 32, 32) * 255
    torch.testing.assert_close(copy(x), teacher(x))
    assert copy.arch == teacher.arch and copy.num_classes == 7
    # teacher.bn 'running' holds in train mode too (the port's switch on nn.BatchNorm2d)
    copy.train()
    torch.testing.assert_close(copy(x), teacher(x))


def test_upresize_and_a_named_head_for_any_teacher():
    """An external source behind the teacher's upresize (32 -> 64, gradients back at 32x32),
    its head named in the config instead of found."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, 2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 10))
    source = ExternalClassifier(net, "test:none", head="6")
    assert source.head_name == "6" and source.num_features == 6
    seen = []
    source.body.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-1]))
    teacher = Teacher.keeping_head(source, upresize_to=64, bn=None)
    x, y = torch.rand(2, 3, 32, 32) * 255, torch.tensor([1, 9])
    assert input_gradient(teacher, x, y).shape == (2, 3, 32, 32) and seen == [64]
    torch.testing.assert_close(teacher(x), source(upresize(x, 64)))  # its own head kept


def test_weights_files(tmp_path):
    """State dict, checkpoint with ``state_dict`` / ``model`` and ``module.`` prefixes load;
    a file with pickled objects is refused by weights_only with a one-line hint."""
    net = robustbench_model("Standard", **TINY_RB)
    sd = net.state_dict()
    for i, obj in enumerate([sd, {"model": sd}, {"state_dict": {f"module.{k}": v
                                                                 for k, v in sd.items()}}]):
        torch.save(obj, tmp_path / f"w{i}.pt")
        got = external.read_state_dict(tmp_path / f"w{i}.pt")
        assert list(got) == list(sd)
    torch.save({"state_dict": sd, "args": Path("x")}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="trust_weights") as err:
        external.read_state_dict(tmp_path / "pickled.pt")
    assert "\n" not in str(err.value)
    assert list(external.read_state_dict(tmp_path / "pickled.pt", trust=True)) == list(sd)


def test_factory_teacher_checks(tmp_path):
    with pytest.raises(ConfigError, match="teacher.model.*cannot import"):
        external.check_teacher(teacher_section(model="no_such_package.x:f", weights="w.pt"))
    with pytest.raises(ConfigError, match="teacher.weights"):
        external.check_teacher(teacher_section(model="igam.zoo:robustbench_model"))
    with pytest.raises(ConfigError, match="teacher.mean"):
        external.check_teacher(teacher_section(model="igam.zoo:robustbench_model",
                                               mean=[0.5]))
    # a factory teacher with its weights file: loaded, adapted, equal to the saved model
    net = robustbench_model("Standard", **TINY_RB).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    sec = teacher_section(model="igam.zoo:robustbench_model", weights=str(tmp_path / "w.pt"),
                          kwargs={"name": "Standard", **TINY_RB})
    model = external.load_teacher_source(sec, "cpu").eval()
    assert model.input_range == 1.0  # input_range 0: external models take [0, 1]
    x = torch.rand(2, 3, 32, 32) * 255
    torch.testing.assert_close(model(x), net(x / 255))


def test_missing_robustbench_weights_fail_before_any_work(tmp_path, monkeypatch):
    """No file in the local layout: CheckpointError naming the path, before the device, data
    or any model."""
    write_synthetic_cifar100(tmp_path / "c100", n_train=10, n_test=10)
    monkeypatch.setattr(engine, "setup", lambda *a, **k: pytest.fail("setup ran"))
    with pytest.raises(CheckpointError) as err:
        finetune_teacher.main(["--config",
                               str(REPO / "configs/finetune_robustbench_to_cifar100.yaml"),
                               "--data.root", str(tmp_path / "c100"),
                               "--teacher.robustbench_dir", str(tmp_path / "rb"),
                               "--model_dir", str(tmp_path / "teacher")])
    assert str(tmp_path / "rb/cifar10/Linf/Carmon2019Unlabeled.pt") in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "teacher").exists()


@pytest.mark.slow
def test_missing_robustbench_weights_is_one_line_naming_the_path(tmp_path):
    """The same on the command line: exit 2 at start with one line saying where to put the
    file and how RobustBench downloads it."""
    synth("cifar100", tmp_path / "c100", "--n_train", "10", "--n_test", "10")
    proc = run("finetune_teacher.py", "--config",
               str(REPO / "configs/finetune_robustbench_to_cifar100.yaml"), "--device", "cpu",
               "--data.root", "c100", "--teacher.robustbench_dir", "rb", cwd=tmp_path,
               check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(Path("rb/cifar10/Linf/Carmon2019Unlabeled.pt")) in lines[0]
    assert "load_model('Carmon2019Unlabeled'" in lines[0]
    assert not (tmp_path / "models").exists()


def test_factory_teacher_finetuned_to_the_target_task(tmp_path, monkeypatch):
    """A factory teacher ([0, 1] inputs, its weights a checkpoint with a state_dict entry)
    gets a new 10-class head on its frozen features; the saved teacher reloads and its source
    is still the file's model."""
    write_synthetic_cifar10(tmp_path / "c10", n_train=24, n_test=10)
    net = robustbench_model("Standard", **TINY_RB)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)
    finetune_teacher.main([*FAST, "--data.root", "c10", "--model_dir", "teacher",
                           "--teacher.model", "igam.zoo:robustbench_model", "--teacher.kwargs",
                           json.dumps({"name": "Standard", **TINY_RB}), "--teacher.weights",
                           "w.pt", "--teacher.upresize_to", "0", "--teacher.bn", "running",
                           "--finetune.steps", "2",
                           "--finetune.batch_size", "8"])
    teacher = engine.load_teacher("teacher", "cpu", "running")
    assert teacher.num_classes == 10 and teacher.source.input_range == 1.0
    net.eval()
    teacher.eval()
    x = torch.rand(2, 3, 32, 32) * 255
    # running statistics (no recalibration): the source is the file's model, head included
    torch.testing.assert_close(teacher.source(x), net(x / 255), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_robustbench_teacher_for_cifar100_end_to_end(tmp_path, monkeypatch):
    """Worked example (a) of docs/byo_teacher.md with its two configs: a RobustBench
    CIFAR-10 model from the local layout gets a CIFAR-100 head (finetune_teacher.py's command
    line), IGAM
    trains a student with it (train_igam.py); the teacher reloads from its folder, for the
    attack scripts and the input-gradient pictures too."""
    w = tmp_path
    synth("cifar100", w / "data/c100", "--n_train", "40", "--n_test", "20")
    save_robustbench_layout(w / "models/robustbench")
    kwargs = json.dumps(TINY_RB)
    run("finetune_teacher.py", "--config",
        str(REPO / "configs/finetune_robustbench_to_cifar100.yaml"), *FAST,
        "--data.root", "data/c100", "--teacher.kwargs", kwargs, "--finetune.steps", "2",
        "--finetune.batch_size", "8", cwd=w)
    tdir = w / "models/teacher_robustbench_to_cifar100"
    arch = load_checkpoint(tdir)["arch"]
    assert arch["source"] == {"type": "external", "factory": "igam.zoo:robustbench_model",
                              "kwargs": {"name": "Carmon2019Unlabeled", "dataset": "cifar10",
                                         "threat_model": "Linf", **TINY_RB},
                              "input_range": 1.0, "mean": None, "std": None, "head": "fc"}
    assert arch["num_target_classes"] == 100 and arch["bn"] == "running"
    teacher = engine.load_teacher(tdir, "cpu", "running")
    # the source stayed frozen: its weights are the RobustBench file's
    saved = external.read_state_dict(w / "models/robustbench/cifar10/Linf/"
                                          "Carmon2019Unlabeled.pt")
    torch.testing.assert_close(teacher.source.body.conv1.weight, saved["conv1.weight"])
    monkeypatch.chdir(w)  # in-process from here (one torch import less each): paths as above
    train_igam.main(["--config", str(REPO / "configs/igam_robustbench_to_cifar100.yaml"),
                     *FAST, *STUDENT, "--data.root", "data/c100", "--train.steps", "2",
                     "--train.batch_size", "8", "--igam.steps_before_adv_opt", "0",
                     "--discriminator.num_conv_layers", "2"])
    sdir = w / "models/igam_robustbench_to_cifar100"
    records = [json.loads(x) for x in (sdir / "metrics.jsonl").read_text().splitlines()]
    assert "disc_xent" in records[-1] and records[-1]["l2"] > 0
    assert json.loads((sdir / "eval_clean.json").read_text())["n"] == 20
    # the external teacher through the attack files and the pictures, from its folder alone
    for script in (pgd_attack, run_attack):
        script.main(["--config", str(REPO / "configs/attack_fgsm.yaml"), "--device", "cpu",
                     "--model_dir", str(tdir)])
    assert json.loads((tdir / "eval_fgsm.json").read_text())["n"] == 20
    visualize.main(["--teacher_dir", str(tdir), "--student_dir", str(sdir), "--device", "cpu",
                    "--out", str(w / "grads.png"), "--picture.num_images", "4"])
    (res,) = json.loads((w / "grads.json").read_text())["students"].values()
    assert res["n"] + res["undefined"] == 20
