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


def _second_order(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """The derivatives IGAM takes through a student: d/dparams of a function of its input
    gradient (``create_graph=True``). RuntimeError if autograd cannot."""
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    first = torch.autograd.grad(logits.sum(), params, retain_graph=True, allow_unused=True)
    g = input_gradient_from_logits(logits, x, y, create_graph=True)
    if not g.requires_grad:
        raise RuntimeError("the input gradient does not depend on the parameters (a backward "
                           "that is not differentiable)")
    second = torch.autograd.grad(g.pow(2).sum(), params, allow_unused=True)
    lost = [n for (n, _), a, b in zip(named, first, second) if a is not None and b is None]
    if lost:
        raise RuntimeError(f"the input gradient does not depend on {lost[0]} although the "
                           "logits do (a backward that is not differentiable)")


def _layer_second_order(module: nn.Module, inputs: tuple) -> None:
    """Double backward through ``module`` alone, at (copies of) the inputs it saw: every
    input or parameter with a gradient must get a second-order one."""
    ins = [t.detach().clone().requires_grad_(True) * 1.0
           if torch.is_tensor(t) and t.is_floating_point() else t for t in inputs]
    out = module(*ins)
    wrt = [t for t in ins if torch.is_tensor(t) and t.requires_grad]
    wrt += [p for p in module.parameters() if p.requires_grad]
    if not (torch.is_tensor(out) and out.requires_grad and wrt):
        return
    first = torch.autograd.grad(out.pow(2).sum(), wrt, create_graph=True, allow_unused=True)
    used = [(w, g) for w, g in zip(wrt, first) if g is not None]
    if not used:
        return
    if not any(g.requires_grad for _, g in used):
        raise RuntimeError("its backward is not differentiable")
    second = torch.autograd.grad(sum(g.pow(2).sum() for _, g in used if g.requires_grad),
                                 [w for w, _ in used], allow_unused=True)
    if any(s is None for s in second):
        raise RuntimeError("its backward is not differentiable (double backward gives no "
                           "gradient)")


def double_backward_failure(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> str | None:
    """Why IGAM cannot train ``model`` as a student, or None if it can.

    IGAM differentiates the student's input gradient w.r.t. its parameters (double backward,
    ``create_graph=True``). This runs that once on (x, y) (a tiny batch; the model in train
    mode; parameters, buffers and modes are left as found) and, if autograd fails, runs it
    through each submodule alone, innermost first in forward order, to name the first one that
    fails, e.g. an in-place op on a tensor its backward needs or a custom
    ``torch.autograd.Function`` without double backward (``@once_differentiable``).
    Returns one line: ``layer <name> (<Class>): <autograd's first line>``.
    """
    from igam.ops import model_mode

    with model_mode(model, "train"), torch.enable_grad():
        try:
            _second_order(model, x, y)
            return None
        except RuntimeError as exc:
            whole = str(exc).strip().splitlines()[0]
        seen: dict[nn.Module, tuple] = {}
        names = {m: n for n, m in model.named_modules() if n}

        def record(module, inputs, output):
            seen.setdefault(module, inputs)

        hooks = [m.register_forward_hook(record) for m in names]
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in hooks:
                h.remove()
        for module, inputs in seen.items():  # forward hooks fire innermost first
            try:
                _layer_second_order(module, inputs)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                return f"layer {names[module]} ({type(module).__name__}): {first}"
    return f"{whole} (no single layer fails alone)"
