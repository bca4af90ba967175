"""End-to-end: watching a run (watch.every, checkpoint_best.pt, TensorBoard, plain progress
lines when stderr is not a terminal), through the entry scripts' ``main(argv)`` in this process
(e2e.call; stderr captured, not a terminal) and, for exit codes and a missing package, their
real command line."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from e2e import FAST, REPO, STUDENT, TINY, call, run, synth

from igam.run.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_state(a, b, where="") -> None:
    """Two checkpoint entries are equal, bit for bit (config and watch_best aside)."""
    if isinstance(a, dict):
        keys = set(a) | set(b)
        for k in keys - {"config", "watch_best"}:
            assert k in a and k in b, f"{where}/{k}"
            assert_same_state(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    w = tmp_path_factory.mktemp("watch")
    synth("tinyimagenet", w / "data/tiny", "--num_classes", "4", "--n_train_per_class", "8",
          "--n_val_per_class", "4")
    synth("cifar10", w / "data/c10", "--n_train", "64", "--n_test", "30")
    call("train_advtrain_tinyimagenet.py", "--config",
         str(REPO / "configs/advtrain_tinyimagenet.yaml"), *FAST, *TINY,
         "--data.root", "data/tiny", "--model_dir", "models/src",
         "--train.steps", "2", "--train.batch_size", "8", "--attack.steps", "1", cwd=w)
    call("finetune_teacher.py", "--config",
         str(REPO / "configs/finetune_tinyimagenet_to_cifar10.yaml"), *FAST,
         "--data.root", "data/c10", "--source_model_dir", "models/src",
         "--model_dir", "models/teacher", "--finetune.steps", "2", "--finetune.batch_size", "8",
         cwd=w)
    return w


IGAM = ["--config", str(REPO / "configs/igam_tinyimagenet_to_cifar10.yaml"), *FAST, *STUDENT,
        "--data.root", "data/c10", "--teacher_dir", "models/teacher", "--train.batch_size", "8",
        "--igam.steps_before_adv_opt", "2", "--igam.disc_update_steps", "2",
        "--discriminator.num_conv_layers", "2", "--checkpoint_every", "3", "--train.steps", "6"]
WATCH = ["--watch.every", "2", "--watch.pgd_steps", "2", "--watch.num_examples", "20"]


def test_watching_leaves_the_run_bit_identical(work):
    on = call("train_igam.py", *IGAM, *WATCH, "--tensorboard", "on", "--model_dir", "models/on",
              cwd=work)
    call("train_igam.py", *IGAM, "--watch.every", "0", "--tensorboard", "off",
         "--model_dir", "models/off", cwd=work)
    a, b = work / "models/on", work / "models/off"
    assert_same_state(load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt"))
    volatile = {"time", "steps_per_s", "images_per_s"}
    train_on = [{k: v for k, v in r.items() if k not in volatile}
                for r in records(a) if "xent" in r]
    assert train_on == [{k: v for k, v in r.items() if k not in volatile} for r in records(b)]
    assert all("lr" in r and "images_per_s" in r for r in records(b))
    watched = [r for r in records(a) if "watch_robust_accuracy" in r]
    assert [r["step"] for r in watched] == [2, 4, 6]
    assert all(r["watch_split"] == "test" and r["watch_n"] == 20 and r["lr"] == 0.1
               for r in watched)
    best = load_checkpoint(a / "checkpoint_best.pt")
    assert best["watch_best"]["watch_split"] == "test"
    assert best["step"] == max(watched, key=lambda r: (r["watch_robust_accuracy"],
                                                       -r["step"]))["step"]
    assert not (b / "checkpoint_best.pt").exists() and not (b / "tensorboard").exists()
    assert "test examples" in on.stdout and "chosen on test images" in on.stdout
    # stderr is a pipe, not a terminal: plain log lines on stdout, no progress-bar floods
    assert "\r" not in on.stderr and "step 6:" in on.stdout

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {}
    for split in ("train", "eval"):
        acc = EventAccumulator(str(a / "tensorboard" / split))
        acc.Reload()
        tags[split] = set(acc.Tags()["scalars"])
    assert {"C accuracy", "C xent", "D accuracy", "D xent", "total C loss", "learning rate",
            "images per second"} <= tags["train"]
    assert {"C accuracy", "PGD accuracy"} <= tags["eval"]
    acc = EventAccumulator(str(a / "tensorboard" / "eval"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("PGD accuracy")] == [2, 4, 6]


def test_resumed_watch_continues_the_comparison(work):
    common = [*IGAM[:-2], *WATCH, "--tensorboard", "off", "--train.steps"]
    call("train_igam.py", *common, "6", "--model_dir", "models/whole", cwd=work)
    call("train_igam.py", *common, "3", "--model_dir", "models/parts", cwd=work)
    call("train_igam.py", *common, "6", "--model_dir", "models/parts", "--resume", cwd=work)
    whole, parts = work / "models/whole", work / "models/parts"
    watched = [[{k: r[k] for k in r if k.startswith("watch") or k in ("step", "lr")}
                for r in records(d) if "watch_split" in r] for d in (whole, parts)]
    assert watched[0] == watched[1]
    assert_same_state(load_checkpoint(whole / "checkpoint_best.pt"),
                      load_checkpoint(parts / "checkpoint_best.pt"))


def test_validation_split(work):
    from igam.data import holdout

    with contextlib.redirect_stdout(io.StringIO()):  # python -m igam.data.holdout, in-process
        assert holdout.main(["--root", str(work / "data/c10"), "--out",
                             str(work / "data/c10_val"), "--per_class", "1"]) == 0
    proc = call("train_igam.py", *IGAM, *WATCH, "--data.root", "data/c10_val",
                "--train.steps", "2", "--model_dir", "models/val", cwd=work)
    assert "10 validation examples" in proc.stdout and "chosen on test" not in proc.stdout
    assert records(work / "models/val")[-1]["watch_split"] == "validation"
    best = load_checkpoint(work / "models/val/checkpoint_best.pt")
    assert best["watch_best"]["watch_split"] == "validation"
    # held-out images of the training folder itself are no validation data
    bad = run("train_igam.py", *IGAM, *WATCH, "--watch.root", "data/c10_val",
              "--model_dir", "models/bad", cwd=work, check=False)
    assert bad.returncode == 2 and "--data.root data/c10_val" in bad.stderr


def test_tensorboard_on_without_the_package_fails_at_once(work, tmp_path):
    hide = tmp_path / "hide" / "tensorboard"
    hide.mkdir(parents=True)
    (hide / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=f"{hide.parent}{os.pathsep}{REPO}", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "train_igam.py"), *IGAM, "--tensorboard",
                           "on", "--model_dir", "models/tb_missing"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: tensorboard: on needs the tensorboard package: "
        "pip install -r requirements-tensorboard.txt"]
    assert not (work / "models/tb_missing").exists()


def test_run_without_tensorboard_writes_no_events(work, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    monkeypatch.chdir(work)
    spec = importlib.util.spec_from_file_location("train_igam_script", REPO / "train_igam.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main([*IGAM, *WATCH, "--train.steps", "2", "--model_dir", "models/no_tb"])
    d = work / "models/no_tb"
    assert (d / "checkpoint.pt").is_file() and (d / "checkpoint_best.pt").is_file()
    assert not (d / "tensorboard").exists()


def test_advtrain_and_finetune_watch_too(work):
    call("train_advtrain_tinyimagenet.py", "--config",
         str(REPO / "configs/advtrain_tinyimagenet.yaml"), *FAST, *TINY, *WATCH,
         "--data.root", "data/tiny", "--model_dir", "models/src_watch", "--train.steps", "2",
         "--train.batch_size", "8", "--attack.steps", "1", cwd=work)
    call("finetune_teacher.py", "--config",
         str(REPO / "configs/finetune_tinyimagenet_to_cifar10.yaml"), *FAST, *WATCH,
         "--data.root", "data/c10", "--source_model_dir", "models/src",
         "--model_dir", "models/teacher_watch", "--finetune.steps", "2",
         "--finetune.batch_size", "8", cwd=work)
    for name, kind, n in (("src_watch", "classifier", 16), ("teacher_watch", "teacher", 20)):
        d = work / "models" / name
        watched = [r for r in records(d) if "watch_split" in r]
        assert [(r["step"], r["watch_n"]) for r in watched] == [(2, n)]
        best = load_checkpoint(d / "checkpoint_best.pt")
        assert best["kind"] == kind and best["step"] == 2
        assert all("lr" in r for r in records(d))
