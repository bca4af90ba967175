"""The declared config keys of the entry scripts and tools (igam.run.schemas): every key has
a help line, the declarations follow the method they configure, every YAML file in configs/
loads through the schema its name says and holds only overrides, and docs/config_keys.md is
what the code generates."""

from __future__ import annotations

import fnmatch
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from igam.models import InputGradientDiscriminator
from igam.run import schemas
from igam.run.config import Schema, config_to_flat, load_config, load_yaml_file

REPO = Path(__file__).resolve().parents[2]
SCHEMA_IDS = [s.name for s in schemas.SCHEMAS]


def test_every_script_has_one_schema():
    assert SCHEMA_IDS == ["ADVTRAIN", "FINETUNE", "IGAM", "ATTACK", "SANITY", "VISUALIZE"]
    for schema in schemas.SCHEMAS:
        assert isinstance(schema, Schema) and schema.commands and schema.configs
        assert getattr(schemas, f"{schema.name}_SCHEMA") is schema


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
    assert set(schemas.IGAM_SCHEMA.defaults["discriminator"]) == params


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


# ----------------------------------------------------------------------------------------------
# configs/*.yaml

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# Keys a file states even at their default: they name the pair (data, run folders) or the
# attack (method, steps, file name) the file is for.
NAMING_KEYS = {"model_dir", "teacher_dir", "source_model_dir", "data.dataset", "data.root",
               "attack.method", "attack.steps", "attack_name"}


def schema_of(path: Path) -> Schema:
    """The schema whose ``configs`` pattern claims the file name; fails unless exactly one."""
    claims = [s for s in schemas.SCHEMAS if fnmatch.fnmatch(path.name, s.configs)]
    assert len(claims) == 1, (f"configs/{path.name} is claimed by "
                              f"{[s.name for s in claims] or 'no schema'}: name it after its "
                              "script (advtrain_*, finetune_*, igam_*, attack_*, sanity, "
                              "visualize)")
    return claims[0]


def test_the_configs_are_found_and_every_schema_has_one():
    names = {p.name for p in CONFIGS}
    assert {"advtrain_tinyimagenet.yaml", "igam_cifar10_to_cifar100.yaml", "attack_fgsm.yaml",
            "sanity.yaml", "visualize.yaml"} <= names
    for schema in schemas.SCHEMAS:
        assert fnmatch.filter(names, schema.configs), schema.name


def test_a_yaml_no_schema_claims_fails(tmp_path):
    with pytest.raises(AssertionError, match="no schema"):
        schema_of(tmp_path / "pgd_attack.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_file_loads_through_its_schema(path):
    """Keys, types, choices and ranges of the file are checked by load_config."""
    schema = schema_of(path)
    cfg = load_config(schema, ["--config", str(path)])
    assert list(config_to_flat(cfg)) == list(schema.flat)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_file_holds_only_overrides_under_a_header(path):
    """A file sets only what its step, pair or attack changes, plus the keys that name it;
    its header says how to run it and where every key is described."""
    schema = schema_of(path)
    defaults = config_to_flat(schema.defaults)
    resolved = config_to_flat(load_config(schema, ["--config", str(path)]))
    for key in config_to_flat(load_yaml_file(path)):
        assert key in NAMING_KEYS or resolved[key] != defaults[key], (
            f"{path.name}: '{key}' repeats its default")
    text = path.read_text(encoding="utf-8")
    header = text.split("\n\n", 1)[0]
    assert all(line.startswith("#") for line in header.splitlines()), path.name
    assert "Run:" in header and "docs/config_keys.md" in header and "--help" in header


def test_defaults_named_in_the_differences_page_are_the_schemas():
    """docs/differences.md names the port's default of each option in parentheses
    ("- `allow_tf32` (false): ..."); each such value must be the declared default, so the page
    cannot drift from the code."""
    defaults = {}
    for schema in schemas.SCHEMAS:
        for key, declared in schema.flat.items():
            defaults.setdefault(key, set()).add(json.dumps(declared.default))
    lines = (REPO / "docs/differences.md").read_text().splitlines()
    pattern = re.compile(r"^- `([\w.]+)`(?: / `([\w.]+)`)? \(`?([\w.]+)`?")
    checked = 0
    for line in lines:
        match = pattern.match(line)
        if not match:
            continue
        value = match.group(3)
        for key in filter(None, match.group(1, 2)):
            assert key in defaults, f"docs/differences.md names unknown key {key}"
            assert {json.dumps(value), value} & defaults[key], (
                f"docs/differences.md gives {key} the default {value}; declared: "
                f"{defaults[key]}")
            checked += 1
    assert checked >= 8
