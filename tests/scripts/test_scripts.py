"""The shell entry points a newcomer runs: scripts/test.sh (the README's test command) and the
install-if-missing snippet it shares with scripts/demo.sh."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def python(tmp_path) -> tuple[Path, Path]:
    """A `python` that records `-m pip ...` calls in a log instead of running pip."""
    log = tmp_path / "pip.log"
    exe = tmp_path / "python"
    exe.write_text("#!/usr/bin/env bash\n"
                   f'if [ "$1" = -m ] && [ "$2" = pip ]; then echo "$@" >> {log}; exit 0; fi\n'
                   f'exec {sys.executable} "$@"\n')
    exe.chmod(0o755)
    return exe, log


def ensure(python: Path, requirements: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"source {REPO}/scripts/_deps.sh && "
                           f"ensure_requirements {requirements}"],
                          env=dict(os.environ, PY=str(python)), capture_output=True, text=True)


def test_ensure_requirements_installs_only_what_is_missing(python, tmp_path):
    exe, log = python
    ready = tmp_path / "ready.txt"
    ready.write_text(f"-r {REPO / 'requirements-dev.txt'}\nnumpy>=1.0  # a comment\n")
    proc = ensure(exe, ready)
    assert proc.returncode == 0, proc.stderr
    assert not log.exists()  # everything there: pip is not called
    for line in ("surely-not-installed-igam-xyz>=1", "numpy<1.0"):
        need = tmp_path / "need.txt"
        need.write_text(f"pyyaml\n{line}\n")
        proc = ensure(exe, need)
        assert proc.returncode == 0, proc.stderr
        assert line in proc.stderr and "pyyaml" not in proc.stderr
        assert log.read_text().splitlines()[-1] == f"-m pip install -r {need}"


@pytest.mark.slow
def test_test_script_runs_pytest_with_its_arguments_and_exit_code(python):
    exe, log = python
    proc = subprocess.run(["bash", str(REPO / "scripts/test.sh"), "-k", "no_such_test_xyz"],
                          env=dict(os.environ, PYTHON=str(exe)), capture_output=True, text=True,
                          cwd="/")  # runs from anywhere
    assert proc.returncode == 5, proc.stdout[-2000:] + proc.stderr[-2000:]  # none selected
    assert "no tests ran" in proc.stdout or "deselected" in proc.stdout  # pytest-xdist: the former
    assert not log.exists()  # this environment has every requirement: nothing installed


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO / ".ci/run").read_text().splitlines()
    assert "bash scripts/test.sh" in ci
    assert "bash scripts/test.sh" in (REPO / "README.md").read_text()
