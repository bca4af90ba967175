"""Step 3 - IGAM: train a student whose input gradients look like the robust teacher's.

Port of the original ``train_igam.py`` / ``train_igam_tinyimagenet2cifar_upresize.py``
(original.md §4): the student (WideResNet, or a factory's model such as torchvision's
ResNet-18: docs/byo_teacher.md; trained on natural images only) minimises
CE - beta * D_xent + gamma * sum (g_s - g_t)^2, while an input-gradient discriminator learns to
tell its input gradients from the frozen teacher's. The first ``igam.steps_before_adv_opt``
steps are plain classification training. The teacher is a finetuned teacher's run folder
(``teacher_dir``), or an external model whose classes are the target task's, used as it is
(``teacher.model``: a factory's or RobustBench's; docs/byo_teacher.md).

    python train_igam.py --config configs/igam_tinyimagenet_to_cifar10.yaml
    torchrun --nproc_per_node 4 train_igam.py --config ...   # 4 GPUs (DDP)

Data parallel: the student and the discriminator each have their own DistributedDataParallel
wrapper; the frozen teacher has none. The student's input gradient is taken with
``torch.autograd.grad(create_graph=True)`` (no all-reduce); only the ordinary ``backward`` of
each loss averages gradients over ranks. The L2 term is a sum over each rank's batch, so the
average over ranks is the mean of per-rank sums (with N ranks, gamma * N keeps the paper's
per-sample weight of a global batch of N * batch_size). No SyncBatchNorm (no double backward),
no bf16 / torch.compile (double backward).
"""

from __future__ import annotations

import torch

from igam.data import TrainBatches
from igam.models import InputGradientDiscriminator, WideResNet
from igam.objective import IGAMSettings, IGAMTrainer
from igam.run import distributed, engine, external, preflight, schemas
from igam.run.cli import run_main
from igam.run.config import load_config
from igam.run.rundir import prepare_run_dir


def main(argv=None):
    cfg = load_config(schemas.IGAM_SCHEMA, argv, prog="train_igam.py", description=__doc__)
    port = external.kind(cfg["teacher"]) == "port"  # else an external model, not finetuned
    # fail at second 0, before data and models
    preflight.check_start(cfg, run_dir=True, checkpoints=("teacher_dir",) if port else (),
                          data=True)
    external.check_teacher(cfg["teacher"])
    device = engine.setup(cfg, data_parallel=True)
    train, test = engine.load_train_test(cfg)
    if port:
        teacher = engine.load_teacher(cfg["teacher_dir"], device, cfg["teacher_bn"], cfg["data"])
        engine.check_classes(teacher, train, cfg["teacher_dir"])
    else:
        teacher = engine.load_external_teacher(cfg["teacher"], device, cfg["teacher_bn"])
        engine.check_classes(teacher, train, cfg["teacher"]["model"])

    s, d, g, t = cfg["student"], cfg["discriminator"], cfg["igam"], cfg["train"]
    student = None
    if s["model"]:  # a factory's student (docs/byo_teacher.md): can IGAM differentiate it twice?
        student = external.build_student(s, train.num_classes, device)
        engine.check_double_backward(student, train, device, s["model"])
    run = distributed.on_main(prepare_run_dir, cfg["model_dir"], cfg, cfg["resume"],
                              cfg["overwrite"])
    info = distributed.info()
    if student is None:
        student = WideResNet(train.num_classes, s["widths"], s["units_per_stage"],
                             s["standardization"]).to(device)
    disc = InputGradientDiscriminator.from_config(d, train.image_size,
                                                  s["standardization"]).to(device)
    settings = IGAMSettings.from_config(cfg)
    generator = torch.Generator(device=device).manual_seed(distributed.rank_seed(cfg["seed"]))
    trainer = IGAMTrainer(distributed.wrap(student), teacher, distributed.wrap(disc), settings,
                          generator)
    batches = TrainBatches(train, t["batch_size"], device, cfg["seed"], t["augment"],
                           info.rank, info.world_size)
    ckpt = engine.Checkpointer(run.path, "igam", cfg, student, trainer, batches,
                               extras={"discriminator": disc})
    logger = engine.train(ckpt, run, trainer.step, batches, t["steps"], cfg, desc="IGAM")
    engine.report_clean_accuracy(student, test, cfg, device, logger, "student", run.path)
    if g["save_input_gradients"] and info.is_main:
        engine.save_train_test_input_gradients(student, train, test, cfg["eval"]["batch_size"],
                                               device, run.path, "student")

if __name__ == "__main__":
    run_main(distributed.entry(main))
