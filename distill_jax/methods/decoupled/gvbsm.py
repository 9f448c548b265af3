"""G-VBSM: a pool of heterogeneous teachers, round-robin recover, ensemble.

METHODS.md C.4, C.7 (CPU recipe), C.8 items 3 and 5:

  * the pool (`parse_pool`, `load_pool`): one teacher per entry of
    `--gvbsm_pool`, e.g. "convnet_bn,convnet_in,resnet_small:16,mlp:128"
    (arch, optionally ":width"; no width: the teacher recipe's), each
    trained and cached by `teacher.load_or_train` with the run's teacher
    recipe and that architecture;
  * the conv-statistics targets (`real_conv_stats`): one pass over the
    training images per teacher (the teacher recipe's pad-crop/flip
    augmentation, a fixed key), the mean over full batches of
    `stats_batch` images of each batch's `gvbsm_terms.hook_stats`;
  * the recover step (`GvbsmStep`): at global iteration t the teacher
    t mod n is used (round-robin, the counter is global); every teacher has
    one compiled step. The EMA statistics are explicit state in the learned
    pytree (learned["ema"][i]: teacher i's, one entry per recover batch,
    updated only when teacher i runs), replaced, not optimised. Batches run
    side by side, so unlike the released code (hooks never reset, batches
    one after another, C.6 item 8) the state does not leak from one batch
    into the next; each batch's EMA starts at its targets;
  * relabel: `relabel.Ensemble` of the pool (`ensemble`).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill_jax.core import outer
from distill_jax.methods.decoupled import gvbsm_terms
from distill_jax.methods.decoupled import pixels
from distill_jax.methods.decoupled import recover
from distill_jax.methods.decoupled import relabel
from distill_jax.methods.decoupled import teacher as teacher_lib
from distill_jax.platform import xla_options

POOL_ARCHS = ("convnet_bn", "convnet_in", "resnet_small", "resnet18", "mlp")


def parse_pool(pool: str) -> tuple[tuple[str, int | None], ...]:
  """"arch[:width],..." -> ((arch, width or None), ...)."""
  out = []
  for entry in [e.strip() for e in pool.split(",") if e.strip()]:
    arch, _, width = entry.partition(":")
    if arch not in POOL_ARCHS:
      raise ValueError(f"gvbsm_pool entry {entry!r}: choose architectures "
                       f"from {POOL_ARCHS}, e.g. convnet_bn,mlp:128.")
    if width and (not width.isdigit() or int(width) < 1):
      raise ValueError(f"gvbsm_pool entry {entry!r}: the width after ':' "
                       "must be a positive integer, e.g. resnet_small:16.")
    out.append((arch, int(width) if width else None))
  if not out:
    raise ValueError(f"gvbsm_pool={pool!r} lists no teachers; give e.g. "
                     "convnet_bn,convnet_in,resnet_small,mlp.")
  return tuple(out)


def member_cfgs(tcfg: teacher_lib.TeacherConfig,
                pool: str) -> list[teacher_lib.TeacherConfig]:
  """The teacher recipe of every pool entry."""
  return [dataclasses.replace(tcfg, arch=arch, width=width or tcfg.width)
          for arch, width in parse_pool(pool)]


def load_pool(tcfg, pool: str, ds, cache_dir: str, *, log=print):
  """The pool's teachers, trained and cached like the run's teacher."""
  out = []
  for cfg in member_cfgs(tcfg, pool):
    log(f"gvbsm: teacher {cfg.arch} width {cfg.width}")
    out.append(teacher_lib.load_or_train(cfg, ds, cache_dir, log=log))
  return out


def real_conv_stats(teacher, tcfg, x_train, batch: int, seed: int = 0):
  """Per conv hook, the 4 `hook_stats` of the real data, mean over batches.

  One pass over the full batches of `batch` images (all images when there
  are fewer), with the teacher recipe's pad-crop/flip augmentation.
  """
  n = len(x_train)
  batch = min(batch, n)
  aug = teacher_lib.pad_crop_flip(tcfg.pad_crop, tcfg.flip)

  @jax.jit
  def one(xb, key):
    if aug is not None:
      xb = aug(key, 0, None, xb)
    _, aux = teacher.model.apply(teacher.variables, xb, train=False)
    return tuple(gvbsm_terms.hook_stats(x) for x in aux["conv_inputs"])

  total, count = None, 0
  key = jax.random.key(seed)
  for s in range(0, n - batch + 1, batch):
    st = one(jnp.asarray(x_train[s:s + batch], jnp.float32),
             jax.random.fold_in(key, s))
    total = st if total is None else jax.tree.map(jnp.add, total, st)
    count += 1
  return jax.tree.map(lambda a: a / count, total)


def ensemble(members, ds=None) -> relabel.Ensemble:
  """The pool's ensemble; with `ds`, its test accuracy in meta."""
  ens = relabel.Ensemble(members)
  if ds is not None:
    ens.meta["test_acc"] = teacher_lib.test_accuracy(ens.model,
                                                     ens.variables, ds)
  return ens


def carry() -> optax.GradientTransformation:
  """Replaces a learned entry by its "gradient" (the new state)."""
  return optax.GradientTransformation(
      lambda params: optax.EmptyState(),
      lambda new, state, params: (jax.tree.map(jnp.subtract, new, params),
                                  state))


def optimizer(cfg: recover.RecoverConfig) -> optax.GradientTransformation:
  """Recover's Adam on the images; the EMA state is carried."""
  return optax.multi_transform({"x": recover.optimizer(cfg), "ema": carry()},
                               {"x": "x", "ema": "ema"})


def grad_fn(cfg: recover.RecoverConfig, teachers, conv_targets, i: int,
            objective):
  """`(learned, step, index, targets, key) -> (loss, grads, metrics)` of
  teacher i; grads["ema"] is the new EMA state (teacher i's entry moved)."""
  teacher, tgt_stats = teachers[i], conv_targets[i]

  def batch_loss(x_flat, idx, tgt, key, state, min_scale):
    k_aug, k_drop = jax.random.split(key)
    xa = recover.augment(cfg, k_aug, x_flat[idx], min_scale)
    logits, aux = teacher.model.apply(teacher.variables, xa, train=False)
    keep = gvbsm_terms.drop_mask(k_drop, len(aux["conv_inputs"]),
                                 cfg.drop_rate)
    aux2, new = gvbsm_terms.prepare({**aux, "inputs": xa}, state, tgt_stats,
                                    keep, cfg.ema_alpha)
    loss, values = objective(logits, aux2, tgt, aux["running"])
    return loss, (values, new)

  def fn(learned, step, index, targets, key):
    x = learned["x"]
    x_flat = x.reshape(-1, *x.shape[2:])
    keys = jax.random.split(jax.random.fold_in(key, step), index.shape[0])
    ms = recover.min_scale_at(cfg, step)

    def total(x_flat):
      losses, aux = jax.vmap(
          lambda b, k, s: batch_loss(x_flat, b, targets[b], k, s, ms))(
              index, keys, learned["ema"][i])
      return jnp.sum(losses), (jnp.mean(losses), aux)
    (_, (mean_loss, (values, new))), g = jax.value_and_grad(
        total, has_aux=True)(x_flat)
    ema = tuple(new if j == i else e for j, e in enumerate(learned["ema"]))
    metrics = {k: jnp.mean(v) for k, v in values.items()}
    metrics.update(min_scale=ms, teacher=jnp.float32(i))
    return mean_loss, {"x": g.reshape(x.shape), "ema": ema}, metrics
  return fn


class GvbsmStep:
  """The recover step of G-VBSM (the `recover.RoundStep` interface)."""

  def __init__(self, cfg: recover.RecoverConfig, teachers, conv_targets,
               num_classes: int, mean, std):
    self.cfg, self.teachers = cfg, list(teachers)
    self.conv_targets = list(conv_targets)
    self.index = jnp.asarray(recover.batches(cfg, num_classes))
    group = cfg.ipc if cfg.batch_mode == "class_grouped" else 1
    objective = gvbsm_terms.objective(
        r_bn=cfg.r_bn, first_multiplier=cfg.first_bn_multiplier,
        nuc_norm=cfg.nuc_norm, tau=cfg.tau, group_size=group)
    self.tx = optimizer(cfg)
    project = lambda l: {**l, "x": pixels.clip_pixels(l["x"], mean, std)}
    self._steps = [xla_options.jit(outer.make_step(
        grad_fn(cfg, self.teachers, self.conv_targets, i, objective),
        self.tx, project=project), donate_argnums=(0,))
                   for i in range(len(self.teachers))]

  def teacher_of(self, step: int) -> int:
    return step % len(self.teachers)

  def init_learned(self, x0) -> dict:
    """{"x": images, "ema": per teacher, per batch, its initial state}."""
    nb = self.index.shape[0]
    ema = []
    for t, tgt in zip(self.teachers, self.conv_targets):
      dummy = jnp.zeros((2, *x0.shape[2:]), jnp.float32)
      running = t.model.apply(t.variables, dummy, train=False)[1]["running"]
      st = gvbsm_terms.init_state(running, tgt)
      ema.append(jax.tree.map(
          lambda a: jnp.broadcast_to(jnp.asarray(a, jnp.float32),
                                     (nb, *a.shape)), st))
    return {"x": jnp.asarray(x0, jnp.float32), "ema": tuple(ema)}

  def _args(self, targets, key):
    return (self.index, targets, key)

  def __call__(self, state, targets, key):
    return self._steps[self.teacher_of(int(state.step))](
        state, *self._args(targets, key))

  def lower(self, state, targets, key):
    return self._steps[self.teacher_of(int(state.step))].lower(
        state, *self._args(targets, key))

  def image_iterations(self) -> int:
    return self.cfg.iterations * int(self.index.size)
