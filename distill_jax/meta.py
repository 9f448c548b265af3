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


def resolve_group(num_inits: int, init_group: int, sharded: bool) -> int:
  """How many initialisations one `vmap` call handles (see `value_and_grad`).

  `init_group = -1` picks for the backend: all of them (one vmap) on GPU/TPU
  or when the init axis is sharded over devices; on CPU groups of 4, which
  keeps the batched working set cache-sized (16 inits in one vmap measured
  16.5x one init on 2 CPU cores; 4 groups of 4: 15.6-17.8x, BUILD.md).
  `0` means all at once. A group that does not divide `num_inits` falls back
  to all at once.
  """
  if init_group < 0:
    init_group = 0 if (sharded or jax.default_backend() != "cpu") else 4
  if init_group <= 0 or init_group >= num_inits or num_inits % init_group:
    return num_inits
  return init_group


def value_and_grad(learned, labels, params0_batch, real_x, real_y, *,
                   apply_fn, epochs: int, remat: str = "full",
                   real_chunk: int = 0, init_group: int = 0):
  """Mean meta-loss over a batch of initialisations and its gradient.

  The J initialisations run `init_group` at a time under `jax.vmap`, the
  groups one after another under `lax.map` (same loss and gradient, up to
  float summation order). A single initialisation skips `vmap` altogether:
  on XLA:CPU the batched convolutions of a size-1 vmap cost ~15% more.

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
    init_group: initialisations per vmap call (0 = all J at once; a value
      that does not divide J also means all at once). Use `resolve_group`
      to pick one for the backend.

  Returns:
    (mean loss, gradient pytree like `learned`).
  """
  per_init = functools.partial(loss, apply_fn=apply_fn, epochs=epochs,
                               remat=remat, real_chunk=real_chunk)
  num = jax.tree.leaves(params0_batch)[0].shape[0]
  group = resolve_group(num, max(init_group, 0), sharded=False)

  def batch_losses(l, p0):
    return jax.vmap(per_init, in_axes=(None, None, 0, None, None))(
        l, labels, p0, real_x, real_y)

  if num == 1:
    p0 = jax.tree.map(lambda a: a[0], params0_batch)
    return jax.value_and_grad(per_init)(learned, labels, p0, real_x, real_y)
  if group == num:
    return jax.value_and_grad(
        lambda l: jnp.mean(batch_losses(l, params0_batch)))(learned)
  # Gradient accumulation over groups: each group's backward pass runs right
  # after its forward pass, so only one group's residuals are alive at once.
  grouped = jax.tree.map(
      lambda a: a.reshape(num // group, group, *a.shape[1:]), params0_batch)
  losses, grads = jax.lax.map(
      lambda p0: jax.value_and_grad(
          lambda l: jnp.mean(batch_losses(l, p0)))(learned), grouped)
  return jnp.mean(losses), jax.tree.map(lambda g: jnp.mean(g, 0), grads)
