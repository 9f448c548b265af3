"""The outer (meta) update: one jitted, pure step on the distilled set."""

from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from distill_jax import config as config_lib
from distill_jax import distilled
from distill_jax import inits
from distill_jax import meta
from distill_jax import sharding
from distill_jax import xla_options


@flax.struct.dataclass
class OuterState:
  """Everything the outer loop carries between steps.

  Attributes:
    learned: the learned distilled quantities ({"x", "raw_lr"}).
    opt_state: optax state of the outer optimiser.
    step: number of outer steps taken (int32 scalar).
  """
  learned: dict
  opt_state: Any
  step: jax.Array


def optimizer(cfg: config_lib.DistillConfig,
              steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam with the reference's step decay (x decay_factor every N epochs)."""
  schedule = optax.exponential_decay(
      cfg.outer_lr, transition_steps=max(1, cfg.decay_epochs * steps_per_epoch),
      decay_rate=cfg.decay_factor, staircase=True)
  tx = optax.adam(schedule, b1=cfg.outer_b1, b2=cfg.outer_b2)
  if cfg.learn_lr:
    return tx
  return optax.multi_transform(
      {"train": tx, "freeze": optax.set_to_zero()},
      lambda learned: {k: ("freeze" if k == "raw_lr" else "train")
                       for k in learned})


def init_state(learned, tx: optax.GradientTransformation) -> OuterState:
  return OuterState(learned=learned, opt_state=tx.init(learned),
                    step=jnp.zeros((), jnp.int32))


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
  mesh = sharding.inits_mesh(cfg.num_inits)
  group = meta.resolve_group(cfg.num_inits, cfg.init_group, mesh is not None)

  def step(state: OuterState, labels, x_train, y_train, batch_idx, key,
           source):
    key = jax.random.fold_in(key, state.step)
    real_x = x_train[batch_idx]
    real_y = meta.real_targets(y_train[batch_idx], cfg.objective,
                               cfg.poison_source, cfg.poison_target)
    params0 = inits.sample(key, cfg.num_inits, mode=cfg.init_mode,
                           model_init=model_init, source=source)
    params0 = sharding.shard_leading(params0, mesh)
    loss, grads = meta.value_and_grad(
        state.learned, labels, params0, real_x, real_y, apply_fn=apply_fn,
        epochs=cfg.epochs, remat=cfg.remat, real_chunk=cfg.real_chunk,
        init_group=group)
    chex.assert_trees_all_equal_shapes(grads, state.learned)
    updates, opt_state = tx.update(grads, state.opt_state, state.learned)
    learned = optax.apply_updates(state.learned, updates)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "lr_mean": jnp.mean(distilled.lrs(learned)),
    }
    return OuterState(learned, opt_state, state.step + 1), metrics

  return xla_options.jit(step, donate_argnums=(0,))
