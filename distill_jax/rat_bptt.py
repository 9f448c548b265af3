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
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill_jax import augment
from distill_jax import config as config_lib
from distill_jax import data
from distill_jax import distilled
from distill_jax import inner
from distill_jax import inner_opt
from distill_jax import models
from distill_jax import train
from distill_jax import truncation
from distill_jax import unroll
from distill_jax import xla_options
from distill_jax import zca as zca_lib

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
  real_batch: int = 200
  real_chunk: int = 16  # real-batch loss in remat chunks; 0: at once.
  outer_lr: float = 1e-3
  outer_b1: float = 0.9
  outer_b2: float = 0.999
  clip_coef: float = 0.9  # 0 disables image-gradient clipping.
  outer_steps: int = 300
  time_budget_s: float = 0.0
  # Boost-DD (distill_jax.boost).
  boost_blocks: int = 1
  boost_beta: float = 0.1
  # "frozen": earlier blocks fixed, inner loss weight beta; "slow": earlier
  # blocks keep being learned at beta x the outer step (distill_jax.boost).
  boost_mode: str = "frozen"
  # Evaluation.
  eval_budgets: tuple[int, ...] = (300, 600, 1000, 3000)
  eval_nets: int = 8
  eval_every: int = 0  # outer steps between candidate checkpoints; 0: end.
  val_nets: int = 2
  eval_batch: int = 32  # images per forward of one network (bounds memory).
  # Run control.
  seed: int = 0
  log_every: int = 10
  checkpoint_every: int = 100

  @property
  def window_len(self) -> int:
    return truncation.window_length(self.truncation, self.total_steps,
                                    self.window)

  def validate(self) -> "RatConfig":
    """Raises ValueError naming the bad field and the fix."""
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


def prepare(cfg: RatConfig, ds: data.Dataset | None = None,
            data_dir: str | None = None) -> Prepared:
  """Loads the dataset (unless given) and applies ZCA fitted on train."""
  if ds is None:
    ds = train.load_data(cfg, data_dir, pixels="float32" if (
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
  if not cfg.zca:
    return Prepared(ds, ds.x_train, ds.x_val, ds.x_test, None,
                    norm if ds.pixels == "uint8" else None)
  x_train, x_val, x_test = (data.decode(x, *norm) for x in (
      ds.x_train, ds.x_val, ds.x_test))
  z = zca_lib.fit(x_train, cfg.zca_reg)
  return Prepared(ds, zca_lib.apply(z, x_train), zca_lib.apply(z, x_val),
                  zca_lib.apply(z, x_test), z)


# ---------------------------------------------------------------- inner.


@flax.struct.dataclass
class InnerState:
  """Network parameters and inner-optimiser state."""
  params: Any
  opt_state: Any


class Support(NamedTuple):
  """Images trained on in the inner loop, grouped by class.

  x: (C, P, H, W, ch); y: (C, P, C) targets (one-hot or soft); w: (C, P)
  per-example loss weights (1, or Boost-DD's beta for earlier blocks).
  """
  x: jax.Array
  y: jax.Array
  w: jax.Array


def empty_fixed(num_classes: int, image_shape) -> Support:
  """No fixed images (plain RaT-BPTT)."""
  return Support(jnp.zeros((num_classes, 0, *image_shape), jnp.float32),
                 jnp.zeros((num_classes, 0, num_classes), jnp.float32),
                 jnp.zeros((num_classes, 0), jnp.float32))


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


def support(learned: dict, fixed: Support) -> Support:
  """Fixed blocks followed by the learned block, along the per-class axis."""
  c, p = learned["x"].shape[:2]
  y = learned.get("y")
  if y is None:
    y = jnp.broadcast_to(jnp.eye(c)[:, None], (c, p, c))
  return Support(jnp.concatenate([fixed.x, learned["x"]], axis=1),
                 jnp.concatenate([fixed.y, y], axis=1),
                 jnp.concatenate([fixed.w, jnp.ones((c, p))], axis=1))


def subsample(key: jax.Array, num_classes: int, per_class: int, nc: int,
              bpc: int):
  """Indices (class, member), each (nc, bpc): nc random classes, bpc
  members of each without replacement."""
  k_c, k_p = jax.random.split(key)
  classes = jnp.arange(num_classes)
  if nc < num_classes:
    classes = jnp.argsort(jax.random.uniform(k_c, (num_classes,)))[:nc]
  members = jnp.argsort(jax.random.uniform(k_p, (nc, per_class)), axis=1)
  return (jnp.broadcast_to(classes[:, None], (nc, bpc)), members[:, :bpc])


def step_lr(cfg: RatConfig, learned: dict, t):
  """Learning rate of inner step t (learned lrs repeat their last entry)."""
  if "raw_lr" not in learned:
    return cfg.inner_lr
  lrs = jax.nn.softplus(learned["raw_lr"])
  return lrs[jnp.minimum(t, lrs.shape[0] - 1)]


def build_opt(cfg: RatConfig) -> inner_opt.InnerOpt:
  return inner_opt.build(cfg.inner_opt, cfg.inner_lr,
                         momentum=cfg.inner_momentum,
                         weight_decay=cfg.inner_wd,
                         eps_root=cfg.inner_eps_root)


def inner_step(state: InnerState, t, key: jax.Array, sup: Support, lr, *,
               cfg: RatConfig, apply_fn, opt: inner_opt.InnerOpt):
  """One inner step at time t on a fresh augmented minibatch of `sup`."""
  c, p = sup.x.shape[:2]
  k_sub, k_aug = jax.random.split(jax.random.fold_in(key, t))
  ci, pi = subsample(k_sub, c, p, cfg.task_sampler_nc or c,
                     cfg.batch_per_class)
  x = sup.x[ci, pi].reshape(-1, *sup.x.shape[2:])
  y = sup.y[ci, pi].reshape(-1, c)
  w = sup.w[ci, pi].reshape(-1)
  x = augment.apply(k_aug, x, cfg.syn_aug, max_deg=cfg.rotate_deg)

  def loss(params):
    ce = optax.softmax_cross_entropy(apply_fn(params, x), y)
    return jnp.mean(w * ce)
  grads = jax.grad(loss)(state.params)
  params, opt_state = inner_opt.apply(opt.tx, grads, state.opt_state,
                                      state.params, lr)
  return InnerState(params, opt_state)


def meta_loss(learned: dict, fixed: Support, key: jax.Array, start,
              real_x: jax.Array, real_y: jax.Array, *, cfg: RatConfig,
              model: models.Model, opt: inner_opt.InnerOpt):
  """Meta-loss of one initialisation: burn-in s steps, window M, real loss."""
  k_init, k_steps, k_real = jax.random.split(key, 3)
  params = model.init(k_init)
  state = InnerState(params, opt.tx.init(params))
  step = functools.partial(inner_step, cfg=cfg, apply_fn=model.apply,
                           opt=opt)
  frozen = jax.lax.stop_gradient(learned)
  sup_frozen = support(frozen, fixed)
  state = jax.lax.fori_loop(
      0, start, lambda t, s: step(s, t, k_steps, sup_frozen,
                                  step_lr(cfg, frozen, t)), state)
  sup = support(learned, fixed)

  def body(s, i):
    t = start + i
    return step(s, t, k_steps, sup, step_lr(cfg, learned, t)), None
  state, _ = jax.lax.scan(unroll.wrap(body, cfg.remat), state,
                          jnp.arange(cfg.window_len))
  real_x = augment.apply(k_real, real_x, cfg.real_aug, max_deg=cfg.rotate_deg)
  return inner.chunked_loss(model.apply, state.params, real_x, real_y,
                            cfg.real_chunk)


def meta_value_and_grad(learned, fixed, keys, starts, real_x, real_y, *,
                        cfg, model, opt):
  """Mean meta-loss over initialisations (vmapped) and its gradient."""
  per_init = functools.partial(meta_loss, cfg=cfg, model=model, opt=opt)

  def mean_loss(l):
    losses = jax.vmap(per_init, in_axes=(None, None, 0, 0, None, None))(
        l, fixed, keys, starts, real_x, real_y)
    return jnp.mean(losses)
  return jax.value_and_grad(mean_loss)(learned)


# ---------------------------------------------------------------- outer.


@flax.struct.dataclass
class RatState:
  """Outer state: learned data, optimiser state, clipping EMA, step.

  `clip_ema` is -1 until the first step sets it to the first norm.
  """
  learned: dict
  opt_state: Any
  clip_ema: jax.Array
  step: jax.Array


def outer_optimizer(cfg: RatConfig) -> optax.GradientTransformation:
  """Adam on images (and lrs); Adam at lr / label_lr_scale on labels."""
  def adam(lr):
    return optax.adam(lr, b1=cfg.outer_b1, b2=cfg.outer_b2, eps=1e-8)
  return optax.multi_transform(
      {"x": adam(cfg.outer_lr), "y": adam(cfg.outer_lr / cfg.label_lr_scale)},
      lambda learned: {k: ("y" if k == "y" else "x") for k in learned})


def init_state(learned: dict, tx: optax.GradientTransformation) -> RatState:
  return RatState(learned=learned, opt_state=tx.init(learned),
                  clip_ema=-jnp.ones((), jnp.float32),
                  step=jnp.zeros((), jnp.int32))


def clip_by_ema(grad: jax.Array, ema: jax.Array, coef: float):
  """RaT-BPTT image-gradient clipping (B.3).

  e <- n on the first call (ema < 0), else c e + (1 - c) n, with n the
  unclipped global norm; then the gradient is clipped to norm <= 2 e.

  Returns:
    (clipped gradient, new ema, n).
  """
  n = jnp.sqrt(jnp.sum(jnp.square(grad)))
  ema = jnp.where(ema < 0, n, coef * ema + (1.0 - coef) * n)
  scale = jnp.minimum(1.0, 2.0 * ema / (n + 1e-6))
  return grad * scale, ema, n


def make_step(cfg: RatConfig, model: models.Model,
              tx: optax.GradientTransformation, x_scale=None, norm=None):
  """The jitted outer step.

  `step(state, fixed, x_train, y_train, idx, key) -> (state, metrics)`:
  gathers the real batch `idx`, draws window starts (redrawn every
  `redraw_every` steps) and init keys from `key` and the step number,
  computes the meta-gradient, clips, and applies the optimiser. `state` is
  donated. `x_scale` (C, P), if given, multiplies each learned image's (and
  soft label's) optimiser update (Boost-DD "slow": beta on earlier blocks).
  `norm` = (mean, std) normalises a uint8 `x_train` batch after the gather
  (`Prepared.norm`).
  """
  opt = build_opt(cfg)

  def step(state: RatState, fixed: Support, x_train, y_train, idx, key):
    k_window, k_inits = jax.random.split(key)
    starts = truncation.sample_starts(
        truncation.window_key(k_window, state.step, cfg.redraw_every),
        cfg.num_inits, mode=cfg.truncation, total=cfg.total_steps,
        window=cfg.window)
    keys = jax.random.split(jax.random.fold_in(k_inits, state.step),
                            cfg.num_inits)
    real_x = x_train[idx]
    if real_x.dtype == jnp.uint8:
      if norm is None:
        raise ValueError("x_train holds uint8 pixels: pass norm=(mean, std) "
                         "(rat_bptt.Prepared.norm) to make_step.")
      real_x = data.decode(real_x, *norm)
    loss, grads = meta_value_and_grad(
        state.learned, fixed, keys, starts, real_x, y_train[idx],
        cfg=cfg, model=model, opt=opt)
    ema, gnorm = state.clip_ema, optax.tree.norm(grads["x"])
    if cfg.clip_coef > 0:
      gx, ema, gnorm = clip_by_ema(grads["x"], ema, cfg.clip_coef)
      grads = {**grads, "x": gx}
    updates, opt_state = tx.update(grads, state.opt_state, state.learned)
    if x_scale is not None:
      updates = {**updates, "x": updates["x"] * x_scale[:, :, None, None, None]}
      if "y" in updates:
        updates["y"] = updates["y"] * x_scale[:, :, None]
    learned = optax.apply_updates(state.learned, updates)
    if "y" in learned:
      learned = {**learned, "y": jnp.maximum(learned["y"], 0.0)}
    metrics = {"loss": loss, "grad_norm": gnorm, "clip_ema": ema,
               "start_mean": jnp.mean(starts.astype(jnp.float32))}
    return RatState(learned, opt_state, ema, state.step + 1), metrics

  return xla_options.jit(step, donate_argnums=(0,))

