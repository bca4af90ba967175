"""Run-time plumbing shared by the entry scripts: seeding, device choice, numerical fidelity,
RNG state capture for exact resumption, atomic file writes, the metrics log, the run folder
and the top-level error guard.

A run folder (``models/<name>/``) holds:

- ``checkpoint.pt``  latest checkpoint (see :mod:`igam.checkpoint`),
- ``config.yaml``    the resolved config the run was (last) started with,
- ``metrics.jsonl``  one JSON object per logged step.

This module imports nothing from igam except :mod:`igam.errors`, so :mod:`igam.config` and
:mod:`igam.checkpoint` can build on it (the run-folder helper imports them lazily).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import math
import os
import random
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from igam.errors import CheckpointError, ConfigError, IGAMError

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "METRICS_NAME",
    "MetricsLogger",
    "RunDir",
    "atomic_write",
    "atomic_write_text",
    "fidelity",
    "main_guard",
    "prepare_run_dir",
    "read_metrics",
    "restore_fidelity",
    "resolve_device",
    "rng_state",
    "run_main",
    "seed_everything",
    "set_fidelity",
    "set_rng_state",
    "write_json",
]


# ----------------------------------------------------------------------------------------------
# Seeding, devices, fidelity


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices (lazily if CUDA is not initialised)


def resolve_device(name: str) -> torch.device:
    """Turn the config's ``device`` string into a :class:`torch.device`.

    ``auto`` picks ``cuda`` when available, else ``cpu``. ``cpu``, ``cuda``, ``cuda:N`` and
    ``mps`` pass through after checking the device exists; anything else, or a device this
    machine does not have, raises :class:`ConfigError` in one line.
    """
    text = str(name).strip()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(
            f"device '{text}' is not a valid device; expected auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device '{text}' requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}); use --device cpu or --device auto"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"device '{text}' requested but this machine has {count} CUDA device(s) "
                f"(cuda:0 .. cuda:{count - 1})"
            )
        return device
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(
                f"device '{text}' requested but MPS is not available on this machine; "
                "use --device cpu or --device auto"
            )
        return device
    raise ConfigError(f"device '{text}' is not supported; expected auto, cpu, cuda, cuda:N or mps")


def set_fidelity(allow_tf32: bool) -> dict[str, bool]:
    """Allow or forbid TF32 in CUDA matmuls and cuDNN convolutions; return the previous flags.

    SPEC 1: input gradients are tiny and the double-backprop terms are fp32-sensitive, so the
    port runs with TF32 OFF unless the config trades fidelity for speed. The flags are global
    and harmless on CPU-only builds. Pass the returned dict to :func:`restore_fidelity`.
    """
    previous = {
        "matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn": bool(torch.backends.cudnn.allow_tf32),
    }
    torch.backends.cuda.matmul.allow_tf32 = bool(allow_tf32)
    torch.backends.cudnn.allow_tf32 = bool(allow_tf32)
    return previous


def restore_fidelity(previous: Mapping[str, bool]) -> None:
    """Restore the TF32 flags returned by :func:`set_fidelity`."""
    torch.backends.cuda.matmul.allow_tf32 = bool(previous["matmul"])
    torch.backends.cudnn.allow_tf32 = bool(previous["cudnn"])


@contextlib.contextmanager
def fidelity(allow_tf32: bool) -> Iterator[None]:
    """Context manager form of :func:`set_fidelity` that restores the flags on exit."""
    previous = set_fidelity(allow_tf32)
    try:
        yield
    finally:
        restore_fidelity(previous)


# ----------------------------------------------------------------------------------------------
# RNG state (stored as tensors and plain values so that torch.load(weights_only=True) works)


def rng_state() -> dict[str, Any]:
    """Capture the states of Python's ``random``, NumPy's global generator and torch (CPU,
    every initialised CUDA device, MPS if present).

    Everything is a tensor, int, float, str, None or a list/dict of those, so the result can go
    into a checkpoint loaded with ``weights_only=True``. Restore with :func:`set_rng_state`.
    """
    version, mt, gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(mt, dtype=torch.int64),  # 624 words (< 2**32) + position
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    mps = getattr(torch, "mps", None)
    if (
        mps is not None
        and getattr(torch.backends, "mps", None) is not None
        and torch.backends.mps.is_available()
    ):
        state["mps"] = mps.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore RNG states captured by :func:`rng_state`.

    CUDA states are restored for as many devices as both the saved state and this machine have
    (resuming a GPU run on CPU simply skips them). A malformed state raises CheckpointError.
    """
    try:
        py = state["python"]
        mt = tuple(int(v) for v in py["state"].tolist())
        gauss = py["gauss_next"]
        random.setstate((int(py["version"]), mt, None if gauss is None else float(gauss)))

        npst = state["numpy"]
        keys = npst["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            (
                str(npst["name"]),
                keys,
                int(npst["pos"]),
                int(npst["has_gauss"]),
                float(npst["cached_gaussian"]),
            )
        )

        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
        cuda_states = list(state.get("cuda") or [])
        if cuda_states and torch.cuda.is_available():
            for index in range(min(len(cuda_states), torch.cuda.device_count())):
                torch.cuda.set_rng_state(cuda_states[index].cpu().to(torch.uint8), index)
        if (
            "mps" in state
            and getattr(torch.backends, "mps", None) is not None
            and torch.backends.mps.is_available()
        ):
            torch.mps.set_rng_state(state["mps"].cpu().to(torch.uint8))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"saved RNG state is malformed ({reason})") from None


# ----------------------------------------------------------------------------------------------
# Atomic writes


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file next to ``path`` for writing; on success flush, fsync and
    ``os.replace`` it onto ``path`` (atomic on POSIX and Windows), so readers see either the old
    or the new file, never a partial one. On any exception the temporary file is removed and the
    old ``path`` is left untouched.

    The temporary file is named ``.<name>.<random>.tmp`` in the same directory.
    """
    if mode not in ("w", "wb"):
        raise ValueError("atomic_write supports mode 'w' or 'wb'")
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        if mode == "wb":
            handle = os.fdopen(fd, "wb")
        else:
            handle = os.fdopen(fd, "w", encoding=encoding, newline="")
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX); silently skipped where directories cannot be opened."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def _jsonable(value: Any) -> Any:
    """Convert tensors, NumPy values, paths and non-finite floats into strict-JSON values.

    NaN and infinities become the strings "nan", "inf", "-inf" (strict JSON has no such
    numbers, and a diverged loss must stay visible in the log).
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    elif isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON to ``path`` atomically (tensors/NumPy converted)."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------------------------
# Metrics log


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
            record[key] = _jsonable(value)
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


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a metrics.jsonl file (or the one in a run folder); skips a partial last line."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_NAME
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


# ----------------------------------------------------------------------------------------------
# Run folder


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

    ``cfg`` (if not None) is written to ``config.yaml``, replacing an older one.
    """
    from igam.config import save_config  # lazy: igam.config imports this module

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
        save_config(cfg, run_path / CONFIG_NAME)
    return RunDir(path=run_path, resume_from=resume_from)


# ----------------------------------------------------------------------------------------------
# Entry-point guard


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def run_main(main: Callable[..., Any], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)`` as a command-line program; always ends by raising SystemExit.

    - normal return: exit code = the returned int, or 0 for None;
    - :class:`igam.errors.IGAMError`: prints ``error: <one-line message>`` to stderr, exit 2
      (set ``IGAM_TRACEBACK=1`` to also see the traceback);
    - KeyboardInterrupt: prints ``interrupted`` to stderr, exit 130.

    Other exceptions are bugs and propagate with their traceback.
    """
    try:
        result = main(argv)
    except IGAMError as exc:
        if os.environ.get("IGAM_TRACEBACK"):
            traceback.print_exc()
        message = _one_line(str(exc)) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    raise SystemExit(0 if result is None else int(result))


def main_guard(main: Callable[..., Any]) -> Callable[..., None]:
    """Decorator form of :func:`run_main`: ``main_guard(main)(argv)`` runs ``main`` guarded."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> None:
        run_main(main, argv)

    return wrapper
