"""Step 1 - PGD adversarial training of the robust source model (Madry et al. 2018).

Port of the original ``train_tinyimagenet_only_advtrain.py`` (original.md §5): every step crafts PGD
adversarial examples (eps 8, step 2, 7 steps, random start) against the current model in train
mode and takes one SGD step on their cross-entropy. TinyImageNet by default; with
``--data.dataset cifar10`` it trains a Madry-style CIFAR-10 teacher.

    python train_advtrain_tinyimagenet.py --config configs/advtrain_tinyimagenet.yaml
    torchrun --nproc_per_node 4 train_advtrain_tinyimagenet.py --config ...  # 4 GPUs (DDP)

Options ``precision.autocast bf16`` / ``precision.channels_last`` speed up the PGD and
training forward passes; ``precision.compile`` compiles the attack's and evaluation's forward.
"""

from __future__ import annotations

from igam.attacks import PGD
from igam.data import TrainBatches
from igam.models import WideResNet
from igam.run import distributed, engine, precision, preflight, schemas
from igam.run.cli import run_main
from igam.run.config import load_config
from igam.run.rundir import prepare_run_dir
from igam.training import ClassifierTrainer


def main(argv=None):
    cfg = load_config(schemas.ADVTRAIN_SCHEMA, argv, prog="train_advtrain_tinyimagenet.py",
                      description=__doc__)
    preflight.check_start(cfg, run_dir=True, data=True)  # fail at second 0
    device = engine.setup(cfg, data_parallel=True)
    train, test = engine.load_train_test(cfg)
    run = distributed.on_main(prepare_run_dir, cfg["model_dir"], cfg, cfg["resume"],
                              cfg["overwrite"])
    info = distributed.info()

    m, t, a = cfg["model"], cfg["train"], cfg["attack"]
    model = WideResNet(train.num_classes, m["widths"], m["units_per_stage"],
                       m["standardization"]).to(device)
    prec = precision.from_config(cfg["precision"])
    net = precision.wrap(model, prec)  # autocast / channels_last forward (model if off)
    fast = precision.compiled(net, prec)  # attack and evaluation forward
    # keep_buffers=False: like the original's TF batch norm, the PGD forward passes in train
    # mode also update the BN running averages. The attack uses the model without its DDP
    # wrapper: its input gradients are not synchronised.
    attack = PGD(fast, a["eps"], a["step_size"], a["steps"], a["random_start"], a["loss"],
                 keep_buffers=False)
    trainer = ClassifierTrainer(distributed.wrap(net), t["lr_schedule"], t["momentum"],
                                t["weight_decay"], attack, t["steps_before_adv_training"])
    batches = TrainBatches(train, t["batch_size"], device, cfg["seed"], t["augment"],
                           info.rank, info.world_size)
    ckpt = engine.Checkpointer(run.path, "classifier", cfg, model, trainer, batches)
    logger = engine.train(ckpt, run, trainer.step, batches, t["steps"], cfg,
                          desc="adversarial training")
    engine.report_clean_accuracy(fast, test, cfg, device, logger, "source model", run.path)

if __name__ == "__main__":
    run_main(distributed.entry(main))
