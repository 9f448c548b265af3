"""Recover: optimise synthetic pixels against a frozen teacher.

One recover loop serves every method; a method is a set of loss terms
(`terms`), a schedule and an initialisation (`RecoverConfig.method`):

  * "sre2l": CE + r_bn * BN matching, N(0, 1) init, fixed crop scale
    (METHODS.md C.1);
  * "cda": SRe2L with CDA's scheduled minimum crop scale (C.2);
  * "delt": CDA from real images of median teacher confidence, with
    DELT's early-late rounds: image i of a class joins at round r_i and
    gets (R - r_i) x round_iterations iterations; each iteration forwards
    only the active images (C.5);
  * "gvbsm": a pool of teachers used round-robin, EMA statistics, conv
    statistics and the Gram term, class-grouped batches (C.4; its step is
    `gvbsm.GvbsmStep`, its terms `gvbsm_terms`).

The images (C, IPC, H, W, ch) are the learned pytree of the bilevel
library's outer step (`core.outer.make_step`): Adam (0.5, 0.9), cosine to 0
over the global iteration counter, pixels clipped per channel after each
step (`project`). Batches are fixed index sets over the images: one image of
every class per batch ("cross_class", SRe2L/CDA) or whole classes
("class_grouped", DELT/G-VBSM); every batch is an independent problem and
all of them run in one vmapped step (summing independent batch losses gives
each batch its own gradient; Adam is per element). Augmentation is drawn
once per batch (the released code) or per image.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill_jax.core import outer
from distill_jax.data import crops
from distill_jax.methods.decoupled import pixels
from distill_jax.methods.decoupled import schedules
from distill_jax.methods.decoupled import terms as terms_lib
from distill_jax.platform import mesh as sharding
from distill_jax.platform import xla_options

METHODS = ("sre2l", "cda", "delt", "gvbsm")
BATCHING = ("cross_class", "class_grouped")
INITS = ("noise", "real_medium", "real_random")


@dataclasses.dataclass(frozen=True)
class RecoverConfig:
  """A recover recipe (defaults: SRe2L with C.7's CPU suggestions)."""
  method: str = "sre2l"
  ipc: int = 10
  iterations: int = 1000
  lr: float = 0.25
  r_bn: float = 0.01
  first_bn_multiplier: float = 10.0
  batching: str = ""  # "": DELT class_grouped, the others cross_class.
  # Images per batch. class_grouped: a multiple of ipc (0: one class);
  # cross_class: one per class, classes in chunks of this many (0: all,
  # SRe2L's IN-1K code takes 100; SC-DD's 50).
  batch_size: int = 0
  per_image_aug: bool = False  # False: one draw per batch (released code).
  crop: bool = True
  min_scale: float = 0.25  # RRC scale floor (C.7 at 28 px; released 0.08).
  flip: bool = False
  jitter: int = 2  # roll by U{0..jitter} pixels (torch.roll); 0: off.
  cda_mode: str = "cosine"
  milestone: float = 1.0
  init: str = ""  # "" = the method's (noise; DELT: real_medium).
  rounds: int = 8  # DELT: R rounds of iterations / R iterations each.
  ema_alpha: float = 0.8  # G-VBSM: EMA coefficient of matched statistics.
  drop_rate: float = 0.4  # G-VBSM: probability of dropping a conv hook.
  nuc_norm: float = 1.0  # G-VBSM: weight of the Gram term.
  tau: float = 4.0  # G-VBSM: temperature of the Gram term's target.
  stats_batch: int = 256  # G-VBSM: batch of the real conv-statistics pass.
  seed: int = 0

  def __post_init__(self):
    for name, allowed in (("method", METHODS), ("batching", ("",) + BATCHING),
                          ("cda_mode", schedules.MODES)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name}={getattr(self, name)!r}; choose one of "
                         f"{allowed}.")
    if self.init and self.init not in INITS:
      raise ValueError(f"init={self.init!r}; choose one of {INITS}.")
    if min(self.ipc, self.iterations, self.rounds) < 1:
      raise ValueError("ipc, iterations and rounds must be >= 1.")
    if self.method == "delt" and self.iterations % self.rounds:
      raise ValueError(f"DELT: iterations={self.iterations} must be a "
                       f"multiple of rounds={self.rounds}.")
    if not 0 < self.min_scale <= 1 or not self.lr > 0:
      raise ValueError("min_scale must be in (0, 1] and lr > 0.")
    if not (0 <= self.ema_alpha < 1 and 0 <= self.drop_rate < 1
            and self.tau > 0 and self.nuc_norm >= 0 and self.stats_batch > 0):
      raise ValueError("G-VBSM: ema_alpha and drop_rate must be in [0, 1), "
                       "tau > 0, nuc_norm >= 0 and stats_batch >= 1.")

  @property
  def batch_mode(self) -> str:
    return self.batching or ("class_grouped" if self.method in (
        "delt", "gvbsm") else "cross_class")

  @property
  def init_mode(self) -> str:
    return self.init or ("real_medium" if self.method == "delt" else "noise")

  @property
  def round_iterations(self) -> int:
    return self.iterations // self.rounds if self.method == "delt" \
        else self.iterations


def batches(cfg: RecoverConfig, num_classes: int) -> np.ndarray:
  """(num_batches, B) flat indices (class c, slot j) -> c * IPC + j."""
  c, ipc = num_classes, cfg.ipc
  flat = np.arange(c * ipc).reshape(c, ipc)
  if cfg.batch_mode == "cross_class":  # slot j of every class, in chunks.
    size = cfg.batch_size or c
    if c % size:
      raise ValueError(f"cross_class batch_size={size} must divide the {c} "
                       "classes (one image of each class in a batch).")
    return flat.T.reshape(-1, size).copy()
  size = cfg.batch_size or ipc
  if size % ipc or (c * ipc) % size:
    raise ValueError(f"class_grouped batch_size={size} must be a multiple "
                     f"of ipc={ipc} that divides {c * ipc} images.")
  return flat.reshape(-1, size)


def active_batches(cfg: RecoverConfig, index: np.ndarray,
                   round_index: int) -> np.ndarray:
  """The images of each batch active in DELT round `round_index` (all of
  them for SRe2L/CDA); batches with no active image are left out."""
  if cfg.method != "delt":
    return index
  start = schedules.start_rounds(cfg.ipc, cfg.rounds)  # per within-class slot
  keep = [[i for i in b if start[i % cfg.ipc] <= round_index] for b in index]
  keep = [b for b in keep if b]
  if len({len(b) for b in keep}) != 1:
    raise ValueError("DELT needs batches of whole classes or one image per "
                     "class (batching='class_grouped' with a multiple of "
                     "ipc, or 'cross_class').")
  return np.asarray(keep, np.int32)


def min_scale_at(cfg: RecoverConfig, t):
  """The RRC scale floor at global iteration t."""
  if cfg.method in ("sre2l", "gvbsm"):
    return jnp.float32(cfg.min_scale)
  return schedules.min_crop(t, cfg.iterations, cfg.milestone, cfg.cda_mode,
                            floor=cfg.min_scale)


def optimizer(cfg: RecoverConfig) -> optax.GradientTransformation:
  """Adam (0.5, 0.9), lr cosine to 0 over all iterations (C.0)."""
  rate = optax.cosine_decay_schedule(cfg.lr, cfg.iterations)
  return optax.adam(rate, b1=0.5, b2=0.9, eps=1e-8)


def augment(cfg: RecoverConfig, key, xb, min_scale):
  """The recover augmentation of one batch (N, H, W, C): RRC, flip, roll."""
  h, w = xb.shape[1:3]
  p = crops.sample_augment(
      key, xb.shape[0], h, w, crop=cfg.crop, min_scale=min_scale,
      flip=cfg.flip, jitter=cfg.jitter or None, per_image=cfg.per_image_aug)
  return crops.apply_augment(xb, p)


def grad_fn(cfg: RecoverConfig, teacher, objective: terms_lib.Terms,
            image_shape, mesh=None):
  """`(learned, step, index, targets, key) -> (loss, grads, metrics)`.

  `index` (num_batches, B) selects the images of each batch, `targets`
  (C * IPC,) their classes. The teacher runs in eval mode (running
  statistics); its BN input moments are matched to its running ones.
  Each batch's images are sharded over the "data" axis of `mesh`.
  """
  del image_shape  # the augmentation reads it from the images.

  def batch_loss(x_flat, idx, tgt, key, min_scale):
    xa = augment(cfg, key, x_flat[idx], min_scale)
    xa = sharding.shard_leading(xa, mesh, sharding.DATA)
    logits, aux = teacher.model.apply(teacher.variables, xa, train=False)
    loss, values = objective(logits, terms_lib.with_inputs(aux, xa), tgt,
                             aux["running"])
    return loss, values

  def fn(learned, step, index, targets, key):
    x = learned["x"]
    x_flat = x.reshape(-1, *x.shape[2:])
    key = jax.random.fold_in(key, step)
    keys = jax.random.split(key, index.shape[0])
    ms = min_scale_at(cfg, step)

    def total(x_flat):
      losses, values = jax.vmap(
          lambda i, k: batch_loss(x_flat, i, targets[i], k, ms))(index, keys)
      return jnp.sum(losses), (jnp.mean(losses), values)
    (_, (mean_loss, values)), g = jax.value_and_grad(total, has_aux=True)(
        x_flat)
    metrics = {k: jnp.mean(v) for k, v in values.items()}
    metrics["min_scale"] = ms
    return mean_loss, {"x": g.reshape(x.shape)}, metrics
  return fn


class RoundStep:
  """The recover step of the current round (DELT: one compiled step per
  round, each forwarding only that round's active images; one for the
  others). Called with the outer state; `lower` is the first round's."""

  def __init__(self, cfg: RecoverConfig, teacher, objective, image_shape,
               num_classes: int, mean, std):
    self.cfg = cfg
    mesh = sharding.from_platform(sharding.DATA)
    step = outer.make_step(
        grad_fn(cfg, teacher, objective, image_shape, mesh), optimizer(cfg),
        project=lambda l: {**l, "x": pixels.clip_pixels(l["x"], mean, std)})
    self._step = xla_options.jit(step, donate_argnums=(0,))
    index = batches(cfg, num_classes)
    rounds = cfg.rounds if cfg.method == "delt" else 1
    self.index = [jnp.asarray(active_batches(cfg, index, r))
                  for r in range(rounds)]
    for ix in self.index:
      sharding.check_divisible(mesh, sharding.DATA, ix.shape[1],
                               "recover batch size")

  def round_of(self, step: int) -> int:
    return min(step // self.cfg.round_iterations, len(self.index) - 1)

  def args(self, step: int, targets, key):
    return (self.index[self.round_of(step)], targets, key)

  def __call__(self, state, targets, key):
    return self._step(state, *self.args(int(state.step), targets, key))

  def lower(self, state, targets, key):
    return self._step.lower(state, *self.args(int(state.step), targets, key))

  def image_iterations(self) -> int:
    """Image-iterations of the whole run (DELT's saving, C.5)."""
    total = 0
    for s in range(self.cfg.iterations):
      total += int(self.index[self.round_of(s)].size)
    return total


def init_images(cfg: RecoverConfig, key, num_classes: int, image_shape,
                x_train=None, y_train=None, scores=None):
  """(C, IPC, H, W, ch) initial images: N(0, 1), or real images (DELT's
  median teacher confidence per class, or random), already normalised."""
  mode = cfg.init_mode
  if mode == "noise":
    return jax.random.normal(key, (num_classes, cfg.ipc, *image_shape))
  rng = np.random.default_rng(cfg.seed)
  out = []
  for c in range(num_classes):
    idx = np.flatnonzero(np.asarray(y_train) == c)
    if len(idx) < cfg.ipc:
      raise ValueError(f"class {c} has {len(idx)} training images, fewer "
                       f"than ipc={cfg.ipc}.")
    if mode == "real_random":
      pick = rng.choice(idx, cfg.ipc, replace=False)
    else:
      order = schedules.init_order(np.asarray(scores)[idx], cfg.ipc,
                                   "medium")
      pick = idx[np.asarray(order)]
    out.append(np.asarray(x_train[pick], np.float32))
  return jnp.asarray(np.stack(out))
