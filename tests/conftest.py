"""Shared test fixtures: tiny models (debugging widths) and the real-data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Tiny models run faster on one thread, and a loaded 2-core machine does not stall them.
torch.set_num_threads(1)


def shared_data_dir() -> Path | None:
    """Folder with the real CIFAR-10 / Tiny-ImageNet subsets (env IGAM_SHARED_DATA, set by
    .ci/run to ../shared/data; falls back to ../shared/data beside the repo)."""
    env = os.environ.get("IGAM_SHARED_DATA")
    cand = Path(env) if env else REPO.parent / "shared" / "data"
    return cand if cand.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("real data subsets not found: set IGAM_SHARED_DATA to a folder holding "
                    "cifar-10-batches-py/ and tiny-imagenet-200/ (CI sets ../shared/data)")
    return d


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
