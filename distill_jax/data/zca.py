"""ZCA whitening fitted on the training set (KIP / FRePo / RaT-BPTT style).

Preprocessing of RaT-BPTT's `--zca` (METHODS.md B.6), for images x (N, D)
flattened:

  1. per image: subtract its own mean and divide by its L2 norm (so this
     part needs no fitted statistics and applies identically to any split);
  2. subtract the training mean mu of the result;
  3. multiply by W = U diag((lambda + r)^-1/2) U^T, where U, lambda is the
     eigendecomposition of the training covariance C and the regulariser is
     r = `reg` * mean(lambda) = `reg` * trace(C) / D (`reg` = 0.1).

`Zca(matrix=W, mean=mu)` is all that is needed to apply the same transform
to validation / test data; it is stored with the distilled set as the
`zca` field of a `DistilledSet` (`storage.save_distilled_set`), and
`as_extra` / `from_extra` give its arrays by name.
"""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


class Zca(NamedTuple):
  """A fitted ZCA transform: W (D, D) and the training mean mu (D,)."""
  matrix: np.ndarray
  mean: np.ndarray


def _per_image(x, xp):
  flat = x.reshape(x.shape[0], -1)
  flat = flat - flat.mean(axis=1, keepdims=True)
  norm = xp.sqrt(xp.sum(flat * flat, axis=1, keepdims=True))
  return flat / xp.maximum(norm, 1e-8)


def fit(x: np.ndarray, reg: float = 0.1, chunk: int = 5000) -> Zca:
  """Fits ZCA on training images.

  Args:
    x: training images (N, H, W, C) (any normalisation).
    reg: regulariser as a fraction of the mean eigenvalue (> 0).
    chunk: images per covariance chunk (bounds memory).

  Returns:
    The fitted `Zca`.

  Examples:
    >>> x = np.random.default_rng(0).normal(size=(50, 4, 4, 1))
    >>> z = fit(x)
    >>> z.matrix.shape, z.mean.shape
    ((16, 16), (16,))
  """
  if not reg > 0:
    raise ValueError(f"zca_reg={reg} must be > 0 (RaT-BPTT uses 0.1).")
  n = x.shape[0]
  if n < 2:
    raise ValueError(f"ZCA needs at least 2 training images, got {n}.")
  d = int(np.prod(x.shape[1:]))
  total = np.zeros(d)
  for s in range(0, n, chunk):
    total += _per_image(np.asarray(x[s:s + chunk], np.float64), np).sum(0)
  mean = total / n
  cov = np.zeros((d, d))
  for s in range(0, n, chunk):
    f = _per_image(np.asarray(x[s:s + chunk], np.float64), np) - mean
    cov += f.T @ f
  cov /= n
  eig, vec = np.linalg.eigh(cov)
  eig = np.maximum(eig, 0.0) + reg * np.trace(cov) / d
  matrix = (vec * eig ** -0.5) @ vec.T
  return Zca(matrix=matrix.astype(np.float32), mean=mean.astype(np.float32))


def apply(z: Zca, x, chunk: int = 5000):
  """Whitens images x (N, H, W, C) with a fitted transform (same shape).

  Works on numpy arrays (chunked) and on jax arrays (one matmul).
  """
  if isinstance(x, np.ndarray):
    out = np.empty(x.shape, np.float32)
    for s in range(0, x.shape[0], chunk):
      f = _per_image(np.asarray(x[s:s + chunk], np.float32), np) - z.mean
      out[s:s + chunk] = (f @ z.matrix).reshape(-1, *x.shape[1:])
    return out
  f = _per_image(x, jnp) - jnp.asarray(z.mean)[None]
  return (f @ jnp.asarray(z.matrix)).reshape(x.shape)


def unwhiten(z: Zca, x: np.ndarray) -> np.ndarray:
  """Maps whitened images back to per-image-normalised space (for viewing)."""
  flat = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  back = np.linalg.solve(z.matrix.astype(np.float64), flat.T).T + z.mean
  return back.reshape(x.shape).astype(np.float32)


def as_extra(z: Zca) -> dict:
  """The transform's arrays by name (as a distilled-set file stores them)."""
  return {"zca_matrix": z.matrix, "zca_mean": z.mean}


def from_extra(extra: dict) -> Zca:
  """Reads a transform stored by `as_extra` (raises if absent)."""
  if "zca_matrix" not in extra or "zca_mean" not in extra:
    raise ValueError(
        "This distilled set holds no ZCA transform (extra/zca_matrix, "
        "extra/zca_mean); it was distilled without --zca.")
  m, mu = np.asarray(extra["zca_matrix"]), np.asarray(extra["zca_mean"])
  if m.ndim != 2 or m.shape[0] != m.shape[1] or mu.shape != (m.shape[0],):
    raise ValueError(f"Inconsistent ZCA arrays: matrix {m.shape}, mean "
                     f"{mu.shape}.")
  return Zca(matrix=m, mean=mu)
