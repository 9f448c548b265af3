"""What every config field means: the help text of its command-line flag.

`HELP` maps a field name to its help; a key "ClassName.field" overrides it
for one config class where the same name means something else there (e.g.
`epochs` of pretraining against the distilled data's epochs). Choice
fields get their allowed values from `CHOICES` and become enum flags; absl
prints the values as `<a|b|c>` in front of the help.
`tests/common_test.py` checks that every field of every config class in
`experiments.common.CONFIG_CLASSES` has an entry.
"""

from distill_jax import config as config_lib
from distill_jax.core import inner_opt
from distill_jax.core import truncation
from distill_jax.data import voc_cub
from distill_jax.methods import rat_bptt

# Allowed values of the choice fields; "ClassName.field" keys as in HELP.
CHOICES = {
    "arch": config_lib.ARCHS,
    "init": config_lib.INITS,
    "init_mode": config_lib.INIT_MODES,
    "norm": config_lib.NORMS,
    "pooling": config_lib.POOLINGS,
    "remat": config_lib.REMAT_POLICIES,
    "objective": config_lib.OBJECTIVES,
    "image_init": config_lib.IMAGE_INITS,
    "RatConfig.image_init": rat_bptt.IMAGE_INITS,
    "inner_opt": inner_opt.NAMES,
    "truncation": truncation.MODES,
    "boost_mode": rat_bptt.BOOST_MODES,
    "eval_parallel": ("map", "vmap"),
    "data_source": ("memory", "stream", "auto"),
    "AdaptAlexNetConfig.target": voc_cub.TARGETS,
    "DecoupledConfig.method": ("sre2l", "cda", "delt", "gvbsm", "rded",
                               "random_real", "scdd"),
    "teacher_arch": ("convnet_bn", "convnet_in", "resnet_small", "resnet18",
                     "mlp"),
    "teacher_norm": ("batch", "instance", "none"),
    "teacher_schedule": ("cosine", "half_cosine", "constant"),
    "post_arch": ("convnet_bn", "convnet_in", "resnet_small", "resnet18",
                  "mlp"),
    "teacher_optimizer": ("sgd", "adamw"),
    "post_loss": ("", "kl", "mse_ce"),
    "post_optimizer": ("sgd", "adamw"),
    "post_schedule": ("cosine", "half_cosine", "constant"),
    "recover_batching": ("", "cross_class", "class_grouped"),
    "recover_cda_mode": ("step", "linear", "cosine"),
    "recover_init": ("", "noise", "real_medium", "real_random"),
    "post_labels": ("hard", "online", "stored"),
    "post_teacher_bn": ("eval", "train"),
    "post_mix": ("cutmix", "mixup", "none"),
    "post_select": ("val", "last"),
    "post_parallel": ("map", "vmap"),
    "ssl_optimizer": ("sgd", "adamw"),
}

_DATASETS = ("a local builder (mnist, fashion_mnist, usps, cifar10, "
             "cifar10_subset), any TFDS image-classification name (e.g. "
             "svhn_cropped, cifar100, emnist/balanced; online), or a path to "
             "an .npz (x_train, y_train, x_test, y_test) or an image folder "
             "with one subfolder per class")
_AUG = ("augmentation: 'none' or operations of {flip, rotate} joined by '_', "
        "e.g. flip_rotate (rotate only for digits: flips change them)")

HELP = {
    # Data.
    "dataset": "dataset: " + _DATASETS,
    "val_size": "training images held out as the validation split",
    "train_limit": "use only the first N training images (0: all)",
    "image_size": "resize images to this many pixels a side (0: native, e.g. "
                  "28 for USPS -> MNIST)",
    "channels": "image channels: 0 native, 1, or 3 to replicate grayscale "
                "(e.g. MNIST for SVHN networks)",
    "zca": "ZCA-whiten the images (fitted on the training split)",
    "zca_reg": "ZCA regulariser, a multiple of the mean eigenvalue",
    # Model.
    "arch": "network architecture",
    "init": "weight initialisation scheme of the networks",
    "width": "convnet channels per layer; alexnet conv1 channels (64 = "
             "torchvision, the other layers scale with it)",
    "depth": "convnet conv blocks",
    "norm": "convnet normalisation layer",
    "pooling": "convnet pooling after each block",
    "mlp_hidden": "mlp hidden layer sizes, comma-separated",
    # Distilled data.
    "steps": "distilled GD steps per epoch of the inner training",
    "epochs": "passes over the distilled steps in the inner training (inner "
              "GD steps = steps x epochs)",
    "images_per_class_per_step": "distilled images of each class in every "
                                 "step",
    "lr_init": "initial value of the learned per-step learning rates",
    "learn_lr": "learn the per-step learning rates of the inner training",
    "image_init": "initial distilled images: noise = N(0, 1) in normalised "
                  "space (the paper), real = a random training image of the "
                  "class",
    "RatConfig.image_init": "initial distilled images: unit_norm = Gaussian "
                            "scaled to unit norm per image (RaT-BPTT), "
                            "gaussian = N(0, 1)",
    "RatConfig.learn_lr": "learn per-step learning rates (inner_opt=gd only)",
    "ipc": "distilled images per class (per block for Boost-DD)",
    "learn_labels": "learn soft labels alongside the images",
    "label_lr_scale": "learned labels' lr = outer_lr / label_lr_scale",
    # Distribution of initial weights.
    "init_mode": "initial weights of the inner training: fixed = one network, "
                 "random = fresh draws, fixed_pretrained / random_pretrained "
                 "= members of --pretrained_pool",
    "num_inits": "initialisations sampled per outer step (vmapped)",
    "pretrained_pool": "pool.npz of pretrained networks written by "
                       "experiments.pretrain",
    "pool_heldout": "last N pool members kept out of training, for "
                    "evaluation",
    # Inner problem (RaT-BPTT).
    "total_steps": "inner training steps N of the unroll",
    "window": "differentiable window M: the last inner steps "
              "backpropagated through",
    "truncation": "where the window lies in the N inner steps: random start "
                  "(RaT-BPTT), at the end, or full unroll",
    "redraw_every": "outer steps between redraws of the random window start",
    "batch_per_class": "distilled images of each class in one inner step",
    "task_sampler_nc": "classes in each inner batch (0: all)",
    "inner_opt": "optimiser of the inner training (gd: learned-lr SGD)",
    "inner_lr": "learning rate of the inner optimiser",
    "inner_momentum": "momentum of the inner sgd optimiser",
    "inner_wd": "weight decay of the inner optimiser",
    "inner_eps_root": "epsilon inside the square root of inner Adam (keeps "
                      "its gradient finite)",
    "syn_aug": "distilled-image " + _AUG,
    "real_aug": "real-batch " + _AUG,
    "rotate_deg": "largest rotation of the rotate augmentation, degrees",
    # Outer optimisation.
    "outer_lr": "Adam learning rate of the distilled data",
    "outer_b1": "Adam beta1 of the outer optimiser",
    "outer_b2": "Adam beta2 of the outer optimiser",
    "decay_epochs": "outer epochs between outer-lr decays",
    "decay_factor": "outer-lr multiplier at each decay",
    "outer_epochs": "outer training length in passes over the real training "
                    "split (used when outer_steps is 0)",
    "outer_steps": "outer steps to run (> 0 overrides outer_epochs)",
    "RatConfig.outer_steps": "outer steps to run",
    "real_batch": "real training images per outer step",
    "real_chunk": "real-batch loss computed in chunks of this many images "
                  "(0: at once); same value, less memory",
    "remat": "rematerialisation policy of the unrolled inner steps (memory "
             "against compute)",
    "init_group": "initialisations per vmap call, groups run one after "
                  "another (0: all at once, e.g. on GPU/TPU)",
    "objective": "meta-objective: ce = classify the real data, poison = make "
                 "class poison_source predicted as poison_target",
    "poison_source": "class K whose images the attack makes classified as T",
    "poison_target": "class T the poisoned class K is classified as",
    "clip_coef": "EMA coefficient of the image-gradient norm; gradients are "
                 "clipped at 2x the EMA (0: no clipping)",
    "time_budget_s": "stop the outer loop after this many seconds of "
                     "wall-clock (0: no limit)",
    # Boost-DD.
    "boost_blocks": "Boost-DD blocks of ipc images per class, distilled one "
                    "after another (1: plain RaT-BPTT)",
    "boost_beta": "Boost-DD weight of the earlier blocks",
    "boost_mode": "Boost-DD reading: frozen = earlier blocks fixed with inner "
                  "loss weight beta, slow = they keep learning at beta x the "
                  "outer step",
    # Evaluation.
    "eval_inits": "held-out random initialisations the final set is "
                  "evaluated on",
    "eval_every": "outer steps between validation evaluations (0: never)",
    "RatConfig.eval_every": "outer steps between candidate checkpoints "
                            "evaluated on validation (0: only the end)",
    "val_inits": "initialisations of each validation evaluation",
    "select_on_val": "keep the set with the best validation accuracy",
    "eval_batch": "images per forward pass in evaluation (bounds memory)",
    "eval_parallel": "fresh evaluation networks one after another (map: "
                     "one network's memory, faster on CPU) or side by side "
                     "(vmap: GPU/TPU)",
    "eval_budgets": "training steps of the fresh evaluation networks tried, "
                    "comma-separated; the best on validation is reported",
    "eval_nets": "fresh networks trained for the test accuracy",
    "val_nets": "fresh networks of each validation evaluation",
    # Run control.
    "data_source": "where the data is read from: memory (the splits as "
                   "arrays), stream (the train and test splits read by index "
                   "from the prepared ArrayRecord files, for datasets larger "
                   "than memory; the same batches and results) or auto "
                   "(stream train splits of more than 4 GiB of pixels)",
    "seed": "random seed",
    "log_every": "outer steps between metric lines",
    "checkpoint_every": "outer steps between checkpoints",
    # Pretraining (distill_jax.run.train_pool).
    "num_nets": "networks to pretrain",
    "PretrainConfig.epochs": "training epochs per network (fractions allowed)",
    "batch_size": "training minibatch size",
    "PretrainConfig.lr": "Adam learning rate of pretraining",
    "chunk": "networks trained at once (vmapped)",
    "PretrainConfig.val_size": "training images held out (not trained on)",
    # Paper experiments (experiments.configs).
    "source": "source dataset of the pretrained pool: " + _DATASETS,
    "target": "target dataset distilled and evaluated on: " + _DATASETS,
    "pool": "existing pool.npz of pretrained networks (empty: pretrain one "
            "in the workdir)",
    "pool_size": "networks in the pretrained source pool",
    "pretrain_epochs": "training epochs of each pool network",
    "dd_time_budget_s": "wall-clock seconds of each DD run (0: no limit)",
    "dd_outer_steps": "outer steps of each DD run (0: the time budget alone)",
    "lr_grid": "baseline learning rates tried on validation, comma-separated "
               "numbers or 'learned' (the DD run's learned lrs)",
    "epoch_grid": "baseline epoch counts tried on validation, comma-separated",
    "random_sets": "random-real sets evaluated",
    "optimized_sets": "random-real sets scored on validation for the "
                      "optimized-real baseline",
    "kmeans_seeds": "k-means seeds of the k-means baseline",
    "full_target_epochs": "epochs of fine-tuning on the whole target split",
    "full_target_lr": "SGD learning rate of the full-target fine-tuning",
    "full_target_batch": "minibatch size of the full-target fine-tuning",
    # Table 3 (methods.adapt.AdaptAlexNetConfig).
    "AdaptAlexNetConfig.target": "target: voc (VOC 2007, the largest "
                                 "object's label), caltech_birds2011 (CUB-200)"
                                 " from TFDS, or fake (VOC-style test data)",
    "weights": "ImageNet AlexNet weights, .npz or flax .msgpack (experiments/"
               "convert_torchvision_alexnet.py writes one); empty: random "
               "initialisation (smoke tests only)",
    "check_set": ".npz of a small labelled ImageNet set (x (N, H, W, 3) "
                 "uint8, y labels) to check the weights on before adapting",
    "check_min_acc": "top-1 (%) the weights must reach on --check_set",
    "AdaptAlexNetConfig.image_size": "side the target images are resized to"
                                     " (224 for ImageNet weights)",
    "AdaptAlexNetConfig.dd_outer_steps": "outer steps of the DD run (0: 400 "
                                         "epochs of the train split, or the "
                                         "time budget)",
    "AdaptAlexNetConfig.random_sets": "random-real sets evaluated (one test "
                                      "number each)",
    "full_target_runs": "minibatch orders of the full-target fine-tuning",
    "fake_classes": "classes of --target=fake",
    "fake_train": "training images of --target=fake",
    "distilled": "distilled.npz to evaluate",
    "archs": "architectures to evaluate on, comma-separated from lenet, "
             "alexcifarnet, convnet, mlp",
    "retrain_lrs": "retraining learning rates tried on validation, "
                   "comma-separated",
    "retrain_epochs": "epochs of minibatch retraining on the distilled images",
    "retrain_batch": "minibatch size of the retraining",
    "dim": "dimension D of the regression problem",
    "num_data": "training points of the regression problem",
    "LinRegConfig.num_inits": "initial weights theta_0 ~ N(0, I) sampled",
    "LinRegConfig.lr": "learning rate of the one GD step",
    "fit_steps": "Adam steps of the numerical solve",
    "pool_train": "pool networks that train the attack",
    "PoisonConfig.pool_heldout": "held-out pool networks the attack is "
                                 "evaluated on",
    "PoisonConfig.num_inits": "pool networks per outer step",
    "steps_list": "Fig. 4a: GD step counts, comma-separated",
    "epochs_list": "Fig. 4b: epoch counts, comma-separated",
    "fig4b_steps": "Fig. 4b: GD steps of each point",
    "images_list": "Fig. 5: images per class, comma-separated",
    "point_budget_s": "wall-clock seconds of each point's DD run (0: none)",
    "point_outer_steps": "outer steps of each point's DD run (0: the time "
                         "budget alone)",
    "fixed_dir": "workdir of a fixed-init DD run (distilled.npz, "
                 "report.json)",
    "random_dir": "workdir of a random-init DD run (distilled.npz, "
                  "report.json); its learned lrs are the baselines' "
                  "'learned'",
    "extra_random_dirs": "more random-init DD workdirs, comma-separated, one "
                         "table row each",
    "top_frac": "fraction of the scored random-real sets kept as optimized "
                "real",
    "knn_ks": "k of the k-NN baselines, comma-separated",
    "val_limit": "class-stratified validation images used for the baselines' "
                 "selection (0: the whole split)",
    # Decoupled family (DecoupledConfig).
    "DecoupledConfig.method": "sre2l, cda, delt, gvbsm (recover), scdd "
                              "(recover against a self-supervised teacher), "
                              "rded "
                              "(teacher-scored real crops) or random_real",
    "gvbsm_pool": "G-VBSM: the pool of teachers, arch[:width] comma-separated "
                  "(archs convnet_bn, convnet_in, resnet_small, resnet18, mlp;"
                  " no width: --teacher_width), trained with the teacher "
                  "recipe, used round-robin, their ensemble relabels",
    "DecoupledConfig.ipc": "synthetic images per class",
    "DecoupledConfig.seed": "random seed of every stage (teacher, recover, "
                            "students)",
    "teacher_arch": "teacher network (squeeze)",
    "teacher_width": "teacher channels (convnet width, ResNet base width)",
    "teacher_depth": "teacher convnet blocks",
    "teacher_epochs": "teacher training epochs (a less-trained teacher "
                      "recovers better)",
    "teacher_batch_size": "teacher minibatch size",
    "teacher_optimizer": "teacher optimiser",
    "teacher_norm": "teacher convnet normalisation",
    "teacher_momentum": "teacher SGD momentum",
    "teacher_schedule": "teacher lr schedule",
    "teacher_lr": "teacher learning rate (cosine to 0)",
    "teacher_weight_decay": "teacher weight decay",
    "teacher_pad_crop": "teacher RandomCrop padding in pixels (0: off; 4 for "
                        "CIFAR)",
    "teacher_flip": "teacher horizontal flips",
    "teacher_cache": "folder of cached teachers (default "
                     "~/.cache/distill_jax/teachers)",
    "recover_iterations": "recover iterations (global; DELT splits them into "
                          "rounds)",
    "recover_lr": "recover Adam learning rate (cosine to 0)",
    "recover_r_bn": "weight of the BN-statistics matching term",
    "recover_first_bn_multiplier": "extra weight of the first BN layer's term",
    "recover_batching": "recover batches: one image per class (cross_class, SRe2L) "
                "or whole classes (class_grouped, DELT); '' = the method's",
    "recover_batch_size": "class_grouped: images per recover batch, a multiple of "
                     "ipc (0: one class)",
    "recover_per_image_aug": "draw recover augmentation per image (default: once per "
                     "batch, as the released code)",
    "recover_crop": "random-resized crops in recover",
    "recover_min_scale": "smallest crop scale in recover (CDA's curriculum "
                         "ends here)",
    "recover_flip": "horizontal flips in recover",
    "recover_jitter": "recover roll jitter in pixels (0: off)",
    "recover_cda_mode": "CDA min-crop curriculum shape",
    "recover_milestone": "CDA curriculum length as a fraction of the iterations "
                 "(0: no curriculum)",
    "recover_init": "initial images ('' = the method's: noise, DELT "
                    "real_medium)",
    "recover_rounds": "DELT early-late rounds",
    "recover_ema_alpha": "G-VBSM: EMA coefficient of the matched statistics",
    "recover_drop_rate": "G-VBSM: probability of dropping a conv hook's loss",
    "recover_nuc_norm": "G-VBSM: weight of the Gram (data densification) term",
    "recover_tau": "G-VBSM: temperature of the Gram term's target",
    "recover_stats_batch": "G-VBSM: batch of the real conv-statistics pass",
    "jpeg_quality": "JPEG round trip of the output at this quality (0: off; "
                    "the SRe2L family saves JPEG)",
    "rded_factor": "RDED: crops stitched per side of one image",
    "rded_crops": "RDED: random crops scored per real image",
    "rded_candidates": "RDED: real images scored per class",
    "post_arch": "student network (post-train)",
    "post_width": "student channels",
    "post_depth": "student convnet blocks",
    "post_labels": "post-train labels: hard, online teacher, or "
                              "stored FKD-style logits",
    "post_teacher_bn": "teacher BatchNorm mode when labelling (train: batch "
                  "statistics, as SRe2L's CIFAR code)",
    "post_stored_topk": "stored labels: keep the top-k logits (0: all)",
    "post_stored_epochs": "stored labels: epochs of stored views (0: "
                          "post_epochs; later epochs cycle them)",
    "post_epochs": "post-train epochs",
    "post_batch_size": "post-train batch (0: DELT's table by IPC)",
    "post_optimizer": "post-train optimiser (AdamW: no decay on BN/bias)",
    "post_lr": "post-train learning rate",
    "post_weight_decay": "post-train weight decay",
    "post_schedule": "post-train lr schedule (half_cosine ends at 0.5x, "
                     "RDED/DELT)",
    "post_temperature": "KD temperature T",
    "post_t_squared": "multiply the KD loss by T^2",
    "post_loss": "soft-label loss: kl, or mse_ce (G-VBSM: MSE to the logits "
                 "+ ce_weight CE); '' = the method's",
    "post_ce_weight": "mse_ce: weight of the CE on the image's label",
    "post_mix": "post-train batch mixing",
    "post_crop": "post-train random-resized crops",
    "post_min_scale": "post-train smallest crop scale",
    "post_flip": "post-train horizontal flips",
    "post_students": "students per protocol (seeds), mean +- std",
    "post_eval_every": "post-train epochs between validation "
                                  "checks (the epoch is chosen on "
                                  "validation)",
    "post_select": "report the validation-selected epoch or the "
                              "last",
    "post_parallel": "students one after another (map, CPU) or "
                                "side by side (vmap)",
    "eval_hard": "also train hard-label students",
    "eval_random": "also score random real images of the same IPC",
    "eval_metrics": "HLR/IOR/LRS, bytes, diversity and TD",
    "cross_archs": "extra student architectures, comma-separated",
    "ssl_epochs": "SC-DD: SimCLR pre-training epochs of the self-supervised "
                  "teacher (the teacher's architecture)",
    "ssl_batch_size": "SC-DD: SimCLR batch (images; two views each)",
    "ssl_optimizer": "SC-DD: SimCLR optimiser (cosine schedule)",
    "ssl_lr": "SC-DD: SimCLR learning rate",
    "ssl_momentum": "SC-DD: SimCLR SGD momentum",
    "ssl_weight_decay": "SC-DD: SimCLR weight decay",
    "ssl_temperature": "SC-DD: NT-Xent temperature tau",
    "ssl_proj_hidden": "SC-DD: projection head hidden units (head dropped "
                       "after pre-training)",
    "ssl_proj_dim": "SC-DD: projection dimension of the NT-Xent loss",
    "ssl_min_scale": "SC-DD: smallest random-resized-crop scale of a view",
    "ssl_flip": "SC-DD: horizontal flips in the views",
    "ssl_color": "SC-DD: brightness/contrast jitter strength of the views "
                 "(0: off)",
    "ssl_train_limit": "SC-DD: random training images for SimCLR and the "
                       "probe (0: all)",
    "ssl_probe_epochs": "SC-DD: linear-probe epochs (frozen backbone, BN in "
                        "eval mode)",
    "ssl_probe_lr": "SC-DD: linear-probe AdamW learning rate (cosine)",
    "ssl_probe_batch_size": "SC-DD: linear-probe minibatch size",
}


def lookup(table: dict, cls_name: str, field: str):
  """The entry of `field` of class `cls_name` in HELP or CHOICES, or None."""
  return table.get(f"{cls_name}.{field}", table.get(field))
