"""Tests of the run-time plumbing: seeding and RNG state (igam.run.seeding), devices and TF32
(igam.run.device), atomic writes and JSON (igam.run.files), metrics and run folder
(igam.run.rundir), and the command-line guard (igam.run.cli)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from igam.errors import CheckpointError, ConfigError, DataError
from igam.run.checkpoint import load_checkpoint, save_checkpoint
from igam.run.cli import run_main
from igam.run.device import resolve_device, set_fidelity
from igam.run.files import atomic_write_text, write_json
from igam.run.rundir import MetricsLogger, prepare_run_dir
from igam.run.seeding import rng_state, seed_everything, set_rng_state

REPO = Path(__file__).resolve().parents[2]


def draw():
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.rand(3).tolist() + [float(np.random.randn())],
        torch.rand(3).tolist() + torch.randn(2).tolist(),
    )


def test_seed_everything_reproduces_all_generators():
    seed_everything(123)
    first = draw()
    seed_everything(123)
    assert draw() == first
    seed_everything(124)
    assert draw() != first


def test_rng_state_round_trip_through_weights_only_checkpoint(tmp_path):
    seed_everything(5)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's generator
    np.random.randn()  # and in NumPy's
    state = rng_state()
    expected = draw()
    draw()  # move every generator on
    path = save_checkpoint(tmp_path / "c.pt", {"rng": state})
    restored = torch.load(path, weights_only=True)["rng"]
    set_rng_state(restored)
    assert draw() == expected
    set_rng_state(load_checkpoint(path)["rng"])
    assert draw() == expected


def test_set_rng_state_rejects_malformed_state():
    with pytest.raises(CheckpointError, match="RNG state is malformed"):
        set_rng_state({"python": {"version": 3}})


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ConfigError, match="device 'gpu' is not a valid device"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device 'cuda:1' requested but CUDA is not"):
            resolve_device("cuda:1")
    else:
        with pytest.raises(ConfigError, match="cuda:99"):
            resolve_device("cuda:99")


def test_set_fidelity_sets_both_tf32_flags():
    original = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        set_fidelity(False)
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is False
        set_fidelity(True)
        assert torch.backends.cuda.matmul.allow_tf32 is True
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = original


def read_metrics(run_dir):
    """The records of ``run_dir/metrics.jsonl``."""
    text = (Path(run_dir) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def strict_loads(line):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(line, parse_constant=refuse)


def test_metrics_logger_writes_valid_jsonl(tmp_path):
    logger = MetricsLogger(tmp_path / "run")
    logger.log(1, loss=torch.tensor(2.5), acc=np.float32(0.25), lr=0.1, note="warm-up")
    logger.log(2, loss=float("nan"), grad=float("inf"), vec=torch.tensor([1.0, 2.0]))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first, second = (strict_loads(line) for line in lines)
    assert first["step"] == 1 and first["loss"] == 2.5 and first["acc"] == 0.25
    assert first["note"] == "warm-up" and "time" in first
    assert second["loss"] == "nan" and second["grad"] == "inf" and second["vec"] == [1.0, 2.0]
    path = logger.write_json("eval.json", {"acc": torch.tensor(0.5), "n": 10})
    assert json.loads(path.read_text()) == {"acc": 0.5, "n": 10}


def test_metrics_logger_repairs_partial_line_and_truncates_on_resume(tmp_path):
    logger = MetricsLogger(tmp_path)
    for step in range(1, 6):
        logger.log(step, loss=float(step))
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 6, "lo')  # crash in the middle of a write
    MetricsLogger(tmp_path).log(7, loss=7.0)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 7]
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        strict_loads(line)
    MetricsLogger(tmp_path, truncate_after=3)  # resumed from the checkpoint of step 3
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_atomic_write_helpers(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "one\n")
    atomic_write_text(target, "two\n")
    assert target.read_text() == "two\n"
    write_json(tmp_path / "x.json", {"a": [1, 2], "b": float("-inf")})
    assert strict_loads((tmp_path / "x.json").read_text()) == {"a": [1, 2], "b": "-inf"}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out.txt", "sub", "x.json"]


def test_atomic_write_gives_the_permissions_of_a_plain_write(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
        os.umask(0o077)
        atomic_write_text(tmp_path / "c.txt", "x")
    finally:
        os.umask(old)
    mode = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert mode == {"a.txt": 0o644, "b.txt": 0o644, "c.txt": 0o600}


def test_prepare_run_dir(tmp_path):
    run = tmp_path / "models" / "x"
    cfg = {"seed": 1, "train": {"widths": [16, 16]}}
    first = prepare_run_dir(run, cfg, resume=False)
    assert first.resume_from is None and run.is_dir()
    assert yaml.safe_load((run / "config.yaml").read_text()) == cfg
    assert prepare_run_dir(run, cfg, resume=False).resume_from is None  # no checkpoint yet
    save_checkpoint(run / "checkpoint.pt", {"step": 10})
    MetricsLogger(run).log(10, loss=1.0)
    with pytest.raises(ConfigError) as info:
        prepare_run_dir(run, cfg, resume=False)
    assert f"{run} already holds a run; pass --resume" in str(info.value)
    resumed = prepare_run_dir(run, {"seed": 2, "train": {"widths": [16, 16]}}, resume=True)
    assert resumed.resume_from == run / "checkpoint.pt"
    assert yaml.safe_load(resumed.config.read_text()) == cfg  # the config the run started with
    history = [json.loads(x) for x in (run / "config_history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "start", "resume"]
    assert history[-1]["changes"] == {"seed": [1, 2]}
    (run / "eval.log").write_text("kept")
    fresh = prepare_run_dir(run, cfg, overwrite=True)
    assert fresh.resume_from is None
    assert not fresh.checkpoint.exists() and not fresh.metrics.exists()
    assert (run / "eval.log").read_text() == "kept"
    with pytest.raises(ConfigError, match="contradict"):
        prepare_run_dir(run, cfg, resume=True, overwrite=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a folder"):
        prepare_run_dir(tmp_path / "file", cfg)


def test_run_main_exit_codes(capsys):
    def fails(argv):
        raise DataError("datasets/cifar10/data_batch_1 is missing;\nexpected the pickles")

    with pytest.raises(SystemExit) as info:
        run_main(fails, [])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: datasets/cifar10/data_batch_1 is missing; expected the pickles\n"

    def interrupted(argv):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        run_main(interrupted, [])
    assert info.value.code == 130 and "interrupted" in capsys.readouterr().err

    seen = []
    with pytest.raises(SystemExit) as info:
        run_main(lambda argv: seen.append(argv), ["--x"])
    assert info.value.code == 0 and seen == [["--x"]]

    def bug(argv):
        raise ZeroDivisionError("a bug, not a user error")

    with pytest.raises(ZeroDivisionError):  # bugs keep their traceback
        run_main(bug, [])


def test_run_main_in_a_real_process_prints_no_traceback(tmp_path):
    script = tmp_path / "entry.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from igam.run.config import Key, Schema, load_config\n"
        "from igam.run.cli import run_main\n"
        "def main(argv):\n"
        "    load_config(Schema({'train': {'batch_size': Key(32, 'batch')}}), argv)\n"
        "run_main(main, sys.argv[1:])\n"
    )
    result = subprocess.run(
        [sys.executable, str(script), "--train.batchsize", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown config key 'train.batchsize' on the command line "
        "(did you mean 'train.batch_size'?)"
    ]
