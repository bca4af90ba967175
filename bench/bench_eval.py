"""Benchmark: evaluation attacks on an ADVERSARIALLY trained model.

1. PGD-20 (L-inf eps 8/255, step 2/255, random start) over a held-out set: ours with early stop
   (``igam.attacks.PGD(early_stop=True)``, the evaluation default) against
   ``torchattacks.PGD`` and against ours without early stop (the original's final iterate).
   Reported: median wall-clock time of one pass over the set (interleaved repetitions), the
   ratio ours(early stop) / torchattacks (goal <= 0.6) and the accuracy under each attack
   (goal: early stop's accuracy equal or lower).
2. Cross-check of the AutoAttack path: APGD-CE (100 iterations, 1 restart, rho 0.75) through
   ``igam.eval.autoattack`` (official pyautoattack) against ``torchattacks.APGD`` with the same
   settings: robust accuracies agree within noise (two standard errors of the difference).
3. Standard AutoAttack (all four sub-attacks, full cost) on the first ``--aa_examples`` held-out
   images, timed against our early-stopping PGD-20 on the same images.

The model: a WideResNet (debug widths) trained ``--train_steps`` steps on synthetic CIFAR-like
data (``igam.data.synthetic``), the first ``--natural_steps`` of them on natural batches, the
rest PGD-``--train_pgd_steps`` adversarial training with the port's ``ClassifierTrainer``
(eps 8, step 2), so that robust accuracy is far from 0 and 1; ``--data DIR`` takes real
CIFAR-10 instead (training set; the first ``--n_eval`` test images). Needs torchattacks
(requirements-bench.txt) and pyautoattack (requirements-autoattack.txt); without them the
parts that need them are left out and say so.

    python -m bench.bench_eval                          # ~10 min on 2 CPU cores
    python -m bench.bench_eval --device cuda --n_eval 2000
    python -m bench.bench_eval --data $IGAM_REAL_DATA/cifar-10-batches-py --tag real
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make ``bench`` and ``igam`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench import common  # noqa: E402
from bench.bench_pgd import Scale255, synthetic_data  # noqa: E402
from igam.attacks import PGD  # noqa: E402
from igam.data import (
    TrainBatches,  # noqa: E402
    load_cifar10,  # noqa: E402
)
from igam.eval import autoattack  # noqa: E402
from igam.models import WideResNet  # noqa: E402
from igam.training import ClassifierTrainer  # noqa: E402

try:
    import torchattacks
except ImportError:  # bench-only dependency (requirements-bench.txt)
    torchattacks = None
try:
    import pyautoattack
except ImportError:  # optional dependency (requirements-autoattack.txt)
    pyautoattack = None


def parse_args(argv=None) -> argparse.Namespace:
    p = common.make_parser("bench_eval", __doc__, image_args=True, batch_size=128, reps=3,
                           units=1)
    p.add_argument("--steps", type=int, default=20, help="PGD steps (default: 20)")
    p.add_argument("--train_steps", type=int, default=500, help="training steps (500)")
    p.add_argument("--natural_steps", type=int, default=100,
                   help="of which natural (non-adversarial) first (100)")
    p.add_argument("--train_pgd_steps", type=int, default=5,
                   help="PGD steps of adversarial training (5)")
    p.add_argument("--data", default="synthetic",
                   help="synthetic (default), or a CIFAR-10 folder (official python version, "
                        "e.g. $IGAM_REAL_DATA/cifar-10-batches-py): train on its training set, "
                        "attack the first --n_eval test images")
    p.add_argument("--n_train", type=int, default=2000, help="synthetic training images")
    p.add_argument("--n_eval", type=int, default=512, help="held-out images (512)")
    p.add_argument("--apgd_steps", type=int, default=100, help="APGD iterations (100)")
    p.add_argument("--aa_examples", type=int, default=128,
                   help="images for standard AutoAttack (128; 0 skips it)")
    return p.parse_args(argv)


def adversarially_trained(args, train, device) -> tuple:
    """(model in eval mode, seconds): natural then PGD adversarial training (train mode)."""
    model = WideResNet(args.num_classes, args.width, args.units).to(device)
    attack = PGD(model, eps=8.0, step_size=2.0, steps=args.train_pgd_steps, keep_buffers=False)
    trainer = ClassifierTrainer(model, [[0, 0.05]], attack=attack,
                                steps_before_adv_training=args.natural_steps)
    batches = TrainBatches(train, min(32, len(train)), device, seed=args.seed)
    secs = common.time_once(lambda: [trainer.step(*next(batches))
                                     for _ in range(args.train_steps)], device)
    return model.eval(), secs


@torch.no_grad()
def _correct(model, x, y, bs) -> torch.Tensor:
    return torch.cat([model(x[s:s + bs]).argmax(1) == y[s:s + bs] for s in range(0, len(y), bs)])


def _attack_set(fn, x, y, bs) -> torch.Tensor:
    """fn applied batch by batch over the whole set."""
    return torch.cat([fn(x[s:s + bs], y[s:s + bs]) for s in range(0, len(y), bs)])


def _two_se(p1: float, p2: float, n: int) -> float:
    p = (p1 + p2) / 2
    return 2 * math.sqrt(2 * p * (1 - p) / max(n, 1))


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = common.setup(args)
    env = common.environment(device)
    print(f"bench_eval: {common.describe_env(env)}")
    missing = [n for n, m in (("torchattacks", torchattacks), ("pyautoattack", pyautoattack))
               if m is None]
    if missing:
        print(f"not installed: {', '.join(missing)} - their parts are skipped "
              "(pip install --no-deps -r requirements-bench.txt; "
              f"{autoattack.INSTALL})")
    if args.data == "synthetic":
        train, held_out = synthetic_data(args)
    else:
        train, held_out = load_cifar10(args.data)
        held_out = held_out.subset(slice(0, args.n_eval))
    model, train_secs = adversarially_trained(args, train, device)
    x = torch.from_numpy(held_out.images).permute(0, 3, 1, 2).float().contiguous().to(device)
    y = torch.from_numpy(held_out.labels).long().to(device)
    bs, n = args.batch_size, len(y)
    clean = float(_correct(model, x, y, bs).float().mean())
    print(f"model: {args.train_steps} steps ({args.natural_steps} natural, then PGD-"
          f"{args.train_pgd_steps} adversarial), {train_secs:.1f} s; clean accuracy "
          f"{clean:.3f} on {n} held-out images")

    # 1. PGD-20: ours with / without early stop, torchattacks
    kw = dict(eps=8.0, step_size=2.0, steps=args.steps, random_start=True, bn_mode="eval")
    ours_es, ours_full = PGD(model, early_stop=True, **kw), PGD(model, **kw)
    fns = {"ours_early_stop": lambda: _attack_set(ours_es, x, y, bs),
           "ours_final_iterate": lambda: _attack_set(ours_full, x, y, bs)}
    if torchattacks is not None:
        theirs = torchattacks.PGD(Scale255(model), eps=8 / 255, alpha=2 / 255, steps=args.steps,
                                  random_start=True)
        x01 = x / 255.0
        fns["torchattacks"] = lambda: _attack_set(theirs, x01, y, bs) * 255.0
    times = common.interleave(fns, args.reps, args.warmup, device)
    timing = {k: common.summarize(v) for k, v in times.items()}
    acc = {}
    for name, fn in fns.items():
        torch.manual_seed(args.seed)  # the same random starts for all three
        acc[name] = float(_correct(model, fn(), y, bs).float().mean())
    rows = [{"attack": k, "median_s": timing[k]["median"], "acc": acc[k],
             "x_theirs": (timing[k]["median"] / timing["torchattacks"]["median"]
                          if "torchattacks" in timing else None)} for k in fns]
    print(f"\nPGD-{args.steps} eps 8/255 step 2/255 random start, {n} images, batch {bs}, "
          f"{args.reps} interleaved reps")
    print(common.format_table(rows, [("attack", "attack", ""), ("median_s", "median s", ".2f"),
                                     ("x_theirs", "x torchattacks", ".3f"),
                                     ("acc", "acc. under attack", ".3f")]))
    pgd = {"timing_s": timing, "samples_s": times, "accuracy": acc, "clean_accuracy": clean}
    if "torchattacks" in timing:
        ratio = timing["ours_early_stop"]["median"] / timing["torchattacks"]["median"]
        gap = acc["ours_early_stop"] - acc["torchattacks"]
        pgd.update(ratio_early_stop_over_torchattacks=ratio, accuracy_gap=gap,
                   goal="ratio <= 0.6 and accuracy_gap <= 0",
                   goal_met=ratio <= 0.6 and gap <= 0)
        print(f"ratio ours(early stop)/torchattacks: {ratio:.3f} [goal <= 0.6: "
              f"{'OK' if ratio <= 0.6 else 'MISSED'}]; accuracy {acc['ours_early_stop']:.3f} "
              f"vs {acc['torchattacks']:.3f} [goal equal or lower: "
              f"{'OK' if gap <= 0 else 'MISSED'}]")

    result = {"benchmark": "eval", "environment": env, "complete": False,
              "settings": {k: v for k, v in vars(args).items() if k not in ("out_dir", "tag")},
              "train_seconds": train_secs, "pgd": pgd, "apgd_ce_crosscheck": None,
              "autoattack_standard": None,
              "torchattacks": getattr(torchattacks, "__version__", None),
              "pyautoattack": getattr(pyautoattack, "__version__", None)}
    common.write_result(args.out_dir, "eval", device, result, args.tag)  # part 1 kept if cut

    # 2. APGD-CE: igam.eval.autoattack (pyautoattack) vs torchattacks.APGD
    apgd = None
    if pyautoattack is not None:
        s = autoattack.settings_from_config({"eps": 8.0, "attacks": ["apgd-ce"],
                                             "n_iter": 0 if args.apgd_steps == 100
                                             else args.apgd_steps}, args.seed, bs)
        _, rep = autoattack.run(model, x, y, s, device, show=False)
        t = rep["seconds"]["total"]
        apgd = {"ours_accuracy": rep["robust_accuracy"]["apgd-ce"], "ours_seconds": t}
        if torchattacks is not None:
            ta = torchattacks.APGD(Scale255(model), norm="Linf", eps=8 / 255,
                                   steps=args.apgd_steps, n_restarts=1, seed=args.seed,
                                   loss="ce", rho=0.75)
            out = []
            ta_t = common.time_once(lambda: out.append(_attack_set(ta, x / 255.0, y, bs)),
                                    device)
            theirs_acc = float(_correct(model, out[0] * 255.0, y, bs).float().mean())
            two_se = _two_se(apgd["ours_accuracy"], theirs_acc, n)
            gap = apgd["ours_accuracy"] - theirs_acc
            apgd.update(theirs_accuracy=theirs_acc, theirs_seconds=ta_t, accuracy_gap=gap,
                        accuracy_gap_2se=two_se, agree=abs(gap) <= max(two_se, 1.0 / n))
            print(f"\nAPGD-CE {args.apgd_steps} steps: igam.eval.autoattack (pyautoattack) "
                  f"{apgd['ours_accuracy']:.3f} ({t:.1f} s) vs torchattacks.APGD "
                  f"{theirs_acc:.3f} ({ta_t:.1f} s): gap {gap:+.3f}, 2 s.e. {two_se:.3f}: "
                  f"{'agree within noise' if apgd['agree'] else 'DISAGREE'}")

    result["apgd_ce_crosscheck"] = apgd
    common.write_result(args.out_dir, "eval", device, result, args.tag)

    # 3. standard AutoAttack vs early-stopping PGD-20 on the same images
    aa = None
    if pyautoattack is not None and args.aa_examples > 0:
        m = min(args.aa_examples, n)
        xs, ys = x[:m], y[:m]
        s = autoattack.settings_from_config({"eps": 8.0}, args.seed, bs)
        _, rep = autoattack.run(model, xs, ys, s, device, show=True)
        torch.manual_seed(args.seed)
        out = []
        pgd_t = common.time_once(lambda: out.append(_attack_set(ours_es, xs, ys, bs)), device)
        pgd_acc = float(_correct(model, out[0], ys, bs).float().mean())
        aa = {"n": m, "robust_accuracy": rep["robust_accuracy"], "flags": rep["flags"],
              "seconds": rep["seconds"], "pgd20_early_stop_seconds": pgd_t,
              "pgd20_early_stop_accuracy": pgd_acc,
              "ratio_autoattack_over_pgd20": rep["seconds"]["total"] / pgd_t}
        print(f"\nstandard AutoAttack on {m} images: {rep['seconds']['total']:.1f} s, robust "
              f"accuracy {rep['final_accuracy']:.3f}; early-stopping PGD-{args.steps}: "
              f"{pgd_t:.2f} s, accuracy {pgd_acc:.3f}; AutoAttack / PGD time "
              f"{aa['ratio_autoattack_over_pgd20']:.1f}x")
        print("  " + ", ".join(f"{k} {v:.3f}" for k, v in rep["robust_accuracy"].items())
              + f"; flags: {[f['message'] for f in rep['flags']] or 'none'}")
    env["load_average_end"] = common.load_average()
    result.update(autoattack_standard=aa, complete=True)
    common.write_result(args.out_dir, "eval", device, result, args.tag)
    return result


if __name__ == "__main__":
    main()
