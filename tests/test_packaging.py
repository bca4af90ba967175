"""pyproject.toml makes the checkout an installable package (``pip install -e .``): igam and
every sub-package, with the runtime dependencies of requirements.txt and the optional extras
of requirements-autoattack.txt / requirements-robustbench.txt / requirements-dev.txt."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _requirements(name: str) -> list[str]:
    lines = (REPO / name).read_text().splitlines()
    return [re.sub(r"\s+#.*", "", line).strip() for line in lines
            if line.strip() and not line.startswith(("#", "-"))]


def test_pyproject_declares_the_package_and_its_requirements():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["build-system"]["build-backend"] == "setuptools.build_meta"
    meta = project["project"]
    assert meta["dependencies"] == _requirements("requirements.txt")
    assert meta["optional-dependencies"]["autoattack"] == _requirements(
        "requirements-autoattack.txt")
    assert meta["optional-dependencies"]["dev"] == _requirements("requirements-dev.txt")
    assert meta["optional-dependencies"]["robustbench"] == _requirements(
        "requirements-robustbench.txt")
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["igam*"]


def test_every_folder_of_igam_is_a_package():
    """setuptools' find_packages only takes folders with an __init__.py."""
    from setuptools import find_packages

    found = set(find_packages(str(REPO), include=["igam*"]))
    folders = {".".join(p.relative_to(REPO).parts) for p in (REPO / "igam").rglob("*")
               if p.is_dir() and p.name != "__pycache__" and any(p.glob("*.py"))}
    assert folders | {"igam"} == found
