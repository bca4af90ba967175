"""Training steps besides IGAM (igam.training): what adversarial training does to the BatchNorm
statistics, and the loss and parameters of the teacher's head / whole-model finetuning."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from igam.attacks import PGD
from igam.models import Teacher, WideResNet
from igam.ops import frozen_bn_stats
from igam.optim import AdamTF1
from igam.training import ClassifierTrainer, HeadFinetuner

PGD_STEPS = 7


def tiny(num_classes=10):
    return WideResNet(num_classes, (4, 4, 6, 8), 1, "zero_mean_l2")


def bns(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_adversarial_step_updates_bn_stats_as_pgd_plus_training_pass():
    """The original updated the BatchNorm moving averages 8 times per step (7 PGD forwards +
    the training forward); logging the natural accuracy must not add a ninth update."""
    model = tiny()
    replay = copy.deepcopy(model)
    x = torch.rand(6, 3, 8, 8) * 255
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        nat = (copy.deepcopy(model).train()(x).argmax(1) == y).float().mean()

    attack = PGD(model, 8.0, 2.0, PGD_STEPS, keep_buffers=False,
                 generator=torch.Generator().manual_seed(1))
    out = ClassifierTrainer(model, [[0, 0.1]], 0.9, 2e-4, attack).step(x, y)

    replay.train()  # manual replay: the attack's passes, then the training forward
    x_adv = PGD(replay, 8.0, 2.0, PGD_STEPS, keep_buffers=False,
                generator=torch.Generator().manual_seed(1))(x, y)
    replay(x_adv)
    for got, want in zip(bns(model), bns(replay)):
        assert int(got.num_batches_tracked) == PGD_STEPS + 1
        torch.testing.assert_close(got.running_mean, want.running_mean)
        torch.testing.assert_close(got.running_var, want.running_var)
    torch.testing.assert_close(out["nat_accuracy"], nat)  # batch statistics, as train mode


def test_frozen_bn_stats_keeps_train_mode_outputs_and_every_buffer():
    model = tiny().train()
    teacher = Teacher(tiny(20), 10, bn="running")
    x = torch.rand(4, 3, 8, 8) * 255
    want = copy.deepcopy(model)(x)
    before = copy.deepcopy(model.state_dict())
    with frozen_bn_stats(model), frozen_bn_stats(teacher):
        got = model(x)
        assert all(m.stats == "running" for m in bns(teacher.source))  # set switches stay
    torch.testing.assert_close(got, want)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(m.stats is None for m in bns(model))
    model(x)
    assert int(bns(model)[0].num_batches_tracked) == 1  # restored: train mode updates again


def _dw(module):
    """The original's ``DW`` variables: conv kernels and FC weights."""
    return [m.weight for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _finetune_once(whole_model, weight_decay=0.5):
    torch.manual_seed(0)
    teacher = Teacher(tiny(20), 10, bn="batch")
    ref = copy.deepcopy(teacher)
    x = torch.rand(8, 3, 8, 8) * 255
    y = torch.arange(8)
    HeadFinetuner(teacher, 1e-3, whole_model, weight_decay).step(x, y)
    return teacher, ref, x, y


def test_whole_model_finetuning_adds_the_source_weight_decay_term():
    """TF1's Adam minimises target-head CE + wd * sum(w^2)/2 over the source's conv/FC weights
    (its source head included, the new head not), over source and head."""
    wd = 0.5
    teacher, ref, x, y = _finetune_once(True, wd)
    s0 = ref.source.fc.weight.detach().clone()
    params = [p for n, p in ref.named_parameters() if n != "source.fc.bias"]
    opt = AdamTF1(params, lr=1e-3)
    decay = sum(w.pow(2).sum() for w in _dw(ref.source)) / 2
    loss = F.cross_entropy(ref.train()(x), y) + wd * decay
    loss.backward()
    opt.step()
    for (name, got), want in zip(teacher.named_parameters(), ref.parameters()):
        torch.testing.assert_close(got, want, msg=name)
    # the source head only has the decay term: it moves, towards zero
    assert (teacher.source.fc.weight.abs() < s0.abs()).all()


def test_head_finetuning_trains_the_new_head_only_without_decay():
    teacher, ref, x, y = _finetune_once(False)
    opt = AdamTF1(ref.target_head.parameters(), lr=1e-3)
    F.cross_entropy(ref.train()(x), y).backward()
    opt.step()
    for (name, got), want in zip(teacher.named_parameters(), ref.parameters()):
        torch.testing.assert_close(got, want, msg=name)  # the source is unchanged
