"""The inner problem: training a network on distilled data, one pure step.

A step is plain gradient descent with a (learned) learning rate:

.. math::
  \\theta_{t+1} = \\theta_t - \\eta_t \\nabla_\\theta \\ell(\\tilde x_t, y_t;
  \\theta_t)

Everything here is a pure function of arrays, so `jax.grad` can
differentiate through it (second order: the meta-gradient contains
Hessian-vector products of `loss`).
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

ApplyFn = Callable[[dict, jax.Array], jax.Array]


def loss(apply_fn: ApplyFn, params, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean cross-entropy of `apply_fn(params, x)` against `y`.

  Args:
    apply_fn: `apply(params, x) -> logits`.
    params: network parameters.
    x: inputs (N, H, W, C).
    y: integer labels (N,) or label distributions / soft labels (N, classes).

  Returns:
    Scalar mean loss.
  """
  logits = apply_fn(params, x)
  if y.ndim == 1:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return optax.softmax_cross_entropy(logits, y).mean()


def chunked_loss(apply_fn: ApplyFn, params, x: jax.Array, y: jax.Array,
                 chunk: int) -> jax.Array:
  """`loss` over a large batch, computed `chunk` examples at a time.

  Same value and gradient as `loss(apply_fn, params, x, y)` (up to float
  summation order). The chunks run under `lax.scan` with a rematerialised
  body, so the backward pass recomputes each chunk's activations instead of
  keeping the whole batch's: the working set stays cache-sized, which on
  XLA:CPU makes the LeNet real-batch gradient about 2x faster at batch 1024
  (see BUILD.md), and peak memory no longer grows with the batch.

  Args:
    apply_fn: `apply(params, x) -> logits`.
    params: network parameters.
    x: inputs (N, H, W, C).
    y: integer labels (N,) or label distributions (N, classes).
    chunk: examples per chunk; 0 or >= N computes the batch at once.

  Returns:
    Scalar mean loss.
  """
  n = x.shape[0]
  if chunk <= 0 or chunk >= n:
    return loss(apply_fn, params, x, y)
  full = n // chunk * chunk
  xs = x[:full].reshape(-1, chunk, *x.shape[1:])
  ys = y[:full].reshape(-1, chunk, *y.shape[1:])

  def body(total, xy):
    return total + loss(apply_fn, params, *xy) * chunk, None
  total, _ = jax.lax.scan(jax.checkpoint(body, prevent_cse=False),
                          jnp.zeros((), x.dtype), (xs, ys))
  if full < n:
    total += loss(apply_fn, params, x[full:], y[full:]) * (n - full)
  return total / n


def step(apply_fn: ApplyFn, params, x: jax.Array, y: jax.Array,
         lr: jax.Array):
  """One gradient-descent step on the batch (x, y) with learning rate `lr`.

  Args:
    apply_fn: `apply(params, x) -> logits`.
    params: current parameters.
    x: the step's distilled images.
    y: their labels (integer or soft).
    lr: scalar learning rate.

  Returns:
    The updated parameters (same pytree structure).

  Examples:
    >>> import jax.numpy as jnp
    >>> apply = lambda p, x: x.reshape(len(x), -1) @ p["w"]
    >>> p = {"w": jnp.zeros((4, 2))}
    >>> p1 = step(apply, p, jnp.ones((3, 2, 2, 1)), jnp.array([0, 1, 1]), 0.1)
    >>> p1["w"].shape
    (4, 2)
  """
  grads = jax.grad(loss, argnums=1)(apply_fn, params, x, y)
  return jax.tree.map(lambda p, g: p - lr * g, params, grads)


def accuracy(apply_fn: ApplyFn, params, x: jax.Array,
             y: jax.Array) -> jax.Array:
  """Fraction of `x` classified as `y` (integer labels)."""
  return jnp.mean(jnp.argmax(apply_fn(params, x), -1) == y)
