"""End-to-end: every entry script, on tiny synthetic data (and, in test_real_data_pipeline, on
the real subsets in $IGAM_REAL_DATA): its ``main(argv)`` in this process (e2e.call) where the
test checks what the run produced, its real command line (a subprocess, e2e.run) where it
checks exit codes, one-line errors or a killed process.

The pipeline runs once per module (fixture ``pipeline``); the tests then check the files and
numbers each step produced, resumption, and the one-line errors for bad input.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from e2e import FAST, REPO, STUDENT, TINY, attack_file, call, run, synth

from igam.run import engine
from igam.run.checkpoint import load_checkpoint

# Every test here runs entry scripts end to end (the module's pipeline alone takes ~30 s).
pytestmark = pytest.mark.slow


def metric_steps(run_dir: Path) -> list[int]:
    """Steps of the records in a run folder's metrics.jsonl, in file order."""
    return [json.loads(line)["step"] for line in
            (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_igam_run(got: Path, want: Path) -> None:
    """Student and discriminator weights of two IGAM run folders are equal."""
    a, b = load_checkpoint(got), load_checkpoint(want)
    for key in ("model", "discriminator"):
        for name, value in b[key].items():
            torch.testing.assert_close(a[key][name], value, msg=f"{key}.{name}")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    w = tmp_path_factory.mktemp("pipeline")
    synth("tinyimagenet", w / "data/tiny", "--num_classes", "4", "--n_train_per_class", "8",
          "--n_val_per_class", "4")
    synth("cifar10", w / "data/c10", "--n_train", "64", "--n_test", "30")
    call("train_advtrain_tinyimagenet.py", "--config",
         str(REPO / "configs/advtrain_tinyimagenet.yaml"), *FAST, *TINY,
         "--data.root", "data/tiny", "--model_dir", "models/src",
         "--train.steps", "4", "--train.batch_size", "8", "--attack.steps", "2",
         "--checkpoint_every", "2", cwd=w)
    call("finetune_teacher.py", "--config",
         str(REPO / "configs/finetune_tinyimagenet_to_cifar10.yaml"), *FAST,
         "--data.root", "data/c10", "--source_model_dir", "models/src",
         "--model_dir", "models/teacher", "--finetune.steps", "4", "--finetune.batch_size", "8",
         "--finetune.save_input_gradients", "true", cwd=w)
    igam_args = ["--config", str(REPO / "configs/igam_tinyimagenet_to_cifar10.yaml"), *FAST,
                 *STUDENT, "--data.root", "data/c10", "--teacher_dir", "models/teacher",
                 "--train.batch_size", "8", "--igam.steps_before_adv_opt", "2",
                 "--igam.disc_update_steps", "2", "--discriminator.num_conv_layers", "2",
                 "--checkpoint_every", "3"]
    call("train_igam.py", *igam_args, "--model_dir", "models/igam", "--train.steps", "6", cwd=w)
    for attack in ("fgsm", "pgds5"):
        for script in ("pgd_attack.py", "run_attack.py"):
            call(script, "--config", str(REPO / f"configs/attack_{attack}.yaml"), "--device", "cpu",
                 "--model_dir", "models/igam", "--data.root", "data/c10", cwd=w)
    return w, igam_args


def test_every_step_writes_config_metrics_and_checkpoint(pipeline):
    w, _ = pipeline
    for name, kind, steps in (("src", "classifier", 4), ("teacher", "teacher", 4),
                              ("igam", "igam", 6)):
        d = w / "models" / name
        assert (d / "config.yaml").is_file()
        records = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == list(range(2, steps + 1, 2))
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in records)
        ckpt = torch.load(d / "checkpoint.pt", weights_only=True)
        assert ckpt["kind"] == kind and ckpt["step"] == steps
        clean = json.loads((d / "eval_clean.json").read_text())
        assert clean.get("n", clean.get("running_bn", {}).get("n")) in (16, 30)
    lines = (w / "models/igam/metrics.jsonl").read_text().splitlines()
    igam_metrics = [json.loads(x) for x in lines]
    assert "disc_accuracy" in igam_metrics[-1] and "l2" in igam_metrics[-1]
    assert "disc_accuracy" not in igam_metrics[0]  # step 2: still in the warm-up phase


def test_every_run_records_what_ran_it(pipeline):
    """run_info.json: versions, git commit, device and the parameter count of each model."""
    w, _ = pipeline
    for name, models in (("src", ["classifier"]), ("teacher", ["teacher"]),
                         ("igam", ["igam", "discriminator"])):
        info = json.loads((w / "models" / name / "run_info.json").read_text())
        assert info["torch"] == torch.__version__ and info["device"] == "cpu"
        assert "git" in info and info["start_step"] == 0
        model, _ = engine.load_model(w / "models" / name)
        assert sorted(info["models"]) == sorted(models)
        assert info["models"][models[0]]["parameters"] == sum(
            p.numel() for p in model.parameters())


def test_teacher_reports_both_bn_modes_and_saves_gradients(pipeline):
    w, _ = pipeline
    res = json.loads((w / "models/teacher/eval_clean.json").read_text())
    assert res["bn_recalibrated"] is True
    assert {"batch_bn", "running_bn"} <= set(res)
    g = np.load(w / "models/teacher/teacher_input_gradients_test.npy")
    assert g.shape == (30, 32, 32, 3) and g.dtype == np.float32 and np.abs(g).sum() > 0
    ckpt = load_checkpoint(w / "models/teacher")
    assert ckpt["arch"]["upresize_to"] == 64 and ckpt["arch"]["standardization"] == "l2"


def test_attack_files_and_evaluation(pipeline):
    w, _ = pipeline
    x_nat = None
    for attack in ("fgsm", "pgds5"):
        adv = np.load(attack_file(w, "models/igam", attack))
        assert adv.shape == (30, 32, 32, 3) and adv.dtype == np.float32
        assert adv.min() >= 0 and adv.max() <= 255
        res = json.loads((w / f"models/igam/eval_{attack}.json").read_text())
        assert res["n"] == 30 and 0 <= res["adv_accuracy"] <= 1
        assert (w / f"models/igam/eval_{attack}.txt").read_text().startswith("model:")
        assert np.load(w / f"models/igam/pred_{attack}.npy").shape == (30,)
        if x_nat is None:
            from igam.data import load_cifar10

            test = load_cifar10(w / "data/c10")[1]
            x_nat, labels = test.images.astype(np.float32), test.labels
        assert np.abs(adv - x_nat).max() <= 8.0 + 1e-4
    fgsm = np.load(attack_file(w, "models/igam", "fgsm"))
    moved = np.abs(fgsm - x_nat)
    # early stop (the configs' default) leaves clean-misclassified examples as they are
    attacked = moved.reshape(len(moved), -1).max(1) > 0
    res = json.loads((w / "models/igam/eval_fgsm.json").read_text())
    clean_pred = np.load(w / "models/igam" / res["predictions"]["clean"])
    assert attacked.any() and (clean_pred[~attacked] != labels[~attacked]).all()
    m, xa = moved[attacked], x_nat[attacked]
    assert np.isclose(m[(xa > 8) & (xa < 247)], 8.0).mean() > 0.95  # FGSM: +-eps


def test_resume_continues_exactly(pipeline):
    """An interrupted run resumed from its checkpoint ends where the uninterrupted one did."""
    w, igam_args = pipeline
    call("train_igam.py", *igam_args, "--model_dir", "models/igam_part", "--train.steps", "3",
         cwd=w)
    call("train_igam.py", *igam_args, "--model_dir", "models/igam_part", "--train.steps", "6",
         "--resume", cwd=w)
    assert load_checkpoint(w / "models/igam_part")["step"] == 6
    assert_same_igam_run(w / "models/igam_part", w / "models/igam")
    assert metric_steps(w / "models/igam_part") == [2, 3, 4, 6]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_resume_needs_only_the_run_folder_and_refuses_changes_touching_nothing(pipeline):
    """``--resume --model_dir DIR`` continues from the run's own config.yaml (tiny widths,
    data, teacher: none given again) and ends where the uninterrupted run did; a resume that
    changes beta is refused in one line and leaves every file of the run folder as it was."""
    w, igam_args = pipeline
    call("train_igam.py", *igam_args, "--model_dir", "models/igam_alone", "--train.steps", "3",
         cwd=w)
    call("train_igam.py", "--resume", "--model_dir", "models/igam_alone", "--train.steps", "6",
         cwd=w)
    assert_same_igam_run(w / "models/igam_alone", w / "models/igam")
    history = [json.loads(x) for x in
               (w / "models/igam_alone/config_history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "resume"]
    assert history[1]["changes"] == {"resume": [False, True], "train.steps": [3, 6]}
    before = _tree(w / "models/igam_alone")
    proc = run("train_igam.py", "--resume", "--model_dir", "models/igam_alone",
               "--igam.beta", "2", cwd=w, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "igam.beta 5.0 -> 2.0" in proc.stderr
    assert _tree(w / "models/igam_alone") == before


def test_existing_run_is_not_clobbered(pipeline):
    w, igam_args = pipeline
    proc = run("train_igam.py", *igam_args, "--model_dir", "models/igam", "--train.steps", "6",
               cwd=w, check=False)
    assert proc.returncode == 2
    assert "already holds a run" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("case", ["no_dataset", "wrong_arch", "corrupt_ckpt", "bad_key",
                                  "adv_shape", "adv_range", "adv_eps", "negative_steps",
                                  "schedule_start", "negative_eps"])
def test_bad_input_gives_one_line_error(pipeline, case, tmp_path):
    w, igam_args = pipeline
    attack_cfg = str(REPO / "configs/attack_pgds5.yaml")
    args = {"no_dataset": ("train_igam.py", *igam_args, "--data.root", "nowhere/c10",
                           "--model_dir", str(tmp_path / "m")),
            "wrong_arch": ("train_igam.py", *igam_args, "--teacher_dir", "models/igam",
                           "--model_dir", str(tmp_path / "m")),
            "corrupt_ckpt": ("run_attack.py", "--config", attack_cfg, "--model_dir",
                             str(tmp_path / "bad"), "--data.root", "data/c10"),
            "bad_key": ("train_igam.py", *igam_args, "--igam.betta", "1"),
            "negative_steps": ("train_advtrain_tinyimagenet.py", "--config",
                               str(REPO / "configs/advtrain_tinyimagenet.yaml"), *FAST, *TINY,
                               "--data.root", "data/tiny", "--model_dir", str(tmp_path / "m"),
                               "--train.steps", "-5"),
            "schedule_start": ("train_igam.py", *igam_args, "--model_dir", str(tmp_path / "m"),
                               "--train.lr_schedule", "[[5, 0.1]]"),
            "negative_eps": ("run_attack.py", "--config", attack_cfg, "--model_dir",
                             "models/igam", "--data.root", "data/c10", "--attack.eps", "-1")}
    if case == "corrupt_ckpt":
        (tmp_path / "bad").mkdir()
        data = (w / "models/igam/checkpoint.pt").read_bytes()
        (tmp_path / "bad/checkpoint.pt").write_bytes(data[: len(data) // 2])
    expect = {"no_dataset": "nowhere", "wrong_arch": "teacher", "corrupt_ckpt": "checkpoint",
              "bad_key": "did you mean 'igam.beta'", "adv_shape": "shape",
              "adv_range": "[0, 255]", "adv_eps": "eps",
              "negative_steps": "config key 'train.steps' on the command line: expected an "
                                "integer >= 1, got -5",
              "schedule_start": "config key 'train.lr_schedule' on the command line: expected "
                                "a list of [step, value] pairs whose steps start at 0",
              "negative_eps": "config key 'attack.eps' on the command line: expected a number "
                              "> 0, got -1"}[case]
    if case.startswith("adv_"):
        adv = np.load(attack_file(w, "models/igam", "pgds5"))
        if case == "adv_shape":
            adv = adv[:10]
        elif case == "adv_range":
            adv = adv.copy()
            adv[0, 0, 0, 0] = 300.0
        else:
            adv = np.clip(adv + 9.0, 0, 255)
        np.save(tmp_path / "adv.npy", adv)
        args[case] = ("run_attack.py", "--config", attack_cfg, "--model_dir", "models/igam",
                      "--data.root", "data/c10", "--attack_path", str(tmp_path / "adv.npy"))
    proc = run(*args[case], cwd=w, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and expect in lines[-1], lines[-1]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()  # refused before any work


def test_discriminator_standardisation_follows_student_and_student_gradients(pipeline):
    """As the original's one normalize_zero_mean flag: the discriminator standardises its input
    gradients like the student its images; igam.save_input_gradients stores the student's
    input gradients of both splits (train-mode batch statistics, as the original)."""
    w, igam_args = pipeline
    assert load_checkpoint(w / "models/igam")["discriminator_arch"]["standardization"] == \
        "zero_mean_l2"
    call("train_igam.py", *igam_args, "--model_dir", "models/igam_l2", "--train.steps", "3",
         "--student.standardization", "l2", "--igam.save_input_gradients", "true", cwd=w)
    d = w / "models/igam_l2"
    assert load_checkpoint(d)["discriminator_arch"]["standardization"] == "l2"
    from igam.data import load_cifar10
    from igam.gradients import input_gradient
    from igam.run.engine import load_model

    student, _ = load_model(d)
    student.train()  # batch statistics in batches of eval.batch_size, in dataset order
    for split, data in zip(("train", "test"), load_cifar10(w / "data/c10")):
        x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float().contiguous()
        y = torch.from_numpy(data.labels)
        want = torch.cat([input_gradient(student, x[i:i + 50], y[i:i + 50])
                          for i in range(0, len(x), 50)]).permute(0, 2, 3, 1).numpy()
        got = np.load(d / f"student_input_gradients_{split}.npy")
        assert got.dtype == np.float32 and got.shape == want.shape == data.images.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
        assert np.abs(got).sum() > 0


def test_real_data_pipeline(real_data, tmp_path):
    """TinyImageNet -> CIFAR-10 on the real subsets: a few steps of every training script,
    files and numbers produced."""
    w = tmp_path
    call("train_advtrain_tinyimagenet.py", "--config",
         str(REPO / "configs/advtrain_tinyimagenet.yaml"), *FAST, *TINY,
         "--data.root", str(real_data / "tiny-imagenet-200"), "--model_dir", "models/src",
         "--train.steps", "2", "--train.batch_size", "8", "--attack.steps", "1",
         "--eval.num_examples", "50", cwd=w)
    call("finetune_teacher.py", "--config",
         str(REPO / "configs/finetune_tinyimagenet_to_cifar10.yaml"), *FAST,
         "--data.root", str(real_data / "cifar-10-batches-py"), "--source_model_dir",
         "models/src", "--model_dir", "models/teacher", "--finetune.steps", "2",
         "--finetune.batch_size", "8", "--eval.num_examples", "50", cwd=w)
    call("train_igam.py", "--config", str(REPO / "configs/igam_tinyimagenet_to_cifar10.yaml"),
         *FAST, *STUDENT, "--data.root", str(real_data / "cifar-10-batches-py"),
         "--teacher_dir", "models/teacher", "--model_dir", "models/igam", "--train.steps", "2",
         "--train.batch_size", "8", "--igam.steps_before_adv_opt", "1",
         "--eval.num_examples", "50", cwd=w)
    src = json.loads((w / "models/src/eval_clean.json").read_text())
    assert src["n"] == 50
    ckpt = load_checkpoint(w / "models/src")
    assert ckpt["model"]["fc.weight"].shape == (200, 16)  # 200 TinyImageNet classes
    res = json.loads((w / "models/igam/eval_clean.json").read_text())
    assert res["n"] == 50 and 0.0 <= res["accuracy"] <= 1.0
    assert load_checkpoint(w / "models/igam")["step"] == 2


def test_killed_run_resumes_from_its_last_checkpoint(pipeline):
    """SIGKILL mid-run, then --resume: the run loses at most the steps since its last
    checkpoint and ends exactly where an uninterrupted run ends."""
    import signal

    w, igam_args = pipeline
    args = [*igam_args, "--train.steps", "12", "--log_every", "1"]
    call("train_igam.py", *args, "--model_dir", "models/igam12", cwd=w)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(REPO / "train_igam.py"), *args,
                             "--model_dir", "models/igam_killed"], cwd=w, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("step 4:"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    saved = load_checkpoint(w / "models/igam_killed")["step"]
    assert saved in (3, 6, 9) and saved < 12  # checkpoint_every 3; killed before the end
    call("train_igam.py", *args, "--model_dir", "models/igam_killed", "--resume", cwd=w)
    assert load_checkpoint(w / "models/igam_killed")["step"] == 12
    assert_same_igam_run(w / "models/igam_killed", w / "models/igam12")
    # records logged after the checkpoint were dropped on resume and redone, once
    assert metric_steps(w / "models/igam_killed") == list(range(1, 13))


def test_converted_tf_checkpoints_run_in_the_pipeline(tmp_path):
    """python -m igam.tf.convert output is accepted by finetune_teacher.py, train_igam.py,
    pgd_attack.py and run_attack.py like one of their own (CIFAR-10 -> CIFAR-100 route)."""
    from igam.tf import convert

    w = tmp_path
    fixtures = REPO / "tests/fixtures/tf"
    for name, arch in (("madry_f32", "madry"), ("madry_teacher_f32", "madry_teacher")):
        with contextlib.redirect_stdout(io.StringIO()):  # its main, in this process
            assert convert.main(["--tf_checkpoint", str(fixtures / name), "--arch", arch,
                                 "--out", str(w / "models" / arch)]) == 0
    synth("cifar100", w / "data/c100", "--n_train", "200", "--n_test", "20")
    c100 = ["--data.dataset", "cifar100", "--data.root", "data/c100"]
    call("finetune_teacher.py", "--config", str(REPO / "configs/finetune_cifar10_to_cifar100.yaml"),
         *FAST, *c100, "--source_model_dir", "models/madry", "--model_dir", "models/t100",
         "--finetune.steps", "2", "--finetune.batch_size", "8", cwd=w)
    assert load_checkpoint(w / "models/t100")["arch"]["source"]["standardization"] == "per_image"
    call("train_igam.py", "--config", str(REPO / "configs/igam_cifar10_to_cifar100.yaml"), *FAST,
         *STUDENT, *c100, "--teacher_dir", "models/madry_teacher", "--model_dir", "models/s100",
         "--train.steps", "2", "--train.batch_size", "8", "--igam.steps_before_adv_opt", "1",
         "--discriminator.num_conv_layers", "2", cwd=w)
    for script in ("pgd_attack.py", "run_attack.py"):
        call(script, "--config", str(REPO / "configs/attack_pgds5.yaml"), "--device", "cpu",
             *c100, "--model_dir", "models/madry_teacher", cwd=w)
    assert np.load(attack_file(w, "models/madry_teacher", "pgds5", "cifar100")).shape == \
        (20, 32, 32, 3)
    res = json.loads((w / "models/madry_teacher/eval_pgds5.json").read_text())
    assert res["n"] == 20 and res["dataset"] == "cifar100/test"


def test_attack_scripts_need_only_the_model_dir(pipeline):
    """The dataset comes from the checkpoint's saved config: here the source model's own
    (synthetic TinyImageNet) validation set, 64x64."""
    w, _ = pipeline
    cfg = str(REPO / "configs/attack_fgsm.yaml")
    call("pgd_attack.py", "--config", cfg, "--model_dir", "models/src", cwd=w)
    call("run_attack.py", "--config", cfg, "--model_dir", "models/src", cwd=w)
    assert np.load(attack_file(w, "models/src", "fgsm")).shape == (16, 64, 64, 3)
    res = json.loads((w / "models/src/eval_fgsm.json").read_text())
    assert res["dataset"] == "tinyimagenet/val" and res["n"] == 16
