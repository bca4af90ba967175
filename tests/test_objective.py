"""Input gradients, the IGAM losses, the optimiser/schedule and the IGAM iteration order."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from igam.gradients import input_gradient
from igam.models import InputGradientDiscriminator, Teacher, WideResNet
from igam.objective import IGAMSettings, IGAMTrainer, random_pert, student_loss
from igam.optim import AdamTF1, PiecewiseConstant, decay_parameters, sgd, weight_decay_loss


def tiny(num_classes=10, widths=(4, 4, 6, 8), dtype=torch.float32):
    return WideResNet(num_classes, widths, 1, "zero_mean_l2").to(dtype)


def test_input_gradient_matches_finite_differences_fp64_batch_bn():
    model = tiny(dtype=torch.float64).train()  # batch statistics couple the examples
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64) * 255
    y = torch.tensor([1, 4, 7])

    def f(xx):
        with torch.no_grad():
            return model(xx).softmax(1).gather(1, y[:, None]).sum()

    g = input_gradient(model, x, y)
    assert g.shape == x.shape and not g.requires_grad
    h = 1e-3
    for idx in [(0, 0, 0, 0), (1, 2, 3, 4), (2, 1, 7, 7), (0, 2, 5, 1)]:
        e = torch.zeros_like(x)
        e[idx] = h
        fd = (f(x + e) - f(x - e)) / (2 * h)
        assert abs(fd.item() - g[idx].item()) <= 1e-6 * max(1.0, abs(fd.item())) + 1e-10


def test_input_gradient_is_of_probability_not_xent():
    model = tiny().eval()
    x = torch.rand(2, 3, 8, 8) * 255
    y = torch.tensor([0, 3])
    g = input_gradient(model, x, y)
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    assert not torch.allclose(g, -gx)


def make_igam(beta=1.0, gamma=1.0, steps_before=0, disc_every=1, same=True):
    torch.manual_seed(0)
    student = tiny()
    teacher = Teacher(tiny(20), 10, bn="batch")
    teacher.freeze_source()
    for p in teacher.parameters():
        p.requires_grad_(False)
    disc = InputGradientDiscriminator(image_size=8, num_conv_layers=2, base_channels=4)
    s = IGAMSettings(beta=beta, gamma=gamma, lr_schedule=((0, 0.1), (2, 0.01)),
                     disc_update_steps=disc_every, steps_before_adv_opt=steps_before,
                     same_optimizer=same)
    return student, teacher, disc, IGAMTrainer(student, teacher, disc, s)


def test_student_loss_terms_and_second_order_flow():
    student, teacher, disc, tr = make_igam()
    x = torch.rand(4, 3, 8, 8) * 255
    y = torch.tensor([0, 1, 2, 3])
    g_t = tr.teacher_gradient(x, y)
    parts = student_loss(student.train(), disc.train(), x, y, g_t, beta=2.0, gamma=10.0)
    g_s = parts["g_student"]
    torch.testing.assert_close(parts["l2"], ((g_s - g_t) ** 2).sum())  # batch SUM
    torch.testing.assert_close(parts["loss"],
                               parts["xent"] - 2.0 * parts["disc_xent"] + 10.0 * parts["l2"])
    # the discriminator term reaches the student only through g_s (second order): nonzero
    (gd,) = torch.autograd.grad(parts["disc_xent"], student.init_conv.weight, retain_graph=True)
    assert gd.abs().sum() > 0
    (gl,) = torch.autograd.grad(parts["l2"], student.fc.weight)
    assert gl.abs().sum() > 0


def test_weight_decay_only_on_conv_and_fc_weights():
    model = tiny()
    decay, other = decay_parameters(model)
    assert any(p is model.fc.weight for p in decay)
    assert any(p is model.init_conv.weight for p in decay)
    assert any(p is model.fc.bias for p in other)
    assert all(p.dim() == 1 for p in other)  # biases, BN gamma/beta
    opt = sgd(model, 0.1, 0.9, 2e-4)
    assert [g["weight_decay"] for g in opt.param_groups] == [2e-4, 0.0]
    # SGD weight_decay == gradient of the original's wd * sum(w^2)/2 term
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(model.fc.weight, w0["fc.weight"] * (1 - 0.1 * 2e-4))
    torch.testing.assert_close(model.fc.bias, w0["fc.bias"])
    assert weight_decay_loss(model) > 0


def test_piecewise_constant_boundary_keeps_old_value():
    s = PiecewiseConstant([[0, 0.1], [160000, 0.01], [240000, 0.001]])
    assert s(0) == 0.1 and s(160000) == 0.1 and s(160001) == 0.01
    assert s(240000) == 0.01 and s(240001) == 0.001 and s(10**7) == 0.001


def test_warmup_phase_trains_student_only():
    student, teacher, disc, tr = make_igam(steps_before=2)
    d0 = copy.deepcopy(disc.state_dict())
    s0 = copy.deepcopy(student.state_dict())
    x = torch.rand(4, 3, 8, 8) * 255
    y = torch.tensor([0, 1, 2, 3])
    out = tr.step(x, y)
    assert "disc_xent" not in out and tr.global_step == 1
    for k, v in disc.state_dict().items():
        assert torch.equal(v, d0[k])
    assert not torch.equal(student.fc.weight, s0["fc.weight"])


def test_igam_iteration_order_disc_sees_updated_student():
    student, teacher, disc, tr = make_igam(disc_every=2)
    x = torch.rand(4, 3, 8, 8) * 255
    y = torch.tensor([0, 1, 2, 3])
    d_before = copy.deepcopy(disc)
    t_state = copy.deepcopy(teacher.state_dict())
    out = tr.step(x, y)  # ii = 0: student step, then discriminator step
    assert tr.global_step == 1 and "d_step_disc_xent" in out
    # expected discriminator update: g_s from the UPDATED student (state after the step;
    # its BN running stats were updated once more by the D step's forward, which doesn't
    # affect train-mode outputs), lr = schedule(global_step after increment)
    upd = copy.deepcopy(student).train()
    g_s = input_gradient(upd, x, y)
    g_t = input_gradient(teacher, x, y)
    logits = d_before.train()(g_s, g_t)
    loss = F.cross_entropy(logits, InputGradientDiscriminator.labels(4))
    grads = torch.autograd.grad(loss, list(d_before.parameters()))
    decay_ids = {id(p) for p in decay_parameters(d_before)[0]}
    for (name, p0), g, p1 in zip(d_before.named_parameters(), grads, disc.parameters()):
        wd = 2e-4 if id(p0) in decay_ids else 0.0
        torch.testing.assert_close(p1, p0 - 0.1 * (g + wd * p0), rtol=1e-5, atol=1e-7,
                                   msg=name)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, t_state[k]), k  # teacher untouched
    out = tr.step(x, y)  # ii = 1: no discriminator step
    assert "d_step_disc_xent" not in out and "disc_xent" in out


def test_igam_trainer_resume_is_exact():
    x = torch.rand(4, 3, 8, 8) * 255
    y = torch.tensor([0, 1, 2, 3])
    student, teacher, disc, tr = make_igam(disc_every=2)
    for _ in range(2):
        tr.step(x, y)
    snap = (copy.deepcopy(student.state_dict()), copy.deepcopy(disc.state_dict()),
            copy.deepcopy(tr.state_dict()))
    ref = [tr.step(x, y)["loss"] for _ in range(3)]
    student2, teacher2, disc2, tr2 = make_igam(disc_every=2)
    teacher2.load_state_dict(teacher.state_dict())
    student2.load_state_dict(snap[0])
    disc2.load_state_dict(snap[1])
    tr2.load_state_dict(snap[2])
    got = [tr2.step(x, y)["loss"] for _ in range(3)]
    torch.testing.assert_close(torch.stack(got), torch.stack(ref))


def test_adam_discriminator_minimises_xent_plus_its_weight_decay():
    """same_optimizer false: TF1's Adam(1e-3) on D_xent + wd * sum(w^2)/2 over the
    discriminator's conv/FC weights, as the original's d_optimizer.minimize(total_d_loss)."""
    wd = 1.0  # large, so that the term changes the signs Adam's first step follows
    torch.manual_seed(0)
    student, teacher = tiny(), Teacher(tiny(20), 10, bn="batch")
    for p in teacher.parameters():
        p.requires_grad_(False)
    disc = InputGradientDiscriminator(image_size=8, num_conv_layers=2, base_channels=4)
    d_before = copy.deepcopy(disc)
    s = IGAMSettings(beta=1.0, gamma=1.0, weight_decay=wd, lr_schedule=((0, 0.1),),
                     disc_update_steps=1, steps_before_adv_opt=0, same_optimizer=False)
    tr = IGAMTrainer(student, teacher, disc, s)
    x = torch.rand(4, 3, 8, 8) * 255
    y = torch.tensor([0, 1, 2, 3])
    assert "d_step_disc_xent" in tr.step(x, y)
    g_s = input_gradient(copy.deepcopy(student).train(), x, y)
    g_t = input_gradient(teacher, x, y)

    def adam_step(weight_decay):
        d = copy.deepcopy(d_before).train()
        xent = F.cross_entropy(d(g_s, g_t), InputGradientDiscriminator.labels(4))
        dw = [m.weight for m in d.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        opt = AdamTF1(d.parameters(), lr=1e-3)
        (xent + weight_decay * sum(w.pow(2).sum() for w in dw) / 2).backward()
        opt.step()
        return d

    want, without = adam_step(wd), adam_step(0.0)
    for (name, got), p in zip(disc.named_parameters(), want.parameters()):
        torch.testing.assert_close(got, p, rtol=1e-5, atol=1e-7, msg=name)
    assert not torch.allclose(disc.logit.weight, without.logit.weight)  # the term matters


def test_adam_discriminator_option_and_random_pert():
    *_, tr = make_igam(same=False)
    assert isinstance(tr.disc_opt, AdamTF1)
    x = torch.tensor([[[[0.0, 255.0, 100.0]]]]).expand(64, 3, 1, 3).contiguous()
    p = random_pert(x, 8.0, torch.Generator().manual_seed(0))
    assert p.min() >= 0 and p.max() <= 255 and (p - x).abs().max() <= 8.0
    assert (p - x).abs().max() > 4.0


@pytest.mark.parametrize("bn", ["batch", "running"])
def test_teacher_gradient_does_not_change_teacher(bn):
    student, teacher, disc, tr = make_igam()
    teacher.set_bn(bn)
    before = copy.deepcopy(teacher.state_dict())
    tr.teacher_gradient(torch.rand(4, 3, 8, 8) * 255, torch.tensor([0, 1, 2, 3]))
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])


def test_settings_and_discriminator_defaults_are_the_config_defaults():
    """One source of truth: IGAMSettings and InputGradientDiscriminator default to the values
    of train_igam.py's config schema, and from_config reads those sections by name."""
    from igam.run import schemas
    from igam.run.config import load_config

    cfg = load_config(schemas.IGAM_SCHEMA, [])
    assert IGAMSettings.from_config(cfg) == IGAMSettings(lr_schedule=cfg["train"]["lr_schedule"])
    assert IGAMSettings().beta == cfg["igam"]["beta"] == 5.0
    over = load_config(schemas.IGAM_SCHEMA, ["--igam.beta", "2", "--train.momentum", "0.5"])
    settings = IGAMSettings.from_config(over)
    assert (settings.beta, settings.momentum) == (2.0, 0.5)
    default = InputGradientDiscriminator(32).arch
    built = InputGradientDiscriminator.from_config(cfg["discriminator"], 32, "zero_mean_l2").arch
    assert default == built
    assert (default["num_conv_layers"], default["base_channels"]) == (4, 8)
    l2 = InputGradientDiscriminator.from_config(cfg["discriminator"], 32, "l2")
    assert l2.standardization == "l2"
