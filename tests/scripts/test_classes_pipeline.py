"""data.classes through the entry scripts: training on a class subset, the mapping in the
saved config and checkpoint, attacks and evaluation on the same subset by default, a
teacher/student subset mismatch, resumption, and one-line errors.

Real CIFAR-10 / Tiny-ImageNet subsets ($IGAM_REAL_DATA) and synthetic CIFAR-100 files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from e2e import FAST, REPO, STUDENT, TINY, attack_file, call, run, synth

from igam.data import load_dataset, select_classes
from igam.run.checkpoint import load_checkpoint

ADV_CFG = ["--config", str(REPO / "configs/advtrain_tinyimagenet.yaml")]
FT_CFG = ["--config", str(REPO / "configs/finetune_tinyimagenet_to_cifar10.yaml")]
IGAM_CFG = ["--config", str(REPO / "configs/igam_tinyimagenet_to_cifar10.yaml")]
ADV_STEPS = ["--train.batch_size", "8", "--attack.steps", "1"]


def attack(model_dir: str, cwd, name: str = "fgsm", *extra: str) -> dict:
    """pgd_attack.py + run_attack.py on ``model_dir`` with nothing but the model folder;
    returns run_attack.py's eval JSON."""
    for script in ("pgd_attack.py", "run_attack.py"):
        call(script, "--config", str(REPO / f"configs/attack_{name}.yaml"), "--device", "cpu",
             "--model_dir", model_dir, *extra, cwd=cwd)
    return json.loads((cwd / model_dir / f"eval_{name}.json").read_text())


def saved_data(run_dir) -> tuple[dict, dict]:
    """The data section of the run folder's config.yaml and of its checkpoint's config."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return cfg["data"], load_checkpoint(run_dir)["config"]["data"]


def assert_one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for needle in needles:
        assert needle in last, last


@pytest.mark.slow
def test_tinyimagenet_first_k_classes_train_and_attack(real_data, tmp_path):
    """Source model on the first 10 Tiny-ImageNet classes (data.num_classes 10): 10 logits,
    mapping recorded, and the attack scripts evaluate it on the same 10 classes unasked."""
    w = tmp_path
    root = str(real_data / "tiny-imagenet-200")
    call("train_advtrain_tinyimagenet.py", *ADV_CFG, *FAST, *TINY, *ADV_STEPS,
         "--data.root", root, "--data.num_classes", "10", "--model_dir", "models/src",
         "--train.steps", "2", cwd=w)
    in_yaml, in_ckpt = saved_data(w / "models/src")
    assert in_yaml["classes"] == in_ckpt["classes"] == list(range(10))
    assert in_yaml["num_classes"] == in_ckpt["num_classes"] == 0
    assert load_checkpoint(w / "models/src")["model"]["fc.weight"].shape == (10, 16)
    assert json.loads((w / "models/src/eval_clean.json").read_text())["n"] == 50

    res = attack("models/src", w)
    assert res["dataset"] == "tinyimagenet/val[classes 0-9]" and res["n"] == 50
    _, val = load_dataset("tinyimagenet", root)
    sub = select_classes(val, list(range(10)))
    adv = np.load(attack_file(w, "models/src", "fgsm"))
    assert adv.shape == (50, 64, 64, 3)
    assert np.abs(adv - sub.images.astype(np.float32)).max() <= 8.0 + 1e-4  # the same images
    for name in ("pred_fgsm.npy", res["predictions"]["clean"]):
        pred = np.load(w / "models/src" / name)
        assert pred.shape == (50,) and pred.min() >= 0 and pred.max() < 10
    clean = np.load(w / "models/src" / res["predictions"]["clean"])
    assert res["clean_accuracy"] == np.mean(clean == sub.labels)


@pytest.mark.slow
def test_cifar10_source_0_4_teacher_and_student_5_9(real_data, tmp_path):
    """Transfer pair CIFAR-10 classes 0-4 -> 5-9: source model, teacher head and IGAM student
    on their subsets; the attack finds the student's subset in its checkpoint; a student on
    other classes than its teacher is refused."""
    w = tmp_path
    c10 = ["--data.dataset", "cifar10", "--data.root", str(real_data / "cifar-10-batches-py")]
    call("train_advtrain_tinyimagenet.py", *ADV_CFG, *FAST, *TINY, *ADV_STEPS, *c10,
         "--data.classes", "0,1,2,3,4", "--model_dir", "models/src", "--train.steps", "2",
         "--eval.num_examples", "50", cwd=w)
    assert load_checkpoint(w / "models/src")["model"]["fc.weight"].shape == (5, 16)
    call("finetune_teacher.py", *FT_CFG, *FAST, *c10, "--data.classes", "[5, 6, 7, 8, 9]",
         "--teacher.upresize_to", "0", "--source_model_dir", "models/src",
         "--model_dir", "models/teacher", "--finetune.steps", "2", "--finetune.batch_size", "8",
         "--eval.num_examples", "50", cwd=w)
    teacher = load_checkpoint(w / "models/teacher")
    assert teacher["config"]["data"]["classes"] == [5, 6, 7, 8, 9]
    assert teacher["model"]["target_head.weight"].shape[0] == 5
    igam = [*IGAM_CFG, *FAST, *STUDENT, *c10, "--teacher_dir", "models/teacher",
            "--train.steps", "2", "--train.batch_size", "8", "--igam.steps_before_adv_opt", "1",
            "--discriminator.num_conv_layers", "2"]
    call("train_igam.py", *igam, "--data.classes", "5,6,7,8,9", "--model_dir", "models/igam",
         cwd=w)
    assert saved_data(w / "models/igam")[1]["classes"] == [5, 6, 7, 8, 9]

    res = attack("models/igam", w, "pgds5")
    _, test = load_dataset("cifar10", real_data)
    sub = select_classes(test, [5, 6, 7, 8, 9])
    assert res["dataset"] == "cifar10/test[classes 5-9]" and res["n"] == len(sub) == 500
    clean = np.load(w / "models/igam" / res["predictions"]["clean"])
    assert clean.max() < 5 and res["clean_accuracy"] == np.mean(clean == sub.labels)

    # the source task's classes: as many as the teacher's, but other classes: refused
    proc = run("train_igam.py", *igam, "--data.classes", "0,1,2,3,4",
               "--model_dir", str(w / "models/wrong"), cwd=w, check=False)
    assert_one_line_error(proc, "teacher", "classes 5-9", "selects classes 0-4")
    # an explicit subset overrides the checkpoint's: 4 classes do not fit a 5-class model
    proc = run("run_attack.py", "--config", str(REPO / "configs/attack_pgds5.yaml"),
               "--device", "cpu", "--model_dir", "models/igam", "--data.num_classes", "4",
               cwd=w, check=False)
    assert_one_line_error(proc, "predicts 5 classes")


@pytest.mark.slow
def test_cifar100_subset_resumes_exactly_and_keeps_its_mapping(tmp_path):
    """A run on CIFAR-100 classes 99, 3, 42 resumed from its checkpoint ends where the
    uninterrupted run does; resuming with another subset (or none) is refused before the run
    folder's config.yaml is touched."""
    w = tmp_path
    synth("cifar100", w / "data/c100", "--n_train", "300", "--n_test", "200")
    args = [*ADV_CFG, *FAST, *TINY, *ADV_STEPS, "--data.dataset", "cifar100",
            "--data.root", "data/c100", "--data.classes", "99,3,42", "--checkpoint_every", "2"]
    call("train_advtrain_tinyimagenet.py", *args, "--model_dir", "models/full",
         "--train.steps", "4", cwd=w)
    call("train_advtrain_tinyimagenet.py", *args, "--model_dir", "models/part",
         "--train.steps", "2", cwd=w)
    for wrong in (["--data.classes", "3,99,42"], ["--data.classes", "[]"]):
        proc = run("train_advtrain_tinyimagenet.py", *args, *wrong, "--model_dir",
                   "models/part", "--train.steps", "4", "--resume", cwd=w, check=False)
        assert_one_line_error(proc, "cannot resume", "data.classes [99, 3, 42] -> ")
        assert saved_data(w / "models/part")[0]["classes"] == [99, 3, 42]  # config.yaml intact
    call("train_advtrain_tinyimagenet.py", *args, "--model_dir", "models/part",
         "--train.steps", "4", "--resume", cwd=w)
    a, b = load_checkpoint(w / "models/part"), load_checkpoint(w / "models/full")
    assert a["step"] == 4 and a["config"]["data"]["classes"] == [99, 3, 42]
    for name, value in b["model"].items():
        np.testing.assert_array_equal(a["model"][name].numpy(), value.numpy(), err_msg=name)
    assert a["model"]["fc.weight"].shape == (3, 16)

    res = attack("models/part", w)
    _, test = load_dataset("cifar100", w / "data/c100")
    sub = select_classes(test, [99, 3, 42])
    assert res["dataset"] == "cifar100/test[classes 99,3,42]" and res["n"] == len(sub) == 6
    assert np.load(attack_file(w, "models/part", "fgsm", "cifar100")).shape == (6, 32, 32, 3)


def test_bad_classes_on_the_command_line(tmp_path):
    w = tmp_path
    synth("cifar10", w / "data/c10", "--n_train", "40", "--n_test", "20")
    base = [*ADV_CFG, *FAST, *TINY, *ADV_STEPS, "--data.dataset", "cifar10",
            "--data.root", "data/c10", "--train.steps", "1"]
    for extra, needle in ((["--data.classes", "0,10"], "class 10 is out of range"),
                          (["--data.num_classes", "-1"], "'data.num_classes'")):
        proc = run("train_advtrain_tinyimagenet.py", *base, *extra,
                   "--model_dir", str(w / "m"), cwd=w, check=False)
        assert_one_line_error(proc, needle)
        assert not (w / "m/config.yaml").exists()  # refused before the run folder is made
