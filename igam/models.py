"""The networks of IGAM: the Madry WideResNet, the teacher with a new head, and the
input-gradient discriminator (original.md §2-4); and :class:`ExternalClassifier`, which adapts
a classifier of any other architecture (a factory's, RobustBench's) to the port's conventions
(docs/byo_teacher.md).

All classifiers take NCHW float images with pixels in [0, 255] and return logits; the
standardisation of the original (or an external model's input scaling) is the first step of
``forward``, so input gradients are always taken w.r.t. [0, 255] pixels.

Every module carries ``arch``: a plain dict that :func:`build_model` turns back into an
identical (freshly initialised) module. Checkpoints store it, so a model can be rebuilt from its
checkpoint alone.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from igam.errors import CheckpointError
from igam.ops import (
    STANDARDIZATIONS,
    BatchNorm1d,
    BatchNorm2d,
    Conv2dSame,
    add_stats_switch,
    linear_init_,
    lrelu,
    set_bn_stats,
    standardize,
    upresize,
)

PAPER_WIDTHS = (16, 160, 320, 640)
DEBUG_WIDTHS = (16, 16, 32, 64)


class ResidualUnit(nn.Module):
    """Pre-activation residual unit of the Madry WRN (TF scope ``unit_{s}_{u}``).

    ``bn1`` is TF ``shared_activation/BatchNorm`` when ``activate_before_residual`` (unit_1_0
    only: the shortcut is then the activated input) and ``residual_only_activation/BatchNorm``
    otherwise (the shortcut is the raw input). Branch: conv3x3(stride) -> BN -> lrelu ->
    conv3x3. When in != out, the shortcut is average-pooled (kernel = stride, 'VALID') and
    zero-padded on channels by (out - in) / 2 on each side - no 1x1 conv.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, activate_before_residual: bool):
        super().__init__()
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        self.activate_before_residual = activate_before_residual
        self.bn1 = BatchNorm2d(in_ch)
        self.conv1 = Conv2dSame(in_ch, out_ch, 3, stride)
        self.bn2 = BatchNorm2d(out_ch)
        self.conv2 = Conv2dSame(out_ch, out_ch, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = lrelu(self.bn1(x))
        shortcut = act if self.activate_before_residual else x
        out = self.conv2(lrelu(self.bn2(self.conv1(act))))
        if self.in_ch != self.out_ch:
            if self.stride > 1:
                shortcut = F.avg_pool2d(shortcut, self.stride, self.stride)
            pad = (self.out_ch - self.in_ch) // 2
            shortcut = F.pad(shortcut, (0, 0, 0, 0, pad, pad))
        return out + shortcut


class WideResNet(nn.Module):
    """Madry's CIFAR WideResNet ("WRN-34-10"), the backbone of every classifier in IGAM.

    Args:
        num_classes: logits of the head ``fc`` (TF scope ``logit``).
        widths: (init conv, stage 1, stage 2, stage 3) channels; paper (16, 160, 320, 640),
            debugging (16, 16, 32, 64).
        units_per_stage: residual units per stage (paper 5).
        standardization: 'zero_mean_l2' (IGAM students, TinyImageNet models), 'per_image'
            (Madry CIFAR-10 models) or 'l2'.

    Shapes: x (B, 3, H, W) float in [0, 255] -> logits (B, num_classes); any H, W (32 for
    CIFAR, 64 for TinyImageNet: the head follows a global average pool).
    """

    @staticmethod
    def check_widths(widths) -> tuple[int, ...]:
        """The widths as a tuple of ints; ValueError (one line) unless the network can be built
        with them (checked before any module is made, e.g. by the entry scripts at start)."""
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4:
            raise ValueError(f"widths must have 4 entries (init, stage1..3), got {widths}")
        for a, b in zip(widths[:-1], widths[1:]):
            if (b - a) % 2 or b < a:
                raise ValueError(f"width step {a}->{b} must be even and non-decreasing "
                                 "(the shortcut zero-pads channels)")
        if widths[2] == widths[1] or widths[3] == widths[2]:
            raise ValueError(f"widths {widths}: stages 2 and 3 downsample, so their widths must "
                             "grow (the original's shortcut pools only when channels change)")
        return widths

    def __init__(self, num_classes: int = 10, widths=PAPER_WIDTHS, units_per_stage: int = 5,
                 standardization: str = "zero_mean_l2"):
        super().__init__()
        widths = self.check_widths(widths)
        if standardization not in STANDARDIZATIONS:
            raise ValueError(f"standardization must be one of {STANDARDIZATIONS}")
        self.arch = {"type": "wide_resnet", "num_classes": int(num_classes),
                     "widths": list(widths), "units_per_stage": int(units_per_stage),
                     "standardization": standardization}
        self.standardization = standardization
        self.init_conv = Conv2dSame(3, widths[0], 3, 1)
        strides = (1, 2, 2)
        stages = []
        for s in range(3):
            units = [ResidualUnit(widths[s], widths[s + 1], strides[s], s == 0)]
            units += [ResidualUnit(widths[s + 1], widths[s + 1], 1, False)
                      for _ in range(units_per_stage - 1)]
            stages.append(nn.Sequential(*units))
        self.stages = nn.ModuleList(stages)
        self.final_bn = BatchNorm2d(widths[3])
        self.fc = linear_init_(nn.Linear(widths[3], num_classes))

    @property
    def num_features(self) -> int:
        return self.fc.in_features

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def features(self, x: torch.Tensor, standardization: str | None = None) -> torch.Tensor:
        """Pooled features (B, widths[3]) of images (B, 3, H, W) in [0, 255]."""
        h = self.init_conv(standardize(x, standardization or self.standardization))
        for stage in self.stages:
            h = stage(h)
        return lrelu(self.final_bn(h)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def import_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable named ``package.module:function`` (``function`` may be dotted, e.g.
    ``module:Class.build``). ValueError (one line) if it cannot be imported."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"factory {spec!r} must be written package.module:function")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"factory {spec!r}: cannot import {module_name} ({exc})") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"factory {spec!r}: {module_name} has no {name}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"factory {spec!r} is not callable")
    return obj


def find_head(model: nn.Module, name: str | None = None) -> str:
    """Dotted name of the classification head of ``model``: ``name`` if given (it must be an
    ``nn.Linear``), else the last ``nn.Linear`` in ``model.modules()`` order. ValueError (one
    line) if there is none."""
    if name:
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the model has no layer named {name!r} (the head)") from None
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"the head {name!r} is a {type(layer).__name__}, not an nn.Linear")
        return name
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear to use as its head; name "
                         "the head layer")
    return linears[-1]


class ExternalClassifier(nn.Module):
    """A classifier of any architecture, adapted to the port's conventions: it takes pixels in
    [0, 255] and returns logits, like :class:`WideResNet`, and may be a :class:`Teacher`'s source
    (``features``, ``fc``, ``num_features``) or an IGAM student.

    ``forward(x) = fc(body(adapt(x)))`` with ``adapt(x) = (x * input_range / 255 - mean) / std``
    (mean/std per channel on the [0, input_range] scale, when given; RobustBench's and most
    torchvision-style models take [0, 1] with their normalisation inside, so input_range 1 and
    no mean/std). Autograd goes through ``adapt``, so the input gradient of this module is the
    wrapped model's times ``input_range / 255 / std``: it is w.r.t. [0, 255] pixels, the scale
    of the port's own models. Plain ``nn.BatchNorm1d/2d`` layers get the port's ``stats``
    switch (:func:`igam.ops.add_stats_switch`), so teacher BatchNorm modes work as for the port.

    Args:
        model: the module, x (B, 3, H, W) in [0, input_range] -> logits (B, K); its head (see
            ``head``) must be its last operation (logits = head(features)). Its head is taken
            out (replaced by ``nn.Identity``) and kept as ``fc``, so ``body`` gives features.
        factory: ``package.module:function`` that built ``model`` (called with ``kwargs``);
            recorded in ``arch`` so :func:`build_model` rebuilds the module.
        kwargs: keyword arguments of the factory (JSON-like values).
        input_range: 255 or 1 (any > 0): the pixel range the model takes.
        mean, std: 3 floats each, or None (the model normalises itself).
        head: dotted name of the head ``nn.Linear``; None = the last ``nn.Linear``.

    State-dict keys: ``body.<the model's keys without the head>``, ``fc.weight``, ``fc.bias``.
    """

    def __init__(self, model: nn.Module, factory: str, kwargs: dict | None = None,
                 input_range: float = 1.0, mean=None, std=None, head: str | None = None):
        super().__init__()
        if not input_range > 0:
            raise ValueError(f"input_range must be > 0, got {input_range}")
        for what, v in (("mean", mean), ("std", std)):
            if v is not None and len(v) != 3:
                raise ValueError(f"{what} must have 3 entries (one per channel), got {v}")
        if std is not None and min(std) <= 0:
            raise ValueError(f"std must be positive, got {std}")
        self.head_name = find_head(model, head)
        self.fc = model.get_submodule(self.head_name)
        parent, _, leaf = self.head_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
        add_stats_switch(model)
        self.body = model
        self.factory, self.kwargs = factory, copy.deepcopy(dict(kwargs or {}))
        self.input_range = float(input_range)
        self.mean = None if mean is None else [float(v) for v in mean]
        self.std = None if std is None else [float(v) for v in std]

    @property
    def arch(self) -> dict:
        return {"type": "external", "factory": self.factory, "kwargs": copy.deepcopy(self.kwargs),
                "input_range": self.input_range, "mean": self.mean, "std": self.std,
                "head": self.head_name}

    @classmethod
    def from_factory(cls, factory: str, kwargs: dict | None = None,
                     **adapter) -> ExternalClassifier:
        """Build the model with ``import_factory(factory)(**kwargs)`` and adapt it."""
        model = import_factory(factory)(**(kwargs or {}))
        if not isinstance(model, nn.Module):
            raise ValueError(f"factory {factory!r} returned a {type(model).__name__}, not an "
                             "nn.Module")
        return cls(model, factory, kwargs, **adapter)

    @property
    def num_features(self) -> int:
        return self.fc.in_features

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 255] (B, 3, H, W) -> the wrapped model's input."""
        x = x * (self.input_range / 255.0)
        if self.mean is not None:
            x = x - x.new_tensor(self.mean).view(1, -1, 1, 1)
        if self.std is not None:
            x = x / x.new_tensor(self.std).view(1, -1, 1, 1)
        return x

    def features(self, x: torch.Tensor, standardization: str | None = None) -> torch.Tensor:
        """The head's input (B, num_features) for images (B, 3, H, W) in [0, 255]."""
        if standardization is not None:
            raise ValueError("the port's standardisations apply to its WideResNets only; an "
                             "external model is adapted by input_range / mean / std")
        return self.body(self.adapt(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class Teacher(nn.Module):
    """A robust source WideResNet with a new head for the target task (original.md §3).

    Args:
        source: the (adversarially trained) source-task WideResNet, or an
            :class:`ExternalClassifier` (any robust model); its ``fc`` stays the source head.
        num_target_classes: size of the new head ``target_head`` (TF ``target_task_logit``).
        upresize_to: if set (e.g. 64 for TinyImageNet -> CIFAR-10), target images are resized
            to this size with TF1 legacy bilinear (:func:`igam.ops.upresize`) before the source
            network; gradients flow back to the original resolution.
        standardization: override of the source's standardisation for target-task inputs
            (the original fed its TinyImageNet teacher with 'l2'); None keeps the source's.
        bn: 'batch' - batch statistics always (as the original), never touching the saved
            running statistics; 'running' - always the running statistics; None - follow
            ``train()``/``eval()`` (used to recalibrate running statistics).

    ``forward(x)``: target logits (B, num_target_classes); ``source_logits(x)``: source logits.
    x is (B, 3, H, W) float in [0, 255].
    """

    def __init__(self, source: WideResNet | ExternalClassifier, num_target_classes: int,
                 upresize_to: int | None = None, standardization: str | None = None,
                 bn: str | None = "batch"):
        super().__init__()
        if standardization is not None and standardization not in STANDARDIZATIONS:
            raise ValueError(f"standardization must be one of {STANDARDIZATIONS}")
        if standardization is not None and not isinstance(source, WideResNet):
            raise ValueError("teacher standardization applies to a WideResNet source only")
        self.source = source
        self.target_head = linear_init_(nn.Linear(source.num_features, num_target_classes))
        self.upresize_to = upresize_to
        self.standardization = standardization
        self.set_bn(bn)

    @classmethod
    def keeping_head(cls, source: WideResNet | ExternalClassifier,
                     upresize_to: int | None = None, bn: str | None = "batch") -> Teacher:
        """A teacher whose target head is a copy of the source's own head: for a source whose
        classes are already the target task's (no finetuning)."""
        teacher = cls(source, source.num_classes, upresize_to, None, bn)
        with torch.no_grad():
            teacher.target_head.weight.copy_(source.fc.weight)
            if source.fc.bias is not None:
                teacher.target_head.bias.copy_(source.fc.bias)
        return teacher

    @property
    def arch(self) -> dict:
        return {"type": "teacher", "source": copy.deepcopy(self.source.arch),
                "num_target_classes": self.target_head.out_features,
                "upresize_to": self.upresize_to, "standardization": self.standardization,
                "bn": self.bn}

    @property
    def num_classes(self) -> int:
        """Classes of the target task (``forward``'s logits)."""
        return self.target_head.out_features

    def set_bn(self, bn: str | None) -> None:
        """Choose the teacher's BatchNorm statistics: 'batch', 'running' or None (see class)."""
        if bn not in ("batch", "running", None):
            raise ValueError(f"teacher bn must be 'batch', 'running' or None, got {bn!r}")
        self.bn = bn
        set_bn_stats(self.source, bn)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.upresize_to is not None and x.shape[-1] != self.upresize_to:
            x = upresize(x, self.upresize_to)
        return x

    def target_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.source.features(self._prepare(x), self.standardization)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target_head(self.target_features(x))

    def source_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Source-task logits of source-task images (no resize, the source standardisation)."""
        return self.source(x)

    def freeze_source(self) -> None:
        """Stop gradients to the source network's parameters (finetune the head only)."""
        for p in self.source.parameters():
            p.requires_grad_(False)


class InputGradientDiscriminator(nn.Module):
    """Discriminator that tells student input gradients (label 0) from teacher ones (label 1).

    Input: the two gradient batches are concatenated along the batch and go through ONE
    forward pass (its BN statistics mix both halves, as the original). The concatenation is
    standardised with ``standardization`` ('zero_mean_l2' in the paper; train_igam.py uses the
    student's, as the original tied both to one flag), then:
    conv variant: ``num_conv_layers`` x [4x4 stride-2 SAME conv with bias (channels
    base * 2^i) -> BN -> lrelu], optional global average pool, FC to 2 logits;
    fully-connected variant: ``num_fc_layers`` x [FC (base, ..., base, base // 2) -> BN ->
    lrelu], FC to 2 logits. Feature maps are flattened in NHWC order as in TF, so TF's FC
    weights load with a plain transpose.

    Shapes: g_student, g_teacher (B, 3, S, S) -> logits (2B, 2), student rows first.

    The defaults are the Tiny-ImageNet -> CIFAR-10 pair's 4 layers of base 8 with the default
    student's ``zero_mean_l2``; train_igam.py's config takes its defaults from this signature
    (``igam.run.schemas``), and :meth:`from_config` builds one from a config section.
    """

    def __init__(self, image_size: int = 32,
                 num_conv_layers: int = 4, base_channels: int = 8,
                 only_fully_connected: bool = False, num_fc_layers: int = 3,
                 avg_pool: bool = False, standardization: str = "zero_mean_l2"):
        super().__init__()
        self.arch = {"type": "discriminator", "image_size": int(image_size),
                     "num_conv_layers": int(num_conv_layers), "base_channels": int(base_channels),
                     "only_fully_connected": bool(only_fully_connected),
                     "num_fc_layers": int(num_fc_layers), "avg_pool": bool(avg_pool),
                     "standardization": standardization}
        self.standardization = standardization
        self.only_fully_connected = only_fully_connected
        self.avg_pool = avg_pool
        self.convs = nn.ModuleList()
        self.fcs = nn.ModuleList()
        self.bns = nn.ModuleList()
        if only_fully_connected:
            features = 3 * image_size * image_size
            for i in range(num_fc_layers):
                out = base_channels // 2 if i == num_fc_layers - 1 else base_channels
                self.fcs.append(linear_init_(nn.Linear(features, out)))
                self.bns.append(BatchNorm1d(out))
                features = out
        else:
            channels, size = 3, image_size
            for i in range(num_conv_layers):
                out = base_channels * 2 ** i
                self.convs.append(Conv2dSame(channels, out, 4, 2, bias=True))
                self.bns.append(BatchNorm2d(out))
                channels, size = out, -(-size // 2)
            features = channels if avg_pool else channels * size * size
        self.logit = linear_init_(nn.Linear(features, 2))

    @classmethod
    def from_config(cls, section, image_size: int,
                    student_standardization: str) -> InputGradientDiscriminator:
        """The discriminator a config's ``discriminator`` section describes, for input
        gradients of ``image_size``; ``standardization: student`` (the original's one flag
        for both) takes the student's."""
        kwargs = dict(section)
        if kwargs.get("standardization") == "student":
            kwargs["standardization"] = student_standardization
        return cls(image_size, **kwargs)

    @staticmethod
    def _flatten_nhwc(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1) if x.dim() == 4 else x

    def classify(self, g: torch.Tensor) -> torch.Tensor:
        """Logits (N, 2) of a batch of input gradients g (N, 3, S, S)."""
        h = standardize(g, self.standardization)
        if self.only_fully_connected:
            h = self._flatten_nhwc(h)
            for fc, bn in zip(self.fcs, self.bns):
                h = lrelu(bn(fc(h)))
        else:
            for conv, bn in zip(self.convs, self.bns):
                h = lrelu(bn(conv(h)))
            if self.avg_pool:
                h = h.mean(dim=(2, 3))
        return self.logit(self._flatten_nhwc(h))

    def forward(self, g_student: torch.Tensor, g_teacher: torch.Tensor) -> torch.Tensor:
        return self.classify(torch.cat([g_student, g_teacher], dim=0))

    @staticmethod
    def labels(batch_size: int, device=None) -> torch.Tensor:
        """(2B,) int64 labels of :meth:`forward`'s rows: 0 for student, 1 for teacher."""
        return torch.cat([torch.zeros(batch_size, dtype=torch.long, device=device),
                          torch.ones(batch_size, dtype=torch.long, device=device)])


def build_model(arch: dict) -> nn.Module:
    """Rebuild a module from its ``arch`` dict (as stored in checkpoints).

    Raises CheckpointError for an arch dict that is not understood.
    """
    try:
        kind = arch["type"]
        a = {k: v for k, v in arch.items() if k != "type"}
        if kind == "wide_resnet":
            return WideResNet(**a)
        if kind == "teacher":
            source = build_model(a.pop("source"))
            return Teacher(source, **a)
        if kind == "discriminator":
            return InputGradientDiscriminator(**a)
        if kind == "external":
            return ExternalClassifier.from_factory(a.pop("factory"), a.pop("kwargs"), **a)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot build a model from arch {arch!r}: {exc}") from None
    raise CheckpointError(f"unknown model type {arch.get('type')!r} in arch {arch!r}")
