"""End to end: SIGTERM / SIGINT sent to the entry scripts' real processes (igam.run.stopping).

A training run signalled at a random step finishes that step, saves its checkpoint, prints one
line with the command that continues it and exits 128 + the signal number; that command, run
as printed, ends bit-identical to an uninterrupted run (checkpoint: weights, optimiser and
sampler state, RNG states; metrics.jsonl; final evaluation). A second signal stops at once,
leaving the last periodic checkpoint intact. An attack stops at once, writes nothing and says
how far it got. The issue's done-criterion is the 200-step IGAM case. Every test here signals
the scripts' real processes and runs the printed command as one: the slow tier (in-process
tests: tests/run/test_stopping.py). The uninterrupted reference runs are the scripts' main(argv)
in this process (e2e.call), which the resumed processes must match bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from e2e import FAST, REPO, STUDENT, TINY, call, synth

from igam.models import Teacher, WideResNet
from igam.run import engine
from igam.run.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
TIMEOUT = 600


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Synthetic TinyImageNet and CIFAR-10, a tiny source classifier and a tiny teacher
    (random weights, saved directly: the scripts under test only need them to load)."""
    w = tmp_path_factory.mktemp("signals")
    synth("tinyimagenet", w / "tiny", "--num_classes", "4", "--n_train_per_class", "8",
          "--n_val_per_class", "4")
    synth("cifar10", w / "c10", "--n_train", "64", "--n_test", "30")
    torch.manual_seed(0)
    widths = [int(v) for v in TINY[1].split(",")]
    source = WideResNet(4, widths, 1, "zero_mean_l2")
    engine.Checkpointer(w / "src", "classifier", {}, source).save(0)
    teacher = Teacher(WideResNet(10, widths, 1, "zero_mean_l2"), 10, None, None, "batch")
    engine.Checkpointer(w / "teacher", "teacher", {}, teacher).save(0)
    return w


def script_args(script: str, steps: int, checkpoint_every: int) -> list[str]:
    common = [*FAST, "--log_every", "1", "--checkpoint_every", str(checkpoint_every)]
    if script == "train_igam.py":
        return ["--config", str(REPO / "configs/igam_tinyimagenet_to_cifar10.yaml"), *common,
                *STUDENT, "--data.root", "c10", "--teacher_dir", "teacher",
                "--train.batch_size", "8", "--igam.steps_before_adv_opt", "2",
                "--igam.disc_update_steps", "2", "--discriminator.num_conv_layers", "2",
                "--train.steps", str(steps)]
    if script == "train_advtrain_tinyimagenet.py":
        return ["--config", str(REPO / "configs/advtrain_tinyimagenet.yaml"), *common, *TINY,
                "--data.root", "tiny", "--train.batch_size", "8", "--attack.steps", "2",
                "--train.steps", str(steps)]
    assert script == "finetune_teacher.py"
    return ["--config", str(REPO / "configs/finetune_tinyimagenet_to_cifar10.yaml"), *common,
            "--data.root", "c10", "--source_model_dir", "src", "--finetune.batch_size", "8",
            "--finetune.steps", str(steps)]


class Running:
    """An entry script started with Popen: stdout read line by line, stderr to a file."""

    def __init__(self, script: str, args: list[str], cwd: Path):
        self.command = [sys.executable, str(REPO / script), *args]
        self.err_file = cwd / f"stderr_{time.monotonic_ns()}.txt"
        with open(self.err_file, "w") as err:
            self.proc = subprocess.Popen(self.command, cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                                         stderr=err, text=True)
        self.out: list[str] = []

    def wait_for_line(self, prefix: str) -> None:
        for line in self.proc.stdout:
            self.out.append(line)
            if line.startswith(prefix):
                return
        self.proc.wait(timeout=TIMEOUT)
        raise AssertionError(f"ended ({self.proc.returncode}) before printing {prefix!r}:\n"
                             f"{self.stderr()[-3000:]}")

    def wait_for_stderr(self, text: str, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while text not in self.stderr():
            if self.proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"no {text!r} on stderr ({self.proc.returncode}):\n"
                                     f"{self.stderr()[-3000:]}")
            time.sleep(0.005)

    def finish(self) -> int:
        self.out.extend(self.proc.stdout)
        return self.proc.wait(timeout=TIMEOUT)

    def stderr(self) -> str:
        return self.err_file.read_text()

    def last_stderr_line(self) -> str:
        lines = [x for x in self.stderr().replace("\r", "\n").splitlines() if x.strip()]
        return lines[-1] if lines else ""


def equal(a, b, where: str = "checkpoint") -> None:
    """Exact equality of nested checkpoint entries (tensors bit for bit)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for key in a:
            equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            equal(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock entries."""
    return [{k: v for k, v in json.loads(line).items()
             if k not in ("time", "steps_per_s", "images_per_s")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(got: Path, want: Path) -> None:
    a, b = load_checkpoint(got), load_checkpoint(want)
    a.pop("config"), b.pop("config")  # model_dir and resume differ
    equal(a, b)
    assert metrics(got) == metrics(want)
    # the run's records of itself: compared above, or by design different (times, commands)
    own = {"config.yaml", "checkpoint.pt", "metrics.jsonl", "config_history.jsonl",
           "run_info.json", "tensorboard"}  # event files: wall-clock times
    files = {p.name for p in want.iterdir()} - own
    assert files and files == {p.name for p in got.iterdir()} - own
    for name in files:
        assert (got / name).read_bytes() == (want / name).read_bytes(), name
    history = [json.loads(x) for x in (got / "config_history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "resume"]


CASES = [
    pytest.param("train_igam.py", 200, 50, signal.SIGTERM, id="igam-200-SIGTERM"),
    pytest.param("train_advtrain_tinyimagenet.py", 20, 7, signal.SIGINT, id="advtrain-SIGINT"),
    pytest.param("finetune_teacher.py", 20, 7, signal.SIGTERM, id="finetune-SIGTERM"),
]


@pytest.mark.parametrize("script, steps, every, sig", CASES)
def test_signal_at_a_random_step_continues_bit_identically(work, script, steps, every, sig):
    w = work
    seed = int(os.environ.get("IGAM_SIGNAL_SEED", random.randrange(1 << 30)))
    k = random.Random(seed).randint(1, steps * 3 // 4)
    name = signal.Signals(sig).name
    why = f"{script}: {name} after step {k} of {steps} (IGAM_SIGNAL_SEED={seed})"
    args = script_args(script, steps, every)
    tag = f"{Path(script).stem}{steps}"
    call(script, *args, "--model_dir", f"{tag}_ref", cwd=w)

    proc = Running(script, [*args, "--model_dir", f"{tag}_stop"], w)
    proc.wait_for_line(f"step {k}:")
    proc.proc.send_signal(sig)
    code = proc.finish()
    assert code == 128 + sig, f"{why}: exit {code}\n{proc.stderr()[-3000:]}"
    line = proc.last_stderr_line()
    head, command = line.split("; continue with: ")
    saved = load_checkpoint(w / f"{tag}_stop")["step"]
    assert k <= saved <= steps, why
    assert head == (f"stopped by {name} after step {saved} of {steps}; "
                    f"checkpoint saved in {tag}_stop/checkpoint.pt"), why
    assert command == shlex.join([*proc.command, "--resume"]), why
    assert [r["step"] for r in metrics(w / f"{tag}_stop")] == list(range(1, saved + 1)), why
    assert "clean accuracy" not in "".join(proc.out), why  # stopped before the evaluation
    assert f"{name} received: stopping after the current step" in proc.stderr()

    done = subprocess.run(shlex.split(command), cwd=w, env=ENV, capture_output=True, text=True,
                          timeout=TIMEOUT)  # exactly as printed
    assert done.returncode == 0, f"{why}\n{done.stderr[-3000:]}"
    assert_same_run(w / f"{tag}_stop", w / f"{tag}_ref")


def test_second_signal_stops_at_once(work):
    """Slow steps (PGD-30): the second SIGTERM arrives while the first lets a step finish; the
    process ends at once by the signal's default action, nothing half-written is left and the
    last periodic checkpoint (step 2) loads."""
    w = work
    args = script_args("train_advtrain_tinyimagenet.py", 8, 2)
    args += ["--attack.steps", "30"]
    proc = Running("train_advtrain_tinyimagenet.py", [*args, "--model_dir", "twice"], w)
    proc.wait_for_line("step 3:")  # step 4 runs (the checkpoint of step 2 is written)
    proc.proc.send_signal(signal.SIGTERM)
    proc.wait_for_stderr("SIGTERM received")
    t0 = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    code = proc.finish()
    elapsed = time.monotonic() - t0
    assert code == -signal.SIGTERM, proc.stderr()[-3000:]  # not 143: no graceful stop
    assert elapsed < 1.0, elapsed  # a PGD-30 step takes longer
    assert "stopped by" not in proc.stderr()
    assert load_checkpoint(w / "twice")["step"] == 2
    assert sorted(p.name for p in (w / "twice").iterdir() if p.name != "tensorboard") == [
        "checkpoint.pt", "config.yaml", "config_history.jsonl", "metrics.jsonl", "run_info.json"]


def test_attack_stops_at_once_and_writes_nothing(work):
    w = work
    model = WideResNet(10, [4, 4, 8, 16], 1, "zero_mean_l2")
    engine.Checkpointer(w / "victim", "classifier", {}, model).save(0)
    args = ["--config", str(REPO / "configs/attack_pgds5.yaml"), "--device", "cpu",
            "--model_dir", "victim", "--data.dataset", "cifar10", "--data.root", "c10",
            "--eval.batch_size", "5", "--attack.steps", "300", "--attack.early_stop", "false"]
    proc = Running("pgd_attack.py", args, w)
    proc.wait_for_stderr("pgd victim-")  # the progress bar: the attack loop runs
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.finish() == 143, proc.stderr()[-3000:]
    head, command = proc.last_stderr_line().split("; rerun with: ")
    assert head.startswith("stopped by SIGTERM after ")
    assert head.endswith(" of 30 examples (pgd); nothing was written")
    done = int(head.split()[4])
    assert done % 5 == 0 and done < 30
    assert command == shlex.join(proc.command)
    assert not (w / "attacks").exists()
