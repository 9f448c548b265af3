"""Evaluation of a distilled set on held-out initialisations.

Two protocols:
  * replay (the Dataset Distillation protocol): train each held-out network
    with exactly the learned sequence (images of step t mod S, learned lr_t)
    and report test accuracy;
  * retrain: train fresh networks on all distilled images with plain
    minibatch SGD for a number of epochs (the images are then used without
    their learned order and learning rates).

Both are vmapped over initialisations, in chunks to bound memory, and return
one accuracy per network so callers report mean +- std.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import data
from distill_jax import xla_options
from distill_jax.core import inner
from distill_jax.core import meta
from distill_jax.core import schedule as schedule_lib


def _chunks(tree, size: int):
  n = jax.tree.leaves(tree)[0].shape[0]
  for start in range(0, n, size):
    yield jax.tree.map(lambda a: a[start:start + size], tree)


@xla_options.lazy_jit(static_argnames=("apply_fn", "batch", "norm"))
def _accuracy_batched(apply_fn, params_batch, x, y, batch: int, norm=None):
  """Accuracy of each network in `params_batch` on (x, y)."""
  if norm is not None:  # uint8 pixels, normalised one batch at a time.
    apply_fn = functools.partial(_apply_decoded, apply_fn, norm)
  n = x.shape[0] // batch * batch
  xb = x[:n].reshape(-1, batch, *x.shape[1:])
  yb = y[:n].reshape(-1, batch)

  def one_net(params):
    def body(correct, xy):
      bx, by = xy
      return correct + jnp.sum(jnp.argmax(apply_fn(params, bx), -1) == by), None
    correct, _ = jax.lax.scan(body, jnp.zeros((), jnp.int32), (xb, yb))
    if n < x.shape[0]:
      rest = apply_fn(params, x[n:])
      correct += jnp.sum(jnp.argmax(rest, -1) == y[n:])
    return correct / x.shape[0]

  # One network after another: a vmap over networks multiplies the
  # activation memory by their number (10 ConvNet-3 w128 on 200 images:
  # 4.9 GiB peak) and turns every matmul into a batched one.
  return jax.lax.map(one_net, params_batch)


def _apply_decoded(apply_fn, norm, params, x):
  return apply_fn(params, data.decode(x, *norm))


def accuracy(apply_fn, params_batch, x, y, *, batch: int = 500,
             chunk: int = 10, norm=None) -> np.ndarray:
  """Per-network accuracy on the whole of (x, y).

  Args:
    apply_fn: network apply function (must be hashable, e.g. a function).
    params_batch: parameters with a leading network axis.
    x: images (N, H, W, C).
    y: integer labels (N,).
    batch: examples per forward pass.
    chunk: networks evaluated at once.
    norm: (mean, std) if `x` holds uint8 pixels (`data.decode`).

  Returns:
    numpy array of accuracies in [0, 1], one per network.
  """
  if x.dtype == np.uint8:
    if norm is None:
      raise ValueError("x holds uint8 pixels: pass norm=(mean, std) (the "
                       "dataset's statistics) to normalise them.")
    norm = tuple(tuple(float(v) for v in a) for a in norm)
  else:
    norm = None
  batch = min(batch, x.shape[0])
  out = [np.asarray(_accuracy_batched(apply_fn, p, x, y, batch, norm))
         for p in _chunks(params_batch, chunk)]
  return np.concatenate(out)


def replay_problem(apply_fn, epochs: int) -> meta.Problem:
  """Plain-GD replay of the learned steps (the paper's evaluation)."""
  return meta.Problem(schedule=schedule_lib.Ordered(epochs),
                      apply_fn=apply_fn, tx=inner.GD, remat="none")


@xla_options.lazy_jit(static_argnames=("problem",))
def _replay(problem, params0_batch, learned, labels, keys):
  return jax.vmap(lambda p, k: meta.train(problem, p, learned, labels, k))(
      params0_batch, keys)


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
  outs = [_replay(problem, p, learned, labels, k) for p, k in zip(
      _chunks(params0_batch, chunk), _chunks(keys, chunk))]
  return jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


def replay_accuracy(apply_fn, params0_batch, learned, labels, x, y, *,
                    epochs: int, batch: int = 500,
                    problem: meta.Problem | None = None,
                    key=None) -> np.ndarray:
  """Replay evaluation: accuracy on (x, y) after the learned steps."""
  params = replay(apply_fn, params0_batch, learned, labels, epochs=epochs,
                  problem=problem, key=key)
  return accuracy(apply_fn, params, x, y, batch=batch)


@xla_options.lazy_jit(
    static_argnames=("apply_fn", "epochs", "batch_size"))
def _retrain(apply_fn, params0_batch, keys, x, y, lr, epochs: int,
             batch_size: int):
  n = x.shape[0]
  steps_per_epoch = max(1, n // batch_size)

  def train_one(params, key):
    def epoch(params, k):
      perm = jax.random.permutation(k, n)[:steps_per_epoch * batch_size]
      idx = perm.reshape(steps_per_epoch, batch_size)

      def step(p, i):
        return inner.gd_step(apply_fn, p, x[i], y[i], lr), None
      params, _ = jax.lax.scan(step, params, idx)
      return params, None
    params, _ = jax.lax.scan(epoch, params, jax.random.split(key, epochs))
    return params

  return jax.vmap(train_one)(params0_batch, keys)


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
  params = _retrain(apply_fn, params0_batch, jax.random.split(key, k), x_syn,
                    y_syn, jnp.float32(lr), epochs, batch_size)
  return accuracy(apply_fn, params, x, y, batch=batch)


def summary(acc: np.ndarray) -> dict:
  """mean, std, min, max and count of an accuracy array (in %)."""
  acc = np.asarray(acc) * 100.0
  return {"mean": float(acc.mean()), "std": float(acc.std()),
          "min": float(acc.min()), "max": float(acc.max()), "n": int(acc.size)}
