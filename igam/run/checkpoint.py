"""Checkpoints of the port: atomic saving, safe loading, format checks and strict model loading.

A checkpoint is a ``dict`` saved with :func:`torch.save`, holding only tensors and plain Python
values (int, float, bool, str, None, bytes, dtypes, ``torch.Size``, and lists / tuples / dicts
of those), so it always loads with ``torch.load(weights_only=True)``: loading a checkpoint
never executes code. Model and optimiser ``state_dict()`` s (SGD momentum buffers, Adam moments
and step counts) and the RNG states of :func:`igam.run.seeding.rng_state` all qualify; NumPy arrays
and arbitrary objects do not (convert them to tensors first).

Entries of an igam checkpoint:

- ``format``: ``"igam-pytorch/1"``;
- ``kind``: what the model is, e.g. ``"classifier"``, ``"teacher"``, ``"igam"``;
- ``arch``: the architecture config ``igam.models.build_model(arch)`` turns into a module;
- ``model``: the module's ``state_dict()``;
- optional: ``discriminator_arch`` and ``discriminator`` (IGAM), ``trainer`` (the trainer's
  state: optimisers, learning-rate schedule), ``step`` (int, global step), ``rng`` (RNG
  states), ``sampler`` (batch sampler state), ``config`` (the resolved run config).

In a run folder the latest checkpoint is ``checkpoint.pt`` (see :mod:`igam.run.rundir`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from igam.errors import CheckpointError
from igam.run.files import atomic_write
from igam.run.rundir import CHECKPOINT_NAME

FORMAT = "igam-pytorch/1"

__all__ = [
    "FORMAT",
    "check_format",
    "checkpoint_path",
    "load_checkpoint",
    "load_model_state",
    "make_checkpoint",
    "save_checkpoint",
]

_SCALARS = (bool, int, float, str, bytes, type(None), torch.dtype, torch.Size)
_MAX_NAMES = 3  # key names listed in one-line messages before "..."


def make_checkpoint(
    kind: str,
    arch: Mapping[str, Any],
    model: Mapping[str, torch.Tensor],
    step: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """Assemble a checkpoint dict with the standard entries (``format``, ``kind``, ``arch``,
    ``model``, ``step``) plus any optional ones given as keywords (``trainer``, ``rng``,
    ``sampler``, ``config``, ``discriminator_arch``, ``discriminator``, ...)."""
    if not isinstance(arch, Mapping):
        raise TypeError(f"arch must be a dict, got {type(arch).__name__}")
    state: dict[str, Any] = {
        "format": FORMAT,
        "kind": str(kind),
        "arch": dict(arch),
        "model": model,
        "step": int(step),
    }
    state.update(extra)
    return state


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError (a programming error) if ``value`` would not load with weights_only."""
    if isinstance(value, torch.Tensor):
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise TypeError(f"{where} is a tensor subclass {type(value).__name__}")
        return
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, (dict, collections.OrderedDict)):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key of type {type(key).__name__}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(
        f"{where} holds a {type(value).__module__}.{type(value).__name__}; checkpoints may hold "
        "only tensors and plain Python values (convert NumPy arrays to tensors)"
    )


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Save ``state`` to ``path`` atomically and durably; return the path.

    The dict is written with :func:`torch.save` to a temporary file in the same folder, flushed,
    fsynced and renamed onto ``path``: a crash or a full disk leaves the previous checkpoint
    intact. ``format`` is set to ``"igam-pytorch/1"`` when missing. Objects that
    ``torch.load(weights_only=True)`` could not read raise TypeError before anything is written;
    a failing write (e.g. disk full) raises CheckpointError.
    """
    path = Path(path)
    if not isinstance(state, Mapping):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    state = dict(state)
    state.setdefault("format", FORMAT)
    _check_plain(state, "checkpoint")
    _remove_stale_temporaries(path)
    try:
        with atomic_write(path, "wb") as handle:
            torch.save(state, handle)
    except OSError as exc:
        raise CheckpointError(f"could not write checkpoint {path}: {exc.strerror or exc}") from None
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left behind by a process killed while saving."""
    if not path.parent.is_dir():
        return
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def checkpoint_path(path: str | os.PathLike) -> Path:
    """The checkpoint file meant by ``path``: the path itself if it is a file, else the run
    folder's ``checkpoint.pt``. Missing -> CheckpointError."""
    path = Path(path)
    if path.is_dir():
        candidate = path / CHECKPOINT_NAME
        if not candidate.is_file():
            raise CheckpointError(f"{path} holds no checkpoint ({CHECKPOINT_NAME} is missing)")
        return candidate
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", verify: bool = True
) -> dict[str, Any]:
    """Load a checkpoint dict with ``torch.load(weights_only=True)``.

    ``path`` may be a checkpoint file or a run folder. With ``verify`` the CRC-32 of every
    record of the zip container is checked first, which catches silent corruption in the
    middle of a file (torch itself does not check them); it costs one extra read of the file.
    Missing, unreadable, truncated or corrupt files, files holding arbitrary Python objects and
    files not holding a dict raise CheckpointError with one line naming the file.
    """
    file = checkpoint_path(path)
    corrupt = f"{file} is not a readable checkpoint (truncated or corrupt?)"
    try:
        with open(file, "rb"):
            pass
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {file}: {exc.strerror or exc}") from None
    if verify and zipfile.is_zipfile(file):
        try:
            with zipfile.ZipFile(file) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError):
            raise CheckpointError(corrupt) from None
        if bad is not None:
            raise CheckpointError(f"{corrupt}: record {bad} fails its CRC check")
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc) or "not an allowed global" in str(exc):
            raise CheckpointError(
                f"{file} holds Python objects other than tensors and plain values; "
                "not an igam-pytorch checkpoint (refusing to unpickle it)"
            ) from None
        raise CheckpointError(corrupt) from None
    except Exception:  # torch raises OSError, RuntimeError, EOFError, KeyError, ... here
        raise CheckpointError(corrupt) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{file} holds a {type(state).__name__}, not a checkpoint dict "
            "(a bare state_dict is not an igam-pytorch checkpoint)"
        )
    return state


def check_format(
    ckpt: Mapping[str, Any],
    path: str | os.PathLike,
    kinds: str | Iterable[str] | None = None,
) -> Mapping[str, Any]:
    """Check that ``ckpt`` is an igam-pytorch checkpoint (``format``, and ``kind``, ``arch``,
    ``model`` of the right types) and, if ``kinds`` is given, of one of those kinds.
    Returns ``ckpt``; raises CheckpointError naming ``path`` otherwise."""
    fmt = ckpt.get("format")
    if fmt is None:
        raise CheckpointError(
            f"{path} has no 'format' entry: not an igam-pytorch checkpoint "
            "(original TensorFlow checkpoints must be imported first)"
        )
    if fmt != FORMAT:
        raise CheckpointError(f"{path} has format {fmt!r}, expected {FORMAT!r}")
    kind = ckpt.get("kind")
    if not isinstance(kind, str):
        raise CheckpointError(f"{path} has no 'kind' entry (expected e.g. 'classifier')")
    if not isinstance(ckpt.get("arch"), dict):
        raise CheckpointError(f"{path} has no 'arch' dict describing the model architecture")
    if not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path} has no 'model' state_dict")
    if kinds is not None:
        allowed = [kinds] if isinstance(kinds, str) else list(kinds)
        if kind not in allowed:
            expected = " or ".join(repr(k) for k in allowed)
            raise CheckpointError(f"{path} holds a {kind!r} model, expected {expected}")
    return ckpt


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMES])
    return shown + (", ..." if len(keys) > _MAX_NAMES else "")


def _shape(shape: Iterable[int]) -> str:
    dims = tuple(int(d) for d in shape)
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def load_model_state(
    module: torch.nn.Module, state_dict: Mapping[str, Any], path: str | os.PathLike
) -> torch.nn.Module:
    """Load ``state_dict`` into ``module`` strictly (all keys, same shapes); return the module.

    Mismatches raise one CheckpointError listing missing keys, unexpected keys and shape
    mismatches (a few names each), e.g. ``models/x/checkpoint.pt does not fit this model:
    3 missing keys (a, b, c), shape mismatch for fc.weight: checkpoint (10, 64) vs model
    (100, 64)``.
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"{path}: model state is a {type(state_dict).__name__}, not a dict")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key{'s' * (len(missing) > 1)} ({_names(missing)})")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected key{'s' * (len(unexpected) > 1)} ({_names(unexpected)})"
        )
    mismatched = []
    for key, target in expected.items():
        if key not in state_dict:
            continue
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            mismatched.append(f"{key}: checkpoint holds a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != tuple(target.shape):
            mismatched.append(
                f"shape mismatch for {key}: checkpoint {_shape(value.shape)} "
                f"vs model {_shape(target.shape)}"
            )
    problems.extend(mismatched[:_MAX_NAMES])
    if len(mismatched) > _MAX_NAMES:
        problems.append(f"{len(mismatched) - _MAX_NAMES} more shape mismatches")
    if problems:
        raise CheckpointError(f"{path} does not fit this model: " + ", ".join(problems))
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # e.g. dtype that cannot be copied; keep it to one line
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{path} does not fit this model: {first[-1].strip() if first else exc}"
        ) from None
    return module
