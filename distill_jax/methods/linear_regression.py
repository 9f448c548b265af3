"""Closed-form analysis of Sec. 3.3: one GD step of linear regression.

Data d in R^{N x D}, targets t in R^N, quadratic loss

.. math::
  \\ell(d, t; \\theta) = \\frac{1}{2N} \\lVert d\\theta - t \\rVert^2 .

One GD step on distilled data (d~, t~) in R^{M x D} x R^M with lr eta:

.. math::
  \\theta_1 = (I - \\tfrac{\\eta}{M} \\tilde d^T \\tilde d)\\,\\theta_0
              + \\tfrac{\\eta}{M} \\tilde d^T \\tilde t .

theta_1 equals an optimum theta* for EVERY theta_0 iff
I - (eta/M) d~^T d~ = 0 (Eq. 8), which needs rank(d~) = D, i.e. M >= D.

For M < D the matrix A = I - (eta/M) d~^T d~ is the identity on the null
space of d~ (dimension >= D - M), and (eta/M) d~^T t~ lies in the row space,
so for initialisations theta_0^(i) the smallest achievable mean squared
distance to theta* is the sum of the D - M smallest eigenvalues of the
second moment S = mean_i (theta_0^(i) - theta*)(theta_0^(i) - theta*)^T
(`min_mean_residual`), reached by `optimal_distilled`. It is > 0 whenever
the theta_0 spread in every direction, e.g. theta_0 ~ N(0, I).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def loss(theta: jax.Array, d: jax.Array, t: jax.Array) -> jax.Array:
  """(1 / 2N) ||d theta - t||^2."""
  r = d @ theta - t
  return 0.5 * jnp.mean(r * r)


def optimum(d: np.ndarray, t: np.ndarray) -> np.ndarray:
  """A global minimiser theta* (least squares; unique if d^T d full rank)."""
  return np.linalg.lstsq(np.asarray(d, np.float64),
                         np.asarray(t, np.float64), rcond=None)[0]


def one_step(theta0: jax.Array, d_tilde: jax.Array, t_tilde: jax.Array,
             lr: float) -> jax.Array:
  """theta_1 after one GD step on (d~, t~); theta0 may be batched (K, D)."""
  m = d_tilde.shape[0]
  theta0 = jnp.asarray(theta0)
  lead = tuple(range(theta0.ndim - 1))
  grad = (theta0 @ d_tilde.T - jnp.expand_dims(t_tilde, lead)) @ d_tilde / m
  return theta0 - lr * grad


def second_moment(theta0s: np.ndarray, theta_star: np.ndarray) -> np.ndarray:
  """S = mean_i (theta0_i - theta*)(theta0_i - theta*)^T."""
  diff = np.asarray(theta0s, np.float64) - np.asarray(theta_star)[None]
  return diff.T @ diff / diff.shape[0]


def min_mean_residual(theta0s: np.ndarray, theta_star: np.ndarray,
                      m: int) -> float:
  """Smallest mean ||theta_1 - theta*||^2 over all (d~, t~) with M rows.

  Args:
    theta0s: initialisations (K, D).
    theta_star: the optimum (D,).
    m: number of distilled points M.

  Returns:
    Sum of the D - M smallest eigenvalues of `second_moment` (0 if M >= D).
  """
  if m < 1:
    raise ValueError(f"m={m} must be >= 1.")
  dim = len(theta_star)
  if m >= dim:
    return 0.0
  eig = np.linalg.eigvalsh(second_moment(theta0s, theta_star))  # ascending
  return float(np.sum(eig[:dim - m]))


def optimal_distilled(theta_star: np.ndarray, m: int, lr: float = 1.0, *,
                      theta0s: np.ndarray | None = None,
                      key: jax.Array | None = None):
  """Distilled data (d~, t~) of M points for one GD step with lr `lr`.

  For M >= D: d~ = sqrt(M / lr) Q with Q^T Q = I (random orthonormal columns
  from `key`), t~ = d~ theta*, so theta_1 = theta* from any theta_0 (Eq. 8).
  For M < D: the rows span the top-M eigenvectors of `second_moment`
  (needs `theta0s`), which attains `min_mean_residual`.

  Args:
    theta_star: the optimum (D,).
    m: M.
    lr: the GD step's learning rate eta (> 0).
    theta0s: initialisations (needed when M < D).
    key: PRNG key of the random rotation (M >= D); default key(0).

  Returns:
    (d~ (M, D), t~ (M,)) as float64 numpy arrays.
  """
  if not lr > 0:
    raise ValueError(f"lr={lr} must be > 0.")
  theta_star = np.asarray(theta_star, np.float64)
  dim = theta_star.shape[0]
  if m >= dim:
    key = jax.random.key(0) if key is None else key
    g = np.asarray(jax.random.normal(key, (m, dim)), np.float64)
    q, _ = np.linalg.qr(g)  # (M, D), orthonormal columns
    basis = q
  else:
    if theta0s is None:
      raise ValueError(f"M={m} < D={dim}: no exact solution exists; pass "
                       "theta0s to get the best M-point set for them.")
    _, vecs = np.linalg.eigh(second_moment(theta0s, theta_star))
    basis = vecs[:, ::-1][:, :m].T  # (M, D) orthonormal rows
  d_tilde = np.sqrt(m / lr) * basis
  return d_tilde, d_tilde @ theta_star


def reaches_optimum(d_tilde, t_tilde, lr: float, theta_star, theta0s, *,
                    tol: float = 1e-6) -> bool:
  """Whether one step lands within `tol` (relative) of theta* for all."""
  theta1 = np.asarray(one_step(jnp.asarray(theta0s), jnp.asarray(d_tilde),
                               jnp.asarray(t_tilde), lr))
  err = np.linalg.norm(theta1 - np.asarray(theta_star)[None], axis=1)
  return bool(np.all(err <= tol * (1.0 + np.linalg.norm(theta_star))))


def fit_distilled(key: jax.Array, theta_star: np.ndarray,
                  theta0s: np.ndarray, m: int, lr: float = 1.0, *,
                  steps: int = 3000, learning_rate: float = 0.02):
  """Solves for (d~, t~) numerically: Adam on mean ||theta_1 - theta*||^2.

  A generic check of the closed form: it never beats `min_mean_residual`.

  Args:
    key: PRNG key of the random starting point.
    theta_star: the optimum (D,).
    theta0s: initialisations (K, D).
    m: M distilled points.
    lr: the GD step's lr eta.
    steps: Adam steps.
    learning_rate: Adam learning rate.

  Returns:
    (d~, t~, final mean squared residual).
  """
  theta_star = jnp.asarray(theta_star, jnp.float32)
  theta0s = jnp.asarray(theta0s, jnp.float32)
  dim = theta_star.shape[0]
  k1, k2 = jax.random.split(key)
  params = {"d": jax.random.normal(k1, (m, dim)) * 0.5,
            "t": jax.random.normal(k2, (m,)) * 0.5}
  tx = optax.adam(learning_rate)

  def objective(p):
    theta1 = one_step(theta0s, p["d"], p["t"], lr)
    return jnp.mean(jnp.sum((theta1 - theta_star[None]) ** 2, -1))

  @jax.jit
  def run(p):
    def body(carry, _):
      p, s = carry
      g = jax.grad(objective)(p)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), None, length=steps)
    return p, objective(p)

  p, res = run(params)
  return np.asarray(p["d"]), np.asarray(p["t"]), float(res)


def make_problem(key: jax.Array, n: int, dim: int, noise: float = 0.1):
  """A random regression problem (d (N, D), t (N,), theta*)."""
  k1, k2, k3 = jax.random.split(key, 3)
  d = np.asarray(jax.random.normal(k1, (n, dim)), np.float64)
  w = np.asarray(jax.random.normal(k2, (dim,)), np.float64)
  t = d @ w + noise * np.asarray(jax.random.normal(k3, (n,)), np.float64)
  return d, t, optimum(d, t)
