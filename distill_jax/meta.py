"""The meta-objective and its gradient, vmapped over sampled initialisations.

For initial weights theta_0 ~ p(theta_0), the distilled data (x~, eta~) trains
the network for T = S*E steps (`inner.step` under `unroll.unroll`), and the
meta-loss is the loss of the final weights on a batch of real data:

.. math::
  L(\\tilde x, \\tilde\\eta) = \\frac{1}{J}\\sum_{j=1}^{J}
  \\ell(x_{real}, \\theta_T(\\theta_0^{(j)}, \\tilde x, \\tilde\\eta))

`jax.grad` of this through the scan is exact back-propagation through all T
steps (Hessian-vector products included); `jax.vmap` runs the J sampled
initialisations in parallel.
"""

import functools

import jax
import jax.numpy as jnp

from distill_jax import distilled
from distill_jax import inner
from distill_jax import unroll


def train(apply_fn, params0, learned, labels, *, epochs: int,
          remat: str = "full"):
  """Trains `params0` on the distilled sequence; returns the final params."""
  xs = distilled.sequence(learned, labels, epochs)

  def step_fn(params, xyl):
    x, y, lr = xyl
    return inner.step(apply_fn, params, x, y, lr)

  return unroll.unroll(step_fn, params0, xs, remat=remat)


def real_targets(real_y: jax.Array, objective: str, source: int,
                 target: int) -> jax.Array:
  """Targets of the meta-loss: true labels, or K->T relabelled (poisoning)."""
  if objective == "poison":
    return jnp.where(real_y == source, target, real_y)
  return real_y


def loss(learned, labels, params0, real_x, real_y, *, apply_fn, epochs: int,
         remat: str = "full", real_chunk: int = 0):
  """Meta-loss for one initialisation `params0`.

  `real_chunk > 0` evaluates the real-batch loss in chunks of that many
  examples (`inner.chunked_loss`): same gradient, less memory, faster on CPU.
  """
  params = train(apply_fn, params0, learned, labels, epochs=epochs,
                 remat=remat)
  return inner.chunked_loss(apply_fn, params, real_x, real_y, real_chunk)


def value_and_grad(learned, labels, params0_batch, real_x, real_y, *,
                   apply_fn, epochs: int, remat: str = "full",
                   real_chunk: int = 0):
  """Mean meta-loss over a batch of initialisations and its gradient.

  Args:
    learned: dict of learned distilled quantities ({"x", "raw_lr", ...}).
    labels: fixed labels (S, n).
    params0_batch: initial parameters with a leading axis of size J.
    real_x: real images (B, H, W, C).
    real_y: real targets (B,).
    apply_fn: the network's apply function.
    epochs: E (the distilled batches are cycled E times).
    remat: rematerialisation policy of the scan body.
    real_chunk: chunk size of the real-batch loss (0 = whole batch).

  Returns:
    (mean loss, gradient pytree like `learned`).
  """
  per_init = functools.partial(loss, apply_fn=apply_fn, epochs=epochs,
                               remat=remat, real_chunk=real_chunk)

  def mean_loss(l):
    losses = jax.vmap(per_init, in_axes=(None, None, 0, None, None))(
        l, labels, params0_batch, real_x, real_y)
    return jnp.mean(losses)

  return jax.value_and_grad(mean_loss)(learned)
