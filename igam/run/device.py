"""The compute device (``--device auto|cpu|cuda|cuda:N|mps``) and the TF32 switch."""

from __future__ import annotations

import torch

from igam.errors import ConfigError

__all__ = ["resolve_device", "set_fidelity"]


def resolve_device(name: str) -> torch.device:
    """Turn the config's ``device`` string into a :class:`torch.device`.

    ``auto`` picks ``cuda`` when available, else ``cpu``. ``cpu``, ``cuda``, ``cuda:N`` and
    ``mps`` pass through after checking the device exists; anything else, or a device this
    machine does not have, raises :class:`ConfigError` in one line.
    """
    text = str(name).strip()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(
            f"device '{text}' is not a valid device; expected auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device '{text}' requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}); use --device cpu or --device auto"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"device '{text}' requested but this machine has {count} CUDA device(s) "
                f"(cuda:0 .. cuda:{count - 1})"
            )
        return device
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(
                f"device '{text}' requested but MPS is not available on this machine; "
                "use --device cpu or --device auto"
            )
        return device
    raise ConfigError(f"device '{text}' is not supported; expected auto, cpu, cuda, cuda:N or mps")


def set_fidelity(allow_tf32: bool) -> None:
    """Allow or forbid TF32 in CUDA matmuls and cuDNN convolutions (the config's ``allow_tf32``).

    Input gradients are tiny and the double-backprop terms are fp32-sensitive (original.md
    §1), so the port runs with TF32 OFF unless the config trades fidelity for speed. The flags
    are process-global and harmless on CPU-only builds.
    """
    torch.backends.cuda.matmul.allow_tf32 = bool(allow_tf32)
    torch.backends.cudnn.allow_tf32 = bool(allow_tf32)
