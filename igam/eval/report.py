"""Collect the run_attack.py results of several models into one table (used by the demos),
or list the evaluation records of run folders.

    python -m igam.eval.report models/demo --rows teacher igam_student --attacks fgsm pgds20 \
        --alignment models/demo/input_gradients.json --out models/demo/results.json

Reads ``<dir>/<row>/eval_<attack>.json`` (written by run_attack.py) and prints
clean / per-attack accuracy in percent; writes ``{row: {"clean": %, "<attack>": %}}``.
A result that is not a white-box evaluation of the folder's current checkpoint (a transfer
result, or one whose recorded checkpoint hash is not that of ``<row>/checkpoint.pt``) is
refused: the table shows only numbers of the models in the folders.
Attack names ``pgds20`` are reported as ``pgd20`` (the original's names carry an 's').
With several folders (e.g. one per transfer pair, scripts/demo_real.sh) the same rows are
read from each: one table with rows ``<folder name>/<row>``, and the JSON is nested,
``{folder name: {row: {...}}}`` (``--nest``: also for one folder).
``--alignment`` (JSONs of ``python -m igam.eval.visualize``, one per folder) adds the column
``alignment``: a student's mean cosine similarity with the teacher's input gradients, 1 for
the teacher's own row (trivially), null ("-") for the other rows.
``--chance`` adds to each folder's JSON an entry ``"chance"``: the accuracy (%) of the best
constant classifier on the test images of the first row's first attack (the most frequent
class's share, recorded by run_attack.py as ``chance_accuracy``), the floor every number of
that folder is read against.
``--describe`` adds to each folder's JSON an entry ``"columns"``: for each attack column, what
ran (e.g. ``autoattack standard linf eps 4``, with AutoAttack's attacks) and on how many test
images of which split, read from the first row's record - so a table that mixes attacks run on
different numbers of images says so.

    python -m igam.eval.report --records models/* [--out records.json]

lists every evaluation record (``eval_*.json`` of run_attack.py) of the run folders given
(other paths are skipped): model (folder, training step, checkpoint hash, ``stale`` if the
folder's checkpoint has changed since), result name, attack and its parameters, transfer
source, examples, clean and adversarial accuracy, from the records themselves.

    python -m igam.eval.report --summarize seed_0/results.json seed_1/results.json \
        --out summary.json

summarises repeated runs (seeds) of one table (``--transfer TEACHER STUDENT BASELINE`` adds
per table the share of the teacher's margin over the baseline the student recovers and its
clean cost, from each run's rows): every cell becomes its mean, population std,
min, max and values (printed as mean+-std); ``chance`` and ``columns`` entries equal in every
run stay as they are; tables nested by pair are summarised pair by pair over the files that
hold it (one file per pair and seed works as well as one per seed); the JSON is
``{"runs": [files], "summary": ...}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from igam.errors import IGAMError
from igam.eval.records import EVAL_RECORD, SHORT, describe_attack
from igam.run.cli import run_main
from igam.run.files import write_json
from igam.run.provenance import file_sha256
from igam.run.rundir import CHECKPOINT_NAME

if TYPE_CHECKING:
    from PIL import Image


def column(attack: str) -> str:
    return attack.replace("pgds", "pgd")


def current_checkpoint_sha256(run_dir: Path, cache: dict | None = None) -> str | None:
    """SHA-256 of ``run_dir/checkpoint.pt`` (None if there is none), memoised in ``cache``."""
    cache = {} if cache is None else cache
    key = str(Path(run_dir).resolve())
    if key not in cache:
        file = Path(run_dir) / CHECKPOINT_NAME
        cache[key] = file_sha256(file) if file.is_file() else None
    return cache[key]


def read_result(path: Path) -> dict:
    """An eval JSON of run_attack.py (one-line errors)."""
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        raise IGAMError(f"{path} is not valid JSON") from None
    if not isinstance(res, dict) or "adv_accuracy" not in res or "clean_accuracy" not in res:
        raise IGAMError(f"{path} is not a result of run_attack.py")
    return res


def collect(run_dir: Path, rows: list[str], attacks: list[str]) -> dict:
    table, hashes = {}, {}
    for row in rows:
        entry = {}
        for attack in attacks:
            path = run_dir / row / f"eval_{attack}.json"
            if not path.is_file():
                raise IGAMError(f"{path} not found: run run_attack.py for {row} / {attack} first")
            res = read_result(path)
            if res.get("record") == EVAL_RECORD:  # results of earlier versions have none
                if res.get("transfer"):
                    raise IGAMError(f"{path} is a transfer result, not the white-box evaluation "
                                    f"of {row}")
                now = current_checkpoint_sha256(run_dir / row, hashes)
                then = res["model"]["checkpoint_sha256"]
                if now is not None and then != now:
                    raise IGAMError(f"{path} evaluates another checkpoint of {row} (sha256 "
                                    f"{then[:SHORT]}; now {now[:SHORT]}): rerun pgd_attack.py and "
                                    "run_attack.py for it")
            entry.setdefault("clean", round(100 * res["clean_accuracy"], 2))
            entry[column(attack)] = round(100 * res["adv_accuracy"], 2)
        table[row] = entry
    return table


def chance(run_dir: Path, row: str, attack: str) -> float:
    """The ``chance_accuracy`` (%) run_attack.py recorded in ``<row>/eval_<attack>.json``."""
    path = run_dir / row / f"eval_{attack}.json"
    res = read_result(path)
    if "chance_accuracy" not in res:
        raise IGAMError(f"{path} has no chance_accuracy (written by run_attack.py since "
                        "#17): rerun run_attack.py for it")
    return round(100 * res["chance_accuracy"], 2)


def describe_columns(run_dir: Path, row: str, attacks: list[str]) -> dict:
    """``{column: {"attack", "attacks", "n", "split"}}`` of ``<row>/eval_<attack>.json``: the
    attack's one-line description, AutoAttack's attack list (else null), the number of test
    images and their split."""
    out = {}
    for attack in attacks:
        path = run_dir / row / f"eval_{attack}.json"
        res = read_result(path)
        a = res.get("attack")
        if res.get("record") != EVAL_RECORD or not isinstance(a, dict):
            raise IGAMError(f"{path} has no attack record (written by run_attack.py since "
                            "#16): rerun run_attack.py for it")
        out[column(attack)] = {"attack": describe_attack(a), "attacks": a.get("attacks"),
                               "n": res.get("n"), "split": res.get("dataset")}
    return out


def list_records(run_dirs: list[Path]) -> list[dict]:
    """One entry per result (``eval_*.json`` with an accuracy) of each run folder in
    ``run_dirs`` (paths that are not folders are skipped), from the records themselves;
    results of earlier versions (no record) are listed with ``record: false``."""
    out, hashes = [], {}
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            continue
        for path in sorted(run_dir.glob("eval_*.json")):
            try:
                res = read_result(path)
            except IGAMError:
                continue  # eval_clean.json of the training scripts, or not a result
            recorded = res.get("record") == EVAL_RECORD
            model, attack = res.get("model") or {}, res.get("attack") or {}
            sha = model.get("checkpoint_sha256")
            now = current_checkpoint_sha256(run_dir, hashes)
            source = res.get("source_model") or {}
            out.append({
                "run_dir": str(run_dir), "result": path.name, "record": recorded,
                "name": res.get("name", path.stem[len("eval_"):]),
                "step": model.get("step"), "checkpoint_sha256": sha,
                "stale": bool(recorded and now is not None and sha != now),
                "attack": attack if recorded else None,
                "attack_text": (describe_attack(attack) + ("" if res.get("attack_record")
                                                            else " (file had no record)"))
                if recorded else f"{res.get('norm', '?')} eps {res.get('eps', '?')} (no record)",
                "transfer": bool(res.get("transfer")),
                "source": source.get("path") or source.get("model_dir") if res.get("transfer")
                else None,
                "n": res.get("n"), "clean_accuracy": res["clean_accuracy"],
                "adv_accuracy": res["adv_accuracy"], "created": res.get("created")})
    return out


def format_records(entries: list[dict]) -> str:
    """The table of :func:`list_records`."""
    head = ["model", "step", "checkpoint", "result", "attack", "transfer from", "n", "clean",
            "adversarial"]
    rows = []
    for e in entries:
        sha = (e["checkpoint_sha256"] or "-")[:SHORT] + (" stale" if e["stale"] else "")
        transfer = (e["source"] or "unknown") if e["transfer"] else "-"
        rows.append([e["run_dir"], "-" if e["step"] is None else str(e["step"]), sha,
                     e["name"], e["attack_text"], transfer, str(e["n"]),
                     f"{100 * e['clean_accuracy']:.2f}%", f"{100 * e['adv_accuracy']:.2f}%"])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [head] + rows)


def read_alignment(path: Path) -> dict:
    """The JSON of ``python -m igam.eval.visualize`` at ``path`` (one-line errors)."""
    if not path.is_file():
        raise IGAMError(f"{path} not found: run python -m igam.eval.visualize first")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise IGAMError(f"{path} is not valid JSON") from None


def add_alignment(table: dict, alignment: dict, path: Path) -> dict:
    """Add the ``alignment`` column of an igam.eval.visualize JSON to each row of ``table``."""
    try:
        students = {name: r["mean_cosine"] for name, r in alignment["students"].items()}
        teacher = alignment["teacher"]
    except (KeyError, TypeError, AttributeError):
        raise IGAMError(f"{path} is not an alignment JSON of "
                        "python -m igam.eval.visualize") from None
    for row, entry in table.items():
        value = 1.0 if row == teacher else students.get(row)
        entry["alignment"] = None if value is None else round(float(value), 4)
    return table


KEPT = ("chance", "columns")  # entries of a folder that describe it rather than measure a model
NOT_ROWS = (*KEPT, "transfer")  # a folder's entries that are not a model's row


def summarize(runs: list[dict]) -> dict:
    """Mean and spread over repeated runs (e.g. seeds) of the same table: every number of the
    tables (nested alike) becomes ``{"mean", "std" (population), "min", "max", "values"}``;
    ``None`` values (e.g. the alignment of a row without one) stay None, and ``chance`` /
    ``columns`` entries equal in every run (the same test images and attacks) stay as they
    are."""
    first = runs[0]
    if isinstance(first, dict):
        if any(not isinstance(r, dict) or list(r) != list(first) for r in runs):
            raise IGAMError("the results to summarise do not have the same rows and columns")
        return {k: (first[k] if k in KEPT and all(r[k] == first[k] for r in runs)
                    else summarize([r[k] for r in runs])) for k in first}
    if any(v is None for v in runs):
        return None
    values = [float(v) for v in runs]
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return {"mean": round(mean, 4), "std": round(std, 4), "min": min(values),
            "max": max(values), "values": values}


def _is_nested(result: dict) -> bool:
    """Whether a results JSON is nested by folder (pair): ``{pair: {row: {column: ...}}}``."""
    return all(isinstance(v, dict) and any(isinstance(e, dict) and "clean" in e
                                           for e in v.values()) for v in result.values())


def transfer(table: dict, teacher: str, student: str, baseline: str) -> dict:
    """How much of the teacher's robustness the student got, from one table's rows:
    ``margin_recovered`` per attack column, (student - baseline) / (teacher - baseline) (None
    where the teacher is not above the baseline), and ``clean_cost``, the baseline's clean
    accuracy minus the student's (points)."""
    try:
        t, s, b = table[teacher], table[student], table[baseline]
    except KeyError as e:
        raise IGAMError(f"--transfer: the table has no row {e}") from None
    ratios = {}
    for c in t:
        if c in ("clean", "alignment") or not all(isinstance(r.get(c), (int, float))
                                                    for r in (t, s, b)):
            continue
        margin = t[c] - b[c]
        ratios[c] = round((s[c] - b[c]) / margin, 4) if margin > 0 else None
    return {"margin_recovered": ratios, "clean_cost": round(b["clean"] - s["clean"], 2)}


def summarize_pairs(runs: list[dict], rows: list[str] | None = None) -> dict:
    """:func:`summarize` of results JSONs; nested ones (``{pair: ...}``) are summarised pair
    by pair over the runs that hold that pair, so that the pairs of one seed may come from
    separate runs (e.g. ``DEMO_REAL_PAIRS=<pair>`` per job). ``rows`` (teacher, student,
    baseline) adds to each table, before summarising, the entry ``transfer``
    (:func:`transfer`), so its mean and spread are over the runs' own ratios."""
    nested = all(isinstance(r, dict) and r and _is_nested(r) for r in runs)
    if rows:
        runs = [{p: dict(t, transfer=transfer(t, *rows)) for p, t in r.items()} if nested
                else dict(r, transfer=transfer(r, *rows)) for r in runs]
    if not nested:
        return summarize(runs)
    pairs = list(dict.fromkeys(p for r in runs for p in r))
    return {p: summarize([r[p] for r in runs if p in r]) for p in pairs}


def _cell(column: str, value) -> str:
    if value is None:
        return f"{'-':>7}"
    if isinstance(value, dict):  # a summary: mean +- std
        return (f"{value['mean']:.3f}+-{value['std']:.3f}" if column == "alignment"
                else f"{value['mean']:.2f}+-{value['std']:.2f}")
    return f"{value:>7.3f}" if column == "alignment" else f"{value:>6.2f}%"


def format_table(table: dict) -> str:
    cols = list(next(iter(table.values())).keys()) if table else []
    width = max([len(r) for r in table] + [5])
    widths = [max([len(c), 7] + [len(_cell(c, e[c])) for e in table.values()]) for c in cols]
    lines = [f"{'model':<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cols, widths))]
    for row, entry in table.items():
        lines.append(f"{row:<{width}}  " + "  ".join(
            f"{_cell(c, entry[c]):>{w}}" for c, w in zip(cols, widths)))
    return "\n".join(lines)


def format_result(result: dict) -> str:
    """The printed table of a results or summary JSON: a nested one (``{folder: {row: ...}}``)
    gets rows ``<folder>/<row>``; ``chance`` entries become one line below the table, and
    ``transfer`` entries one line each."""
    groups = result.items() if _is_nested(result) else [("", result)]
    rows, chances, transfers = {}, [], []
    for g, group in groups:
        for r, e in group.items():
            if r == "columns":
                continue
            if r == "chance":
                chances.append(f"{g or 'all'} {_mean(e):.2f}%")
            elif r == "transfer":
                transfers.append(f"{g or 'table'}: margin recovered " + ", ".join(
                    f"{c} {_number(v)}" for c, v in e["margin_recovered"].items())
                    + f"; clean cost {_number(e['clean_cost'])} points")
            else:
                rows[f"{g}/{r}" if g else r] = e
    text = format_table(rows)
    if chances:
        text += "\nchance (best constant classifier): " + ", ".join(chances)
    if transfers:
        text += "\n(student - baseline) / (teacher - baseline):\n" + "\n".join(transfers)
    return text


def _mean(value) -> float | None:
    """A cell's number: itself, or a summary cell's mean (None stays None)."""
    if value is None:
        return None
    return float(value["mean"] if isinstance(value, dict) else value)


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return f"{value['mean']:.2f}+-{value['std']:.2f}"
    return f"{value:.2f}"


def eps_curves(result: dict) -> Image.Image:
    """Accuracy (%) against PGD-20's eps for every row of a results or summary JSON (a
    summary's means, with a whisker from its lowest to its highest run when it has several),
    one chart per folder (pair) side by side; eps 0 is the clean accuracy, the ``chance`` entry
    a flat line. Columns ``pgd20_eps<E>`` give the eps values."""
    from PIL import Image

    from igam.eval import figures
    if "summary" in result:
        result = result["summary"]
    groups = result if _is_nested(result) else {"": result}
    charts = []
    for name, group in groups.items():
        rows = {r: e for r, e in group.items() if r not in NOT_ROWS}
        eps = sorted({float(c[len("pgd20_eps"):]) for e in rows.values() for c in e
                      if c.startswith("pgd20_eps")})
        if not eps:
            raise IGAMError(f"{name or 'the table'} has no pgd20_eps<E> columns to draw")
        cells = {r: [e.get("clean")] + [e.get(f"pgd20_eps{x:g}") for x in eps]
                 for r, e in rows.items()}
        series = {r: [_mean(c) for c in cs] for r, cs in cells.items()}
        ranges = {r: [(c["min"], c["max"]) if isinstance(c, dict) else None for c in cs]
                  for r, cs in cells.items()}
        runs = max((len(c["values"]) for cs in cells.values() for c in cs
                    if isinstance(c, dict)), default=0)
        if "chance" in group:
            series["chance"] = [_mean(group["chance"])] * (len(eps) + 1)
        note = {0: "", 1: " (1 run)"}.get(runs, f" (mean of {runs} runs, bars: lowest to highest)")
        charts.append(figures.line_chart(
            ["0"] + [f"{x:g}" for x in eps], series, title=f"{name} PGD-20 accuracy vs eps" + note,
            x_title="eps (L-inf, /255; 0 = clean)", ranges=ranges))
    img = Image.new("RGB", (sum(c.width for c in charts), max(c.height for c in charts)),
                    (255, 255, 255))
    x = 0
    for c in charts:
        img.paste(c, (x, 0))
        x += c.width
    return img


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m igam.eval.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", type=Path, nargs="*", metavar="run_dir")
    p.add_argument("--summarize", type=Path, nargs="+", default=None, metavar="RESULTS_JSON",
                   help="instead of run folders: results.json files of repeated runs (e.g. "
                        "seeds); writes their mean and spread")
    p.add_argument("--transfer", nargs=3, default=None,
                   metavar=("TEACHER", "STUDENT", "BASELINE"),
                   help="with --summarize: add per table the entry 'transfer', the share of the "
                        "teacher's margin over the baseline that the student recovers per "
                        "attack column and the student's clean cost, from each run's rows")
    p.add_argument("--rows", nargs="+", default=None)
    p.add_argument("--attacks", nargs="+", default=["fgsm", "pgds20"])
    p.add_argument("--alignment", type=Path, nargs="+", default=None,
                   help="JSONs of python -m igam.eval.visualize (one per run folder): adds the "
                        "alignment column")
    p.add_argument("--chance", action="store_true",
                   help="add each folder's chance level (%%, best constant classifier) as the "
                        "entry 'chance' of its JSON")
    p.add_argument("--describe", action="store_true",
                   help="add each folder's entry 'columns': per attack column, the attack and "
                        "the number of test images it ran on")
    p.add_argument("--nest", action="store_true",
                   help="nest the JSON by folder name ({folder: {row: ...}}) also for one folder")
    p.add_argument("--records", type=Path, nargs="+", default=None, metavar="RUN_DIR",
                   help="instead of the table: list the evaluation records of these run "
                        "folders (e.g. models/*)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--eps_curves", type=Path, default=None, metavar="RESULTS_JSON",
                   help="instead: draw accuracy against PGD-20's eps per row of this results "
                        "or summary JSON (one chart per pair) into the PNG --out")
    p.add_argument("--curves", type=Path, nargs="+", default=None, metavar="RUN_DIR",
                   help="instead: draw the training curves of these runs into the PNG --out "
                        "(igam.eval.curves)")
    args = p.parse_args(argv)
    if args.curves:
        from igam.eval.curves import write_curves
        if args.out is None:
            raise IGAMError("--curves needs --out FILE.png")
        print(f"curves written to {write_curves(args.curves, args.out)}")
        return
    if args.eps_curves:
        from igam.eval.figures import save_png
        if args.out is None:
            raise IGAMError("--eps_curves needs --out FILE.png")
        if not args.eps_curves.is_file():
            raise IGAMError(f"{args.eps_curves} not found: run the experiment for it first")
        print(f"eps curves written to "
              f"{save_png(eps_curves(json.loads(args.eps_curves.read_text())), args.out)}")
        return
    if args.records:
        entries = list_records(args.records)
        if not entries:
            raise IGAMError("no evaluation records (eval_*.json of run_attack.py) in "
                            + " ".join(str(d) for d in args.records))
        print(format_records(entries))
        if args.out is not None:
            write_json(args.out, entries)
        return
    if args.summarize:
        runs = []
        for path in args.summarize:
            if not path.is_file():
                raise IGAMError(f"{path} not found: run the experiment for it first")
            runs.append(json.loads(path.read_text()))
        result = summarize_pairs(runs, args.transfer)
        print(f"mean +- std over {len(runs)} runs")
        print(format_result(result))
        if args.out is not None:
            write_json(args.out, {"runs": [str(p) for p in args.summarize], "summary": result})
        return
    if not args.run_dirs or not args.rows:
        raise IGAMError("igam.eval.report needs run folders and --rows (or --summarize FILES, "
                        "or --records RUN_DIRS)")
    if args.alignment and len(args.alignment) != len(args.run_dirs):
        raise IGAMError(f"--alignment needs one JSON per run folder ({len(args.run_dirs)}), "
                        f"got {len(args.alignment)}")
    groups = {}
    for i, run_dir in enumerate(args.run_dirs):
        rows = collect(run_dir, args.rows, args.attacks)
        if args.alignment:
            add_alignment(rows, read_alignment(args.alignment[i]), args.alignment[i])
        if args.chance:
            rows["chance"] = chance(run_dir, args.rows[0], args.attacks[0])
        if args.describe:
            rows["columns"] = describe_columns(run_dir, args.rows[0], args.attacks)
        groups[run_dir.name] = rows
    if len(args.run_dirs) == 1 and not args.nest:
        result = groups[args.run_dirs[0].name]
    else:
        if len(groups) < len(args.run_dirs):
            raise IGAMError("the run folders given to igam.eval.report must have distinct names")
        result = groups
    print(format_result(result))
    if args.out is not None:
        write_json(args.out, result)


if __name__ == "__main__":
    run_main(main)
