"""Failing early and clearly (issue #16, point 6): a missing teacher / source checkpoint, a
run folder that already holds a run, missing data and a missing optional package stop each
entry script at second 0 - before any data is loaded or model built - with one line
``error: ...``, exit code 2, and nothing written into model_dir.

The in-process tests make data loading and model building fail the test if they are reached;
the subprocess ones check the command line itself (exit code, one stderr line, time)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from e2e import FAST, STUDENT, TINY, run, synth

import finetune_teacher
import pgd_attack
import train_advtrain_tinyimagenet
import train_igam
from igam.errors import CheckpointError, ConfigError, DataError, MissingDependencyError
from igam.run import engine, preflight
from igam.run.checkpoint import make_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_work(monkeypatch):
    """Data loading, model loading and device setup fail the test if they are reached."""
    for name in ("load_train_test", "load_model", "load_teacher", "load_classifier", "setup"):
        monkeypatch.setattr(engine, name, lambda *a, _n=name, **k: pytest.fail(f"{_n} ran"))


@pytest.fixture(scope="module")
def c10(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("early") / "c10"
    synth("cifar10", root, "--n_train", "20", "--n_test", "10")
    return root


def _run_folder(path: Path) -> Path:
    """A folder holding a (dummy) checkpoint: what an earlier run leaves."""
    path.mkdir(parents=True)
    save_checkpoint(path / "checkpoint.pt", make_checkpoint("classifier", {}, {}))
    return path


def test_teacher_without_checkpoint(tmp_path, c10, no_work):
    (tmp_path / "teacher").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        train_igam.main(["--teacher_dir", str(tmp_path / "teacher"), "--data.dataset", "cifar10",
                         "--data.root", str(c10), "--model_dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_source_model_without_checkpoint(tmp_path, c10, no_work):
    with pytest.raises(CheckpointError, match="does not exist|holds no checkpoint"):
        finetune_teacher.main(["--source_model_dir", str(tmp_path / "none"),
                               "--data.dataset", "cifar10", "--data.root", str(c10),
                               "--model_dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    ([], "already holds a run; pass --resume"),
    (["--resume", "--overwrite"], "contradict"),
])
def test_model_dir_holding_a_run(tmp_path, c10, no_work, flags, message):
    run_dir = _run_folder(tmp_path / "run")
    with pytest.raises(ConfigError, match=message):
        train_advtrain_tinyimagenet.main(["--data.dataset", "cifar10", "--data.root", str(c10),
                                          "--model_dir", str(run_dir), *flags])
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt"]


@pytest.mark.parametrize("dataset, url", [
    ("cifar10", "https://www.cs.toronto.edu/~kriz/cifar.html"),
    ("cifar100", "https://www.cs.toronto.edu/~kriz/cifar.html"),
    ("tinyimagenet", "http://cs231n.stanford.edu/tiny-imagenet-200.zip"),
])
def test_missing_data_names_the_download(tmp_path, no_work, dataset, url):
    with pytest.raises(DataError) as e:
        train_advtrain_tinyimagenet.main(["--data.dataset", dataset,
                                          "--data.root", str(tmp_path / "nothing"),
                                          "--model_dir", str(tmp_path / "run")])
    assert url in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_tinyimagenet_without_val_fails_before_decoding(tmp_path):
    (tmp_path / "tin" / "train" / "n01" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="val/images.*tiny-imagenet-200.zip"):
        preflight.check_data({"dataset": "tinyimagenet", "root": str(tmp_path / "tin")})


@pytest.mark.parametrize("script, key", [(train_advtrain_tinyimagenet, "model"),
                                         (train_igam, "student")])
def test_widths_the_network_cannot_use(tmp_path, c10, no_work, script, key):
    """The method's own rule (stages 2 and 3 must grow), as a config error, before the data."""
    with pytest.raises(ConfigError) as e:
        script.main([f"--{key}.widths", "8,8,8,8", "--data.root", str(c10),
                     "--data.dataset", "cifar10", "--model_dir", str(tmp_path / "run")])
    assert f"'{key}.widths'" in str(e.value) and "downsample" in str(e.value)


def test_autoattack_without_package(tmp_path, no_work, monkeypatch):
    real = preflight.importlib.util.find_spec
    monkeypatch.setattr(preflight.importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyautoattack" else real(name, *a))
    with pytest.raises(MissingDependencyError, match="requirements-autoattack.txt"):
        pgd_attack.main(["--config", str(REPO / "configs/attack_autoattack.yaml"),
                         "--model_dir", str(tmp_path / "model"), "--device", "cpu"])


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_command_line_missing_teacher_is_one_line(tmp_path, c10):
    (tmp_path / "teacher").mkdir()
    t0 = time.monotonic()
    proc = run("train_igam.py", "--teacher_dir", str(tmp_path / "teacher"),
               "--data.dataset", "cifar10", "--data.root", str(c10), "--model_dir", "run",
               *STUDENT, *FAST, cwd=tmp_path, check=False)
    assert time.monotonic() - t0 < 60  # the imports only; no data, no model
    _one_line_error(proc, str(tmp_path / "teacher"), "checkpoint")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_command_line_model_dir_holding_a_run_is_one_line(tmp_path, c10):
    run_dir = _run_folder(tmp_path / "run")
    proc = run("train_advtrain_tinyimagenet.py", "--data.dataset", "cifar10",
               "--data.root", str(c10), "--model_dir", "run", *TINY, *FAST, cwd=tmp_path,
               check=False)
    _one_line_error(proc, "--resume", "--overwrite")
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt"]


def _fake_python(tmp_path: Path, have_autoattack: bool) -> tuple[dict, Path]:
    """PATH with a `python` that answers `-c "import pyautoattack"` (as if installed or not)
    and logs every other call instead of running it."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = -c ]; then exit {0 if have_autoattack else 1}; fi\n'
        f'echo "$@" >> {log}\n')
    (bin_dir / "python").chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"), log


@pytest.mark.parametrize("script", ["scripts/04_eval_igam_tinyimagenet_to_cifar10.sh",
                                    "scripts/07_eval_igam_cifar10_to_cifar100.sh"])
def test_eval_scripts_check_autoattack_first(tmp_path, script):
    env, log = _fake_python(tmp_path, have_autoattack=False)
    proc = subprocess.run(["bash", str(REPO / script)], env=env, capture_output=True, text=True)
    _one_line_error(proc, "pip install -r requirements-autoattack.txt", "AUTOATTACK=0")
    assert not log.exists()  # no attack was started
    proc = subprocess.run(["bash", str(REPO / script)], env=dict(env, AUTOATTACK="0"),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "autoattack" not in log.read_text() and "pgd_attack.py" in log.read_text()
    log.unlink()
    env, log = _fake_python(tmp_path / "with", have_autoattack=True)
    proc = subprocess.run(["bash", str(REPO / script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "configs/attack_autoattack.yaml" in log.read_text()



def test_demo_skips_the_square_check_without_pyautoattack(tmp_path):
    """scripts/demo.sh installs only requirements.txt: without pyautoattack it says so at the
    start and runs the sanity step with --sanity.square_queries 0 (which then cannot fail)."""
    env, log = _fake_python(tmp_path, have_autoattack=False)
    env.update(PYTHON=str(tmp_path / "bin" / "python"), DEMO_DIR=str(tmp_path / "out"),
               DEMO_DATA=str(tmp_path / "data"))
    proc = subprocess.run(["bash", str(REPO / "scripts/demo.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "requirements-autoattack.txt" in proc.stderr.splitlines()[0]
    sanity = [line for line in log.read_text().splitlines() if "igam.eval.sanity" in line]
    assert len(sanity) == 1 and "--sanity.square_queries 0" in sanity[0]
