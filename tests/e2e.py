"""Helpers of the end-to-end tests: run an entry script or ``python -m igam.data.synthetic``
through its real command line (a subprocess with this repository on PYTHONPATH), the tiny
model sizes those tests train at, and where pgd_attack.py puts a model's attack file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model.widths", "4,4,8,16", "--model.units_per_stage", "1"]
STUDENT = ["--student.widths", "4,4,8,16", "--student.units_per_stage", "1"]
FAST = ["--device", "cpu", "--log_every", "2", "--eval.batch_size", "50"]


def attack_file(cwd: Path, model_dir: str, attack: str, dataset: str = "cifar10",
                norm: str = "linf", attack_dir: str = "attacks") -> Path:
    """The default adversarial-example file of ``model_dir`` (relative to ``cwd``, where the
    scripts ran): ``<attack_dir>/<run folder name>-<path hash>_<attack>_attack.npy``."""
    from igam.eval.advfiles import attack_file_path, run_name

    return cwd / attack_file_path(attack_dir, run_name(cwd / model_dir), attack, dataset, norm)


def run(script: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def synth(dataset: str, out: Path, *args: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "igam.data.synthetic", "--dataset", dataset,
                    "--out", str(out), *args], check=True, env=env, capture_output=True)
