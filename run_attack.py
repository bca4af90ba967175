"""Step 5 - evaluate a model on stored adversarial examples and on the clean test set.

Port of the original ``run_attack.py`` (original.md §8): the file is refused (one-line error) if its
shape, pixel range [0, 255] (+-1e-4) or perturbation size (max |x_adv - x_nat| <= eps + 1e-4)
is wrong. Its record (``<file>.json``, written by pgd_attack.py) is checked first: examples
made from another model (checkpoint hash) are refused unless ``--transfer true`` asks for a
transfer (black-box) evaluation, and so are examples made on other data or with attack
parameters other than the config's; a file without a record (the original TF code's) is
evaluated with a one-line warning. Reports adversarial and clean accuracy, and writes into
the model folder, named by the attack that made the file (its record's name; transfer:
``<attack_name>_from_<source run>``): ``eval_<name>.json`` (the result with its provenance),
``eval_<name>.txt``, the predictions ``pred_<name>.npy``, and once per checkpoint the clean
predictions ``pred_clean_<checkpoint sha256[:8]>.npy`` (docs/evaluation.md "Records").
A SIGINT / SIGTERM stops the evaluation at once: nothing is written, one line says how far it
got and the command that reruns it (exit code 128 + the signal number).

    python run_attack.py --model_dir models/igam_tinyimagenet_to_cifar10 --attack_name pgds20
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from igam.data import eval_batches
from igam.eval import advfiles, records
from igam.eval.advfiles import adversarial_batches, load_adversarial
from igam.run import engine, precision, schemas
from igam.run.cli import run_main
from igam.run.config import load_config
from igam.run.files import atomic_write, atomic_write_text, write_json
from igam.run.progress import progress
from igam.run.provenance import file_sha256
from igam.run.stopping import abort_on_signal
from igam.training import evaluate


def main(argv=None):
    cfg = load_config(schemas.ATTACK_SCHEMA, argv, prog="run_attack.py", description=__doc__)
    device = engine.setup(cfg)
    target = advfiles.load_attack_target(cfg, device)
    test, path, norm = target.test, target.path, target.norm
    eps = float(cfg["attack"]["eps"])
    expected = records.attack_params(cfg, norm)  # also validates the config's attack
    transfer, record = bool(cfg["transfer"]), None
    if path.is_file():  # the record first: its one-line reasons are the clearest
        record = records.read_attack_record(path)
        file_sha = file_sha256(path)
        if record is not None:
            transfer = records.check_attack_record(record, target, cfg, file_sha, transfer)
    x_adv = load_adversarial(path, test.images, eps, norm)
    tag = records.result_tag(record["attack"]["name"] if record else cfg["attack_name"],
                             transfer, record)
    out = Path(cfg["model_dir"])
    if out.is_file():  # a checkpoint file given: results beside it
        out = out.parent
    source_sha = (record["model"]["checkpoint_sha256"] if record
                  else None if transfer else target.sha256)
    records.check_result_slot(out / f"eval_{tag}.json",
                              dict(record["attack"]) if record else expected, source_sha, path)

    prec = precision.from_config(cfg["precision"])  # bf16 / channels_last / compile: opt-in
    model = precision.compiled(precision.wrap(target.model, prec), prec)
    bs, bn = cfg["eval"]["batch_size"], cfg["eval"]["bn_mode"]
    nb = -(-len(test) // bs)
    bars: dict = {}

    def tracked(what: str, desc: str):
        def wrap(it):
            bars[what] = progress(it, desc=desc, total=nb)
            return bars[what]
        return wrap

    def done() -> str:  # SIGINT / SIGTERM: stop at once, say how far it got
        counts = ", ".join(f"{min(bar.n * bs, len(test))} of {len(test)} {what} examples"
                           for what, bar in bars.items())
        return f"after evaluating {counts or 'no examples'}; nothing was written"

    with abort_on_signal(done):
        adv = evaluate(model, adversarial_batches(x_adv, test.labels, bs, device), bn_mode=bn,
                       progress=tracked("adversarial", f"adversarial {path.name}"))
        clean = evaluate(model, eval_batches(test, bs, device), bn_mode=bn,
                         progress=tracked("clean", "clean"))

    clean_name, key = records.clean_predictions_name(target, cfg, prec.is_default)
    records.save_clean_predictions(out, clean_name, key, clean["predictions"].numpy(), target,
                                   cfg, clean["accuracy"])
    result = records.eval_result(target=target, cfg=cfg, device=device, tag=tag, record=record,
                                 transfer=transfer, file_sha256=file_sha, adv=adv, clean=clean,
                                 clean_predictions=clean_name)
    with atomic_write(out / f"pred_{tag}.npy", "wb", encoding=None) as fh:
        np.save(fh, adv["predictions"].numpy())
    write_json(out / f"eval_{tag}.json", result)
    m = result["model"]
    lines = [f"model: {cfg['model_dir']} (step {m['step']}, checkpoint sha256 "
             f"{m['checkpoint_sha256'][:records.SHORT]})",
             f"attack file: {path} ({tag}: {records.describe_attack(result['attack'])}; "
             + ("record checked)" if record else "no record: unchecked)")]
    if transfer:
        src = result["source_model"]
        lines.append("transfer (black-box) attack from " + (
            f"{src['path']} (step {src['step']}, checkpoint sha256 "
            f"{src['checkpoint_sha256'][:records.SHORT]})" if src else "an unknown model"))
    lines += [f"adversarial accuracy: {100 * adv['accuracy']:.2f}% ({adv['correct']}/{adv['n']})",
              f"clean accuracy: {100 * clean['accuracy']:.2f}% ({clean['correct']}/{clean['n']})",
              f"result: {out / f'eval_{tag}.json'}"]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / f"eval_{tag}.txt", text)
    print(text, end="")


if __name__ == "__main__":
    run_main(main)
