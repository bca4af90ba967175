"""The demo's results table (igam.eval.report): attack columns and the alignment column."""

from __future__ import annotations

import json

import pytest

from igam.errors import IGAMError
from igam.eval import report


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
