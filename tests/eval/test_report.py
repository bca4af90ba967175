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
