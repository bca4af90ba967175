"""Models and TF-numerics building blocks: each test targets a classic porting mistake."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from igam.models import (
    DEBUG_WIDTHS,
    InputGradientDiscriminator,
    ResidualUnit,
    Teacher,
    WideResNet,
    build_model,
)
from igam.ops import (
    BatchNorm2d,
    Conv2dSame,
    l2_normalize,
    lrelu,
    same_padding,
    standardize,
    upresize,
)


def tiny_wrn(num_classes=10, std="zero_mean_l2", dtype=torch.float32):
    return WideResNet(num_classes, DEBUG_WIDTHS, 1, std).to(dtype)


def test_same_padding_stride2_is_asymmetric_not_padding1():
    conv = Conv2dSame(3, 4, 3, stride=2)
    x = torch.randn(2, 3, 8, 8)
    manual = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, None, 2, 0)
    torch.testing.assert_close(conv(x), manual)
    wrong = F.conv2d(x, conv.weight, None, 2, 1)
    assert (conv(x) - wrong).abs().max() > 1e-2
    assert same_padding(8, 3, 2) == (0, 1)
    assert same_padding(8, 3, 1) == (1, 1)
    assert same_padding(32, 4, 2) == (1, 1)  # discriminator convs: symmetric
    assert same_padding(7, 3, 2) == (1, 1)


def test_conv_init_statistics():
    conv = Conv2dSame(64, 128, 3)
    assert abs(conv.weight.std().item() - math.sqrt(2 / (9 * 128))) < 0.01 * math.sqrt(2 / 1152) * 5
    lin = WideResNet(10, DEBUG_WIDTHS, 1).fc
    bound = math.sqrt(3 / 64)
    assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.8 * bound
    assert torch.all(lin.bias == 0)


def test_upresize_is_tf1_legacy_bilinear():
    x = torch.rand(2, 3, 32, 32) * 255
    y = upresize(x, 64)
    assert y.shape == (2, 3, 64, 64)
    # rows: even outputs copy input i/2, odd outputs average neighbours, 63 copies 31.
    r = upresize(x, 64)[:, :, :, ::2]  # columns copied exactly -> isolate rows
    torch.testing.assert_close(r[:, :, 0::2], x)
    torch.testing.assert_close(r[:, :, 1:63:2], (x[:, :, :-1] + x[:, :, 1:]) / 2)
    torch.testing.assert_close(r[:, :, 63], x[:, :, 31])
    torch.testing.assert_close(y[:, :, 63, 63], x[:, :, 31, 31])
    wrong = F.interpolate(x, size=64, mode="bilinear", align_corners=False)
    assert (y - wrong).abs().max() > 10
    # differentiable, gradient lands on the 32x32 input
    xg = x.clone().requires_grad_(True)
    upresize(xg, 64).sum().backward()
    assert xg.grad.shape == x.shape and xg.grad.abs().sum() > 0


def test_l2_normalize_epsilon_bounds_squared_norm():
    x = torch.full((1, 3, 2, 2), 1e-8)
    out = l2_normalize(x)
    torch.testing.assert_close(out, x * 1e6)  # rsqrt(max(1.2e-15, 1e-12)) = 1e6
    assert (F.normalize(x.flatten(1), dim=1).norm() - 1).abs() < 1e-5  # F.normalize differs
    big = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(l2_normalize(big).flatten(1).norm(dim=1), torch.ones(4))


def test_standardizations():
    x = torch.rand(3, 3, 8, 8) * 255
    z = standardize(x, "zero_mean_l2")
    assert z.flatten(1).mean(1).abs().max() < 1e-6
    torch.testing.assert_close(z.flatten(1).norm(dim=1), torch.ones(3))
    p = standardize(x, "per_image")
    torch.testing.assert_close(p.flatten(1).std(1, unbiased=False), torch.ones(3))
    const = torch.full((1, 3, 8, 8), 7.0)
    assert torch.all(standardize(const, "per_image") == 0)  # std clamped to 1/sqrt(192)
    torch.testing.assert_close(standardize(x, "l2"), l2_normalize(x))
    with pytest.raises(ValueError):
        standardize(x, "bogus")


def test_lrelu_gradient_at_zero_is_one():
    x = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    lrelu(x).sum().backward()
    assert x.grad.tolist() == [pytest.approx(0.1), 1.0, 1.0]
    x2 = torch.tensor([0.0], requires_grad=True)
    F.leaky_relu(x2, 0.1).sum().backward()
    assert x2.grad.item() != 1.0  # the bug we avoid


def test_batchnorm_eps_momentum_and_variance():
    bn = BatchNorm2d(4)
    assert bn.eps == 1e-3 and bn.momentum == 0.1
    x = torch.randn(8, 4, 3, 3) * 0.05
    out = bn(x)
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(out, (x - mean) / torch.sqrt(var + 1e-3))
    n = 8 * 9
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * var.flatten() * n / (n - 1))


def test_batchnorm_stats_switch():
    bn = BatchNorm2d(2)
    bn.running_mean.fill_(3.0)
    x = torch.randn(4, 2, 2, 2)
    bn.stats = "batch"
    bn.eval()
    out = bn(x)
    assert torch.all(bn.running_mean == 3.0)
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    bn.stats = "running"
    bn.train()
    out = bn(x)
    assert torch.all(bn.running_mean == 3.0)
    torch.testing.assert_close(out, (x - 3.0) / math.sqrt(1 + 1e-3))


def test_shortcut_channels_land_in_the_middle():
    unit = ResidualUnit(16, 32, 2, activate_before_residual=False)
    nn.init.zeros_(unit.conv2.weight)  # branch output 0 -> output = shortcut
    x = torch.randn(2, 16, 8, 8)
    out = unit(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, 8:24], F.avg_pool2d(x, 2, 2))
    assert torch.all(out[:, :8] == 0) and torch.all(out[:, 24:] == 0)
    first = ResidualUnit(16, 16, 1, activate_before_residual=True)
    nn.init.zeros_(first.conv2.weight)
    first.eval()
    torch.testing.assert_close(first(x), lrelu(first.bn1(x)))  # shortcut is the activation


def test_wrn_shapes_and_build_roundtrip():
    m = WideResNet(7, DEBUG_WIDTHS, 2, "per_image")
    x = torch.rand(3, 3, 32, 32) * 255
    assert m(x).shape == (3, 7)
    assert m(torch.rand(2, 3, 64, 64) * 255).shape == (2, 7)
    m2 = build_model(m.arch)
    assert isinstance(m2, WideResNet)
    m2.load_state_dict(m.state_dict())
    m.eval()
    m2.eval()
    torch.testing.assert_close(m(x), m2(x))
    assert len(m.stages[0]) == 2 and m.stages[2][0].conv1.stride == (2, 2)


def test_teacher_batch_bn_leaves_saved_state_untouched():
    src = tiny_wrn(200)
    teacher = Teacher(src, 10, upresize_to=64, standardization="l2", bn="batch")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.rand(4, 3, 32, 32) * 255
    teacher.train()
    assert teacher(x).shape == (4, 10)
    assert teacher.source_logits(torch.rand(4, 3, 64, 64) * 255).shape == (4, 200)
    teacher.eval()
    out_eval = teacher(x)
    teacher.train()
    torch.testing.assert_close(out_eval, teacher(x))  # batch stats in both modes
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    rebuilt = build_model(teacher.arch)
    assert rebuilt.upresize_to == 64 and rebuilt.standardization == "l2" and rebuilt.bn == "batch"
    rebuilt.load_state_dict(teacher.state_dict())
    torch.testing.assert_close(rebuilt(x), out_eval)


def test_teacher_upresize_matches_manual_resize():
    src = tiny_wrn(200)
    teacher = Teacher(src, 10, upresize_to=64, standardization="l2", bn="running")
    x = torch.rand(2, 3, 32, 32) * 255
    feats = src.features(upresize(x, 64), "l2")
    src.eval()
    torch.testing.assert_close(teacher(x), teacher.target_head(feats))


@pytest.mark.parametrize("avg_pool", [False, True])
def test_discriminator_shapes_and_nhwc_flatten(avg_pool):
    d = InputGradientDiscriminator(image_size=32, num_conv_layers=2, base_channels=4,
                                   avg_pool=avg_pool)
    gs, gt = torch.randn(5, 3, 32, 32), torch.randn(5, 3, 32, 32)
    out = d(gs, gt)
    assert out.shape == (10, 2)
    assert d.logit.in_features == (8 if avg_pool else 8 * 8 * 8)
    if not avg_pool:
        # the FC sees NHWC-flattened maps: reproduce by hand
        h = standardize(torch.cat([gs, gt]), "zero_mean_l2")
        for conv, bn in zip(d.convs, d.bns):
            h = lrelu(bn(conv(h)))
        torch.testing.assert_close(out, d.logit(h.permute(0, 2, 3, 1).reshape(10, -1)))
    fc = InputGradientDiscriminator(image_size=8, base_channels=16, only_fully_connected=True)
    assert fc(torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)).shape == (6, 2)
    assert [l.out_features for l in fc.fcs] == [16, 16, 8]
    assert isinstance(build_model(fc.arch), InputGradientDiscriminator)


def test_build_model_rejects_bad_arch():
    from igam.errors import CheckpointError

    with pytest.raises(CheckpointError):
        build_model({"type": "resnet50"})
    with pytest.raises(CheckpointError):
        build_model({"type": "wide_resnet", "widths": [1, 2]})


@pytest.mark.parametrize("momentum", [0.1, None])
def test_cpu_batchnorm_matches_torch_batchnorm(momentum):
    """The CPU batch-statistics path (channels centred, then the kernel) computes what
    nn.BatchNorm2d does: outputs, input gradients and the running averages (EMA, or
    cumulative with momentum None)."""
    torch.manual_seed(0)
    ours, ref = BatchNorm2d(6), torch.nn.BatchNorm2d(6, eps=1e-3)
    ours.momentum = ref.momentum = momentum
    with torch.no_grad():
        for bn in (ours, ref):
            bn.weight.copy_(torch.linspace(0.5, 2.0, 6))
            bn.bias.copy_(torch.linspace(-1.0, 1.0, 6))
    for _ in range(3):
        x = (torch.randn(4, 6, 5, 5, dtype=torch.float64) * 3 + 2).float().requires_grad_()
        out_ours, out_ref = ours(x), ref(x)
        assert torch.allclose(out_ours, out_ref, atol=1e-5)
        w = torch.randn_like(out_ref)
        g_ours, = torch.autograd.grad((out_ours * w).sum(), x)
        g_ref, = torch.autograd.grad((out_ref * w).sum(), x)
        assert torch.allclose(g_ours, g_ref, atol=1e-5)
    assert torch.allclose(ours.running_mean, ref.running_mean, atol=1e-6)
    assert torch.allclose(ours.running_var, ref.running_var, atol=1e-5)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    ours.eval(), ref.eval()
    x = torch.randn(2, 6, 5, 5)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)
