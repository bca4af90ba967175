"""python -m igam.eval.report --curves: training curves of runs from metrics.jsonl as a PNG."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from igam.errors import IGAMError
from igam.eval import curves
from igam.eval.report import main


def write_run(folder, xent_scale=1.0, watch=True):
    folder.mkdir(parents=True)
    lines = []
    for step in range(10, 110, 10):
        lines.append({"step": step, "time": "t", "xent": xent_scale * 2.3 / (1 + step / 50),
                      "accuracy": step / 200, "lr": 0.1 if step <= 50 else 0.01,
                      "steps_per_s": 3.0})
        if watch and step % 50 == 0:
            lines.append({"step": step, "time": "t", "watch_clean_accuracy": 0.5,
                          "watch_robust_accuracy": 0.2, "watch_split": "test", "lr": 0.1})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines)
                                          + '{"step": 3')  # a partial last line is skipped
    return folder


def test_curves_png(tmp_path):
    a = write_run(tmp_path / "seed0")
    b = write_run(tmp_path / "seed1", xent_scale=1.5, watch=False)
    out = tmp_path / "curves.png"
    main(["--curves", str(a), str(b), "--out", str(out)])
    img = Image.open(out)
    # xent, accuracy, watched clean, watched PGD, lr: 5 panels in 2 columns, 3 rows
    w, h = curves.PANEL_SIZE
    assert img.size == (2 * w, 3 * h)
    single = tmp_path / "one.png"
    main(["--curves", str(a), "--out", str(single)])
    assert Image.open(single).size == img.size
    assert not np.array_equal(np.asarray(Image.open(single)), np.asarray(img))
    changed = write_run(tmp_path / "other" / "seed0", xent_scale=0.5)
    other = tmp_path / "other.png"
    main(["--curves", str(changed), "--out", str(other)])
    assert not np.array_equal(np.asarray(Image.open(single)), np.asarray(Image.open(other)))


def test_curves_errors(tmp_path):
    with pytest.raises(IGAMError, match="metrics.jsonl"):
        main(["--curves", str(tmp_path), "--out", str(tmp_path / "c.png")])
    with pytest.raises(IGAMError, match="--out"):
        main(["--curves", str(write_run(tmp_path / "r"))])
