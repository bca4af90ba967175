"""Smoke test of the benchmark scripts (bench/): each main() runs end to end on tiny settings.

The benchmarks are run by hand (see bench/README.md); this only checks that they still work
with the current igam API and write a well-formed result. The torchattacks column of
bench_pgd is skipped when torchattacks (a bench-only dependency) is not installed.
"""

from __future__ import annotations

import json

import pytest

from bench import bench_data, bench_eval, bench_pgd, bench_train, common

TINY = ["--width", "4,4,6,8", "--units", "1", "--batch_size", "2", "--reps", "1",
        "--warmup", "0", "--device", "cpu"]


def _load(out_dir, name):
    return json.loads((out_dir / f"{name}_cpu.json").read_text())


def test_parse_widths():
    assert common.parse_widths("debug") == (16, 16, 32, 64)
    assert common.parse_widths("paper") == (16, 160, 320, 640)
    assert common.parse_widths("4, 4,6,8") == (4, 4, 6, 8)
    for bad in ("4,4,4,4", "1,2,3", "wide"):
        with pytest.raises(Exception, match="--width"):
            common.parse_widths(bad)


def test_bench_pgd_smoke(tmp_path):
    res = bench_pgd.main(TINY + ["--train_steps", "2", "--n_train", "8", "--n_eval", "4",
                                 "--steps", "2", "--profile", "--out_dir", str(tmp_path)])
    assert res["timing_s"]["ours"]["median"] > 0
    assert res["profile"]["ours"] and res["profile"]["ours"][0]["self_ms"] >= 0
    q = res["strength"]
    assert 0.0 <= q["accuracy_ours"] <= 1.0 and q["n_eval"] == 4
    assert q["max_linf_ours"] <= 8.0 + 1e-3  # inside the eps-ball (grey levels)
    if bench_pgd.torchattacks is not None:
        assert res["ratio_ours_over_theirs"] > 0
        assert q["max_linf_theirs"] <= 8.0 + 1e-3
        assert 0.0 <= q["prediction_agreement"] <= 1.0
    else:
        assert res["ratio_ours_over_theirs"] is None
    assert _load(tmp_path, "pgd")["settings"]["steps"] == 2


def test_bench_train_smoke(tmp_path):
    res = bench_train.main(TINY + ["--memory", "none", "--pgd_steps", "1", "--disc_layers",
                                   "2", "--teacher_size", "48", "--out_dir", str(tmp_path)])
    assert set(res["per_iteration_s"]) == set(bench_train.THINGS)
    assert all(t > 0 for t in res["per_iteration_s"].values())
    r = res["ratios"]
    assert r["igam_d1_over_parts"] > 0 and r["igam_d5_over_parts"] > 0
    assert _load(tmp_path, "train")["ratios"]["parts_sum_s"] == pytest.approx(r["parts_sum_s"])


@pytest.mark.slow
def test_bench_train_memory_probe():
    # the child side of the CPU peak-memory measurement, run in this process
    res = bench_train.main(TINY + ["--out_dir", "", "--_probe", "plain"])
    assert res["thing"] == "plain" and res["peak_mb"] >= res["base_mb"] > 0
    argv = common.argv_without_probe(["--reps", "3", "--out_dir", "x", "--_probe=plain"])
    assert argv == ["--reps", "3", "--out_dir", ""]
    # and once for real, in a fresh subprocess (what bench_train does on CPU)
    child = common.peak_rss_in_subprocess("bench.bench_train", "plain",
                                          common.argv_without_probe(TINY), timeout=120)
    assert "error" not in child, child
    assert child["thing"] == "plain" and child["delta_mb"] >= 0


def test_bench_data_smoke(tmp_path):
    res = bench_data.main(TINY + ["--data", "synthetic", "--synthetic_classes", "3",
                                  "--synthetic_per_class", "5", "--sizes", "8",
                                  "--aug_reps", "1", "--out_dir", str(tmp_path)])
    d = res["decode"]
    assert d["n_images"] == 3 * 5 + 3 * 1 and d["cached_equals_decoded"]
    assert all(v > 0 for v in d["images_per_s"].values())
    aug = res["augment"][0]
    assert aug["size"] == 8 and aug["images_per_s"]["augment_batch"] > 0
    assert _load(tmp_path, "data")["benchmark"] == "data"


def test_bench_eval_smoke(tmp_path):
    res = bench_eval.main(TINY + ["--train_steps", "3", "--natural_steps", "1",
                                  "--train_pgd_steps", "1", "--n_train", "8", "--n_eval", "6",
                                  "--steps", "2", "--apgd_steps", "3", "--aa_examples", "2",
                                  "--out_dir", str(tmp_path)])
    pgd = res["pgd"]
    assert pgd["timing_s"]["ours_early_stop"]["median"] > 0
    # early stop is never weaker than the final-iterate attack with the same random starts
    assert pgd["accuracy"]["ours_early_stop"] <= pgd["accuracy"]["ours_final_iterate"]
    if bench_eval.torchattacks is not None:
        assert pgd["ratio_early_stop_over_torchattacks"] > 0
    if bench_eval.pyautoattack is not None:
        assert 0.0 <= res["apgd_ce_crosscheck"]["ours_accuracy"] <= 1.0
        accs = list(res["autoattack_standard"]["robust_accuracy"].values())
        assert all(a >= b for a, b in zip(accs, accs[1:]))
    saved = _load(tmp_path, "eval")
    assert saved["benchmark"] == "eval" and saved["complete"] is True
