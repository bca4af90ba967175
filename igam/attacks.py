"""White-box adversarial attacks that evaluate and adversarially train IGAM models (original.md §8).

One small class per attack, in the style of torchattacks:

- :class:`PGD`   - L-inf projected gradient descent (Madry et al. 2018), the original's
  ``LinfPGDAttack.perturb``;
- :class:`FGSM`  - one signed-gradient step of size eps (Goodfellow et al. 2015);
- :class:`PGDL2` - L2 projected gradient descent.

A *model* is any ``nn.Module`` mapping images (B, 3, H, W) float in [0, 255] to logits (B, K).
Every attack is called as ``attack(x, y) -> x_adv`` with x
float (B, C, H, W) in [0, 255] on the model's device and y int64 (B,); x_adv is a detached
tensor of the same shape, dtype and device, inside [0, 255] and inside the eps-ball around x.

Guarantees of every attack (see :class:`Attack`): the model comes back exactly as it was
(train/eval flag of every submodule, buffers such as BatchNorm running statistics, parameters'
``.grad`` and ``requires_grad``); gradients are taken with ``torch.autograd.grad`` w.r.t. the
input only; the step loop is batched on the device with no host synchronisation (with
``early_stop``: one per step, to shrink the active batch).

``early_stop=True`` (evaluation only, model in eval mode, where examples are independent):
examples the model already misclassifies are returned unchanged, and an example leaves the
active batch at the first iterate (random start included) that the model misclassifies,
which is what is returned for it. Per example the iterates are the same as without early
stop (same random draws), so accuracy under attack is equal or lower, at a fraction of the
cost. Adversarial training never early-stops (the class default is off).

Differences from the original (TF, pgd_attack.py), all listed as fixes in original.md §8:
- ``restarts`` are run (the original ignored ``num_restarts``), keeping the worst case per
  example;
- L2 PGD normalises gradients and projects per example (the original used the norm of the
  whole batch) and starts uniformly in the L2 ball;
- FGSM works on float images, so no uint8 wrap-around;
- ``bn_mode`` lets the caller attack in eval mode (running statistics) - the port's default
  for evaluation - or in train mode (batch statistics) as the original did;
- ``early_stop`` (above), the default of the evaluation scripts (``attack.early_stop``).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from igam.errors import ConfigError
from igam.ops import model_mode

PIXEL_MIN = 0.0
PIXEL_MAX = 255.0
LOSSES = ("xent", "cw")
BN_MODES = (None, "eval", "train")
CW_CONFIDENCE = 50.0  # the original's margin: loss = -relu(correct - wrong + 50)
_NORM_EPS = 1e-12  # lower bound on L2 norms we divide by


# ----------------------------------------------------------------------------------------------
# Losses: per example, shape (B,); the attacks ascend their batch sum.
# ----------------------------------------------------------------------------------------------


def xent_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example: logits (B, K), y (B,) -> (B,).

    The original ascends ``model.xent``, the batch SUM of the cross-entropy; summing keeps the
    per-example gradients independent of the batch size (and of each other in eval mode).
    """
    return F.cross_entropy(logits, y, reduction="none")


def cw_loss(logits: torch.Tensor, y: torch.Tensor,
            confidence: float = CW_CONFIDENCE) -> torch.Tensor:
    """Carlini-Wagner margin loss per example as in the original: logits (B, K), y (B,) -> (B,).

    ``-relu(correct_logit - max_wrong_logit + confidence)``: ascending it lowers the correct
    logit below the best wrong one; it is flat (zero gradient) once the margin
    ``wrong - correct`` exceeds ``confidence``. The original excludes the true class from the
    max by subtracting 1e4 from its logit; masking it with -inf is the same for any logit
    below 1e4 in magnitude.
    """
    true_mask = F.one_hot(y, logits.shape[1]).bool()
    correct = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.masked_fill(true_mask, float("-inf")).amax(dim=1)
    return -F.relu(correct - wrong + confidence)


_LOSS_FNS = {"xent": xent_loss, "cw": cw_loss}


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def _per_example(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) tensor to (B, 1, 1, ...) so that it broadcasts against ``like``."""
    return v.view((-1,) + (1,) * (like.dim() - 1))


def _l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm of (B, ...) as (B, 1, 1, ...)."""
    return _per_example(torch.linalg.vector_norm(t.flatten(1), dim=1), t)


def _check_number(name: str, value, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"attack '{name}' must be a number >= {minimum:g}, got {value!r}")
    return float(value)


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"attack '{name}' must be a number > 0, got {value!r}")
    return float(value)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"attack '{name}' must be an integer >= {minimum}, got {value!r}")
    return value


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"attack '{name}' must be true or false, got {value!r}")
    return value


def _check_loss(loss) -> str:
    if loss not in LOSSES:
        raise ConfigError(f"attack 'loss' must be one of {LOSSES}, got {loss!r}")
    return loss


# ----------------------------------------------------------------------------------------------
# Base class
# ----------------------------------------------------------------------------------------------


class Attack:
    r"""Base class: model handling, input gradients and worst-case-over-restarts selection.

    Arguments:
        model (nn.Module): images (B, C, H, W) float in [0, 255] -> logits (B, K).
        bn_mode (str or None): mode of the model during the attack. None - keep the train/eval
            mode the caller set; 'eval' - ``model.eval()`` (running BatchNorm statistics, the
            port's default for evaluation); 'train' - ``model.train()`` (batch statistics, as
            the original's attacks). The whole model is switched. (Default: None)
        keep_buffers (bool): restore every buffer (BatchNorm running statistics) after the
            attack (default). Set False inside adversarial training to reproduce the
            original, whose TF batch norm (``updates_collections=None``) updated its moving
            averages in every train-mode forward pass, the PGD iterations included.
        early_stop (bool): evaluation mode of the attack (see the module docstring): do not
            attack clean-misclassified examples, stop each example at its first fooling
            iterate. Needs examples to be independent: ``bn_mode`` 'eval', or None with no
            BatchNorm in training mode at call time (else ConfigError). (Default: False)

    Whatever ``bn_mode`` is, the model is returned in the mode it was found: every
    submodule's ``training`` flag is restored, and so is every buffer unless
    ``keep_buffers=False``; parameters' ``.grad`` and ``requires_grad`` are never touched,
    because gradients are taken with ``torch.autograd.grad`` w.r.t. the input only.

    Shape:
        - x: :math:`(B, C, H, W)` float in [0, 255], on the model's device.
        - y: :math:`(B)` int64 class indices.
        - output: :math:`(B, C, H, W)`, same dtype and device as x, detached.

    Subclasses implement :meth:`_start` (the first iterate) and :meth:`_step` (one update
    and projection) and set ``steps``; the iteration, restarts and early stopping are here.
    """

    steps = 1

    def __init__(self, model: nn.Module, bn_mode: Optional[str] = None,
                 keep_buffers: bool = True, early_stop: bool = False):
        if bn_mode not in BN_MODES:
            raise ConfigError(f"attack 'bn_mode' must be one of {BN_MODES}, got {bn_mode!r}")
        self.early_stop = _check_bool("early_stop", early_stop)
        if self.early_stop and bn_mode == "train":
            raise ConfigError("attack 'early_stop' needs examples independent of each other; "
                              "with bn_mode 'train' (batch statistics) set early_stop false")
        self.model = model
        self.bn_mode = bn_mode
        self.keep_buffers = bool(keep_buffers)
        self.loss = "xent"
        self.restarts = 1

    # -- public API ----------------------------------------------------------------------------

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for images x (B, C, H, W) in [0, 255] with labels y (B,)."""
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise TypeError("attack input x must be a floating-point tensor in [0, 255] "
                            f"(convert uint8 images first), got {getattr(x, 'dtype', type(x))}")
        if x.dim() < 2:
            raise ValueError(f"attack input x must be batched (B, C, H, W), got {tuple(x.shape)}")
        if not torch.is_tensor(y) or y.shape != x.shape[:1]:
            raise ValueError(f"attack labels y must have shape ({x.shape[0]},), "
                             f"got {tuple(getattr(y, 'shape', ()))}")
        x_nat = x.detach().clone()
        y = y.detach().to(device=x.device, dtype=torch.long)
        with self._attack_mode():
            if self.early_stop:
                self._check_independent()
                x_adv = self._attack_early_stop(x_nat, y)
            else:
                x_adv = self._attack(x_nat, y)
        return x_adv.detach()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"

    def _config(self) -> dict:
        return {"bn_mode": self.bn_mode, "early_stop": self.early_stop}

    # -- model handling ------------------------------------------------------------------------

    def _attack_mode(self):
        """Switch the model to ``bn_mode`` and restore modes (and buffers) afterwards."""
        return model_mode(self.model, self.bn_mode, restore_buffers=self.keep_buffers)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Model logits (B, K). Reduced precision, if any, is the model's own
        (``igam.run.precision.PrecisionForward``)."""
        return self.model(x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example attack loss (B,) that the attack ascends."""
        return _LOSS_FNS[self.loss](logits, y)

    def _input_gradient(self, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """d/dx of the batch-summed loss at x_adv, same shape as x_adv; no parameter grads."""
        return self._gradient_and_logits(x_adv, y)[0]

    def _gradient_and_logits(self, x_adv: torch.Tensor,
                             y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input gradient as :meth:`_input_gradient`, detached logits (B, K) at x_adv)."""
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self._logits(x_adv)
            loss = self._loss(logits, y).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
        return grad, logits.detach()

    def _check_independent(self) -> None:
        """ConfigError if a BatchNorm of the model uses batch statistics (early stop would
        then change the other examples' logits as examples leave the batch)."""
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
                raise ConfigError("attack 'early_stop' needs the model in eval mode (a "
                                  "BatchNorm is in training mode); use bn_mode 'eval'")

    # -- iterations and restarts ---------------------------------------------------------------

    def _start(self, x_nat: torch.Tensor) -> torch.Tensor:
        """First iterate for the whole batch (draws the random start, if any)."""
        return x_nat

    def _step(self, x: torch.Tensor, grad: torch.Tensor, x_nat: torch.Tensor) -> torch.Tensor:
        """Next iterate from x and the input gradient there, projected around x_nat."""
        raise NotImplementedError

    @property
    def _starts_at_x_nat(self) -> bool:
        """True if every run's first iterate is x_nat itself (no random start)."""
        return True

    def _attack_once(self, x_nat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One run from one start: ``steps`` times x = _step(x, grad at x)."""
        x = self._start(x_nat)
        for _ in range(self.steps):
            x = self._step(x, self._input_gradient(x, y), x_nat)
        return x

    @torch.no_grad()
    def _judge(self, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example (attack loss, fooled) of x_adv, in the attack's model mode."""
        logits = self._logits(x_adv)
        return self._loss(logits, y), logits.argmax(dim=1) != y

    def _attack(self, x_nat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Run ``restarts`` attacks and keep the worst case per example [fix].

        Rule: per example, the FIRST restart whose output the model misclassifies; if no
        restart fools it, the restart with the highest attack loss (the earlier one on ties).
        With one restart the output of that run is returned as is (no extra forward).
        """
        best = self._attack_once(x_nat, y)
        if self.restarts == 1:
            return best
        best_loss, best_fooled = self._judge(best, y)
        for _ in range(self.restarts - 1):
            x_adv = self._attack_once(x_nat, y)
            loss, fooled = self._judge(x_adv, y)
            take = ~best_fooled & (fooled | (loss > best_loss))
            best = torch.where(_per_example(take, best), x_adv, best)
            best_loss = torch.where(take, loss, best_loss)
            best_fooled = best_fooled | fooled
        return best

    def _attack_early_stop(self, x_nat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:meth:`_attack` with early stopping (eval mode: examples are independent).

        Clean-misclassified examples are returned unchanged and never attacked. Otherwise
        each example runs exactly the iterates it would run without early stop (the random
        starts are drawn for the whole batch, as there) until one is misclassified; that
        iterate is returned and the example leaves the active batch, also for the
        remaining restarts. An example no restart fools gets, as in :meth:`_attack`, the
        final iterate with the highest loss (the earlier restart on ties). The misclassified
        check reuses the logits of each gradient forward, so the extra cost is one clean
        forward with a random start, and with restarts one forward per run of the examples
        left after its last step.
        """
        best = x_nat.clone()
        best_loss = torch.full(y.shape, float("-inf"), dtype=x_nat.dtype, device=y.device)
        if self._starts_at_x_nat:  # the first gradient forward judges the clean input
            fooled = torch.zeros_like(y, dtype=torch.bool)
        else:
            fooled = self._judge(x_nat, y)[1]
        for _ in range(self.restarts):
            start = self._start(x_nat)  # whole-batch draw: the same random stream as without
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            x, xn, yy = start.index_select(0, idx), x_nat.index_select(0, idx), y[idx]
            for _ in range(self.steps):
                grad, logits = self._gradient_and_logits(x, yy)
                hit = logits.argmax(dim=1) != yy
                keep = (~hit).nonzero().squeeze(1)  # the one host sync of the step
                if keep.numel() < idx.numel():
                    won = hit.nonzero().squeeze(1)
                    best.index_copy_(0, idx[won], x.index_select(0, won))
                    fooled[idx[won]] = True
                    x, xn, yy, grad = (t.index_select(0, keep) for t in (x, xn, yy, grad))
                    idx = idx[keep]
                    if idx.numel() == 0:
                        break
                x = self._step(x, grad, xn)
            if idx.numel() == 0:
                continue
            if self.restarts == 1:  # the final iterate is the answer; no need to judge it
                best.index_copy_(0, idx, x)
                continue
            loss, hit = self._judge(x, yy)
            take = hit | (loss > best_loss[idx])
            won = take.nonzero().squeeze(1)
            best.index_copy_(0, idx[won], x.index_select(0, won))
            best_loss[idx[won]] = loss[won]
            fooled[idx[hit]] = True
        return best


# ----------------------------------------------------------------------------------------------
# Attacks
# ----------------------------------------------------------------------------------------------


class PGD(Attack):
    r"""L-inf PGD in 'Towards Deep Learning Models Resistant to Adversarial Attacks'
    (Madry et al., ICLR 2018) [https://arxiv.org/abs/1706.06083]; the original's
    ``LinfPGDAttack.perturb``.

    Distance Measure : Linf

    x = clip(x_nat + U(-eps, eps), 0, 255) if random_start else x_nat; then ``steps`` times:
    x += step_size * sign(d/dx sum_batch loss); clip to [x_nat - eps, x_nat + eps]; clip to
    [0, 255]. The random start is drawn as ``torch.empty_like(x).uniform_(-eps, eps,
    generator=generator)``, one draw per restart in order, so a seeded generator makes the
    attack reproducible (successive calls continue the generator).

    Arguments:
        model (nn.Module): images in [0, 255] -> logits.
        eps (float): L-inf radius on the [0, 255] scale. (Default: 8.0)
        step_size (float): step on the [0, 255] scale. (Default: 2.0)
        steps (int): number of steps. (Default: 10)
        random_start (bool): start uniformly in the eps-box. (Default: True)
        loss (str): 'xent' (cross-entropy) or 'cw' (the original's margin loss). (Default: 'xent')
        restarts (int): independent runs; per example the worst case is kept
            (see :meth:`Attack._attack`). (Default: 1)
        bn_mode (str or None): None / 'eval' / 'train', see :class:`Attack`. (Default: None)
        generator (torch.Generator or None): RNG for the random start, on x's device;
            None uses the global RNG. (Default: None)
        early_stop (bool): see :class:`Attack` (evaluation only). (Default: False)

    Shape:
        - x: :math:`(B, C, H, W)` float in [0, 255]; y: :math:`(B)` int64;
          output: :math:`(B, C, H, W)`.

    Examples::
        >>> attack = PGD(model, eps=8.0, step_size=2.0, steps=20, bn_mode="eval")
        >>> x_adv = attack(x, y)
    """

    def __init__(self, model: nn.Module, eps: float = 8.0, step_size: float = 2.0,
                 steps: int = 10, random_start: bool = True, loss: str = "xent",
                 restarts: int = 1, bn_mode: Optional[str] = None,
                 generator: Optional[torch.Generator] = None,
                 keep_buffers: bool = True, early_stop: bool = False):
        super().__init__(model, bn_mode=bn_mode, keep_buffers=keep_buffers,
                         early_stop=early_stop)
        self.eps = _check_positive("eps", eps)
        self.step_size = _check_number("step_size", step_size)
        self.steps = _check_int("steps", steps, 0)
        self.random_start = _check_bool("random_start", random_start)
        self.loss = _check_loss(loss)
        self.restarts = _check_int("restarts", restarts, 1)
        self.generator = generator

    def _config(self) -> dict:
        return {"eps": self.eps, "step_size": self.step_size, "steps": self.steps,
                "random_start": self.random_start, "loss": self.loss,
                "restarts": self.restarts, "bn_mode": self.bn_mode,
                "early_stop": self.early_stop}

    @property
    def _starts_at_x_nat(self) -> bool:
        return not self.random_start

    def _start(self, x_nat: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return x_nat
        noise = torch.empty_like(x_nat).uniform_(-self.eps, self.eps, generator=self.generator)
        return (x_nat + noise).clamp(PIXEL_MIN, PIXEL_MAX)

    def _step(self, x: torch.Tensor, grad: torch.Tensor, x_nat: torch.Tensor) -> torch.Tensor:
        x = x + self.step_size * grad.sign()
        return torch.clamp(x, x_nat - self.eps, x_nat + self.eps).clamp(PIXEL_MIN, PIXEL_MAX)


class FGSM(Attack):
    r"""FGSM in 'Explaining and Harnessing Adversarial Examples' (Goodfellow et al., ICLR 2015)
    [https://arxiv.org/abs/1412.6572].

    Distance Measure : Linf

    x_adv = clip(x + eps * sign(d/dx sum_batch loss), 0, 255): the original's PGD with one
    step of size eps and no random start. Computed in float, so pixels near 0 or 255 are
    clipped instead of wrapping around as the original's uint8 arithmetic did [fix].

    Arguments:
        model (nn.Module): images in [0, 255] -> logits.
        eps (float): step and L-inf radius on the [0, 255] scale. (Default: 8.0)
        loss (str): 'xent' or 'cw'. (Default: 'xent')
        bn_mode (str or None): None / 'eval' / 'train', see :class:`Attack`. (Default: None)
        early_stop (bool): see :class:`Attack`; for FGSM it means that clean-misclassified
            examples are returned unchanged. (Default: False)

    Shape:
        - x: :math:`(B, C, H, W)` float in [0, 255]; y: :math:`(B)` int64;
          output: :math:`(B, C, H, W)`.

    Examples::
        >>> attack = FGSM(model, eps=8.0)
        >>> x_adv = attack(x, y)
    """

    def __init__(self, model: nn.Module, eps: float = 8.0, loss: str = "xent",
                 bn_mode: Optional[str] = None, keep_buffers: bool = True,
                 early_stop: bool = False):
        super().__init__(model, bn_mode=bn_mode, keep_buffers=keep_buffers,
                         early_stop=early_stop)
        self.eps = _check_positive("eps", eps)
        self.loss = _check_loss(loss)

    def _config(self) -> dict:
        return {"eps": self.eps, "loss": self.loss, "bn_mode": self.bn_mode,
                "early_stop": self.early_stop}

    def _step(self, x: torch.Tensor, grad: torch.Tensor, x_nat: torch.Tensor) -> torch.Tensor:
        return (x_nat + self.eps * grad.sign()).clamp(PIXEL_MIN, PIXEL_MAX)


class PGDL2(PGD):
    r"""L2 PGD in 'Towards Deep Learning Models Resistant to Adversarial Attacks'
    (Madry et al., ICLR 2018) [https://arxiv.org/abs/1706.06083].

    Distance Measure : L2

    Per example [fix: the original normalised by the norm of the whole batch]:
    random start x = clip(x_nat + r * u, 0, 255) with u a normalised gaussian direction and
    r = eps * U(0, 1)^(1/d), d = C*H*W (uniform in the L2 ball); then ``steps`` times:
    x += step_size * g / max(||g||_2, 1e-12); project x - x_nat onto the L2 ball of radius
    eps; clip to [0, 255] (clipping towards the box around x_nat only shrinks the
    perturbation, so the result stays in the ball).

    Arguments:
        model (nn.Module): images in [0, 255] -> logits.
        eps (float): L2 radius on the [0, 255] scale. The default mirrors the original's
            command-line defaults, which served both norms; the common CIFAR budget 0.5 on
            the [0, 1] scale is 127.5 here. (Default: 8.0)
        step_size (float): L2 length of each step. (Default: 2.0)
        steps (int): number of steps. (Default: 10)
        random_start (bool): start uniformly in the L2 ball. (Default: True)
        loss (str): 'xent' or 'cw'. (Default: 'xent')
        restarts (int): independent runs, worst case per example kept. (Default: 1)
        bn_mode (str or None): None / 'eval' / 'train', see :class:`Attack`. (Default: None)
        generator (torch.Generator or None): RNG for the random start. (Default: None)

    Shape:
        - x: :math:`(B, C, H, W)` float in [0, 255]; y: :math:`(B)` int64;
          output: :math:`(B, C, H, W)`.

    Examples::
        >>> attack = PGDL2(model, eps=127.5, step_size=31.875, steps=20)
        >>> x_adv = attack(x, y)
    """

    def _project(self, x: torch.Tensor, x_nat: torch.Tensor) -> torch.Tensor:
        """Project x onto the per-example L2 ball of radius eps around x_nat, then [0, 255]."""
        delta = x - x_nat
        scale = (self.eps / _l2_norms(delta).clamp_min(_NORM_EPS)).clamp(max=1.0)
        return (x_nat + delta * scale).clamp(PIXEL_MIN, PIXEL_MAX)

    def _start(self, x_nat: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return x_nat
        direction = torch.empty_like(x_nat).normal_(generator=self.generator)
        direction = direction / _l2_norms(direction).clamp_min(_NORM_EPS)
        u = x_nat.new_empty(x_nat.shape[0]).uniform_(generator=self.generator)
        radius = self.eps * u.pow(1.0 / x_nat[0].numel())
        return (x_nat + _per_example(radius, x_nat) * direction).clamp(PIXEL_MIN, PIXEL_MAX)

    def _step(self, x: torch.Tensor, grad: torch.Tensor, x_nat: torch.Tensor) -> torch.Tensor:
        x = x + self.step_size * grad / _l2_norms(grad).clamp_min(_NORM_EPS)
        return self._project(x, x_nat)


# ----------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------

ATTACKS = {"pgd": PGD, "fgsm": FGSM, "pgd_l2": PGDL2}


def make_attack(name_or_cfg, model: nn.Module, **kw) -> Attack:
    """Build an attack from a method name or a config dict; keyword arguments override.

    ``name_or_cfg``: 'pgd' | 'fgsm' | 'pgd_l2', or a dict such as
    ``{"method": "pgd", "eps": 8, "step_size": 2, "steps": 20, "random_start": True,
    "loss": "xent", "restarts": 1}``. Keys are the class's arguments; a 'name' key (a label
    for files and logs) is ignored. For 'fgsm', ``steps`` (must be 1), ``step_size`` (must
    equal eps), ``random_start`` (must be false), ``restarts`` (must be 1) and ``generator``
    are accepted so that one config template serves every method.

    ``early_stop`` true together with ``bn_mode='train'`` is switched off with a warning
    (batch statistics make the examples of a batch depend on each other, so none may leave
    it): the evaluation scripts default to early stop, and ``--eval.bn_mode train`` alone
    then still runs the original's final-iterate attack.

    Raises:
        ConfigError: unknown method or key, or an invalid value.
    """
    if isinstance(name_or_cfg, str):
        cfg = {"method": name_or_cfg}
    elif isinstance(name_or_cfg, Mapping):
        cfg = dict(name_or_cfg)
    else:
        raise ConfigError(f"attack config must be a method name or a mapping, "
                          f"got {type(name_or_cfg).__name__}")
    cfg.update(kw)
    cfg.pop("name", None)
    method = cfg.pop("method", None)
    if not isinstance(method, str) or method.lower() not in ATTACKS:
        raise ConfigError(f"attack 'method' must be one of {sorted(ATTACKS)}, got {method!r}")
    method = method.lower()
    if cfg.get("early_stop") is True and cfg.get("bn_mode") == "train":
        warnings.warn("attack early_stop is off: bn_mode 'train' (batch statistics) couples "
                      "the examples of a batch, so the final-iterate attack runs", stacklevel=2)
        cfg["early_stop"] = False
    cls = ATTACKS[method]
    if cls is FGSM:
        _strip_fgsm_pgd_keys(cfg)
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "model"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(f"attack config: unknown key '{unknown[0]}' for method '{method}' "
                          f"(expected some of {sorted(allowed)})")
    return cls(model, **cfg)


def _strip_fgsm_pgd_keys(cfg: dict) -> None:
    """Remove PGD-only keys from an FGSM config after checking they describe FGSM."""
    eps = cfg.get("eps", 8.0)
    expected = {"steps": 1, "step_size": eps, "random_start": False, "restarts": 1}
    for key, want in expected.items():
        if key in cfg:
            value = cfg.pop(key)
            if value != want:
                raise ConfigError(f"attack config: fgsm needs '{key}' = {want!r}, got {value!r}")
    cfg.pop("generator", None)  # FGSM draws no random numbers
