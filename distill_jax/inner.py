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
