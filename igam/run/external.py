"""Teachers and students that are not the port's own WideResNets (docs/byo_teacher.md): the
config's ``teacher`` / ``student`` section names them, this module checks the names at start
and builds the modules with their weights.

A teacher (``teacher.model``) is one of

* ``""`` - a run folder of this port (``source_model_dir`` / ``teacher_dir``; an original TF
  checkpoint is converted into one first: docs/original.md);
* ``package.module:function`` - a factory called with ``teacher.kwargs``, whose weights
  ``teacher.weights`` are a state dict or a checkpoint holding one (``state_dict`` /
  ``model`` entry; ``module.`` prefixes of DataParallel dropped), read with
  ``torch.load(weights_only=True)`` unless ``teacher.trust_weights``;
* ``robustbench:<name>`` - RobustBench's model ``name`` of ``teacher.robustbench_dataset`` /
  ``teacher.threat_model``, from RobustBench's local layout
  ``<teacher.robustbench_dir>/<dataset>/<threat_model>/<name>.pt`` (never downloaded here).

Each becomes an :class:`igam.models.ExternalClassifier` taking [0, 255] pixels
(``teacher.input_range`` 0: 1 for these external models; mean/std if given). A factory
student (``student.model``) is built the same way, without weights, with ``num_classes`` set
to the dataset's when the factory takes it.
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from igam.errors import CheckpointError, ConfigError
from igam.models import ExternalClassifier, import_factory
from igam.run.checkpoint import load_model_state
from igam.zoo import known_names, robustbench_available, robustbench_model

ROBUSTBENCH = "robustbench:"
ROBUSTBENCH_FACTORY = "igam.zoo:robustbench_model"
EXTERNAL_INPUT_RANGE = 1.0  # RobustBench's and torchvision's models take [0, 1] pixels


def kind(section: Mapping[str, Any]) -> str:
    """'port', 'robustbench' or 'factory': what ``section['model']`` names."""
    model = section.get("model", "")
    if not model:
        return "port"
    return "robustbench" if model.startswith(ROBUSTBENCH) else "factory"


def robustbench_file(section: Mapping[str, Any]) -> Path:
    """``<robustbench_dir>/<dataset>/<threat_model>/<name>.pt``: where RobustBench's
    ``load_model(name, model_dir, dataset, threat_model)`` keeps the model's weights."""
    name = section["model"][len(ROBUSTBENCH):]
    return (Path(section["robustbench_dir"]) / section["robustbench_dataset"]
            / section["threat_model"] / f"{name}.pt")


def _adapter(section: Mapping[str, Any]) -> dict:
    return {"input_range": section["input_range"] or EXTERNAL_INPUT_RANGE,
            "mean": list(section["mean"]) or None, "std": list(section["std"]) or None,
            "head": section.get("head") or None}


def check_teacher(section: Mapping[str, Any], key: str = "teacher") -> None:
    """At start (before data and models): ConfigError / CheckpointError, one line naming the
    key or file, if the external teacher of ``section`` cannot be loaded. Nothing for a port
    teacher (its run folder is checked as before)."""
    what = kind(section)
    if what == "port":
        return
    for k in ("mean", "std"):
        if section[k] and len(section[k]) != 3:
            raise ConfigError(f"config key '{key}.{k}': expected 3 values (one per channel) or "
                              f"[], got {section[k]}")
    if section["std"] and min(section["std"]) <= 0:
        raise ConfigError(f"config key '{key}.std': expected values > 0, got {section['std']}")
    if what == "factory":
        try:
            import_factory(section["model"])
        except ValueError as exc:
            raise ConfigError(f"config key '{key}.model': {exc}") from None
        if not section["weights"]:
            raise ConfigError(f"config key '{key}.weights': a factory teacher needs its weights "
                              "file (a state dict or a checkpoint holding one)")
        if not Path(section["weights"]).is_file():
            raise CheckpointError(f"{key}.weights: no file {section['weights']}")
        return
    name = section["model"][len(ROBUSTBENCH):]
    dataset, threat = section["robustbench_dataset"], section["threat_model"]
    if name not in known_names(dataset, threat) and not robustbench_available():
        raise ConfigError(
            f"config key '{key}.model': without an importable robustbench package the port "
            f"builds only RobustBench's WideResNets, not {name!r} of {dataset} {threat} (the "
            "names: docs/byo_teacher.md#robustbench)")
    file = robustbench_file(section)
    if not file.is_file():
        raise CheckpointError(
            f"RobustBench weights of {name} not found: put them at {file} (RobustBench's layout "
            f"<{key}.robustbench_dir>/<dataset>/<threat_model>/<name>.pt); on a machine with "
            f"internet, python -c \"from robustbench.utils import load_model; load_model("
            f"'{name}', model_dir='models/robustbench', dataset='{dataset}', "
            f"threat_model='{threat}')\" downloads them there (pip install -r "
            "requirements-robustbench.txt), then copy the file")


def read_state_dict(file: str | Path, trust: bool = False, key: str = "teacher") -> dict:
    """The state dict in a weights file: a state dict, or a checkpoint holding one under
    ``state_dict`` or ``model`` (a whole pickled module only with ``trust``); leading
    ``module.`` (DataParallel) and ``model.`` prefixes dropped, as RobustBench does."""
    try:
        obj = torch.load(file, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{file} holds pickled objects beyond tensors, which torch.load(weights_only=True) "
            f"refuses; if you trust the file, pass --{key}.trust_weights true") from None
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read weights {file}: {exc}") from None
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    for entry in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(entry), Mapping):
            obj = obj[entry]
            break
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{file} holds no state dict (a dict of tensors, or a checkpoint "
                              "with one under 'state_dict' or 'model')")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_teacher_source(section: Mapping[str, Any], device,
                        key: str = "teacher") -> ExternalClassifier:
    """The external teacher model of ``section`` with its weights, adapted to [0, 255] pixels
    (see the module docstring), on ``device``; :func:`check_teacher` first."""
    check_teacher(section, key)
    adapter = _adapter(section)
    if kind(section) == "factory":
        spec, kwargs = section["model"], dict(section["kwargs"])
        model = import_factory(spec)(**kwargs)
        load_model_state(model, read_state_dict(section["weights"], section["trust_weights"],
                                                key), section["weights"])
        return ExternalClassifier(model, spec, kwargs, **adapter).to(device)
    name = section["model"][len(ROBUSTBENCH):]
    file = robustbench_file(section)
    rb = {"name": name, "dataset": section["robustbench_dataset"],
          "threat_model": section["threat_model"]}
    overrides = dict(section["kwargs"])
    if not overrides and robustbench_available():  # its own loader: every leaderboard name
        from robustbench.utils import load_model

        model = load_model(name, section["robustbench_dir"], rb["dataset"], rb["threat_model"])
    else:
        try:
            model = robustbench_model(**rb, **overrides)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config key '{key}.model' / '{key}.kwargs': {exc}") from None
        load_model_state(model, read_state_dict(file, section["trust_weights"], key), file)
    return ExternalClassifier(model, ROBUSTBENCH_FACTORY, {**rb, **overrides},
                              **adapter).to(device)


def build_student(section: Mapping[str, Any], num_classes: int, device) -> ExternalClassifier:
    """A freshly initialised factory student (``student.model``): ``num_classes`` is passed
    unless ``student.kwargs`` sets it or the factory does not take it. ConfigError (one line)
    if the factory cannot be imported or called, or its logits are not ``num_classes``."""
    spec, kwargs = section["model"], dict(section["kwargs"])
    try:
        factory = import_factory(spec)
        params = inspect.signature(factory).parameters
        if "num_classes" not in kwargs and (
                "num_classes" in params
                or any(p.kind is p.VAR_KEYWORD for p in params.values())):
            kwargs["num_classes"] = num_classes
        student = ExternalClassifier.from_factory(spec, kwargs, **_adapter(section))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key 'student.model': {exc}") from None
    if student.num_classes != num_classes:
        raise ConfigError(f"student {spec} predicts {student.num_classes} classes, the data has "
                          f"{num_classes}: set student.kwargs (e.g. num_classes)")
    return student.to(device)
