"""Every experiment's named configurations (`--preset=NAME`), in one place.

Each experiment of `experiments/` has one `Presets` table here: its
presets, which one is the default, and what each is for (shown by
`--help` under `--preset`). A preset is a complete config; flags given on
the command line override its fields. From Python:

  from experiments import presets
  cfg = presets.DD_MNIST_RANDOM("default")            # a DistillConfig
  cfg = dataclasses.replace(cfg, num_inits=4)

Every table has a `smoke` preset: seconds of compute on tiny data, for the
tests. Measured results of the other presets are in each entry point's
docstring and in docs/results/.
"""

import dataclasses
from typing import Any, Callable

from distill_jax import config as config_lib
from distill_jax.methods import adapt
from distill_jax.methods import rat_bptt
from distill_jax.methods.decoupled import config as decoupled_config
from distill_jax.methods.decoupled import posttrain
from distill_jax.methods.decoupled import recover as recover_lib
from distill_jax.methods.decoupled import ssl as ssl_lib
from distill_jax.methods.decoupled import teacher as teacher_lib
from distill_jax.run import train_pool as pretrain
from experiments import configs

_replace = dataclasses.replace
DistillConfig = config_lib.DistillConfig
RatConfig = rat_bptt.RatConfig
DecoupledConfig = decoupled_config.DecoupledConfig
TeacherConfig = teacher_lib.TeacherConfig
RecoverConfig = recover_lib.RecoverConfig
PostTrainConfig = posttrain.PostTrainConfig


class Presets:
  """The named configurations of one experiment; call it to build one."""

  def __init__(self, default: str, /,
               **presets: tuple[str, Callable[[], Any]]):
    """Defines the table.

    Args:
      default: the preset used without --preset.
      **presets: name -> (what the preset is for, a function building its
        config).
    """
    if default not in presets:
      raise ValueError(f"default preset {default!r} is not defined.")
    self.default = default
    self._presets = presets

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self._presets)

  def purpose(self, name: str) -> str:
    return self._presets[name][0]

  def __call__(self, name: str | None = None):
    """The config of preset `name` (default: the table's default)."""
    name = self.default if name is None else name
    if name not in self._presets:
      raise ValueError(f"Unknown preset {name!r}; choose one of "
                       f"{list(self._presets)}.")
    return self._presets[name][1]()

  def help(self) -> str:
    """One line per preset, for the --preset flag."""
    return "; ".join(f"{n}: {p}" for n, (p, _) in self._presets.items())


# ---------------------------------------------------------------- DD.


def _dd_smoke(cfg: DistillConfig) -> DistillConfig:
  """A few outer steps of 2 x 2 inner steps on 200 training images."""
  return _replace(cfg, outer_steps=3, real_batch=32, steps=2, epochs=2,
                  train_limit=200, val_size=50, eval_inits=3, val_inits=2,
                  log_every=1)


def _dd_fashion() -> DistillConfig:
  return DistillConfig(dataset="fashion_mnist", arch="lenet",
                       init_mode="random", steps=10, epochs=3)


DD_FASHION_MNIST = Presets(
    "default",
    default=("10 minutes of wall-clock (compilation included), 200 held-out "
             "inits: the same-budget comparison with the reference code",
             lambda: _replace(_dd_fashion(), time_budget_s=600.0)),
    quick=("the README's main job: a fixed 1,000 outer steps (the same "
           "result on every machine; about 3 minutes of distillation on 2 "
           "CPU cores), 50 held-out inits",
           lambda: _replace(_dd_fashion(), outer_steps=1000,
                            time_budget_s=0.0, eval_inits=50)),
    paper=("the paper's schedule: 400 outer epochs", _dd_fashion),
    smoke=("seconds, for tests", lambda: _dd_smoke(_dd_fashion())),
)


def _dd_mnist_fixed() -> DistillConfig:
  return DistillConfig(dataset="mnist", arch="lenet", init_mode="fixed",
                       steps=10, epochs=3, eval_inits=1, val_inits=1)


DD_MNIST_FIXED = Presets(
    "default",
    default=("Table 1 fixed init on a CPU: 240 outer epochs, set selected "
             "on validation every 500 steps",
             lambda: _replace(_dd_mnist_fixed(), outer_epochs=240,
                              eval_every=500)),
    paper=("the paper's schedule: 400 outer epochs", _dd_mnist_fixed),
    smoke=("seconds, for tests (checkpoints every 2 steps)",
           lambda: _replace(_dd_smoke(_dd_mnist_fixed()), eval_inits=1,
                            val_inits=1, checkpoint_every=2)),
)


def _dd_mnist_random() -> DistillConfig:
  return DistillConfig(dataset="mnist", arch="lenet", init_mode="random",
                       steps=10, epochs=3)


DD_MNIST_RANDOM = Presets(
    "default",
    default=("Table 1 random init on a CPU: 4 inits per outer step, 50 outer "
             "epochs, lr halved every 15, set selected on validation every "
             "250 steps",
             lambda: _replace(_dd_mnist_random(), num_inits=4,
                              outer_epochs=50, decay_epochs=15,
                              val_inits=50, eval_every=250)),
    paper=("the paper's schedule: 400 outer epochs", _dd_mnist_random),
    smoke=("seconds, for tests", lambda: _dd_smoke(_dd_mnist_random())),
)


def _dd_cifar10() -> DistillConfig:
  return DistillConfig(dataset="cifar10", arch="alexcifarnet",
                       init_mode="random", steps=10, epochs=3, lr_init=0.001)


DD_CIFAR10 = Presets(
    "default",
    default=("a 30-minute CPU budget of wall-clock, real batch 256, 50 "
             "held-out inits",
             lambda: _replace(_dd_cifar10(), time_budget_s=1800.0,
                              real_batch=256, eval_inits=50)),
    paper=("the paper's schedule: 400 outer epochs (a GPU job)",
           _dd_cifar10),
    smoke=("seconds on the CIFAR-10 subset, for tests",
           lambda: _replace(_dd_cifar10(), dataset="cifar10_subset",
                            outer_steps=2, real_batch=16, steps=1, epochs=2,
                            train_limit=100, val_size=20, eval_inits=2,
                            val_inits=1, log_every=1)),
)


# ---------------------------------------------------------------- RaT-BPTT.


def rat_cpu(dataset: str, ipc: int, digits: bool = False) -> RatConfig:
  """The <= 1 hour CPU setting of the MNIST-type RaT-BPTT experiments.

  N=60 inner steps, random window M=20, SGD momentum 0.9 lr 0.01 (the
  PyTorch reference run of PERFORMANCE.md), real batch 200, 300 outer
  steps capped at 40 minutes, 8 eval nets at 300/600/1000 steps.
  `digits` augments by rotation only (flips change digits).
  """
  aug = "rotate" if digits else "flip_rotate"
  return RatConfig(
      dataset=dataset, ipc=ipc, batch_per_class=1 if ipc == 1 else 2,
      total_steps=60, window=20, truncation="random", inner_opt="sgd",
      inner_lr=0.01, inner_momentum=0.9, syn_aug=aug, real_aug=aug,
      real_batch=200, outer_lr=1e-3, outer_steps=300, time_budget_s=2400.0,
      eval_budgets=(300, 600, 1000), eval_nets=8, eval_every=100,
      val_nets=2, val_size=5000, log_every=10, checkpoint_every=50)


def rat_gpu(dataset: str, ipc: int, digits: bool = False) -> RatConfig:
  """The paper's CIFAR-10 recipe (METHODS.md B.8) on a 28x28 dataset."""
  aug = "rotate" if digits else "flip_rotate"
  return RatConfig(
      dataset=dataset, ipc=ipc, batch_per_class=ipc, total_steps=200,
      window=60, truncation="random", inner_opt="adam", inner_lr=1e-3,
      syn_aug=aug, real_aug=aug, real_batch=5000 if ipc > 1 else 1000,
      outer_steps=12000, eval_every=500, val_nets=4, checkpoint_every=500)


def rat_smoke(dataset: str, digits: bool = False) -> RatConfig:
  """Seconds of compute: an MLP, N=4, M=2, 2 outer steps (tests)."""
  aug = "rotate" if digits else "flip_rotate"
  return RatConfig(
      dataset=dataset, arch="mlp", mlp_hidden=(16,), ipc=1, total_steps=4,
      window=2, syn_aug=aug, real_aug=aug, real_batch=32, outer_steps=2,
      eval_budgets=(3, 6), eval_nets=2, val_nets=1, eval_every=1,
      train_limit=200, val_size=50, log_every=1, checkpoint_every=1)


def _rat_mnist_type(dataset: str, digits: bool) -> Presets:
  return Presets(
      "cpu_ipc1",
      cpu_ipc1=("1 image/class, the <= 1 hour CPU setting (N=60, M=20, "
                "SGD-m, 300 outer steps capped at 40 min)",
                lambda: rat_cpu(dataset, 1, digits)),
      cpu_ipc10=("10 images/class, 2 per class per inner step, otherwise "
                 "as cpu_ipc1", lambda: rat_cpu(dataset, 10, digits)),
      gpu_ipc1=("1 image/class, the paper's CIFAR-10 recipe (Adam, N=200, "
                "M=60, 12k outer steps): hours on a GPU",
                lambda: rat_gpu(dataset, 1, digits)),
      gpu_ipc10=("10 images/class, the paper's CIFAR-10 recipe: hours on a "
                 "GPU", lambda: rat_gpu(dataset, 10, digits)),
      smoke=("seconds, for tests", lambda: rat_smoke(dataset, digits)),
  )


RAT_BPTT_FASHION = _rat_mnist_type("fashion_mnist", digits=False)
RAT_BPTT_MNIST = _rat_mnist_type("mnist", digits=True)


def _rat_cifar_recipe(**kw) -> RatConfig:
  """ConvNet-3 w128 instance norm, Adam inner 1e-3, ZCA, flip/rotate."""
  fields = dict(
      arch="convnet", init="torch", width=128, depth=3, norm="instance",
      pooling="avg", image_init="unit_norm", inner_opt="adam", inner_lr=1e-3,
      syn_aug="flip_rotate", real_aug="flip_rotate", zca=True, zca_reg=0.1,
      eval_budgets=(300, 600, 1000, 3000), eval_nets=8, eval_every=500,
      val_nets=4, val_size=5000, outer_steps=12000, checkpoint_every=500,
      log_every=50, num_inits=1)
  fields.update(kw)
  return RatConfig(**fields)


RAT_BPTT_CIFAR = Presets(
    "c10_ipc10",
    c10_ipc10=("CIFAR-10 IPC 10: N=200, M=60 random, real batch 5000, hard "
               "labels (paper 69.4 +- 0.4%; GPU)",
               lambda: _rat_cifar_recipe(
                   dataset="cifar10", ipc=10, window=60, total_steps=200,
                   truncation="random", real_batch=5000, batch_per_class=10,
                   task_sampler_nc=10, outer_lr=1e-3, learn_labels=False)),
    c100_ipc10=("CIFAR-100 IPC 10: N=300, M=100 random, learned soft labels "
                "(paper 47.5 +- 0.2%; GPU; needs a cifar100 dataset)",
                lambda: _rat_cifar_recipe(
                    dataset="cifar100", ipc=10, window=100, total_steps=300,
                    truncation="random", real_batch=5000, batch_per_class=1,
                    task_sampler_nc=100, outer_lr=1e-3, learn_labels=True)),
    c100_ipc1=("CIFAR-100 IPC 1: window at the end (N=130, M=90), outer lr "
               "3e-4, learned labels (paper 35.3 +- 0.4%; GPU; needs a "
               "cifar100 dataset)",
               lambda: _rat_cifar_recipe(
                   dataset="cifar100", ipc=1, window=90, total_steps=130,
                   truncation="end", real_batch=5000, batch_per_class=1,
                   task_sampler_nc=100, outer_lr=3e-4, learn_labels=True)),
    smoke=("seconds on the CIFAR-10 subset with ZCA and learned labels, for "
           "tests",
           lambda: _replace(
               _rat_cifar_recipe(
                   dataset="cifar10_subset", ipc=2, window=2, total_steps=4,
                   real_batch=32, batch_per_class=1, task_sampler_nc=5,
                   learn_labels=True),
               width=8, depth=1, outer_steps=2, eval_budgets=(3, 6),
               eval_nets=2, val_nets=1, eval_every=1, train_limit=200,
               val_size=50, log_every=1, checkpoint_every=1)),
)

BOOST_DD = Presets(
    "cpu",
    cpu=("5 blocks of 1 image/class, beta 0.1, each block 150 outer steps "
         "of RaT-BPTT cpu_ipc1 capped at 10 minutes (about 75-90 min)",
         lambda: _replace(rat_cpu("fashion_mnist", 1), boost_blocks=5,
                          boost_beta=0.1, outer_steps=150,
                          time_budget_s=600.0, eval_every=50)),
    smoke=("seconds, 2 blocks, for tests",
           lambda: _replace(rat_smoke("fashion_mnist"), boost_blocks=2)),
)

INTERCORRELATION = Presets(
    "cpu",
    cpu=("Fashion-MNIST, each distillation 100 outer steps of cpu_ipc1 "
         "capped at 10 minutes, 4 eval nets (about 3-4 hours)",
         lambda: _replace(rat_cpu("fashion_mnist", 1), outer_steps=100,
                          time_budget_s=600.0, eval_every=50, eval_nets=4,
                          boost_beta=0.1)),
    cpu_w32=("as cpu at ConvNet width 32, a fixed 300 outer steps per "
             "distillation (about 1.5 hours on one core)",
             lambda: _replace(rat_cpu("fashion_mnist", 1), width=32,
                              outer_steps=300, time_budget_s=0.0,
                              eval_every=100, eval_nets=4, boost_beta=0.1)),
    smoke=("seconds, for tests", lambda: rat_smoke("fashion_mnist")),
)

RAT_COMPARE = Presets(
    "cpu_ipc1",
    cpu_ipc1=("Fashion-MNIST IPC 1: cpu_ipc1 with no time budget, so every "
              "method gets the same 300 outer steps",
              lambda: _replace(rat_cpu("fashion_mnist", 1),
                               time_budget_s=0.0)),
    cpu_ipc10=("Fashion-MNIST IPC 10: cpu_ipc10 with no time budget",
               lambda: _replace(rat_cpu("fashion_mnist", 10),
                                time_budget_s=0.0)),
    smoke=("seconds, for tests", lambda: rat_smoke("fashion_mnist")),
)


# ---------------------------------------------------------------- others.

PRETRAIN = Presets(
    "default",
    default=("10 networks, 1 epoch each, Adam 1e-3",
             pretrain.PretrainConfig),
    smoke=("seconds: 2 networks for 0.2 epoch, for tests",
           lambda: pretrain.PretrainConfig(num_nets=2, epochs=0.2, chunk=2,
                                           batch_size=16)),
)

ADAPTATION = Presets(
    "default",
    default=("USPS -> MNIST: 30 pretrained LeNets (10 held out), two DD "
             "runs of 15 minutes each (about 60-75 CPU minutes)",
             configs.AdaptConfig),
    smoke=("seconds, for tests",
           lambda: configs.AdaptConfig(
               arch="mlp", pool_size=3, pool_heldout=1, val_inits=1,
               pretrain_epochs=0.2, steps=2, epochs=2, real_batch=32,
               dd_time_budget_s=0.0, dd_outer_steps=2, lr_grid="learned,0.01",
               epoch_grid=(1,), random_sets=1, optimized_sets=2,
               kmeans_seeds=1, full_target_batch=16, val_size=50,
               train_limit=200, eval_batch=64)),
)

ADAPT_ALEXNET = Presets(
    "gpu",
    gpu=("the paper's Table 3 setting: ImageNet AlexNet (--weights) at 224 "
         "px, 1 image per class, 1 step x 3 epochs (one GPU)",
         adapt.AdaptAlexNetConfig),
    smoke=("seconds, for tests: random weights, width 4, 64 px fake "
           "VOC-style data, 4 classes",
           lambda: adapt.AdaptAlexNetConfig(
               target="fake", width=4, image_size=64, real_batch=16,
               dd_outer_steps=2, lr_grid="learned,0.01", epoch_grid=(1,),
               random_sets=2, optimized_sets=2, full_target_epochs=1,
               full_target_batch=8, val_size=8, eval_batch=32)),
)

CROSS_ARCH = Presets(
    "default",
    default=("lenet, convnet and mlp, 50 fresh inits each, retrain lr from "
             "0.001/0.01/0.1 on validation", configs.CrossArchConfig),
    smoke=("seconds, for tests",
           lambda: configs.CrossArchConfig(
               eval_inits=2, val_inits=1, retrain_lrs="0.01",
               retrain_epochs=2, eval_batch=64)),
)

LINEAR_REGRESSION = Presets(
    "default",
    default=("D=10, 200 data points, 256 initial weights (seconds)",
             configs.LinRegConfig),
    smoke=("D=3, for tests",
           lambda: configs.LinRegConfig(dim=3, num_data=20, num_inits=32,
                                        fit_steps=300)),
)

POISONING = Presets(
    "default",
    default=("MNIST LeNets: 100 attack / 50 held-out networks pretrained for "
             "0.5 epoch, a fixed 1,500 outer steps", configs.PoisonConfig),
    smoke=("seconds, for tests",
           lambda: configs.PoisonConfig(
               arch="mlp", pool_train=2, pool_heldout=2, pretrain_epochs=0.2,
               num_inits=2, real_batch=32, outer_steps=2, time_budget_s=0.0,
               val_size=50, train_limit=200, eval_batch=64)),
)

SENSITIVITY = Presets(
    "default",
    default=("MNIST LeNet, every point 120 s of wall-clock, 50 held-out "
             "inits", configs.SensitivityConfig),
    smoke=("seconds, for tests",
           lambda: configs.SensitivityConfig(
               arch="mlp", steps_list=(2,), epochs_list=(1,), fig4b_steps=2,
               images_list=(2,), point_budget_s=0.0, point_outer_steps=2,
               real_batch=32, eval_inits=2, val_size=50, train_limit=200,
               eval_batch=64)),
)

TABLE1 = Presets(
    "default",
    default=("the paper's protocol: 200 held-out inits, lr x epochs chosen "
             "on validation with 10 inits", configs.Table1Config),
    smoke=("seconds, for tests",
           lambda: configs.Table1Config(
               lr_grid="learned,0.01", epoch_grid=(1,), eval_inits=2,
               val_inits=1, random_sets=2, optimized_sets=2, kmeans_seeds=1,
               knn_ks=(1,), eval_batch=64)),
)


# ---------------------------------------------------- decoupled family.


# G-VBSM's pool on CPU (C.7): the run's BN ConvNet, an InstanceNorm
# ConvNet, a ResNet-8 and an MLP, all trained with the teacher recipe.
_CPU_POOL = "convnet_bn,convnet_in:32,resnet_small:16,mlp:128"


def _fashion(ipc: int) -> DecoupledConfig:
  """Fashion-MNIST on CPU (METHODS.md C.7 settings): BN ConvNet-3 w64
  teacher and students, 2 teacher epochs, 1000 recover iterations, 300
  post-train epochs with an online teacher and CutMix."""
  return DecoupledConfig(dataset="fashion_mnist", ipc=ipc, val_size=5000,
                         gvbsm_pool=_CPU_POOL)


def _cifar10(ipc: int) -> DecoupledConfig:
  """CIFAR-10 (the offline JPEG copy) on CPU: pad-crop + flip teacher."""
  return DecoupledConfig(
      dataset="cifar10", ipc=ipc, val_size=5000,
      teacher=TeacherConfig(epochs=5, pad_crop=4, flip=True),
      recover=RecoverConfig(flip=True, jitter=4),
      post=PostTrainConfig(flip=True),
      ssl=ssl_lib.SSLConfig(flip=True, min_scale=0.2), gvbsm_pool=_CPU_POOL)


def _gpu(dataset: str, ipc: int) -> DecoupledConfig:
  """The papers' CIFAR settings (C.8 item 7, C.5): ResNet-18 teacher 200
  epochs, ConvNetW128 students, 4000 recover iterations, 400 post-train
  epochs, T = 30, Mixup, 5 students side by side."""
  return DecoupledConfig(
      dataset=dataset, ipc=ipc, val_size=5000,
      teacher=TeacherConfig(arch="resnet18", epochs=200, batch_size=128,
                            lr=0.1, pad_crop=4, flip=True),
      recover=RecoverConfig(iterations=4000, jitter=4, flip=True),
      post=PostTrainConfig(width=128, epochs=400, temperature=30.0,
                           mix="mixup", flip=True, students=5,
                           parallel="vmap"))


def _gpu_gvbsm(dataset: str, ipc: int, *, image_size: int, pool: str,
               teacher: TeacherConfig, recover: RecoverConfig,
               post: PostTrainConfig) -> DecoupledConfig:
  return DecoupledConfig(method="gvbsm", dataset=dataset, ipc=ipc,
                         image_size=image_size, val_size=5000,
                         gvbsm_pool=pool, teacher=teacher, recover=recover,
                         post=post)


# G-VBSM's squeeze (C.4, C.8 item 5): SGD 0.05, wd 0, constant lr, batch
# 64, 5 epochs per teacher. Its CIFAR/Tiny pool is ResNet18, ConvNetW128
# (InstanceNorm), MobileNetV2, WRN-16-2, ShuffleNetV2; the architectures
# distill_jax has stand in for the last three.
_GVBSM_POOL = "resnet18,convnet_in:128,convnet_bn:128,resnet_small:32"


def _gvbsm_teacher(**kw) -> TeacherConfig:
  return TeacherConfig(**{**dict(arch="resnet18", epochs=5, batch_size=64,
                                 lr=0.05, weight_decay=0.0,
                                 schedule="constant", flip=True), **kw})


def _gvbsm_recover(**kw) -> RecoverConfig:
  """Batch 100 class-grouped, lr 0.05, 4000 iterations, r 0.01, nuc_norm 1,
  tau 4, alpha 0.8, drop 0.4, first hook x10, flip and roll (C.4)."""
  return RecoverConfig(**{**dict(
      iterations=4000, lr=0.05, r_bn=0.01, batch_size=100, crop=False,
      flip=True, jitter=32, ema_alpha=0.8, drop_rate=0.4, nuc_norm=1.0,
      tau=4.0, stats_batch=64), **kw})


def _gvbsm_post(**kw) -> PostTrainConfig:
  """MSE + gamma CE on the ensemble's logits, RRC (0.08, 1), flip, CutMix."""
  return PostTrainConfig(**{**dict(
      loss="mse_ce", min_scale=0.08, flip=True, mix="cutmix", students=5,
      parallel="vmap", eval_every=50), **kw})


def _gpu_gvbsm_cifar100() -> DecoupledConfig:
  return _gpu_gvbsm(
      "cifar100", 50, image_size=0, pool=_GVBSM_POOL,
      teacher=_gvbsm_teacher(pad_crop=4), recover=_gvbsm_recover(),
      post=_gvbsm_post(arch="convnet_in", width=128, epochs=1000,
                       batch_size=64, optimizer="sgd", lr=0.1,
                       weight_decay=5e-4, ce_weight=0.15))


def _gpu_gvbsm_tiny() -> DecoupledConfig:
  # The roll stands in for RandomCrop(64, pad 8) in recover.
  return _gpu_gvbsm(
      "tiny-imagenet-200/train", 50, image_size=64, pool=_GVBSM_POOL,
      teacher=_gvbsm_teacher(pad_crop=8), recover=_gvbsm_recover(jitter=8),
      post=_gvbsm_post(arch="resnet18", epochs=100, batch_size=100,
                       optimizer="sgd", lr=0.1, weight_decay=5e-4,
                       ce_weight=0.1, eval_every=10))


def _gpu_gvbsm_imagenet1k() -> DecoupledConfig:
  # Teachers trained here stand in for the torchvision weights G-VBSM loads
  # (resnet18, mobilenet_v2, efficientnet_b0, shufflenet_v2_x0_5).
  return _gpu_gvbsm(
      "imagenet2012", 10, image_size=224,
      pool="resnet18,resnet_small:64,convnet_in:128,convnet_bn:128",
      teacher=_gvbsm_teacher(epochs=90, batch_size=256, lr=0.1,
                             weight_decay=1e-4, schedule="cosine"),
      recover=_gvbsm_recover(batch_size=80, lr=0.1, crop=True,
                             min_scale=0.08, ema_alpha=0.4, drop_rate=0.0),
      post=_gvbsm_post(arch="resnet18", epochs=300, batch_size=1024,
                       optimizer="adamw", lr=1e-3, weight_decay=0.01,
                       ce_weight=0.1, eval_every=25))


def _decoupled_smoke() -> DecoupledConfig:
  return DecoupledConfig(
      dataset="mnist", ipc=2, val_size=100, train_limit=400,
      rded_candidates=20, gvbsm_pool="convnet_bn,convnet_in,mlp:16",
      teacher=TeacherConfig(width=8, depth=2, epochs=10, batch_size=32),
      recover=RecoverConfig(iterations=8, rounds=2),
      post=PostTrainConfig(width=8, depth=2, epochs=20, lr=0.01,
                           eval_every=10, students=2),
      ssl=ssl_lib.SSLConfig(epochs=2, batch_size=64, proj_hidden=16,
                            proj_dim=8, train_limit=0, probe_epochs=5,
                            probe_lr=0.05))


def _gpu_scdd(dataset: str, ipc: int) -> DecoupledConfig:
  """SC-DD's CIFAR-100 settings (METHODS.md C.3, C.8 item 8): SimCLR
  ResNet-18 200 epochs (SGD 0.06) + linear probe; recover lr 0.4, r_bn
  0.005, jitter 4, no crop/flip, 1000 iterations; relabel and post-train
  with the supervised ResNet-18 teacher (train-mode BN, Mixup, T = 30,
  AdamW 1e-3, batch 64, 200 epochs, ResNet-18 students)."""
  cfg = _gpu(dataset, ipc).replace_flat(method="scdd", recover_iterations=1000)
  return dataclasses.replace(
      cfg, ssl=ssl_lib.SSLConfig(epochs=200, batch_size=512, lr=0.06,
                                 weight_decay=5e-4, proj_hidden=512,
                                 proj_dim=128, min_scale=0.08, flip=True,
                                 color=0.4, train_limit=0, probe_epochs=100,
                                 probe_lr=0.01),
      post=dataclasses.replace(cfg.post, arch="resnet18", width=64,
                               epochs=200, batch_size=64, lr=1e-3,
                               schedule="half_cosine", teacher_bn="train"))


def _gpu_scdd_tiny() -> DecoupledConfig:
  """SC-DD's Tiny-ImageNet settings at 64 px (C.3 figure): SSL SGD 0.06 for
  200 epochs, recover Adam lr 0.6, relabel 500 epochs of SGD 0.2; the rest
  as its CIFAR-100 code (r_bn 0.005, no crop or flip; the roll 8 px at
  64 px), weight decay 5e-4 for the SGD students (not given)."""
  cfg = _gpu_scdd("tiny-imagenet-200/train", 50).replace_flat(
      image_size=64, recover_lr=0.6, recover_jitter=8, teacher_pad_crop=8)
  return dataclasses.replace(cfg, post=dataclasses.replace(
      cfg.post, epochs=500, optimizer="sgd", lr=0.2, weight_decay=5e-4,
      schedule="cosine", eval_every=25))


def _gpu_scdd_imagenet1k() -> DecoupledConfig:
  """SC-DD's ImageNet-1K settings at 224 px (C.3, C.8 item 8): SSL SGD 0.03
  for 200 epochs (ResNet-18 standing in for its ResNet-50 backbones);
  recover Adam lr 0.25 (the figure; its README command 0.1), r_bn 0.01,
  1000 iterations, batches of 50 classes (one image each), roll 32, RRC +
  flip; post-train with the supervised ResNet-18 (trained here, as
  G-VBSM's preset; SC-DD loads torchvision's): ResNet-18 students, 300
  epochs, CutMix, T = 20, AdamW 1e-3, cosine, batch 64."""
  cfg = _gpu_scdd("imagenet2012", 10).replace_flat(
      image_size=224, recover_lr=0.25, recover_r_bn=0.01, recover_jitter=32,
      recover_crop=True, recover_min_scale=0.08, recover_flip=True,
      recover_batch_size=50, ssl_lr=0.03)
  return dataclasses.replace(
      cfg, teacher=_gvbsm_teacher(epochs=90, batch_size=256, lr=0.1,
                                  weight_decay=1e-4, schedule="cosine"),
      post=dataclasses.replace(cfg.post, epochs=300, temperature=20.0,
                               mix="cutmix", schedule="cosine",
                               teacher_bn="eval", eval_every=25))


def _ipc50(cfg: DecoupledConfig) -> DecoupledConfig:
  """IPC 50 on CPU within 30 minutes: 800 recover iterations, and 120
  post-train epochs (600 steps of batch 100, the step count of IPC 10's 300
  epochs of batch 50) instead of 300; `--post_epochs=300` restores them."""
  return cfg.replace_flat(recover_iterations=800, post_epochs=120,
                          post_eval_every=20)


DECOUPLED = Presets(
    "fashion_ipc10",
    fashion_ipc1=("Fashion-MNIST, IPC 1, CPU", lambda: _fashion(1)),
    fashion_ipc10=("Fashion-MNIST, IPC 10, CPU", lambda: _fashion(10)),
    fashion_ipc50=("Fashion-MNIST, IPC 50, CPU",
                   lambda: _ipc50(_fashion(50))),
    cifar10_ipc1=("CIFAR-10 (offline JPEG copy), IPC 1, CPU",
                  lambda: _cifar10(1)),
    cifar10_ipc10=("CIFAR-10 (offline JPEG copy), IPC 10, CPU",
                   lambda: _cifar10(10)),
    cifar10_ipc50=("CIFAR-10 (offline JPEG copy), IPC 50, CPU",
                   lambda: _ipc50(_cifar10(50))),
    gpu_cifar10_ipc10=("the papers' CIFAR-10 IPC 10 settings, GPU hours",
                       lambda: _gpu("cifar10", 10)),
    gpu_cifar10_ipc50=("the papers' CIFAR-10 IPC 50 settings, GPU hours",
                       lambda: _gpu("cifar10", 50)),
    gpu_scdd_cifar100_ipc50=("SC-DD's CIFAR-100 IPC 50 settings (TFDS "
                             "cifar100, online), GPU hours",
                             lambda: _gpu_scdd("cifar100", 50)),
    gpu_scdd_tiny_ipc50=("SC-DD's Tiny-ImageNet IPC 50 settings at 64 px "
                         "(--dataset: the image folder), GPU hours",
                         _gpu_scdd_tiny),
    gpu_scdd_imagenet1k_ipc10=("SC-DD's ImageNet-1K IPC 10 settings at 224 "
                               "px, GPU days", _gpu_scdd_imagenet1k),
    gpu_gvbsm_cifar100_ipc50=(
        "G-VBSM's CIFAR-100 IPC 50 settings (pool of 4, ConvNetW128 IN "
        "students, 1000 epochs, MSE + 0.15 CE), GPU hours",
        _gpu_gvbsm_cifar100),
    gpu_gvbsm_tiny_ipc50=(
        "G-VBSM's Tiny-ImageNet IPC 50 settings at 64 px (ResNet-18 "
        "students, 100 epochs, MSE + 0.1 CE; --dataset: the image folder), "
        "GPU hours", _gpu_gvbsm_tiny),
    gpu_gvbsm_imagenet1k_ipc10=(
        "G-VBSM's ImageNet-1K IPC 10 settings at 224 px (alpha 0.4, no "
        "drop, ResNet-18 students, 300 epochs), GPU days",
        _gpu_gvbsm_imagenet1k),
    smoke=("seconds, for tests", _decoupled_smoke),
)
