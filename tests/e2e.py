"""Helpers of the end-to-end tests: run an entry script through its real command line (a
subprocess with this repository on PYTHONPATH: :func:`run`) or its ``main(argv)`` in this
process (:func:`call`, for tests not about process-level behaviour: no torch import per run),
write synthetic data (:func:`synth`), the tiny model sizes those tests train at, and where
pgd_attack.py puts a model's attack file."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
import traceback
import warnings
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


def call(script: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """:func:`run` in this process: the script's ``main`` under the same guard as its
    ``__main__`` block (``run_main(distributed.entry(main))``: one-line errors, exit codes),
    with ``cwd``, ``sys.argv``, stdout / stderr (captured, not a terminal) and Python warnings
    as in a subprocess. Another exception becomes exit code 1 with its traceback on stderr, as
    an uncaught one in a process. Global state the scripts set (seeds, TF32 flags) is theirs
    to set on every run; the cwd, argv, warning filters, the random, numpy and torch global
    random states (a test drawing from them after a call sees what it would have seen), the
    TF32 flags, torch's thread count and the signal handlers are put back."""
    import random
    import signal

    import numpy as np
    import torch

    from igam.run import distributed
    from igam.run.cli import run_main

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    module = importlib.import_module(Path(script).stem)
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    old_cwd, old_argv, threads = os.getcwd(), sys.argv, torch.get_num_threads()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    rng = random.getstate(), np.random.get_state(), torch.get_rng_state()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    code = 0
    try:
        os.chdir(cwd)
        sys.argv = [str(REPO / script), *argv]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings():
            _process_warnings()
            try:
                run_main(distributed.entry(module.main), argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
        torch.set_num_threads(threads)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        for s, handler in handlers.items():
            signal.signal(s, handler)
    proc = subprocess.CompletedProcess([sys.executable, str(REPO / script), *argv], code,
                                       out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{script} failed ({code}):\n{proc.stderr[-3000:]}")
    return proc


def _process_warnings() -> None:
    """Python warnings as a fresh interpreter shows them: printed to (the current) stderr, once
    per location, deprecations hidden - not recorded by pytest. Call in ``catch_warnings``."""
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                     ResourceWarning):
        warnings.simplefilter("ignore", category)

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show


def synth(dataset: str, out: Path, *args: str) -> None:
    """``python -m igam.data.synthetic --dataset DATASET --out OUT ARGS``, in this process."""
    from igam.data import synthetic

    with contextlib.redirect_stdout(io.StringIO()):
        code = synthetic.main(["--dataset", dataset, "--out", str(out), *map(str, args)])
    assert code == 0, f"igam.data.synthetic {dataset} failed ({code})"
