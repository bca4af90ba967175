"""Collect the run_attack.py results of several models into one table (used by the demo).

    python -m igam.report models/demo --rows teacher igam_student --attacks fgsm pgds20 \
        --alignment models/demo/input_gradients.json --out models/demo/results.json

Reads ``<dir>/<row>/eval_<attack>.json`` (written by run_attack.py) and prints
clean / per-attack accuracy in percent; writes ``{row: {"clean": %, "<attack>": %}}``.
Attack names ``pgds20`` are reported as ``pgd20`` (the original's names carry an 's').
``--alignment`` (a JSON of ``python -m igam.visualize``) adds the column ``alignment``: a
student's mean cosine similarity with the teacher's input gradients, 1 for the teacher's own
row (trivially), null ("-") for the other rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from igam.errors import IGAMError
from igam.runtime import run_main, write_json


def column(attack: str) -> str:
    return attack.replace("pgds", "pgd")


def collect(run_dir: Path, rows: list[str], attacks: list[str]) -> dict:
    table = {}
    for row in rows:
        entry = {}
        for attack in attacks:
            path = run_dir / row / f"eval_{attack}.json"
            if not path.is_file():
                raise IGAMError(f"{path} not found: run run_attack.py for {row} / {attack} first")
            res = json.loads(path.read_text())
            entry.setdefault("clean", round(100 * res["clean_accuracy"], 2))
            entry[column(attack)] = round(100 * res["adv_accuracy"], 2)
        table[row] = entry
    return table


def add_alignment(table: dict, alignment: dict, path: Path) -> dict:
    """Add the ``alignment`` column of an igam.visualize JSON to each row of ``table``."""
    try:
        students = {name: r["mean_cosine"] for name, r in alignment["students"].items()}
        teacher = alignment["teacher"]
    except (KeyError, TypeError, AttributeError):
        raise IGAMError(f"{path} is not an alignment JSON of python -m igam.visualize") from None
    for row, entry in table.items():
        value = 1.0 if row == teacher else students.get(row)
        entry["alignment"] = None if value is None else round(float(value), 4)
    return table


def _cell(column: str, value) -> str:
    if value is None:
        return f"{'-':>7}"
    return f"{value:>7.3f}" if column == "alignment" else f"{value:>6.2f}%"


def format_table(table: dict) -> str:
    cols = list(next(iter(table.values())).keys()) if table else []
    width = max([len(r) for r in table] + [5])
    widths = [max(7, len(c)) for c in cols]
    lines = [f"{'model':<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cols, widths))]
    for row, entry in table.items():
        lines.append(f"{row:<{width}}  " + "  ".join(
            f"{_cell(c, entry[c]):>{w}}" for c, w in zip(cols, widths)))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m igam.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--rows", nargs="+", required=True)
    p.add_argument("--attacks", nargs="+", default=["fgsm", "pgds20"])
    p.add_argument("--alignment", type=Path, default=None,
                   help="JSON of python -m igam.visualize: adds the alignment column")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    table = collect(args.run_dir, args.rows, args.attacks)
    if args.alignment is not None:
        if not args.alignment.is_file():
            raise IGAMError(f"{args.alignment} not found: run python -m igam.visualize first")
        try:
            alignment = json.loads(args.alignment.read_text())
        except ValueError:
            raise IGAMError(f"{args.alignment} is not valid JSON") from None
        add_alignment(table, alignment, args.alignment)
    print(format_table(table))
    if args.out is not None:
        write_json(args.out, table)


if __name__ == "__main__":
    run_main(main)
