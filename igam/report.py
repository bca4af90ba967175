"""Collect the run_attack.py results of several models into one table (used by the demos).

    python -m igam.report models/demo --rows teacher igam_student --attacks fgsm pgds20 \
        --out models/demo/results.json

Reads ``<dir>/<row>/eval_<attack>.json`` (written by run_attack.py) and prints
clean / per-attack accuracy in percent; writes ``{row: {"clean": %, "<attack>": %}}``.
Attack names ``pgds20`` are reported as ``pgd20`` (the original's names carry an 's').
With several folders (e.g. one per transfer pair, scripts/demo_real.sh) the same rows are
read from each: one table with rows ``<folder name>/<row>``, and the JSON is nested,
``{folder name: {row: {...}}}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from igam.cli import run_main
from igam.errors import IGAMError
from igam.files import write_json


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


def format_table(table: dict) -> str:
    cols = list(next(iter(table.values())).keys()) if table else []
    width = max([len(r) for r in table] + [5])
    lines = [f"{'model':<{width}}  " + "  ".join(f"{c:>7}" for c in cols)]
    for row, entry in table.items():
        lines.append(f"{row:<{width}}  " + "  ".join(f"{entry[c]:>6.2f}%" for c in cols))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m igam.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="run_dir")
    p.add_argument("--rows", nargs="+", required=True)
    p.add_argument("--attacks", nargs="+", default=["fgsm", "pgds20"])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if len(args.run_dirs) == 1:
        table = result = collect(args.run_dirs[0], args.rows, args.attacks)
    else:
        if len({d.name for d in args.run_dirs}) < len(args.run_dirs):
            raise IGAMError("the run folders given to igam.report must have distinct names")
        result = {d.name: collect(d, args.rows, args.attacks) for d in args.run_dirs}
        table = {f"{group}/{row}": entry for group, rows in result.items()
                 for row, entry in rows.items()}
    print(format_table(table))
    if args.out is not None:
        write_json(args.out, result)


if __name__ == "__main__":
    run_main(main)
