"""Benchmark: ``igam.attacks.PGD`` against ``torchattacks.PGD`` on the same model and data.

Both run L-inf PGD with 10 steps, eps 8/255, step 2/255 and a random start:
ours on pixels in [0, 255] (eps 8, step 2); torchattacks on [0, 1] inputs through a wrapper
``x01 -> model(255 * x01)`` (eps 8/255, alpha 2/255). The model is a WideResNet in eval mode,
first trained for a few hundred steps on synthetic CIFAR-like data (``igam.data.synthetic``)
so that its accuracy - clean and under attack - is far from 0 and 1, which makes "both
attacks are equally strong" a meaningful check.

Reported: median wall-clock time of one attack call on one batch (interleaved repetitions
ours, theirs, theirs, ours, ...), the ratio ours / theirs (goal <= 1.0), and the accuracy
under each attack on ``--n_eval`` held-out images. With the same seed both attacks draw the
same random start (global RNG), so their adversarial examples should coincide up to float
rounding: the largest pixel difference and the prediction agreement are reported too.
``--profile`` prints torch.profiler's top operators of one call of each.

    python -m bench.bench_pgd                       # debug widths, CPU or GPU (auto)
    python -m bench.bench_pgd --width paper --units 5 --batch_size 128 --device cuda
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make ``bench`` and ``igam`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from bench import common  # noqa: E402
from igam.attacks import PGD  # noqa: E402
from igam.data import TrainBatches, eval_batches  # noqa: E402
from igam.data.datasets import ArrayDataset  # noqa: E402
from igam.data.synthetic import SyntheticStyle, balanced_labels, render_split  # noqa: E402
from igam.models import WideResNet  # noqa: E402
from igam.training import ClassifierTrainer  # noqa: E402

try:
    import torchattacks
except ImportError:  # bench-only dependency (requirements-bench.txt)
    torchattacks = None


class Scale255(nn.Module):
    """Adapter for torchattacks: images in [0, 1] -> ``model(255 * x)`` (the port's pixels).

    Takes the wrapped model's train/eval flag: torchattacks calls ``.train()`` after each
    attack if the model it was given was in training mode, which for a fresh (training-mode)
    wrapper would switch an eval-mode model to batch statistics."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.training = model.training

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.model(x01 * 255.0)


def parse_args(argv=None) -> argparse.Namespace:
    p = common.make_parser("bench_pgd", __doc__, image_args=True, batch_size=32, reps=10,
                           units=1)
    p.add_argument("--steps", type=int, default=10, help="PGD steps (default: 10)")
    p.add_argument("--eps", type=float, default=8.0, help="L-inf radius in grey levels (8)")
    p.add_argument("--step_size", type=float, default=2.0, help="step in grey levels (2)")
    p.add_argument("--train_steps", type=int, default=300,
                   help="plain SGD steps on synthetic data before timing (default: 300)")
    p.add_argument("--n_train", type=int, default=2000, help="synthetic training images")
    p.add_argument("--n_eval", type=int, default=512,
                   help="held-out images for accuracy under attack (default: 512)")
    p.add_argument("--no_torchattacks", action="store_true",
                   help="time ours only (also the fallback when torchattacks is missing)")
    p.add_argument("--profile", action="store_true",
                   help="print torch.profiler's top operators of one call of each attack")
    return p.parse_args(argv)


def synthetic_data(args) -> tuple:
    """In-memory synthetic train / eval sets (robust + non-robust class features)."""
    rng = np.random.default_rng(args.seed)
    style = SyntheticStyle()
    names = [str(k) for k in range(args.num_classes)]
    out = []
    for split, n in ((0, max(args.n_train, args.batch_size)), (1, max(args.n_eval, 1))):
        labels = balanced_labels(n, args.num_classes, rng)
        images = render_split(labels, args.image_size, "cifar10", args.seed, split, style)
        out.append(ArrayDataset(images, labels, names, f"synthetic/{split}"))
    return tuple(out)


def train_model(args, train: ArrayDataset, device: torch.device) -> tuple:
    """A WideResNet trained ``train_steps`` plain SGD steps (lr 0.05); returns (model, secs)."""
    model = WideResNet(args.num_classes, args.width, args.units).to(device)
    trainer = ClassifierTrainer(model, [[0, 0.05]])
    batches = TrainBatches(train, min(32, len(train)), device, seed=args.seed)
    secs = common.time_once(lambda: [trainer.step(*next(batches))
                                     for _ in range(args.train_steps)], device)
    return model.eval(), secs


def make_attacks(model: nn.Module, args, use_theirs: bool) -> dict:
    """{'ours': f(x, y) -> x_adv in [0, 255], 'theirs': same through torchattacks}."""
    ours = PGD(model, eps=args.eps, step_size=args.step_size, steps=args.steps,
               random_start=True, bn_mode="eval")
    attacks = {"ours": ours}
    if use_theirs:
        theirs = torchattacks.PGD(Scale255(model), eps=args.eps / 255.0,
                                  alpha=args.step_size / 255.0, steps=args.steps,
                                  random_start=True)
        attacks["theirs"] = lambda x, y: theirs(x / 255.0, y) * 255.0
        attacks["theirs"].raw = theirs  # for timing on pre-scaled [0, 1] inputs
    return attacks


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def strength(model: nn.Module, attacks: dict, data: ArrayDataset, args,
             device: torch.device) -> dict:
    """Accuracy (clean / under each attack) on ``data``; both attacks start from the same
    seeded global RNG state per batch, so with equal arithmetic they give the same x_adv."""
    correct = {"clean": 0, **{k: 0 for k in attacks}}
    n, agree, max_diff, max_linf = 0, 0, 0.0, {k: 0.0 for k in attacks}
    n_pix, n_pix_diff = 0, 0
    for i, (x, y) in enumerate(eval_batches(data, args.batch_size, device)):
        correct["clean"] += int((_predict(model, x) == y).sum())
        preds = {}
        advs = {}
        for name, attack in attacks.items():
            torch.manual_seed(args.seed * 100003 + i)
            advs[name] = attack(x, y)
            preds[name] = _predict(model, advs[name])
            correct[name] += int((preds[name] == y).sum())
            max_linf[name] = max(max_linf[name], float((advs[name] - x).abs().max()))
        if "theirs" in attacks:
            agree += int((preds["ours"] == preds["theirs"]).sum())
            diff = (advs["ours"] - advs["theirs"]).abs()
            max_diff = max(max_diff, float(diff.max()))
            n_pix += diff.numel()
            n_pix_diff += int((diff > 0.01).sum())
        n += y.numel()
    out = {f"accuracy_{k}": v / n for k, v in correct.items()}
    out.update(n_eval=n, **{f"max_linf_{k}": v for k, v in max_linf.items()})
    if "theirs" in attacks:
        out.update(prediction_agreement=agree / n, max_pixel_difference=max_diff,
                   fraction_pixels_differing=n_pix_diff / max(n_pix, 1))
        # equal strength: the accuracy gap within 2 standard errors of a difference of two
        # independent binomial proportions at the pooled accuracy
        p = (out["accuracy_ours"] + out["accuracy_theirs"]) / 2
        two_se = 2 * math.sqrt(2 * p * (1 - p) / n)
        gap = out["accuracy_ours"] - out["accuracy_theirs"]
        out.update(accuracy_gap=gap, accuracy_gap_2se=two_se,
                   equal_strength=abs(gap) <= max(two_se, 1.0 / n))
    return out


def profile(attacks: dict, x: torch.Tensor, y: torch.Tensor, device: torch.device,
            rows: int = 12) -> dict:
    """torch.profiler of one call of each attack: top operators by self time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    out = {}
    for name, attack in attacks.items():
        attack(x, y)  # warm
        with torch_profile(activities=acts) as prof:
            attack(x, y)
            common.sync(device)
        table = prof.key_averages().table(sort_by=sort, row_limit=rows)
        print(f"\n--- torch.profiler: {name} (sorted by {sort}) ---\n{table}")
        events = sorted(prof.key_averages(), key=lambda e: -getattr(e, sort))[:rows]
        out[name] = [{"op": e.key, "count": e.count,
                      "self_ms": getattr(e, sort) / 1000.0} for e in events]
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = common.setup(args)
    env = common.environment(device)
    use_theirs = torchattacks is not None and not args.no_torchattacks
    print(f"bench_pgd: {common.describe_env(env)}")
    if not use_theirs:
        print("torchattacks not installed or disabled: timing ours only "
              "(pip install --no-deps -r requirements-bench.txt)")

    train, held_out = synthetic_data(args)
    model, train_secs = train_model(args, train, device)
    attacks = make_attacks(model, args, use_theirs)

    x, y = next(eval_batches(held_out, args.batch_size, device))
    if x.shape[0] < args.batch_size:  # tiny --n_eval: tile to the batch size
        reps = -(-args.batch_size // x.shape[0])
        x, y = x.repeat(reps, 1, 1, 1)[: args.batch_size], y.repeat(reps)[: args.batch_size]
    # Timed calls: each attack on its native input scale (no rescaling inside the timing).
    fns = {"ours": lambda: attacks["ours"](x, y)}
    if use_theirs:
        x01 = x / 255.0
        fns["theirs"] = lambda: attacks["theirs"].raw(x01, y)
    times = common.interleave(fns, args.reps, args.warmup, device)
    timing = {name: common.summarize(t) for name, t in times.items()}
    quality = strength(model, attacks, held_out, args, device)
    prof = profile(attacks, x, y, device) if args.profile else None

    rows = []
    for name in attacks:
        t = timing[name]
        rows.append({"attack": {"ours": "igam.attacks.PGD",
                                "theirs": f"torchattacks.PGD {torchattacks.__version__}"
                                if use_theirs else None}[name],
                     "median_ms": t["median"], "min_ms": t["min"],
                     "img_s": args.batch_size / t["median"],
                     "acc": quality[f"accuracy_{name}"]})
    ratio = timing["ours"]["median"] / timing["theirs"]["median"] if use_theirs else None
    paired = None
    if use_theirs:  # per-repetition ratios: each pair ran back to back under similar load
        pr = sorted(a / b for a, b in zip(times["ours"], times["theirs"]))
        q = statistics.quantiles(pr, n=4) if len(pr) >= 2 else [pr[0]] * 3
        paired = {"median": statistics.median(pr), "q1": q[0], "q3": q[2]}
    print(f"\nPGD-{args.steps} eps {args.eps:g}/255 step {args.step_size:g}/255, "
          f"widths {args.width} x {args.units} unit(s)/stage, batch {args.batch_size}, "
          f"{args.image_size}x{args.image_size}, {args.reps} interleaved reps")
    print(f"model: {args.train_steps} training steps ({train_secs:.1f} s), clean accuracy "
          f"{quality['accuracy_clean']:.3f} on {quality['n_eval']} held-out images")
    print(common.format_table(rows, [
        ("attack", "attack", ""), ("median_ms", "median ms", common.ms),
        ("min_ms", "min ms", common.ms), ("img_s", "images/s", ".1f"),
        ("acc", "acc. under attack", ".3f")]))
    if use_theirs:
        verdict = "OK" if ratio <= 1.0 else "SLOWER than goal"
        print(f"ratio ours/theirs (median): {ratio:.3f}  [goal <= 1.0: {verdict}]; "
              f"per-pair ratios: median {paired['median']:.3f}, "
              f"IQR {paired['q1']:.3f}-{paired['q3']:.3f}")
        print(f"strength: accuracy gap ours - theirs {quality['accuracy_gap']:+.3f} "
              f"(2 s.e. {quality['accuracy_gap_2se']:.3f}): "
              f"{'equal within noise' if quality['equal_strength'] else 'DIFFERENT'}")
        print(f"same seed: prediction agreement {quality['prediction_agreement']:.3f}, "
              f"{100 * quality['fraction_pixels_differing']:.2f}% of pixels differ by > 0.01 grey "
              f"levels (max {quality['max_pixel_difference']:.3g})")
    env["load_average_end"] = common.load_average()

    result = {
        "benchmark": "pgd",
        "environment": env,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out_dir", "tag")},
        "timing_s": timing,
        "samples_s": times,
        "ratio_ours_over_theirs": ratio,
        "ratio_per_pair": paired,
        "goal": "ratio_ours_over_theirs <= 1.0",
        "strength": quality,
        "train_seconds": train_secs,
        "torchattacks": torchattacks.__version__ if use_theirs else None,
        "profile": prof,
    }
    common.write_result(args.out_dir, "pgd", device, result, args.tag)
    return result


if __name__ == "__main__":
    main()
