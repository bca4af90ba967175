"""Building blocks that reproduce TensorFlow 1.x numerics exactly (original.md §2-3).

Every function here exists because the "obvious" PyTorch call differs from what the original
TensorFlow graph computed:

* :func:`lrelu` - ``tf.where(x < 0, 0.1 x, x)``: its gradient at exactly 0 is 1 (``F.leaky_relu``
  gives 0.1 there).
* :class:`Conv2dSame` - TF ``padding='SAME'``: a 3x3 stride-2 conv on an even input pads 0
  top/left and 1 bottom/right; ``padding=1`` pads 1/1 and shifts every activation.
* :func:`l2_normalize` - ``tf.math.l2_normalize``: ``x * rsqrt(max(sum(x^2), 1e-12))``; the
  epsilon bounds the SQUARED norm (``F.normalize`` clamps the norm itself).
* :func:`standardize` - the three per-image input standardisations of the original models.
* :func:`upresize` - TF1 legacy bilinear resize (``align_corners=False``,
  ``half_pixel_centers=False``), which samples source coordinate ``i * in / out``;
  ``F.interpolate`` uses half-pixel centres and differs by up to ~100 grey levels.
* :class:`BatchNorm2d` / :class:`BatchNorm1d` - eps 1e-3, momentum 0.1 (TF decay 0.9), with a
  switch to force batch or running statistics regardless of ``train()``/``eval()`` (used for the
  frozen teacher, original.md §3).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

STANDARDIZATIONS = ("per_image", "zero_mean_l2", "l2")
LRELU_SLOPE = 0.1
BN_EPS = 1e-3
BN_MOMENTUM = 0.1


def lrelu(x: torch.Tensor, slope: float = LRELU_SLOPE) -> torch.Tensor:
    """Leaky ReLU with the values and gradients of the original's ``where(x < 0, slope * x, x)``.

    Identical to ``F.leaky_relu`` except at exactly 0, where the gradient is 1 (not ``slope``).
    This matters for input gradients of images with saturated (0-valued) activations.

    Computed as ``lerp(slope * x, x, w)`` with the constant weight w = 1 where x >= 0 (also
    -0.0) and 0 elsewhere: bit-identical values and first derivatives (one of the two lerp
    terms is an exact zero), second derivatives equal up to summation order. On CPU,
    ``torch.where`` and bool tensors are not vectorised (where ~2 ms vs mul ~45 us on a
    (32, 16, 32, 32) tensor): this form is 3-3.7x faster forward + backward. ``ge`` writes the
    weight directly in x's dtype (no bool intermediate).
    """
    w = torch.ge(x.detach(), 0, out=torch.empty_like(x))
    return torch.lerp(slope * x, x, w)


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample L2 normalisation over all non-batch dims, as ``tf.math.l2_normalize``.

    ``x * rsqrt(max(sum(x^2), eps))`` - eps bounds the squared norm.
    Shape: (B, ...) -> (B, ...).
    """
    dims = tuple(range(1, x.dim()))
    sq = x.pow(2).sum(dim=dims, keepdim=True)
    return x * torch.rsqrt(torch.clamp(sq, min=eps))


def standardize(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-image input standardisation over H, W and C together.

    Args:
        x: (B, C, H, W) float, pixels in [0, 255] (or input gradients, for the discriminator).
        mode: ``'per_image'`` - ``tf.image.per_image_standardization``:
            (x - mean) / max(std, 1/sqrt(H*W*C)) with the population std (Madry CIFAR-10 models);
            ``'zero_mean_l2'`` - subtract the per-image mean, then :func:`l2_normalize`
            (IGAM students, TinyImageNet source models, the discriminator);
            ``'l2'`` - :func:`l2_normalize` only.
    Returns:
        (B, C, H, W) tensor.
    """
    if mode == "l2":
        return l2_normalize(x)
    dims = tuple(range(1, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    if mode == "zero_mean_l2":
        return l2_normalize(x - mean)
    if mode == "per_image":
        n = x[0].numel()
        var = (x - mean).pow(2).mean(dim=dims, keepdim=True)
        std = torch.sqrt(var)
        return (x - mean) / torch.clamp(std, min=1.0 / math.sqrt(n))
    raise ValueError(f"unknown standardization {mode!r}; expected one of {STANDARDIZATIONS}")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) along one spatial axis of length ``size``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``padding='SAME'`` (asymmetric when TF pads asymmetrically).

    Weight layout OIHW (TF kernels are HWIO: ``w_torch = w_tf.permute(3, 2, 0, 1)``).
    Initialiser of the original: N(0, sqrt(2 / (k * k * out))) weights, zero bias.
    Input (B, in, H, W) -> output (B, out, ceil(H / s), ceil(W / s)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if not hasattr(self, "weight"):
            return
        k = self.kernel_size[0]
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / (k * k * self.out_channels)))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        pw = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if ph[0] == ph[1] and pw[0] == pw[1]:
            return F.conv2d(x, self.weight, self.bias, self.stride, (ph[0], pw[0]))
        x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0)


def linear_init_(layer: nn.Linear) -> nn.Linear:
    """TF ``uniform_unit_scaling_initializer(1.0)``: U(-sqrt(3/in), sqrt(3/in)); zero bias."""
    bound = math.sqrt(3.0 / layer.in_features)
    nn.init.uniform_(layer.weight, -bound, bound)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class _StatsSwitch:
    """Mixin: ``stats`` = None (follow train/eval), 'batch' (always batch statistics, never
    update the running ones) or 'running' (always running statistics).

    On CPU, batch statistics are taken of the input centred per channel (minus its detached
    channel mean: the output and its gradients are unchanged by a constant shift). PyTorch's
    vectorised (AVX2) CPU batch-norm kernel loses precision on channels whose mean is large
    against their spread: float32 input gradients through it differed from TensorFlow's
    float32 (and from float64) by up to 7% of their largest value (tests/tf/test_convert.py);
    centred, they agree to ~1e-6, at ~1.25x the kernel's cost. GPUs use the kernel as is. The
    running mean gets the shift back, so the running averages are nn.BatchNorm's.
    """

    stats: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.stats not in (None, "batch", "running"):
            raise ValueError(
                f"BatchNorm stats must be None, 'batch' or 'running', got {self.stats!r}")
        batch = self.stats == "batch" or (self.stats is None and self.training)
        if not batch:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        update = self.stats is None  # a plain train-mode forward updates the running averages
        if x.device.type != "cpu":
            if update:
                return super().forward(x)
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        # centre each channel first (a constant shift: same output, same gradient)
        dims = [0, *range(2, x.dim())]
        shift = x.detach().mean(dim=dims, keepdim=True)
        if not update:
            return F.batch_norm(x - shift, None, None, self.weight, self.bias, True, 0.0,
                                self.eps)
        self.num_batches_tracked.add_(1)
        # momentum None: cumulative average over the batches seen (nn.BatchNorm's rule)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        centred_mean = self.running_mean.clone()  # averages the centred means
        out = F.batch_norm(x - shift, centred_mean, self.running_var, self.weight, self.bias,
                           True, factor, self.eps)
        with torch.no_grad():  # add the shift back
            self.running_mean.copy_(centred_mean + factor * shift.flatten())
        return out


class BatchNorm2d(_StatsSwitch, nn.BatchNorm2d):
    """TF ``contrib.layers.batch_norm`` (decay 0.9, eps 1e-3, center, scale) on NCHW maps.

    Normalises with the biased batch variance, stores the unbiased one in the running average,
    exactly as ``nn.BatchNorm2d`` (verified against TF: tests/tf/test_convert.py).
    """

    def __init__(self, num_features: int):
        super().__init__(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)


class BatchNorm1d(_StatsSwitch, nn.BatchNorm1d):
    """As :class:`BatchNorm2d`, for (B, F) features (the fully-connected discriminator)."""

    def __init__(self, num_features: int):
        super().__init__(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)


class _SwitchedBatchNorm1d(_StatsSwitch, nn.BatchNorm1d):
    """An ``nn.BatchNorm1d`` of an external model, given the ``stats`` switch (its own eps and
    momentum kept)."""


class _SwitchedBatchNorm2d(_StatsSwitch, nn.BatchNorm2d):
    """An ``nn.BatchNorm2d`` of an external model, given the ``stats`` switch (its own eps and
    momentum kept)."""


def add_stats_switch(module: nn.Module) -> int:
    """Give every plain ``nn.BatchNorm1d`` / ``nn.BatchNorm2d`` (with running statistics) inside
    an external ``module`` the ``stats`` switch of the port's BatchNorms, in place: same
    parameters, buffers and state-dict keys, same outputs while the switch is None; so
    :func:`set_bn_stats`, :func:`frozen_bn_stats` and :func:`model_mode` treat the module as
    one of the port's (a teacher's ``bn: batch``, input gradients saved without touching its
    running statistics). Returns the number of layers switched."""
    n = 0
    for m in module.modules():
        if not getattr(m, "track_running_stats", False):
            continue
        if type(m) is nn.BatchNorm2d:
            m.__class__ = _SwitchedBatchNorm2d
        elif type(m) is nn.BatchNorm1d:
            m.__class__ = _SwitchedBatchNorm1d
        else:
            continue
        m.stats = None
        n += 1
    return n


def set_bn_stats(module: nn.Module, stats: str | None) -> None:
    """Set the statistics switch of every igam BatchNorm inside ``module`` (see _StatsSwitch)."""
    for m in module.modules():
        if isinstance(m, _StatsSwitch):
            m.stats = stats


@contextlib.contextmanager
def model_mode(module: nn.Module, mode: str | None,
               restore_buffers: bool = True) -> Iterator[nn.Module]:
    """Put ``module`` in a BatchNorm mode for the block, then restore it.

    ``mode``: 'eval' (``module.eval()``: running statistics), 'train' (``module.train()``:
    batch statistics, and each forward updates the running averages) or None (leave the mode
    as the caller set it). Afterwards every submodule's ``training`` flag and every igam
    BatchNorm's ``stats`` switch are what they were, and with ``restore_buffers`` every buffer
    (running statistics, batch counts) too - so a block that only reads the model leaves it
    exactly as found, even if it raises. Used by the attacks, evaluation, BN recalibration and
    the saving of input gradients.
    """
    modes = [(m, m.training) for m in module.modules()]
    switches = [(m, m.stats) for m in module.modules() if isinstance(m, _StatsSwitch)]
    buffers = [(b, b.detach().clone()) for b in module.buffers()] if restore_buffers else []
    try:
        if mode is not None:
            module.train(mode == "train")
        yield module
    finally:
        for m, training in modes:
            m.training = training
        for m, stats in switches:
            m.stats = stats
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Inside the block, every igam BatchNorm of ``module`` that follows train()/eval() (switch
    None) uses batch statistics and leaves its running statistics (and batch count) untouched;
    switches already set stay as they are, and all are restored afterwards.

    A train-mode forward inside it computes what a train-mode forward computes, but updates no
    buffer: used where the original ran no extra forward (logging natural accuracy during
    adversarial training) or where the model is only read (saving input gradients).
    """
    free = [m for m in module.modules() if isinstance(m, _StatsSwitch) and m.stats is None]
    for m in free:
        m.stats = "batch"
    try:
        yield
    finally:
        for m in free:
            m.stats = None


def _legacy_bilinear_matrix(in_size: int, out_size: int, device, dtype) -> torch.Tensor:
    """(out, in) interpolation matrix of TF1 legacy bilinear resize along one axis."""
    scale = in_size / out_size
    src = torch.arange(out_size, dtype=torch.float64) * scale
    lo = torch.floor(src).long().clamp(max=in_size - 1)
    hi = torch.clamp(lo + 1, max=in_size - 1)
    frac = src - lo.double()
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    m.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(device=device, dtype=dtype)


def upresize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (B, C, H, W) -> (B, C, size, size) with TF1's legacy bilinear resize.

    ``tf.image.resize_images`` in TF 1.14 (align_corners=False, half_pixel_centers=False):
    output pixel i samples source coordinate ``i * H / size``. For 32 -> 64, even outputs copy
    input i/2, odd outputs average inputs (i-1)/2 and (i+1)/2, and output 63 copies input 31.
    Written as two small matrix products, so it is exact and differentiable (the teacher's input
    gradient is taken w.r.t. the 32x32 image through it).
    """
    h, w = x.shape[-2:]
    mh = _legacy_bilinear_matrix(h, size, x.device, x.dtype)
    mw = mh if w == h else _legacy_bilinear_matrix(w, size, x.device, x.dtype)
    return torch.einsum("oh,bchw,pw->bcop", mh, x, mw)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / precision / torch.compile wrappers."""
    while True:
        inner = getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = module.__dict__.get("_modules", {}).get("module")
        if not isinstance(inner, nn.Module):
            return module
        module = inner
