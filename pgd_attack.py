"""Step 4 - generate adversarial examples of the test set against a trained model.

Port of the original ``pgd_attack.py`` (original.md §8): L-inf PGD (default eps 8, step 2, 10 steps,
random start), FGSM (``--attack.method fgsm``) or per-example L2 PGD, early-stopping by default
(``attack.early_stop``); or AutoAttack (``--attack.method autoattack``, optional package,
docs/evaluation.md#autoattack). The model is rebuilt from its checkpoint alone (classifier,
teacher or IGAM student), evaluated in eval mode unless ``--eval.bn_mode train``. Writes
``attacks/<model_name>-<hash>_<attack_name>_attack.npy`` (``c100attack`` for CIFAR-100;
``<hash>``: of the run folder's absolute path, so two runs never share a file): float32 NHWC
in [0, 255], the original's format, and beside it its record ``..._attack.json``: the
model's checkpoint hash, the data, every attack parameter, code version, device, time
(AutoAttack: and its results; docs/evaluation.md "Records").
A SIGINT / SIGTERM stops the attack at once: nothing is written, one line says how many
examples were done and the command that reruns it (exit code 128 + the signal number).

    python pgd_attack.py --model_dir models/igam_tinyimagenet_to_cifar10 \
        --attack_name pgds20 --attack.steps 20
    python pgd_attack.py --config configs/attack_autoattack.yaml --model_dir models/NAME
"""

from __future__ import annotations

import time

import numpy as np
import torch

from igam.attacks import make_attack
from igam.data import eval_batches
from igam.eval import advfiles, autoattack, records
from igam.eval.advfiles import save_adversarial
from igam.run import engine, precision, preflight, schemas
from igam.run.cli import run_main
from igam.run.config import load_config
from igam.run.files import write_json
from igam.run.progress import progress
from igam.run.provenance import file_sha256
from igam.run.stopping import abort_on_signal


def main(argv=None):
    cfg = load_config(schemas.ATTACK_SCHEMA, argv, prog="pgd_attack.py", description=__doc__)
    preflight.check_start(cfg, checkpoints=("model_dir",))  # e.g. pyautoattack, at second 0
    device = engine.setup(cfg)
    target = advfiles.load_attack_target(cfg, device)
    model, test, path = target.model, target.test, target.path
    a = dict(cfg["attack"])
    records.attack_params(cfg, target.norm)  # a bad autoattack setting fails before any work
    prec = precision.from_config(cfg["precision"])  # bf16 / channels_last / compile: opt-in
    fast = precision.compiled(precision.wrap(model, prec), prec)
    name = advfiles.run_name(cfg["model_dir"])
    extra = {}
    t0 = time.perf_counter()
    lost = "nothing was written"  # SIGINT / SIGTERM: stop at once, say how far it got
    if a["method"] == "autoattack":
        with abort_on_signal(lambda: f"during AutoAttack of {len(test)} examples, after "
                                     f"{time.perf_counter() - t0:.0f} s; {lost}"):
            x_adv, report = autoattack.run_on_dataset(fast, test, a, cfg["seed"], cfg["eval"],
                                                      device)
        extra["autoattack"] = report
        print(autoattack.format_report(report))
    else:
        attack = make_attack({k: v for k, v in a.items() if k not in autoattack.CONFIG_KEYS},
                             fast, bn_mode=cfg["eval"]["bn_mode"])
        bs = cfg["eval"]["batch_size"]
        adv = []
        with abort_on_signal(lambda: f"after {sum(len(b) for b in adv)} of {len(test)} "
                                     f"examples ({a['method']}); {lost}"):
            for x, y in progress(eval_batches(test, bs, device), desc=f"{a['method']} {name}",
                                 total=-(-len(test) // bs)):
                adv.append(attack(x, y).permute(0, 2, 3, 1).cpu())
        x_adv = torch.cat(adv).numpy().astype(np.float32)
    seconds = time.perf_counter() - t0
    save_adversarial(path, x_adv)
    record = records.attack_record(target, cfg, device, file_sha256(path), seconds, **extra)
    if a["method"] != "autoattack":
        assert record["attack"]["early_stop"] == attack.early_stop  # as recorded, as run
    write_json(records.record_path(path), record)
    print(f"stored {len(x_adv)} adversarial examples in {path} (record: "
          f"{records.record_path(path).name})")


if __name__ == "__main__":
    run_main(main)
