"""Training augmentation of the original: pad 2, random crop, random horizontal flip.

The original (cifar10_input.py / tinyimagenet_input.py) runs, per image,
``tf.image.resize_image_with_crop_or_pad`` to (H+4, W+4) (zero padding of 2 on every side),
``tf.random_crop`` back to (H, W) (offsets 0..4 on each axis) and
``tf.image.random_flip_left_right`` (p = 0.5). [match]

Here the whole batch is done at once on its device by advanced indexing (no per-image loop);
the random offsets and flips come from an optional ``torch.Generator`` for reproducibility.
Pixel values are only moved, never mixed, so the output stays in the input's range (padding
adds zeros).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

PAD = 2  # zero padding on every side; crop offsets are 0..2*PAD


def draw_crop_flip_params(
    batch: int,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
    pad: int = PAD,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random per-image (offsets_y, offsets_x, flips).

    Returns int64 offsets in 0..2*pad, shape (batch,), and a bool flip mask (batch,) with
    P(flip) = 0.5, on ``device`` (default: the generator's device, else CPU). They are drawn
    on the generator's device, so results are reproducible for a given generator state.
    """
    gen_device = generator.device if generator is not None else (device or torch.device("cpu"))
    offsets_y = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=gen_device)
    offsets_x = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=gen_device)
    flips = torch.rand(batch, generator=generator, device=gen_device) < 0.5
    if device is not None:
        offsets_y, offsets_x, flips = offsets_y.to(device), offsets_x.to(device), flips.to(device)
    return offsets_y, offsets_x, flips


def crop_flip(
    x: torch.Tensor,
    offsets_y: torch.Tensor,
    offsets_x: torch.Tensor,
    flips: torch.Tensor,
    pad: int = PAD,
) -> torch.Tensor:
    """Zero-pad ``x`` by ``pad``, crop (H, W) at the given offsets, then flip left-right.

    Args:
        x: (B, C, H, W), any dtype and device.
        offsets_y, offsets_x: int (B,) in 0..2*pad, top-left corner of the crop in the padded
            image.
        flips: bool (B,): mirror the crop horizontally.
    Returns:
        (B, C, H, W) with ``out[b, :, i, j] = padded[b, :, oy + i, ox + j']`` where
        ``j' = W-1-j`` if flipped else ``j`` (crop first, then flip, as in the original).
    """
    b, c, h, w = x.shape
    dev = x.device
    oy, ox, fl = offsets_y.to(dev).long(), offsets_x.to(dev).long(), flips.to(dev).bool()
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p), zeros outside
    rows = oy[:, None] + torch.arange(h, device=dev)  # (B, H)
    cols_in_crop = torch.where(
        fl[:, None], torch.arange(w - 1, -1, -1, device=dev), torch.arange(w, device=dev)
    )
    cols = ox[:, None] + cols_in_crop  # (B, W)
    # One gather on the flattened NCHW planes (much faster than advanced indexing of the
    # NHWC view followed by a permute + contiguous copy).
    flat = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).reshape(b, 1, h * w)
    out = padded.flatten(2).gather(2, flat.expand(b, c, h * w))
    return out.view(b, c, h, w)


def augment_batch(
    x: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    return_params: bool = False,
):
    """Random pad-2 crop + horizontal flip of a float batch (B, 3, H, W) in [0, 255].

    Args:
        x: images on any device.
        generator: optional ``torch.Generator`` (ideally on x's device) for reproducibility.
        return_params: also return the drawn ``(offsets_y, offsets_x, flips)``.
    Returns:
        augmented (B, 3, H, W) on x's device (and the params if asked).
    """
    params = draw_crop_flip_params(x.shape[0], generator=generator, device=x.device)
    out = crop_flip(x, *params)
    return (out, params) if return_params else out
