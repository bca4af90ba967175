"""Gradient-masking checks: cheap signs that PGD accuracy over-reports robustness.

After Athalye, Carlini & Wagner 2018 ("Obfuscated gradients give a false sense of security")
and Carlini et al. 2019 ("On evaluating adversarial robustness"). Methods that shape input
gradients, as IGAM does, are the ones whose gradients can mislead a gradient-based attack;
each check below is a property every honestly robust model has, and a flag says where to
look harder (docs/evaluation.md):

- ``steps``: accuracy under L-inf PGD does not rise with more steps (``sanity.steps``);
- ``eps_monotone``: accuracy does not rise with eps (the robustness curve, clean at eps 0);
- ``eps_large``: at the largest eps of the sweep accuracy is ~0 (an unbounded attack must win);
- ``square``: white-box PGD is at most as accurate as the black-box Square attack
  (Andriushchenko et al. 2020, the gradient-free part of AutoAttack; from ``pyautoattack``);
- ``noise``: uniform noise of size eps (worst of several draws) hurts less than PGD;
- ``gradients``: few examples have an all-zero input gradient of the cross-entropy (a
  saturated softmax or dead units: PGD's sign step cannot move them).

Every model is rebuilt from its checkpoint and run in eval mode (running BatchNorm
statistics, examples independent), on the first ``sanity.num_examples`` test examples of the
dataset recorded in the checkpoints (the same for every model). Each attack is seeded with
``seed`` on its own generator, so its result does not depend on the order of the checks.

    python -m igam.eval.sanity --config configs/sanity.yaml --model_dir models/igam_student \
        [--model_dir models/baseline_student ...] [--out sanity.json] [--curve curve.png]

Prints a table per model; writes ``<model_dir>/sanity.json`` (or one ``--out`` JSON for all
models) with the accuracies, the checks and the resolved config, and draws the eps sweep of
every model into one robustness-curve PNG (``--curve``; default beside the JSON).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from igam.attacks import PGD, PIXEL_MAX, PIXEL_MIN, xent_loss
from igam.data import eval_batches
from igam.errors import ConfigError, MissingDependencyError
from igam.eval import figures
from igam.run import engine, schemas
from igam.run.cli import run_main
from igam.run.config import load_config
from igam.run.files import write_json
from igam.run.progress import progress
from igam.training import evaluate

PASS, FLAG, NOT_RUN = "pass", "FLAG", "not run"
SQUARE_INSTALL = "pip install -r requirements-autoattack.txt"


# ----------------------------------------------------------------------------------------------
# Settings


def check_settings(s: Mapping[str, Any]) -> dict[str, Any]:
    """The ``sanity`` section, checked beyond its ranges (``schemas.SANITY_SCHEMA.ranges``,
    checked by load_config): the step and eps lists must not be empty. Returns a plain dict."""
    for key in ("steps", "eps_sweep"):
        if not s[key]:
            raise ConfigError(f"config key 'sanity.{key}': expected a non-empty list, got []")
    return dict(s)


def check_square_available(s: Mapping[str, Any]) -> None:
    """MissingDependencyError (one line) if the Square check is asked for
    (``sanity.square_queries`` > 0) but the optional package pyautoattack is missing: the
    command line says so before any model is loaded, not with a ``not run`` row at the end."""
    if s["square_queries"] and square_attack_class() is None:
        raise MissingDependencyError(
            "the Square check needs the optional package pyautoattack; install it with: "
            f"{SQUARE_INSTALL} (or skip the check: --sanity.square_queries 0)")


# ----------------------------------------------------------------------------------------------
# Measurements (accuracies are fractions in [0, 1])


def _bar(desc: str, total: int):
    return lambda it: progress(it, desc=desc, total=total, leave=False)


def _generator(seed: int, device) -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def pgd_accuracy(model: nn.Module, data, eps: float, step_size: float, steps: int,
                 batch_size: int, device, seed: int = 0, desc: str = "PGD") -> float:
    """Accuracy under L-inf PGD (xent, random start; ``igam.attacks.PGD``) in eval mode."""
    attack = PGD(model, eps=eps, step_size=step_size, steps=steps, random_start=True,
                 bn_mode="eval", generator=_generator(seed, device))
    nb = -(-len(data) // batch_size)
    return evaluate(model, eval_batches(data, batch_size, device), attack=attack,
                    progress=_bar(desc, nb))["accuracy"]


@torch.no_grad()
def noise_accuracy(model: nn.Module, data, eps: float, draws: int, batch_size: int, device,
                   seed: int = 0) -> float:
    """Fraction of examples classified correctly under each of ``draws`` uniform noises
    x + U(-eps, eps)^d (clipped to [0, 255]): the worst case per example, in eval mode."""
    gen = _generator(seed, device)
    was = model.training
    model.eval()
    correct = 0
    try:
        for x, y in eval_batches(data, batch_size, device):
            ok = torch.ones_like(y, dtype=torch.bool)
            for _ in range(draws):
                noise = torch.empty_like(x).uniform_(-eps, eps, generator=gen)
                ok &= model((x + noise).clamp(PIXEL_MIN, PIXEL_MAX)).argmax(1) == y
            correct += int(ok.sum())
    finally:
        model.train(was)
    return correct / max(len(data), 1)


class ZeroOneInput(nn.Module):
    """The model on [0, 1] inputs, as AutoAttack's code expects: x01 -> model(255 * x01)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.model(x01 * PIXEL_MAX)


def square_attack_class():
    """pyautoattack's SquareAttack, or None if the optional package is not installed."""
    try:
        from pyautoattack.square import SquareAttack
    except ImportError:
        return None
    return SquareAttack


def square_accuracy(model: nn.Module, data, eps: float, queries: int, p_init: float,
                    batch_size: int, device, seed: int = 0) -> float:
    """Accuracy under the black-box L-inf Square attack (margin loss, ``queries`` per example,
    one restart) of the official implementation, run on ``ZeroOneInput(model)`` with eps / 255
    in eval mode. The attack reseeds torch's global RNG; it is run inside ``fork_rng`` so the
    caller's random state is unchanged. Raises ConfigError if pyautoattack is missing."""
    cls = square_attack_class()
    if cls is None:
        raise ConfigError(f"the Square attack needs the optional package pyautoattack: "
                          f"{SQUARE_INSTALL}")
    dev = torch.device(device)
    was = model.training
    model.eval()
    attack = cls(ZeroOneInput(model).eval(), norm="Linf", eps=eps / PIXEL_MAX,
                 n_queries=int(queries), p_init=p_init, n_restarts=1, seed=int(seed),
                 loss="margin", verbose=False, device=dev)
    correct = 0
    nb = -(-len(data) // batch_size)
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), \
                torch.no_grad():
            for x, y in progress(eval_batches(data, batch_size, device), desc="Square",
                                 total=nb, leave=False):
                adv01 = attack.perturb((x / PIXEL_MAX).contiguous(), y)
                x_adv = (adv01 * PIXEL_MAX).clamp(PIXEL_MIN, PIXEL_MAX)
                correct += int((model(x_adv).argmax(1) == y).sum())
    finally:
        model.train(was)
    return correct / max(len(data), 1)


def zero_gradient_fraction(model: nn.Module, data, batch_size: int, device) -> float:
    """Fraction of examples whose cross-entropy input gradient (what PGD ascends) is exactly
    zero at the clean image, in eval mode."""
    was = model.training
    model.eval()
    zero = 0
    try:
        for x, y in eval_batches(data, batch_size, device):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(xent_loss(model(x), y).sum(), x)
            zero += int((g.flatten(1).abs().amax(dim=1) == 0).sum())
    finally:
        model.train(was)
    return zero / max(len(data), 1)


def measure(model: nn.Module, data, s: Mapping[str, Any], device, seed: int = 0,
            name: str = "model") -> dict[str, Any]:
    """Run every measurement of the checks on ``data`` (settings ``s``, see
    schemas.SANITY_SCHEMA).

    Returns {"n", "clean_accuracy", "pgd_steps": [{"steps", "accuracy"}], "eps_sweep":
    [{"eps", "accuracy"}], "square_accuracy" (None if not run), "square_note",
    "noise_accuracy", "zero_gradient_fraction", "seconds"}. Identical PGD settings (e.g. eps 8,
    step 2, 20 steps in both lists) are run once.
    """
    t0 = time.time()
    bs, eps = int(s["batch_size"]), float(s["eps"])
    nb = -(-len(data) // bs)
    cache: dict[tuple[float, float, int], float] = {}

    def pgd(e: float, step: float, steps: int) -> float:
        key = (float(e), float(step), int(steps))
        if key not in cache:
            cache[key] = pgd_accuracy(model, data, e, step, steps, bs, device, seed,
                                      desc=f"{name}: PGD-{steps} eps {e:g}")
        return cache[key]

    clean = evaluate(model, eval_batches(data, bs, device),
                     progress=_bar(f"{name}: clean", nb))["accuracy"]
    res: dict[str, Any] = {"n": len(data), "clean_accuracy": clean}
    res["pgd_steps"] = [{"steps": int(k), "accuracy": pgd(eps, s["step_size"], k)}
                        for k in s["steps"]]
    res["eps_sweep"] = [{"eps": float(e),
                         "accuracy": pgd(e, s["sweep_step_fraction"] * e, s["sweep_steps"])}
                        for e in s["eps_sweep"]]
    res["square_accuracy"], res["square_note"] = None, ""
    if s["square_queries"] == 0:
        res["square_note"] = "not run: sanity.square_queries is 0"
    elif square_attack_class() is None:
        res["square_note"] = f"not run: pyautoattack missing ({SQUARE_INSTALL})"
    else:
        res["square_accuracy"] = square_accuracy(model, data, eps, s["square_queries"],
                                                 s["square_p_init"], bs, device, seed)
    res["noise_accuracy"] = noise_accuracy(model, data, eps, int(s["noise_draws"]), bs, device,
                                           seed)
    res["zero_gradient_fraction"] = zero_gradient_fraction(model, data, bs, device)
    res["seconds"] = round(time.time() - t0, 2)
    return res


# ----------------------------------------------------------------------------------------------
# Checks


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def judge(res: Mapping[str, Any], s: Mapping[str, Any]) -> list[dict[str, str]]:
    """The checks on a :func:`measure` result: a list of {"check", "status" (pass | FLAG |
    not run), "detail"}; accuracies are compared with ``s['tolerance']``."""
    tol = float(s["tolerance"])
    checks = []

    def add(check: str, ok: bool | None, detail: str) -> None:
        checks.append({"check": check, "status": NOT_RUN if ok is None else PASS if ok else FLAG,
                       "detail": detail})

    steps = res["pgd_steps"]
    add("steps", all(b["accuracy"] <= a["accuracy"] + tol for a, b in zip(steps, steps[1:])),
        "accuracy must not rise with more steps: "
        + " -> ".join(f"PGD-{r['steps']} {_pct(r['accuracy'])}" for r in steps))
    sweep = [{"eps": 0.0, "accuracy": res["clean_accuracy"]}] + list(res["eps_sweep"])
    order = sorted(sweep, key=lambda r: r["eps"])
    add("eps_monotone",
        all(b["accuracy"] <= a["accuracy"] + tol for a, b in zip(order, order[1:])),
        "accuracy must not rise with eps: "
        + ", ".join(f"{r['eps']:g}: {_pct(r['accuracy'])}" for r in order))
    big = order[-1]
    add("eps_large", big["accuracy"] <= s["zero_accuracy"],
        f"eps {big['eps']:g}: {_pct(big['accuracy'])} must be <= {_pct(s['zero_accuracy'])}")
    strong = max(steps, key=lambda r: r["steps"])
    pgd_text = f"PGD-{strong['steps']} {_pct(strong['accuracy'])}"
    if res["square_accuracy"] is None:
        add("square", None, res["square_note"])
    else:
        add("square", strong["accuracy"] <= res["square_accuracy"] + tol,
            f"white-box {pgd_text} must be <= black-box Square({s['square_queries']}) "
            f"{_pct(res['square_accuracy'])}")
    add("noise", res["noise_accuracy"] + tol >= strong["accuracy"],
        f"uniform noise (worst of {s['noise_draws']}) {_pct(res['noise_accuracy'])} must be "
        f">= {pgd_text}")
    add("gradients", res["zero_gradient_fraction"] <= s["max_zero_gradient"],
        f"{_pct(res['zero_gradient_fraction'])} of examples with an all-zero input gradient, "
        f"must be <= {_pct(s['max_zero_gradient'])}")
    return checks


def format_checks(name: str, res: Mapping[str, Any]) -> str:
    """The printed table of one model's checks."""
    head = (f"gradient-masking checks: {name} ({res['dataset']}, {res['n']} examples, clean "
            f"{_pct(res['clean_accuracy'])}, eps {res['eps']:g}, {res['seconds']:.0f} s)")
    width = max(len(c["check"]) for c in res["checks"])
    lines = [head, f"  {'check':<{width}}  {'status':<7}  detail"]
    for c in res["checks"]:
        lines.append(f"  {c['check']:<{width}}  {c['status']:<7}  {c['detail']}")
    return "\n".join(lines)


def robustness_curve(results: Mapping[str, Mapping[str, Any]], s: Mapping[str, Any]):
    """The eps sweep of every model as one line chart (PIL image): accuracy (%) against eps,
    clean accuracy at eps 0; the eps values are equally spaced (a log scale for a doubling
    sweep)."""
    eps = sorted(float(e) for e in s["eps_sweep"])
    series = {}
    for name, res in results.items():
        acc = {r["eps"]: r["accuracy"] for r in res["eps_sweep"]}
        series[name] = [100 * res["clean_accuracy"]] + [100 * acc[e] for e in eps]
    first = next(iter(results.values()))
    return figures.line_chart(
        ["0"] + [f"{e:g}" for e in eps], series,
        title=f"PGD-{s['sweep_steps']} accuracy vs eps ({first['dataset']}, "
              f"{first['n']} examples)",
        x_title="eps (L-inf, [0, 255] pixel scale; 0 = clean)")


# ----------------------------------------------------------------------------------------------
# Command line


def output_paths(cfg: Mapping[str, Any]) -> tuple[list[Path], Path]:
    """(JSON files, curve PNG): one ``--out`` file, else ``<model_dir>/sanity.json`` each; the
    curve at ``--curve``, else beside the JSON (``<out stem>_curve.png``, or
    ``robustness_curve.png`` in the first model's folder)."""
    if cfg["out"]:
        out = Path(cfg["out"])
        jsons, default_curve = [out], out.with_name(out.stem + "_curve.png")
    else:
        jsons = [Path(d) / "sanity.json" for d in cfg["model_dir"]]
        default_curve = Path(cfg["model_dir"][0]) / "robustness_curve.png"
    return jsons, Path(cfg["curve"]) if cfg["curve"] else default_curve


def main(argv=None):
    cfg = load_config(schemas.SANITY_SCHEMA, argv, prog="python -m igam.eval.sanity",
                      description=__doc__)
    s = check_settings(cfg["sanity"])
    check_square_available(s)  # at second 0, not after the other checks
    device = engine.setup(cfg)
    models, test = engine.load_compared_models(cfg["model_dir"], cfg["data"],
                                               s["num_examples"], device)
    results = {}
    for (name, model), model_dir in zip(models.items(), cfg["model_dir"]):
        res = {"model_dir": str(model_dir), "dataset": test.name, "eps": s["eps"],
               **measure(model, test, s, device, cfg["seed"], name)}
        res["checks"] = judge(res, s)
        res["flags"] = sum(c["status"] == FLAG for c in res["checks"])
        results[name] = res
        print(format_checks(name, res), flush=True)
    jsons, curve = output_paths(cfg)
    if cfg["out"]:
        write_json(jsons[0], {"models": results, "config": cfg})
    else:
        for (name, res), path in zip(results.items(), jsons):
            write_json(path, {"model": name, **res, "config": cfg})
    figures.save_png(robustness_curve(results, s), curve)
    print(f"wrote {', '.join(str(p) for p in jsons)} and the robustness curve {curve}")


if __name__ == "__main__":
    run_main(main)
