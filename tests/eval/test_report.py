"""The demo's results table (igam.eval.report): attack columns and the alignment column."""

from __future__ import annotations

import json

import pytest

from igam.errors import IGAMError
from igam.eval import report
from igam.eval.records import EVAL_RECORD


def test_table_with_alignment_column(tmp_path):
    for row, clean, adv in (("teacher", 0.8, 0.4), ("student", 0.9, 0.3), ("other", 0.5, 0.1)):
        (tmp_path / row).mkdir()
        (tmp_path / row / "eval_pgds20.json").write_text(
            json.dumps({"clean_accuracy": clean, "adv_accuracy": adv}))
    table = report.collect(tmp_path, ["teacher", "student", "other"], ["pgds20"])
    alignment = {"teacher": "teacher", "students": {"student": {"mean_cosine": 0.41234}}}
    report.add_alignment(table, alignment, tmp_path / "a.json")
    assert table == {"teacher": {"clean": 80.0, "pgd20": 40.0, "alignment": 1.0},
                     "student": {"clean": 90.0, "pgd20": 30.0, "alignment": 0.4123},
                     "other": {"clean": 50.0, "pgd20": 10.0, "alignment": None}}
    lines = report.format_table(table).splitlines()
    assert lines[0].split() == ["model", "clean", "pgd20", "alignment"]
    assert lines[2].split() == ["student", "90.00%", "30.00%", "0.412"]
    assert lines[3].split() == ["other", "50.00%", "10.00%", "-"]
    with pytest.raises(IGAMError, match="not an alignment JSON"):
        report.add_alignment(table, {"students": []}, tmp_path / "a.json")


def test_summarize_repeated_runs(tmp_path):
    runs = [{"pair": {"igam": {"clean": 80.0, "pgd20": 30.0, "alignment": 0.5},
                      "base": {"clean": 90.0, "pgd20": 10.0, "alignment": None}}},
            {"pair": {"igam": {"clean": 82.0, "pgd20": 34.0, "alignment": 0.7},
                      "base": {"clean": 90.0, "pgd20": 14.0, "alignment": None}}}]
    s = report.summarize(runs)
    assert s["pair"]["igam"]["pgd20"] == {"mean": 32.0, "std": 2.0, "min": 30.0, "max": 34.0,
                                          "values": [30.0, 34.0]}
    assert s["pair"]["igam"]["alignment"]["mean"] == 0.6
    assert s["pair"]["base"]["alignment"] is None
    files = []
    for i, r in enumerate(runs):
        files.append(tmp_path / f"r{i}.json")
        files[-1].write_text(json.dumps(r))
    out = tmp_path / "summary.json"
    report.main(["--summarize", *map(str, files), "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["runs"] == [str(f) for f in files] and written["summary"] == s
    with pytest.raises(IGAMError, match="same rows and columns"):
        report.summarize([runs[0], {"pair": {"igam": {"clean": 1.0}}}])


def test_chance_entry_per_folder(tmp_path):
    """--chance: each folder's JSON gets the chance level run_attack.py recorded (first row,
    first attack); it is printed below the table and kept as one number by --summarize."""
    for pair, share in (("a", 0.1), ("b", 0.2)):
        for row in ("teacher", "student"):
            (tmp_path / pair / row).mkdir(parents=True)
            (tmp_path / pair / row / "eval_pgds20.json").write_text(json.dumps(
                {"clean_accuracy": 0.5, "adv_accuracy": 0.25, "chance_accuracy": share}))
    out = tmp_path / "results.json"
    report.main([str(tmp_path / "a"), str(tmp_path / "b"), "--rows", "teacher", "student",
                 "--attacks", "pgds20", "--chance", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["a"]["chance"] == 10.0 and result["b"]["chance"] == 20.0
    assert result["b"]["student"] == {"clean": 50.0, "pgd20": 25.0}
    text = report.format_result(result).splitlines()
    assert text[-1] == "chance (best constant classifier): a 10.00%, b 20.00%"
    assert [line.split()[0] for line in text[1:-1]] == ["a/teacher", "a/student", "b/teacher",
                                                        "b/student"]
    s = report.summarize([result, result])
    assert s["a"]["chance"] == 10.0 and s["a"]["teacher"]["clean"]["mean"] == 50.0
    assert report.format_result(s).splitlines()[-1].endswith("a 10.00%, b 20.00%")
    (tmp_path / "a" / "teacher" / "eval_pgds20.json").write_text(
        json.dumps({"clean_accuracy": 0.5, "adv_accuracy": 0.25}))
    with pytest.raises(IGAMError, match="no chance_accuracy"):
        report.chance(tmp_path / "a", "teacher", "pgds20")


def test_chance_accuracy_is_the_most_frequent_class_share():
    from igam.eval.records import chance_accuracy
    assert chance_accuracy([0, 0, 1, 2]) == 0.5
    assert chance_accuracy([3, 3, 3]) == 1.0
    assert chance_accuracy([]) == 0.0


def test_describe_says_what_each_column_ran_on(tmp_path):
    """--describe: each folder's JSON gets, per column, the attack's description and how many
    test images of which split it ran on (from the first row's record); --summarize keeps it;
    the printed table does not show it as a row; a result without a record is refused."""
    runs = {"pgds20_eps4": ({"method": "pgd", "norm": "linf", "eps": 4.0, "steps": 20,
                             "step_size": 1.0}, 1000),
            "autoattack_eps4": ({"method": "autoattack", "norm": "linf", "eps": 4.0,
                                 "version": "standard", "n_iter": 0, "n_queries": 0,
                                 "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"]}, 200)}
    for row in ("teacher", "student"):
        (tmp_path / "a" / row).mkdir(parents=True)
        for name, (attack, n) in runs.items():
            (tmp_path / "a" / row / f"eval_{name}.json").write_text(json.dumps(
                {"record": EVAL_RECORD, "clean_accuracy": 0.5, "adv_accuracy": 0.25, "n": n,
                 "dataset": "cifar10/test[classes 5-9]", "attack": attack,
                 "model": {"checkpoint_sha256": "0" * 64}}))
    out = tmp_path / "results.json"
    report.main([str(tmp_path / "a"), "--rows", "teacher", "student", "--attacks",
                 *runs, "--describe", "--out", str(out)])
    cols = json.loads(out.read_text())["columns"]
    assert cols["pgd20_eps4"] == {"attack": "pgd linf eps 4, 20 steps of 1", "attacks": None,
                                  "n": 1000, "split": "cifar10/test[classes 5-9]"}
    assert cols["autoattack_eps4"]["n"] == 200
    assert cols["autoattack_eps4"]["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert cols["autoattack_eps4"]["attack"] == "autoattack standard linf eps 4"
    result = json.loads(out.read_text())
    assert report.summarize([result, result])["columns"] == cols
    report.main([str(tmp_path / "a"), "--rows", "teacher", "--attacks", *runs, "--nest",
                 "--out", str(out)])  # one folder, nested by its name
    assert list(json.loads(out.read_text())) == ["a"]
    assert [line.split()[0] for line in report.format_result(result).splitlines()] == [
        "model", "teacher", "student"]
    (tmp_path / "a" / "teacher" / "eval_pgds20_eps4.json").write_text(
        json.dumps({"clean_accuracy": 0.5, "adv_accuracy": 0.25}))
    with pytest.raises(IGAMError, match="no attack record"):
        report.describe_columns(tmp_path / "a", "teacher", ["pgds20_eps4"])


def test_eps_curves_one_chart_per_pair(tmp_path):
    """--eps_curves: accuracy against PGD-20's eps per row, one chart per pair side by side,
    from a results JSON or a summary of them (means); a table without pgd20 columns fails."""
    from PIL import Image
    row = {"clean": 80.0, "pgd20_eps2": 60.0, "pgd20_eps4": 40.0, "pgd20_eps8": 20.0,
           "autoattack_eps8": 18.0, "alignment": 0.5}
    result = {p: {"teacher": row, "student": dict(row, clean=90.0), "chance": 20.0}
              for p in ("a", "b")}
    results = tmp_path / "results.json"
    results.write_text(json.dumps(result))
    summary = tmp_path / "summary.json"
    report.main(["--summarize", str(results), str(results), "--out", str(summary)])
    for source in (results, summary):
        png = tmp_path / f"{source.stem}.png"
        report.main(["--eps_curves", str(source), "--out", str(png)])
        with Image.open(png) as img:
            single = report.eps_curves({"teacher": row})
            assert img.size == (2 * single.width, single.height)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"teacher": {"clean": 1.0, "fgsm": 0.5}}))
    with pytest.raises(IGAMError, match="no pgd20_eps"):
        report.main(["--eps_curves", str(bare), "--out", str(tmp_path / "x.png")])


def test_summarize_pairs_from_separate_files(tmp_path):
    """Pairs of one seed may come in separate files (one run per pair and seed): --summarize
    summarises each pair over the files holding it; flat tables must still match."""
    def table(pair, clean):
        return {pair: {"teacher": {"clean": clean, "pgd20_eps4": clean / 2}, "chance": 20.0}}
    files = []
    for i, (pair, clean) in enumerate([("a", 50.0), ("b", 30.0), ("a", 60.0), ("b", 40.0)]):
        files.append(tmp_path / f"{pair}{i}.json")
        files[-1].write_text(json.dumps(table(pair, clean)))
    out = tmp_path / "summary.json"
    report.main(["--summarize", *map(str, files), "--out", str(out)])
    summary = json.loads(out.read_text())["summary"]
    assert list(summary) == ["a", "b"]
    assert summary["a"]["teacher"]["clean"]["values"] == [50.0, 60.0]
    assert summary["b"]["teacher"]["pgd20_eps4"]["mean"] == 17.5
    assert summary["b"]["chance"] == 20.0
    with pytest.raises(IGAMError, match="same rows and columns"):
        report.summarize_pairs([{"teacher": {"clean": 1.0}}, {"student": {"clean": 1.0}}])


def test_transfer_share_of_the_teacher_margin(tmp_path):
    """--summarize --transfer: per run, (student - baseline) / (teacher - baseline) per attack
    column and the clean cost, then their mean and spread; printed below the table."""
    def run(student_aa):
        return {"p": {"teacher": {"clean": 70.0, "autoattack_eps4": 45.0, "alignment": 1.0},
                      "igam": {"clean": 72.0, "autoattack_eps4": student_aa, "alignment": 0.3},
                      "base": {"clean": 80.0, "autoattack_eps4": 15.0, "alignment": 0.1},
                      "chance": 20.0}}
    assert report.transfer(run(30.0)["p"], "teacher", "igam", "base") == {
        "margin_recovered": {"autoattack_eps4": 0.5}, "clean_cost": 8.0}
    files = []
    for i, aa in enumerate((30.0, 36.0)):
        files.append(tmp_path / f"s{i}.json")
        files[-1].write_text(json.dumps(run(aa)))
    out = tmp_path / "summary.json"
    report.main(["--summarize", *map(str, files), "--transfer", "teacher", "igam", "base",
                 "--out", str(out)])
    t = json.loads(out.read_text())["summary"]["p"]["transfer"]
    assert t["margin_recovered"]["autoattack_eps4"]["values"] == [0.5, 0.7]
    assert t["clean_cost"]["mean"] == 8.0
    text = report.format_result(json.loads(out.read_text())["summary"])
    assert text.splitlines()[-1] == ("p: margin recovered autoattack_eps4 0.60+-0.10; clean "
                                     "cost 8.00+-0.00 points")
    assert [line.split()[0] for line in text.splitlines()[1:4]] == ["p/teacher", "p/igam",
                                                                     "p/base"]
    with pytest.raises(IGAMError, match="no row 'student'"):
        report.transfer(run(30.0)["p"], "teacher", "student", "base")
    flat = run(30.0)["p"]
    flat["teacher"]["autoattack_eps4"] = 10.0  # teacher below the baseline: no ratio
    assert report.transfer(flat, "teacher", "igam", "base")["margin_recovered"] == {
        "autoattack_eps4": None}


def test_eps_curves_of_a_summary_show_the_spread_of_runs(tmp_path):
    """From a summary, each point carries a bar from the lowest to the highest run: the chart
    has more of the row's colour than the chart of the means alone, and says so in its title."""
    import numpy as np

    from igam.eval.figures import PALETTE
    files = []
    for i, eps4 in enumerate([30.0, 50.0]):
        f = tmp_path / f"run{i}.json"
        f.write_text(json.dumps({"teacher": {"clean": 80.0, "pgd20_eps4": eps4}}))
        files.append(f)
    summary = tmp_path / "summary.json"
    report.main(["--summarize", *map(str, files), "--out", str(summary)])

    def colour_pixels(img):
        return int((np.asarray(img) == PALETTE[0]).all(axis=2).sum())
    with_bars = report.eps_curves(json.loads(summary.read_text()))
    means = report.eps_curves({"teacher": {"clean": 80.0, "pgd20_eps4": 40.0}})
    assert colour_pixels(with_bars) > colour_pixels(means) + 20  # a bar of 20 points' height
    # a summary of one run has no spread to show (every range is empty): drawn like that run's
    # own table (two rows, so that an empty whisker's caps would stick out beside the markers)
    table = {"teacher": {"clean": 80.0, "pgd20_eps4": 30.0}, "igam": {"clean": 70.0,
                                                                     "pgd20_eps4": 20.0}}
    files[0].write_text(json.dumps(table))
    report.main(["--summarize", str(files[0]), "--out", str(summary)])
    one = report.eps_curves(json.loads(summary.read_text()))
    assert colour_pixels(one) == colour_pixels(report.eps_curves(table))
