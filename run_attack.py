"""Step 5 - evaluate a model on stored adversarial examples and on the clean test set.

Port of the original ``run_attack.py`` (original.md §8): the file is refused (one-line error) if its
shape, pixel range [0, 255] (+-1e-4) or perturbation size (max |x_adv - x_nat| <= eps + 1e-4)
is wrong. Reports adversarial and clean accuracy, and writes into the model folder
``eval_<attack_name>.json``, ``eval_<attack_name>.txt`` and the predictions
``pred_<attack_name>.npy`` (adversarial) / ``pred_clean.npy``. A SIGINT / SIGTERM stops the
evaluation at once: nothing is written, one line says how far it got and the command that
reruns it (exit code 128 + the signal number).

    python run_attack.py --model_dir models/igam_tinyimagenet_to_cifar10 --attack_name pgds20
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from igam.data import eval_batches
from igam.eval import advfiles
from igam.eval.advfiles import adversarial_batches, load_adversarial
from igam.run import engine, precision, schemas
from igam.run.cli import run_main
from igam.run.config import load_config
from igam.run.files import atomic_write, atomic_write_text, write_json
from igam.run.stopping import abort_on_signal
from igam.training import evaluate


def main(argv=None):
    cfg = load_config(schemas.ATTACK_SCHEMA, argv, prog="run_attack.py", description=__doc__)
    device = engine.setup(cfg)
    model, test, path, norm = advfiles.load_attack_target(cfg, device)
    eps = float(cfg["attack"]["eps"])
    x_adv = load_adversarial(path, test.images, eps, norm)
    prec = precision.from_config(cfg["precision"])  # bf16 / channels_last / compile: opt-in
    model = precision.compiled(precision.wrap(model, prec), prec)
    bs, bn = cfg["eval"]["batch_size"], cfg["eval"]["bn_mode"]
    nb = -(-len(test) // bs)
    bars: dict[str, tqdm] = {}

    def progress(what: str, desc: str):
        def wrap(it):
            bars[what] = tqdm(it, desc=desc, total=nb)
            return bars[what]
        return wrap

    def done() -> str:  # SIGINT / SIGTERM: stop at once, say how far it got
        counts = ", ".join(f"{min(bar.n * bs, len(test))} of {len(test)} {what} examples"
                           for what, bar in bars.items())
        return f"after evaluating {counts or 'no examples'}; nothing was written"

    with abort_on_signal(done):
        adv = evaluate(model, adversarial_batches(x_adv, test.labels, bs, device), bn_mode=bn,
                       progress=progress("adversarial", f"adversarial {path.name}"))
        clean = evaluate(model, eval_batches(test, bs, device), bn_mode=bn,
                         progress=progress("clean", "clean"))

    out = Path(cfg["model_dir"])
    tag = cfg["attack_name"] or "attack"
    result = {"model_dir": str(cfg["model_dir"]), "attack_file": str(path),
              "dataset": test.name, "n": adv["n"], "eps": eps, "norm": norm,
              "bn_mode": cfg["eval"]["bn_mode"], "adv_accuracy": adv["accuracy"],
              "clean_accuracy": clean["accuracy"]}
    write_json(out / f"eval_{tag}.json", result)
    text = (f"model: {cfg['model_dir']}\nattack file: {path}\n"
            f"adversarial accuracy: {100 * adv['accuracy']:.2f}% ({adv['correct']}/{adv['n']})\n"
            f"clean accuracy: {100 * clean['accuracy']:.2f}% ({clean['correct']}/{clean['n']})\n")
    atomic_write_text(out / f"eval_{tag}.txt", text)
    for fname, res in ((f"pred_{tag}.npy", adv), ("pred_clean.npy", clean)):
        with atomic_write(out / fname, "wb", encoding=None) as fh:
            np.save(fh, res["predictions"].numpy())
    print(text, end="")


if __name__ == "__main__":
    run_main(main)
