"""Speed options of the forward pass: bf16 autocast, channels_last, torch.compile.

Config section ``precision`` (adversarial training, attacks; default = off = the port's fp32
semantics, original.md §1):

* ``autocast: none | bf16`` - run the model's forward under ``torch.autocast`` in bfloat16;
  logits come back as float32, so losses, input gradients and PGD updates stay fp32.
* ``channels_last: false | true`` - NHWC memory layout for the model's weights and inputs
  (the same numbers, in another order: faster convolutions on recent GPUs).
* ``compile: false | true`` - ``torch.compile`` the forward used by attacks and evaluation
  (first-order input gradients only). Never for IGAM: double backward cannot be compiled.

IGAM offers none of these: its loss differentiates an input gradient (double backward), which
bf16 does not reproduce faithfully and torch.compile does not support.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from igam.errors import ConfigError

AUTOCAST = {"none": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    """The ``precision`` config section; the defaults change nothing."""

    autocast: str = "none"
    channels_last: bool = False
    compile: bool = False

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST[self.autocast]

    @property
    def is_default(self) -> bool:
        return self == Precision()


def from_config(section: Mapping[str, Any] | None) -> Precision:
    """A :class:`Precision` from a config's ``precision`` section (None: the defaults)."""
    if not section:
        return Precision()
    autocast = section.get("autocast", "none")
    if autocast not in AUTOCAST:
        raise ConfigError(f"precision.autocast must be one of {sorted(AUTOCAST)}, "
                          f"got {autocast!r}")
    return Precision(autocast, bool(section.get("channels_last", False)),
                     bool(section.get("compile", False)))


class PrecisionForward(nn.Module):
    """``module``'s forward with channels_last inputs and/or under autocast.

    x: (B, 3, H, W) float32 in [0, 255] -> logits (B, K) in x's dtype. The wrapped model is
    ``.module`` (so ``igam.ops.unwrap`` finds it and checkpoints hold its state).
    """

    def __init__(self, module: nn.Module, autocast_dtype: torch.dtype | None = None,
                 channels_last: bool = False):
        super().__init__()
        self.module = module
        self.autocast_dtype = autocast_dtype
        self.channels_last = bool(channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is None:
            return self.module(x)
        with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
            logits = self.module(x)
        return logits.to(x.dtype)


def wrap(model: nn.Module, precision: Precision) -> nn.Module:
    """``model`` (weights converted to channels_last if asked) run with ``precision``'s
    autocast / input layout; ``model`` itself when neither is on. For training and attacks
    (compile is separate: :func:`compiled`)."""
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)  # in place: parameters keep their identity
    if precision.autocast_dtype is None and not precision.channels_last:
        return model
    return PrecisionForward(model, precision.autocast_dtype, precision.channels_last)


class _CompiledForward(nn.Module):
    """A ``torch.compile``d module whose first failing call becomes a one-line ConfigError
    (compilation happens lazily, at the first call)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = torch.compile(module)
        self._ok = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._ok:
            return self.module(x)
        try:
            out = self.module(x)
        except Exception as exc:  # noqa: BLE001 - any backend failure (no C++ compiler, ...)
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise ConfigError(f"precision.compile: torch.compile failed on this machine "
                              f"({type(exc).__name__}: {first[:200]}); set precision.compile "
                              "false (on CPU it needs a working C++ compiler)") from None
        self._ok = True
        return out


def compiled(model: nn.Module, precision: Precision) -> nn.Module:
    """The forward for attacks and evaluation: ``model`` compiled if ``precision.compile``
    (pass the :func:`wrap`-ped model), else ``model`` itself. Only first-order gradients (PGD's
    input gradient) may go through it."""
    return _CompiledForward(model) if precision.compile else model
