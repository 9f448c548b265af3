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
serves every s. The outer step (Adam on the images, optional learned soft
labels clipped at 0, image-gradient clipping at 2x an EMA of its norm) is one
`jax.jit` with the state donated.

Evaluation (validation-selected, unlike the release, METHODS.md B.9): fresh
networks are trained with the inner optimiser on the distilled set for each
step budget in `eval_budgets`; the budget and the best distillation
checkpoint are chosen on a validation split held out from the training set,
and test accuracy is reported once, mean +- std over `eval_nets` networks.
"""

import dataclasses
import functools
import json
import os
import time
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill_jax import augment
from distill_jax import checkpoint
from distill_jax import config as config_lib
from distill_jax import data
from distill_jax import distilled
from distill_jax import evaluate
from distill_jax import inner
from distill_jax import inner_opt
from distill_jax import models
from distill_jax import progress as progress_lib
from distill_jax import storage
from distill_jax import train
from distill_jax import truncation
from distill_jax import unroll
from distill_jax import viz
from distill_jax import zca as zca_lib

IMAGE_INITS = ("unit_norm", "gaussian")
_RUN_CONTROL = ("log_every", "checkpoint_every", "time_budget_s", "eval_nets",
                "val_nets", "eval_batch", "eval_every")


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
  outer_lr: float = 1e-3
  outer_b1: float = 0.9
  outer_b2: float = 0.999
  clip_coef: float = 0.9  # 0 disables image-gradient clipping.
  outer_steps: int = 300
  time_budget_s: float = 0.0
  # Boost-DD (distill_jax.boost).
  boost_blocks: int = 1
  boost_beta: float = 0.1
  # Evaluation.
  eval_budgets: tuple[int, ...] = (300, 600, 1000, 3000)
  eval_nets: int = 8
  eval_every: int = 0  # outer steps between candidate checkpoints; 0: end.
  val_nets: int = 2
  eval_batch: int = 2000
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
           self.checkpoint_every, self.train_limit) < 0:
      raise ValueError("outer_steps, task_sampler_nc, eval_every, "
                       "checkpoint_every and train_limit must be >= 0.")
    return self

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


# ---------------------------------------------------------------- data.


class Prepared(NamedTuple):
  """Training arrays after the optional ZCA, shared by sub-runs."""
  ds: data.Dataset
  x_train: np.ndarray
  x_val: np.ndarray
  x_test: np.ndarray
  zca: zca_lib.Zca | None


def prepare(cfg: RatConfig, ds: data.Dataset | None = None,
            data_dir: str | None = None) -> Prepared:
  """Loads the dataset (unless given) and applies ZCA fitted on train."""
  if ds is None:
    ds = train.load_data(cfg, data_dir)
  if not len(ds.y_val):
    raise ValueError("The dataset has no validation split; set val_size > 0.")
  if cfg.real_batch > len(ds.y_train):
    raise ValueError(f"real_batch={cfg.real_batch} exceeds the "
                     f"{len(ds.y_train)} training images; lower --real_batch.")
  if cfg.task_sampler_nc > ds.num_classes:
    raise ValueError(f"task_sampler_nc={cfg.task_sampler_nc} exceeds the "
                     f"{ds.num_classes} classes of {ds.name}.")
  if not cfg.zca:
    return Prepared(ds, ds.x_train, ds.x_val, ds.x_test, None)
  z = zca_lib.fit(ds.x_train, cfg.zca_reg)
  return Prepared(ds, zca_lib.apply(z, ds.x_train), zca_lib.apply(z, ds.x_val),
                  zca_lib.apply(z, ds.x_test), z)


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
  """Distilled images (unit-norm or N(0,1)), soft labels, per-step lrs."""
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
  return inner.loss(model.apply, state.params, real_x, real_y)


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
              tx: optax.GradientTransformation):
  """The jitted outer step.

  `step(state, fixed, x_train, y_train, idx, key) -> (state, metrics)`:
  gathers the real batch `idx`, draws window starts (redrawn every
  `redraw_every` steps) and init keys from `key` and the step number,
  computes the meta-gradient, clips, and applies the optimiser. `state` is
  donated.
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
    loss, grads = meta_value_and_grad(
        state.learned, fixed, keys, starts, x_train[idx], y_train[idx],
        cfg=cfg, model=model, opt=opt)
    ema, gnorm = state.clip_ema, optax.tree.norm(grads["x"])
    if cfg.clip_coef > 0:
      gx, ema, gnorm = clip_by_ema(grads["x"], ema, cfg.clip_coef)
      grads = {**grads, "x": gx}
    updates, opt_state = tx.update(grads, state.opt_state, state.learned)
    learned = optax.apply_updates(state.learned, updates)
    if "y" in learned:
      learned = {**learned, "y": jnp.maximum(learned["y"], 0.0)}
    metrics = {"loss": loss, "grad_norm": gnorm, "clip_ema": ema,
               "start_mean": jnp.mean(starts.astype(jnp.float32))}
    return RatState(learned, opt_state, ema, state.step + 1), metrics

  return jax.jit(step, donate_argnums=(0,))


# ---------------------------------------------------------------- eval.


def make_eval_train(cfg: RatConfig, model: models.Model):
  """Jitted `(params0 batch, keys, support, learned) -> params per budget`.

  Trains each fresh network with the inner optimiser (same subsampling and
  augmentation) and returns parameters after every budget, stacked as
  (len(eval_budgets), nets, ...).
  """
  opt = build_opt(cfg)
  step = functools.partial(inner_step, cfg=cfg, apply_fn=model.apply, opt=opt)

  bounds = np.stack([np.array((0, *cfg.eval_budgets[:-1])),
                     np.array(cfg.eval_budgets)], 1).astype(np.int32)

  def train_one(params, key, sup, learned):
    def segment(state, lo_hi):  # one loop body for every budget.
      state = jax.lax.fori_loop(
          lo_hi[0], lo_hi[1],
          lambda t, s: step(s, t, key, sup, step_lr(cfg, learned, t)), state)
      return state, state.params
    state = InnerState(params, opt.tx.init(params))
    _, params_by_budget = jax.lax.scan(segment, state, jnp.asarray(bounds))
    return params_by_budget

  def run_all(params0, keys, sup, learned):
    out = jax.vmap(train_one, in_axes=(0, 0, None, None))(params0, keys, sup,
                                                          learned)
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), out)
  return jax.jit(run_all)


def evaluate_set(cfg: RatConfig, model: models.Model, eval_train, key,
                 sup: Support, learned: dict, nets: int, val, test=None):
  """Validation accuracy per budget; test accuracy at the chosen budget.

  Args:
    cfg: configuration (budgets).
    model: the network.
    eval_train: from `make_eval_train`.
    key: PRNG key of the fresh networks and their minibatches.
    sup: the distilled set to train on.
    learned: learned pytree (only its "raw_lr" is used, if any).
    nets: number of fresh networks.
    val: (x, y) validation split.
    test: (x, y) test split, or None.

  Returns:
    dict with "val" (budgets, nets) accuracies, "budget" chosen on
    validation, and "test" (nets,) at that budget if `test` is given.
  """
  k_init, k_train = jax.random.split(key)
  params0 = jax.vmap(model.init)(jax.random.split(k_init, nets))
  params = eval_train(params0, jax.random.split(k_train, nets), sup, learned)
  val_acc = np.stack([
      evaluate.accuracy(model.apply, jax.tree.map(lambda a, i=i: a[i], params),
                        val[0], val[1], batch=cfg.eval_batch)
      for i in range(len(cfg.eval_budgets))])
  best = int(np.argmax(val_acc.mean(1)))
  out = {"val": val_acc, "budget": cfg.eval_budgets[best]}
  if test is not None:
    out["test"] = evaluate.accuracy(
        model.apply, jax.tree.map(lambda a: a[best], params), test[0], test[1],
        batch=cfg.eval_batch)
  return out


# ---------------------------------------------------------------- run.


def _check_resume(path: str, cfg: RatConfig) -> None:
  with open(path) as f:
    old = json.load(f)
  new = json.loads(cfg.to_json())
  diff = sorted(k for k in new if k not in _RUN_CONTROL and
                old.get(k) != new[k])
  if diff:
    raise ValueError(
        f"--resume with a different configuration: {diff} differ from "
        f"{path}. Resume with the original flags or use a fresh --workdir.")


def distill(cfg: RatConfig, prep: Prepared, model: models.Model, workdir: str,
            *, fixed: Support | None = None, key: jax.Array | None = None,
            resume: bool = False, show_progress: bool = True,
            stop_at: int | None = None) -> dict:
  """The outer loop: distils one block, keeps the validation-best set.

  Args:
    cfg: configuration.
    prep: prepared data.
    model: the network.
    workdir: where metrics.jsonl and checkpoints/ go.
    fixed: earlier (Boost-DD) blocks trained on but not learned.
    key: PRNG key (default from cfg.seed).
    resume: continue from the newest checkpoint in `workdir`.
    show_progress: progress line on stderr.
    stop_at: stop with a checkpoint after this many steps (as an
      interruption would).

  Returns:
    {"learned": best learned pytree (numpy), "best_step", "best_val",
     "outer_steps", "train_time_s", "interrupted"}.
  """
  ds = prep.ds
  os.makedirs(workdir, exist_ok=True)
  key = jax.random.key(cfg.seed) if key is None else key
  k_data, k_steps, k_val = jax.random.split(key, 3)
  fixed = fixed or empty_fixed(ds.num_classes, ds.image_shape)
  tx = outer_optimizer(cfg)
  state = init_state(init_learned(k_data, cfg, ds.num_classes, ds.image_shape),
                     tx)
  outer_step = make_step(cfg, model, tx)
  eval_train = make_eval_train(cfg, model)
  host = functools.partial(jax.tree.map, np.asarray)
  ckpt = {"state": state, "best": host(state.learned),
          "best_val": np.float32(-1), "best_step": np.int32(0)}
  mngr = checkpoint.manager(workdir)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  start = 0
  if resume:
    restored, ckpt = checkpoint.restore_latest(mngr, ckpt)
    start = int(restored or 0)
    # pylint: disable-next=protected-access
    train.truncate_metrics(metrics_path, start)
  elif os.path.exists(metrics_path):
    os.remove(metrics_path)
  state = ckpt["state"]
  x_train, y_train = jnp.asarray(prep.x_train), jnp.asarray(ds.y_train)
  val = (jnp.asarray(prep.x_val), jnp.asarray(ds.y_val))
  n_train = len(ds.y_train)
  total = cfg.outer_steps
  bar = progress_lib.Progress(total, start, enabled=show_progress)
  t0, step = time.time(), start

  def candidate(rec):
    res = evaluate_set(cfg, model, eval_train, k_val,
                       support(state.learned, fixed), state.learned,
                       cfg.val_nets, val)
    score = float(res["val"].mean(1).max())
    rec["val_acc"] = round(100 * score, 3)
    if score > ckpt["best_val"]:
      ckpt.update(best=host(state.learned), best_val=np.float32(score),
                  best_step=np.int32(step))

  with open(metrics_path, "a") as log:
    while step < total:
      idx = train.batch_indices(cfg.seed, step, n_train, cfg.real_batch)
      state, m = outer_step(state, fixed, x_train, y_train, idx, k_steps)
      step += 1
      last = step == total or (cfg.time_budget_s and
                               time.time() - t0 > cfg.time_budget_s)
      is_eval = bool(last or (cfg.eval_every and step % cfg.eval_every == 0))
      if step % cfg.log_every == 0 or is_eval:
        rec = {"step": step, "time_s": round(time.time() - t0, 3),
               **{k: float(v) for k, v in m.items()}}
        if is_eval:
          candidate(rec)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        bar.update(step, loss=rec["loss"])
      ckpt["state"] = state
      interrupted = stop_at is not None and step >= stop_at and not last
      if interrupted or last or (cfg.checkpoint_every and
                                 step % cfg.checkpoint_every == 0):
        checkpoint.save(mngr, step, ckpt)
      if interrupted:
        return {"interrupted": True, "outer_steps": step}
      if last:
        break
  if total == 0 or step == start and ckpt["best_val"] < 0:
    ckpt.update(best=host(state.learned), best_step=np.int32(step))
  bar.update(total if step == total else step)
  return {"learned": ckpt["best"], "best_step": int(ckpt["best_step"]),
          "best_val": float(ckpt["best_val"]), "outer_steps": step,
          "train_time_s": round(time.time() - t0, 1), "interrupted": False}


def final_eval(cfg: RatConfig, prep: Prepared, model: models.Model, key,
               sup: Support, learned: dict) -> dict:
  """Validation-selected test accuracy over `eval_nets` fresh networks."""
  ds = prep.ds
  t = time.time()
  res = evaluate_set(cfg, model, make_eval_train(cfg, model), key, sup,
                     learned, cfg.eval_nets,
                     (jnp.asarray(prep.x_val), jnp.asarray(ds.y_val)),
                     (jnp.asarray(prep.x_test), jnp.asarray(ds.y_test)))
  return {
      "test_acc": evaluate.summary(res["test"]),
      "selected_budget": res["budget"],
      "val_acc_by_budget": {str(b): evaluate.summary(a) for b, a in
                            zip(cfg.eval_budgets, res["val"])},
      "eval_time_s": round(time.time() - t, 1),
  }


EVAL_PROTOCOL = (
    "fresh networks trained with the inner optimiser (same subsampling and "
    "augmentation) for each budget in eval_budgets; budget and distillation "
    "checkpoint chosen on the validation split; test accuracy at the chosen "
    "budget, mean +- std over eval_nets networks")


def save(cfg: RatConfig, prep: Prepared, workdir: str, x, y_soft,
         learned: dict, metadata: dict, block=None) -> str:
  """Writes distilled.npz (and image PNGs); x (C, P, ...), y_soft (C, P, C)."""
  ds = prep.ds
  c, p = x.shape[:2]
  flat_x = np.asarray(x, np.float32).reshape(1, c * p, *x.shape[2:])
  if "raw_lr" in learned:
    raw = np.asarray(learned["raw_lr"], np.float32)
  else:
    raw = np.full((cfg.total_steps,), distilled.inverse_softplus(
        cfg.inner_lr), np.float32)
  extra = {"class_index": np.repeat(np.arange(c), p).astype(np.int32)}
  if cfg.learn_labels:
    extra["soft_labels"] = np.asarray(y_soft, np.float32).reshape(c * p, c)
  if block is not None:
    extra["block"] = np.asarray(block, np.int32).reshape(c * p)
  if prep.zca is not None:
    extra.update(zca_lib.as_extra(prep.zca))
  path = os.path.join(workdir, "distilled.npz")
  storage.save_distilled(
      path, {"x": flat_x, "raw_lr": raw},
      np.repeat(np.arange(c), p).astype(np.int32)[None], steps=1,
      epochs=raw.size, mean=ds.mean, std=ds.std,
      metadata={**metadata, "config": dataclasses.asdict(cfg),
                "layout": "class-major: image i has class i // P",
                "raw_lr_meaning": f"inner {cfg.inner_opt} lr per step"},
      extra=extra)
  if c <= 20:
    vis, mean, std = np.asarray(x, np.float32), ds.mean, ds.std
    if prep.zca is not None:
      vis = zca_lib.unwhiten(prep.zca, vis.reshape(c * p, *x.shape[2:]))
      lo = vis.min(axis=(1, 2, 3), keepdims=True)
      hi = vis.max(axis=(1, 2, 3), keepdims=True)
      vis = ((vis - lo) / np.maximum(hi - lo, 1e-8)).reshape(x.shape)
      mean, std = (0.0,) * x.shape[-1], (1.0,) * x.shape[-1]
    viz.save_step_grids(os.path.join(workdir, "images"), vis.swapaxes(0, 1),
                        np.tile(np.arange(c), (p, 1)), np.full(p, cfg.inner_lr),
                        mean, std, ds.class_names)
  return path


def run(cfg: RatConfig, workdir: str, *, dataset: data.Dataset | None = None,
        data_dir: str | None = None, resume: bool = False,
        show_progress: bool = True, stop_at: int | None = None,
        prep: Prepared | None = None) -> dict:
  """Distils `cfg.dataset` with RaT-BPTT and writes the outputs to workdir.

  Outputs: config.json, metrics.jsonl, checkpoints/, distilled.npz (soft
  labels and ZCA in `extra/`), images/step_XX.png, report.json.

  Args:
    cfg: the configuration.
    workdir: output directory.
    dataset: an already loaded dataset (else loaded from cfg).
    data_dir: local dataset copies (see `data.load`).
    resume: continue from the newest checkpoint.
    show_progress: progress line on stderr.
    stop_at: stop after this many outer steps with a checkpoint.
    prep: already prepared data (overrides `dataset`).

  Returns:
    The report (also workdir/report.json).
  """
  cfg.validate()
  if cfg.boost_blocks != 1:
    raise ValueError(f"boost_blocks={cfg.boost_blocks}: use "
                     "distill_jax.boost.run (experiments/boost_dd.py).")
  os.makedirs(workdir, exist_ok=True)
  cfg_path = os.path.join(workdir, "config.json")
  if resume and os.path.exists(cfg_path):
    _check_resume(cfg_path, cfg)
  storage.atomic_write(cfg_path, lambda f: f.write(cfg.to_json()), mode="w")
  prep = prep or prepare(cfg, dataset, data_dir)
  ds = prep.ds
  model = models.build(cfg, ds.image_shape, ds.num_classes)
  k_distill, k_eval = jax.random.split(jax.random.key(cfg.seed))
  out = distill(cfg, prep, model, workdir, key=k_distill, resume=resume,
                show_progress=show_progress, stop_at=stop_at)
  if out["interrupted"]:
    return {"interrupted_at": out["outer_steps"]}
  learned = out["learned"]
  sup = support(learned, empty_fixed(ds.num_classes, ds.image_shape))
  result = final_eval(cfg, prep, model, k_eval, sup, learned)
  path = save(cfg, prep, workdir, learned["x"], sup.y, learned,
              {"dataset": ds.name, "arch": cfg.arch, "method": "rat_bptt",
               "num_classes": ds.num_classes, "source": ds.source,
               "image_shape": list(ds.image_shape),
               "outer_steps": out["outer_steps"],
               "best_step": out["best_step"]})
  report = {"dataset": ds.name, "method": "rat_bptt", "ipc": cfg.ipc,
            "arch": cfg.arch, "truncation": cfg.truncation,
            "total_steps": cfg.total_steps, "window": cfg.window_len,
            "outer_steps": out["outer_steps"], "best_step": out["best_step"],
            "best_candidate_val_acc": round(100 * out["best_val"], 3),
            "train_time_s": out["train_time_s"], **result,
            "labels": "learned soft" if cfg.learn_labels else "fixed hard",
            "zca": cfg.zca, "eval_protocol": EVAL_PROTOCOL,
            "distilled": path}
  storage.write_json(os.path.join(workdir, "report.json"), report)
  return report
