"""Parity of the TF-checkpoint importer against TensorFlow (runs WITHOUT TensorFlow).

The fixtures in tests/fixtures/tf/ are real TF checkpoints of the original graphs (narrow
widths) with reference outputs computed by TensorFlow (tests/fixtures/make_tf_fixtures.py):
logits, input gradients d sum softmax[y] / dx, discriminator logits and IGAM loss terms, with
BatchNorm on batch statistics ("train") and on the moving statistics ("eval").
Arrays are NHWC there; the port is NCHW.
"""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from igam.errors import CheckpointError, ConfigError
from igam.gradients import input_gradient
from igam.models import InputGradientDiscriminator, Teacher, WideResNet, build_model
from igam.objective import student_loss
from igam.run.checkpoint import check_format, load_checkpoint
from igam.tf.convert import ARCHS, is_ignored, main, model_from_tf
from igam.tf.reader import read_tf_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tf"
REPO = Path(__file__).resolve().parents[2]

# Relative tolerances: max |port - tf| / max |tf|. float64 graphs agree to ~1e-7.
# float32: logits ~5e-7, gradients ~2e-6, except the TinyImageNet teacher's train-mode input
# gradient, where TF float32 itself differs from TF float64 (same weights) by ~2e-3 (the port in
# float32 is within 6e-7 of float64): an honest float32 tolerance there is 5e-3.
TOL = {torch.float64: (1e-6, 1e-6), torch.float32: (1e-5, 3e-5)}
TINY_TEACHER_F32_TRAIN_GRAD_TOL = 5e-3


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The fixture models are tiny: one intra-op thread is fastest and immune to a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@cache
def variables(name: str) -> dict:
    return read_tf_checkpoint(FIXTURES / name)


@cache
def reference(name: str) -> dict:
    with np.load(FIXTURES / name / "reference.npz") as z:
        return {k: z[k] for k in z.files}


def nchw(a: np.ndarray, dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(dtype)


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def build(name: str, arch: str, dtype, mode: str, **overrides):
    """A fresh model per BN mode (train mode would update the running statistics)."""
    model = model_from_tf(variables(name), arch, **overrides).to(dtype)
    if isinstance(model, Teacher):
        model.set_bn("batch" if mode == "train" else "running")
    else:
        model.train(mode == "train")
    return model


CASES = [
    # fixture, arch, logits key, gradient key, dtype
    ("madry_f32", "madry", "logits", "grad", torch.float32),
    ("madry_teacher_f32", "madry_teacher", "target_logits", "target_grad", torch.float32),
    ("madry_teacher_f32", "madry", "logits", "grad", torch.float32),
    ("tiny_source_f32", "tiny_source", "logits", "grad", torch.float32),
    (
        "tiny_teacher_upresize_f32",
        "tiny_teacher_upresize",
        "target_logits",
        "target_grad",
        torch.float32,
    ),
    (
        "tiny_teacher_upresize_f64",
        "tiny_teacher_upresize",
        "target_logits",
        "target_grad",
        torch.float64,
    ),
    ("igam_f32", "igam_student", "student_logits", "student_grad", torch.float32),
    ("igam_f32", "madry_teacher", "teacher_target_logits", "teacher_target_grad", torch.float32),
    ("igam_f64", "igam_student", "student_logits", "student_grad", torch.float64),
    ("igam_f64", "madry_teacher", "teacher_target_logits", "teacher_target_grad", torch.float64),
]


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(
    "name,arch,logits_key,grad_key,dtype", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_logits_and_input_gradients_match_tensorflow(name, arch, logits_key, grad_key, dtype, mode):
    ref = reference(name)
    model = build(name, arch, dtype, mode)
    x = nchw(ref["input_x"], dtype)
    y = torch.from_numpy(ref["input_y"])
    with torch.no_grad():
        logits = model(x)
    g = input_gradient(model, x, y)
    tol_logits, tol_grad = TOL[dtype]
    if name == "tiny_teacher_upresize_f32" and mode == "train":
        tol_grad = TINY_TEACHER_F32_TRAIN_GRAD_TOL
    assert logits.dtype == dtype and g.shape == x.shape
    assert rel_err(logits.numpy(), ref[f"{mode}_{logits_key}"]) < tol_logits
    assert rel_err(nhwc(g), ref[f"{mode}_{grad_key}"]) < tol_grad
    # the reference is not trivially matched: eval and train outputs differ clearly
    other = "eval" if mode == "train" else "train"
    assert rel_err(ref[f"{mode}_{logits_key}"], ref[f"{other}_{logits_key}"]) > 1e-2


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_teacher_source_logits_match_tensorflow(mode):
    ref = reference("madry_teacher_f32")
    teacher = build("madry_teacher_f32", "madry_teacher", torch.float32, mode)
    with torch.no_grad():
        logits = teacher.source_logits(nchw(ref["input_x"], torch.float32))
    assert logits.shape == (4, 10)
    assert rel_err(logits.numpy(), ref[f"{mode}_logits"]) < 1e-5
    # TinyImageNet teacher: source head on the upresized, 'l2'-standardised images
    ref = reference("tiny_teacher_upresize_f64")
    teacher = build("tiny_teacher_upresize_f64", "tiny_teacher_upresize", torch.float64, mode)
    with torch.no_grad():
        logits = teacher.source.fc(teacher.target_features(nchw(ref["input_x"], torch.float64)))
    assert logits.shape == (4, 200)
    assert rel_err(logits.numpy(), ref[f"{mode}_source_logits_on_upresized"]) < 1e-6


def test_inferred_architectures():
    student = model_from_tf(variables("igam_f32"), "igam_student")
    assert isinstance(student, WideResNet)
    assert student.arch == {
        "type": "wide_resnet",
        "num_classes": 100,
        "widths": [16, 16, 24, 32],
        "units_per_stage": 1,
        "standardization": "zero_mean_l2",
    }
    madry = model_from_tf(variables("madry_f32"), "madry")
    assert madry.arch["widths"] == [16, 20, 24, 32] and madry.arch["units_per_stage"] == 2
    assert madry.arch["standardization"] == "per_image" and madry.arch["num_classes"] == 10
    teacher = model_from_tf(variables("tiny_teacher_upresize_f32"), "tiny_teacher_upresize")
    assert teacher.arch["upresize_to"] == 64 and teacher.arch["standardization"] == "l2"
    assert teacher.arch["bn"] == "batch" and teacher.arch["source"]["num_classes"] == 200
    assert teacher.arch["source"]["standardization"] == "zero_mean_l2"
    assert teacher.target_head.out_features == 10
    tiny = model_from_tf(variables("tiny_source_f32"), "tiny_source")
    assert tiny.arch["standardization"] == "zero_mean_l2" and tiny.arch["num_classes"] == 200
    # rebuilt from its arch dict, as a port checkpoint does
    assert isinstance(build_model(teacher.arch), Teacher)


DISCS = [
    (
        "disc_conv_f32",
        {
            "num_conv_layers": 2,
            "base_channels": 4,
            "avg_pool": False,
            "only_fully_connected": False,
            "image_size": 32,
        },
    ),
    (
        "disc_conv5_avgpool_f32",
        {"num_conv_layers": 5, "base_channels": 4, "only_fully_connected": False},
    ),
    (
        "disc_fc_f32",
        {"only_fully_connected": True, "num_fc_layers": 3, "base_channels": 8, "image_size": 32},
    ),
]


@pytest.mark.parametrize("name,expected", DISCS, ids=[d[0] for d in DISCS])
def test_discriminator_matches_tensorflow(name, expected):
    ref = reference(name)
    gs = nchw(ref["input_g_student"], torch.float32)
    gt = nchw(ref["input_g_teacher"], torch.float32)
    labels = torch.cat([torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)])
    for mode in ("train", "eval"):
        disc = build(name, "discriminator", torch.float32, mode)
        assert isinstance(disc, InputGradientDiscriminator)
        for key, value in expected.items():
            assert disc.arch[key] == value, key
        with torch.no_grad():
            logits = disc(gs, gt)
        assert logits.shape == (8, 2)
        assert rel_err(logits.numpy(), ref[f"{mode}_disc_logits"]) < 2e-5
        xent = F.cross_entropy(logits, labels).item()
        assert abs(xent - float(ref[f"{mode}_disc_xent"])) < 1e-5


def test_conv_discriminator_flattens_nhwc():
    """The 2-layer discriminator ends on an 8x8 map: an NCHW flatten would not match TF."""
    ref = reference("disc_conv_f32")
    disc = build("disc_conv_f32", "discriminator", torch.float32, "train")
    gs = nchw(ref["input_g_student"], torch.float32)
    gt = nchw(ref["input_g_teacher"], torch.float32)
    with torch.no_grad():
        h = torch.cat([gs, gt])
        from igam.ops import lrelu, standardize

        h = standardize(h, "zero_mean_l2")
        for conv, bn in zip(disc.convs, disc.bns):
            h = lrelu(bn(conv(h)))
        assert h.shape[-1] == 8
        wrong = disc.logit(h.flatten(1))
    assert rel_err(wrong.numpy(), ref["train_disc_logits"]) > 1e-2


@pytest.mark.parametrize("name,dtype", [("igam_f32", torch.float32), ("igam_f64", torch.float64)])
def test_igam_loss_terms_match_tensorflow(name, dtype):
    """Student CE, D xent and the L2 term (batch SUM) of train_igam.py, from one checkpoint."""
    ref = reference(name)
    x = nchw(ref["input_x"], dtype)
    y = torch.from_numpy(ref["input_y"])
    student = build(name, "igam_student", dtype, "train")
    teacher = build(name, "madry_teacher", dtype, "train")  # bn='batch', as the original
    disc = build(name, "discriminator", dtype, "train")
    g_t = input_gradient(teacher, x, y)
    out = student_loss(student, disc, x, y, g_t, beta=2.0, gamma=10.0)
    tol = 1e-6 if dtype == torch.float64 else 3e-5
    assert rel_err(out["xent"].item(), ref["train_student_ce"]) < tol
    assert rel_err(out["disc_xent"].item(), ref["train_d_xent"]) < tol
    assert rel_err(out["l2"].item(), ref["train_l2_term"]) < 10 * tol
    total = ref["train_student_ce"] - 2.0 * ref["train_d_xent"] + 10.0 * ref["train_l2_term"]
    assert rel_err(out["loss"].item(), total) < 10 * tol
    # the discriminator sees (g_s, g_t) exactly as TF's
    with torch.no_grad():
        logits = disc(out["g_student"].detach(), g_t)
    assert rel_err(logits.numpy(), ref["train_disc_logits"]) < 10 * tol


def test_optimizer_slots_and_global_step_are_ignored():
    v = variables("igam_f32")
    slots = [n for n in v if n.endswith("/Momentum")]
    assert slots and "global_step" in v and all(is_ignored(n) for n in slots)
    assert is_ignored("beta1_power") and is_ignored("classifier/logit/DW/Adam_1")
    assert not is_ignored("classifier/logit/DW")
    # the same checkpoint feeds all three models of an IGAM release
    assert isinstance(model_from_tf(v, "discriminator"), InputGradientDiscriminator)


def test_missing_and_unknown_variables_fail_loudly():
    v = dict(variables("madry_teacher_f32"))
    missing = dict(v)
    del missing["unit_2_0/sub2/BatchNorm/moving_variance"]
    with pytest.raises(CheckpointError, match="lacks 1 variables.*unit_2_0/sub2/BatchNorm/moving"):
        model_from_tf(missing, "madry_teacher")
    unknown = dict(v)
    unknown["unit_1_0/sub1/conv3/DW"] = np.zeros((3, 3, 16, 16), np.float32)
    with pytest.raises(CheckpointError, match="does not use: unit_1_0/sub1/conv3/DW"):
        model_from_tf(unknown, "madry_teacher")
    bad = dict(v)
    bad["unit_last/BatchNorm/gamma"] = np.ones(3, np.float32)
    with pytest.raises(CheckpointError, match="shapes do not fit.*unit_last/BatchNorm/gamma"):
        model_from_tf(bad, "madry_teacher")
    with pytest.raises(CheckpointError, match="classifier/input/init_conv/DW"):
        model_from_tf(v, "igam_student")  # a Madry checkpoint has no classifier/ scope
    with pytest.raises(CheckpointError, match="target_task_logit/DW"):
        model_from_tf(variables("madry_f32"), "madry_teacher")  # no target head
    with pytest.raises(ConfigError, match="unknown arch"):
        model_from_tf(v, "resnet50")
    with pytest.raises(ConfigError, match="unknown override"):
        model_from_tf(v, "madry", upresize_to=64)
    assert set(ARCHS) == {
        "igam_student",
        "madry",
        "madry_teacher",
        "tiny_source",
        "tiny_teacher_upresize",
        "discriminator",
    }


def test_cli_writes_a_port_checkpoint(tmp_path, capsys):
    out = tmp_path / "models" / "tiny_teacher"
    rc = main(
        [
            "--tf_checkpoint",
            str(FIXTURES / "tiny_teacher_upresize_f32"),
            "--arch",
            "tiny_teacher_upresize",
            "--out",
            str(out),
            "--set",
            "bn=running",
        ]
    )
    assert rc == 0 and "checkpoint.pt" in capsys.readouterr().out
    ckpt = check_format(load_checkpoint(out), out, ("teacher",))
    assert ckpt["step"] == 0 and ckpt["config"]["tf_arch"] == "tiny_teacher_upresize"
    assert ckpt["config"]["tf_checkpoint"].endswith("checkpoint-4700")
    model = build_model(ckpt["arch"])
    model.load_state_dict(ckpt["model"])
    assert isinstance(model, Teacher) and model.bn == "running"
    ref = reference("tiny_teacher_upresize_f32")
    with torch.no_grad():
        logits = model(nchw(ref["input_x"], torch.float32))
    assert rel_err(logits.numpy(), ref["eval_target_logits"]) < 1e-5

    out2 = tmp_path / "madry"
    assert (
        main(
            ["--tf_checkpoint", str(FIXTURES / "madry_f32"), "--arch", "madry", "--out", str(out2)]
        )
        == 0
    )
    ckpt2 = load_checkpoint(out2)
    assert ckpt2["kind"] == "classifier" and ckpt2["config"]["tf_global_step"] == 1


def test_cli_error_is_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "igam.tf.convert",
            "--tf_checkpoint",
            str(tmp_path / "nowhere"),
            "--arch",
            "madry",
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nowhere" in lines[0]
    assert not (tmp_path / "out").exists()
