"""Data-parallel training (igam.run.distributed): 2 CPU processes with gloo, tiny models.

* a plain and an adversarial ClassifierTrainer step, and IGAM iterations (plain phase, student
  step with the double-backward loss, discriminator step), give the same parameters as the
  single-process reference that runs one replica per rank on that rank's batch and averages
  the replicas' gradients (what DDP computes: BatchNorm uses per-rank batch statistics);
* whole-model teacher finetuning (TF1's Adam on CE + the source's weight-decay term, whose source
  head gets a gradient only from that term) matches its reference too;
* sharded evaluation and BN recalibration equal the single-process ones;
* ``torchrun --nproc_per_node 2 train_igam.py`` writes one checkpoint / metrics file, and a
  resumed run ends exactly where the uninterrupted one did;
* a SIGTERM that reaches one rank only stops every rank after the same step, with one
  checkpoint of that step; SIGTERM to torchrun stops the run safely, rank 0 prints the torchrun
  command that continues it, and the continued run ends exactly where the uninterrupted one did.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from igam.attacks import PGD
from igam.data import ArrayDataset, eval_batches
from igam.gradients import input_gradient
from igam.models import InputGradientDiscriminator, Teacher, WideResNet
from igam.objective import IGAMSettings, IGAMTrainer, discriminator_xent, student_loss
from igam.optim import AdamTF1, PiecewiseConstant, set_lr, sgd
from igam.run import distributed, engine
from igam.run.stopping import Stopped
from igam.training import ClassifierTrainer, HeadFinetuner, recalibrate_bn

REPO = Path(__file__).resolve().parents[2]
WORLD, B = 2, 4
TINY = (4, 4, 8, 16)
LR = [[0.0, 0.1], [1.0, 0.05]]
IGAM = IGAMSettings(beta=1.0, gamma=10.0, lr_schedule=((0, 0.1), (1, 0.05)),
                    disc_update_steps=1, steps_before_adv_opt=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init("cpu")


def _spawn(fn, tmp_path: Path) -> dict:
    """Run ``fn(rank, port, out)`` in WORLD processes and load what rank 0 saved. The ranks are
    forked from this process: each starts with torch imported and the same code loaded (a
    spawned one re-imports torch and this module, seconds of CPU each), and joins the process
    group itself (_join)."""
    out = tmp_path / "rank0.pt"
    mp.start_processes(fn, args=(_free_port(), str(out)), nprocs=WORLD, join=True,
                       start_method="fork")
    return torch.load(out, weights_only=False)


def _batches(steps: int, seed: int = 1):
    """Global batches of WORLD * B images; rank r takes rows r*B .. (r+1)*B - 1."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(WORLD * B, 3, 32, 32, generator=g) * 255,
             torch.randint(0, 10, (WORLD * B,), generator=g)) for _ in range(steps)]


def _shard(t: torch.Tensor, r: int) -> torch.Tensor:
    return t[r * B:(r + 1) * B]


def _classifier() -> WideResNet:
    torch.manual_seed(0)
    return WideResNet(10, TINY, 1, "zero_mean_l2")


def _igam_models():
    torch.manual_seed(0)
    student = WideResNet(10, TINY, 1, "zero_mean_l2")
    teacher = Teacher(WideResNet(10, TINY, 1, "zero_mean_l2"), 10, None, None, "batch")
    for p in teacher.parameters():
        p.requires_grad_(False)
    disc = InputGradientDiscriminator(32, 2, 4, False, 3, False)
    return student, teacher, disc


def _attack(model) -> PGD:
    return PGD(model, eps=8.0, step_size=4.0, steps=2, random_start=False, keep_buffers=False)


def _eval_set() -> ArrayDataset:
    rng = np.random.default_rng(3)
    return ArrayDataset(rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
                        rng.integers(0, 10, 10).astype(np.int64), [str(i) for i in range(10)],
                        "eval")


# ---------------------------------------------------------------------------------------------
# Workers (one per rank; rank 0 saves what the parent compares)


def _classifier_worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    try:
        model = _classifier()
        trainer = ClassifierTrainer(distributed.wrap(model), LR, 0.9, 2e-4, _attack(model),
                                    steps_before_adv_training=1)
        for x, y in _batches(2):
            trainer.step(_shard(x, rank), _shard(y, rank))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        res = {bn: engine.clean_accuracy(model, _eval_set(), {"batch_size": 3, "bn_mode": bn},
                                         "cpu", show=False) for bn in ("eval", "train")}
        data = _eval_set()
        shard = data.subset(engine.shard_batches(len(data), 3, rank, WORLD))
        count = recalibrate_bn(model, eval_batches(shard, 3, "cpu"))
        if rank == 0:
            torch.save({"state": state, "eval": res, "recal": model.state_dict(),
                        "count": count}, out)
    finally:
        distributed.cleanup()
    distributed.exit_now(0)  # skip interpreter finalisation (see exit_now)


def _igam_worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    try:
        student, teacher, disc = _igam_models()
        trainer = IGAMTrainer(distributed.wrap(student), teacher, distributed.wrap(disc), IGAM)
        metrics = [trainer.step(_shard(x, rank), _shard(y, rank)) for x, y in _batches(3)]
        if rank == 0:
            torch.save({"student": student.state_dict(), "disc": disc.state_dict(),
                        "metrics": metrics}, out)
    finally:
        distributed.cleanup()
    distributed.exit_now(0)  # skip interpreter finalisation (see exit_now)


def _teacher() -> Teacher:
    torch.manual_seed(0)
    return Teacher(WideResNet(20, TINY, 1, "zero_mean_l2"), 10, None, None, "batch")


def _finetune_worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    try:
        teacher = _teacher()
        ft = HeadFinetuner(teacher, 1e-3, whole_model=True, weight_decay=0.5,
                           wrap=distributed.wrap)
        for x, y in _batches(2):
            ft.step(_shard(x, rank), _shard(y, rank))
        if rank == 0:
            torch.save({"state": teacher.state_dict()}, out)
    finally:
        distributed.cleanup()
    distributed.exit_now(0)  # skip interpreter finalisation (see exit_now)


# ---------------------------------------------------------------------------------------------
# Single-process references: one replica per rank, gradients averaged


def _stop_worker(rank: int, port: int, out: str) -> None:
    """fit() where only rank 1 gets a SIGTERM, in its 3rd step."""
    _join(rank, port)
    try:
        ckpt = engine.Checkpointer(Path(out).parent / "run", "classifier", {}, _classifier())
        calls = []

        def step(x, y):
            calls.append(1)
            if rank == 1 and len(calls) == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return {"xent": torch.tensor(float(len(calls)))}

        try:
            engine.fit(step, itertools.repeat((None, None)), 0, 10, ckpt, None, 2, 4, "t",
                       show=False)
            result = None
        except Stopped as stop:
            result = (stop.code, stop.what)
        gathered = distributed.all_gather_objects((len(calls), result))
        if rank == 0:
            torch.save({"ranks": gathered}, out)
    finally:
        distributed.cleanup()
    distributed.exit_now(0)  # skip interpreter finalisation (see exit_now)


def _sync(replica, model) -> None:
    with torch.no_grad():
        for pr, p in zip(replica.parameters(), model.parameters()):
            pr.copy_(p)


def _average_into(model, grads) -> None:
    for p, *gs in zip(model.parameters(), *grads):
        p.grad = sum(gs) / len(gs)


def _merged(model, replica0) -> dict:
    """Parameters of the reference model, buffers of rank 0's replica."""
    params = dict(model.named_parameters())
    return {k: (params[k] if k in params else v) for k, v in replica0.state_dict().items()}


def _reference_classifier() -> dict:
    model = _classifier()
    opt, schedule = sgd(model, 0.1, 0.9, 2e-4), PiecewiseConstant(LR)
    reps = [copy.deepcopy(model) for _ in range(WORLD)]
    for step, (x, y) in enumerate(_batches(2)):
        grads = []
        for r, rep in enumerate(reps):
            _sync(rep, model)
            rep.train()
            xr, yr = _shard(x, r), _shard(y, r)
            if step >= 1:  # (the trainer's nat_accuracy forward moves no BN statistics)
                xr = _attack(rep)(xr, yr)
            loss = F.cross_entropy(rep(xr), yr)
            grads.append(torch.autograd.grad(loss, list(rep.parameters())))
        _average_into(model, grads)
        set_lr(opt, schedule(step))
        opt.step()
    _sync(reps[0], model)
    return _merged(model, reps[0])


def _reference_igam() -> tuple[dict, dict]:
    student, teacher, disc = _igam_models()
    schedule = PiecewiseConstant(IGAM.lr_schedule)
    opt_s = sgd(student, 0.1, IGAM.momentum, IGAM.weight_decay)
    opt_d = sgd(disc, 0.1, IGAM.momentum, IGAM.weight_decay)
    s_reps = [copy.deepcopy(student) for _ in range(WORLD)]
    d_reps = [copy.deepcopy(disc) for _ in range(WORLD)]
    global_step = 0
    for it, (x, y) in enumerate(_batches(3)):
        grads, g_ts = [], []
        for r in range(WORLD):
            s, d = s_reps[r], d_reps[r]
            _sync(s, student)
            _sync(d, disc)
            s.train()
            d.train()
            xr, yr = _shard(x, r), _shard(y, r)
            if it < IGAM.steps_before_adv_opt:
                loss = F.cross_entropy(s(xr), yr)
            else:
                g_ts.append(input_gradient(teacher, xr, yr))
                loss = student_loss(s, d, xr, yr, g_ts[r], IGAM.beta, IGAM.gamma)["loss"]
            grads.append(torch.autograd.grad(loss, list(s.parameters())))
        _average_into(student, grads)
        set_lr(opt_s, schedule(global_step))
        opt_s.step()
        global_step += 1
        if it >= IGAM.steps_before_adv_opt:
            grads = []
            for r in range(WORLD):
                _sync(s_reps[r], student)
                xr, yr = _shard(x, r), _shard(y, r)
                g_s = input_gradient(s_reps[r], xr, yr)
                xent, _ = discriminator_xent(d_reps[r], g_s, g_ts[r])
                grads.append(torch.autograd.grad(xent, list(d_reps[r].parameters())))
            _average_into(disc, grads)
            set_lr(opt_d, schedule(global_step))
            opt_d.step()
    _sync(s_reps[0], student)
    _sync(d_reps[0], disc)
    return _merged(student, s_reps[0]), _merged(disc, d_reps[0])


def _reference_finetune() -> dict:
    teacher = _teacher()
    teacher.source.fc.bias.requires_grad_(False)  # no gradient in the original's loss either
    params = [p for p in teacher.parameters() if p.requires_grad]
    opt = AdamTF1(params, lr=1e-3)
    reps = [copy.deepcopy(teacher) for _ in range(WORLD)]
    for x, y in _batches(2):
        grads = []
        for r, rep in enumerate(reps):
            _sync(rep, teacher)
            rep.train()
            dw = [m.weight for m in rep.source.modules()
                  if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
            loss = (F.cross_entropy(rep(_shard(x, r)), _shard(y, r))
                    + 0.5 * sum(w.pow(2).sum() for w in dw) / 2)
            grads.append(torch.autograd.grad(loss, [p for p in rep.parameters()
                                                    if p.requires_grad]))
        for p, *gs in zip(params, *grads):
            p.grad = sum(gs) / len(gs)
        opt.step()
    return teacher.state_dict()


def _assert_states_close(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v.detach(), rtol=1e-4, atol=1e-5,
                                   msg=lambda m, k=k: f"{what}.{k}: {m}")


# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_classifier_steps_match_single_process_reference(tmp_path):
    got = _spawn(_classifier_worker, tmp_path)
    want = _reference_classifier()
    _assert_states_close(got["state"], want, "classifier")
    moved = max((got["state"][k] - v).abs().max().item()
                for k, v in _classifier().state_dict().items() if v.is_floating_point())
    assert moved > 1e-3  # the steps did change the model

    # Sharded evaluation (every 2nd batch of 3 per rank, partial last batch) = single process.
    model = _classifier()
    model.load_state_dict(got["state"])
    for bn in ("eval", "train"):
        single = engine.clean_accuracy(model, _eval_set(), {"batch_size": 3, "bn_mode": bn},
                                       "cpu", show=False)
        assert got["eval"][bn]["n"] == single["n"] == 10
        assert got["eval"][bn]["correct"] == single["correct"]
        assert torch.equal(got["eval"][bn]["predictions"], single["predictions"])

    # BN recalibration over shards = over all batches at once.
    count = recalibrate_bn(model, eval_batches(_eval_set(), 3, "cpu"))
    assert got["count"] == count == 4
    for k, v in model.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(got["recal"][k], v, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_ddp_igam_iterations_match_single_process_reference(tmp_path):
    """Plain phase, then two IGAM iterations with a discriminator step each: student grads come
    from backward(inputs=student params) through the double-backward loss, all-reduced by DDP;
    the discriminator's own DDP wrapper averages its step's gradients."""
    got = _spawn(_igam_worker, tmp_path)
    want_s, want_d = _reference_igam()
    _assert_states_close(got["student"], want_s, "student")
    _assert_states_close(got["disc"], want_d, "discriminator")
    assert "d_step_disc_xent" in got["metrics"][-1] and "l2" in got["metrics"][-1]
    init_d = _igam_models()[2].state_dict()
    assert max((got["disc"][k] - v).abs().max().item() for k, v in init_d.items()
               if v.is_floating_point()) > 1e-4  # the discriminator was trained


@pytest.mark.slow
def test_ddp_whole_model_finetuning_matches_single_process_reference(tmp_path):
    got = _spawn(_finetune_worker, tmp_path)
    want = _reference_finetune()
    for k, v in want.items():
        if "running" not in k and "num_batches" not in k:  # batch-statistics BN: not updated
            torch.testing.assert_close(got["state"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert not torch.equal(got["state"]["source.fc.weight"], _teacher().source.fc.weight)


@pytest.mark.slow
def test_signal_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    got = _spawn(_stop_worker, tmp_path)
    what = f"after step 3 of 10; checkpoint saved in {tmp_path / 'run/checkpoint.pt'}"
    assert got["ranks"] == [(3, (143, what))] * WORLD
    ckpt = torch.load(tmp_path / "run/checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and len(ckpt["rank_states"]) == WORLD


def test_rank_seed_and_single_process_defaults():
    assert distributed.rank_seed(7, 0) == 7  # rank 0 (and one process) keep the seed
    assert len({distributed.rank_seed(7, r) for r in range(4)}) == 4
    assert not distributed.info().enabled and distributed.is_main()
    m = WideResNet(10, TINY, 1)
    assert distributed.wrap(m) is m
    assert distributed.all_gather_objects(3) == [3]
    assert distributed.mean_scalars({"a": 1.5}) == {"a": 1.5}
    idx = [engine.shard_batches(10, 3, r, 2).tolist() for r in range(2)]
    assert idx == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9]]


# ---------------------------------------------------------------------------------------------
# torchrun end to end


def _torchrun(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
           "--master_port", str(_free_port()), str(REPO / script), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def igam_setup(tmp_path_factory):
    w = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "igam.data.synthetic", "--dataset", "cifar10",
                    "--out", str(w / "c10"), "--n_train", "64", "--n_test", "30"],
                   check=True, env=env, capture_output=True)
    torch.manual_seed(0)
    teacher = Teacher(WideResNet(10, TINY, 1, "zero_mean_l2"), 10, None, None, "batch")
    engine.Checkpointer(w / "teacher", "teacher", {}, teacher).save(0)
    args = ["--config", str(REPO / "configs/igam_tinyimagenet_to_cifar10.yaml"),
            "--device", "cpu", "--log_every", "2", "--eval.batch_size", "8",
            "--student.widths", "4,4,8,16", "--student.units_per_stage", "1",
            "--data.root", "c10", "--teacher_dir", "teacher", "--train.batch_size", "8",
            "--igam.steps_before_adv_opt", "2", "--igam.disc_update_steps", "2",
            "--discriminator.num_conv_layers", "2", "--checkpoint_every", "3",
            "--igam.img_random_pert", "true"]  # per-rank noise generators must resume too
    return w, args


@pytest.mark.slow
def test_torchrun_train_igam_writes_rank0_files_and_resumes_exactly(igam_setup):
    w, args = igam_setup
    proc = _torchrun("train_igam.py", *args, "--model_dir", "full", "--train.steps", "6",
                     cwd=w)
    assert proc.stdout.count("student clean accuracy") == 1  # rank 0 reports
    assert "global batch 2 x 8 = 16" in proc.stdout + proc.stderr
    assert sorted(p.name for p in (w / "full").iterdir() if p.name != "tensorboard") == [
        "checkpoint.pt", "config.yaml", "config_history.jsonl", "eval_clean.json",
        "metrics.jsonl", "run_info.json"]
    steps = [json.loads(x)["step"] for x in (w / "full/metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]  # one writer
    assert json.loads((w / "full/eval_clean.json").read_text())["n"] == 30
    full = torch.load(w / "full/checkpoint.pt", weights_only=True)
    assert full["step"] == 6 and len(full["rank_states"]) == WORLD

    _torchrun("train_igam.py", *args, "--model_dir", "part", "--train.steps", "3", cwd=w)
    _torchrun("train_igam.py", *args, "--model_dir", "part", "--train.steps", "6", "--resume",
              cwd=w)
    part = torch.load(w / "part/checkpoint.pt", weights_only=True)
    assert part["step"] == 6
    for key in ("model", "discriminator"):
        for name, value in full[key].items():
            torch.testing.assert_close(part[key][name], value, rtol=0, atol=0,
                                       msg=f"{key}.{name}")
    steps = [json.loads(x)["step"] for x in (w / "part/metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 3, 4, 6]


@pytest.mark.slow
def test_torchrun_sigterm_stops_every_rank_and_continues_exactly(igam_setup):
    """SIGTERM to the launcher (what a scheduler sends): torchrun passes it on to both ranks,
    which stop after the same step; rank 0 writes the checkpoint and prints the torchrun command
    that continues the run; continued, it ends bit-identical to an uninterrupted run."""
    w, args = igam_setup
    args = [*args, "--log_every", "1", "--checkpoint_every", "7", "--train.steps", "30"]
    _torchrun("train_igam.py", *args, "--model_dir", "sig_full", cwd=w)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
                "--master_port", str(_free_port())]
    err = w / "sig_stderr.txt"
    with open(err, "w") as fh:
        proc = subprocess.Popen([*launcher, str(REPO / "train_igam.py"), *args, "--model_dir",
                                 "sig_part"], cwd=w, env=env, stdout=subprocess.PIPE, stderr=fh,
                                text=True)
    for line in proc.stdout:
        if line.startswith("step 5:"):
            proc.send_signal(signal.SIGTERM)
            break
    proc.stdout.read()
    code = proc.wait(timeout=300)
    text = err.read_text()
    assert code != 0, text[-3000:]
    lines = [x for x in text.splitlines() if x.startswith("stopped by SIGTERM")]
    assert len(lines) == 1, text[-3000:]  # rank 0 alone
    head, command = lines[0].split("; continue with: ")
    part = torch.load(w / "sig_part/checkpoint.pt", weights_only=True)
    assert 5 <= part["step"] < 30 and len(part["rank_states"]) == WORLD
    assert head == (f"stopped by SIGTERM after step {part['step']} of 30; checkpoint saved in "
                    "sig_part/checkpoint.pt")
    want = ["torchrun", "--nproc_per_node", str(WORLD), str(REPO / "train_igam.py"), *args,
            "--model_dir", "sig_part", "--resume"]
    assert shlex.split(command) == want
    time.sleep(1)  # the launcher's port
    _torchrun(*want[3:], cwd=w)  # the printed command, through _torchrun's launcher
    full = torch.load(w / "sig_full/checkpoint.pt", weights_only=True)
    part = torch.load(w / "sig_part/checkpoint.pt", weights_only=True)
    for key in ("model", "discriminator", "trainer", "sampler", "rng", "rank_states", "step"):
        assert _same(part[key], full[key]), key
    steps = [json.loads(x) for x in (w / "sig_part/metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (w / "sig_full/metrics.jsonl").read_text().splitlines()]
    drop = ("time", "steps_per_s", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in steps] == \
        [{k: v for k, v in r.items() if k not in drop} for r in ref]


def _same(a, b) -> bool:
    """Bit-identical nested checkpoint entries."""
    if isinstance(a, dict):
        return set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return torch.equal(a, b)
    return a == b
