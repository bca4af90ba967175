"""scripts/demo.sh end to end, shrunk by its environment knobs (the full demo takes ~5 min;
its numbers are in docs/results.md). Checks the table, results.json and the pictures it produces."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_script_produces_results_table(tmp_path):
    env = dict(os.environ, DEMO_DIR=str(tmp_path / "models"), DEMO_DATA=str(tmp_path / "data"),
               DEMO_CLASSES="3", DEMO_SRC_PER_CLASS="8", DEMO_SRC_VAL="4", DEMO_TGT_TRAIN="64",
               DEMO_TGT_TEST="20", DEMO_SRC_STEPS="2", DEMO_FT_STEPS="2", DEMO_IGAM_STEPS="4",
               DEMO_WARMUP="2", DEMO_SANITY_EXAMPLES="20", DEMO_SQUARE_QUERIES="20",
               DEMO_SANITY_ARGS="--sanity.steps 1,2 --sanity.eps_sweep 8,64 "
                                "--sanity.sweep_steps 2 --sanity.noise_draws 2",
               OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(REPO / "scripts/demo.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "models/results.json").read_text())
    assert list(results) == ["teacher", "finetuned_teacher", "igam_student", "baseline_student"]
    for row in results.values():
        assert set(row) == {"clean", "fgsm", "pgd20", "alignment"}
        assert all(0.0 <= row[k] <= 100.0 for k in ("clean", "fgsm", "pgd20"))
    # alignment with the teacher's input gradients: trivially 1 for the teacher itself, none
    # for the source model (another task), a cosine for each student
    assert results["teacher"]["alignment"] is None
    assert results["finetuned_teacher"]["alignment"] == 1.0
    for student in ("igam_student", "baseline_student"):
        assert -1.0 <= results[student]["alignment"] <= 1.0
    table = proc.stdout
    assert "igam_student" in table and "pgd20" in table and "alignment" in table
    out = tmp_path / "models"
    sanity = json.loads((out / "sanity.json").read_text())["models"]
    assert list(sanity) == ["finetuned_teacher", "igam_student", "baseline_student"]
    assert all(r["n"] == 20 and len(r["checks"]) == 6 for r in sanity.values())
    for png in ("input_gradients.png", "robustness_curve.png"):
        with Image.open(out / png) as img:
            assert img.format == "PNG" and min(img.size) > 100
    assert "configs/attack_autoattack.yaml" in proc.stdout
    # the baseline really ran with beta = gamma = 0, the IGAM student with the demo's values
    base = (tmp_path / "models/baseline_student/config.yaml").read_text()
    igam = (tmp_path / "models/igam_student/config.yaml").read_text()
    assert "beta: 0.0" in base and "gamma: 0.0" in base
    assert "beta: 1.0" in igam and "gamma: 10.0" in igam
