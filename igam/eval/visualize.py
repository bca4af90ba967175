"""Input-gradient pictures and the alignment number: does the student see what the teacher sees?

IGAM's claim is that the student's input gradients come to look like the robust teacher's.
This tool shows it and measures it, on the test set of the models (the same for all):

- a PNG grid: a row of test images, then the teacher's input gradient of each, then each
  student's (columns labelled by class, rows by model, each student's row with its alignment);
- the alignment: per test example the cosine similarity between the student's and the
  teacher's input gradients, averaged over the test set (1 = same direction, 0 = unrelated,
  -1 = opposite), written to JSON.

The input gradient is the one IGAM matches, d softmax(f(x))[y] / dx for the true class y
(``igam.gradients``); a teacher's goes through its target head and its upresize, as in
training. Every model runs in eval mode (running BatchNorm statistics), so each example's
gradient is its own.

Display: the original code publishes no figure code, so the pictures follow the usual
convention for input-gradient figures (Tsipras et al. 2019, "Robustness may be at odds with
accuracy"): per image, the gradient is divided by ``picture.clip_std`` times its standard
deviation over all pixels and channels, clipped to [-1, 1] and mapped to [0, 1], so zero is
mid grey and the colours are the gradient's signs per channel.

    python -m igam.eval.visualize --teacher_dir models/teacher --student_dir models/igam_student \
        [--student_dir models/baseline_student ...] --out input_gradients.png

Writes the picture at ``--out`` and the alignment JSON at ``--alignment_out`` (default: the
picture's path with ``.json``), with the resolved config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from igam.attacks import PIXEL_MAX
from igam.data import eval_batches
from igam.errors import ConfigError
from igam.eval import figures
from igam.gradients import cosine_per_example, input_gradient
from igam.run import engine, schemas
from igam.run.cli import run_main
from igam.run.config import load_config
from igam.run.engine import eval_subset
from igam.run.files import write_json
from igam.run.progress import progress


def eval_input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Input gradient (B, 3, H, W) of ``model`` in eval mode (its mode restored after)."""
    was = {m: m.training for m in model.modules()}
    model.eval()
    try:
        return input_gradient(model, x, y)
    finally:
        for m, t in was.items():
            m.training = t


def display_gradients(g: torch.Tensor, clip_std: float = 3.0) -> torch.Tensor:
    """Input gradients (B, C, H, W) -> display images (B, C, H, W) in [0, 1], per image:
    ``0.5 + 0.5 * clip(g / (clip_std * std(g)), -1, 1)``; a zero gradient is uniform grey."""
    g = g.detach().double()
    std = g.flatten(1).std(dim=1).view(-1, 1, 1, 1)
    z = torch.where(std > 0, g / (clip_std * std), torch.zeros_like(g))
    return (0.5 + 0.5 * z.clamp(-1.0, 1.0)).float()


def gradient_alignment(teacher: nn.Module, students: Mapping[str, nn.Module], data,
                       batch_size: int, device) -> dict[str, dict[str, float]]:
    """Mean per-example cosine similarity of each student's input gradient with the teacher's.

    Returns {name: {"mean_cosine", "std_cosine", "n" (examples averaged), "undefined"
    (examples left out because a gradient was exactly zero)}}; the teacher's gradient of each
    batch is computed once for all students.
    """
    cos: dict[str, list[torch.Tensor]] = {name: [] for name in students}
    nb = -(-len(data) // batch_size)
    for x, y in progress(eval_batches(data, batch_size, device), desc="alignment", total=nb,
                         leave=False):
        g_t = eval_input_gradient(teacher, x, y)
        for name, student in students.items():
            cos[name].append(cosine_per_example(eval_input_gradient(student, x, y), g_t).cpu())
    out = {}
    for name, parts in cos.items():
        c = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
        ok = c[~torch.isnan(c)]
        out[name] = {"mean_cosine": float(ok.mean()) if len(ok) else float("nan"),
                     "std_cosine": float(ok.std(unbiased=False)) if len(ok) else float("nan"),
                     "n": int(len(ok)), "undefined": int(len(c) - len(ok))}
    return out


def gradient_picture(teacher: nn.Module, students: Mapping[str, nn.Module], data, device,
                     num_images: int = 8, scale: int = 3, clip_std: float = 3.0,
                     row_notes: Mapping[str, str] | None = None):
    """The labelled grid (PIL image) of the first ``num_images`` examples of ``data``: row
    "image", row "teacher", one row per student (label: its name and ``row_notes[name]``);
    columns labelled with the class names."""
    sub = eval_subset(data, num_images)
    x, y = next(iter(eval_batches(sub, len(sub), device)))
    rows = [x / PIXEL_MAX, display_gradients(eval_input_gradient(teacher, x, y), clip_std)]
    labels = ["image", "teacher"]
    for name, student in students.items():
        rows.append(display_gradients(eval_input_gradient(student, x, y), clip_std))
        note = (row_notes or {}).get(name, "")
        labels.append(f"{name} {note}".strip())
    cols = [sub.class_names[int(k)][:12] for k in y.cpu()]
    cells = torch.cat([r.float().cpu() for r in rows])
    return figures.labelled_grid(cells, len(sub), labels, cols, scale=scale)


def _check(cfg: Mapping[str, Any]) -> None:
    """What the ranges (``schemas.VISUALIZE_SCHEMA.ranges``, checked by load_config) cannot
    say."""
    for key, ok, expected in (
            ("student_dir", len(cfg["student_dir"]) > 0, "at least one student folder"),
            ("out", bool(cfg["out"]), "a PNG path")):
        if not ok:
            section, _, leaf = key.rpartition(".")
            value = (cfg[section] if section else cfg)[leaf]
            raise ConfigError(f"config key '{key}': expected {expected}, got {value!r}")


def main(argv=None):
    cfg = load_config(schemas.VISUALIZE_SCHEMA, argv, prog="python -m igam.eval.visualize",
                      description=__doc__)
    _check(cfg)
    device = engine.setup(cfg)
    dirs = [cfg["teacher_dir"], *cfg["student_dir"]]
    models, test = engine.load_compared_models(dirs, cfg["data"], 0, device)
    (teacher_name, teacher), *rest = models.items()
    students = dict(rest)
    a, p = cfg["alignment"], cfg["picture"]
    align = gradient_alignment(teacher, students, eval_subset(test, a["num_examples"]),
                               a["batch_size"], device)
    notes = {name: f"(cos {r['mean_cosine']:.2f})" for name, r in align.items()}
    img = gradient_picture(teacher, students, test, device, p["num_images"], p["scale"],
                           p["clip_std"], notes)
    out = figures.save_png(img, cfg["out"])
    json_path = Path(cfg["alignment_out"]) if cfg["alignment_out"] else out.with_suffix(".json")
    for r, d in zip(align.values(), cfg["student_dir"]):
        r["model_dir"] = str(d)
    write_json(json_path, {"teacher": teacher_name, "teacher_dir": str(cfg["teacher_dir"]),
                           "dataset": test.name, "students": align, "picture": str(out),
                           "config": cfg})
    for name, r in align.items():
        print(f"{name}: mean cosine with {teacher_name}'s input gradients "
              f"{r['mean_cosine']:.4f} over {r['n']} examples of {test.name}")
    print(f"wrote {out} and {json_path}")


if __name__ == "__main__":
    run_main(main)
