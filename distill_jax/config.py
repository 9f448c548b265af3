"""The one configuration object of a distillation run.

Every hyper-parameter lives here, typed and frozen, so a config is hashable
and can be a static argument of `jax.jit`. Experiments build one with
`dataclasses.replace(DistillConfig(), ...)`; the library never reads flags.

Defaults follow the Dataset Distillation reference setting (Wang et al. 2018;
LeNet on MNIST, 10 steps x 3 epochs, one image per class per step, learned
per-step learning rates initialised at 0.02, outer Adam(0.01, 0.5, 0.999)
halved every 40 epochs, real batch 1024).
"""

import dataclasses
import json
from typing import Any

from distill_jax.data import registry as data_registry

ARCHS = ("lenet", "alexcifarnet", "convnet", "mlp", "alexnet")
INITS = ("xavier", "he", "lecun", "torch")
INIT_MODES = ("fixed", "random", "fixed_pretrained", "random_pretrained")
NORMS = ("instance", "batch", "none")
POOLINGS = ("avg", "max", "none")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
OBJECTIVES = ("ce", "poison")
IMAGE_INITS = ("noise", "real")
INNER_OPTS = ("gd", "sgd", "adam")
AUG_OPS = ("flip", "rotate")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """Hyper-parameters of a Dataset Distillation run.

  Attributes are grouped by concern; see the README for what each controls.
  """
  # Data.
  dataset: str = "mnist"
  val_size: int = 5000
  train_limit: int = 0  # 0 = the whole training split.
  image_size: int = 0  # 0 = native; otherwise resize (e.g. USPS -> 28).
  channels: int = 0  # 0 = native; 3 replicates grayscale (MNIST -> SVHN nets).
  # ZCA whitening fitted on the training split (as in RaT-BPTT's CIFAR
  # recipe); regularisation zca_reg x the mean eigenvalue.
  zca: bool = False
  zca_reg: float = 0.1

  # Model.
  arch: str = "lenet"
  init: str = "xavier"
  width: int = 128
  depth: int = 3
  norm: str = "instance"
  pooling: str = "avg"
  mlp_hidden: tuple[int, ...] = (256, 128)

  # Distilled data.
  steps: int = 10
  epochs: int = 3
  images_per_class_per_step: int = 1
  lr_init: float = 0.02
  learn_lr: bool = True
  # Initial images: "noise" = N(0, 1) in normalised space (the paper);
  # "real" = a random training image of the image's class.
  image_init: str = "noise"
  # Labels: fixed hard labels, or soft labels learned with the images
  # (initialised one-hot; label lr = outer_lr / label_lr_scale).
  learn_labels: bool = False
  label_lr_scale: float = 1.0

  # Inner problem (shared with RaT-BPTT): the inner optimiser's direction
  # ("gd" = plain gradient descent, the paper; "sgd" = momentum; "adam"),
  # scaled by the learned per-step lr, and augmentation of the distilled
  # ("syn_aug") and real ("real_aug") images: "none" or ops of
  # augment.OPS joined by "_", e.g. "flip_rotate".
  inner_opt: str = "gd"
  inner_momentum: float = 0.9
  inner_wd: float = 0.0
  syn_aug: str = "none"
  real_aug: str = "none"
  rotate_deg: float = 15.0

  # Distribution of initial weights p(theta_0).
  init_mode: str = "random"
  num_inits: int = 1  # sampled initialisations per outer step (vmapped).
  pretrained_pool: str = ""  # pool.npz written by experiments/pretrain.py.
  pool_heldout: int = 0  # last `pool_heldout` pool members kept for eval.

  # Outer optimisation.
  outer_lr: float = 0.01
  outer_b1: float = 0.5
  outer_b2: float = 0.999
  decay_epochs: int = 40
  decay_factor: float = 0.5
  outer_epochs: float = 400.0
  outer_steps: int = 0  # > 0 overrides outer_epochs.
  real_batch: int = 1024
  real_chunk: int = 16  # real-batch loss computed in chunks (0 = at once).
  remat: str = "full"
  # Initialisations per vmap call; groups run one after another. 0 = all
  # at once (one vmap; also used when the inits are sharded over devices).
  init_group: int = 4
  objective: str = "ce"
  poison_source: int = 0  # class K whose images should become class T.
  poison_target: int = 1

  # Evaluation.
  eval_inits: int = 200
  eval_every: int = 0  # outer steps between validation evals; 0 = never.
  val_inits: int = 10
  select_on_val: bool = True  # keep the set with the best validation acc.
  eval_batch: int = 500

  # Run control.
  # "memory", "stream" (real batches and the test split read by index from
  # the prepared ArrayRecord files, `data.stream`) or "auto".
  data_source: str = "memory"
  seed: int = 0
  log_every: int = 50
  checkpoint_every: int = 500
  time_budget_s: float = 0.0  # > 0 stops the outer loop after this long.

  @property
  def inner_steps(self) -> int:
    return self.steps * self.epochs

  def __post_init__(self):
    self.validate()  # a config that exists is a valid one.

  def validate(self) -> "DistillConfig":
    """Raises ValueError naming the bad field and its allowed values."""
    data_registry.check_name(self.dataset)  # a name or a path (no I/O).
    _choice("arch", self.arch, ARCHS)
    _choice("init", self.init, INITS)
    _choice("init_mode", self.init_mode, INIT_MODES)
    _choice("norm", self.norm, NORMS)
    _choice("pooling", self.pooling, POOLINGS)
    _choice("remat", self.remat, REMAT_POLICIES)
    _choice("objective", self.objective, OBJECTIVES)
    _choice("image_init", self.image_init, IMAGE_INITS)
    _choice("inner_opt", self.inner_opt, INNER_OPTS)
    _choice("data_source", self.data_source, data_registry.DATA_SOURCES)
    if self.zca and self.data_source == "stream":
      raise ValueError("zca=True fits the whitening on the whole train split"
                       " in memory; use data_source='memory' with it.")
    for name in ("syn_aug", "real_aug"):
      ops = getattr(self, name).split("_")
      if getattr(self, name) not in ("", "none") and any(
          o not in AUG_OPS for o in ops):
        raise ValueError(
            f"{name}={getattr(self, name)!r} is not supported; use 'none' or "
            f"operations from {list(AUG_OPS)} joined by '_', e.g. "
            "'flip_rotate'.")
    if self.inner_wd < 0 or not 0 <= self.inner_momentum < 1:
      raise ValueError(f"need inner_wd >= 0 (got {self.inner_wd}) and "
                       f"0 <= inner_momentum < 1 (got {self.inner_momentum}).")
    for name in ("steps", "epochs", "images_per_class_per_step", "num_inits",
                 "real_batch", "eval_inits", "log_every", "width", "depth"):
      if getattr(self, name) < 1:
        raise ValueError(
            f"{name}={getattr(self, name)} must be a positive integer.")
    for name in ("lr_init", "outer_lr", "decay_factor", "label_lr_scale",
                 "zca_reg"):
      if not getattr(self, name) > 0:
        raise ValueError(f"{name}={getattr(self, name)} must be > 0.")
    if self.outer_steps < 0 or self.outer_epochs < 0:
      raise ValueError("outer_steps and outer_epochs must be >= 0.")
    if self.init_mode.endswith("pretrained") and not self.pretrained_pool:
      raise ValueError(
          f"init_mode={self.init_mode} needs pretrained_pool=<pool.npz>; "
          "make one with `python -m experiments.pretrain`.")
    if self.init_group < 0:
      raise ValueError(f"init_group={self.init_group} must be 0 (all) or a "
                       "positive group size.")
    if self.real_chunk < 0:
      raise ValueError(f"real_chunk={self.real_chunk} must be >= 0.")
    if self.val_size < 0:
      raise ValueError(f"val_size={self.val_size} must be >= 0.")
    if self.channels not in (0, 1, 3):
      raise ValueError(f"channels={self.channels} must be 0 (native), 1 or 3.")
    return self

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ValueError(f"Unknown config fields {unknown}.")
    d = dict(d)
    if "mlp_hidden" in d:
      d["mlp_hidden"] = tuple(d["mlp_hidden"])
    if d.get("init_group") == -1:  # "by backend" in files of older versions.
      d["init_group"] = cls.init_group
    return cls(**d)


def _choice(name, value, allowed):
  if value not in allowed:
    raise ValueError(
        f"{name}={value!r} is not supported; choose one of {list(allowed)}.")
