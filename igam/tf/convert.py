"""Import the original TensorFlow checkpoints (Madry's ``adv_trained``, IGAM releases).

``model_from_tf(variables, arch, **overrides)`` builds the port module for one of the
original networks from a ``{tf variable name: numpy array}`` dict (see
:func:`igam.tf.reader.read_tf_checkpoint`). Widths, units per stage, class counts and the
discriminator's depth / base channels / image size are inferred from the variable shapes.

``arch`` (which original graph the variables come from):

======================== ============ ================= =====================================
arch                     TF prefix    standardisation   module
======================== ============ ================= =====================================
``igam_student``         classifier/  zero_mean_l2      WideResNet (IGAM student)
``madry``                (none)       per_image         WideResNet (Madry CIFAR-10 model)
``madry_teacher``        (none)       per_image         Teacher (+ ``target_task_logit``)
``tiny_source``          (none)       zero_mean_l2      WideResNet, 64x64 TinyImageNet
``tiny_teacher_upresize``(none)       l2 (target side)  Teacher, 32 -> 64 legacy bilinear
``discriminator``        discriminator/ zero_mean_l2    InputGradientDiscriminator
======================== ============ ================= =====================================

Layouts (original.md §2): conv kernels HWIO -> OIHW; FC weights [in, out] -> [out, in];
``contrib.layers.batch_norm`` gamma/beta/moving_mean/moving_variance -> BatchNorm
weight/bias/running_mean/running_var. The discriminator's FC layers see NHWC-flattened maps in
TF; the port's discriminator flattens in NHWC order itself, so its weights need no row
permutation. An IGAM release checkpoint holds the student (``classifier/``), the teacher (no
prefix) and the discriminator (``discriminator/``) together: each arch takes its own part.
Optimiser slots (``.../Momentum``, ``.../Adam``, ``beta1_power``...) and ``global_step`` are
ignored; any other unknown or any missing variable raises CheckpointError listing them.

Command line: ``python -m igam.tf.convert --tf_checkpoint PATH --arch ARCH --out models/NAME``
writes ``models/NAME/checkpoint.pt``, a port checkpoint the scripts load like their own.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from igam.errors import CheckpointError, ConfigError
from igam.models import InputGradientDiscriminator, Teacher, WideResNet

ARCHS = (
    "igam_student",
    "madry",
    "madry_teacher",
    "tiny_source",
    "tiny_teacher_upresize",
    "discriminator",
)

# arch -> (TF scope prefix, default standardisation of the source network)
_WRN_ARCHS = {
    "igam_student": ("classifier/", "zero_mean_l2"),
    "madry": ("", "per_image"),
    "madry_teacher": ("", "per_image"),
    "tiny_source": ("", "zero_mean_l2"),
    "tiny_teacher_upresize": ("", "zero_mean_l2"),
}
_TEACHERS = {"madry_teacher", "tiny_teacher_upresize"}
# defaults of Teacher(...) per teacher arch (original.md §3)
_TEACHER_DEFAULTS = {
    "madry_teacher": {"upresize_to": None, "standardization": None, "bn": "batch"},
    "tiny_teacher_upresize": {"upresize_to": 64, "standardization": "l2", "bn": "batch"},
}
_OTHER_MODEL_PREFIXES = ("classifier/", "discriminator/")

_OPTIMIZER_SLOT = re.compile(
    r"(^|/)(global_step|beta1_power(_\d+)?|beta2_power(_\d+)?)$"
    r"|/(Momentum|Adam|Adam_1|RMSProp|RMSProp_1|Adagrad|ExponentialMovingAverage)(_\d+)?$"
)
# Non-weight variables the original creates in some configurations (perturbation variables of
# use_pert, the discriminator's assign-able inputs when built without input tensors).
_AUXILIARY = re.compile(r"(^|/)input/(instance_perturbation|x_modelgrad_input|y_modelgrad_input)$")

_BN_FIELDS = (
    ("gamma", "weight"),
    ("beta", "bias"),
    ("moving_mean", "running_mean"),
    ("moving_variance", "running_var"),
)

Transform = Callable[[np.ndarray], np.ndarray]


def _hwio_to_oihw(a: np.ndarray) -> np.ndarray:
    return a.transpose(3, 2, 0, 1)


def _fc(a: np.ndarray) -> np.ndarray:
    return a.T


def _same(a: np.ndarray) -> np.ndarray:
    return a


def is_ignored(name: str) -> bool:
    """True for optimiser slots, ``global_step`` and auxiliary non-weight variables."""
    return bool(_OPTIMIZER_SLOT.search(name) or _AUXILIARY.search(name))


def _names(items: Sequence[str], limit: int = 6) -> str:
    items = sorted(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _shape(variables: Mapping[str, np.ndarray], name: str, ndim: int) -> Tuple[int, ...]:
    if name not in variables:
        raise CheckpointError(f"checkpoint has no variable {name!r} (wrong --arch or prefix?)")
    shape = tuple(np.shape(variables[name]))
    if len(shape) != ndim:
        raise CheckpointError(f"variable {name!r} has shape {shape}, expected {ndim} dimensions")
    return shape


# --------------------------------------------------------------------------------------------
# WideResNet
# --------------------------------------------------------------------------------------------


def _wrn_mapping(
    prefix: str, units: int, module_prefix: str = ""
) -> Dict[str, Tuple[str, Transform]]:
    """TF name -> (state_dict key, transform) for a WideResNet with ``units`` per stage."""
    m: Dict[str, Tuple[str, Transform]] = {
        f"{prefix}input/init_conv/DW": (f"{module_prefix}init_conv.weight", _hwio_to_oihw),
        f"{prefix}logit/DW": (f"{module_prefix}fc.weight", _fc),
        f"{prefix}logit/biases": (f"{module_prefix}fc.bias", _same),
    }

    def bn(tf_scope: str, key: str) -> None:
        for tf_field, pt_field in _BN_FIELDS:
            m[f"{prefix}{tf_scope}/BatchNorm/{tf_field}"] = (
                f"{module_prefix}{key}.{pt_field}",
                _same,
            )

    for s in range(3):
        for u in range(units):
            scope = f"unit_{s + 1}_{u}"
            key = f"stages.{s}.{u}"
            act = "shared_activation" if (s == 0 and u == 0) else "residual_only_activation"
            bn(f"{scope}/{act}", f"{key}.bn1")
            m[f"{prefix}{scope}/sub1/conv1/DW"] = (
                f"{module_prefix}{key}.conv1.weight",
                _hwio_to_oihw,
            )
            bn(f"{scope}/sub2", f"{key}.bn2")
            m[f"{prefix}{scope}/sub2/conv2/DW"] = (
                f"{module_prefix}{key}.conv2.weight",
                _hwio_to_oihw,
            )
    bn("unit_last", "final_bn")
    return m


def _infer_wrn(variables: Mapping[str, np.ndarray], prefix: str) -> Dict[str, Any]:
    """widths, units_per_stage and num_classes of the WRN under ``prefix``."""
    init = _shape(variables, f"{prefix}input/init_conv/DW", 4)
    unit_re = re.compile(re.escape(prefix) + r"unit_([123])_(\d+)/")
    units: Dict[int, set] = {1: set(), 2: set(), 3: set()}
    for name in variables:
        mt = unit_re.match(name)
        if mt:
            units[int(mt.group(1))].add(int(mt.group(2)))
    counts = {s: len(u) for s, u in units.items()}
    if counts[1] == 0:
        raise CheckpointError(
            f"checkpoint has no residual units {prefix}unit_1_* (wrong --arch or prefix?)"
        )
    if len(set(counts.values())) != 1 or any(u != set(range(counts[1])) for u in units.values()):
        raise CheckpointError(
            f"residual units under {prefix!r} are not the same number 0..n-1 in every stage: "
            + ", ".join(f"stage {s}: {sorted(u)}" for s, u in units.items())
        )
    widths = [init[3]]
    for s in range(3):
        widths.append(_shape(variables, f"{prefix}unit_{s + 1}_0/sub1/conv1/DW", 4)[3])
    num_classes = _shape(variables, f"{prefix}logit/DW", 2)[1]
    return {"widths": widths, "units_per_stage": counts[1], "num_classes": num_classes}


# --------------------------------------------------------------------------------------------
# Discriminator
# --------------------------------------------------------------------------------------------


def _count(variables: Mapping[str, np.ndarray], pattern: str) -> int:
    rx = re.compile(pattern)
    found = sorted({int(m.group(1)) for n in variables for m in [rx.match(n)] if m})
    if found != list(range(len(found))):
        raise CheckpointError(f"layers {found} of {pattern!r} are not numbered 0..n-1")
    return len(found)


def _infer_discriminator(
    variables: Mapping[str, np.ndarray], prefix: str, overrides: Mapping[str, Any]
) -> Dict[str, Any]:
    n_conv = _count(variables, re.escape(prefix) + r"conv(\d+)/DW$")
    n_fc = _count(variables, re.escape(prefix) + r"fc(\d+)/DW$")
    logit_in = _shape(variables, f"{prefix}logit/DW", 2)[0]
    std = overrides.get("standardization", "zero_mean_l2")
    if n_fc and n_conv:
        raise CheckpointError(f"discriminator under {prefix!r} has both conv and fc layers")
    if n_fc:
        fc0_in, base = _shape(variables, f"{prefix}fc0/DW", 2)
        size = math.isqrt(fc0_in // 3)
        if 3 * size * size != fc0_in:
            raise CheckpointError(f"{prefix}fc0/DW has {fc0_in} inputs, not 3 * S * S")
        if "image_size" in overrides and int(overrides["image_size"]) != size:
            raise CheckpointError(
                f"{prefix}fc0/DW fits {size}x{size} inputs, not "
                f"image_size={overrides['image_size']}"
            )
        return {
            "image_size": size,
            "num_conv_layers": 5,
            "base_channels": base,
            "only_fully_connected": True,
            "num_fc_layers": n_fc,
            "avg_pool": False,
            "standardization": std,
        }
    if not n_conv:
        raise CheckpointError(
            f"checkpoint has no discriminator layers {prefix}conv0/DW or "
            f"{prefix}fc0/DW (wrong --arch?)"
        )
    base = _shape(variables, f"{prefix}conv0/DW", 4)[3]
    last = base * 2 ** (n_conv - 1)
    if logit_in % last:
        raise CheckpointError(
            f"{prefix}logit/DW has {logit_in} inputs, not a multiple of the "
            f"last conv's {last} channels"
        )
    ratio = logit_in // last
    image_size = overrides.get("image_size")
    if ratio == 1:
        # A 1x1 final map or a global average pool: both give `last` features. Which one is
        # decided by the image size (default 32: input gradients of CIFAR-size images).
        image_size = int(image_size or 32)
        final = image_size
        for _ in range(n_conv):
            final = -(-final // 2)
        avg_pool = bool(overrides.get("avg_pool", final > 1))
    else:
        side = math.isqrt(ratio)
        if side * side != ratio:
            raise CheckpointError(f"{prefix}logit/DW inputs {logit_in} are not {last} x S x S")
        if overrides.get("avg_pool"):
            raise CheckpointError(f"avg_pool=True but {prefix}logit/DW expects a {side}x{side} map")
        if image_size is None:
            image_size = side * 2**n_conv
        final = int(image_size)
        for _ in range(n_conv):
            final = -(-final // 2)
        if final != side:
            raise CheckpointError(
                f"image_size={image_size} gives a {final}x{final} final map, "
                f"but {prefix}logit/DW expects {side}x{side}"
            )
        avg_pool = False
    return {
        "image_size": int(image_size),
        "num_conv_layers": n_conv,
        "base_channels": base,
        "only_fully_connected": False,
        "num_fc_layers": 3,
        "avg_pool": avg_pool,
        "standardization": std,
    }


def _discriminator_mapping(prefix: str, cfg: Mapping[str, Any]) -> Dict[str, Tuple[str, Transform]]:
    m: Dict[str, Tuple[str, Transform]] = {
        f"{prefix}logit/DW": ("logit.weight", _fc),
        f"{prefix}logit/biases": ("logit.bias", _same),
    }
    if cfg["only_fully_connected"]:
        n = cfg["num_fc_layers"]
        for i in range(n):
            m[f"{prefix}fc{i}/DW"] = (f"fcs.{i}.weight", _fc)
            m[f"{prefix}fc{i}/biases"] = (f"fcs.{i}.bias", _same)
    else:
        n = cfg["num_conv_layers"]
        for i in range(n):
            m[f"{prefix}conv{i}/DW"] = (f"convs.{i}.weight", _hwio_to_oihw)
            m[f"{prefix}conv{i}/biases"] = (f"convs.{i}.bias", _same)
    for i in range(n):
        # contrib batch_norm under tf.name_scope('bn{i}') inside variable_scope('discriminator'):
        # name scopes do not affect variable names, so they are BatchNorm, BatchNorm_1, ...
        scope = "BatchNorm" if i == 0 else f"BatchNorm_{i}"
        for tf_field, pt_field in _BN_FIELDS:
            m[f"{prefix}{scope}/{tf_field}"] = (f"bns.{i}.{pt_field}", _same)
    return m


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _in_namespace(name: str, prefix: str) -> bool:
    if prefix:
        return name.startswith(prefix)
    return not name.startswith(_OTHER_MODEL_PREFIXES)


def _load(
    module: nn.Module,
    variables: Mapping[str, np.ndarray],
    mapping: Mapping[str, Tuple[str, Transform]],
    prefix: str,
    arch: str,
    dropped: Sequence[str] = (),
) -> nn.Module:
    """Check names (missing / unknown) and shapes, then copy the arrays into ``module``."""
    where = f"arch {arch!r}" + (f" (prefix {prefix!r})" if prefix else "")
    missing = [n for n in mapping if n not in variables]
    unknown = [
        n
        for n in variables
        if _in_namespace(n, prefix)
        and n not in mapping
        and not is_ignored(n)
        and not any(n.startswith(d) for d in dropped)
    ]
    if missing:
        raise CheckpointError(
            f"TF checkpoint lacks {len(missing)} variables of {where}: {_names(missing)}"
        )
    if unknown:
        raise CheckpointError(
            f"TF checkpoint has {len(unknown)} variables that {where} does not "
            f"use: {_names(unknown)}"
        )
    state = module.state_dict()
    new_state = dict(state)
    bad = []
    for tf_name, (key, transform) in mapping.items():
        array = np.asarray(variables[tf_name])
        if array.dtype.kind != "f":
            raise CheckpointError(f"variable {tf_name!r} has dtype {array.dtype}, expected float")
        value = np.ascontiguousarray(transform(array))
        target = state[key]
        if tuple(value.shape) != tuple(target.shape):
            bad.append(f"{tf_name} {tuple(array.shape)} -> {key} {tuple(target.shape)}")
            continue
        new_state[key] = torch.from_numpy(value.astype(np.float64)).to(target.dtype)
    if bad:
        raise CheckpointError(f"TF variable shapes do not fit {where}: {_names(bad, 3)}")
    module.load_state_dict(new_state, strict=True)
    return module


def model_from_tf(variables: Mapping[str, np.ndarray], arch: str, **overrides: Any) -> nn.Module:
    """Build the port module for the original network ``arch`` from TF variables.

    Args:
        variables: ``{tf variable name: numpy array}`` (e.g. from
            :func:`igam.tf.reader.read_tf_checkpoint`); may hold other models and optimiser
            slots too (an IGAM release holds student, teacher and discriminator).
        arch: one of :data:`ARCHS` (see the module docstring).
        overrides: ``prefix`` (TF scope, e.g. ``"classifier/"``), ``standardization`` (of the
            WRN / the discriminator input), for teachers ``upresize_to``,
            ``target_standardization`` (the target-side standardisation; ``None`` = the
            source's) and ``bn`` ('batch' | 'running' | None), for the discriminator
            ``image_size`` and ``avg_pool`` (only needed when the shapes cannot tell).

    Returns:
        ``WideResNet`` (NCHW float [0, 255] -> logits), ``Teacher`` (``forward`` -> target
        logits, ``source_logits`` -> source logits) or ``InputGradientDiscriminator``
        (``forward(g_student, g_teacher)`` -> (2B, 2) logits, student rows first), float32,
        in train mode (call ``.eval()`` for the moving statistics).

    Raises:
        CheckpointError: missing variables, unknown variables in the model's scope, shapes
        that do not fit. ConfigError: unknown arch or override.
    """
    if arch not in ARCHS:
        raise ConfigError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    allowed = {"prefix", "standardization"}
    if arch in _TEACHERS:
        allowed |= {"upresize_to", "target_standardization", "bn"}
    if arch == "discriminator":
        allowed |= {"image_size", "avg_pool"}
    extra = set(overrides) - allowed
    if extra:
        raise ConfigError(
            f"unknown override(s) {sorted(extra)} for arch {arch!r}; allowed: {sorted(allowed)}"
        )
    if not isinstance(variables, Mapping) or not variables:
        raise CheckpointError("no TF variables given (empty checkpoint?)")

    if arch == "discriminator":
        prefix = overrides.get("prefix", "discriminator/")
        cfg = _infer_discriminator(variables, prefix, overrides)
        module = InputGradientDiscriminator(**cfg)
        mapping = _discriminator_mapping(prefix, cfg)
        return _load(module, variables, mapping, prefix, arch)

    default_prefix, default_std = _WRN_ARCHS[arch]
    prefix = overrides.get("prefix", default_prefix)
    std = overrides.get("standardization", default_std)
    cfg = _infer_wrn(variables, prefix)
    source = WideResNet(
        num_classes=cfg["num_classes"],
        widths=cfg["widths"],
        units_per_stage=cfg["units_per_stage"],
        standardization=std,
    )
    mapping = _wrn_mapping(prefix, cfg["units_per_stage"])
    head = f"{prefix}target_task_logit/"
    if arch not in _TEACHERS:
        # A finetuned teacher loaded as a plain classifier: its target head is dropped.
        return _load(source, variables, mapping, prefix, arch, dropped=(head,))

    t = dict(_TEACHER_DEFAULTS[arch])
    t.update({k: overrides[k] for k in ("upresize_to", "bn") if k in overrides})
    if "target_standardization" in overrides:
        t["standardization"] = overrides["target_standardization"]
    num_target = _shape(variables, f"{head}DW", 2)[1]
    teacher = Teacher(
        source,
        num_target,
        upresize_to=t["upresize_to"],
        standardization=t["standardization"],
        bn=t["bn"],
    )
    mapping = {tf_name: (f"source.{key}", fn) for tf_name, (key, fn) in mapping.items()}
    mapping[f"{head}DW"] = ("target_head.weight", _fc)
    mapping[f"{head}biases"] = ("target_head.bias", _same)
    return _load(teacher, variables, mapping, prefix, arch)


KINDS = {
    "igam_student": "classifier",
    "madry": "classifier",
    "tiny_source": "classifier",
    "madry_teacher": "teacher",
    "tiny_teacher_upresize": "teacher",
    "discriminator": "discriminator",
}


def convert_checkpoint(
    tf_checkpoint: str | Path, arch: str, out: str | Path, **overrides: Any
) -> Path:
    """Read a TF checkpoint, build ``arch`` and save it as ``<out>/checkpoint.pt``.

    ``out`` is a folder (created) or a ``.pt`` file path. Returns the written file.
    """
    from igam.run.checkpoint import make_checkpoint, save_checkpoint
    from igam.run.rundir import CHECKPOINT_NAME
    from igam.tf.reader import TFCheckpointReader

    reader = TFCheckpointReader(tf_checkpoint)
    variables = reader.read_all()
    model = model_from_tf(variables, arch, **overrides)
    step = variables.get("global_step")
    out = Path(out)
    file = out if out.suffix == ".pt" else out / CHECKPOINT_NAME
    file.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "source": "tensorflow",
        "tf_checkpoint": str(reader.prefix.resolve()),
        "tf_arch": arch,
        "overrides": {k: v for k, v in overrides.items()},
        "tf_global_step": None if step is None else int(np.asarray(step).reshape(-1)[0]),
    }
    state = make_checkpoint(KINDS[arch], model.arch, model.state_dict(), step=0, config=config)
    return save_checkpoint(file, state)


def _parse_override(text: str) -> Tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    low = value.strip().lower()
    parsed: Any
    if low in ("none", "null"):
        parsed = None
    elif low in ("true", "false"):
        parsed = low == "true"
    else:
        try:
            parsed = int(value)
        except ValueError:
            parsed = value
    return key.strip(), parsed


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m igam.tf.convert",
        description="Convert an original IGAM / Madry TensorFlow checkpoint into a port "
        "checkpoint (models/NAME/checkpoint.pt).",
    )
    parser.add_argument(
        "--tf_checkpoint",
        required=True,
        help="checkpoint folder (latest checkpoint) or prefix (path without .index)",
    )
    parser.add_argument("--arch", choices=ARCHS)
    parser.add_argument("--out", help="output folder, e.g. models/adv_trained")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. --set bn=running --set image_size=32 --set prefix=classifier/",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="only list the checkpoint's variables (name, dtype, shape)",
    )
    args = parser.parse_args(argv)
    if args.list:
        from igam.tf.reader import list_tf_variables

        for name, (dtype, shape) in list_tf_variables(args.tf_checkpoint).items():
            print(f"{name}\t{dtype}\t{list(shape)}")
        return 0
    if not args.arch or not args.out:
        parser.error("--arch and --out are required (unless --list)")
    overrides = dict(_parse_override(o) for o in args.overrides)
    file = convert_checkpoint(args.tf_checkpoint, args.arch, args.out, **overrides)
    print(f"wrote {file} ({KINDS[args.arch]}, arch {args.arch})")
    return 0


if __name__ == "__main__":
    from igam.run.cli import run_main

    run_main(main)
