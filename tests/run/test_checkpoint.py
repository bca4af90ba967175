"""Tests of igam.run.checkpoint: atomic saving, weights_only loading, corruption and model fit."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from igam.errors import CheckpointError
from igam.run.checkpoint import (
    FORMAT,
    check_format,
    checkpoint_path,
    load_checkpoint,
    load_model_state,
    make_checkpoint,
    save_checkpoint,
)
from igam.run.seeding import rng_state


def tiny_net(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )


def trained_state(step: int = 3):
    """A checkpoint dict with real SGD and Adam states after a few steps, plus RNG states."""
    model = tiny_net()
    disc = nn.Linear(4, 2)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    adam = torch.optim.Adam(disc.parameters(), lr=1e-3)
    for _ in range(step):
        x = torch.rand(4, 3, 8, 8) * 255
        loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
        sgd.zero_grad()
        loss.backward()
        sgd.step()
        dloss = disc(torch.randn(5, 4)).pow(2).mean()
        adam.zero_grad()
        dloss.backward()
        adam.step()
    state = make_checkpoint(
        "igam",
        {"name": "wrn", "widths": [16, 16, 32, 64], "num_classes": 10},
        model.state_dict(),
        step=step,
        discriminator_arch={"layers": 2},
        discriminator=disc.state_dict(),
        optimizers={"student": sgd.state_dict(), "discriminator": adam.state_dict()},
        rng=rng_state(),
        sampler={"perm": torch.randperm(10), "pos": 4, "epoch": 1},
        config={"train": {"batch_size": 4, "lr_values": [0.1, 0.01]}, "teacher_path": None},
    )
    return model, sgd, adam, state


def test_round_trip_weights_only_with_optimizer_and_rng(tmp_path):
    model, sgd, adam, state = trained_state()
    path = save_checkpoint(tmp_path / "run" / "checkpoint.pt", state)
    # the file loads with plain torch.load(weights_only=True), i.e. no arbitrary objects inside
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["kind"] == "igam" and raw["step"] == 3
    loaded = load_checkpoint(path)
    check_format(loaded, path, kinds=("igam",))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded["model"][key], value)
    momentum = sgd.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(loaded["optimizers"]["student"]["state"][0]["momentum_buffer"], momentum)
    assert loaded["optimizers"]["discriminator"]["param_groups"][0]["lr"] == 1e-3
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    assert loaded["config"]["teacher_path"] is None
    # the optimiser states restore into fresh optimisers and step identically
    model2 = load_model_state(tiny_net(), loaded["model"], path)
    sgd2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    sgd2.load_state_dict(loaded["optimizers"]["student"])
    x = torch.rand(4, 3, 8, 8) * 255
    y = torch.tensor([0, 1, 2, 3])
    for net, opt in ((model, sgd), (model2, sgd2)):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    # a run folder resolves to its checkpoint.pt
    from_folder = load_checkpoint(tmp_path / "run")
    assert torch.equal(from_folder["model"]["4.bias"], loaded["model"]["4.bias"])


def test_save_refuses_objects_weights_only_cannot_load(tmp_path):
    import numpy as np

    with pytest.raises(TypeError, match=r"checkpoint\['sampler'\]\['perm'\].*numpy"):
        save_checkpoint(tmp_path / "c.pt", {"sampler": {"perm": np.arange(3)}})
    assert not (tmp_path / "c.pt").exists()


def test_crash_during_save_keeps_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"kind": "classifier", "step": 1, "w": torch.ones(1000)})
    before = path.read_bytes()
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half of a checkpoint")
        f.flush()
        raise RuntimeError("simulated crash while saving")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(path, {"kind": "classifier", "step": 2, "w": torch.zeros(1000)})
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp file left
    # a temporary left by a killed process is ignored, then cleaned by the next save
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"partial")
    assert load_checkpoint(tmp_path)["step"] == 1
    save_checkpoint(path, {"kind": "classifier", "step": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert load_checkpoint(path)["step"] == 3


def test_disk_error_becomes_checkpoint_error(tmp_path, monkeypatch):
    def full_disk(obj, f, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="could not write checkpoint .*No space left"):
        save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["half", "tail", "random", "empty", "middle", "text"])
def test_corrupt_file_raises_one_line_error_naming_file(tmp_path, damage):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.randn(64, 64)}, "step": 5})
    data = good.read_bytes()
    bad = tmp_path / "bad.pt"
    if damage == "half":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "tail":
        bad.write_bytes(data[:-20])
    elif damage == "random":
        bad.write_bytes(os.urandom(4096))
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "middle":  # same length, bytes flipped inside the tensor data
        mid = len(data) // 2
        flipped = bytes(b ^ 0xFF for b in data[mid : mid + 64])
        bad.write_bytes(data[:mid] + flipped + data[mid + 64 :])
    else:
        bad.write_text("seed: 1\n")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    message = str(info.value)
    assert str(bad) in message and "\n" not in message
    assert "truncated or corrupt" in message


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        checkpoint_path(tmp_path)
    pickled = tmp_path / "pickled.pt"
    torch.save({"opt": torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)}, pickled)
    with pytest.raises(CheckpointError, match="pickled.pt holds Python objects"):
        load_checkpoint(pickled)
    bare = tmp_path / "bare.pt"
    torch.save([torch.ones(1)], bare)
    with pytest.raises(CheckpointError, match="bare.pt holds a list"):
        load_checkpoint(bare)


def test_check_format(tmp_path):
    path = tmp_path / "c.pt"
    ckpt = make_checkpoint("classifier", {"name": "wrn"}, {"w": torch.ones(1)})
    assert check_format(ckpt, path, kinds="classifier") is ckpt
    expected = r"c.pt holds a 'classifier' model, expected 'teacher' or 'igam'"
    with pytest.raises(CheckpointError, match=expected):
        check_format(ckpt, path, kinds=["teacher", "igam"])
    with pytest.raises(CheckpointError, match="no 'format' entry"):
        check_format({"model": {}}, path)
    with pytest.raises(CheckpointError, match="format 'other/2'"):
        check_format({**ckpt, "format": "other/2"}, path)
    with pytest.raises(CheckpointError, match="no 'arch' dict"):
        check_format({**ckpt, "arch": None}, path)


def test_wrong_architecture_lists_keys_and_shapes(tmp_path):
    path = tmp_path / "checkpoint.pt"
    state = tiny_net(classes=100).state_dict()
    with pytest.raises(CheckpointError) as info:
        load_model_state(tiny_net(classes=10), state, path)
    message = str(info.value)
    assert message.startswith(f"{path} does not fit this model")
    assert "shape mismatch for 4.weight: checkpoint (100, 8) vs model (10, 8)" in message
    assert "4.bias: checkpoint (100,) vs model (10,)" in message

    bigger = nn.Sequential(*tiny_net(), nn.Linear(10, 10), nn.Linear(10, 3))
    state = tiny_net().state_dict()
    state["extra.weight"] = torch.ones(1)
    with pytest.raises(CheckpointError) as info:
        load_model_state(bigger, state, path)
    message = str(info.value)
    assert "4 missing keys (5.weight, 5.bias, 6.weight, ...)" in message
    assert "1 unexpected key (extra.weight)" in message
    assert "\n" not in message

    good = tiny_net()
    fresh = nn.Sequential(*[m for m in tiny_net(classes=10)])
    with torch.no_grad():
        fresh[4].bias.fill_(7.0)
    load_model_state(fresh, good.state_dict(), path)
    assert torch.equal(fresh[4].bias, good[4].bias)
