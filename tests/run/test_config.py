"""Tests of igam.run.config: schema-checked YAML + command-line config resolution."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from igam.errors import ConfigError
from igam.run import schemas
from igam.run.config import (
    Key,
    Schema,
    config_to_flat,
    format_help,
    load_config,
    load_yaml_file,
    save_config,
)

DEFAULTS = {
    "seed": 0,
    "device": "auto",
    "resume": False,
    "data": {"dataset": "cifar10", "root": "datasets/cifar10"},
    "model": {"widths": (16, 160, 320, 640), "units_per_stage": 5},
    "train": {
        "batch_size": 32,
        "lr_values": [0.1, 0.01, 0.001],
        "beta": 2.0,
        "teacher_bn": "batch",
        "img_random_pert": False,
    },
    "eval": {"attacks": ["pgd"]},
    "extra": {},
    "teacher_path": None,
}
CHOICES = {"train.teacher_bn": ["batch", "running"], "eval.attacks": ["pgd", "fgsm", "cw"]}


def schema_of(defaults, choices=None, ranges=None, key_help=None, repeatable=()):
    """A Schema of Keys built from a nested dict of defaults (a non-empty dict is a section,
    an empty one a free-form key) and the dotted choices, ranges, help and repeatable keys."""
    choices, ranges, key_help = choices or {}, ranges or {}, key_help or {}

    def keys(node, prefix=""):
        out = {}
        for name, default in node.items():
            dotted = prefix + name
            if isinstance(default, dict) and default:
                out[name] = keys(default, dotted + ".")
            else:
                out[name] = Key(default, key_help.get(dotted, f"the {dotted}"),
                                choices=choices.get(dotted), range=ranges.get(dotted),
                                repeatable=dotted in repeatable)
        return out

    return Schema(keys(defaults))


PLAIN = schema_of(DEFAULTS)  # the defaults without choices
TOY = schema_of(DEFAULTS, CHOICES)


def write(path, text):
    path.write_text(text)
    return str(path)


def test_defaults_only_returns_fresh_copy_with_lists():
    cfg = load_config(TOY, [])
    assert cfg["train"]["batch_size"] == 32
    assert cfg["model"]["widths"] == [16, 160, 320, 640]  # tuple default becomes a list
    cfg["train"]["batch_size"] = 1
    assert DEFAULTS["train"]["batch_size"] == 32  # defaults untouched
    assert TOY.defaults["train"]["batch_size"] == 32


def test_dotted_and_list_overrides_and_yaml_values():
    cfg = load_config(
        TOY,
        [
            "--train.batch_size", "64",
            "--model.widths", "16,16,32,64",
            "--train.lr_values=[0.5, 1e-3, 2]",
            "--train.beta", "1e-3",  # YAML 1.1 leaves this a string; float keys accept it
            "--seed=7",
            "--data.root", "123",  # str keys take the text verbatim
            "--eval.attacks", "pgd,fgsm",
            "--teacher_path", "models/t",
            "--extra.depth", "3",
            "--extra.name=x",
        ],
    )  # fmt: skip
    assert cfg["train"]["batch_size"] == 64
    assert cfg["model"]["widths"] == [16, 16, 32, 64]
    assert cfg["train"]["lr_values"] == [0.5, 0.001, 2.0]
    assert all(isinstance(v, float) for v in cfg["train"]["lr_values"])
    assert cfg["train"]["beta"] == pytest.approx(1e-3)
    assert cfg["seed"] == 7
    assert cfg["data"]["root"] == "123"
    assert cfg["eval"]["attacks"] == ["pgd", "fgsm"]
    assert cfg["teacher_path"] == "models/t"
    assert cfg["extra"] == {"depth": 3, "name": "x"}


def test_bool_flags():
    assert load_config(PLAIN, ["--resume"])["resume"] is True
    assert load_config(PLAIN, ["--resume", "--seed", "1"])["resume"] is True
    assert load_config(PLAIN, ["--resume", "false"])["resume"] is False
    assert load_config(PLAIN, ["--train.img_random_pert"])["train"]["img_random_pert"] is True
    cfg = load_config(PLAIN, ["--resume", "--no-resume"])
    assert cfg["resume"] is False
    with pytest.raises(ConfigError, match="needs a value"):
        load_config(PLAIN, ["--seed"])
    with pytest.raises(ConfigError, match="only for true/false"):
        load_config(PLAIN, ["--no-seed"])


def test_merge_order_defaults_file_cli(tmp_path):
    base = write(tmp_path / "base.yaml", "seed: 1\ntrain:\n  batch_size: 16\n  beta: 5\n")
    second = write(tmp_path / "second.yaml", "train:\n  beta: 7.5\n")
    cfg = load_config(TOY, ["--train.batch_size", "8", "--config", base])
    assert cfg["seed"] == 1  # file beats default
    assert cfg["train"]["batch_size"] == 8  # CLI beats file, whatever the argv order
    assert cfg["train"]["beta"] == 5.0 and isinstance(cfg["train"]["beta"], float)
    assert cfg["train"]["lr_values"] == [0.1, 0.01, 0.001]  # untouched keys keep defaults
    cfg = load_config(PLAIN, ["--config", base, "--config=" + second])
    assert cfg["train"]["beta"] == 7.5  # later file wins
    assert cfg["train"]["batch_size"] == 16


def test_unknown_key_in_yaml_names_file_and_close_match(tmp_path):
    path = write(tmp_path / "igam.yaml", "train:\n  batchsize: 32\n")
    with pytest.raises(ConfigError) as info:
        load_config(PLAIN, ["--config", path])
    message = str(info.value)
    assert "'train.batchsize'" in message
    assert path in message
    assert "did you mean 'train.batch_size'" in message
    assert "\n" not in message


def test_unknown_key_on_cli_with_close_match():
    with pytest.raises(ConfigError) as info:
        load_config(PLAIN, ["--train.batchsize", "3"])
    message = str(info.value)
    assert "unknown config key 'train.batchsize'" in message
    assert "command line" in message and "did you mean 'train.batch_size'" in message
    with pytest.raises(ConfigError, match="did you mean 'train.batch_size'"):
        load_config(PLAIN, ["--batch_size", "3"])
    with pytest.raises(ConfigError, match="unknown config key 'nothing_like_it'"):
        load_config(PLAIN, ["--nothing_like_it", "3"])


@pytest.mark.parametrize(
    "argv, key, expected",
    [
        (["--train.batch_size", "3.5"], "train.batch_size", "an integer"),
        (["--train.batch_size", "true"], "train.batch_size", "an integer"),
        (["--train.beta", "fast"], "train.beta", "a number"),
        (["--resume", "maybe"], "resume", "true or false"),
        (["--model.widths", "16,x,32"], "model.widths[1]", "an integer"),
        (["--train", "5"], "train", "a mapping"),
        (["--train.teacher_bn", "runing"], "train.teacher_bn", "one of batch, running"),
        (["--eval.attacks", "pgd,fgms"], "eval.attacks", "one of pgd, fgsm, cw"),
    ],
)
def test_wrong_type_on_cli(argv, key, expected):
    with pytest.raises(ConfigError) as info:
        load_config(TOY, argv)
    message = str(info.value)
    assert f"'{key}'" in message and expected in message and "command line" in message


def test_wrong_type_in_yaml(tmp_path):
    path = write(tmp_path / "c.yaml", "data:\n  dataset: 10\n")
    with pytest.raises(ConfigError) as info:
        load_config(PLAIN, ["--config", path])
    assert "'data.dataset'" in str(info.value) and "a string" in str(info.value)
    assert path in str(info.value)
    path = write(tmp_path / "d.yaml", "train:\n  teacher_bn: runnin\n")
    with pytest.raises(ConfigError, match="did you mean 'running'"):
        load_config(TOY, ["--config", path])
    path = write(tmp_path / "e.yaml", "train: [1, 2]\n")
    with pytest.raises(ConfigError, match="'train'.*a mapping"):
        load_config(PLAIN, ["--config", path])


def test_file_errors(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(PLAIN, ["--config", missing])
    bad = write(tmp_path / "bad.yaml", "seed: 1\ntrain: [1, 2\ndevice: cpu\n")
    with pytest.raises(ConfigError) as info:
        load_config(PLAIN, ["--config", bad])
    message = str(info.value)
    assert bad in message and "not valid YAML" in message and "line 3" in message
    assert "\n" not in message
    dup = write(tmp_path / "dup.yaml", "seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match="duplicate key 'seed'.*line 2"):
        load_yaml_file(dup)
    top = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of config keys"):
        load_yaml_file(top)
    assert load_yaml_file(write(tmp_path / "empty.yaml", "# nothing\n")) == {}
    with pytest.raises(ConfigError, match="needs a file name"):
        load_config(PLAIN, ["--config"])
    with pytest.raises(ConfigError, match="unexpected command-line argument 'stray'"):
        load_config(PLAIN, ["stray"])


def test_save_load_round_trip(tmp_path):
    cfg = load_config(
        PLAIN,
        ["--model.widths", "16,16,32,64", "--train.beta", "1e-3", "--resume",
         "--data.root", "123", "--extra.k", "[1, 2]"],
    )  # fmt: skip
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert path.exists() and not list(path.parent.glob(".*tmp"))
    assert yaml.safe_load(path.read_text()) == cfg
    again = load_config(PLAIN, ["--config", str(path)])
    assert again == cfg
    assert isinstance(again["data"]["root"], str)


def test_flat_view():
    cfg = load_config(PLAIN, [])
    flat = config_to_flat(cfg)
    assert flat["train.batch_size"] == 32 and flat["data.dataset"] == "cifar10"
    assert flat["extra"] == {}


def test_help_lists_keys_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        load_config(schema_of(DEFAULTS, CHOICES, key_help={"seed": "RNG seed"}),
                    ["--seed", "1", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--train.batch_size" in out and "32" in out
    assert "one of: batch, running" in out and "RNG seed" in out


def test_bad_schema_is_a_programming_error():
    with pytest.raises(ValueError, match="not among its CHOICES"):
        schema_of(DEFAULTS, {"train.teacher_bn": ["running"]})
    with pytest.raises(ValueError, match="outside its range"):
        schema_of(DEFAULTS, ranges={"train.batch_size": "> 32"})
    with pytest.raises(ValueError, match="RANGES entry"):
        schema_of(DEFAULTS, ranges={"train.batch_size": "positive"})


# ----------------------------------------------------------------------------------------------
# Ranges of the entry scripts' numeric keys (igam.run.schemas, each schema's .ranges)

SCRIPT_SCHEMAS = {s.name: s for s in schemas.SCHEMAS}


def _is_numeric(value) -> bool:
    if isinstance(value, list):
        return bool(value) and _is_numeric(value[0])
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _outside(spec: str, default):
    """A value of the default's type just outside ``spec`` (and one on its bound)."""
    text = spec.replace(" ", "")
    if text == "schedule":
        return [[1.0, 0.1]], [[0.0, 0.1]]
    step = 1 if isinstance(default, int) else 0.5
    if text.startswith("["):
        lo, hi = (type(default)(v) for v in text[1:-1].split(","))
        return hi + step, hi
    bound = type(default)(float(text.lstrip(">=")))
    return (bound - step, bound) if text.startswith(">=") else (bound, bound + step)


RANGE_CASES = [(name, key, spec) for name, schema in SCRIPT_SCHEMAS.items()
               for key, spec in schema.ranges.items()]


def test_every_numeric_key_of_every_script_has_a_range():
    assert sorted(SCRIPT_SCHEMAS) == ["ADVTRAIN", "ATTACK", "FINETUNE", "IGAM", "SANITY",
                                      "VISUALIZE"]
    for name, schema in SCRIPT_SCHEMAS.items():
        numeric = [k for k, v in config_to_flat(schema.defaults).items() if _is_numeric(v)]
        assert sorted(numeric) == sorted(schema.ranges), name


@pytest.mark.parametrize("name,key,spec", RANGE_CASES, ids=[f"{n}:{k}" for n, k, _ in RANGE_CASES])
def test_out_of_range_value_is_a_one_line_error_naming_the_key(name, key, spec):
    schema = SCRIPT_SCHEMAS[name]
    default = config_to_flat(schema.defaults)[key]
    element = default[0] if isinstance(default, list) and spec != "schedule" else default
    bad, edge = _outside(spec, element)
    as_text = (lambda v: json.dumps([v] * len(default))) if element is not default else json.dumps
    cfg = load_config(schema, [f"--{key}", as_text(edge)])
    assert config_to_flat(cfg)[key] is not None  # the bound itself is accepted
    with pytest.raises(ConfigError) as info:
        load_config(schema, [f"--{key}", as_text(bad)])
    message = str(info.value)
    assert "\n" not in message and f"'{key}" in message and "expected" in message


@pytest.mark.parametrize("argv,key", [
    (["--train.steps", "-5"], "train.steps"),
    (["--train.lr_schedule", "[[5, 0.1]]"], "train.lr_schedule"),  # must start at step 0
    (["--train.lr_schedule", "[[0, 0.1], [9, 0.01], [9, 0.001]]"], "train.lr_schedule"),
    (["--train.lr_schedule", "[[0, 0.1], [9]]"], "train.lr_schedule"),
    (["--igam.beta", "-1"], "igam.beta"),
    (["--student.widths", "16,0,32,64"], "student.widths[1]"),
])
def test_igam_script_range_errors(argv, key):
    with pytest.raises(ConfigError, match=re.escape(f"config key '{key}' on the command line")):
        load_config(schemas.IGAM_SCHEMA, argv)


def test_range_error_in_a_file_names_the_file(tmp_path):
    bad = write(tmp_path / "bad.yaml", "train:\n  steps: 0\n")
    with pytest.raises(ConfigError, match=re.escape(f"config key 'train.steps' in {bad}: "
                                                    "expected an integer >= 1, got 0")):
        load_config(schemas.IGAM_SCHEMA, ["--config", bad])


def test_repeatable_list_key_accumulates_on_the_command_line(tmp_path):
    schema = schema_of({"model_dir": ["a"], "widths": [1, 2]}, repeatable=("model_dir",))
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model_dir: [from_file]\n")
    argv = ["--config", str(cfg_file), "--model_dir", "x", "--model_dir", "y,z",
            "--widths", "3", "--widths", "4"]
    cfg = load_config(schema, argv)
    assert cfg["model_dir"] == ["x", "y", "z"]      # replaces the file's list, in order
    assert cfg["widths"] == [4]                      # not repeatable: the last one wins
    assert load_config(schema, ["--config", str(cfg_file)])["model_dir"] == ["from_file"]
    with pytest.raises(ConfigError, match="needs a value"):
        load_config(schema, ["--model_dir", "x", "--model_dir"])


# ----------------------------------------------------------------------------------------------
# Declared keys: a Schema of Keys and the views derived from it

SCHEMA = Schema({
    "seed": Key(0, "RNG seed", range=">= 0"),
    "model_dir": Key(["a"], "models compared", repeatable=True),
    "train": {"batch_size": Key(32, "per process", range=">= 1"),
              "teacher_bn": Key("batch", "teacher BatchNorm", choices=["batch", "running"]),
              "attacks": Key(["pgd"], "attacks run", choices=("pgd", "fgsm"))},
}, name="TOY")


def test_schema_derives_the_plain_views():
    assert SCHEMA.defaults == {"seed": 0, "model_dir": ["a"],
                               "train": {"batch_size": 32, "teacher_bn": "batch",
                                         "attacks": ["pgd"]}}
    assert SCHEMA.choices == {"train.teacher_bn": ["batch", "running"],
                              "train.attacks": ["pgd", "fgsm"]}
    assert SCHEMA.ranges == {"seed": ">= 0", "train.batch_size": ">= 1"}
    assert SCHEMA.help["train.batch_size"] == "per process"
    assert SCHEMA.repeatable == ("model_dir",)
    assert list(SCHEMA.flat) == ["seed", "model_dir", "train.batch_size", "train.teacher_bn",
                                 "train.attacks"]
    assert SCHEMA.defaults["model_dir"] is not SCHEMA.flat["model_dir"].default  # a copy


def test_load_config_takes_a_schema():
    cfg = load_config(SCHEMA, ["--train.batch_size", "8", "--model_dir", "x",
                               "--model_dir", "y"])
    assert cfg == {"seed": 0, "model_dir": ["x", "y"],
                   "train": {"batch_size": 8, "teacher_bn": "batch", "attacks": ["pgd"]}}
    with pytest.raises(ConfigError, match="'train.batch_size' on the command line: expected an "
                                          "integer >= 1, got 0"):
        load_config(SCHEMA, ["--train.batch_size", "0"])
    with pytest.raises(ConfigError, match="one of pgd, fgsm"):
        load_config(SCHEMA, ["--train.attacks", "pgd,cw"])


def test_help_of_a_schema_shows_default_allowed_values_and_help(capsys):
    with pytest.raises(SystemExit):
        load_config(SCHEMA, ["--help"], prog="toy.py")
    out = capsys.readouterr().out
    assert out.startswith("usage: toy.py")
    assert "  --train.batch_size 32  (>= 1)\n      per process\n" in out
    assert '  --train.teacher_bn "batch"  (one of: batch, running)\n' in out
    assert "(each one of: pgd, fgsm)" in out
    assert "(repeatable: --model_dir A --model_dir B)" in out and "models compared" in out
    assert format_help(SCHEMA, prog="toy.py") == out


@pytest.mark.parametrize("keys, message", [
    ({"seed": Key(0, "")}, "help of config key 'seed'"),
    ({"seed": Key(0, "two\nlines")}, "help of config key 'seed'"),
    ({"train": {}}, "'train' is neither a Key"),
    ({"seed": 0}, "'seed' is neither a Key"),
    ({"bn": Key("x", "BN", choices=("batch",))}, "not among its CHOICES"),
    ({"steps": Key(0, "steps", range=">= 1")}, "outside its range"),
])
def test_bad_declaration_is_a_programming_error(keys, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Schema(keys)


# ----------------------------------------------------------------------------------------------
# --config FILE --help, --print-config, list lengths (issue #16, point 7)


def test_help_after_config_shows_the_files_values(tmp_path, capsys):
    file = tmp_path / "c.yaml"
    file.write_text("train:\n  batch_size: 64\nmodel_dir: [a, b]\n")
    with pytest.raises(SystemExit) as info:
        load_config(SCHEMA, ["--config", str(file), "--train.teacher_bn", "running", "--help"],
                    prog="toy.py")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "  --train.batch_size 64  (>= 1)\n" in out
    assert '  --train.teacher_bn "running"  (one of: batch, running)\n' in out
    assert '  --model_dir ["a", "b"]' in out
    assert f"value after --config {file}, the command line" in out
    with pytest.raises(SystemExit):
        load_config(SCHEMA, ["--help"], prog="toy.py")
    assert "  --train.batch_size 32  (>= 1)\n" in capsys.readouterr().out


def test_help_of_an_entry_script_after_its_config(capsys):
    from pathlib import Path

    from train_igam import main

    file = Path(__file__).resolve().parents[2] / "configs/igam_cifar10_to_cifar100.yaml"
    with pytest.raises(SystemExit) as info:
        main(["--config", str(file), "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    saved = load_yaml_file(file)
    assert saved["model_dir"] != schemas.IGAM_SCHEMA.defaults["model_dir"]
    assert f'  --model_dir "{saved["model_dir"]}"' in out


def test_print_config_prints_the_resolved_yaml(tmp_path, capsys):
    file = tmp_path / "c.yaml"
    file.write_text("train:\n  batch_size: 64\n")
    argv = ["--config", str(file), "--seed", "3", "--print-config"]
    with pytest.raises(SystemExit) as info:
        load_config(SCHEMA, argv)
    assert info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == load_config(SCHEMA, argv[:-1])
    assert printed["train"]["batch_size"] == 64 and printed["seed"] == 3


@pytest.mark.parametrize("argv", [["--model.widths", "8,8,16"],
                                  ["--model.widths", "[8, 8, 16, 32, 64]"]])
def test_wideresnet_widths_need_four_values(argv):
    with pytest.raises(ConfigError) as info:
        load_config(schemas.ADVTRAIN_SCHEMA, argv)
    msg = str(info.value)
    assert "'model.widths'" in msg and "a list of 4 values" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="'student.widths'.*4 values"):
        load_config(schemas.IGAM_SCHEMA, ["--student.widths", "8,8,16"])
    assert load_config(schemas.ADVTRAIN_SCHEMA, ["--model.widths", "4,4,8,16"])["model"][
        "widths"] == [4, 4, 8, 16]


def test_widths_count_in_a_file(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("model:\n  widths: [8, 8, 16]\n")
    with pytest.raises(ConfigError, match=f"'model.widths' in {file}: expected a list of 4"):
        load_config(schemas.ADVTRAIN_SCHEMA, ["--config", str(file)])


def test_length_declaration_must_fit_its_default():
    with pytest.raises(ValueError, match="not a list of 3 elements"):
        Schema({"w": Key([1, 2], "widths", length=3)})


def test_split_options_groups_the_tokens_as_load_config_reads_them():
    """One tokenizer for load_config and the "continue with" command (igam.run.stopping)."""
    from igam.run.config import split_options

    argv = ["--seed", "3", "--train.beta=1", "--resume", "--no-overwrite", "--help", "x",
            "-h", "--", "--print-config", "--model_dir", "--config", "c.yaml"]
    assert split_options(argv) == [
        (["--seed", "3"], "seed", "3"), (["--train.beta=1"], "train.beta", "1"),
        (["--resume"], "resume", None), (["--no-overwrite"], "no-overwrite", None),
        (["--help"], None, None), (["x"], None, None), (["-h"], None, None),
        (["--"], None, None), (["--print-config"], None, None),
        (["--model_dir"], "model_dir", None), (["--config", "c.yaml"], "config", "c.yaml")]
    assert [t for group, _, _ in split_options(argv) for t in group] == argv
