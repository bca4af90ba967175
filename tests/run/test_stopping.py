"""Stopping safely on SIGINT / SIGTERM (igam.run.stopping), in-process: the handlers exist only
inside the training loop and the evaluation blocks and are restored afterwards; the first signal
lets the step finish, checkpoints the step reached and raises Stopped (exit code 128 + signal
number); the command printed to continue adds --resume as the config reads it. End to end
through the entry scripts: tests/scripts/test_signals.py; under torchrun: tests/run/
test_distributed.py."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from pathlib import Path

import pytest

from igam.run import engine, stopping
from igam.run.cli import run_main
from igam.run.rundir import MetricsLogger
from igam.run.stopping import Stopped, StopRequest, abort_on_signal, continue_args

SIGNALS = [signal.SIGINT, signal.SIGTERM]


@pytest.fixture
def recorded():
    """Python handlers that record the signals they get, installed for SIGINT and SIGTERM
    around the test (a second signal goes to them, not to pytest), and restored afterwards."""
    got: list[int] = []
    old = {s: signal.getsignal(s) for s in SIGNALS}

    def record(signum, frame):
        got.append(signum)

    for s in SIGNALS:
        signal.signal(s, record)
    yield got, record
    for s, h in old.items():
        signal.signal(s, h)


def test_handlers_only_inside_and_restored(recorded):
    _, record = recorded
    with StopRequest(announce=False) as stop:
        assert all(signal.getsignal(s) == stop._handle for s in SIGNALS)
    assert all(signal.getsignal(s) is record for s in SIGNALS)
    with pytest.raises(ZeroDivisionError):  # also when the loop fails
        with StopRequest(announce=False):
            raise ZeroDivisionError
    assert all(signal.getsignal(s) is record for s in SIGNALS)
    with pytest.raises(ZeroDivisionError):
        with abort_on_signal(lambda: "x"):
            assert signal.getsignal(signal.SIGTERM) is not record
            raise ZeroDivisionError
    assert all(signal.getsignal(s) is record for s in SIGNALS)


def test_ignored_signal_stays_ignored_and_threads_install_nothing(recorded):
    _, record = recorded
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job's SIGINT
    with StopRequest(announce=False):
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not record
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    signal.signal(signal.SIGINT, record)

    seen = []

    def in_thread():
        with StopRequest(announce=False):
            seen.append(signal.getsignal(signal.SIGTERM))

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert seen == [record]


def test_first_signal_sets_the_flag_second_goes_to_the_previous_handler(recorded, capfd):
    got, record = recorded
    with StopRequest(announce=True) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM and got == []
        assert all(signal.getsignal(s) is record for s in SIGNALS)  # already restored
        os.kill(os.getpid(), signal.SIGINT)  # the second one: not ours any more
        assert got == [signal.SIGINT]
        assert stop.consume() == signal.SIGTERM
    assert got == [signal.SIGINT]
    assert "SIGTERM received: stopping after the current step" in capfd.readouterr().err


def test_a_signal_after_the_last_check_is_delivered_again(recorded):
    got, _ = recorded
    with StopRequest(announce=False) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert got == []
    assert stop.signum == signal.SIGINT and got == [signal.SIGINT]  # not lost


class FakeCheckpointer:
    path = Path("run/checkpoint.pt")

    def __init__(self):
        self.saved = []

    def save(self, step):
        self.saved.append(step)


def _steps(signal_at: int | None, sig=signal.SIGTERM):
    done = []

    def step(x, y):
        done.append(len(done) + 1)
        if len(done) == signal_at:
            os.kill(os.getpid(), sig)  # arrives in the middle of the step
        return {"xent": float(len(done))}

    return step, done


def _batches():
    while True:
        yield None, None


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_fit_finishes_the_step_checkpoints_it_and_stops(recorded, tmp_path, sig):
    _, record = recorded
    step, done = _steps(5, sig)
    ckpt, logger = FakeCheckpointer(), MetricsLogger(tmp_path)
    with pytest.raises(Stopped) as info:
        engine.fit(step, _batches(), 0, 20, ckpt, logger, log_every=2, checkpoint_every=4,
                   desc="t", show=False)
    stop = info.value
    assert (stop.code, stop.signum, stop.resume) == (128 + sig, sig, True)
    assert stop.what == "after step 5 of 20; checkpoint saved in run/checkpoint.pt"
    assert done == [1, 2, 3, 4, 5] and ckpt.saved == [4, 5]
    logged = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 2  # steps 2 and 4: nothing extra for the stop
    assert all(signal.getsignal(s) is record for s in SIGNALS)


def test_fit_resumed_from_a_stop(recorded, tmp_path):
    """Starting at the step reached (as --resume does), the loop runs the remaining steps."""
    step, done = _steps(None)
    ckpt = FakeCheckpointer()
    engine.fit(step, _batches(), 5, 9, ckpt, None, 2, 4, desc="t", show=False)
    assert len(done) == 4 and ckpt.saved == [8, 9]


def test_run_main_prints_one_line_with_the_continue_command(capsys):
    def stopped(argv):
        raise Stopped(signal.SIGTERM, "after step 7 of 9; checkpoint saved in m/checkpoint.pt",
                      resume=True)

    with pytest.raises(SystemExit) as info:
        run_main(stopped, ["--model_dir", "m x", "--overwrite"])
    assert info.value.code == 143
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    head, command = err.strip().split("; continue with: ")
    assert head == "stopped by SIGTERM after step 7 of 9; checkpoint saved in m/checkpoint.pt"
    assert shlex.split(command) == [stopping._python(), os.path.relpath(__file__),
                                    "--model_dir", "m x", "--resume"]

    def aborted(argv):
        raise Stopped(signal.SIGINT, "after 3 of 9 examples (pgd); nothing was written",
                      resume=False)

    with pytest.raises(SystemExit) as info:
        run_main(aborted, ["--attack.steps", "5"])
    assert info.value.code == 130
    err = capsys.readouterr().err
    assert err.startswith("stopped by SIGINT after 3 of 9 examples (pgd); nothing was written; "
                          "rerun with: ")
    assert err.strip().endswith("--attack.steps 5")


def test_abort_on_signal_stops_at_once_and_says_how_far(recorded):
    got, record = recorded
    done = []
    with pytest.raises(Stopped) as info:
        with abort_on_signal(lambda: f"after {len(done)} of 10 examples; nothing was written"):
            for i in range(10):
                if i == 3:
                    os.kill(os.getpid(), signal.SIGTERM)
                    pytest.fail("the signal did not stop the block")
                done.append(i)
    assert info.value.code == 143 and not info.value.resume
    assert info.value.what == "after 3 of 10 examples; nothing was written"
    assert all(signal.getsignal(s) is record for s in SIGNALS) and got == []


@pytest.mark.parametrize("args, files, want", [
    ([], {}, ["--resume"]),
    (["--model_dir", "m"], {}, ["--model_dir", "m", "--resume"]),
    (["--resume", "--model_dir", "m"], {}, ["--resume", "--model_dir", "m"]),
    (["--resume=true"], {}, ["--resume=true"]),
    (["--no-resume", "--x", "1"], {}, ["--x", "1", "--resume"]),
    (["--resume", "false"], {}, ["--resume"]),
    (["--overwrite", "--model_dir", "m"], {}, ["--model_dir", "m", "--resume"]),
    (["--overwrite", "true", "--a.b", "2"], {}, ["--a.b", "2", "--resume"]),
    (["--overwrite=yes"], {}, ["--resume"]),
    (["--config", "ow.yaml"], {"ow.yaml": "overwrite: true\n"},
     ["--config", "ow.yaml", "--resume", "--no-overwrite"]),
    (["--config", "ow.yaml", "--no-overwrite"], {"ow.yaml": "overwrite: true\n"},
     ["--config", "ow.yaml", "--no-overwrite", "--resume"]),
    (["--config", "r.yaml"], {"r.yaml": "resume: true\noverwrite: false\n"},
     ["--config", "r.yaml"]),
    (["--config", "r.yaml", "--config", "n.yaml"],
     {"r.yaml": "resume: true\n", "n.yaml": "resume: false\n"},
     ["--config", "r.yaml", "--config", "n.yaml", "--resume"]),
    (["--data.classes", "1,2", "--model.widths=4,4,8,16"], {},
     ["--data.classes", "1,2", "--model.widths=4,4,8,16", "--resume"]),
])
def test_continue_args(tmp_path, monkeypatch, args, files, want):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        Path(name).write_text(text)
    assert continue_args(args) == want


def test_continue_args_pass_the_config_check(tmp_path, monkeypatch):
    """What continue_args gives loads to resume: true, overwrite: false."""
    from igam.run import schemas
    from igam.run.config import load_config

    monkeypatch.chdir(tmp_path)
    Path("ow.yaml").write_text("overwrite: true\nresume: false\n")
    for args in (["--overwrite"], ["--config", "ow.yaml"], ["--config", "ow.yaml", "--resume"],
                 ["--no-resume", "--overwrite=true"]):
        cfg = load_config(schemas.IGAM_SCHEMA, continue_args(args))
        assert (cfg["resume"], cfg["overwrite"]) == (True, False), args


def test_command_line_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(sys, "argv", ["train_igam.py", "--model_dir", "m"])
    assert stopping.command_line(None, True) == \
        "torchrun --nproc_per_node 4 train_igam.py --model_dir m --resume"
    monkeypatch.setenv("WORLD_SIZE", "8")  # two nodes of 4
    assert stopping.command_line(None, False) == \
        "torchrun --nnodes 2 --nproc_per_node 4 train_igam.py --model_dir m"
