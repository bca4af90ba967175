"""Step 2 - fit a new target-task head on the frozen robust source model: the teacher.

Port of the original ``train_igam*.py --train_finetune_source_model --only_finetune``
(original.md §6): only the new head ``target_task_logit`` is trained, with TF1's Adam (lr 1e-3,
``igam.optim.AdamTF1``), on augmented target-task data; the source network runs with
batch-statistics BatchNorm, as in the original.
TinyImageNet -> CIFAR-10 resizes 32 -> 64 with TF1's bilinear resize ("upresize").
The source may also be an external robust model - a factory's or RobustBench's
(``teacher.model``; docs/byo_teacher.md) - whose last ``nn.Linear`` (or ``teacher.head``) is
the source head the new head replaces.

Afterwards (option ``finetune.recalibrate_bn``) the BatchNorm running statistics are
re-estimated on the target training data, so that eval-mode evaluation of the teacher sees the
features its head was trained on; clean accuracy is reported in both BN modes.

    python finetune_teacher.py --config configs/finetune_tinyimagenet_to_cifar10.yaml
    torchrun --nproc_per_node 4 finetune_teacher.py --config ...   # 4 GPUs (DDP)
"""

from __future__ import annotations

from igam.data import TrainBatches
from igam.errors import CheckpointError
from igam.models import Teacher, WideResNet
from igam.objective import random_pert
from igam.run import distributed, engine, external, preflight, schemas
from igam.run.cli import run_main
from igam.run.config import load_config
from igam.run.rundir import prepare_run_dir
from igam.training import HeadFinetuner


def main(argv=None):
    cfg = load_config(schemas.FINETUNE_SCHEMA, argv, prog="finetune_teacher.py",
                      description=__doc__)
    tc, f = cfg["teacher"], cfg["finetune"]
    port = external.kind(tc) == "port"  # else an external model (docs/byo_teacher.md)
    # fail at second 0, before data and models
    preflight.check_start(cfg, run_dir=True, checkpoints=("source_model_dir",) if port else (),
                          data=True)
    external.check_teacher(tc)
    device = engine.setup(cfg, data_parallel=True)
    train, test = engine.load_train_test(cfg)
    if port:
        source, _ = engine.load_model(cfg["source_model_dir"], device, ("classifier",))
        if not isinstance(source, WideResNet):
            raise CheckpointError(f"{cfg['source_model_dir']} does not hold a source classifier")
    else:
        source = external.load_teacher_source(tc, device)
    run = distributed.on_main(prepare_run_dir, cfg["model_dir"], cfg, cfg["resume"],
                              cfg["overwrite"])
    info = distributed.info()

    # the port's standardisations apply to its WideResNets; an external model has its own
    std = None if tc["standardization"] == "source" or not port else tc["standardization"]
    teacher = Teacher(source, train.num_classes, tc["upresize_to"] or None, std,
                      tc["bn"]).to(device)
    finetuner = HeadFinetuner(teacher, f["lr"], f["whole_model"], f["weight_decay"],
                              wrap=distributed.wrap)
    batches = TrainBatches(train, f["batch_size"], device, cfg["seed"], f["augment"],
                           info.rank, info.world_size)
    ckpt = engine.Checkpointer(run.path, "teacher", cfg, teacher, finetuner, batches)

    def step(x, y):
        if f["img_random_pert"]:
            x = random_pert(x, f["eps"])
        return finetuner.step(x, y)

    logger = engine.train(ckpt, run, step, batches, f["steps"], cfg,
                          desc="finetune teacher head")

    engine.report_teacher_clean_accuracy(teacher, train, test, cfg, device, ckpt, logger,
                                         run.path)
    if info.is_main and f["save_input_gradients"]:  # rank 0 writes the files
        engine.save_train_test_input_gradients(teacher, train, test, cfg["eval"]["batch_size"],
                                               device, run.path, "teacher")


if __name__ == "__main__":
    run_main(distributed.entry(main))
