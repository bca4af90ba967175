"""Shared test fixtures: tiny models (debugging widths) and the real-data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Tiny models run faster on one thread, and a loaded 2-core machine does not stall them.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder with real CIFAR-10 / Tiny-ImageNet images in their official layouts
    (``cifar-10-batches-py/``, ``tiny-imagenet-200/``; small subsets suffice), named by the
    environment variable IGAM_REAL_DATA (CI sets it); tests that need it are skipped without."""
    env = os.environ.get("IGAM_REAL_DATA")
    if not env or not Path(env).is_dir():
        pytest.skip("real images not found: set IGAM_REAL_DATA to a folder holding "
                    "cifar-10-batches-py/ and tiny-imagenet-200/ (official layouts)")
    return Path(env)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(items):
    """End-to-end files (tests/scripts/) first, in their collected order: with pytest-xdist
    (``--dist loadfile``, scripts/test.sh) the longest files then start at once, and the run
    does not end with one long file on one core while the other idles."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/scripts/") else 1)
