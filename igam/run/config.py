"""Configs of the entry scripts: schema defaults < YAML file(s) < command-line overrides.

Each entry script declares a :class:`Schema`: a nested dict whose leaves are :class:`Key`
declarations (default, one line of help, and optionally choices, range, repeatable) and whose
inner dicts are sections. The schema is the source of truth for the allowed keys, their types
(the type of the default), allowed values and help text; the views ``load_config`` works
with - the nested dict of defaults, the dotted ``choices``, ``ranges`` and help - are derived
from it (``SCHEMA.defaults``, ``SCHEMA.choices``, ...)::

    SCHEMA = Schema({
        "seed": Key(0, "seeds python, numpy and torch", range=">= 0"),
        "data": {"dataset": Key("cifar10", "the dataset", choices=("cifar10", "cifar100"))},
        "train": {"batch_size": Key(32, "per process", range=">= 1"),
                  "teacher_bn": Key("batch", "teacher BatchNorm", choices=("batch", "running"))},
    })
    cfg = load_config(SCHEMA, sys.argv[1:])

Command line: ``--config FILE`` (repeatable; later files win) and overrides ``--key value`` or
``--key=value`` with dotted keys for nested entries (``--train.batch_size 32``). Values are
parsed as YAML (``1e-3``, ``true``, ``null``, ``[1, 2]``); lists may also be written
``16,16,32,64``. A bool key given alone is a flag: ``--resume`` sets it true, ``--no-resume``
false. ``-h``/``--help`` lists every key with its default (after ``--config FILE``: the value the
files set), allowed values and help, and exits; ``--print-config`` prints the resolved config as
YAML and exits.
All files are applied before all command-line overrides.

Type rules, by the type of the default: bool takes only true/false; int only integers; float
takes ints and floats (and strings like ``1e-3`` that YAML 1.1 leaves as strings); str only
strings (on the command line the text is taken verbatim); a list takes a list whose elements
follow the type of the default's first element (any elements if the default list is empty);
a non-empty dict is a section whose keys are checked recursively; an empty dict is a free-form
mapping; a None default accepts anything. ``choices`` restricts a key (or every element of a
list key) to fixed values; ``range`` restricts a numeric key (or every element of a list key)
to a range, written ``">= 1"``, ``"> 0"`` or ``"[0, 1]"`` (closed interval), or ``"schedule"``:
[step, value] pairs whose steps start at 0 and strictly increase, every value > 0.

Every mistake raises :class:`igam.errors.ConfigError` with one line naming the key, where it
came from and what was expected, with a close match for unknown keys, e.g.
``unknown config key 'train.batchsize' in configs/igam.yaml (did you mean 'train.batch_size'?)``.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from igam.errors import ConfigError
from igam.run.files import atomic_write_text

CLI = "the command line"
RUN_CONFIG_NAME = "config.yaml"  # a run folder's config and checkpoint (igam.run.rundir)
RUN_CHECKPOINT_NAME = "checkpoint.pt"
_RESERVED = ("config", "help", "print_config", "print-config")

__all__ = [
    "Key",
    "Schema",
    "check_resume",
    "config_changes",
    "config_to_flat",
    "dump_config",
    "format_help",
    "load_config",
    "load_yaml_file",
    "merge_config",
    "save_config",
    "split_options",
]


# ----------------------------------------------------------------------------------------------
# YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping (PyYAML silently keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error(exc: yaml.YAMLError, where: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    position = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return ConfigError(f"{where} is not valid YAML: {problem}{position}")


def load_yaml_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file into a dict (an empty file gives ``{}``).

    Missing or unreadable files, syntax errors (with line and column), duplicate keys and a
    top level that is not a mapping raise ConfigError naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"cannot read config file {path}: {reason}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, f"config file {path}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of config keys at the top level, "
            f"got a {_type_name(data)}"
        )
    return data


def _plain(value: Any) -> Any:
    """Tuples -> lists, paths -> str, recursively, so configs dump to and load from YAML."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def dump_config(cfg: Mapping[str, Any]) -> str:
    """The config as YAML text (key order kept, short lists inline)."""
    return yaml.safe_dump(
        _plain(cfg), sort_keys=False, default_flow_style=None, allow_unicode=True, width=100
    )


def save_config(cfg: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write the resolved config to ``path`` as YAML, atomically; return the path.

    The file is a valid ``--config`` file for the same script (it reproduces ``cfg``).
    """
    path = Path(path)
    atomic_write_text(path, dump_config(cfg))
    return path


# ----------------------------------------------------------------------------------------------
# Flat views


def config_to_flat(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``. Empty dicts stay leaves."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(config_to_flat(value, name + "."))
        else:
            flat[name] = value
    return flat


def _all_keys(schema: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in schema.items():
        name = f"{prefix}{key}"
        keys.append(name)
        if _is_section(value):
            keys.extend(_all_keys(value, name + "."))
    return keys


def _is_section(default: Any) -> bool:
    return isinstance(default, Mapping) and len(default) > 0


# ----------------------------------------------------------------------------------------------
# Declared keys


@dataclass(frozen=True)
class Key:
    """One config key, declared once.

    ``default`` fixes the key's type (see the type rules in the module docstring); ``help`` is
    one line, shown by ``--help`` and in docs/config_keys.md; ``choices`` lists the allowed
    values (of every element of a list key); ``range`` is the allowed range of a numeric key
    (``">= 1"``, ``"> 0"``, ``"[0, 1]"``, ``"schedule"``); a ``repeatable`` list key
    accumulates its command-line occurrences (``--model_dir a --model_dir b`` gives
    ``[a, b]``, replacing the files' value) instead of the last one winning. A ``resumable``
    key may take another value when a run resumes (``--resume``), because it cannot alter the
    steps already made (more steps, log / checkpoint frequency, device, the final evaluation);
    any other change is refused (:func:`check_resume`). ``length`` fixes the number of
    elements of a list key (e.g. the WideResNet's 4 widths).
    """

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    range: str | None = None
    repeatable: bool = False
    resumable: bool = False
    length: int | None = None

    def __post_init__(self):
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))


def _flat_keys(keys: Mapping[str, Any], prefix: str = "") -> dict[str, Key]:
    flat: dict[str, Key] = {}
    for name, value in keys.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Key):
            flat[dotted] = value
        elif isinstance(value, Mapping) and value:
            flat.update(_flat_keys(value, dotted + "."))
        else:
            raise ValueError(f"config schema entry '{dotted}' is neither a Key nor a non-empty "
                             "section of Keys (a free-form mapping is Key({}, help))")
    return flat


def _nested_defaults(keys: Mapping[str, Any]) -> dict[str, Any]:
    return {name: copy.deepcopy(value.default) if isinstance(value, Key)
            else _nested_defaults(value) for name, value in keys.items()}


class Schema:
    """The declared config keys of one script or tool.

    ``keys`` is a nested dict: a :class:`Key` per leaf, a dict per section; its order is the
    order of ``--help``, of docs/config_keys.md and of a saved config. ``name``, ``commands``
    (the command lines that read the schema) and ``configs`` (the glob of its YAML files in
    ``configs/``) describe it for the docs and the tests.

    Derived views (what :func:`load_config` works with): ``flat`` (dotted key -> Key),
    ``defaults`` (the nested dict of defaults), and the dotted ``choices``, ``ranges``,
    ``help``, ``repeatable`` and ``resumable``. A default outside its choices or range, or a
    help text that is empty or not one line, raises ValueError when the schema is built.
    ``canonical`` (resolved config -> the same config written one way, e.g. a class subset)
    is applied before a resumed run's config is compared with its saved one.
    """

    def __init__(self, keys: Mapping[str, Any], *, name: str = "",
                 commands: Sequence[str] = (), configs: str = "",
                 canonical: Callable[[dict], dict] | None = None):
        self.keys = keys
        self.canonical = canonical or (lambda cfg: cfg)
        self.name = name
        self.commands = tuple(commands)
        self.configs = configs
        self.flat = _flat_keys(keys)
        self.defaults = _nested_defaults(keys)
        self.choices = {k: list(v.choices) for k, v in self.flat.items() if v.choices is not None}
        self.ranges = {k: v.range for k, v in self.flat.items() if v.range is not None}
        self.help = {k: v.help for k, v in self.flat.items()}
        self.repeatable = tuple(k for k, v in self.flat.items() if v.repeatable)
        self.resumable = tuple(k for k, v in self.flat.items() if v.resumable)
        self.lengths = {k: v.length for k, v in self.flat.items() if v.length is not None}
        for key, n in self.lengths.items():
            default = self.flat[key].default
            if not isinstance(default, (list, tuple)) or len(default) != n:
                raise ValueError(f"default of '{key}' is not a list of {n} elements")
        for key, text in self.help.items():
            if not isinstance(text, str) or not text.strip() or "\n" in text:
                raise ValueError(f"help of config key '{key}' must be one non-empty line")
        _validate_schema(self.defaults, self.choices, self.ranges)

    def __repr__(self) -> str:
        return f"Schema({self.name or '?'}: {len(self.flat)} keys)"


# ----------------------------------------------------------------------------------------------
# Type checking and merging


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57]) + "..."
    text = json.dumps(_plain(value)) if _jsonable(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(_plain(value))
    except (TypeError, ValueError):
        return False
    return True


def _where(source: str) -> str:
    return f"on {source}" if source == CLI else f"in {source}"


class _Context:
    """What the checker needs to word its messages."""

    def __init__(self, schema: Mapping[str, Any], source: str, choices: Mapping[str, Any],
                 ranges: Mapping[str, str] | None = None,
                 lengths: Mapping[str, int] | None = None):
        self.schema = schema
        self.source = source
        self.choices = choices
        self.ranges = ranges or {}
        self.lengths = lengths or {}

    def bad(self, key: str, expected: str, value: Any, hint: str = "") -> ConfigError:
        return ConfigError(
            f"config key '{key}' {_where(self.source)}: expected {expected}, "
            f"got {_show(value)}{hint}"
        )

    def unknown(self, key: str) -> ConfigError:
        candidates = _all_keys(self.schema)
        suffix = [c for c in candidates if c.endswith("." + key.split(".")[-1]) and c != key]
        close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
        match = close[0] if close else (suffix[0] if len(suffix) == 1 else None)
        hint = f" (did you mean '{match}'?)" if match else ""
        return ConfigError(f"unknown config key '{key}' {_where(self.source)}{hint}")


def _coerce(value: Any, default: Any, key: str, ctx: _Context) -> Any:
    """Check ``value`` against the type of ``default``; return the value to store."""
    if default is None:
        return copy.deepcopy(_plain(value))
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ctx.bad(key, "true or false", value)
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ctx.bad(key, "an integer", value)
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ctx.bad(key, "a number", value)
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        hint = " (quote it to make it a string)" if isinstance(value, (bool, int, float)) else ""
        raise ctx.bad(key, "a string", value, hint)
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise ctx.bad(key, "a list", value)
        element_default = default[0] if len(default) else None
        return [_coerce(v, element_default, f"{key}[{i}]", ctx) for i, v in enumerate(value)]
    if isinstance(default, Mapping):
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ctx.bad(key, "a mapping", value)
        return copy.deepcopy(_plain(value))
    raise ValueError(f"config schema default of '{key}' has unsupported type {_type_name(default)}")


def _check_choice(key: str, value: Any, ctx: _Context) -> None:
    if key not in ctx.choices:
        return
    allowed = list(ctx.choices[key])
    for item in value if isinstance(value, list) else [value]:
        if item in allowed:
            continue
        options = ", ".join(str(a) for a in allowed)
        close = difflib.get_close_matches(str(item), [str(a) for a in allowed], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"config key '{key}' {_where(ctx.source)}: expected one of {options}, "
            f"got {_show(item)}{hint}"
        )


def _range_test(spec: str) -> Callable[[Any], bool]:
    """The predicate of a RANGES entry (see the module docstring); ValueError if malformed."""
    text = spec.replace(" ", "")
    if text == "schedule":
        return _is_schedule
    if text.startswith("[") and text.endswith("]") and text.count(",") == 1:
        lo, hi = (float(v) for v in text[1:-1].split(","))
        return lambda v: lo <= v <= hi
    for op, test in ((">=", lambda v, b: v >= b), (">", lambda v, b: v > b)):
        if text.startswith(op):
            bound = float(text[len(op):])
            return lambda v, test=test, bound=bound: test(v, bound)
    raise ValueError(f"RANGES entry {spec!r} is not '>= x', '> x', '[a, b]' or 'schedule'")


def _is_schedule(value: Any) -> bool:
    if not isinstance(value, list) or not value:
        return False
    if not all(isinstance(p, list) and len(p) == 2 for p in value):
        return False
    steps = [p[0] for p in value]
    return (steps[0] == 0 and all(a < b for a, b in zip(steps, steps[1:]))
            and all(p[1] > 0 for p in value))


def _range_words(spec: str, value: Any) -> str:
    if spec.replace(" ", "") == "schedule":
        return ("a list of [step, value] pairs whose steps start at 0 and strictly increase, "
                "every value > 0")
    kind = "an integer" if isinstance(value, int) and not isinstance(value, bool) else "a number"
    spec = spec.strip()
    return f"{kind} in {spec}" if spec.startswith("[") else f"{kind} {spec}"


def _check_range(key: str, value: Any, ctx: _Context) -> None:
    spec = ctx.ranges.get(key)
    if spec is None:
        return
    test = _range_test(spec)
    if spec.replace(" ", "") == "schedule":
        if not test(value):
            raise ctx.bad(key, _range_words(spec, value), value)
        return
    items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    for index, item in items:
        if not test(item):
            name = key if index is None else f"{key}[{index}]"
            raise ctx.bad(name, _range_words(spec, item), item)


def _check_length(key: str, value: Any, ctx: _Context) -> None:
    n = ctx.lengths.get(key)
    if n is not None and isinstance(value, list) and len(value) != n:
        raise ctx.bad(key, f"a list of {n} values", value, f" ({len(value)} values)")


def _merge_into(
    cfg: dict[str, Any],
    update: Mapping[str, Any],
    schema: Mapping[str, Any],
    prefix: str,
    ctx: _Context,
) -> None:
    for raw_key, value in update.items():
        key = str(raw_key)
        name = f"{prefix}{key}"
        if key not in schema:
            raise ctx.unknown(name)
        default = schema[key]
        if _is_section(default):
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ctx.bad(name, "a mapping (a section of keys)", value)
            _merge_into(cfg[key], value, default, name + ".", ctx)
            continue
        value = _coerce(value, default, name, ctx)
        if isinstance(default, Mapping) and isinstance(cfg.get(key), Mapping):
            value = _deep_update(copy.deepcopy(dict(cfg[key])), value)  # free-form: merge
        cfg[key] = value
        _check_choice(name, cfg[key], ctx)
        _check_range(name, cfg[key], ctx)
        _check_length(name, cfg[key], ctx)


def _deep_update(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            base[key] = _deep_update(dict(base[key]), value)
        else:
            base[key] = value
    return base


def merge_config(
    cfg: Mapping[str, Any],
    update: Mapping[str, Any],
    schema: Mapping[str, Any],
    source: str,
    choices: Mapping[str, Sequence[Any]] | None = None,
    ranges: Mapping[str, str] | None = None,
    lengths: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Return a copy of ``cfg`` with the nested ``update`` applied, checked against ``schema``
    (types), ``choices``, ``ranges`` and ``lengths`` (the element count of list keys).

    ``source`` names where ``update`` came from in error messages (a file path, or
    ``igam.run.config.CLI``).
    """
    result = copy.deepcopy(dict(cfg))
    _merge_into(result, update, schema, "",
                _Context(schema, source, choices or {}, ranges, lengths))
    return result


# ----------------------------------------------------------------------------------------------
# Command line


def _schema_default(schema: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    """(found, default) for a dotted key; keys inside a free-form mapping have default None."""
    node: Any = schema
    for part in dotted.split("."):
        if isinstance(node, Mapping) and not node:  # free-form mapping: anything goes below
            return True, None
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _parse_cli_value(raw: str, default: Any) -> Any:
    """Parse the text of ``--key TEXT`` according to the default's type."""
    if isinstance(default, str):
        return raw
    if isinstance(default, (list, tuple)):
        text = raw.strip()
        element = default[0] if len(default) else None
        if text.startswith("["):
            try:
                return yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise _yaml_error(exc, f"the value {text!r} on the command line") from None
        if text == "":
            return []
        parts = [p.strip() for p in text.split(",")]
        if isinstance(element, str):
            return parts
        return [_parse_scalar(p) for p in parts]
    if isinstance(default, Mapping):
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise _yaml_error(exc, f"the value {raw!r} on the command line") from None
    return _parse_scalar(raw)


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    parts = dotted.split(".")
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


_STANDALONE = ("-h", "--help", "--print-config", "--print_config")  # never take a value


def split_options(tokens: Sequence[str]) -> list[tuple[list[str], str | None, str | None]]:
    """Group command-line tokens as :func:`load_config` reads them: a list of ``(tokens of the
    item, key, raw value)``. ``--key value`` and ``--key=value`` give the key as written
    (without ``--``) and its text; ``--key`` followed by another option or by nothing is a
    bare flag (raw value None). ``-h``, ``--help`` and ``--print-config`` stand alone (key
    None); so does any other token that is not an option (a stray value, ``--``)."""
    tokens = list(tokens)
    out: list[tuple[list[str], str | None, str | None]] = []
    index = 0
    while index < len(tokens):
        token, end = tokens[index], index + 1
        key = raw = None
        if token.startswith("--") and token != "--" and token not in _STANDALONE:
            body = token[2:]
            if "=" in body:
                key, raw = body.split("=", 1)
            elif end < len(tokens) and not tokens[end].startswith("--"):
                key, raw = body, tokens[end]
                end += 1
            else:
                key = body
        out.append((tokens[index:end], key, raw))
        index = end
    return out


def _split_argv(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str | None]], bool, bool]:
    """Split argv into config files, (key, raw value or None for a bare flag), help and
    print-config."""
    files: list[str] = []
    items: list[tuple[str, str | None]] = []
    want_help = want_print = False
    for group, key, raw in split_options(argv):
        if key is None:
            token = group[0]
            if token in ("-h", "--help"):
                want_help = True
                continue
            if token in ("--print-config", "--print_config"):
                want_print = True
                continue
            raise ConfigError(
                f"unexpected command-line argument {token!r}; options look like "
                "--key value or --key=value"
            )
        if key == "config":
            if raw is None or raw == "":
                raise ConfigError("--config on the command line needs a file name")
            files.append(raw)
        else:
            items.append((key, raw))
    return files, items, want_help, want_print


def _cli_update(
    key: str, raw: str | None, schema: Mapping[str, Any], ctx: _Context
) -> dict[str, Any]:
    """Turn one command-line item into a nested update dict."""
    found, default = _schema_default(schema, key)
    if not found and "-" in key:
        alt = key.replace("-", "_")
        found, default = _schema_default(schema, alt)
        key = alt if found else key
    if raw is None:
        if found and isinstance(default, bool):
            return _nest(key, True)
        for prefix in ("no-", "no_"):
            if not found and key.startswith(prefix):
                base = key[len(prefix) :]
                base_found, base_default = _schema_default(schema, base)
                if not base_found and "-" in base:
                    base = base.replace("-", "_")
                    base_found, base_default = _schema_default(schema, base)
                if base_found and isinstance(base_default, bool):
                    return _nest(base, False)
                if base_found:
                    raise ConfigError(
                        f"--{key} on the command line: --no- works only for true/false keys, "
                        f"and '{base}' is not one"
                    )
        if not found:
            raise ctx.unknown(key)
        raise ConfigError(f"--{key} on the command line needs a value")
    if not found:
        raise ctx.unknown(key)
    return _nest(key, _parse_cli_value(raw, default))


def _validate_schema(schema: Mapping[str, Any], choices: Mapping[str, Sequence[Any]],
                     ranges: Mapping[str, str]) -> None:
    for reserved in _RESERVED:
        if reserved in schema:
            raise ValueError(f"config schema may not define the key '{reserved}'")
    for key, allowed in choices.items():
        _, default = _schema_default(schema, key)
        for item in default if isinstance(default, (list, tuple)) else [default]:
            if item is not None and item not in list(allowed):
                raise ValueError(f"default {item!r} of '{key}' is not among its CHOICES")
    for key, spec in ranges.items():
        _, default = _schema_default(schema, key)
        try:
            _check_range(key, _plain(default), _Context(schema, "the schema", {}, ranges))
        except ConfigError:
            raise ValueError(f"default {default!r} of '{key}' is outside its range {spec!r}") \
                from None


def _allowed(key: str, default: Any, choices: Mapping[str, Sequence[Any]],
             ranges: Mapping[str, str], repeatable: Sequence[str]) -> list[str]:
    """The allowed values of a key in words: choices, range, repeatable."""
    words = []
    if key in choices:
        each = "each " if isinstance(default, (list, tuple)) else ""
        words.append(f"{each}one of: "
                     + ", ".join(str(c) if c != "" else '""' for c in choices[key]))
    if key in ranges:
        spec = ranges[key].strip()
        words.append("a schedule: steps from 0, increasing; values > 0"
                     if spec.replace(" ", "") == "schedule" else spec)
    if key in repeatable:
        words.append(f"repeatable: --{key} A --{key} B")
    return words


def format_help(
    schema: Schema,
    *,
    prog: str | None = None,
    description: str | None = None,
    values: Mapping[str, Any] | None = None,
    sources: Sequence[str] = (),
) -> str:
    """The ``--help`` text of ``schema``: usage, then every config key with its default (as
    YAML/JSON), its allowed values (choices, range, repeatable, length) and its help line.
    ``values``: the config after the ``sources`` (the ``--config`` files and overrides given
    with ``--help``), shown in place of the schema defaults."""
    prog = prog or Path(sys.argv[0]).name or "script"
    lines = [f"usage: {prog} [-h] [--config FILE] [--KEY VALUE | --KEY=VALUE ...]", ""]
    if description:
        lines += [description.strip(), ""]
    lines += [
        "options:",
        "  -h, --help          show this help and exit (after --config FILE: with the values",
        "                      the files set)",
        "  --config FILE       YAML file of config values (repeatable; later files win)",
        "  --print-config      print the resolved config as YAML and exit",
        "",
    ]
    if values is not None and sources:
        lines += ["config keys, each with its value after " + ", ".join(sources) + ","]
    else:
        lines += ["config keys, each with its default,"]
    lines += [
        "(allowed values) and help (override with --key value; nested keys are dotted; a bool",
        "key alone is a flag: --key / --no-key; lists as 1,2,3 or [1,2,3]):",
        "",
    ]
    shown = config_to_flat(values) if values is not None else {}
    for key, value in config_to_flat(schema.defaults).items():
        value = shown.get(key, value)
        text = json.dumps(_plain(value)) if _jsonable(value) else repr(value)
        line = f"  --{key} {text}"
        allowed = _allowed(key, value, schema.choices, schema.ranges, schema.repeatable)
        if key in schema.lengths:
            allowed.append(f"{schema.lengths[key]} values")
        if allowed:
            line += "  (" + "; ".join(allowed) + ")"
        lines.append(line)
        if schema.help.get(key):
            lines += textwrap.wrap(schema.help[key], width=96, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6, break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def load_config(
    schema: Schema,
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """Resolve a config: the ``schema``'s defaults < each ``--config`` file in order <
    command-line overrides.

    The :class:`Schema` carries the keys' defaults, choices, ranges, lengths, help and
    repeatable keys (whose command-line occurrences accumulate: ``--model_dir a --model_dir
    b`` gives ``[a, b]``, replacing the files' value, instead of the last one winning).
    ``argv`` defaults to ``sys.argv[1:]``; ``--help`` prints :func:`format_help` (with the
    values after the ``--config`` files and overrides given beside it) and raises
    ``SystemExit(0)``;
    ``--print-config`` prints the resolved config as YAML (:func:`dump_config`) and raises
    ``SystemExit(0)``.
    Returns a fresh nested dict (tuples in the defaults become lists). Invalid input raises
    :class:`ConfigError` (see the module docstring).

    Resuming (a schema with ``resume``, ``resume`` true, ``<model_dir>/config.yaml`` present):
    the run's saved config replaces the defaults as the base, so ``--resume --model_dir DIR``
    alone continues the run as it was; files and command line apply on top, and with a
    checkpoint in the folder any change of a key not declared ``resumable`` is refused
    (:func:`check_resume`) before anything is written.
    """
    defaults, choices, ranges = schema.defaults, schema.choices, schema.ranges
    lengths, repeatable = schema.lengths, schema.repeatable
    files, items, want_help, want_print = _split_argv(sys.argv[1:] if argv is None else argv)

    def resolve(base: dict[str, Any]) -> dict[str, Any]:
        cfg = base
        for file in files:
            cfg = merge_config(cfg, load_yaml_file(file), defaults, str(file), choices, ranges,
                               lengths)
        ctx = _Context(defaults, CLI, choices, ranges, lengths)
        gathered: dict[str, list[Any]] = {}
        for key, raw in items:
            if key in repeatable and raw is not None:
                value = _cli_update(key, raw, defaults, ctx)
                for part in key.split("."):
                    value = value[part]
                gathered.setdefault(key, []).extend(value if isinstance(value, list) else [value])
                update = _nest(key, list(gathered[key]))
            else:
                update = _cli_update(key, raw, defaults, ctx)
            cfg = merge_config(cfg, update, defaults, CLI, choices, ranges, lengths)
        return cfg

    cfg = resolve(_plain(copy.deepcopy(dict(defaults))))
    if want_help:
        sources = [f"--config {f}" for f in files] + (["the command line"] if items else [])
        sys.stdout.write(format_help(schema, prog=prog, description=description, values=cfg,
                                     sources=sources))
        sys.stdout.flush()
        raise SystemExit(0)
    saved = _resumed_run_config(cfg, defaults, choices, ranges, lengths)
    if saved is not None:  # the run's own config is the base; files and command line on top
        cfg = resolve(saved)
        saved, cfg = schema.canonical(saved), schema.canonical(cfg)
        check_resume(saved, cfg, schema.resumable, cfg["model_dir"])
    if want_print:
        sys.stdout.write(dump_config(cfg))
        sys.stdout.flush()
        raise SystemExit(0)
    return cfg


def _resumed_run_config(cfg: Mapping[str, Any], defaults: Mapping[str, Any], choices,
                        ranges, lengths=None) -> dict[str, Any] | None:
    """The resolved config saved in the run folder that ``cfg`` resumes (``resume`` true and
    ``<model_dir>/config.yaml`` present), or None."""
    if not (cfg.get("resume") is True and isinstance(cfg.get("model_dir"), str)):
        return None
    path = Path(cfg["model_dir"]) / RUN_CONFIG_NAME
    if not path.is_file():
        return None
    base = _plain(copy.deepcopy(dict(defaults)))
    saved = merge_config(base, load_yaml_file(path), defaults, str(path), choices, ranges,
                         lengths)
    # how the run was started (--overwrite, --resume) is not part of its config: a run begun
    # with --overwrite continues with --resume alone
    saved.update({k: defaults[k] for k in ("overwrite", "resume") if k in defaults})
    return saved


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old value, new value)}`` for every key whose value differs."""
    a, b = config_to_flat(old), config_to_flat(new)
    return {k: (a.get(k), b.get(k)) for k in list(a) + [k for k in b if k not in a]
            if a.get(k) != b.get(k)}


def check_resume(saved: Mapping[str, Any], cfg: Mapping[str, Any], resumable: Sequence[str],
                 model_dir: str) -> None:
    """ConfigError if ``cfg`` continues the run whose saved config is ``saved`` (and which
    holds a checkpoint) with another value of a key that is not ``resumable``: the steps
    already made would then belong to another config. Names each such key with both values.
    A run folder without a checkpoint starts afresh, so anything may change there."""
    if not (Path(model_dir) / RUN_CHECKPOINT_NAME).is_file():
        return
    refused = {k: v for k, v in config_changes(saved, cfg).items() if k not in resumable}
    if refused:
        changes = ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in refused.items())
        raise ConfigError(
            f"cannot resume {model_dir} with another {changes} than the run was started with "
            f"({Path(model_dir) / RUN_CONFIG_NAME}); a resume may change only keys that cannot "
            "alter the steps already made (docs/config_keys.md, 'on resume'): drop these "
            "overrides (--resume --model_dir DIR alone continues the run as it was), or start "
            "a new run (another model_dir, or --overwrite)")
