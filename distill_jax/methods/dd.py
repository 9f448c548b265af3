"""Dataset Distillation (Wang et al. 2018) as a configuration of the core.

DD learns S batches of images (and one learning rate per inner step) that
are replayed in order for E epochs (`schedule.Ordered`), differentiated
through every step (no burn-in). The inner optimiser is plain gradient
descent with the learned lrs by default (`inner_opt="gd"`); SGD with
momentum or Adam, flip/rotate augmentation of the distilled and real
images, and learned soft labels (`learn_labels`) are options shared with
RaT-BPTT. The initialisations come from p(theta_0) (`inits`: fixed, random,
or a pretrained pool), J per outer step, vmapped in groups and sharded over
devices.
"""

import jax
import jax.numpy as jnp
import optax

from distill_jax import config as config_lib
from distill_jax.core import inner
from distill_jax.core import inner_opt
from distill_jax.core import meta
from distill_jax.core import outer
from distill_jax.core import schedule as schedule_lib
from distill_jax.nn import inits
from distill_jax.platform import mesh as sharding
from distill_jax.platform import xla_options



def inner_tx(cfg: config_lib.DistillConfig) -> optax.GradientTransformation:
  if cfg.inner_opt == "gd" and not cfg.inner_wd:
    return inner.GD
  return inner_opt.build(cfg.inner_opt, cfg.lr_init,
                         momentum=cfg.inner_momentum,
                         weight_decay=cfg.inner_wd).tx


def problem(cfg: config_lib.DistillConfig, apply_fn,
            remat: str | None = None) -> meta.Problem:
  """The inner problem of a DD run (replay uses remat="none")."""
  return meta.Problem(
      schedule=schedule_lib.Ordered(cfg.epochs), apply_fn=apply_fn,
      tx=inner_tx(cfg), syn_aug=cfg.syn_aug, real_aug=cfg.real_aug,
      rotate_deg=cfg.rotate_deg, remat=cfg.remat if remat is None else remat,
      real_chunk=cfg.real_chunk)


def real_targets(real_y: jax.Array, objective: str, source: int,
                 target: int) -> jax.Array:
  """Targets of the meta-loss: true labels, or K->T relabelled (poisoning)."""
  if objective == "poison":
    return jnp.where(real_y == source, target, real_y)
  return real_y


def optimizer(cfg: config_lib.DistillConfig,
              steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam with the reference's step decay (x decay_factor every N epochs)."""
  return outer.optimizer(
      cfg.outer_lr, b1=cfg.outer_b1, b2=cfg.outer_b2,
      decay_steps=max(1, cfg.decay_epochs * steps_per_epoch),
      decay_factor=cfg.decay_factor, learn_lr=cfg.learn_lr,
      label_lr_scale=cfg.label_lr_scale)


def grad_fn(cfg: config_lib.DistillConfig, apply_fn, model_init, mesh,
            group: int):
  """`(learned, step, labels, x_train, y_train, batch_idx, key, source)
  -> (loss, grads, metrics)`: the DD meta-gradient of one outer step."""
  prob = problem(cfg, apply_fn)

  def fn(learned, step, labels, x_train, y_train, batch_idx, key, source):
    key = jax.random.fold_in(key, step)
    real_x = x_train[batch_idx]
    real_y = real_targets(y_train[batch_idx], cfg.objective,
                          cfg.poison_source, cfg.poison_target)
    params0 = inits.sample(key, cfg.num_inits, mode=cfg.init_mode,
                           model_init=model_init, source=source)
    # Inner-batch and augmentation keys, independent of the init draw.
    keys = jax.random.split(jax.random.fold_in(key, 1), cfg.num_inits)
    params0, keys = sharding.shard_leading((params0, keys), mesh)
    loss, grads = meta.value_and_grad(
        learned, labels, params0, keys, None, real_x, real_y, problem=prob,
        init_group=group)
    lr_mean = jnp.mean(schedule_lib.softplus_lrs(learned["raw_lr"]))
    return loss, grads, {"lr_mean": lr_mean}
  return fn


def init_state(learned, tx) -> outer.OuterState:
  return outer.init_state(learned, tx)


def make_step(cfg: config_lib.DistillConfig, apply_fn, model_init,
              tx: optax.GradientTransformation):
  """Returns the jitted outer step.

  The returned function has signature
  `step(state, labels, x_train, y_train, batch_idx, key, source)
   -> (state, metrics)`: it gathers the real batch, samples `cfg.num_inits`
  initialisations with `fold_in(key, state.step)`, computes the meta-gradient
  and applies the optimiser. `state` is donated. With several devices whose
  count divides `cfg.num_inits`, the initialisations are sharded across them.
  """
  mesh = sharding.from_platform(sharding.INITS)
  sharding.check_divisible(mesh, sharding.INITS, cfg.num_inits, "num_inits")
  group = meta.resolve_group(cfg.num_inits, cfg.init_group, mesh is not None)
  step = outer.make_step(grad_fn(cfg, apply_fn, model_init, mesh, group), tx)
  return xla_options.jit(step, donate_argnums=(0,))
