"""Tests of igam.attacks: PGD / FGSM / PGDL2 semantics (original.md §8) and model-state hygiene."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from igam.attacks import FGSM, PGD, PGDL2, Attack, cw_loss, make_attack, xent_loss
from igam.errors import ConfigError
from igam.run.precision import PrecisionForward

# ----------------------------------------------------------------------------------------------
# Small models defined here (images (B, 3, H, W) in [0, 255] -> logits)
# ----------------------------------------------------------------------------------------------


class TinyNet(nn.Module):
    """conv -> BN -> relu -> global average pool -> linear; records the BN mode of each call."""

    def __init__(self, num_classes: int = 2, ch: int = 6):
        super().__init__()
        self.conv = nn.Conv2d(3, ch, 3, padding=1)
        self.bn = nn.BatchNorm2d(ch)
        self.fc = nn.Linear(ch, num_classes)
        self.seen_bn_training = []

    def forward(self, x):
        self.seen_bn_training.append(self.bn.training)
        h = F.relu(self.bn(self.conv(x / 255.0 - 0.5)))
        return self.fc(h.mean(dim=(2, 3)))


class ZeroGradThresholdModel(nn.Module):
    """Label 0 is fooled iff pixel (0, 0, 0) was raised by more than 2 above ``x_ref``.

    The input gradient is exactly zero, so PGD steps do not move: the output of a run is its
    random start, which makes the effect of restarts fully controlled by the generator.
    The wrong-class logit grows with the raise, so the cross-entropy of label 0 does too.
    """

    def __init__(self, x_ref):
        super().__init__()
        self.register_buffer("x_ref", x_ref.clone())

    def forward(self, x):
        wrong = (x.detach() - self.x_ref)[:, 0, 0, 0] - 2.0
        logits = torch.stack([torch.zeros_like(wrong), wrong], dim=1)
        return logits + 0.0 * x.sum(dim=(1, 2, 3))[:, None]


class ScaledLinear(nn.Module):
    """Linear model whose logits (and input gradients) are scaled per example by ``scales``."""

    def __init__(self, scales, num_pixels, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("scales", scales)
        self.w = nn.Parameter(torch.randn(2, num_pixels, generator=g))

    def forward(self, x):
        return (x.flatten(1) - 128.0) @ self.w.t() * self.scales[:, None] / 1000.0


class SignModel(nn.Module):
    """Two logits [<w, x> / (n * 255), 0]: for label 1 the CE input gradient has the sign of w."""

    def __init__(self, w):
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, x):
        s = (self.w * x).flatten(1).sum(1) / (x[0].numel() * 255.0)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def _images(batch=8, size=8, seed=0, with_bounds=True):
    """Float images in [0, 255]; with_bounds puts many pixels exactly at 0, 255 and near them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=g) * 255.0
    if with_bounds:
        levels = torch.tensor([0.0, 255.0, 3.0, 252.0])
        pick = torch.randint(0, 6, x.shape, generator=g)
        x = torch.where(pick < 4, levels[pick.clamp(max=3)], x)
    return x


def _labels(batch=8, num_classes=2, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, num_classes, (batch,), generator=g)


def _tiny_net(seed=0, num_classes=2):
    torch.manual_seed(seed)
    return TinyNet(num_classes=num_classes)


def _reference_pgd(model, x_nat, y, eps, step, steps, seed, loss="xent"):
    """PGD written out step by step as in original.md §8 / the original's perturb."""
    g = torch.Generator().manual_seed(seed)
    x = torch.clamp(x_nat + torch.empty_like(x_nat).uniform_(-eps, eps, generator=g), 0, 255)
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        logits = model(x)
        if loss == "xent":
            obj = F.cross_entropy(logits, y, reduction="sum")
        else:
            mask = F.one_hot(y, logits.shape[1]).float()
            correct = (mask * logits).sum(1)
            wrong = ((1 - mask) * logits - 1e4 * mask).max(1).values
            obj = (-F.relu(correct - wrong + 50)).sum()
        (grad,) = torch.autograd.grad(obj, x)
        x = x.detach() + step * torch.sign(grad)
        x = torch.minimum(torch.maximum(x, x_nat - eps), x_nat + eps)
        x = torch.clamp(x, 0, 255)
    return x.detach()


def _trained_tiny_net():
    """A TinyNet trained briefly to tell 'red' images (class 1) from 'blue' ones (class 0)."""

    def data(n, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 2, (n,), generator=g)
        s = (2.0 * y - 1.0)[:, None, None]
        x = 128.0 + 20.0 * torch.randn(n, 3, 8, 8, generator=g)
        x[:, 0] += 6.0 * s
        x[:, 2] -= 6.0 * s
        return x.clamp(0, 255), y

    model = _tiny_net(seed=3)
    x_train, y_train = data(512, seed=10)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    model.train()
    for i in range(150):
        idx = torch.arange(i * 64, (i + 1) * 64) % 512
        opt.zero_grad()
        F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
        opt.step()
    model.eval()
    x_test, y_test = data(256, seed=11)
    return model, x_test, y_test


# ----------------------------------------------------------------------------------------------
# PGD
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda m: PGD(m, eps=8.0, step_size=2.5, steps=6, restarts=2),
    lambda m: PGD(m, eps=8.0, step_size=8.0, steps=2, random_start=False, loss="cw"),
    lambda m: FGSM(m, eps=8.0),
], ids=["pgd", "pgd_cw", "fgsm"])
def test_linf_attacks_stay_in_eps_ball_and_pixel_range(make):
    model = _tiny_net().eval()
    x, y = _images(), _labels()
    x_adv = make(model)(x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= 8.0 + 1e-4
    assert x_adv.min() >= 0.0 and x_adv.max() <= 255.0
    # the attack really moved: many pixels sit on the ball's surface or a pixel bound
    on_surface = ((x_adv - x).abs() - 8.0).abs() < 1e-4
    at_bound = ((x_adv == 0) | (x_adv == 255)) & (x_adv != x)
    assert (on_surface | at_bound).float().mean() > 0.3
    # pixels at 0 / 255 cannot go out of range; some were pushed against the bound
    assert ((x == 0) & (x_adv == 0)).any() and ((x == 255) & (x_adv == 255)).any()
    assert ((x == 0) & (x_adv > 0)).any() and ((x == 255) & (x_adv < 255)).any()


@pytest.mark.parametrize("loss", ["xent", "cw"])
def test_pgd_matches_step_by_step_reference(loss):
    model = _tiny_net(num_classes=3).eval()
    x, y = _images(with_bounds=True), _labels(num_classes=3)
    ref = _reference_pgd(model, x, y, eps=8.0, step=2.0, steps=5, seed=123, loss=loss)
    attack = PGD(model, eps=8.0, step_size=2.0, steps=5, loss=loss,
                 generator=torch.Generator().manual_seed(123))
    out = attack(x, y)
    assert torch.equal(out, ref)
    # same result when called from a no_grad evaluation loop, via the alias perturb()
    attack.generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        out2 = attack(x, y)
    assert torch.equal(out2, ref)
    # a different seed gives a different start, hence a different result
    attack.generator = torch.Generator().manual_seed(124)
    assert not torch.equal(attack(x, y), ref)


def test_pgd_bn_mode_train_uses_batch_statistics_like_reference_in_train_mode():
    model = _tiny_net().eval()
    with torch.no_grad():  # make running stats clearly differ from batch stats
        model.bn.running_mean.fill_(0.3)
        model.bn.running_var.fill_(4.0)
    x, y = _images(), _labels()
    ref_model = copy.deepcopy(model).train()
    ref = _reference_pgd(ref_model, x, y, eps=8.0, step=2.0, steps=4, seed=7)
    out = PGD(model, steps=4, bn_mode="train", generator=torch.Generator().manual_seed(7))(x, y)
    assert torch.equal(out, ref)
    out_eval = PGD(model, steps=4, bn_mode="eval",
                   generator=torch.Generator().manual_seed(7))(x, y)
    assert not torch.equal(out_eval, ref)
    assert torch.equal(out_eval, _reference_pgd(model, x, y, 8.0, 2.0, 4, seed=7))


def test_pgd_increases_loss_and_lowers_accuracy_of_trained_model():
    model, x, y = _trained_tiny_net()
    with torch.no_grad():
        clean_logits = model(x)
    clean_acc = (clean_logits.argmax(1) == y).float().mean()
    assert clean_acc > 0.9  # the tiny model did learn the task
    x_adv = PGD(model, eps=8.0, step_size=2.0, steps=10,
                generator=torch.Generator().manual_seed(0))(x, y)
    x_fgsm = FGSM(model, eps=8.0)(x, y)
    with torch.no_grad():
        adv_logits, fgsm_logits = model(x_adv), model(x_fgsm)
    adv_acc = (adv_logits.argmax(1) == y).float().mean()
    fgsm_acc = (fgsm_logits.argmax(1) == y).float().mean()
    assert adv_acc < clean_acc - 0.4
    assert fgsm_acc < clean_acc - 0.2
    assert xent_loss(adv_logits, y).mean() > 2 * xent_loss(clean_logits, y).mean()
    # noise of the same size does far less than the attack
    g = torch.Generator().manual_seed(1)
    x_noise = (x + 8.0 * torch.sign(torch.randn(x.shape, generator=g))).clamp(0, 255)
    with torch.no_grad():
        noise_acc = (model(x_noise).argmax(1) == y).float().mean()
    assert noise_acc > adv_acc + 0.3


def _two_runs(model, x, y, seed, runs, cls=PGD, **kw):
    """Outputs of ``runs`` successive single-restart attacks sharing one seeded generator."""
    attack = cls(model, restarts=1, generator=torch.Generator().manual_seed(seed), **kw)
    return [attack(x, y) for _ in range(runs)]


def _fooled(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) != y


def test_restarts_fool_example_a_in_run_1_and_example_b_in_run_2():
    x = torch.full((2, 3, 4, 4), 128.0)
    y = torch.zeros(2, dtype=torch.long)
    model = ZeroGradThresholdModel(x).eval()
    for seed in range(500):  # find a seed where run 1 fools only A and run 2 only B
        r1, r2 = _two_runs(model, x, y, seed, runs=2, steps=2)
        if _fooled(model, r1, y).tolist() == [True, False] and \
                _fooled(model, r2, y).tolist() == [False, True]:
            break
    else:
        pytest.fail("no seed found for the controlled restart case")
    best = PGD(model, steps=2, restarts=2, generator=torch.Generator().manual_seed(seed))(x, y)
    assert _fooled(model, best, y).tolist() == [True, True]
    assert torch.equal(best[0], r1[0]) and torch.equal(best[1], r2[1])


@pytest.mark.parametrize("cls", [PGD, PGDL2])
def test_restarts_keep_first_fooling_run_else_highest_loss(cls):
    x = torch.full((32, 3, 4, 4), 128.0)
    y = torch.zeros(32, dtype=torch.long)
    model = ZeroGradThresholdModel(x).eval()
    eps = 8.0 if cls is PGD else 12.0
    runs = _two_runs(model, x, y, seed=5, runs=3, cls=cls, eps=eps, steps=1)
    best = cls(model, eps=eps, steps=1, restarts=3,
               generator=torch.Generator().manual_seed(5))(x, y)
    with torch.no_grad():
        losses = [xent_loss(model(r), y) for r in runs]
    fooled = [_fooled(model, r, y) for r in runs]
    kinds = set()
    for i in range(32):
        first = next((k for k in range(3) if fooled[k][i]), None)
        if first is None:
            k = max(range(3), key=lambda j: (losses[j][i].item(), -j))
            kinds.add(("max_loss", k))
        else:
            k = first
            kinds.add(("fooled", k))
        assert torch.equal(best[i], runs[k][i]), f"example {i}: expected run {k}"
    # the batch exercises both rules, and both with a later run winning
    assert any(kind == "fooled" and k > 0 for kind, k in kinds)
    assert any(kind == "max_loss" and k > 0 for kind, k in kinds)


def test_attack_neither_modifies_nor_aliases_its_input():
    model = _tiny_net().eval()
    x, y = _images(), _labels()
    x.requires_grad_(True)  # a caller's tensor that is part of a graph
    x_before = x.detach().clone()
    out = PGD(model, steps=0, random_start=False)(x, y)  # no-op attack returns a copy
    assert torch.equal(out, x_before) and not out.requires_grad
    out += 1.0
    PGD(model, steps=2)(x, y)
    assert torch.equal(x.detach(), x_before) and x.grad is None


def test_single_restart_is_a_plain_run():
    model = _tiny_net().eval()
    x, y = _images(), _labels()
    a = PGD(model, steps=3, generator=torch.Generator().manual_seed(9))(x, y)
    b = _reference_pgd(model, x, y, 8.0, 2.0, 3, seed=9)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# FGSM
# ----------------------------------------------------------------------------------------------


def test_fgsm_moves_the_right_way_at_pixel_bounds_without_wraparound():
    g = torch.Generator().manual_seed(0)
    shape = (4, 3, 6, 6)
    w = torch.where(torch.rand(shape[1:], generator=g) < 0.5, -1.0, 1.0)[None]
    levels = torch.tensor([0.0, 255.0, 3.0, 252.0, 100.0])
    x = levels[torch.randint(0, 5, shape, generator=g)]
    y = torch.ones(4, dtype=torch.long)
    model = SignModel(w)
    x_adv = FGSM(model, eps=8.0)(x, y)

    # exact comparison with x + eps * sign(grad), clipped, grad computed by hand
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    assert torch.equal(torch.sign(grad), w.expand(shape))
    assert torch.equal(x_adv, torch.clamp(x + 8.0 * torch.sign(grad), 0, 255))

    up, down = w.expand(shape) > 0, w.expand(shape) < 0
    assert (x_adv[(x == 0) & up] == 8.0).all() and (x_adv[(x == 0) & down] == 0.0).all()
    assert (x_adv[(x == 255) & up] == 255.0).all() and (x_adv[(x == 255) & down] == 247.0).all()
    # no uint8 wrap-around: 252 + 8 -> 255 (not 4), 3 - 8 -> 0 (not 251)
    assert (x_adv[(x == 252) & up] == 255.0).all() and (x_adv[(x == 3) & down] == 0.0).all()
    assert ((x == 252) & up).any() and ((x == 3) & down).any()


def test_fgsm_equals_one_step_pgd_without_random_start_and_rejects_uint8():
    model = _tiny_net().eval()
    x, y = _images(), _labels()
    a = FGSM(model, eps=8.0)(x, y)
    b = PGD(model, eps=8.0, step_size=8.0, steps=1, random_start=False)(x, y)
    assert torch.equal(a, b)
    with pytest.raises(TypeError, match="floating-point"):
        FGSM(model)(x.to(torch.uint8), y)


# ----------------------------------------------------------------------------------------------
# L2 PGD
# ----------------------------------------------------------------------------------------------


def test_pgdl2_normalises_per_example():
    x = torch.full((2, 3, 4, 4), 128.0)
    y = torch.tensor([0, 1])
    model = ScaledLinear(torch.tensor([1.0, 1000.0]), num_pixels=48)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    norms = grad.flatten(1).norm(dim=1)
    assert torch.allclose(norms[1] / norms[0], torch.tensor(1000.0), rtol=1e-3)

    x_adv = PGDL2(model, eps=10.0, step_size=1.5, steps=1, random_start=False)(x, y)
    moved = (x_adv - x).flatten(1).norm(dim=1)
    assert torch.allclose(moved, torch.tensor([1.5, 1.5]), rtol=1e-4)
    # in the direction of each example's own gradient
    cos = F.cosine_similarity((x_adv - x).flatten(1), grad.flatten(1), dim=1)
    assert torch.allclose(cos, torch.ones(2), atol=1e-5)


def test_pgdl2_stays_in_l2_ball_and_pixel_range():
    model = _tiny_net().eval()
    x, y = _images(), _labels()
    eps = 60.0
    x_adv = PGDL2(model, eps=eps, step_size=40.0, steps=6, restarts=2,
                  generator=torch.Generator().manual_seed(0))(x, y)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert (norms <= eps + 1e-4).all()
    assert (norms > 0.5 * eps).all()  # large steps reach the ball's surface region
    assert x_adv.min() >= 0 and x_adv.max() <= 255
    assert x_adv.dtype == x.dtype and not x_adv.requires_grad


def test_pgdl2_random_start_is_inside_the_ball_and_near_its_surface():
    x = torch.full((64, 3, 8, 8), 128.0)
    y = torch.zeros(64, dtype=torch.long)
    model = _tiny_net().eval()
    out = PGDL2(model, eps=20.0, steps=0, generator=torch.Generator().manual_seed(0))(x, y)
    norms = (out - x).flatten(1).norm(dim=1)
    # uniform in a 192-dimensional ball: radius eps * u^(1/192), almost always > 0.95 eps
    assert (norms <= 20.0 + 1e-4).all() and (norms > 0.9 * 20.0).all()
    assert norms.std() > 0  # radii differ between examples
    dirs = F.normalize((out - x).flatten(1), dim=1)
    assert (dirs @ dirs.t() - torch.eye(64)).abs().max() < 0.5  # directions are spread out


# ----------------------------------------------------------------------------------------------
# Model state hygiene
# ----------------------------------------------------------------------------------------------


def _attacks(model, bn_mode):
    return [
        PGD(model, steps=2, restarts=2, bn_mode=bn_mode),
        FGSM(model, bn_mode=bn_mode),
        PGDL2(model, eps=30.0, step_size=10.0, steps=2, bn_mode=bn_mode),
    ]


@pytest.mark.parametrize("bn_mode", [None, "eval", "train"])
def test_attack_leaves_modes_grads_flags_and_buffers_untouched(bn_mode):
    model = _tiny_net()
    model.train()
    model.fc.eval()  # a submodule set differently from its parent
    model.conv.weight.grad = None
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.25)
    model.bn.weight.requires_grad_(False)
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    x, y = _images(), _labels()
    for attack in _attacks(model, bn_mode):
        model.seen_bn_training.clear()
        attack(x, y)
        expected = {None: True, "eval": False, "train": True}[bn_mode]
        assert model.seen_bn_training and all(s == expected for s in model.seen_bn_training)
        assert {name: m.training for name, m in model.named_modules()} == modes
        for k, v in model.state_dict().items():  # BN running stats and counters included
            assert torch.equal(v, state[k]), k
        assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
        assert model.conv.weight.grad is None and model.conv.bias.grad is None
        assert model.bn.bias.grad is None and model.fc.bias.grad is None
        assert torch.equal(model.fc.weight.grad, torch.full_like(model.fc.weight, 0.25))


def test_eval_mode_caller_is_respected_and_restored():
    model = _tiny_net().eval()
    model.bn.train()
    x, y = _images(), _labels()
    PGD(model, steps=1)(x, y)
    assert model.seen_bn_training[-1] is True  # bn_mode=None keeps the caller's modes
    assert not model.training and model.bn.training and not model.fc.training


def test_attack_restores_the_model_when_it_raises():
    class Broken(TinyNet):
        def forward(self, x):
            super().forward(x)
            raise RuntimeError("boom")

    torch.manual_seed(0)
    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        PGD(model, bn_mode="eval")(_images(), _labels())
    assert all(m.training for m in model.modules())


def test_autocast_runs_forward_in_low_precision_and_keeps_float32_images():
    class Recorder(TinyNet):
        def forward(self, x):
            out = super().forward(x)
            self.seen_dtypes.append((x.dtype, out.dtype))
            return out

    torch.manual_seed(0)
    model = Recorder().eval()
    model.seen_dtypes = []
    x, y = _images(), _labels()
    x_adv = PGD(PrecisionForward(model, autocast_dtype=torch.bfloat16), steps=2)(x, y)
    assert x_adv.dtype == torch.float32
    assert (x_adv - x).abs().max() <= 8.0 + 1e-4 and x_adv.min() >= 0 and x_adv.max() <= 255
    assert model.seen_dtypes and all(o == torch.bfloat16 for _, o in model.seen_dtypes)
    assert all(i == torch.float32 for i, _ in model.seen_dtypes)


# ----------------------------------------------------------------------------------------------
# Losses and factory
# ----------------------------------------------------------------------------------------------


def test_cw_loss_matches_the_original_formula():
    g = torch.Generator().manual_seed(0)
    logits = 40.0 * torch.randn(64, 10, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    mask = F.one_hot(y, 10).float()
    correct = (mask * logits).sum(1)
    wrong = ((1 - mask) * logits - 1e4 * mask).max(1).values
    expected = -F.relu(correct - wrong + 50)
    assert torch.allclose(cw_loss(logits, y), expected)
    assert (expected == 0).any() and (expected < 0).any()  # both regimes exercised
    assert torch.allclose(xent_loss(logits, y), F.cross_entropy(logits, y, reduction="none"))


def test_make_attack_builds_each_method():
    model = _tiny_net()
    cfg = {"method": "pgd", "eps": 8, "step_size": 2, "steps": 20, "random_start": True,
           "loss": "xent", "restarts": 1, "name": "pgd20"}
    a = make_attack(cfg, model, bn_mode="eval")
    assert type(a) is PGD and isinstance(a, Attack)
    assert (a.eps, a.step_size, a.steps, a.random_start, a.loss, a.restarts, a.bn_mode) == \
        (8.0, 2.0, 20, True, "xent", 1, "eval")
    f = make_attack({"method": "fgsm", "eps": 8, "steps": 1, "step_size": 8,
                     "random_start": False, "restarts": 1}, model)
    assert type(f) is FGSM and f.eps == 8.0
    assert type(make_attack("FGSM", model, generator=torch.Generator())) is FGSM
    l2 = make_attack({"method": "pgd_l2", "eps": 127.5, "step_size": 30, "steps": 5}, model)
    assert type(l2) is PGDL2 and l2.steps == 5 and l2.eps == 127.5
    p = make_attack("pgd", model, loss="cw", eps=4)
    assert p.loss == "cw" and p.eps == 4.0 and "PGD(" in repr(p)


@pytest.mark.parametrize("cfg, key", [
    ({"method": "deepfool"}, "method"),
    ({"eps": 8}, "method"),
    ({"method": "pgd", "alpha": 2}, "alpha"),
    ({"method": "pgd", "loss": "target_task_xent"}, "loss"),
    ({"method": "pgd", "bn_mode": "batch"}, "bn_mode"),
    ({"method": "pgd", "random_start": "false"}, "random_start"),
    ({"method": "pgd", "steps": 2.5}, "steps"),
    ({"method": "pgd", "restarts": 0}, "restarts"),
    ({"method": "pgd", "eps": -1}, "eps"),
    ({"method": "pgd", "eps": 0}, "eps"),
    ({"method": "fgsm", "eps": 0.0, "step_size": 0.0}, "eps"),
    ({"method": "fgsm", "steps": 10}, "steps"),
    ({"method": "fgsm", "random_start": True}, "random_start"),
    ({"method": "pgd", "eps": 8, "epsilon": 8}, "epsilon"),  # the original's name: unknown
])
def test_make_attack_rejects_bad_configs_with_one_line_errors(cfg, key):
    with pytest.raises(ConfigError) as err:
        make_attack(cfg, _tiny_net())
    assert key in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        make_attack(42, _tiny_net())


# ----------------------------------------------------------------------------------------------
# The port's WideResNet
# ----------------------------------------------------------------------------------------------


def test_pgd_on_wide_resnet_in_eval_mode_of_a_train_mode_model():
    from igam.models import WideResNet

    torch.manual_seed(0)
    model = WideResNet(num_classes=10, widths=(16, 16, 32, 64), units_per_stage=1,
                       standardization="zero_mean_l2")
    model.train()
    with torch.no_grad():  # give BN non-trivial running statistics
        model(_images(batch=16, size=32, seed=3, with_bounds=False))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = _images(batch=8, size=32, seed=4)
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1)
        clean_loss = xent_loss(model(x), y)
    model.train()
    x_adv = PGD(model, steps=3, bn_mode="eval", generator=torch.Generator().manual_seed(0))(x, y)
    assert all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert (x_adv - x).abs().max() <= 8.0 + 1e-4 and x_adv.min() >= 0 and x_adv.max() <= 255
    model.eval()
    ref = _reference_pgd(model, x, y, 8.0, 2.0, 3, seed=0)
    assert torch.equal(x_adv, ref)
    with torch.no_grad():
        adv_loss = xent_loss(model(x_adv), y)
    assert adv_loss.sum() > clean_loss.sum()


def test_keep_buffers_false_lets_train_mode_attack_update_bn_stats():
    """Adversarial training reproduces the original's TF batch norm, whose moving averages
    were updated by every train-mode forward pass, PGD iterations included."""
    from igam.models import WideResNet

    model = WideResNet(10, (4, 4, 6, 8), 1).train()
    x = torch.rand(4, 3, 8, 8) * 255
    y = torch.tensor([0, 1, 2, 3])
    before = model.stages[0][0].bn1.running_mean.clone()
    PGD(model, steps=2)(x, y)
    assert torch.equal(model.stages[0][0].bn1.running_mean, before)
    PGD(model, steps=2, keep_buffers=False)(x, y)
    assert not torch.equal(model.stages[0][0].bn1.running_mean, before)
    assert int(model.stages[0][0].bn1.num_batches_tracked) == 2


# ----------------------------------------------------------------------------------------------
# Early stopping (evaluation mode)
# ----------------------------------------------------------------------------------------------


class CountingModel(nn.Module):
    """Wraps a model and records the batch size of every forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.batch_sizes = {True: [], False: []}  # with / without autograd (the costly ones)

    def forward(self, x):
        self.batch_sizes[torch.is_grad_enabled()].append(x.shape[0])
        return self.model(x)


_EARLY_STOP_CASES = {
    "pgd": lambda m, g, **kw: PGD(m, eps=3.0, step_size=1.0, steps=8, generator=g, **kw),
    "pgd_cw_no_start": lambda m, g, **kw: PGD(m, eps=3.0, step_size=1.0, steps=6,
                                              random_start=False, loss="cw", **kw),
    "pgd_restarts": lambda m, g, **kw: PGD(m, eps=2.0, step_size=1.0, steps=4, restarts=3,
                                           generator=g, **kw),
    "pgd_l2": lambda m, g, **kw: PGDL2(m, eps=60.0, step_size=15.0, steps=6, restarts=2,
                                       generator=g, **kw),
    "fgsm": lambda m, g, **kw: FGSM(m, eps=3.0, **kw),
}


@pytest.mark.parametrize("case", sorted(_EARLY_STOP_CASES))
def test_early_stop_is_at_least_as_strong_and_keeps_fooling_iterates(case):
    model, x, y = _trained_tiny_net()
    y = y.clone()
    y[::16] = 1 - y[::16]  # wrong labels: clean-misclassified examples
    make = _EARLY_STOP_CASES[case]
    g_full, g_es = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    full = make(model, g_full, bn_mode="eval")(x, y)
    counting = CountingModel(model)
    es = make(counting, g_es, bn_mode="eval", early_stop=True)(x, y)
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
        full_ok, es_ok = model(full).argmax(1) == y, model(es).argmax(1) == y
    assert 0 < int((~clean_ok).sum()) and 0.05 < full_ok.float().mean() < clean_ok.float().mean()
    # never higher accuracy; per example: whatever the final iterate fools, early stop fools
    assert es_ok.float().mean() <= full_ok.float().mean()
    assert not (es_ok & ~full_ok).any()
    # clean-misclassified examples are returned unchanged
    assert torch.equal(es[~clean_ok], x[~clean_ok])
    # an example whose output differs from the final-iterate attack's stopped early: it is
    # fooled by what was stored; the others are the very same final iterates
    stopped = (es != full).flatten(1).any(1)
    assert stopped.any() and not es_ok[stopped].any()
    assert torch.equal(es[~stopped], full[~stopped])
    # inside the budget, and the same random stream was consumed
    if isinstance(make(model, None), PGDL2):
        assert (es - x).flatten(1).norm(dim=1).max() <= 60.0 + 1e-3
    else:
        assert (es - x).abs().max() <= 3.0 + 1e-4
    assert torch.equal(g_full.get_state(), g_es.get_state())
    # it did less work: fewer examples through gradient forwards (FGSM: as many), and at
    # most one batch of gradient-free forwards (clean check / judging restarts) beyond that
    ref = CountingModel(model)
    make(ref, torch.Generator().manual_seed(4), bn_mode="eval")(x, y)
    grad_es, grad_full = sum(counting.batch_sizes[True]), sum(ref.batch_sizes[True])
    assert grad_es < grad_full or (case == "fgsm" and grad_es == grad_full)
    assert sum(counting.batch_sizes[False]) <= sum(ref.batch_sizes[False]) + len(x)


@pytest.mark.parametrize("cls", [PGD, PGDL2])
def test_early_stop_restarts_follow_the_worst_case_rule(cls):
    # zero input gradient: every run's output is its random start, so early stop must pick
    # exactly what the final-iterate attack picks (first fooling restart, else highest loss)
    x = torch.full((32, 3, 4, 4), 128.0)
    y = torch.zeros(32, dtype=torch.long)
    model = ZeroGradThresholdModel(x[:1]).eval()  # broadcasts: any batch size
    eps = 8.0 if cls is PGD else 12.0
    full = cls(model, eps=eps, steps=1, restarts=3,
               generator=torch.Generator().manual_seed(5))(x, y)
    es = cls(model, eps=eps, steps=1, restarts=3, early_stop=True,
             generator=torch.Generator().manual_seed(5))(x, y)
    assert torch.equal(es, full)
    fooled = _fooled(model, es, y)
    assert fooled.any() and not fooled.all()


def test_early_stop_needs_independent_examples():
    model = _tiny_net()
    with pytest.raises(ConfigError, match="early_stop") as err:
        PGD(model, bn_mode="train", early_stop=True)
    assert "\n" not in str(err.value)
    model.train()  # bn_mode None keeps the caller's train mode: batch statistics
    with pytest.raises(ConfigError, match="eval mode"):
        PGD(model, early_stop=True)(_images(), _labels())
    assert model.training  # restored
    # the evaluation scripts' path: switched off with a warning, attack as the original
    with pytest.warns(UserWarning, match="early_stop is off"):
        a = make_attack({"method": "pgd", "early_stop": True}, model, bn_mode="train")
    assert a.early_stop is False and a.bn_mode == "train"
    assert make_attack({"method": "pgd", "early_stop": True}, model, bn_mode="eval").early_stop
    with pytest.raises(ConfigError, match="early_stop"):
        make_attack({"method": "pgd", "early_stop": "yes"}, model)


def test_adversarial_training_pgd_does_not_early_stop():
    from igam.run import schemas

    # the class default is the original's final-iterate PGD, and training has no such key
    assert PGD(_tiny_net()).early_stop is False and FGSM(_tiny_net()).early_stop is False
    assert "early_stop" not in schemas.ADVTRAIN_SCHEMA.defaults["attack"]
    # evaluation: on by default
    assert schemas.ATTACK_SCHEMA.defaults["attack"]["early_stop"] is True


def test_model_mode_restores_flags_switches_and_buffers_even_on_error():
    from igam.ops import BatchNorm2d, model_mode

    net = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNorm2d(4), nn.Dropout())
    net.train()
    net[2].eval()  # a submodule in another mode than its parent
    net[1].stats = "running"
    before = [b.clone() for b in net.buffers()]
    with pytest.raises(RuntimeError, match="inside"):
        with model_mode(net, "train"):
            net[1].stats = None
            assert all(m.training for m in net.modules())
            net(torch.rand(2, 3, 8, 8) * 255)  # updates the running statistics
            raise RuntimeError("inside")
    assert net.training and net[1].training and not net[2].training
    assert net[1].stats == "running"
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers()))
    with model_mode(net, "train", restore_buffers=False):
        net[1].stats = None
        net(torch.rand(2, 3, 8, 8) * 255)
    assert int(net[1].num_batches_tracked) == 1 and net[1].stats == "running"
