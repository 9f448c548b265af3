"""Test accuracy of trained networks, one number per network.

`accuracy` evaluates a stack of networks (leading network axis) on a split,
one network after another, and `summary` turns per-network accuracies into
the mean +- std callers report.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import data
from distill_jax.platform import xla_options


def chunks(tree, size: int):
  n = jax.tree.leaves(tree)[0].shape[0]
  for start in range(0, n, size):
    yield jax.tree.map(lambda a: a[start:start + size], tree)


@xla_options.lazy_jit(static_argnames=("apply_fn", "batch", "norm",
                                       "counts"))
def _accuracy_batched(apply_fn, params_batch, x, y, batch: int, norm=None,
                      counts: bool = False):
  """Accuracy (or, with `counts`, correct predictions) of each network in
  `params_batch` on (x, y)."""
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
    return correct if counts else correct / x.shape[0]

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
  norm = _norm_for(x, norm)
  batch = min(batch, x.shape[0])
  out = [np.asarray(_accuracy_batched(apply_fn, p, x, y, batch, norm))
         for p in chunks(params_batch, chunk)]
  return np.concatenate(out)


def _norm_for(x, norm):
  if x.dtype == np.uint8:
    if norm is None:
      raise ValueError("x holds uint8 pixels: pass norm=(mean, std) (the "
                       "dataset's statistics) to normalise them.")
    return tuple(tuple(float(v) for v in a) for a in norm)
  return None


def accuracy_on(apply_fn, params_batch, split, *, batch: int = 500,
                chunk: int = 10, norm=None) -> np.ndarray:
  """`accuracy` on a split: ``(x, y)``, `sources.InMemory` or streamed.

  A split in memory is evaluated by `accuracy` (the same numbers as
  before); a streamed one (`distill_jax.data.stream`) is read
  ``READ_BATCHES`` forward passes at a time and the correct predictions are
  summed (over hosts too), so the result equals `accuracy` on the whole
  split while only one read is in memory.
  """
  from distill_jax.data import sources  # pylint: disable=g-import-not-at-top
  if not sources.is_streamed(split):
    x, y = split if isinstance(split, tuple) else (split.x, split.labels)
    return accuracy(apply_fn, params_batch, x, y, batch=batch, chunk=chunk,
                    norm=norm)
  n = len(split)
  batch = max(1, min(batch, n))
  correct = 0
  for x, y in split.batches(batch * max(1, READ_EXAMPLES // batch)):
    b = min(batch, len(y))
    correct += np.concatenate([np.asarray(_accuracy_batched(
        apply_fn, p, x, y, b, _norm_for(x, norm), counts=True))
                               for p in chunks(params_batch, chunk)])
  correct = _sum_over_hosts(np.asarray(correct, np.int64))
  # As XLA computes `correct / n` in `_accuracy_batched`: times 1/n.
  return correct.astype(np.float32) * (np.float32(1) / np.float32(n))


READ_EXAMPLES = 4000  # examples per read of a streamed split.


def _sum_over_hosts(x: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x)).sum(0)


def summary(acc: np.ndarray) -> dict:
  """mean, std, min, max and count of an accuracy array (in %)."""
  acc = np.asarray(acc) * 100.0
  return {"mean": float(acc.mean()), "std": float(acc.std()),
          "min": float(acc.min()), "max": float(acc.max()), "n": int(acc.size)}
