"""Where a file came from: the hash of a file (e.g. the checkpoint a model was loaded from),
the code version, the software and device, the time. The records of the evaluation
(``igam.eval.records``) are built from these.

``code_version()`` is the one place that asks git: it gives the package version and, when the
package is imported from a git checkout, the commit and whether tracked files have uncommitted
changes; without git, or outside a checkout, those two are ``None`` (never an error).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import igam

__all__ = ["code_version", "environment", "file_sha256", "now"]

_CHUNK = 1 << 20
PACKAGE_ROOT = Path(igam.__file__).resolve().parents[1]  # the folder holding igam/


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _git(*args: str) -> str | None:
    """Output of ``git -C <package root> args`` (stripped), or None if git is missing or
    fails (no checkout, not a safe directory, timeout)."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    try:
        proc = subprocess.run(["git", "-C", str(PACKAGE_ROOT), *args], capture_output=True,
                              text=True, timeout=10, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """``{"igam": package version, "git_commit": sha or None, "git_dirty": bool or None}``.

    The commit is that of the checkout the imported ``igam`` package lives in (not of the
    working directory); a package installed inside some other repository gets None.
    ``git_dirty``: tracked files differ from the commit (untracked files are not counted)."""
    out = {"igam": igam.__version__, "git_commit": None, "git_dirty": None}
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != PACKAGE_ROOT:
        return out
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return out
    status = _git("status", "--porcelain", "--untracked-files=no")
    out.update(git_commit=commit, git_dirty=None if status is None else bool(status))
    return out


def environment(device: torch.device | str) -> dict[str, Any]:
    """The software and the device a result was computed with."""
    device = torch.device(device)
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "device": str(device)}
    if device.type == "cuda" and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(device)
    return env


def now() -> str:
    """The current time, UTC, ISO 8601 to the second (e.g. 2024-05-01T12:00:00+00:00)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
