"""The run folder of a training script and its metrics log.

A run folder (``models/<name>/``) holds:

- ``checkpoint.pt``  latest checkpoint (see :mod:`igam.run.checkpoint`),
- ``config.yaml``    the resolved config the run was started with (never rewritten by a
  resume: a resume takes it as its base, and may change only the keys declared ``resumable``),
- ``config_history.jsonl``  one JSON object per start or resume: time, command line, and the
  keys a resume changed with their old and new values,
- ``metrics.jsonl``  one JSON object per logged step (and one per watched evaluation),
- ``checkpoint_best.pt``  with ``watch.every``: the best watched robust accuracy's
  (:mod:`igam.run.watch`), ``tensorboard/``  event files (:mod:`igam.run.tboard`).
- ``run_info.json``  what ran the latest start or resume: torch and Python versions, the git
  commit of the code (null outside a git checkout), the device, the world size and the
  parameter count of each model (:func:`write_run_info`); the versions and the commit are
  also in each ``config_history.jsonl`` record.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from igam.errors import ConfigError
from igam.run.config import (
    RUN_CHECKPOINT_NAME,
    RUN_CONFIG_NAME,
    config_changes,
    load_yaml_file,
    save_config,
)
from igam.run.files import atomic_write, atomic_write_text, to_json_value, write_json

CHECKPOINT_NAME = RUN_CHECKPOINT_NAME
CONFIG_NAME = RUN_CONFIG_NAME
HISTORY_NAME = "config_history.jsonl"
METRICS_NAME = "metrics.jsonl"
RUN_INFO_NAME = "run_info.json"

__all__ = ["CHECKPOINT_NAME", "CONFIG_NAME", "HISTORY_NAME", "METRICS_NAME", "RUN_INFO_NAME",
           "MetricsLogger", "RunDir", "environment_info", "prepare_run_dir", "write_run_info"]


def git_commit(path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``path`` (default: this
    package's source), or None when it is not in one or git is not installed."""
    where = Path(path) if path is not None else Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if sha.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs
        return None
    return {"commit": sha.stdout.strip(),
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def environment_info() -> dict[str, Any]:
    """Versions of the software running the code, and its git commit (None outside git)."""
    import torch  # the run folder's other helpers do not need torch

    return {"torch": torch.__version__, "python": platform.python_version(),
            "git": git_commit()}


def write_run_info(run_dir: str | os.PathLike, models: Mapping[str, Any], device: Any,
                   start_step: int = 0, world_size: int = 1) -> Path:
    """Write ``run_info.json`` (atomically): :func:`environment_info`, the time, ``device``,
    ``world_size``, the step the run starts (or resumes) at, and the parameter count of each
    of ``models`` ({name: nn.Module}; ``parameters`` total and ``trainable``)."""
    counts = {}
    for name, module in models.items():
        params = list(module.parameters())
        counts[name] = {"parameters": sum(p.numel() for p in params),
                        "trainable": sum(p.numel() for p in params if p.requires_grad)}
    info = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **environment_info(), "device": str(device), "world_size": int(world_size),
            "start_step": int(start_step), "models": counts}
    path = Path(run_dir) / RUN_INFO_NAME
    write_json(path, info)
    return path


class MetricsLogger:
    """Append-only JSON-lines log of training metrics, ``<run_dir>/metrics.jsonl``.

    Each :meth:`log` call writes one line ``{"step": int, "time": ISO-8601 UTC, **metrics}``
    and flushes it, so the file can be followed while training runs. Values may be Python
    numbers, 0-d/1-element tensors or NumPy scalars; NaN/inf are written as strings.

    On opening, a partial last line left by a crash is dropped. When resuming from a checkpoint
    taken at step S pass ``truncate_after=S``: records with ``step > S`` (logged after that
    checkpoint, hence about to be redone) are removed.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        filename: str = METRICS_NAME,
        truncate_after: int | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / filename
        self._repair(truncate_after)

    def _repair(self, truncate_after: int | None) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        if not raw:
            return
        complete = raw if raw.endswith(b"\n") else raw[: raw.rfind(b"\n") + 1]
        if truncate_after is None:
            if complete != raw:
                with atomic_write(self.path, "wb") as handle:
                    handle.write(complete)
            return
        kept = []
        for line in complete.decode("utf-8", errors="replace").splitlines(keepends=True):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or int(record.get("step", -1)) <= truncate_after:
                kept.append(line)
        atomic_write_text(self.path, "".join(kept))

    def log(self, step: int, **metrics: Any) -> dict[str, Any]:
        """Append one record for ``step``; return the record as written."""
        record: dict[str, Any] = {
            "step": int(step),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        for key, value in metrics.items():
            record[key] = to_json_value(value)
        line = json.dumps(record, allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
        return record

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as JSON to ``<run_dir>/<name>`` atomically; return the path."""
        path = self.run_dir / name
        write_json(path, obj)
        return path


@dataclass(frozen=True)
class RunDir:
    """Paths of a prepared run folder. ``resume_from`` is the checkpoint to continue from, or
    None when the run starts fresh."""

    path: Path
    resume_from: Path | None

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_NAME

    @property
    def config(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_NAME


def prepare_run_dir(
    path: str | os.PathLike,
    cfg: Mapping[str, Any] | None,
    resume: bool = False,
    overwrite: bool = False,
) -> RunDir:
    """Create the run folder, decide whether the run resumes, and save the resolved config.

    - Folder holds a checkpoint and ``resume``: ``resume_from`` is that checkpoint.
    - Folder holds a checkpoint, no ``resume``, no ``overwrite``: ConfigError (refuse to clobber
      a run by accident).
    - ``overwrite``: the old ``checkpoint.pt`` and ``metrics.jsonl`` are deleted (other files,
      e.g. evaluation outputs, are kept) and the run starts fresh.
    - ``resume`` with no checkpoint yet: the run starts fresh.

    ``cfg`` (if not None) is written to ``config.yaml`` when the run starts (afresh or over);
    a resumed run keeps the ``config.yaml`` it started with (``load_config`` has already
    refused any change that is not ``resumable``). Either way one record is appended to
    ``config_history.jsonl``: the event, the time, the command line and, for a resume, the
    keys it changed (``{key: [old, new]}``).
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pass only one")
    run_path = Path(path)
    if run_path.exists() and not run_path.is_dir():
        raise ConfigError(f"model_dir {run_path} exists and is not a folder")
    try:
        run_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create model_dir {run_path}: {exc.strerror or exc}") from None
    checkpoint = run_path / CHECKPOINT_NAME
    resume_from = None
    if checkpoint.exists():
        if resume:
            resume_from = checkpoint
        elif overwrite:
            for name in (CHECKPOINT_NAME, METRICS_NAME):
                with contextlib.suppress(FileNotFoundError):
                    (run_path / name).unlink()
        else:
            raise ConfigError(
                f"{run_path} already holds a run; pass --resume to continue it, --overwrite to "
                "start it over, or choose another model_dir"
            )
    if cfg is not None:
        record: dict[str, Any] = {
            "event": "resume" if resume_from is not None else "start",
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": [sys.executable, *sys.argv], **environment_info()}
        config_file = run_path / CONFIG_NAME
        if resume_from is not None and config_file.is_file():
            changes = config_changes(load_yaml_file(config_file), to_json_value(dict(cfg)))
            record["changes"] = {k: [old, new] for k, (old, new) in changes.items()}
        else:
            save_config(cfg, config_file)
        with open(run_path / HISTORY_NAME, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(to_json_value(record), allow_nan=False) + "\n")
    return RunDir(path=run_path, resume_from=resume_from)
