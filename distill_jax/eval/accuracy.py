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
         for p in chunks(params_batch, chunk)]
  return np.concatenate(out)


def summary(acc: np.ndarray) -> dict:
  """mean, std, min, max and count of an accuracy array (in %)."""
  acc = np.asarray(acc) * 100.0
  return {"mean": float(acc.mean()), "std": float(acc.std()),
          "min": float(acc.min()), "max": float(acc.max()), "n": int(acc.size)}
