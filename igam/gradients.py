"""Input gradients: the saliency maps that IGAM matches (original.md §4).

The input gradient of a classifier f at a labelled batch (x, y) is

    g = d/dx  sum_i softmax(f(x_i))[y_i]

the gradient of the TRUE-CLASS PROBABILITY (not of the cross-entropy), summed over the batch.
With batch-statistics BatchNorm the examples of a batch are coupled, so it is always taken on
the whole batch at once - exactly what the original's ``tf.gradients(target_softmax, x_input)``
computes.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def true_class_probability(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """softmax(logits)[i, y_i] for logits (B, K), labels y (B,) -> (B,)."""
    return logits.softmax(dim=1).gather(1, y[:, None]).squeeze(1)


def input_gradient_from_logits(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                               create_graph: bool = False) -> torch.Tensor:
    """Input gradient when the forward pass ``logits = f(x)`` has already been run.

    Lets the student share one forward pass (and one BatchNorm update) between its
    cross-entropy and its input gradient, as the original graph does. ``x`` must require grad.
    With ``create_graph=True`` the result is differentiable w.r.t. the model's parameters
    (double backpropagation); otherwise it is detached.
    """
    (g,) = torch.autograd.grad(true_class_probability(logits, y).sum(), x,
                               create_graph=create_graph)
    return g if create_graph else g.detach()


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   create_graph: bool = False) -> torch.Tensor:
    """d sum_i softmax(model(x_i))[y_i] / dx on the whole batch.

    Args:
        model: classifier, (B, 3, H, W) float in [0, 255] -> logits (B, K). Its train/eval
            mode is used as set by the caller.
        x: (B, 3, H, W) images in [0, 255].
        y: (B,) int64 true labels.
        create_graph: keep the graph for second-order gradients (the student in IGAM). For
            a constant target (the teacher) leave False: the result is detached.
    Returns:
        (B, 3, H, W) gradient, same dtype and device as x. Values are tiny (pixels are on the
        [0, 255] scale), which is why TF32 is disabled by default (original.md §1).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        return input_gradient_from_logits(logits, x, y, create_graph)


def cosine_per_example(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each example's two input gradients: a, b (B, ...) -> (B,) float64.

    Computed in float64 because input gradients on the [0, 255] pixel scale are tiny (their
    norms multiply to below float32's normal range, where a clamped denominator such as
    ``F.cosine_similarity``'s eps would distort the result). An example where either gradient
    is exactly zero has no direction: its cosine is NaN, for the caller to count separately.
    """
    a, b = a.flatten(1).double(), b.flatten(1).double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(dim=1) / (na * nb)
    return torch.where((na > 0) & (nb > 0), cos.clamp(-1.0, 1.0), torch.nan)
