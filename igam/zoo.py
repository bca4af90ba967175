"""RobustBench models as teachers: their architectures, built with or without the
``robustbench`` package (docs/byo_teacher.md).

:func:`robustbench_model` is the factory that a RobustBench teacher's ``arch`` records
(``igam.zoo:robustbench_model`` with ``name``, ``dataset``, ``threat_model``): it returns the
named architecture, randomly initialised, taking [0, 1] pixels as RobustBench's models do. The
weights are loaded by the caller (``igam.run.external``).

* With ``robustbench`` importable, the architecture comes from its model zoo
  (``robustbench.model_zoo.model_dicts``): every name of the leaderboard.
* Without it (it does not import beside ``pyautoattack`` and torch 2.14: it imports the
  module ``autoattack`` of fra31/auto-attack, and ``pkg_resources``), the port builds the names
  of :data:`MODELS` itself: RobustBench's CIFAR-10 (L-inf, L2) and CIFAR-100 (L-inf) models whose
  architecture is its plain ``WideResNet`` (TRADES' WRN, no normalisation inside) or its
  ``DMWideResNet`` (DeepMind's, normalisation inside), with the same module names, so the
  leaderboard's state dicts load. Other names raise ValueError.

Keyword overrides (``depth``, ``widen_factor``, ...) build a variant of the named architecture
(e.g. a tiny one for tests); they are passed to the port's WideResNet only.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn as nn
import torch.nn.functional as F

# (dataset, threat model) -> {name: ("wrn", depth, widen_factor, sub_block1) for RobustBench's
# WideResNet, or ("dm", depth, width, activation) for its DMWideResNet}: the entries of
# robustbench 1.1.1's model_zoo/cifar10.py and cifar100.py built as one of these two.
MODELS: dict[tuple[str, str], dict[str, tuple]] = {
    ("cifar10", "Linf"): {
        "Carmon2019Unlabeled": ("wrn", 28, 10, True),
        "Sehwag2020Hydra": ("wrn", 28, 10, True),
        "Wang2020Improving": ("wrn", 28, 10, True),
        "Zhang2019Theoretically": ("wrn", 34, 10, True),
        "Huang2020Self": ("wrn", 34, 10, True),
        "Zhang2019You": ("wrn", 34, 10, True),
        "Zhang2020Attacks": ("wrn", 34, 10, True),
        "Wu2020Adversarial_extra": ("wrn", 28, 10, True),
        "Wu2020Adversarial": ("wrn", 34, 10, False),
        "Gowal2020Uncovering_70_16": ("dm", 70, 16, "swish"),
        "Gowal2020Uncovering_70_16_extra": ("dm", 70, 16, "swish"),
        "Gowal2020Uncovering_34_20": ("dm", 34, 20, "swish"),
        "Gowal2020Uncovering_28_10_extra": ("dm", 28, 10, "swish"),
        "Sehwag2021Proxy": ("wrn", 34, 10, False),
        "Sitawarin2020Improving": ("wrn", 34, 10, True),
        "Cui2020Learnable_34_20": ("wrn", 34, 20, True),
        "Cui2020Learnable_34_10": ("wrn", 34, 10, True),
        "Zhang2020Geometry": ("wrn", 28, 10, True),
        "Rebuffi2021Fixing_28_10_cutmix_ddpm": ("dm", 28, 10, "swish"),
        "Rebuffi2021Fixing_106_16_cutmix_ddpm": ("dm", 106, 16, "swish"),
        "Rebuffi2021Fixing_70_16_cutmix_ddpm": ("dm", 70, 16, "swish"),
        "Rebuffi2021Fixing_70_16_cutmix_extra": ("dm", 70, 16, "swish"),
        "Sridhar2021Robust": ("wrn", 28, 10, True),
        "Sridhar2021Robust_34_15": ("wrn", 34, 15, True),
        "Rade2021Helper_extra": ("dm", 34, 10, "swish"),
        "Rade2021Helper_ddpm": ("dm", 28, 10, "swish"),
        "Addepalli2021Towards_WRN34": ("wrn", 34, 10, True),
        "Gowal2021Improving_70_16_ddpm_100m": ("dm", 70, 16, "swish"),
        "Gowal2021Improving_28_10_ddpm_100m": ("dm", 28, 10, "swish"),
        "Chen2021LTD_WRN34_10": ("wrn", 34, 10, False),
        "Chen2021LTD_WRN34_20": ("wrn", 34, 20, False),
        "Standard": ("wrn", 28, 10, False),
        "Jia2022LAS-AT_34_10": ("wrn", 34, 10, False),
        "Jia2022LAS-AT_70_16": ("wrn", 70, 16, False),
        "Pang2022Robustness_WRN28_10": ("dm", 28, 10, "swish"),
        "Pang2022Robustness_WRN70_16": ("dm", 70, 16, "swish"),
        "Addepalli2022Efficient_WRN_34_10": ("wrn", 34, 10, False),
        "Wang2023Better_WRN-28-10": ("dm", 28, 10, "silu"),
        "Wang2023Better_WRN-70-16": ("dm", 70, 16, "silu"),
        "Xu2023Exploring_WRN-28-10": ("dm", 28, 10, "silu"),
        "Cui2023Decoupled_WRN-28-10": ("dm", 28, 10, "silu"),
        "Cui2023Decoupled_WRN-34-10": ("wrn", 34, 10, False),
        "Chen2024Data_WRN_34_10": ("wrn", 34, 10, False),
        "Chen2024Data_WRN_34_20": ("wrn", 34, 20, False),
        "Bartoldson2024Adversarial_WRN-94-16": ("dm", 94, 16, "silu"),
        "Bartoldson2024Adversarial_WRN-82-8": ("dm", 82, 8, "silu"),
    },
    ("cifar10", "L2"): {
        "Standard": ("wrn", 28, 10, False),
        "Wu2020Adversarial": ("wrn", 34, 10, False),
        "Gowal2020Uncovering": ("dm", 70, 16, "swish"),
        "Gowal2020Uncovering_extra": ("dm", 70, 16, "swish"),
        "Sehwag2021Proxy": ("wrn", 34, 10, False),
        "Rebuffi2021Fixing_70_16_cutmix_ddpm": ("dm", 70, 16, "swish"),
        "Rebuffi2021Fixing_28_10_cutmix_ddpm": ("dm", 28, 10, "swish"),
        "Rebuffi2021Fixing_70_16_cutmix_extra": ("dm", 70, 16, "swish"),
        "Wang2023Better_WRN-28-10": ("dm", 28, 10, "silu"),
        "Wang2023Better_WRN-70-16": ("dm", 70, 16, "silu"),
    },
    ("cifar100", "Linf"): {
        "Gowal2020Uncovering": ("dm", 70, 16, "swish"),
        "Gowal2020Uncovering_extra": ("dm", 70, 16, "swish"),
        "Cui2020Learnable_34_20_LBGAT6": ("wrn", 34, 20, True),
        "Cui2020Learnable_34_10_LBGAT0": ("wrn", 34, 10, True),
        "Cui2020Learnable_34_10_LBGAT6": ("wrn", 34, 10, True),
        "Sehwag2021Proxy": ("wrn", 34, 10, False),
        "Sitawarin2020Improving": ("wrn", 34, 10, True),
        "Rebuffi2021Fixing_70_16_cutmix_ddpm": ("dm", 70, 16, "swish"),
        "Rebuffi2021Fixing_28_10_cutmix_ddpm": ("dm", 28, 10, "swish"),
        "Addepalli2021Towards_WRN34": ("wrn", 34, 10, True),
        "Chen2021LTD_WRN34_10": ("wrn", 34, 10, True),
        "Pang2022Robustness_WRN28_10": ("dm", 28, 10, "swish"),
        "Pang2022Robustness_WRN70_16": ("dm", 70, 16, "swish"),
        "Jia2022LAS-AT_34_10": ("wrn", 34, 10, True),
        "Jia2022LAS-AT_34_20": ("wrn", 34, 20, False),
        "Addepalli2022Efficient_WRN_34_10": ("wrn", 34, 10, False),
        "Cui2020Learnable_34_10_LBGAT9_eps_8_255": ("wrn", 34, 10, False),
        "Wang2023Better_WRN-28-10": ("dm", 28, 10, "silu"),
        "Wang2023Better_WRN-70-16": ("dm", 70, 16, "silu"),
        "Cui2023Decoupled_WRN-28-10": ("dm", 28, 10, "silu"),
        "Cui2023Decoupled_WRN-34-10": ("wrn", 34, 10, False),
        "Cui2023Decoupled_WRN-34-10_autoaug": ("wrn", 34, 10, False),
        "Chen2024Data_WRN_34_10": ("wrn", 34, 10, False),
    },
}

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


@functools.cache
def robustbench_available() -> bool:
    """True if the ``robustbench`` package can be imported (not only found: see the module
    docstring for why it may be installed yet fail to import). Tried once per process (the
    attempt imports torchvision's datasets: seconds)."""
    if importlib.util.find_spec("robustbench") is None:
        return False
    try:
        import robustbench.model_zoo  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: build without it
        return False
    return True


class _BasicBlock(nn.Module):
    """RobustBench's (TRADES') pre-activation WRN block; module names as theirs."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (None if self.equal_in_out else
                             nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False))

    def forward(self, x):
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        # equal widths: identity shortcut of the raw input; else a 1x1 conv of the activation
        return out + (x if self.equal_in_out else self.convShortcut(act))


class _NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[_BasicBlock(in_planes if i == 0 else out_planes, out_planes,
                                                 stride if i == 0 else 1) for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class RobustBenchWideResNet(nn.Module):
    """RobustBench's ``WideResNet`` (robustbench/model_zoo/architectures/wide_resnet.py):
    WRN-depth-widen_factor, x (B, 3, 32, 32) in [0, 1] (no normalisation) -> logits.
    ``sub_block1`` adds the unused ``sub_block1`` parameters some checkpoints hold (Carmon et
    al.'s), so their state dicts load strictly. Parameter names and shapes are robustbench's;
    the forward is the same computation (ReLU not in place, so double backward is safe)."""

    def __init__(self, depth: int = 28, num_classes: int = 10, widen_factor: int = 10,
                 sub_block1: bool = False, bias_last: bool = True):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = _NetworkBlock(n, ch[0], ch[1], 1)
        if sub_block1:
            self.sub_block1 = _NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = _NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = _NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(ch[3], num_classes, bias=bias_last)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, (2.0 / (9 * m.out_channels)) ** 0.5)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


# DMWideResNet's input normalisation (robustbench's dm_wide_resnet.py), by dataset
MEAN_STD = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
            "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


class _DMBlock(nn.Module):
    """DeepMind's WRN block as RobustBench's ``_Block`` (module names as theirs): TF 'SAME'
    padding done by hand before the first conv."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation):
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = activation()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = activation()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = (nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
                         if self.has_shortcut else None)
        self.stride = stride

    def forward(self, x):
        act = self.relu_0(self.batchnorm_0(x))
        v = F.pad(act, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(v))))
        return out + (self.shortcut(act) if self.has_shortcut else x)


class _DMBlockGroup(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, activation):
        super().__init__()
        self.block = nn.Sequential(*[_DMBlock(in_planes if i == 0 else out_planes, out_planes,
                                              stride if i == 0 else 1, activation)
                                     for i in range(n)])

    def forward(self, x):
        return self.block(x)


class RobustBenchDMWideResNet(nn.Module):
    """RobustBench's ``DMWideResNet`` (robustbench/model_zoo/architectures/dm_wide_resnet.py;
    Gowal et al., Rebuffi et al., Wang et al. 2023, ...): x (B, 3, 32, 32) in [0, 1], normalised
    inside by ``mean`` / ``std`` (buffers outside the state dict, as theirs) -> logits.
    ``activation`` 'swish' (their custom autograd Swish) and 'silu' (``nn.SiLU``) are the same
    function, computed here by ``nn.SiLU`` for both, so double backward works."""

    def __init__(self, num_classes: int = 10, depth: int = 28, width: int = 10,
                 activation: str = "silu", mean=MEAN_STD["cifar10"][0],
                 std=MEAN_STD["cifar10"][1]):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"DMWideResNet depth must be 6n + 4, got {depth}")
        if activation not in ("swish", "silu"):
            raise ValueError(f"activation must be swish or silu, got {activation!r}")
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)
        n = (depth - 4) // 6
        ch = [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(_DMBlockGroup(n, ch[0], ch[1], 1, nn.SiLU),
                                   _DMBlockGroup(n, ch[1], ch[2], 2, nn.SiLU),
                                   _DMBlockGroup(n, ch[2], ch[3], 2, nn.SiLU))
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.relu = nn.SiLU()
        self.logits = nn.Linear(ch[3], num_classes)

    def forward(self, x):
        out = self.layer(self.init_conv((x - self.mean) / self.std))
        out = self.relu(self.batchnorm(out))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


def known_names(dataset: str = "cifar10", threat_model: str = "Linf") -> list[str]:
    """The RobustBench names the port builds without the package."""
    return sorted(MODELS.get((dataset, threat_model), {}))


def robustbench_model(name: str, dataset: str = "cifar10", threat_model: str = "Linf",
                      **overrides) -> nn.Module:
    """The architecture of RobustBench model ``name`` (randomly initialised; [0, 1] inputs).

    From robustbench's own zoo when the package imports and there are no ``overrides``;
    otherwise :class:`RobustBenchWideResNet` or :class:`RobustBenchDMWideResNet` for the names
    of :data:`MODELS` (``overrides``: their keyword arguments, e.g. ``depth``,
    ``widen_factor`` / ``width``). ValueError (one line) for a name neither knows.
    """
    if not overrides and robustbench_available():
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

        zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]
        if name not in zoo:
            raise ValueError(f"RobustBench has no {dataset} {threat_model} model {name!r}")
        return zoo[name]["model"]()
    known = MODELS.get((dataset, threat_model), {})
    if name not in known:
        raise ValueError(
            f"the port builds RobustBench {dataset} {threat_model} model {name!r} only with the "
            f"robustbench package importable (docs/byo_teacher.md); without it: the "
            f"{len(known)} WideResNets of igam.zoo.MODELS"
            + (f", e.g. {', '.join(sorted(known)[:4])}" if known else ""))
    family, depth, width, extra = known[name]
    if family == "wrn":
        return RobustBenchWideResNet(**{"depth": depth, "widen_factor": width, "sub_block1": extra,
                                        "num_classes": NUM_CLASSES[dataset], **overrides})
    mean, std = MEAN_STD[dataset]
    return RobustBenchDMWideResNet(**{"depth": depth, "width": width, "activation": extra,
                                      "num_classes": NUM_CLASSES[dataset], "mean": mean,
                                      "std": std, **overrides})
