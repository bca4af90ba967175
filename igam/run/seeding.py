"""Seeding and RNG state: one ``seed`` for python, numpy and torch, and the exact RNG state a
checkpoint stores so that a resumed run draws the same numbers as an uninterrupted one."""

from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np
import torch

from igam.errors import CheckpointError

__all__ = ["rng_state", "seed_everything", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices (lazily if CUDA is not initialised)


# RNG state is stored as tensors and plain values, so torch.load(weights_only=True) works.


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
