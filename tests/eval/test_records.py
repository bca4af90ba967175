"""Provenance records of adversarial-example files and results (igam.eval.records), through
pgd_attack.py / run_attack.py / python -m igam.eval.report on two tiny models trained as
``models/seed0/net`` and ``models/seed1/net``: the same folder name, two runs (issue #16)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from e2e import REPO, TINY, attack_file, call, run, synth

import igam
from igam.errors import IGAMError
from igam.eval import report
from igam.eval.advfiles import run_name
from igam.run import provenance

PGD = ["--config", str(REPO / "configs/attack_pgds5.yaml"), "--device", "cpu"]
FGSM = ["--config", str(REPO / "configs/attack_fgsm.yaml"), "--device", "cpu"]
SEED0, SEED1 = "models/seed0/net", "models/seed1/net"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny CIFAR-10 classifiers, models/seed0/net and models/seed1/net, and their PGD-5
    attack files (pgd_attack.py with nothing but --model_dir)."""
    w = tmp_path_factory.mktemp("records")
    synth("cifar10", w / "data/c10", "--n_train", "40", "--n_test", "20")
    for seed in (0, 1):
        call("train_advtrain_tinyimagenet.py", "--config",
             str(REPO / "configs/advtrain_cifar10.yaml"), "--device", "cpu", *TINY,
             "--data.root", "data/c10", "--model_dir", f"models/seed{seed}/net",
             "--train.steps", "2", "--train.batch_size", "8", "--attack.steps", "1",
             "--seed", str(seed), "--log_every", "1", "--eval.batch_size", "20", cwd=w)
        call("pgd_attack.py", *PGD, "--model_dir", f"models/seed{seed}/net", cwd=w)
    return w


def record(npy):
    return json.loads(npy.with_suffix(".json").read_text())


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in proc.stderr
    return lines[-1]


def test_two_runs_with_one_folder_name_get_their_own_attack_files(runs):
    w = runs
    f0, f1 = attack_file(w, SEED0, "pgds5"), attack_file(w, SEED1, "pgds5")
    assert f0 != f1 and f0.is_file() and f1.is_file()
    assert re.fullmatch(r"net-[0-9a-f]{8}_pgds5_attack\.npy", f0.name)  # the original's pattern
    for npy, model_dir in ((f0, SEED0), (f1, SEED1)):
        rec = record(npy)
        assert rec["model"]["path"] == str((w / model_dir).resolve())
        assert rec["model"]["checkpoint_sha256"] == provenance.file_sha256(
            w / model_dir / "checkpoint.pt")
        assert rec["model"]["step"] == 2 and rec["model"]["kind"] == "classifier"
        assert rec["file"]["sha256"] == provenance.file_sha256(npy)  # neither overwritten
        assert rec["data"] == {"dataset": "cifar10", "split": "cifar10/test",
                               "root": str((w / "data/c10").resolve()), "classes": [], "n": 20}
        assert rec["attack"] == {"name": "pgds5", "method": "pgd", "norm": "linf", "eps": 8.0,
                                 "seed": 0, "bn_mode": "eval", "steps": 5, "step_size": 2.0,
                                 "restarts": 1, "loss": "xent", "random_start": True,
                                 "early_stop": True}
        assert rec["code"]["igam"] and rec["environment"]["device"] == "cpu"
        assert rec["environment"]["torch"] and rec["created"]


def test_examples_of_another_model_are_refused_unless_transfer(runs):
    w = runs
    f1 = attack_file(w, SEED1, "pgds5")
    proc = run("run_attack.py", *PGD, "--model_dir", SEED0, "--attack_path", str(f1), cwd=w,
               check=False)
    line = one_line_error(proc)
    assert "another model" in line and "transfer" in line
    assert str((w / SEED1).resolve()) in line and str((w / SEED0).resolve()) in line
    assert not list((w / SEED0).glob("eval_pgds5*"))  # nothing evaluated

    call("run_attack.py", *PGD, "--model_dir", SEED0, cwd=w)  # white-box: its own file
    call("run_attack.py", *PGD, "--model_dir", SEED0, "--attack_path", str(f1),
         "--transfer", "true", cwd=w)
    white = json.loads((w / SEED0 / "eval_pgds5.json").read_text())
    trans = json.loads((w / SEED0 / f"eval_pgds5_from_{run_name(w / SEED1)}.json").read_text())
    assert white["transfer"] is False and white["source_model"] is None
    assert white["attack_file"] == str(attack_file(w, SEED0, "pgds5").relative_to(w))
    assert trans["transfer"] is True and trans["attack_file"] == str(f1)
    assert trans["source_model"] == record(f1)["model"]
    assert trans["model"]["checkpoint_sha256"] == record(attack_file(w, SEED0, "pgds5"))[
        "model"]["checkpoint_sha256"] != trans["source_model"]["checkpoint_sha256"]
    assert "transfer (black-box) attack from" in (
        w / SEED0 / f"eval_pgds5_from_{run_name(w / SEED1)}.txt").read_text()
    # the white-box result is still its own
    assert json.loads((w / SEED0 / "eval_pgds5.json").read_text()) == white


@pytest.mark.parametrize("args, key, file_value, config_value", [
    (["--attack.eps", "4", "--attack.step_size", "1"], "attack.eps", "8.0", "4.0"),
    (["--attack.steps", "7"], "attack.steps", "5", "7"),
    (["--eval.bn_mode", "train"], "eval.bn_mode", "'eval'", "'train'"),
])
def test_attack_parameters_other_than_the_config_are_refused(runs, args, key, file_value,
                                                             config_value):
    proc = run("run_attack.py", *PGD, "--model_dir", SEED0, *args, cwd=runs, check=False)
    line = one_line_error(proc)
    assert f"{key} is {file_value} in the file, {config_value} in the config" in line, line


def test_fgsm_config_on_a_pgd_file_is_refused(runs):
    """The issue's case the other way round: a PGD file under the FGSM config."""
    f0 = attack_file(runs, SEED0, "pgds5")
    proc = run("run_attack.py", *FGSM, "--model_dir", SEED0, "--attack_path", str(f0),
               cwd=runs, check=False)
    assert "attack.method is 'pgd' in the file, 'fgsm' in the config" in one_line_error(proc)


def test_a_file_changed_after_its_record_is_refused(runs, tmp_path):
    f0 = attack_file(runs, SEED0, "pgds5")
    copy = tmp_path / "changed_attack.npy"
    x = np.load(f0)
    x[0, 0, 0, 0] += 1.0 if x[0, 0, 0, 0] < 128 else -1.0  # still a valid file otherwise
    np.save(copy, x)
    shutil.copy(f0.with_suffix(".json"), copy.with_suffix(".json"))
    proc = run("run_attack.py", *PGD, "--model_dir", SEED0, "--attack_path", str(copy),
               cwd=runs, check=False)
    assert "is not the file its record" in one_line_error(proc)


def test_a_file_without_record_loads_with_a_warning(runs, tmp_path):
    """The original TF code wrote no record: evaluated as the config says, one warning."""
    tf_file = tmp_path / "net_pgds5_attack.npy"
    shutil.copy(attack_file(runs, SEED0, "pgds5"), tf_file)
    proc = call("run_attack.py", *PGD, "--model_dir", SEED0, "--attack_path", str(tf_file),
                "--attack_name", "tf_pgds5", cwd=runs)
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "no record" in warnings[0] and str(tf_file) in warnings[0]
    res = json.loads((runs / SEED0 / "eval_tf_pgds5.json").read_text())
    assert res["attack_record"] is None and res["transfer"] is False
    assert res["attack"]["method"] == "pgd" and res["attack"]["name"] == "tf_pgds5"
    assert "no record" in proc.stdout


def test_two_attacks_on_one_model_give_two_results_and_one_clean_prediction_file(runs):
    w, d = runs, runs / SEED1
    call("pgd_attack.py", *FGSM, "--model_dir", SEED1, cwd=w)
    call("run_attack.py", *PGD, "--model_dir", SEED1, cwd=w)
    pgd_before = (d / "eval_pgds5.json").read_text()
    call("run_attack.py", *FGSM, "--model_dir", SEED1, cwd=w)
    pgd, fgsm = (json.loads((d / f"eval_{n}.json").read_text()) for n in ("pgds5", "fgsm"))
    assert (d / "eval_pgds5.json").read_text() == pgd_before  # not overwritten
    assert pgd["attack"]["method"] == "pgd" and fgsm["attack"]["method"] == "fgsm"
    assert pgd["attack_file"] != fgsm["attack_file"]
    for res in (pgd, fgsm):
        assert res["model"]["checkpoint_sha256"] == provenance.file_sha256(d / "checkpoint.pt")
        assert res["record"] == "igam-pytorch/eval-record/1" and res["n"] == 20
    # clean predictions: once per checkpoint, named by its hash, shared by both results
    sha8 = pgd["model"]["checkpoint_sha256"][:8]
    assert pgd["predictions"]["clean"] == fgsm["predictions"]["clean"] == \
        f"pred_clean_{sha8}.npy"
    assert sorted(p.name for p in d.glob("pred_clean*")) == [f"pred_clean_{sha8}.json",
                                                             f"pred_clean_{sha8}.npy"]
    full = np.load(d / f"pred_clean_{sha8}.npy")
    assert full.shape == (20,) and np.load(d / "pred_fgsm.npy").shape == (20,)
    # an evaluation of a subset does not replace the predictions of the whole test set
    call("pgd_attack.py", *FGSM, "--model_dir", SEED1, "--eval.num_examples", "10",
         "--attack_path", "attacks/first10.npy", "--attack_name", "fgsm10", cwd=w)
    call("run_attack.py", *FGSM, "--model_dir", SEED1, "--eval.num_examples", "10",
         "--attack_path", "attacks/first10.npy", cwd=w)
    assert np.array_equal(np.load(d / f"pred_clean_{sha8}.npy"), full)
    assert json.loads((d / "eval_fgsm10.json").read_text())["n"] == 10
    assert (d / "eval_fgsm.json").is_file()


def test_another_attack_under_the_same_name_does_not_overwrite_a_result(runs):
    w, d = runs, runs / SEED0
    call("run_attack.py", *PGD, "--model_dir", SEED0, cwd=w)
    before = (d / "eval_pgds5.json").read_text()
    eps4 = ["--attack.eps", "4", "--attack.step_size", "1", "--attack_path", "attacks/eps4.npy"]
    call("pgd_attack.py", *PGD, "--model_dir", SEED0, *eps4, cwd=w)  # also named pgds5
    proc = run("run_attack.py", *PGD, "--model_dir", SEED0, *eps4, cwd=w, check=False)
    line = one_line_error(proc)
    assert "holds the result of another attack named pgds5" in line
    assert "attack.eps is 8.0 there, 4.0 here" in line and "attack_name" in line
    assert (d / "eval_pgds5.json").read_text() == before
    call("run_attack.py", *PGD, "--model_dir", SEED0, cwd=w)  # the same file again: replaced
    assert json.loads((d / "eval_pgds5.json").read_text())["created"]


def test_report_lists_the_records(runs, capsys):
    w = runs
    call("run_attack.py", *PGD, "--model_dir", SEED0, cwd=w)
    call("run_attack.py", *PGD, "--model_dir", SEED1, cwd=w)
    out = w / "records.json"
    report.main(["--records", str(w / SEED0), str(w / SEED1), str(w / "data/c10/none"),
                 "--out", str(out)])
    text = capsys.readouterr().out
    entries = json.loads(out.read_text())
    names = {(e["run_dir"], e["name"]) for e in entries}
    assert (str(w / SEED0), "pgds5") in names and (str(w / SEED1), "pgds5") in names
    assert all(e["run_dir"] != str(w / "models/seed0/net/eval_clean") for e in entries)
    pgd0 = next(e for e in entries if e["run_dir"] == str(w / SEED0) and e["name"] == "pgds5")
    assert pgd0["attack"]["steps"] == 5 and pgd0["transfer"] is False and not pgd0["stale"]
    assert pgd0["checkpoint_sha256"] == provenance.file_sha256(w / SEED0 / "checkpoint.pt")
    header = text.splitlines()[0].split()
    assert header[:3] == ["model", "step", "checkpoint"]
    assert "pgd linf eps 8, 5 steps of 2" in text
    assert f"{100 * pgd0['adv_accuracy']:.2f}%" in text
    # a table row of the demo kind from the same records
    table = report.collect(w / "models", ["seed0/net", "seed1/net"], ["pgds5"])
    assert table["seed0/net"]["pgd5"] == round(100 * pgd0["adv_accuracy"], 2)
    with pytest.raises(IGAMError, match="no evaluation records"):
        report.main(["--records", str(w / "data")])


def test_results_of_a_replaced_checkpoint_are_stale(runs):
    """A run folder whose checkpoint changed: its attack file is refused (another checkpoint
    of the same folder), its old result is marked stale and kept out of the demo table."""
    w = runs
    shutil.copytree(w / SEED0, w / "models/copy/net")
    call("pgd_attack.py", *PGD, "--model_dir", "models/copy/net", cwd=w)
    call("run_attack.py", *PGD, "--model_dir", "models/copy/net", cwd=w)
    shutil.copy(w / SEED1 / "checkpoint.pt", w / "models/copy/net/checkpoint.pt")
    proc = run("run_attack.py", *PGD, "--model_dir", "models/copy/net", cwd=w, check=False)
    line = one_line_error(proc)
    assert "another checkpoint of" in line and "regenerate" in line
    (entry,) = [e for e in report.list_records([w / "models/copy/net"]) if e["name"] == "pgds5"]
    assert entry["stale"] is True
    with pytest.raises(IGAMError, match="another checkpoint"):
        report.collect(w / "models/copy", ["net"], ["pgds5"])


def test_run_name_differs_by_path_and_not_by_spelling(tmp_path, monkeypatch):
    (tmp_path / "a/net").mkdir(parents=True)
    (tmp_path / "b/net").mkdir(parents=True)
    assert run_name(tmp_path / "a/net") != run_name(tmp_path / "b/net")
    assert run_name(tmp_path / "a/net").startswith("net-")
    monkeypatch.chdir(tmp_path)
    assert run_name("a/net") == run_name(tmp_path / "a/net") == run_name("b/../a/net/")


def test_code_version_with_and_without_git(monkeypatch, tmp_path):
    provenance.code_version.cache_clear()
    try:
        monkeypatch.setenv("PATH", str(tmp_path))  # no git executable to be found
        assert provenance.code_version() == {"igam": igam.__version__, "git_commit": None,
                                             "git_dirty": None}
    finally:
        provenance.code_version.cache_clear()
    monkeypatch.undo()
    if shutil.which("git") and (REPO / ".git").exists():
        v = provenance.code_version()
        assert re.fullmatch(r"[0-9a-f]{40}", v["git_commit"] or "")
        assert isinstance(v["git_dirty"], bool)
