"""Training curves of one or several runs from their metrics.jsonl, as one PNG.

    python -m igam.eval.report --curves models/igam_seed0 models/igam_seed1 --out curves.png

One panel per quantity a run logged (losses, training accuracies, the watched clean and PGD
accuracy of ``watch.every``, the learning rate), in a grid of :data:`COLUMNS` columns; in
every panel each run is one line of its own colour (the same colour in every panel, the
folder's name in the legend), so several seeds overlay. Drawn with
:func:`igam.eval.figures.line_chart` (PIL, no plotting library); x is the step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from igam.errors import IGAMError
from igam.eval.figures import PALETTE, WHITE, line_chart, save_png
from igam.run.rundir import METRICS_NAME

# (metrics.jsonl name, panel title, y-axis title), in panel order; accuracies in percent
PANELS = [
    ("loss", "total student loss (IGAM)", "loss"),
    ("xent", "training cross-entropy", "xent"),
    ("disc_xent", "discriminator cross-entropy", "xent"),
    ("l2", "input-gradient L2 term", "sum (g_s - g_t)^2"),
    ("accuracy", "training accuracy", "accuracy (%)"),
    ("nat_accuracy", "natural training accuracy", "accuracy (%)"),
    ("disc_accuracy", "discriminator accuracy", "accuracy (%)"),
    ("watch_clean_accuracy", "watched clean accuracy", "accuracy (%)"),
    ("watch_robust_accuracy", "watched PGD accuracy", "accuracy (%)"),
    ("lr", "learning rate", "lr"),
]
COLUMNS = 2
PANEL_SIZE = (560, 340)
MAX_X_LABELS = 8


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``<run_dir>/metrics.jsonl`` (a metrics.jsonl path also works);
    IGAMError if there is none. Lines that are not JSON objects are skipped."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / METRICS_NAME
    if not path.is_file():
        raise IGAMError(f"{path} not found: pass run folders holding a metrics.jsonl")
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # strings ("nan", "inf", the split), missing values
    return float(value) if math.isfinite(value) else None


def series_of(records: Sequence[dict], key: str) -> dict[int, float]:
    """step -> value of ``key`` (the last record of a step wins; non-numbers skipped)."""
    out = {}
    for r in records:
        v = _number(r.get(key))
        if v is not None:
            out[int(r["step"])] = v
    return out


def _nice_ceiling(value: float) -> float:
    """1, 2, 2.5 or 5 times a power of ten, >= value (> 0)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if m * power >= value * (1 - 1e-9):
            return m * power
    return 10 * power


def _run_names(run_dirs: Sequence[str | Path]) -> list[str]:
    names = [Path(d).resolve().name for d in run_dirs]
    return [n if names.count(n) == 1 else str(d) for n, d in zip(names, run_dirs)]


def curves_image(run_dirs: Sequence[str | Path]) -> Image.Image:
    """The grid of panels (see the module docstring) of the runs in ``run_dirs``."""
    if not run_dirs:
        raise IGAMError("--curves needs at least one run folder")
    if len(run_dirs) > len(PALETTE):
        raise IGAMError(f"--curves draws at most {len(PALETTE)} runs, got {len(run_dirs)}")
    runs = dict(zip(_run_names(run_dirs), (read_metrics(d) for d in run_dirs)))
    panels = []
    for key, title, y_title in PANELS:
        per_run = {name: series_of(records, key) for name, records in runs.items()}
        if not any(per_run.values()):
            continue
        steps = sorted({s for values in per_run.values() for s in values})
        series = {name: [values.get(s) for s in steps] for name, values in per_run.items()}
        scale = 100.0 if "accuracy" in key else 1.0
        series = {n: [None if v is None else v * scale for v in ys] for n, ys in series.items()}
        finite = [v for ys in series.values() for v in ys if v is not None]
        if "accuracy" in key:
            lo, hi = 0.0, 100.0
        else:
            lo = min(0.0, -_nice_ceiling(-min(finite))) if min(finite) < 0 else 0.0
            hi = _nice_ceiling(max(finite)) if max(finite) > 0 else (0.0 if lo < 0 else 1.0)
        panels.append(line_chart([str(s) for s in steps], series, title=title, x_title="step",
                                 y_title=y_title, size=PANEL_SIZE, y_max=hi, y_min=lo,
                                 max_x_labels=MAX_X_LABELS))
    if not panels:
        raise IGAMError("no metrics to draw in " + ", ".join(map(str, run_dirs)))
    rows = -(-len(panels) // COLUMNS)
    width, height = PANEL_SIZE
    sheet = Image.new("RGB", (COLUMNS * width, rows * height), WHITE)
    for i, panel in enumerate(panels):
        sheet.paste(panel, ((i % COLUMNS) * width, (i // COLUMNS) * height))
    return sheet


def write_curves(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Draw :func:`curves_image` and save it as a PNG at ``out``; return the path."""
    return save_png(curves_image(run_dirs), out)
