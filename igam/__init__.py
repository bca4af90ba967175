"""igam-pytorch: a PyTorch port of IGAM (Chan, Tay, Ong, CVPR 2020; arXiv 1912.05699).

"What it Thinks is Important is Important: Robustness Transfers through Input Gradients".
Conventions everywhere: images are float tensors NCHW with pixels in [0, 255] (eps = 8 and
step = 2 are on that scale); labels are int64 (B,); every function keeps tensors on the device
of its inputs. Files keep the original's formats (adversarial examples: float32 NHWC .npy).

Layout by role (docs/layout.md); imports point down, from the tools to the method:

* the method, at the top of the package: ``models`` (and ``zoo``), ``objective`` (the IGAM loss),
  ``gradients``, ``attacks``, ``training``, ``optim``, ``ops``, ``data/`` (and ``errors``,
  shared by all). It imports nothing from the three folders below.
* ``igam.run`` - the run machinery of the entry scripts: config and schemas, engine (setup,
  loading, the training loop), checkpoints, run folders, distributed, device, precision,
  seeding, files, cli.
* ``igam.eval`` - evaluation tools: AutoAttack, gradient-masking checks, input-gradient
  pictures and alignment, report, figures, adversarial-example files.
* ``igam.tf`` - the original's TensorFlow checkpoints: reading and conversion.

Public API (import from the submodules):

--- the method ---
igam.models
    WideResNet(num_classes, widths=(16,160,320,640), units_per_stage=5,
               standardization='zero_mean_l2')       x (B,3,H,W) [0,255] -> logits (B,K);
                                                      .features(x) -> (B, widths[3])
    Teacher(source, num_target_classes, upresize_to=None, standardization=None, bn='batch')
                                                      forward: target logits; .source_logits(x)
    InputGradientDiscriminator(image_size=32, num_conv_layers=4, base_channels=8,
               only_fully_connected=False, num_fc_layers=3, avg_pool=False,
               standardization='zero_mean_l2'); .from_config(section, image_size, student_std)
                                                      (g_s, g_t) each (B,3,S,S) -> (2B,2) logits
    ExternalClassifier(model, factory, kwargs, input_range=1, mean=None, std=None, head=None)
                                                      any model -> [0,255] pixels in, logits
                                                      out; .features(x), .fc (its head)
    ExternalClassifier.from_factory('package.module:function', kwargs, **adapter)
    build_model(arch) -> nn.Module                    rebuild from a checkpoint's ``arch`` dict
igam.zoo
    robustbench_model(name, dataset='cifar10', threat_model='Linf', **overrides)
                                                      RobustBench architecture ([0,1] inputs)
igam.ops
    lrelu, l2_normalize, standardize(x, 'per_image'|'zero_mean_l2'|'l2'), Conv2dSame,
    upresize(x (B,C,H,W), size) -> (B,C,size,size)   TF1 legacy bilinear, differentiable
    BatchNorm2d / BatchNorm1d (eps 1e-3, momentum 0.1, ``stats`` switch), set_bn_stats,
    frozen_bn_stats(module)                   context: batch statistics, no buffer updated
    unwrap(module)                            the module inside DDP / compile / precision wrappers
igam.gradients
    input_gradient(model, x, y, create_graph=False) -> (B,3,H,W)   d sum softmax[y] / dx
    cosine_per_example(g_a, g_b) -> (B,) float64      NaN where a gradient is exactly zero
    double_backward_failure(model, x, y) -> str | None  why IGAM cannot train it (the layer)
igam.objective
    student_loss(student, discriminator, x, y, g_teacher, beta, gamma) -> dict of tensors
    IGAMSettings(...), IGAMTrainer(student, teacher, discriminator, settings).step(x, y)
igam.training
    ClassifierTrainer(model, lr_schedule, momentum, weight_decay, attack=None).step(x, y)
    HeadFinetuner(teacher, lr=1e-3, whole_model=False, weight_decay=2e-4).step(x, y)
    evaluate(model, batches, attack=None, bn_mode='eval') -> {"accuracy", "correct", "n",
                                                              "predictions" (N,)}
    recalibrate_bn(model, batches)
igam.optim
    sgd(module, lr, momentum, weight_decay)   weight decay on conv/FC weights only
    AdamTF1(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
                                              tf.train.AdamOptimizer's rule (eps on raw sqrt(v))
    adam(module, lr, weight_decay)            AdamTF1, the same weight decay (L2, not AdamW)
    weight_decay_loss(module)                 sum(w^2) / 2 over conv/FC weights (differentiable)
    PiecewiseConstant(schedule)(step) -> lr   tf.train.piecewise_constant semantics
igam.attacks
    PGD(model, eps=8, step_size=2, steps=10, random_start=True, loss='xent', restarts=1,
        early_stop=False)
    FGSM(model, eps=8), PGDL2(model, eps, step_size, steps, ...), make_attack(cfg, model)
                                              attack(x (B,3,H,W) [0,255], y) -> x_adv, detached
igam.data
    load_dataset('cifar10'|'cifar100'|'tinyimagenet', root) -> (train, test) ArrayDataset
                                              .images uint8 (N,H,W,3) NHWC, .labels int64 (N,)
    TrainBatches(dataset, batch_size, device, seed, augment=True, rank=0, world_size=1)
                                              iterator of (x float (B,3,H,W) [0,255], y (B,))
    eval_batches(dataset, batch_size, device), augment_batch(x)
    resolve_classes(data_cfg, total, name) -> [int] | None; select_classes(dataset, classes)
                                              class subset, original classes[i] -> label i
    igam.data.synthetic: write_synthetic_cifar10 / _cifar100 / _tinyimagenet (official formats)
    igam.data.holdout: write_cifar10_holdout(root, out, per_class, seed) (validation split)
--- the run machinery ---
igam.run.config / igam.run.schemas / igam.run.checkpoint / igam.run.engine; run-time plumbing:
igam.run.seeding, igam.run.device, igam.run.files (atomic writes, JSON), igam.run.rundir (run
folder, metrics log), igam.run.cli (error guard), igam.run.stopping (SIGINT / SIGTERM: checkpoint
the step reached, print the command that continues, exit 128 + signal), igam.run.provenance
(file hash, code version)
    load_config(schema, argv) (schemas.IGAM_SCHEMA, ...: Keys with default, help, choices,
    range), save_checkpoint / load_checkpoint (atomic, weights_only), seed_everything,
    resolve_device, MetricsLogger, engine.fit / Checkpointer, engine.save_input_gradients
    (float32 NHWC .npy of a whole dataset)
igam.run.external
    check_teacher(section), load_teacher_source(section, device), build_student(section, k,
    device): factory / RobustBench teachers and factory students (docs/byo_teacher.md)
igam.run.distributed / igam.run.precision
    torchrun/DDP helpers (init, wrap, is_main, rank_seed); Precision(autocast='none'|
    'bf16', channels_last, compile) for adversarial training, attacks and evaluation
--- evaluation ---
igam.eval.autoattack (needs the optional pyautoattack)
    settings_from_config(attack_cfg, seed, batch_size) -> Settings; Scale01(model)
    run(model, x (N,3,H,W) [0,255], y, settings, device) -> (x_adv [0,255], report dict)
igam.eval.sanity / igam.eval.visualize / igam.eval.figures
    (also ``python -m igam.eval.sanity`` / ``python -m igam.eval.visualize``)
    sanity.measure(model, data, settings, device) -> accuracies; sanity.judge(result, settings)
                                              -> [{"check", "status" pass|FLAG|not run, "detail"}]
    visualize.gradient_alignment(teacher, {name: student}, data, batch_size, device)
                                              -> {name: {"mean_cosine", "std_cosine", "n", ...}}
    visualize.display_gradients(g, clip_std=3) -> (B,3,H,W) in [0,1]   per-image display scaling
    figures.labelled_grid(cells, nrow, row_labels, col_labels), figures.line_chart(...) -> PIL
igam.eval.advfiles / igam.eval.records / igam.eval.report
    save_adversarial / load_adversarial (the original's NHWC .npy files), load_attack_target,
    run_name; records: attack_record / check_attack_record / eval_result (provenance of
    attack files and results); ``python -m igam.eval.report`` (tables of results,
    --summarize over seeds, --records of run folders)
--- the original's checkpoints ---
igam.tf.reader / igam.tf.convert
    read_tf_checkpoint(path) -> {name: np.ndarray}; model_from_tf(variables, arch) -> nn.Module
igam.errors
    IGAMError and its kinds (DataError, ConfigError, CheckpointError, AttackFileError,
    MissingDependencyError):
    one-line messages for bad input; entry scripts print them as ``error: ...`` (exit 2).
"""

__version__ = "0.1.0"
