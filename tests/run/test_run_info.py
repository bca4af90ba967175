"""What ran a run (issue #16, point 7): run_info.json holds the torch and Python versions, the git
commit (None outside a git checkout or without git), the device and each model's parameter
count; every config_history.jsonl record holds the versions and the commit."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import torch
import torch.nn as nn

from igam.run import rundir
from igam.run.rundir import HISTORY_NAME, RUN_INFO_NAME, prepare_run_dir, write_run_info

REPO = Path(__file__).resolve().parents[2]


def _head() -> str | None:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def test_run_info_records_versions_commit_device_and_parameters(tmp_path):
    student, disc = nn.Linear(3, 2), nn.Linear(4, 1)
    disc.bias.requires_grad_(False)
    path = write_run_info(tmp_path, {"igam": student, "discriminator": disc}, "cpu",
                          start_step=7)
    info = json.loads(path.read_text())
    assert path.name == RUN_INFO_NAME
    assert info["torch"] == torch.__version__ and info["python"] == platform.python_version()
    assert info["device"] == "cpu" and info["start_step"] == 7 and info["world_size"] == 1
    assert info["models"] == {"igam": {"parameters": 8, "trainable": 8},
                              "discriminator": {"parameters": 5, "trainable": 4}}
    head = _head()
    if head is not None:  # this checkout is a git repository
        assert info["git"]["commit"] == head and isinstance(info["git"]["dirty"], bool)


def test_no_git_checkout_or_no_git_is_no_failure(tmp_path, monkeypatch):
    assert rundir.git_commit(tmp_path) is None  # not a git checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # git not installed
    assert rundir.git_commit(REPO) is None
    info = json.loads(write_run_info(tmp_path, {"m": nn.Linear(1, 1)}, "cpu").read_text())
    assert info["git"] is None and info["models"]["m"]["parameters"] == 2


def test_history_records_versions_and_commit(tmp_path):
    prepare_run_dir(tmp_path / "run", {"seed": 0})
    record = json.loads((tmp_path / "run" / HISTORY_NAME).read_text().splitlines()[-1])
    assert record["event"] == "start" and record["torch"] == torch.__version__
    assert "git" in record and record["python"] == platform.python_version()
