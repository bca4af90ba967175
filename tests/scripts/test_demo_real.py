"""scripts/demo_real.sh end to end on the real subsets ($IGAM_REAL_DATA) with its tiny settings
(DEMO_REAL_TINY=1: a few steps, 20 test images; the numbers are meaningless, the files and
their consistency are checked), and its one-line error when the data is missing.

The end-to-end run uses the validation mode (DEMO_REAL_VALIDATE=1), whose only addition to the
default path is the held-out CIFAR-10 folder every step then reads (one run covers both; the
table in docs/results.md is the default path run at full settings)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from igam.eval.advfiles import run_name
from igam.run.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
PAIRS = {"tinyimagenet_to_cifar10": ("cifar10/test", None, None),
         "cifar10_0-4_to_5-9": ("cifar10/test[classes 5-9]", [0, 1, 2, 3, 4], [5, 6, 7, 8, 9])}
ROWS = ["finetuned_teacher", "igam_student", "baseline_student"]
EPS = {"pgd20_eps2": 2.0, "pgd20_eps4": 4.0, "pgd20_eps8": 8.0}  # PGD-20 columns, eps /255


def run_demo(tmp_path, data, **env) -> subprocess.CompletedProcess:
    env = dict(os.environ, DEMO_REAL_DIR=str(tmp_path / "out"), IGAM_REAL_DATA=str(data),
               DEMO_REAL_TINY="1", DEMO_REAL_SEED="3", OMP_NUM_THREADS="1", **env)
    return subprocess.run(["bash", str(REPO / "scripts/demo_real.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=1200)


def config(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


@pytest.mark.slow
def test_demo_real_script_end_to_end(real_data, tmp_path):
    proc = run_demo(tmp_path, real_data, DEMO_REAL_VALIDATE="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    # validation mode: CIFAR-10 is the real training set less 200 held-out images per class
    holdout = json.loads((out / "validation_data" / "HOLDOUT.json").read_text())
    assert (holdout["n_train"], holdout["n_validation"], holdout["seed"]) == (3000, 2000, 0)
    assert holdout["source"] == str(real_data.resolve())
    results = json.loads((out / "results.json").read_text())
    assert list(results) == list(PAIRS)
    for pair, (test_name, src_classes, tgt_classes) in PAIRS.items():
        assert list(results[pair]) == ROWS + ["chance", "columns"]
        columns = results[pair]["columns"]
        assert list(columns) == [*EPS, "apgd_eps8", "autoattack_eps8"]
        assert columns["apgd_eps8"]["attacks"] == ["apgd-ce", "apgd-t"]
        assert columns["apgd_eps8"]["n"] == 10
        assert columns["autoattack_eps8"]["n"] == 10 and columns["pgd20_eps4"]["n"] == 20
        assert columns["pgd20_eps4"]["attack"] == "pgd linf eps 4, 20 steps of 1"
        assert columns["autoattack_eps8"]["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
        first = json.loads((out / pair / "finetuned_teacher" / "eval_pgd20_eps2.json").read_text())
        assert results[pair]["chance"] == round(100 * first["chance_accuracy"], 2)
        assert results[pair]["chance"] >= 100 / (5 if tgt_classes else 10)  # 20 test images
        for row in ROWS:
            d = out / pair / row
            entry = results[pair][row]
            assert list(entry) == ["clean", *EPS, "apgd_eps8", "autoattack_eps8", "alignment"]
            name = run_name(d)  # the attack files: <row>-<path hash>_<attack>_attack.*
            aa = json.loads((out / pair / "attacks" / f"{name}_autoattack_eps8_attack.json")
                            .read_text())
            assert aa["data"]["n"] == 10 and aa["attack"]["seed"] == 3
            assert aa["autoattack"]["settings"]["reduced"] is True
            robust = list(aa["autoattack"]["robust_accuracy"].values())
            assert robust == sorted(robust, reverse=True)  # clean, then after each sub-attack
            assert aa["attack"]["eps"] == 8.0
            ev = json.loads((d / "eval_autoattack_eps8.json").read_text())
            assert entry["autoattack_eps8"] == round(100 * ev["adv_accuracy"], 2) and ev["n"] == 10
            for attack, eps in EPS.items():
                ev = json.loads((d / f"eval_{attack}.json").read_text())
                assert ev["dataset"] == test_name and ev["n"] == 20 and ev["eps"] == eps
                assert entry[attack] == round(100 * ev["adv_accuracy"], 2)
                assert entry["clean"] == round(100 * ev["clean_accuracy"], 2)
                adv = np.load(out / pair / "attacks" / f"{name}_{attack}_attack.npy")
                assert adv.shape == (20, 32, 32, 3) and 0 <= adv.min() and adv.max() <= 255
                pred = np.load(d / f"pred_{attack}.npy")
                assert pred.shape == (20,) and pred.max() < (5 if tgt_classes else 10)
                meta = json.loads((out / pair / "attacks" / f"{name}_{attack}_attack.json")
                                  .read_text())
                assert meta["attack"]["seed"] == 3 and meta["attack"]["steps"] == 20
                assert meta["attack"]["step_size"] == eps / 4
                assert ev["model"]["checkpoint_sha256"] == meta["model"]["checkpoint_sha256"]
                assert ev["attack"] == meta["attack"] and ev["transfer"] is False
            assert all(0.0 <= v <= 100.0 for k, v in entry.items() if k != "alignment")
            cfg = config(d)
            assert cfg["seed"] == 3 and cfg["data"]["classes"] == (tgt_classes or [])
            assert cfg["data"]["root"] == str(out / "validation_data")
            assert load_checkpoint(d)["step"] == 2
            assert json.loads((d / "eval_clean.json").read_text())
        alignment = json.loads((out / pair / "input_gradients.json").read_text())
        for row in ("igam_student", "baseline_student"):
            cosine = alignment["students"][row]["mean_cosine"]
            assert -1.0 <= cosine <= 1.0 and results[pair][row]["alignment"] == round(cosine, 4)
        assert results[pair]["finetuned_teacher"]["alignment"] == 1.0
        assert (out / pair / "input_gradients.png").stat().st_size > 1000
        src = config(out / pair / "source")
        assert src["seed"] == 3 and src["data"]["classes"] == (src_classes or [])
        assert src["data"]["root"] == (str(out / "validation_data") if src_classes
                                       else str(real_data / "tiny-imagenet-200"))
        assert src["data"]["dataset"] == ("cifar10" if src_classes else "tinyimagenet")
        teacher = load_checkpoint(out / pair / "finetuned_teacher")
        assert teacher["arch"]["upresize_to"] == (None if src_classes else 64)
        # the baseline is the IGAM student with beta = gamma = 0 and nothing else changed
        igam, base = config(out / pair / "igam_student"), config(out / pair / "baseline_student")
        assert (igam["igam"]["beta"], igam["igam"]["gamma"]) == (0.5, 5.0)
        assert (base["igam"]["beta"], base["igam"]["gamma"]) == (0.0, 0.0)
        for cfg in (igam, base):
            cfg.pop("model_dir")
            cfg["igam"].pop("beta")
            cfg["igam"].pop("gamma")
        assert igam == base
    table = proc.stdout
    for pair in PAIRS:
        for row in ROWS:
            assert f"{pair}/{row}" in table
    assert "pgd20_eps4" in table and "chance (best constant classifier)" in table
    assert "demo_real finished" in table
    # wall-clock seconds of every step, per pair
    steps = [line.split("\t") for line in (out / "times.tsv").read_text().splitlines()]
    for pair in PAIRS:
        done = [s[1] for s in steps if s[0] == pair]
        assert done[:4] == ["source", "finetuned_teacher", "igam_student", "baseline_student"]
        assert f"igam_student {next(iter(EPS))}" in done and done[-1] == "input_gradients"
        assert len(done) == 4 + 3 * (len(EPS) + 2) + 1
    assert all(int(s[2]) >= 0 for s in steps)

    # DEMO_REAL_RESUME=1 after a stop during the last attack: the steps times.tsv lists are
    # skipped (their results untouched), the rest runs, and the table comes out the same
    last = out / "cifar10_0-4_to_5-9" / "baseline_student"
    kept = (last / "eval_apgd_eps8.json").stat().st_mtime_ns
    redone = (last / "eval_autoattack_eps8.json").stat().st_mtime_ns
    (out / "times.tsv").write_text("".join("\t".join(s) + "\n" for s in steps[:-2]))
    proc = run_demo(tmp_path, real_data, DEMO_REAL_VALIDATE="1", DEMO_REAL_RESUME="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resume: cifar10_0-4_to_5-9 baseline_student apgd_eps8 already done" in proc.stdout
    assert (last / "eval_apgd_eps8.json").stat().st_mtime_ns == kept
    assert (last / "eval_autoattack_eps8.json").stat().st_mtime_ns != redone
    again = [line.split("\t")[:2] for line in (out / "times.tsv").read_text().splitlines()]
    assert again == [s[:2] for s in steps]
    assert json.loads((out / "results.json").read_text()) == results


def test_demo_real_missing_data_says_where_to_put_it(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_demo(tmp_path, tmp_path / "empty")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: real CIFAR-10 not found")
    assert "cifar-10-batches-py" in lines[0] and "IGAM_REAL_DATA" in lines[0]
    assert not (tmp_path / "out").exists()


def test_demo_real_unknown_pair(tmp_path):
    proc = run_demo(tmp_path, tmp_path, DEMO_REAL_PAIRS="cifar10_0-4_to_5-9 cifar100")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "DEMO_REAL_PAIRS: unknown pair 'cifar100'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_demo_real_missing_tinyimagenet(tmp_path):
    (tmp_path / "data/cifar10/cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "data/cifar10/cifar-10-batches-py/data_batch_1").touch()
    proc = run_demo(tmp_path, tmp_path / "data")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: real Tiny-ImageNet not found")
    assert f"{tmp_path / 'data'}/tiny-imagenet-200" in lines[0]
