"""The original's optimisers in igam.optim.

* AdamTF1 (TF1's Adam: epsilon added to the raw sqrt(v)) against the formula in numpy float64,
  against torch.optim.Adam where the two rules agree and where they must differ; resuming: its
  own state continues exactly, a torch.optim.Adam state of earlier versions is refused with a
  one-line CheckpointError naming the file.
* sgd against tf.train.MomentumOptimizer's rule across a learning-rate boundary, and the
  discriminator's SGD reading the learning rate of the incremented global step."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from igam.errors import CheckpointError
from igam.models import InputGradientDiscriminator, Teacher, WideResNet
from igam.objective import IGAMSettings, IGAMTrainer
from igam.optim import (
    AdamTF1,
    PiecewiseConstant,
    adam,
    decay_parameters,
    set_lr,
    sgd,
    weight_decay_loss,
)
from igam.run import engine
from igam.run.checkpoint import load_checkpoint, save_checkpoint
from igam.training import HeadFinetuner

LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8
STEPS = 5
SCALES = [1.0, 1e-3, 1e-5, 1e-7, 1e-9]


def tf1_adam_reference(w0, grads, lr=LR, betas=BETAS, eps=EPS, wd=0.0):
    """The TF1 rule in numpy float64, step by step: g += wd * w (the L2 loss term's gradient);
    m, v the usual moments; lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t);
    w -= lr_t m / (sqrt(v) + eps). Returns the weights after each step."""
    b1, b2 = betas
    w = np.array(w0, dtype=np.float64)
    m, v = np.zeros_like(w), np.zeros_like(w)
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, dtype=np.float64) + wd * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        lr_t = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        w = w - lr_t * m / (np.sqrt(v) + eps)
        out.append(w.copy())
    return out


def gradients(scale, n=64, steps=STEPS, seed=0):
    """``steps`` gradients (float64 numpy) of magnitude in [0.5, 1.5] * scale, random signs
    (no element near zero, so that ``scale`` alone sets how much epsilon matters)."""
    rng = np.random.default_rng(seed)
    return [scale * rng.uniform(0.5, 1.5, n) * rng.choice([-1.0, 1.0], n) for _ in range(steps)]


def run(optimizer_cls, w0, grads, dtype, **kw):
    w = torch.tensor(w0, dtype=dtype, requires_grad=True)
    opt = optimizer_cls([w], **kw)
    out = []
    for g in grads:
        w.grad = torch.tensor(g, dtype=dtype)
        opt.step()
        out.append(w.detach().clone())
    return out


@pytest.mark.parametrize("scale", SCALES)
def test_matches_the_tf1_formula_in_float64(scale):
    """Every step, at gradient scales from 1 down to 1e-9 (where epsilon dominates)."""
    w0 = np.random.default_rng(1).uniform(-1, 1, 64)
    grads = gradients(scale)
    want = tf1_adam_reference(w0, grads)
    got = run(AdamTF1, w0, grads, torch.float64)
    for t, (g, w) in enumerate(zip(got, want), start=1):
        np.testing.assert_allclose(g.numpy() - w0, w - w0, rtol=1e-10, atol=0,
                                   err_msg=f"step {t}, scale {scale}")


@pytest.mark.parametrize("scale", [1.0, 1e-5, 1e-9])
def test_matches_the_tf1_formula_in_float32(scale):
    """float32 parameters: the formula up to float32 rounding of w (|w| <= 1)."""
    w0 = np.random.default_rng(1).uniform(-1, 1, 64).astype(np.float32).astype(np.float64)
    grads = [g.astype(np.float32).astype(np.float64) for g in gradients(scale)]
    want = tf1_adam_reference(w0, grads)
    got = run(AdamTF1, w0, grads, torch.float32)
    for t, (g, w) in enumerate(zip(got, want), start=1):
        np.testing.assert_allclose(g.double().numpy(), w, rtol=0, atol=4e-7,
                                   err_msg=f"step {t}, scale {scale}")


@pytest.mark.parametrize("scale", [1e-5, 1e-9])
def test_weight_decay_is_the_l2_loss_term_as_the_port_applies_it(scale):
    """``igam.optim.adam`` (decay through ``weight_decay`` on conv/FC weights) = AdamTF1 on
    loss + wd * weight_decay_loss = the formula with g + wd * w on those weights only."""
    wd = 2e-4
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                           nn.Linear(4, 2)).double()
    twin = copy.deepcopy(module)
    decay, _ = decay_parameters(module)
    decayed = {id(p) for p in decay}
    params, twin_params = list(module.parameters()), list(twin.parameters())
    w0 = [p.detach().numpy().copy() for p in params]
    rng = np.random.default_rng(2)
    grads = [[scale * rng.standard_normal(p.shape) for p in params] for _ in range(STEPS)]

    opt = adam(module, LR, wd)
    opt_twin = AdamTF1(twin_params, lr=LR)  # the decay term in the loss instead
    for step_grads in grads:
        for p, q, g in zip(params, twin_params, step_grads):
            p.grad, q.grad = torch.tensor(g), torch.tensor(g)
        opt.step()
        (wd * weight_decay_loss(twin)).backward()  # accumulates wd * w into the decayed grads
        opt_twin.step()

    for i, p in enumerate(params):
        want = tf1_adam_reference(w0[i], [g[i] for g in grads],
                                  wd=wd if id(p) in decayed else 0.0)[-1]
        np.testing.assert_allclose(p.detach().numpy() - w0[i], want - w0[i], rtol=1e-10,
                                   atol=1e-18, err_msg=f"parameter {i}")
        torch.testing.assert_close(twin_params[i], p, rtol=1e-12, atol=1e-15)


def test_differs_from_torch_adam_where_epsilon_matters():
    """First step: torch gives lr g / (|g| + eps), TF1 lr g / (|g| + eps / sqrt(1 - beta2)).
    At |g| ~ 1e-9 TF1 moves ~30x less, at |g| ~ 1e-5 2-6% less."""
    for scale, lo, hi in [(1e-9, 27.0, 31.0), (1e-5, 1.02, 1.062)]:
        w0 = np.zeros(64)
        grads = gradients(scale, steps=1)
        tf1 = run(AdamTF1, w0, grads, torch.float64)[0].numpy()
        pt = run(torch.optim.Adam, w0, grads, torch.float64, lr=LR, eps=EPS)[0].numpy()
        g = np.abs(grads[0])
        np.testing.assert_allclose(np.abs(tf1), LR * g / (g + EPS / math.sqrt(1 - BETAS[1])),
                                   rtol=1e-12)
        np.testing.assert_allclose(np.abs(pt), LR * g / (g + EPS), rtol=1e-12)
        ratio = np.abs(pt) / np.abs(tf1)
        assert (ratio > lo).all() and (ratio < hi).all(), (scale, ratio.min(), ratio.max())


@pytest.mark.parametrize("scale", SCALES)
def test_agrees_with_torch_adam_where_epsilon_is_negligible(scale):
    """eps = 0: the two rules are the same at every scale. eps = 1e-8 and |g| in [0.5, 1.5]:
    they differ by ~(eps / sqrt(1 - beta2^t) - eps) / |g| relative (< 1e-6 here)."""
    w0 = np.random.default_rng(1).uniform(-1, 1, 64)
    grads = gradients(scale)
    tf1 = run(AdamTF1, w0, grads, torch.float64, eps=0.0)
    pt = run(torch.optim.Adam, w0, grads, torch.float64, lr=LR, eps=0.0)
    for a, b in zip(tf1, pt):
        np.testing.assert_allclose(a.numpy() - w0, b.numpy() - w0, rtol=1e-10)
    if scale == 1.0:  # each step's update (their sums may nearly cancel)
        tf1 = [w0] + [w.numpy() for w in run(AdamTF1, w0, grads, torch.float64)]
        pt = [w0] + [w.numpy() for w in run(torch.optim.Adam, w0, grads, torch.float64,
                                             lr=LR, eps=EPS)]
        for t in range(1, STEPS + 1):
            np.testing.assert_allclose(tf1[t] - tf1[t - 1], pt[t] - pt[t - 1], rtol=1e-6)


def test_state_layout_device_and_exact_resume(tmp_path):
    """``step`` (int), ``exp_avg``, ``exp_avg_sq`` like the parameter; the rule recorded in
    every group; a state saved in a checkpoint (weights_only) continues exactly."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt = adam(module, LR, 2e-4)
    x = torch.randn(8, 5)

    def one_step(m, o):
        o.zero_grad(set_to_none=True)
        m(x).pow(2).mean().backward()
        o.step()

    for _ in range(3):
        one_step(module, opt)
    state = opt.state_dict()
    assert all(g["update_rule"] == AdamTF1.UPDATE_RULE for g in state["param_groups"])
    for p in module.parameters():
        s = opt.state[p]
        assert s["step"] == 3 and isinstance(s["step"], int)
        for key in ("exp_avg", "exp_avg_sq"):
            assert s[key].shape == p.shape and s[key].device == p.device
            assert s[key].dtype == p.dtype
    path = save_checkpoint(tmp_path / "ckpt.pt", {"model": module.state_dict(), "opt": state})
    loaded = load_checkpoint(path)
    twin = copy.deepcopy(module)
    twin.load_state_dict(loaded["model"])
    opt_twin = adam(twin, LR, 2e-4)
    opt_twin.load_state_dict(loaded["opt"])
    for _ in range(2):
        one_step(module, opt)
        one_step(twin, opt_twin)
    for a, b in zip(module.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_refuses_a_state_of_another_optimiser():
    w = torch.zeros(3, requires_grad=True)
    old = torch.optim.Adam([w], lr=LR)
    w.grad = torch.ones(3)
    old.step()
    with pytest.raises(ValueError, match=r"torch\.optim\.Adam"):
        AdamTF1([w]).load_state_dict(old.state_dict())
    with pytest.raises(ValueError, match=r"torch\.optim\.SGD"):
        AdamTF1([w]).load_state_dict(torch.optim.SGD([w], lr=0.1).state_dict())


def _tiny_teacher():
    torch.manual_seed(0)
    return Teacher(WideResNet(20, (4, 4, 6, 8), 1, "zero_mean_l2"), 10, bn="batch")


def _assert_refused(exc_info, path):
    msg = str(exc_info.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert "torch.optim.Adam" in msg and "cannot resume" in msg, msg


@pytest.mark.parametrize("whole_model", [False, True])
def test_resuming_a_torch_adam_finetuning_checkpoint_is_refused(tmp_path, whole_model):
    """A teacher-finetuning run checkpointed by the earlier code (HeadFinetuner with
    torch.optim.Adam) cannot be resumed by this one: one line naming the file."""
    x, y = torch.rand(4, 3, 8, 8) * 255, torch.arange(4)
    teacher = _tiny_teacher()
    old = HeadFinetuner(teacher, 1e-3, whole_model)
    old.optimizer = torch.optim.Adam([p for p in teacher.parameters() if p.requires_grad],
                                     lr=1e-3)  # what the earlier code built
    old.step(x, y)
    engine.Checkpointer(tmp_path, "teacher", {}, teacher, old).save(1)
    path = tmp_path / "checkpoint.pt"

    fresh = _tiny_teacher()
    new = HeadFinetuner(fresh, 1e-3, whole_model)
    with pytest.raises(CheckpointError) as exc_info:
        engine.Checkpointer(tmp_path, "teacher", {}, fresh, new).restore(path)
    _assert_refused(exc_info, path)

    # a checkpoint of this version resumes
    teacher = _tiny_teacher()
    cur = HeadFinetuner(teacher, 1e-3, whole_model)
    cur.step(x, y)
    engine.Checkpointer(tmp_path, "teacher", {}, teacher, cur).save(1)
    fresh = _tiny_teacher()
    new = HeadFinetuner(fresh, 1e-3, whole_model)
    assert engine.Checkpointer(tmp_path, "teacher", {}, fresh, new).restore(path) == 1
    assert isinstance(new.optimizer, AdamTF1) and new.global_step == 1


def test_resuming_a_torch_adam_discriminator_checkpoint_is_refused(tmp_path):
    """IGAM with same_optimizer false, checkpointed by the earlier code (the discriminator's
    torch.optim.Adam): refused, one line naming the file."""
    def make():
        torch.manual_seed(0)
        student = WideResNet(10, (4, 4, 6, 8), 1, "zero_mean_l2")
        teacher = _tiny_teacher()
        for p in teacher.parameters():
            p.requires_grad_(False)
        disc = InputGradientDiscriminator(image_size=8, num_conv_layers=2, base_channels=4)
        s = IGAMSettings(lr_schedule=((0, 0.1),), disc_update_steps=1, steps_before_adv_opt=0,
                         same_optimizer=False)
        return student, disc, IGAMTrainer(student, teacher, disc, s)

    student, disc, old = make()
    assert isinstance(old.disc_opt, AdamTF1)
    decay, other = decay_parameters(disc)  # the earlier igam.optim.adam
    old.disc_opt = torch.optim.Adam([{"params": decay, "weight_decay": 2e-4},
                                     {"params": other, "weight_decay": 0.0}], lr=1e-3)
    old.step(torch.rand(4, 3, 8, 8) * 255, torch.arange(4))
    engine.Checkpointer(tmp_path, "igam", {}, student, old, extras={"discriminator": disc}).save(1)
    path = tmp_path / "checkpoint.pt"
    student, disc, new = make()
    with pytest.raises(CheckpointError) as exc_info:
        engine.Checkpointer(tmp_path, "igam", {}, student, new,
                            extras={"discriminator": disc}).restore(path)
    _assert_refused(exc_info, path)


def test_sgd_is_tf_momentum_optimizer_across_a_learning_rate_boundary():
    """accum = momentum * accum + (g + wd * w); w -= lr(step) * accum, lr read at the step
    before it is incremented; the accumulator is not rescaled when the rate changes."""
    wd, momentum = 2e-4, 0.9
    schedule = PiecewiseConstant([[0, 0.1], [2, 0.01]])
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    decayed = {id(p) for p in decay_parameters(module)[0]}
    params = list(module.parameters())
    opt = sgd(module, schedule(0), momentum, wd)
    rng = np.random.default_rng(3)
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(5)]
    w = [p.detach().numpy().copy() for p in params]
    accum = [np.zeros_like(x) for x in w]
    for step, step_grads in enumerate(grads):
        set_lr(opt, schedule(step))
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g)
        opt.step()
        for i, p in enumerate(params):
            g = step_grads[i] + (wd * w[i] if id(p) in decayed else 0.0)
            accum[i] = momentum * accum[i] + g
            w[i] = w[i] - schedule(step) * accum[i]
    for i, p in enumerate(params):
        np.testing.assert_allclose(p.detach().numpy(), w[i], rtol=1e-12, atol=1e-15)


def test_discriminator_sgd_reads_the_incremented_global_step():
    """same_optimizer: the discriminator step runs after the student's global-step increment,
    so at iteration ii it uses lr(ii + 1) while the student used lr(ii) (the original's shared
    learning_rate tensor, evaluated in a later session.run)."""
    torch.manual_seed(0)
    student = WideResNet(10, (4, 4, 6, 8), 1, "zero_mean_l2")
    teacher = _tiny_teacher()
    for p in teacher.parameters():
        p.requires_grad_(False)
    disc = InputGradientDiscriminator(image_size=8, num_conv_layers=2, base_channels=4)
    s = IGAMSettings(lr_schedule=((0, 0.1), (1, 0.01)), disc_update_steps=1,
                     steps_before_adv_opt=0, same_optimizer=True)
    tr = IGAMTrainer(student, teacher, disc, s)
    x, y = torch.rand(4, 3, 8, 8) * 255, torch.arange(4)
    lrs = []
    for _ in range(3):
        tr.step(x, y)
        lrs.append((tr.student_opt.param_groups[0]["lr"], tr.disc_opt.param_groups[0]["lr"]))
    assert lrs == [(0.1, 0.1), (0.1, 0.01), (0.01, 0.01)]
