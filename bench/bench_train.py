"""Benchmark: cost of one training step - plain, PGD-7 adversarial, and IGAM - and of IGAM's parts.

Measured things (each on the same batch, models in train mode, real optimiser steps):

- ``plain``        ``ClassifierTrainer.step`` without attack (forward, backward, SGD);
- ``adv_pgd7``     ``ClassifierTrainer.step`` with ``igam.attacks.PGD`` (eps 8, step 2, 7 steps,
                   random start, crafted in train mode as the original): 8 forward/backward;
- ``igam_d1``      ``IGAMTrainer.step`` in the IGAM phase with ``disc_update_steps=1``: every
                   iteration has the discriminator step;
- ``igam_d5``      the same with ``disc_update_steps=5`` (the paper's), amortised: 5
                   consecutive iterations per timed call, divided by 5;
- the parts of one IGAM iteration, measured separately:
  ``teacher_grad`` the teacher's input gradient ``IGAMTrainer.teacher_gradient`` (through the
                   legacy-bilinear upresize when ``--teacher_size`` > image size);
  ``student``      ``student_loss`` (student forward, input gradient with create_graph,
                   discriminator forward, L2 term) + backward to the student's parameters
                   (the double backward) + SGD step;
  ``disc_step``    ``IGAMTrainer.discriminator_step``: the student's input gradient again
                   (first order), discriminator forward/backward, SGD step.

Goal: ``igam_d1`` <= 1.15 x (teacher_grad + student + disc_step), i.e. the trainer adds no
overhead beyond its parts (and ``igam_d5`` <= 1.15 x (teacher_grad + student + disc_step / 5)).

Peak memory of each thing: on CUDA ``torch.cuda.max_memory_allocated`` over one call (reset just
before; models, optimiser state and the batch are in the base). On CPU the RSS high-water mark
of a FRESH subprocess that builds the same objects, runs the thing once on a batch of 2 (loads
the kernels' code, allocates optimiser momentum), returns freed heap memory to the system
(glibc ``malloc_trim``), resets the high-water mark (``/proc/self/clear_refs``) and runs the
thing once on the full batch: delta = peak RSS above the live state before the call. In-process
RSS deltas would be wrong on CPU (``ru_maxrss`` only grows - ``import torch`` alone reaches
~520 MiB here - and freed memory stays in the allocator). ``igam_d5`` is not measured: its
iteration with the discriminator step is exactly ``igam_d1``'s work. The parts run one after
the other, so IGAM's peak is about the largest part's, not their sum.

    python -m bench.bench_train                          # debug widths, 1 unit/stage
    python -m bench.bench_train --width paper --units 5 --batch_size 128 --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, Tuple

if __package__ in (None, ""):  # run as a file: make ``bench`` and ``igam`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench import common  # noqa: E402
from igam.attacks import PGD  # noqa: E402
from igam.models import InputGradientDiscriminator, Teacher, WideResNet  # noqa: E402
from igam.objective import IGAMSettings, IGAMTrainer, student_loss  # noqa: E402
from igam.optim import sgd  # noqa: E402
from igam.training import ClassifierTrainer  # noqa: E402

THINGS = ("plain", "adv_pgd7", "igam_d1", "igam_d5", "teacher_grad", "student", "disc_step")
PARTS = ("teacher_grad", "student", "disc_step")
GOAL = 1.15
LR = [[0, 0.01]]  # small, so that repeated steps on one batch stay finite


def parse_args(argv=None) -> argparse.Namespace:
    p = common.make_parser("bench_train", __doc__, image_args=True, batch_size=32, reps=6,
                           units=1)
    p.add_argument("--teacher_size", type=int, default=64,
                   help="teacher input side: images are upresized to it (TinyImageNet -> "
                        "CIFAR-10: 64; 0 = no resize)")
    p.add_argument("--teacher_classes", type=int, default=200,
                   help="classes of the teacher's source head (unused in IGAM; default 200)")
    p.add_argument("--pgd_steps", type=int, default=7, help="steps of adversarial training")
    p.add_argument("--disc_layers", type=int, default=5, help="discriminator conv layers")
    p.add_argument("--disc_base", type=int, default=16, help="discriminator base channels")
    p.add_argument("--memory", choices=("auto", "none"), default="auto",
                   help="auto: peak memory of each thing (CUDA: in process; CPU: one fresh "
                        "subprocess per thing); none: skip")
    p.add_argument("--only", default="",
                   help=f"comma-separated subset of {','.join(THINGS)} (default: all)")
    p.add_argument("--_probe", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    only = [t for t in args.only.split(",") if t]
    bad = sorted(set(only) - set(THINGS))
    if bad:
        p.error(f"--only: unknown {bad}; expected some of {THINGS}")
    args.things = tuple(t for t in THINGS if not only or t in only)
    return args


# ----------------------------------------------------------------------------------------------
# What is measured


def _student(args, device) -> WideResNet:
    return WideResNet(args.num_classes, args.width, args.units).to(device)


def _teacher(args, device) -> Teacher:
    source = WideResNet(args.teacher_classes, args.width, args.units)
    resize = args.teacher_size if args.teacher_size and args.teacher_size != args.image_size \
        else None
    teacher = Teacher(source, args.num_classes, upresize_to=resize, bn="batch").to(device)
    for p in teacher.parameters():  # frozen, as engine.load_teacher
        p.requires_grad_(False)
    return teacher


def _disc(args, device) -> InputGradientDiscriminator:
    return InputGradientDiscriminator(args.image_size, args.disc_layers, args.disc_base).to(device)


def _igam_trainer(args, device, disc_update_steps: int) -> IGAMTrainer:
    settings = IGAMSettings(lr_schedule=LR, disc_update_steps=disc_update_steps,
                            steps_before_adv_opt=0)
    return IGAMTrainer(_student(args, device), _teacher(args, device), _disc(args, device),
                       settings)


def build(thing: str, args, device) -> Tuple[Callable, Callable]:
    """(f, prepare) for one measured thing (its models and optimisers are built here).

    ``f(x, y)`` does the thing once; ``prepare(x, y)`` computes constants of the batch that
    are not part of the measurement (the teacher gradient used by the parts ``student`` and
    ``disc_step``); call it for every batch before timing or measuring memory.
    """
    def nothing(x, y):
        return None

    if thing in ("plain", "adv_pgd7"):
        model = _student(args, device)
        attack = None
        if thing == "adv_pgd7":  # bn_mode None: crafted in the trainer's train mode
            attack = PGD(model, eps=8.0, step_size=2.0, steps=args.pgd_steps, random_start=True)
        trainer = ClassifierTrainer(model, LR, attack=attack)
        return trainer.step, nothing
    if thing == "igam_d1":
        return _igam_trainer(args, device, 1).step, nothing
    if thing == "igam_d5":
        trainer = _igam_trainer(args, device, 5)

        def five(x, y):
            for _ in range(5):
                trainer.step(x, y)
        return five, nothing
    # parts: one trainer provides the modules; g_t is a constant of the batch
    trainer = _igam_trainer(args, device, 1)
    trainer.student.train()
    trainer.discriminator.train()
    if thing == "teacher_grad":
        return trainer.teacher_gradient, nothing
    cache: Dict[Tuple[int, int], torch.Tensor] = {}

    def prepare(x, y):
        cache[(x.data_ptr(), x.shape[0])] = trainer.teacher_gradient(x, y)

    def g_teacher(x, y):
        return cache[(x.data_ptr(), x.shape[0])]

    if thing == "student":
        s = trainer.s
        opt = sgd(trainer.student, 0.01, s.momentum, s.weight_decay)
        params = [p for p in trainer.student.parameters() if p.requires_grad]

        def student_step(x, y):
            parts = student_loss(trainer.student, trainer.discriminator, x, y, g_teacher(x, y),
                                 s.beta, s.gamma)
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward(inputs=params)
            opt.step()
        return student_step, prepare
    if thing == "disc_step":
        return (lambda x, y: trainer.discriminator_step(x, y, g_teacher(x, y))), prepare
    raise ValueError(thing)


def batch(args, device, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random images (n, 3, S, S) in [0, 255] and labels (fixed seed)."""
    g = torch.Generator().manual_seed(args.seed)
    x = torch.rand(n, 3, args.image_size, args.image_size, generator=g) * 255.0
    y = torch.randint(0, args.num_classes, (n,), generator=g)
    return x.to(device), y.to(device)


# ----------------------------------------------------------------------------------------------
# Memory


def probe(args, device) -> dict:
    """Child side of the CPU memory measurement: RSS peak of one call of ``args._probe``."""
    fn, prepare = build(args._probe, args, device)
    x, y = batch(args, device, args.batch_size)
    xs, ys = batch(args, device, 2)
    prepare(x, y)
    prepare(xs, ys)
    out = common.rss_probe(lambda: fn(x, y), lambda: fn(xs, ys))
    out["thing"] = args._probe
    return out


def memory(things, fns, x, y, args, argv, device) -> Dict[str, dict]:
    """Peak memory of each thing (igam_d5 is not measured: its iteration with the
    discriminator step is exactly igam_d1's work)."""
    if args.memory == "none":
        return {}
    out = {}
    for name in things:
        if name == "igam_d5":
            continue
        if device.type == "cuda":
            out[name] = common.cuda_peak(lambda f=fns[name][0]: f(x, y), device)
        else:
            out[name] = common.peak_rss_in_subprocess(
                "bench.bench_train", name, common.argv_without_probe(argv))
    return out


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = common.setup(args)
    if args._probe:
        result = probe(args, device)
        print(json.dumps(result))
        return result
    env = common.environment(device)
    print(f"bench_train: {common.describe_env(env)}")

    x, y = batch(args, device, args.batch_size)
    fns = {name: build(name, args, device) for name in args.things}
    for _, prepare in fns.values():
        prepare(x, y)
    calls = {name: (lambda f=f: f(x, y)) for name, (f, _) in fns.items()}
    times = common.interleave(calls, args.reps, args.warmup, device)
    timing = {name: common.summarize(t) for name, t in times.items()}
    per_iter = {name: t["median"] / (5 if name == "igam_d5" else 1) for name, t in timing.items()}
    mem = memory(args.things, fns, x, y, args, argv, device)

    ratios = {}
    if all(p in per_iter for p in PARTS):
        parts_sum = sum(per_iter[p] for p in PARTS)
        parts_sum_d5 = per_iter["teacher_grad"] + per_iter["student"] + per_iter["disc_step"] / 5
        if "igam_d1" in per_iter:
            ratios["igam_d1_over_parts"] = per_iter["igam_d1"] / parts_sum
        if "igam_d5" in per_iter:
            ratios["igam_d5_over_parts"] = per_iter["igam_d5"] / parts_sum_d5
        ratios["parts_sum_s"] = parts_sum
        ratios["parts_sum_d5_s"] = parts_sum_d5
    if "plain" in per_iter:
        for name in args.things:
            ratios[f"{name}_over_plain"] = per_iter[name] / per_iter["plain"]

    rows = []
    for name in args.things:
        m = mem.get(name, {})
        rows.append({"thing": name, "ms": per_iter[name],
                     "min_ms": timing[name]["min"] / (5 if name == "igam_d5" else 1),
                     "x_plain": ratios.get(f"{name}_over_plain"),
                     "peak": m.get("peak_mb"), "delta": m.get("delta_mb")})
    print(f"\nwidths {args.width} x {args.units} unit(s)/stage, batch {args.batch_size}, "
          f"{args.image_size}x{args.image_size} (teacher "
          f"{args.teacher_size or args.image_size}), {args.reps} interleaved reps, "
          f"times per iteration")
    mem_method = next((m.get("method") for m in mem.values() if "method" in m), None)
    print(common.format_table(rows, [
        ("thing", "measured", ""), ("ms", "median ms", common.ms),
        ("min_ms", "min ms", common.ms), ("x_plain", "x plain", ".2f"),
        ("peak", "peak MiB", ".1f"), ("delta", "delta MiB", ".1f")]))
    if mem_method:
        print(f"memory: {mem_method} (peak = high-water mark incl. models and framework; "
              f"delta = above the live state before the call; igam_d5 = igam_d1)")
    for key, parts in (("igam_d1_over_parts", "teacher_grad + student + disc_step"),
                       ("igam_d5_over_parts", "teacher_grad + student + disc_step / 5")):
        if key in ratios:
            ok = "OK" if ratios[key] <= GOAL else "ABOVE goal"
            print(f"{key.split('_over')[0]} / ({parts}) = {ratios[key]:.3f}  "
                  f"[goal <= {GOAL}: {ok}]")
    env["load_average_end"] = common.load_average()

    result = {
        "benchmark": "train",
        "environment": env,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out_dir", "tag", "_probe")},
        "timing_s": timing,
        "per_iteration_s": per_iter,
        "samples_s": times,
        "ratios": ratios,
        "goal": f"igam_d1 <= {GOAL} x (teacher_grad + student + disc_step)",
        "memory": mem,
    }
    common.write_result(args.out_dir, "train", device, result, args.tag)
    return result


if __name__ == "__main__":
    main()
