"""The demo's results table (igam.report): attack columns and the alignment column."""

from __future__ import annotations

import json

import pytest

from igam import report
from igam.errors import IGAMError


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
