"""Evaluation of a distilled set on held-out initialisations.

Two protocols, both trained with the one routine `eval.fit`:
  * replay (the Dataset Distillation protocol): train each held-out network
    with exactly the learned sequence (images of step t mod S, learned lr_t)
    and report test accuracy;
  * retrain: train fresh networks on all distilled images with plain
    minibatch SGD for a number of epochs (the images are then used without
    their learned order and learning rates).

Both run networks side by side under `vmap`, in chunks to bound memory, each
chunk sharded over the mesh's "inits" axis (`platform.mesh.map_sharded`),
and return one accuracy per network so callers report mean +- std.
"""

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.core import inner
from distill_jax.core import meta
from distill_jax.core import schedule as schedule_lib
from distill_jax.eval import accuracy as accuracy_lib
from distill_jax.eval import fit
from distill_jax.platform import mesh as sharding
from distill_jax.platform import xla_options


def replay_problem(apply_fn, epochs: int) -> meta.Problem:
  """Plain-GD replay of the learned steps (the paper's evaluation)."""
  return meta.Problem(schedule=schedule_lib.Ordered(epochs),
                      apply_fn=apply_fn, tx=inner.GD, remat="none")


@xla_options.lazy_jit(static_argnames=("problem",))
def _replay(problem, params0_batch, learned, labels, keys):
  trainer = fit.distilled(problem, learned, labels)
  total = problem.schedule.total(learned)
  out = fit.fit(trainer, {"params0": params0_batch, "key": keys}, (total,))
  return jax.tree.map(lambda a: a[0], out)


def replay(apply_fn, params0_batch, learned, labels, *, epochs: int,
           chunk: int = 50, problem: meta.Problem | None = None, key=None):
  """Trains every network of `params0_batch` on the learned sequence.

  `problem` (default: plain GD with the learned lrs, `replay_problem`) may
  name another inner optimiser or augmentation, as used in distillation;
  `key` draws the augmentation of each network's steps.
  """
  problem = problem or replay_problem(apply_fn, epochs)
  num = jax.tree.leaves(params0_batch)[0].shape[0]
  keys = jax.random.split(jax.random.key(0) if key is None else key, num)
  return sharding.map_sharded(
      lambda pk: _replay(problem, pk[0], learned, labels, pk[1]),
      (params0_batch, keys), chunk, sharding.INITS)


def replay_accuracy(apply_fn, params0_batch, learned, labels, x, y, *,
                    epochs: int, batch: int = 500,
                    problem: meta.Problem | None = None,
                    key=None, chunk: int = 50) -> np.ndarray:
  """Replay evaluation: accuracy on (x, y) after the learned steps; ``x``
  may instead be a streamed split (`data.stream.StreamSplit`, ``y`` None).
  """
  params = replay(apply_fn, params0_batch, learned, labels, epochs=epochs,
                  problem=problem, key=key, chunk=chunk)
  if y is None:
    return accuracy_lib.accuracy_on(apply_fn, params, x, batch=batch)
  return accuracy_lib.accuracy(apply_fn, params, x, y, batch=batch)


@xla_options.lazy_jit(
    static_argnames=("apply_fn", "epochs", "batch_size"))
def _retrain(apply_fn, params0_batch, keys, x, y, lr, epochs: int,
             batch_size: int):
  n = x.shape[0]
  trainer = fit.minibatch(apply_fn, inner.GD, lr, x, y,
                          fit.epoch_batches(n, batch_size))
  per_net = {"params0": params0_batch,
             "keys": jax.vmap(lambda k: jax.random.split(k, epochs))(keys)}
  steps = epochs * max(1, n // batch_size)
  return jax.tree.map(lambda a: a[0], fit.fit(trainer, per_net, (steps,)))


def retrain_accuracy(apply_fn, params0_batch, key, x_syn, y_syn, x, y, *,
                     lr: float, epochs: int, batch_size: int,
                     batch: int = 500) -> np.ndarray:
  """Retrain evaluation: minibatch SGD on the distilled images.

  Args:
    apply_fn: network apply function.
    params0_batch: fresh initialisations (leading axis K).
    key: PRNG key for the minibatch order.
    x_syn: distilled images, any leading shape ending in (H, W, C).
    y_syn: their integer labels, same leading shape.
    x: test images.
    y: test labels.
    lr: SGD learning rate.
    epochs: passes over the distilled images.
    batch_size: minibatch size (clipped to the number of images).
    batch: evaluation batch size.

  Returns:
    Per-network test accuracy.
  """
  x_syn = x_syn.reshape(-1, *x_syn.shape[-3:])
  y_syn = y_syn.reshape(-1)
  batch_size = min(batch_size, x_syn.shape[0])
  k = jax.tree.leaves(params0_batch)[0].shape[0]
  params = sharding.map_sharded(
      lambda pk: _retrain(apply_fn, pk[0], pk[1], x_syn, y_syn,
                          jnp.float32(lr), epochs, batch_size),
      (params0_batch, jax.random.split(key, k)), k, sharding.INITS)
  return accuracy_lib.accuracy(apply_fn, params, x, y, batch=batch)
