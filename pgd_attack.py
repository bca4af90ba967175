"""Step 4 - generate adversarial examples of the test set against a trained model.

Port of the original ``pgd_attack.py`` (SPEC 8): L-inf PGD (default eps 8, step 2, 10 steps,
random start), FGSM (``--attack.method fgsm``) or per-example L2 PGD. The model is rebuilt from
its checkpoint alone (classifier, teacher or IGAM student), evaluated in eval mode unless
``--eval.bn_mode train``. Writes ``attacks/<model_name>_<attack_name>_attack.npy``
(``c100attack`` for CIFAR-100): float32 NHWC in [0, 255], the original's format.

    python pgd_attack.py --model_dir models/igam_tinyimagenet_to_cifar10 \
        --attack_name pgds20 --attack.steps 20
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from igam import engine, precision, schemas
from igam.advfiles import save_adversarial
from igam.attacks import make_attack
from igam.cli import run_main
from igam.config import load_config
from igam.data import eval_batches
from igam.files import write_json


def main(argv=None):
    cfg = load_config(schemas.ATTACK, argv, schemas.ATTACK_CHOICES,
                      ranges=schemas.ATTACK_RANGES, prog="pgd_attack.py", description=__doc__)
    device = engine.setup(cfg)
    model, test, path, _ = engine.load_attack_target(cfg, device)
    a = dict(cfg["attack"])
    prec = precision.from_config(cfg["precision"])  # bf16 / channels_last / compile: opt-in
    fast = precision.compiled(precision.wrap(model, prec), prec)
    attack = make_attack(a, fast, bn_mode=cfg["eval"]["bn_mode"])
    name = Path(cfg["model_dir"]).resolve().name

    bs = cfg["eval"]["batch_size"]
    adv = []
    for x, y in tqdm(eval_batches(test, bs, device), desc=f"{a['method']} {name}",
                     total=-(-len(test) // bs)):
        adv.append(attack(x, y).permute(0, 2, 3, 1).cpu())
    x_adv = torch.cat(adv).numpy().astype(np.float32)
    save_adversarial(path, x_adv)
    meta = {"model_dir": str(cfg["model_dir"]), "dataset": test.name, "n": len(test),
            "attack": a, "bn_mode": cfg["eval"]["bn_mode"], "seed": cfg["seed"]}
    if not prec.is_default:
        meta["precision"] = cfg["precision"]
    write_json(path.with_suffix(".json"), meta)
    print(f"stored {len(x_adv)} adversarial examples in {path}")


if __name__ == "__main__":
    run_main(main)
