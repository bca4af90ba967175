"""The declared config keys of the entry scripts and tools (igam.run.schemas): every key has
a help line, the declarations follow the method they configure."""

from __future__ import annotations

import inspect

import pytest

from igam.models import InputGradientDiscriminator
from igam.run import schemas
from igam.run.config import Schema

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
