"""Configs of the paper experiments built on the distillation runs.

One frozen dataclass per experiment of `experiments/` that is not a single
`DistillConfig` / `RatConfig` run: Table 1, adaptation (Table 2),
poisoning, the sensitivity sweeps, cross-architecture evaluation and the
linear-regression demo. Each field becomes a flag of the same name
(`experiments.common.define_flags`; meanings in `experiments.flag_help`);
`validate` raises ValueError naming the bad field and the fix. Their named
configurations are in `experiments.presets`.
"""

import dataclasses

from distill_jax import config as config_lib
from distill_jax.eval import grid as grid_lib



@dataclasses.dataclass(frozen=True)
class AdaptConfig:
  """Flags of the domain-adaptation experiment (Table 2)."""
  source: str = "usps"
  target: str = "mnist"
  image_size: int = 28
  channels: int = 0  # 0 = native; 3 replicates grayscale (for SVHN).
  arch: str = "lenet"
  pool: str = ""  # existing source pool.npz; empty = pretrain one here.
  pool_size: int = 30
  pool_heldout: int = 10
  pretrain_epochs: float = 5.0
  steps: int = 10
  epochs: int = 3
  lr_init: float = 0.02
  real_batch: int = 1024
  dd_time_budget_s: float = 900.0
  dd_outer_steps: int = 0
  lr_grid: str = "learned,0.001,0.003,0.01,0.03,0.1,0.3"
  epoch_grid: tuple[int, ...] = (1, 3, 5)
  val_inits: int = 5
  random_sets: int = 5
  optimized_sets: int = 20
  kmeans_seeds: int = 3
  full_target_epochs: int = 1
  full_target_lr: float = 0.01
  full_target_batch: int = 64
  val_size: int = 5000
  train_limit: int = 0
  eval_batch: int = 2000
  seed: int = 0

  def validate(self) -> "AdaptConfig":
    if self.source == self.target:
      raise ValueError("source and target must differ.")
    if self.arch not in config_lib.ARCHS:
      raise ValueError(f"arch={self.arch!r}; choose from {config_lib.ARCHS}.")
    if ("svhn_cropped" in (self.source, self.target) and
        (self.image_size != 32 or self.channels != 3)):
      raise ValueError(
          "SVHN images are 32x32 RGB: pass --image_size=32 --channels=3 so "
          "the other dataset is resized and replicated to match (SVHN comes "
          "from TFDS online; it has no local copy).")
    for name in ("pool_size", "pool_heldout", "val_inits", "steps",
                 "epochs", "full_target_epochs", "full_target_batch"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
    if self.pool_size - self.pool_heldout < self.val_inits:
      raise ValueError(
          f"pool_size={self.pool_size} - pool_heldout={self.pool_heldout} "
          f"leaves fewer training networks than val_inits={self.val_inits}.")
    if self.val_size < 1:
      raise ValueError("val_size must be >= 1 (selection on validation).")
    grid_lib.parse_lr_grid(self.lr_grid)
    return self


@dataclasses.dataclass(frozen=True)
class CrossArchConfig:
  """Flags of the cross-architecture evaluation."""
  distilled: str = ""
  archs: str = "lenet,convnet,mlp"
  eval_inits: int = 50
  val_inits: int = 5
  retrain_lrs: str = "0.001,0.01,0.1"
  retrain_epochs: int = 30
  retrain_batch: int = 10
  eval_batch: int = 100  # images per forward (x 10 networks): bounds memory
  seed: int = 1

  def arch_list(self) -> tuple[str, ...]:
    return tuple(a.strip() for a in self.archs.split(",") if a.strip())

  def lr_list(self) -> tuple[float, ...]:
    try:
      lrs = tuple(float(v) for v in self.retrain_lrs.split(",") if v.strip())
    except ValueError:
      raise ValueError(f"retrain_lrs={self.retrain_lrs!r} must be numbers, "
                       "e.g. 0.001,0.01") from None
    if not lrs or min(lrs) <= 0:
      raise ValueError(f"retrain_lrs={self.retrain_lrs!r} must be > 0.")
    return lrs

  def validate(self) -> "CrossArchConfig":
    if not self.distilled:
      raise ValueError("--distilled is required: a distilled.npz written by "
                       "one of the experiments (e.g. dd_mnist_random).")
    bad = [a for a in self.arch_list() if a not in config_lib.ARCHS]
    if bad or not self.arch_list():
      raise ValueError(f"archs={self.archs!r}: choose from "
                       f"{list(config_lib.ARCHS)}.")
    self.lr_list()
    for name in ("eval_inits", "val_inits", "retrain_epochs",
                 "retrain_batch"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
    return self


@dataclasses.dataclass(frozen=True)
class LinRegConfig:
  """Flags of the linear-regression demo (paper Sec. 3.3)."""
  dim: int = 10
  num_data: int = 200
  num_inits: int = 256
  lr: float = 1.0
  fit_steps: int = 3000
  seed: int = 0

  def validate(self) -> "LinRegConfig":
    for name in ("dim", "num_data", "num_inits", "fit_steps"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
    if self.num_data < self.dim:
      raise ValueError(f"num_data={self.num_data} < dim={self.dim}: d^T d "
                       "would be singular; use num_data >= dim.")
    if not self.lr > 0:
      raise ValueError(f"lr={self.lr} must be > 0.")
    return self


@dataclasses.dataclass(frozen=True)
class PoisonConfig:
  """Flags of the data-poisoning experiment (one GD step K -> T)."""
  dataset: str = "mnist"
  arch: str = "lenet"
  pool: str = ""  # existing pool.npz; empty = pretrain one here.
  pool_train: int = 100  # networks that train the attack (paper: 2000).
  pool_heldout: int = 50  # held-out networks for evaluation (paper: 200).
  pretrain_epochs: float = 0.5
  poison_source: int = 0
  poison_target: int = 1
  steps: int = 1
  epochs: int = 1
  images_per_class_per_step: int = 1
  lr_init: float = 0.02
  num_inits: int = 4
  real_batch: int = 1024
  outer_steps: int = 1500
  time_budget_s: float = 0.0
  outer_epochs: float = 50.0
  val_size: int = 5000
  train_limit: int = 0
  eval_batch: int = 2000
  seed: int = 0

  def validate(self) -> "PoisonConfig":
    for name in ("pool_train", "pool_heldout", "steps", "epochs",
                 "images_per_class_per_step", "num_inits", "real_batch"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
    if self.poison_source == self.poison_target:
      raise ValueError("poison_source and poison_target must differ.")
    if min(self.poison_source, self.poison_target) < 0:
      raise ValueError("poison_source/poison_target must be class indices.")
    return self


@dataclasses.dataclass(frozen=True)
class SensitivityConfig:
  """Flags of the sensitivity sweeps (Figures 4 and 5)."""
  dataset: str = "mnist"
  arch: str = "lenet"
  steps_list: tuple[int, ...] = (1, 2, 4, 10)
  epochs_list: tuple[int, ...] = (1, 2, 3, 5)
  fig4b_steps: int = 10
  images_list: tuple[int, ...] = (1, 2, 5, 10)
  point_budget_s: float = 120.0
  point_outer_steps: int = 0
  real_batch: int = 1024
  lr_init: float = 0.02
  eval_inits: int = 50
  val_size: int = 5000
  train_limit: int = 0
  eval_batch: int = 2000
  seed: int = 0

  def validate(self) -> "SensitivityConfig":
    for name in ("steps_list", "epochs_list", "images_list"):
      values = getattr(self, name)
      if not values or min(values) < 1:
        raise ValueError(f"{name}={values} needs positive integers.")
    if self.point_budget_s <= 0 and self.point_outer_steps <= 0:
      raise ValueError("Give each point a budget: point_budget_s > 0 or "
                       "point_outer_steps > 0.")
    for name in ("fig4b_steps", "eval_inits", "real_batch"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
    return self


@dataclasses.dataclass(frozen=True)
class Table1Config:
  """Flags of the Table 1 evaluation (DD runs against the baselines)."""
  fixed_dir: str = ""
  random_dir: str = ""
  # More random-init runs (comma-separated workdirs), each one more row,
  # e.g. a variant run with --image_init=real. The baselines' "learned" lrs
  # stay those of --random_dir.
  extra_random_dirs: str = ""
  lr_grid: str = "learned,0.001,0.003,0.01,0.03,0.1,0.3"
  epoch_grid: tuple[int, ...] = (1, 3, 5)
  eval_inits: int = 200
  val_inits: int = 10
  random_sets: int = 10
  optimized_sets: int = 50
  top_frac: float = 0.2
  kmeans_seeds: int = 3
  knn_ks: tuple[int, ...] = (1, 3)
  eval_batch: int = 2000
  # Use only val_limit validation images (a class-stratified random subset)
  # to choose the baselines' lr x epochs and the optimized-real sets (0: the
  # whole split). For AlexCifarNet on a CPU, where each validation pass is
  # the main cost.
  val_limit: int = 0
  seed: int = 1  # != the DD runs' seed: fresh held-out inits.

  def validate(self) -> "Table1Config":
    for name in ("fixed_dir", "random_dir"):
      if not getattr(self, name):
        raise ValueError(
            f"--{name} is required: the workdir of a DD run holding "
            "distilled.npz and report.json (experiments.dd_mnist_fixed / "
            "dd_mnist_random).")
    grid_lib.parse_lr_grid(self.lr_grid)
    if self.val_limit < 0:
      raise ValueError(f"val_limit={self.val_limit} must be >= 0 (0: the "
                       "whole validation split).")
    for name in ("eval_inits", "val_inits", "random_sets", "optimized_sets",
                 "kmeans_seeds", "eval_batch"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
    if not self.epoch_grid or min(self.epoch_grid) < 1:
      raise ValueError(f"epoch_grid={self.epoch_grid} needs positive ints.")
    if not self.knn_ks or min(self.knn_ks) < 1:
      raise ValueError(f"knn_ks={self.knn_ks} needs positive ints.")
    if not 0.0 < self.top_frac <= 1.0:
      raise ValueError(f"top_frac={self.top_frac} must be in (0, 1].")
    return self
