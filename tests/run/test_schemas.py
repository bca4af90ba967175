"""The declared config keys of the entry scripts and tools (igam.run.schemas): every key has
a help line, the declarations follow the method they configure, and docs/config_keys.md is
what the code generates."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from igam.models import InputGradientDiscriminator
from igam.run import schemas
from igam.run.config import Schema

REPO = Path(__file__).resolve().parents[2]
SCHEMA_IDS = [s.name for s in schemas.SCHEMAS]


def test_every_script_has_one_schema_and_its_plain_views():
    assert SCHEMA_IDS == ["ADVTRAIN", "FINETUNE", "IGAM", "ATTACK", "SANITY", "VISUALIZE"]
    for schema in schemas.SCHEMAS:
        assert isinstance(schema, Schema) and schema.commands and schema.configs
        assert getattr(schemas, f"{schema.name}_SCHEMA") is schema
        assert getattr(schemas, schema.name) is schema.defaults
        assert getattr(schemas, f"{schema.name}_CHOICES") is schema.choices
        assert getattr(schemas, f"{schema.name}_RANGES") is schema.ranges


@pytest.mark.parametrize("schema", schemas.SCHEMAS, ids=SCHEMA_IDS)
def test_every_key_has_a_one_line_help(schema):
    assert schema.flat
    for key, declared in schema.flat.items():
        assert declared.help.strip() and "\n" not in declared.help, key
        assert len(declared.help) <= 200, key  # one line, not a paragraph


def test_discriminator_keys_are_its_signature():
    """The discriminator section declares exactly the constructor's parameters (image_size
    comes from the data); a new parameter stops igam.run.schemas from importing until its
    help line is declared in _DISC_HELP."""
    params = set(inspect.signature(InputGradientDiscriminator).parameters) - {"image_size"}
    assert set(schemas.IGAM["discriminator"]) == params


def test_config_keys_page_is_what_the_code_generates():
    """docs/config_keys.md is generated; after changing a declaration, regenerate it with
    python -m igam.run.schemas > docs/config_keys.md"""
    page = (REPO / "docs/config_keys.md").read_text(encoding="utf-8")
    generated = schemas.config_keys_markdown()
    assert page == generated, ("docs/config_keys.md is stale: regenerate it with "
                               "python -m igam.run.schemas > docs/config_keys.md")
    out = subprocess.run([sys.executable, "-m", "igam.run.schemas"], cwd=REPO, check=True,
                         capture_output=True, text=True, encoding="utf-8").stdout
    assert out == generated


def test_config_keys_page_lists_every_key_of_every_script():
    page = schemas.config_keys_markdown()
    for schema in schemas.SCHEMAS:
        section = page.split(f"\n## {', '.join(schema.commands)}\n", 1)[1].split("\n## ")[0]
        rows = [line.split(" | ")[0].strip("| `") for line in section.splitlines()
                if line.startswith("| `")]
        assert rows == list(schema.flat), schema.name
