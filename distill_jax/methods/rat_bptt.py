"""RaT-BPTT: dataset distillation by randomly truncated BPTT.

Feng, Vedantam, Kempe, "Embarrassingly Simple Dataset Distillation" (ICLR
2024; arXiv 2311.07025); released code `fengyzpku/Simple_Dataset_Distillation`
(METHODS.md Part B). For every sampled initialisation j, with window start
s_j ~ U{0..N-M} (see `truncation`):

.. math::
  \\theta^{(j)}_{s_j} = \\mathrm{burn\\_in}_{s_j}(\\theta_0^{(j)},
  \\mathrm{sg}(\\tilde x)), \\quad
  \\theta^{(j)}_{s_j+M} = \\mathrm{unroll}_M(\\theta^{(j)}_{s_j}, \\tilde x),
  \\quad L = \\frac1J \\sum_j \\ell(\\mathrm{aug}(x_{real}),
  \\theta^{(j)}_{s_j+M})

Each inner step draws `batch_per_class` images of `task_sampler_nc` random
classes (without replacement within a class), augments them, and updates
network and inner-optimiser state (`inner_opt`); the burn-in is a
`lax.fori_loop` with a dynamic bound on stop-gradient data, the window a
`lax.scan` of static length M with `jax.checkpoint`-ed body, so one program
serves every s. The real-batch loss is computed in rematerialised chunks of
`real_chunk` examples (`inner.chunked_loss`: same value and gradient, faster
on XLA:CPU; docs/rat_bptt_perf.md). The outer step (Adam on the images,
optional learned soft labels clipped at 0, image-gradient clipping at 2x an
EMA of its norm) is one `jax.jit` with the state donated.

The evaluation protocol is in `rat_eval`, the host loop (checkpoints,
resume, outputs) in `rat_train`.
"""

import dataclasses
import functools
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill_jax import config as config_lib
from distill_jax import data
from distill_jax.data import registry as data_registry
from distill_jax.core import inner_opt
from distill_jax.core import meta
from distill_jax.core import outer
from distill_jax.core import schedule as schedule_lib
from distill_jax.core import truncation
from distill_jax.data import augment
from distill_jax.data import sources
from distill_jax.data import zca as zca_lib
from distill_jax.methods import dd_data as distilled
from distill_jax.nn import models
from distill_jax.platform import mesh as sharding
from distill_jax.platform import xla_options

IMAGE_INITS = ("unit_norm", "gaussian")
BOOST_MODES = ("frozen", "slow")


@dataclasses.dataclass(frozen=True)
class RatConfig:
  """Every hyper-parameter of a RaT-BPTT / Boost-DD run (defaults: B.1-B.9)."""
  # Data.
  dataset: str = "fashion_mnist"
  val_size: int = 5000  # held out from train: selects budget and checkpoint.
  train_limit: int = 0  # 0 = the whole training split.
  image_size: int = 0
  zca: bool = False
  zca_reg: float = 0.1  # x mean eigenvalue.
  # Model (ConvNet-3, width 128, instance norm, avg pool, PyTorch init).
  arch: str = "convnet"
  init: str = "torch"
  width: int = 128
  depth: int = 3
  norm: str = "instance"
  pooling: str = "avg"
  mlp_hidden: tuple[int, ...] = (256, 128)
  # Distilled data.
  ipc: int = 1
  image_init: str = "unit_norm"
  learn_labels: bool = False
  label_lr_scale: float = 1.0  # label lr = outer_lr / label_lr_scale.
  # Inner problem.
  total_steps: int = 20  # N
  window: int = 20  # M
  truncation: str = "random"
  redraw_every: int = 1  # outer steps between window redraws.
  batch_per_class: int = 1
  task_sampler_nc: int = 0  # classes per inner batch; 0 = all.
  inner_opt: str = "adam"
  inner_lr: float = 1e-3
  inner_momentum: float = 0.9
  inner_wd: float = 0.0
  inner_eps_root: float = 1e-16
  learn_lr: bool = False  # per-step learned lrs (inner_opt="gd" only).
  syn_aug: str = "flip_rotate"
  real_aug: str = "flip_rotate"
  rotate_deg: float = 15.0
  remat: str = "full"
  # Outer problem.
  num_inits: int = 1
  # Initialisations per vmap call; groups run one after another. 0 = all
  # at once (one vmap; also used when the inits are sharded over devices).
  init_group: int = 4
  real_batch: int = 200
  real_chunk: int = 16  # real-batch loss in remat chunks; 0: at once.
  outer_lr: float = 1e-3
  outer_b1: float = 0.9
  outer_b2: float = 0.999
  clip_coef: float = 0.9  # 0 disables image-gradient clipping.
  outer_steps: int = 300
  time_budget_s: float = 0.0
  # Boost-DD (distill_jax.run.train_boost).
  boost_blocks: int = 1
  boost_beta: float = 0.1
  # "frozen": earlier blocks fixed, inner loss weight beta; "slow": earlier
  # blocks keep being learned at beta x the outer step (run.train_boost).
  boost_mode: str = "frozen"
  # Evaluation.
  eval_budgets: tuple[int, ...] = (300, 600, 1000, 3000)
  eval_nets: int = 8
  eval_every: int = 0  # outer steps between candidate checkpoints; 0: end.
  val_nets: int = 2
  eval_batch: int = 32  # images per forward of one network (bounds memory).
  # Fresh networks one after another ("map": one network's activations, the
  # faster choice on XLA:CPU) or side by side ("vmap": GPU/TPU presets).
  eval_parallel: str = "map"
  # Run control.
  # Where real batches come from: "memory" (arrays), "stream" (read by
  # index from the prepared ArrayRecord files, `data.stream`) or "auto"
  # (stream large train splits); the same batches either way.
  data_source: str = "memory"
  seed: int = 0
  log_every: int = 10
  checkpoint_every: int = 100

  @property
  def window_len(self) -> int:
    return truncation.window_length(self.truncation, self.total_steps,
                                    self.window)

  def __post_init__(self):
    self.validate()  # a config that exists is a valid one.

  def validate(self) -> "RatConfig":
    """Raises ValueError naming the bad field and the fix."""
    data_registry.check_name(self.dataset)  # a name or a path (no I/O).
    for name, allowed in (("arch", config_lib.ARCHS),
                          ("init", config_lib.INITS),
                          ("norm", config_lib.NORMS),
                          ("pooling", config_lib.POOLINGS),
                          ("remat", config_lib.REMAT_POLICIES),
                          ("image_init", IMAGE_INITS),
                          ("inner_opt", inner_opt.NAMES)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name}={getattr(self, name)!r} is not supported; "
                         f"choose one of {list(allowed)}.")
    if self.data_source not in data.DATA_SOURCES:
      raise ValueError(f"data_source={self.data_source!r} is not supported; "
                       f"choose one of {list(data.DATA_SOURCES)}.")
    if self.zca and self.data_source == "stream":
      raise ValueError("zca=True fits the whitening on the whole train split"
                       " in memory; use data_source='memory' with it.")
    if self.boost_mode not in BOOST_MODES:
      raise ValueError(f"boost_mode={self.boost_mode!r} is not supported; "
                       f"choose one of {list(BOOST_MODES)}.")
    truncation.validate(self.truncation, self.total_steps, self.window,
                        self.redraw_every)
    augment.parse(self.syn_aug)
    augment.parse(self.real_aug)
    for name in ("ipc", "batch_per_class", "num_inits", "real_batch",
                 "eval_nets", "val_nets", "eval_batch", "log_every", "width",
                 "depth", "boost_blocks"):
      if getattr(self, name) < 1:
        raise ValueError(
            f"{name}={getattr(self, name)} must be a positive integer.")
    if self.batch_per_class > self.ipc * self.boost_blocks:
      raise ValueError(
          f"batch_per_class={self.batch_per_class} exceeds the "
          f"{self.ipc * self.boost_blocks} images per class; lower it.")
    for name in ("inner_lr", "outer_lr", "label_lr_scale", "zca_reg"):
      if not getattr(self, name) > 0:
        raise ValueError(f"{name}={getattr(self, name)} must be > 0.")
    if not 0 <= self.clip_coef < 1:
      raise ValueError(f"clip_coef={self.clip_coef} must be in [0, 1) "
                       "(0.9 in RaT-BPTT; 0 disables clipping).")
    if not 0 < self.boost_beta <= 1:
      raise ValueError(f"boost_beta={self.boost_beta} must be in (0, 1].")
    if self.learn_lr and self.inner_opt != "gd":
      raise ValueError("learn_lr=True needs inner_opt='gd' (learned per-step "
                       "lrs of plain gradient descent).")
    if (not self.eval_budgets or list(self.eval_budgets) != sorted(
        set(self.eval_budgets)) or self.eval_budgets[0] < 1):
      raise ValueError(f"eval_budgets={self.eval_budgets} must be positive "
                       "and strictly increasing, e.g. 300,600,1000,3000.")
    if self.init_group < 0:
      raise ValueError(f"init_group={self.init_group} must be 0 (all) or a "
                       "positive group size.")
    if self.eval_parallel not in ("map", "vmap"):
      raise ValueError(f"eval_parallel={self.eval_parallel!r}; choose 'map' "
                       "or 'vmap'.")
    if self.val_size < 1:
      raise ValueError(
          f"val_size={self.val_size}: RaT-BPTT selects the eval budget and "
          "the checkpoint on a validation split; set val_size > 0.")
    if min(self.outer_steps, self.task_sampler_nc, self.eval_every,
           self.checkpoint_every, self.train_limit, self.real_chunk) < 0:
      raise ValueError("outer_steps, task_sampler_nc, eval_every, "
                       "checkpoint_every, train_limit and real_chunk must be "
                       ">= 0.")
    return self

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


# ---------------------------------------------------------------- data.


class Prepared(NamedTuple):
  """Training arrays after the optional ZCA, shared by sub-runs.

  Without ZCA the splits are the stored uint8 pixels (a quarter of the
  memory of float32) and `norm` = (mean, std) normalises each batch where it
  is used (`data.decode`, inside the jitted programs); with ZCA they are
  whitened float32 and `norm` is None.
  """
  ds: data.Dataset
  x_train: np.ndarray
  x_val: np.ndarray
  x_test: np.ndarray
  zca: zca_lib.Zca | None
  norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None

  def floats(self, x: np.ndarray) -> np.ndarray:
    """One of the splits as normalised float32 (host baselines)."""
    return x if self.norm is None else data.decode(x, *self.norm)

  def split(self, name: str) -> sources.Split:
    """Split "train", "val" or "test": streamed (`data.stream`), or its
    arrays here, on the device (`sources.InMemory`)."""
    if self.ds.streams and name in self.ds.streams:
      return self.ds.streams[name]
    x = {"train": self.x_train, "val": self.x_val, "test": self.x_test}[name]
    return sources.InMemory(jax.device_put(x),
                            jnp.asarray(getattr(self.ds, f"y_{name}")))


def prepare(cfg: RatConfig, ds: data.Dataset | None = None,
            data_dir: str | None = None) -> Prepared:
  """Loads the dataset (unless given) and applies ZCA fitted on train."""
  if ds is None:
    ds = data.load_for(cfg, data_dir, pixels="float32" if (
        cfg.zca or cfg.image_size) else "uint8")
    data.clear_cache()  # ds holds its own copies; the raw cache is ~55 MB.
    xla_options.release_host_memory()
  if not len(ds.y_val):
    raise ValueError("The dataset has no validation split; set val_size > 0.")
  if cfg.real_batch > len(ds.y_train):
    raise ValueError(f"real_batch={cfg.real_batch} exceeds the "
                     f"{len(ds.y_train)} training images; lower --real_batch.")
  if cfg.task_sampler_nc > ds.num_classes:
    raise ValueError(f"task_sampler_nc={cfg.task_sampler_nc} exceeds the "
                     f"{ds.num_classes} classes of {ds.name}.")
  norm = (tuple(ds.mean), tuple(ds.std))
  if cfg.zca and ds.streams:
    raise ValueError(f"{ds.name}: the train split is streamed (data_source="
                     f"{cfg.data_source!r}) and zca=True needs it in memory; "
                     "use data_source='memory' or zca=False.")
  if not cfg.zca:
    return Prepared(ds, ds.x_train, ds.x_val, ds.x_test, None,
                    norm if ds.pixels == "uint8" else None)
  x_train, x_val, x_test = (data.decode(x, *norm) for x in (
      ds.x_train, ds.x_val, ds.x_test))
  z = zca_lib.fit(x_train, cfg.zca_reg)
  return Prepared(ds, zca_lib.apply(z, x_train), zca_lib.apply(z, x_val),
                  zca_lib.apply(z, x_test), z)


# ---------------------------------------------------------------- inner.

# The support set and its class-balanced schedule live in the core.
Support = schedule_lib.Support
empty_fixed = schedule_lib.empty_support
support = schedule_lib.support


def init_learned(key: jax.Array, cfg: RatConfig, num_classes: int,
                 image_shape) -> dict:
  """Distilled images (unit-norm or N(0,1)), soft labels, per-step lrs.

  One compiled program (eagerly, each operation would be an XLA:CPU
  executable of its own, which together keep tens of MiB)."""
  return _init_learned(key, cfg, int(num_classes), tuple(image_shape))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))  # also nests in jit.
def _init_learned(key, cfg, num_classes, image_shape):
  x = jax.random.normal(key, (num_classes, cfg.ipc, *image_shape))
  if cfg.image_init == "unit_norm":
    norm = jnp.sqrt(jnp.sum(x * x, axis=(2, 3, 4), keepdims=True))
    x = x / norm
  learned = {"x": x}
  if cfg.learn_labels:
    learned["y"] = jnp.broadcast_to(jnp.eye(num_classes)[:, None],
                                    (num_classes, cfg.ipc, num_classes))
  if cfg.learn_lr:
    learned["raw_lr"] = jnp.full((cfg.total_steps,), distilled.inverse_softplus(
        cfg.inner_lr), jnp.float32)
  return learned


def build_opt(cfg: RatConfig) -> inner_opt.InnerOpt:
  return inner_opt.build(cfg.inner_opt, cfg.inner_lr,
                         momentum=cfg.inner_momentum,
                         weight_decay=cfg.inner_wd,
                         eps_root=cfg.inner_eps_root)


def schedule(cfg: RatConfig) -> schedule_lib.ClassBalanced:
  """Class-balanced subsampling: batch_per_class of task_sampler_nc classes."""
  return schedule_lib.ClassBalanced(
      steps=cfg.total_steps, batch_per_class=cfg.batch_per_class,
      classes_per_step=cfg.task_sampler_nc, lr=cfg.inner_lr)


def problem(cfg: RatConfig, model: models.Model) -> meta.Problem:
  """The inner problem of RaT-BPTT: window M of N, inner optimiser, augs."""
  return meta.Problem(
      schedule=schedule(cfg), apply_fn=model.apply, init_fn=model.init,
      tx=build_opt(cfg).tx, window=cfg.window_len, syn_aug=cfg.syn_aug,
      real_aug=cfg.real_aug, rotate_deg=cfg.rotate_deg, remat=cfg.remat,
      real_chunk=cfg.real_chunk)


# ---------------------------------------------------------------- outer.


def outer_optimizer(cfg: RatConfig) -> optax.GradientTransformation:
  """Adam on images (and lrs); Adam at lr / label_lr_scale on labels."""
  return outer.optimizer(cfg.outer_lr, b1=cfg.outer_b1, b2=cfg.outer_b2,
                         eps=1e-8, label_lr_scale=cfg.label_lr_scale)


init_state = outer.init_state


def grad_fn(cfg: RatConfig, model: models.Model, norm=None, mesh=None,
            group: int = 0):
  """`(learned, step, fixed, x_train, y_train, idx, key) -> (loss, grads,
  metrics)`: the RaT-BPTT meta-gradient of one outer step."""
  prob = problem(cfg, model)

  def fn(learned, step, fixed, x_train, y_train, idx, key):
    k_window, k_inits = jax.random.split(key)
    starts = truncation.sample_starts(
        truncation.window_key(k_window, step, cfg.redraw_every),
        cfg.num_inits, mode=cfg.truncation, total=cfg.total_steps,
        window=cfg.window)
    keys = jax.random.split(jax.random.fold_in(k_inits, step),
                            cfg.num_inits)
    real_x = x_train[idx]
    if real_x.dtype == jnp.uint8:
      if norm is None:
        raise ValueError("x_train holds uint8 pixels: pass norm=(mean, std) "
                         "(rat_bptt.Prepared.norm) to make_step.")
      real_x = data.decode(real_x, *norm)
    keys, starts = sharding.shard_leading((keys, starts), mesh)
    loss, grads = meta.value_and_grad(
        learned, fixed, None, keys, starts, real_x, y_train[idx],
        problem=prob, init_group=group)
    return loss, grads, {"start_mean": jnp.mean(starts.astype(jnp.float32))}
  return fn


def make_step(cfg: RatConfig, model: models.Model,
              tx: optax.GradientTransformation, x_scale=None, norm=None):
  """The jitted outer step.

  `step(state, fixed, x_train, y_train, idx, key) -> (state, metrics)`:
  gathers the real batch `idx`, draws window starts (redrawn every
  `redraw_every` steps) and init keys from `key` and the step number,
  computes the meta-gradient (initialisations vmapped `init_group` at a
  time and sharded over devices when their count divides `num_inits`),
  clips, and applies the optimiser. `state` is donated. `x_scale` (C, P), if
  given, multiplies each learned image's (and soft label's) optimiser update
  (Boost-DD "slow": beta on earlier blocks). `norm` = (mean, std) normalises
  a uint8 `x_train` batch after the gather (`Prepared.norm`).
  """
  mesh = sharding.from_platform(sharding.INITS)
  sharding.check_divisible(mesh, sharding.INITS, cfg.num_inits, "num_inits")
  group = meta.resolve_group(cfg.num_inits, cfg.init_group, mesh is not None)
  step = outer.make_step(grad_fn(cfg, model, norm, mesh, group), tx,
                         clip_coef=cfg.clip_coef, x_scale=x_scale)
  return xla_options.jit(step, donate_argnums=(0,))
