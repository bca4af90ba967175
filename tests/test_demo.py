"""scripts/demo.sh end to end, shrunk by its environment knobs (the full demo takes ~5 min;
its numbers are in the README). Checks the table and results.json it produces."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_script_produces_results_table(tmp_path):
    env = dict(os.environ, DEMO_DIR=str(tmp_path / "models"), DEMO_DATA=str(tmp_path / "data"),
               DEMO_CLASSES="3", DEMO_SRC_PER_CLASS="8", DEMO_SRC_VAL="4", DEMO_TGT_TRAIN="64",
               DEMO_TGT_TEST="20", DEMO_SRC_STEPS="2", DEMO_FT_STEPS="2", DEMO_IGAM_STEPS="4",
               DEMO_WARMUP="2", OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(REPO / "scripts/demo.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "models/results.json").read_text())
    assert list(results) == ["teacher", "finetuned_teacher", "igam_student", "baseline_student"]
    for row in results.values():
        assert set(row) == {"clean", "fgsm", "pgd20"}
        assert all(0.0 <= v <= 100.0 for v in row.values())
    table = proc.stdout
    assert "igam_student" in table and "pgd20" in table
    # the baseline really ran with beta = gamma = 0, the IGAM student with the demo's values
    base = (tmp_path / "models/baseline_student/config.yaml").read_text()
    igam = (tmp_path / "models/igam_student/config.yaml").read_text()
    assert "beta: 0.0" in base and "gamma: 0.0" in base
    assert "beta: 1.0" in igam and "gamma: 10.0" in igam
