"""Provenance records: what made each adversarial-example file and each evaluation result, and
the checks run_attack.py makes with them (docs/evaluation.md "Records").

* Attack record: ``<file>.json`` beside each ``<file>.npy`` of pgd_attack.py
  (:func:`record_path`). ``record`` = :data:`ATTACK_RECORD`; ``file`` (name, sha256, shape of
  the .npy); ``model`` (:func:`model_info`: run folder, checkpoint file and its sha256, step,
  kind); ``data`` (:func:`data_info`: dataset, split, root, class subset, example count);
  ``attack`` (:func:`attack_params`: name and every parameter of the attack); ``precision``,
  ``seconds``, ``code`` (package version, git commit), ``environment`` (torch, python,
  device), ``created`` (UTC); AutoAttack adds its report (``autoattack``).
* Evaluation result: ``eval_<tag>.json`` in the model's run folder (:func:`result_tag`: the
  attack's name, plus ``_from_<source run>`` for a transfer evaluation), written by
  run_attack.py: the summary keys of earlier versions (``model_dir``, ``attack_file``,
  ``dataset``, ``n``, ``eps``, ``norm``, ``bn_mode``, ``adv_accuracy``, ``clean_accuracy``),
  ``record`` = :data:`EVAL_RECORD`, the same ``model`` / ``data`` / ``attack`` / ``code`` /
  ``environment`` / ``created`` sections, ``transfer`` and ``source_model`` (the attack
  record's ``model``), the attack file's hash and record, and the prediction files.
* Clean predictions: ``pred_clean_<checkpoint sha256[:8]>.npy`` (:func:`clean_predictions_name`)
  with a ``.json`` beside it: the clean test set of that checkpoint, written once and replaced
  only by one covering more examples.

Checks (:func:`check_attack_record`, each a one-line AttackFileError): the .npy is the file
its record describes (sha256); it was made from this model's checkpoint (sha256), unless a
transfer evaluation is asked for (``transfer: true``); on the same data (dataset, classes,
count); with the config's attack parameters (every key of :func:`attack_params` but the name).
A file without a record (the original TF code's) is evaluated as the config describes, with a
one-line warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from igam.data import canonical_dataset_name
from igam.errors import AttackFileError
from igam.eval import autoattack
from igam.eval.advfiles import AttackTarget, run_name
from igam.run.files import atomic_write, write_json
from igam.run.provenance import code_version, environment, now

ATTACK_RECORD = "igam-pytorch/attack-record/1"
EVAL_RECORD = "igam-pytorch/eval-record/1"
CLEAN_RECORD = "igam-pytorch/clean-predictions/1"

PGD_KEYS = ("steps", "step_size", "restarts", "loss", "random_start", "early_stop")
AUTOATTACK_KEYS = ("version", "attacks", "n_iter", "n_queries")
# the config key a recorded attack parameter comes from (for messages)
CONFIG_KEYS = {"seed": "seed", "bn_mode": "eval.bn_mode", "name": "attack_name"}
SHORT = 12  # hex digits of a sha256 shown in messages


def warn(message: str) -> None:
    """One line ``warning: ...`` on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def record_path(npy_path: str | os.PathLike) -> Path:
    """The record beside an adversarial-example file: ``x_attack.npy`` -> ``x_attack.json``."""
    return Path(npy_path).with_suffix(".json")


def attack_params(cfg: Mapping[str, Any], norm: str) -> dict[str, Any]:
    """The name and every parameter of the attack ``cfg`` describes, as recorded and checked:
    ``name``, ``method``, ``norm`` ('linf' / 'l2'), ``eps``, ``seed``, ``bn_mode`` (the model's
    mode during the attack); PGD, FGSM and L2 PGD add ``steps``, ``step_size``, ``restarts``,
    ``loss``, ``random_start`` and ``early_stop`` (as run: off under bn_mode train);
    AutoAttack adds ``version``, ``attacks`` (the sub-attacks run, in order), ``n_iter`` and
    ``n_queries`` (0 = the version's)."""
    a = cfg["attack"]
    bn_mode = cfg["eval"]["bn_mode"]
    out = {"name": cfg["attack_name"], "method": a["method"], "norm": norm,
           "eps": float(a["eps"]), "seed": int(cfg["seed"]), "bn_mode": bn_mode}
    if a["method"] == "autoattack":
        s = autoattack.settings_from_config(a, int(cfg["seed"]), int(cfg["eval"]["batch_size"]))
        out.update(version=s.version, attacks=list(s.attacks), n_iter=int(s.n_iter),
                   n_queries=int(s.n_queries))
    else:
        out.update(steps=int(a["steps"]), step_size=float(a["step_size"]),
                   restarts=int(a["restarts"]), loss=a["loss"],
                   random_start=bool(a["random_start"]),
                   early_stop=bool(a["early_stop"]) and bn_mode != "train")
    return out


def describe_attack(a: Mapping[str, Any]) -> str:
    """One line, e.g. ``pgd linf eps 8, 20 steps of 2`` or ``autoattack standard Linf eps 8``."""
    if a.get("method") == "autoattack":
        text = f"autoattack {a.get('version')} {a.get('norm')} eps {a.get('eps'):g}"
        if a.get("n_iter") or a.get("n_queries"):
            text += f" (reduced: n_iter {a.get('n_iter')}, n_queries {a.get('n_queries')})"
        return text
    text = f"{a.get('method')} {a.get('norm')} eps {a.get('eps'):g}"
    if a.get("method") != "fgsm":
        text += f", {a.get('steps')} steps of {a.get('step_size'):g}"
    if (a.get("restarts") or 1) > 1:
        text += f", {a.get('restarts')} restarts"
    if a.get("loss", "xent") != "xent":
        text += f", {a.get('loss')} loss"
    return text


def model_info(target: AttackTarget, model_dir: str | os.PathLike) -> dict[str, Any]:
    """``run`` (:func:`igam.eval.advfiles.run_name`), ``model_dir`` (as given), ``path``
    (absolute), ``checkpoint`` (absolute file), ``checkpoint_sha256``, ``step``, ``kind``."""
    return {"run": run_name(model_dir), "model_dir": str(model_dir),
            "path": str(Path(model_dir).resolve()),
            "checkpoint": str(Path(target.checkpoint).resolve()),
            "checkpoint_sha256": target.sha256, "step": target.ckpt.get("step"),
            "kind": target.ckpt.get("kind")}


def data_info(target: AttackTarget) -> dict[str, Any]:
    """``dataset``, ``split`` (e.g. 'cifar10/test[classes 5-9]'), ``root`` (absolute),
    ``classes`` (original class indices, [] = every class), ``n`` (examples)."""
    d = target.data
    return {"dataset": canonical_dataset_name(d["dataset"]), "split": target.test.name,
            "root": str(Path(d["root"]).resolve()), "classes": list(d.get("classes") or []),
            "n": len(target.test)}


def _describe_model(m: Mapping[str, Any]) -> str:
    sha = str(m.get("checkpoint_sha256") or "?")[:SHORT]
    return f"{m.get('path') or m.get('model_dir')} (step {m.get('step')}, checkpoint sha256 {sha})"


def attack_record(target: AttackTarget, cfg: Mapping[str, Any], device, file_sha256: str,
                  seconds: float, **extra: Any) -> dict[str, Any]:
    """The record pgd_attack.py writes beside ``target.path`` (the .npy already written,
    ``file_sha256`` its hash); ``extra``: e.g. ``autoattack=report``."""
    x_shape = [len(target.test), *target.test.images.shape[1:]]
    return {"record": ATTACK_RECORD,
            "file": {"name": target.path.name, "sha256": file_sha256, "shape": x_shape,
                     "dtype": "float32", "layout": "NHWC", "range": [0, 255]},
            "model": model_info(target, cfg["model_dir"]), "data": data_info(target),
            "attack": attack_params(cfg, target.norm), "precision": dict(cfg["precision"]),
            "seconds": seconds, **extra, "code": code_version(),
            "environment": environment(device), "created": now()}


def read_attack_record(npy_path: str | os.PathLike) -> dict[str, Any] | None:
    """The record beside ``npy_path``, or None (with a one-line warning on stderr) if there is
    none: a file of the original TF code, or one whose JSON predates records. A record that is
    not readable JSON is an AttackFileError."""
    rec = record_path(npy_path)
    if not rec.is_file():
        warn(f"{npy_path} has no record beside it ({rec.name} missing: a file of the original "
             "TF code?); which model and attack made it cannot be checked, so it is evaluated "
             "as the config describes")
        return None
    try:
        record = json.loads(rec.read_text())
    except (OSError, ValueError) as exc:
        raise AttackFileError(f"the record {rec} of {npy_path} is not readable JSON ({exc}); "
                              "regenerate the file with pgd_attack.py") from None
    if not isinstance(record, dict) or record.get("record") != ATTACK_RECORD:
        warn(f"{rec} is not a provenance record (written before records were kept); which "
             f"model and attack made {npy_path} cannot be checked, so it is evaluated as the "
             "config describes")
        return None
    return record


def _config_key(key: str) -> str:
    return CONFIG_KEYS.get(key, f"attack.{key}")


def _differences(recorded: Mapping[str, Any], expected: Mapping[str, Any],
                 where=("in the file", "in the config"), skip=("name",)) -> list[str]:
    """``'<config key> is <recorded> <where[0]>, <expected> <where[1]>'`` for every key whose
    values differ (keys of either side, ``skip`` left out)."""
    keys = [k for k in expected if k not in skip] + [k for k in recorded
                                                      if k not in expected and k not in skip]
    return [f"{_config_key(k)} is {recorded.get(k)!r} {where[0]}, {expected.get(k)!r} "
            f"{where[1]}" for k in keys if recorded.get(k) != expected.get(k)]


def check_attack_record(record: Mapping[str, Any], target: AttackTarget,
                        cfg: Mapping[str, Any], file_sha256: str, transfer: bool) -> bool:
    """Check an attack record against the evaluation asked for; returns whether it is a
    transfer evaluation (the file made from another checkpoint and ``transfer`` asked for).

    Raises AttackFileError (one line) if the .npy is not the file its record describes, if it
    was made from another checkpoint and ``transfer`` is false (naming both models), on other
    data, or with attack parameters other than the config's (naming each key with the file's
    and the config's value)."""
    path, rec = target.path, record_path(target.path)
    try:
        recorded_sha = record["file"]["sha256"]
        source = record["model"]
        src_sha = source["checkpoint_sha256"]
        rdata, rattack = record["data"], record["attack"]
    except (KeyError, TypeError):
        raise AttackFileError(f"the record {rec} of {path} lacks its file, model, data or "
                              "attack section; regenerate the file with pgd_attack.py") from None
    if recorded_sha != file_sha256:
        raise AttackFileError(f"{path} is not the file its record {rec.name} describes (sha256 "
                              f"{file_sha256[:SHORT]}, recorded {str(recorded_sha)[:SHORT]}): "
                              "changed after pgd_attack.py wrote it; regenerate it")
    is_transfer = src_sha != target.sha256
    if is_transfer and not transfer:
        this = model_info(target, cfg["model_dir"])
        if source.get("path") == this["path"]:
            what = (f"another checkpoint of {_describe_model(source)}, not of its current "
                    f"checkpoint (step {this['step']}, sha256 {target.sha256[:SHORT]}); "
                    "regenerate them with pgd_attack.py, or")
        else:
            what = (f"another model, {_describe_model(source)}, not of "
                    f"{_describe_model(this)};")
        raise AttackFileError(f"{path} holds adversarial examples of {what} set transfer: true "
                              "(--transfer true) to evaluate them as a transfer (black-box) "
                              "attack")
    if transfer and not is_transfer:
        warn(f"transfer is set, but {path} was made from this very checkpoint: evaluated and "
             "recorded as a white-box attack (transfer: false)")
    this_data = data_info(target)
    problems = []
    if canonical_dataset_name(str(rdata.get("dataset"))) != this_data["dataset"]:
        problems.append(f"data.dataset is {rdata.get('dataset')!r} in the file, "
                        f"{this_data['dataset']!r} in the config")
    if list(rdata.get("classes") or []) != this_data["classes"]:
        problems.append(f"data.classes is {rdata.get('classes')!r} in the file, "
                        f"{this_data['classes']!r} in the config")
    if rdata.get("n") != this_data["n"]:
        problems.append(f"eval.num_examples gives {rdata.get('n')} examples in the file, "
                        f"{this_data['n']} in the config")
    problems += _differences(rattack, attack_params(cfg, target.norm))
    if problems:
        raise AttackFileError(f"{path} was made with other settings than the config's: "
                              + "; ".join(problems) + " (evaluate it with the settings it was "
                              "made with, or regenerate it)")
    return is_transfer


def result_tag(attack_name: str, transfer: bool, record: Mapping[str, Any] | None) -> str:
    """The name of an evaluation's files in the run folder (``eval_<tag>.json``,
    ``pred_<tag>.npy``): the attack's name; a transfer evaluation adds ``_from_<source run>``
    (``_transfer`` when the source is unknown: a file without a record)."""
    tag = attack_name or "attack"
    if transfer:
        tag += f"_from_{record['model']['run']}" if record else "_transfer"
    return tag


def check_result_slot(result_path: Path, attack: Mapping[str, Any],
                      source_sha256: str | None, attack_file: Path) -> None:
    """AttackFileError if ``result_path`` holds the result of another attack under the same
    name (another file, other parameters or another source model): never overwritten. The
    result of the same file (e.g. regenerated) is replaced."""
    if not result_path.is_file():
        return
    try:
        old = json.loads(result_path.read_text())
    except (OSError, ValueError):
        return  # not a record: replaced
    if not isinstance(old, dict) or old.get("record") != EVAL_RECORD:
        return
    same_file = old.get("attack_file_path") == str(Path(attack_file).resolve())
    old_source = (old.get("source_model") or old.get("model") or {}).get("checkpoint_sha256")
    differences = _differences(old.get("attack") or {}, attack, ("there", "here"))
    if same_file or (not differences and old_source == source_sha256):
        return
    what = "; ".join(differences) if differences else "made from another model"
    raise AttackFileError(f"{result_path} holds the result of another attack named "
                          f"{attack.get('name') or 'attack'} (file {old.get('attack_file')}: "
                          f"{what}); give this attack its own attack_name when generating it, "
                          "or remove that result")


def chance_accuracy(labels) -> float:
    """Accuracy of the best constant classifier on ``labels`` (int class indices): the
    frequency of the most common class, the floor any accuracy should be read against."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel())
    return float(counts.max() / counts.sum()) if counts.size else 0.0


def eval_result(*, target: AttackTarget, cfg: Mapping[str, Any], device, tag: str,
                record: Mapping[str, Any] | None, transfer: bool, file_sha256: str,
                adv: Mapping[str, Any], clean: Mapping[str, Any],
                clean_predictions: str) -> dict[str, Any]:
    """run_attack.py's result (module docstring)."""
    attack = dict(record["attack"]) if record else attack_params(cfg, target.norm)
    return {
        "record": EVAL_RECORD, "name": tag,
        "model_dir": str(cfg["model_dir"]), "attack_file": str(target.path),
        "dataset": target.test.name, "n": adv["n"], "eps": attack["eps"], "norm": target.norm,
        "bn_mode": cfg["eval"]["bn_mode"],
        "adv_accuracy": adv["accuracy"], "adv_correct": adv["correct"],
        "clean_accuracy": clean["accuracy"], "clean_correct": clean["correct"],
        "chance_accuracy": chance_accuracy(target.test.labels[:adv["n"]]),
        "transfer": transfer,
        "source_model": (record["model"] if record else None) if transfer else None,
        "model": model_info(target, cfg["model_dir"]), "data": data_info(target),
        "attack": attack,
        "attack_file_path": str(target.path.resolve()), "attack_file_sha256": file_sha256,
        "attack_record": str(record_path(target.path).resolve()) if record else None,
        "attack_created": record.get("created") if record else None,
        "predictions": {"adversarial": f"pred_{tag}.npy", "clean": clean_predictions},
        "eval": {"batch_size": cfg["eval"]["batch_size"], "precision": dict(cfg["precision"])},
        "code": code_version(), "environment": environment(device), "created": now(),
    }


def clean_predictions_name(target: AttackTarget, cfg: Mapping[str, Any],
                           default_precision: bool) -> tuple[str, dict[str, Any]]:
    """(file name, key) of the clean predictions of this checkpoint: ``pred_clean_<sha8>.npy``
    for its own test set (the dataset, root and classes it was trained on) in eval mode at
    full precision; any other evaluation (another dataset or subset, bn_mode train, bf16)
    adds ``_<hash of the key>`` to the name. ``key`` says which evaluation it is."""
    data = data_info(target)
    key = {"split": data["split"], "root": data["root"], "classes": data["classes"],
           "bn_mode": cfg["eval"]["bn_mode"]}
    if cfg["eval"]["bn_mode"] == "train":  # batch statistics: the batches matter
        key["batch_size"] = cfg["eval"]["batch_size"]
    if not default_precision:
        key["precision"] = dict(cfg["precision"])
    saved = dict((target.ckpt.get("config") or {}).get("data") or {})  # what it trained on
    root = str(saved.get("root") or "")
    same_root = bool(root) and (os.path.normpath(root) == os.path.normpath(target.data["root"])
                                or str(Path(root).resolve()) == data["root"])
    own = (saved.get("dataset") == target.data["dataset"] and same_root
           and list(saved.get("classes") or []) == data["classes"])
    name = f"pred_clean_{target.sha256[:8]}"
    if not (own and cfg["eval"]["bn_mode"] == "eval" and default_precision):
        name += "_" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:6]
    return name + ".npy", key


def save_clean_predictions(out_dir: Path, name: str, key: Mapping[str, Any],
                           predictions: np.ndarray, target: AttackTarget,
                           cfg: Mapping[str, Any], accuracy: float) -> bool:
    """Write the clean predictions ``out_dir/name`` and their ``.json`` unless a file there
    already covers at least as many examples (the first n are the same examples); returns
    whether it wrote. A stored file that disagrees on the shared examples is kept and warned
    about."""
    path = out_dir / name
    info = path.with_suffix(".json")
    if path.is_file() and info.is_file():
        try:
            old = np.load(path, allow_pickle=False)
            old_info = json.loads(info.read_text())
        except (OSError, ValueError):
            old, old_info = None, None
        if old is not None and isinstance(old_info, dict) and old_info.get("key") == key \
                and len(old) >= len(predictions):
            if not np.array_equal(old[:len(predictions)], predictions):
                warn(f"the clean predictions in {path} differ from this evaluation's on the "
                     "same examples; kept the stored ones")
            return False
    with atomic_write(path, "wb", encoding=None) as fh:
        np.save(fh, np.asarray(predictions))
    write_json(info, {"record": CLEAN_RECORD, "file": name, "key": dict(key),
                      "n": int(len(predictions)), "accuracy": accuracy,
                      "model": model_info(target, cfg["model_dir"]), "data": data_info(target),
                      "eval": {"batch_size": cfg["eval"]["batch_size"],
                               "bn_mode": cfg["eval"]["bn_mode"],
                               "precision": dict(cfg["precision"])},
                      "code": code_version(), "created": now()})
    return True
