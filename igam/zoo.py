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
  of :data:`WIDE_RESNETS` itself: RobustBench's CIFAR-10 L-inf models whose architecture is
  its plain ``WideResNet`` (TRADES' WRN, no normalisation inside), with the same module names,
  so the leaderboard's state dicts load. Other names raise ValueError naming these.

Keyword overrides (``depth``, ``widen_factor``, ...) build a variant of the named architecture
(e.g. a tiny one for tests); they are passed to the port's WideResNet only.
"""

from __future__ import annotations

import functools
import importlib.util

import torch.nn as nn
import torch.nn.functional as F

# name -> (depth, widen_factor, sub_block1): robustbench 1.1.1 model_zoo/cifar10.py, L-inf
# entries built as ``WideResNet(depth=..., widen_factor=..., sub_block1=...)``.
WIDE_RESNETS: dict[tuple[str, str], dict[str, tuple[int, int, bool]]] = {
    ("cifar10", "Linf"): {
        "Standard": (28, 10, False),
        "Carmon2019Unlabeled": (28, 10, True),
        "Sehwag2020Hydra": (28, 10, True),
        "Wang2020Improving": (28, 10, True),
        "Wu2020Adversarial_extra": (28, 10, True),
        "Zhang2020Geometry": (28, 10, True),
        "Sridhar2021Robust": (28, 10, True),
        "Zhang2019Theoretically": (34, 10, True),
        "Huang2020Self": (34, 10, True),
        "Zhang2019You": (34, 10, True),
        "Zhang2020Attacks": (34, 10, True),
        "Sitawarin2020Improving": (34, 10, True),
        "Cui2020Learnable_34_10": (34, 10, True),
        "Cui2020Learnable_34_20": (34, 20, True),
        "Sridhar2021Robust_34_15": (34, 15, True),
        "Addepalli2021Towards_WRN34": (34, 10, True),
        "Wu2020Adversarial": (34, 10, False),
        "Sehwag2021Proxy": (34, 10, False),
        "Chen2021LTD_WRN34_10": (34, 10, False),
        "Chen2021LTD_WRN34_20": (34, 20, False),
        "Jia2022LAS-AT_34_10": (34, 10, False),
        "Jia2022LAS-AT_70_16": (70, 16, False),
        "Addepalli2022Efficient_WRN_34_10": (34, 10, False),
        "Cui2023Decoupled_WRN-34-10": (34, 10, False),
        "Chen2024Data_WRN_34_20": (34, 20, False),
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


def known_names(dataset: str = "cifar10", threat_model: str = "Linf") -> list[str]:
    """The RobustBench names the port builds without the package."""
    return sorted(WIDE_RESNETS.get((dataset, threat_model), {}))


def robustbench_model(name: str, dataset: str = "cifar10", threat_model: str = "Linf",
                      **overrides) -> nn.Module:
    """The architecture of RobustBench model ``name`` (randomly initialised; [0, 1] inputs).

    From robustbench's own zoo when the package imports and there are no ``overrides``;
    otherwise :class:`RobustBenchWideResNet` for the names of :data:`WIDE_RESNETS` (with
    ``overrides`` of its arguments). ValueError (one line) for a name neither knows.
    """
    if not overrides and robustbench_available():
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

        zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)]
        if name not in zoo:
            raise ValueError(f"RobustBench has no {dataset} {threat_model} model {name!r}")
        return zoo[name]["model"]()
    known = WIDE_RESNETS.get((dataset, threat_model), {})
    if name not in known:
        raise ValueError(
            f"the port builds RobustBench {dataset} {threat_model} model {name!r} only with the "
            "robustbench package importable (docs/byo_teacher.md); without it: "
            f"{', '.join(known_names(dataset, threat_model)) or 'none for this dataset'}")
    depth, widen, sub = known[name]
    args = {"depth": depth, "widen_factor": widen, "sub_block1": sub,
            "num_classes": NUM_CLASSES[dataset], **overrides}
    return RobustBenchWideResNet(**args)
