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


# The longest files, longest first (CPU time of each file alone, the processes it starts
# included): collected in this order, ahead of every other file, so that under pytest-xdist
# (``--dist loadfile``, scripts/test.sh) they start first and the short files fill in around
# them, instead of one long file ending the run on one core while the other idles. Update it
# when a file's time changes much (python -m pytest -n 0 --durations=0 FILE).
LONGEST_FIRST = [
    "tests/scripts/test_demo_real.py",
    "tests/run/test_distributed.py",
    "tests/scripts/test_demo.py",
    "tests/scripts/test_signals.py",
    "tests/scripts/test_pipeline.py",
    "tests/eval/test_records.py",
    "tests/scripts/test_classes_pipeline.py",
    "tests/eval/test_eval_attacks.py",
    "tests/run/test_precision.py",
    "tests/scripts/test_watch_runs.py",
]


def pytest_configure(config):
    """pytest-xdist hands out files by decreasing number of tests unless told to keep the
    collection order (--no-loadscope-reorder): keep it, so LONGEST_FIRST decides."""
    if getattr(config.option, "loadscopereorder", False):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    """The files of LONGEST_FIRST first, in its order; the others after them, as collected."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
