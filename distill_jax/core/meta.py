"""The meta-objective and its gradient, vmapped over sampled initialisations.

For initialisations theta_0^(j) ~ p(theta_0), the distilled set trains each
network through `unroll.run` (an optional forward-only burn-in of s_j steps,
then a differentiable window), and the meta-loss is the loss of the final
weights on a (possibly augmented) batch of real data:

.. math::
  L(\\tilde D) = \\frac{1}{J}\\sum_{j=1}^{J}
  \\ell(\\mathrm{aug}(x_{real}), \\theta^{(j)}_{s_j+M}(\\theta_0^{(j)},
  \\tilde D))

`jax.grad` of this is exact back-propagation through the window (Hessian-
vector products included); `jax.vmap` runs the J initialisations in
parallel, `init_group` at a time (`lax.map` over groups accumulates the
gradient), and the caller may shard the J axis over devices
(`distill_jax.platform.mesh`).
"""

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from distill_jax.core import inner
from distill_jax.core import unroll
from distill_jax.data import augment


@dataclasses.dataclass(frozen=True)
class Problem:
  """Everything the meta-loss of one initialisation needs, besides arrays.

  Attributes:
    schedule: which distilled examples each inner step sees.
    apply_fn: `apply(params, x) -> logits`.
    init_fn: `init(key) -> params`, used when no initial params are given.
    tx: the inner optimiser's direction transform (identity = plain GD).
    window: M differentiable steps when burn-in starts are given.
    syn_aug: augmentation of the distilled images in the inner loop.
    real_aug: augmentation of the real batch of the meta-loss.
    rotate_deg: rotation range of both augmentations.
    remat: rematerialisation policy of the window's scan body.
    real_chunk: chunk size of the real-batch loss (0 = whole batch).
  """
  schedule: Any
  apply_fn: Callable
  init_fn: Callable | None = None
  tx: optax.GradientTransformation = inner.GD
  window: int | None = None
  syn_aug: str = "none"
  real_aug: str = "none"
  rotate_deg: float = 15.0
  remat: str = "full"
  real_chunk: int = 0


def loss(learned, fixed, params0, key, start, real_x, real_y, *,
         problem: Problem):
  """Meta-loss for one initialisation.

  Args:
    learned: learned distilled quantities.
    fixed: the distilled quantities that are not learned.
    params0: initial parameters, or None to draw them with
      `problem.init_fn` from this initialisation's key.
    key: this initialisation's PRNG key (initialisation, inner batches and
      augmentation, real-batch augmentation).
    start: burn-in length s (int32 scalar), or None for no burn-in.
    real_x: real images (B, H, W, C).
    real_y: real targets (B,).
    problem: the static description of the inner problem.

  Returns:
    Scalar loss.
  """
  k_init, k_steps, k_real = jax.random.split(key, 3)
  if params0 is None:
    params0 = problem.init_fn(k_init)
  params = train(problem, params0, learned, fixed, k_steps, start=start)
  real_x = augment.apply(k_real, real_x, problem.real_aug,
                         max_deg=problem.rotate_deg)
  return inner.chunked_loss(problem.apply_fn, params, real_x, real_y,
                            problem.real_chunk)


def train(problem: Problem, params0, learned, fixed, key, *, start=None):
  """Trains `params0` on the distilled set (`unroll.run`); final params.

  `key` draws the inner batches and augmentation; `start` is the burn-in
  length (None: every step differentiable, or plain replay).
  """
  state = inner.init_state(params0, problem.tx)
  step_fn = unroll.make_step(problem.schedule, apply_fn=problem.apply_fn,
                             tx=problem.tx, syn_aug=problem.syn_aug,
                             rotate_deg=problem.rotate_deg, key=key)
  state = unroll.run(step_fn, state, learned, fixed,
                     schedule=problem.schedule, start=start,
                     window=problem.window, remat=problem.remat)
  return state.params


def resolve_group(num_inits: int, init_group: int, sharded: bool) -> int:
  """How many initialisations one `vmap` call handles (see `value_and_grad`).

  `init_group` initialisations per vmap call, the groups one after another;
  `0` means all at once. A group that does not divide `num_inits`, or is
  at least `num_inits`, falls back to all at once, and so does an init axis
  sharded over devices (each device then runs its share in one vmap). The
  group size changes only speed, memory and float summation order. Groups
  of 4 (the configs' default) keep the batched working set cache-sized on
  CPU (16 inits in one vmap measured 16.5x one init on 2 CPU cores; 4
  groups of 4: 15.6-17.8x, BUILD.md); `0` suits GPU/TPU.
  """
  if (sharded or init_group <= 0 or init_group >= num_inits or
      num_inits % init_group):
    return num_inits
  return init_group


def value_and_grad(learned, fixed, params0, keys, starts, real_x, real_y, *,
                   problem: Problem, init_group: int = 0):
  """Mean meta-loss over a batch of initialisations and its gradient.

  The J initialisations run `init_group` at a time under `jax.vmap`, the
  groups one after another under `lax.map` (same loss and gradient, up to
  float summation order). A single initialisation skips `vmap` altogether:
  on XLA:CPU the batched convolutions of a size-1 vmap cost ~15% more.

  Args:
    learned: learned distilled quantities (the gradient's pytree).
    fixed: distilled quantities that are not learned.
    params0: initial parameters with a leading axis J, or None (drawn from
      `keys` with `problem.init_fn`).
    keys: (J,) PRNG keys, one per initialisation.
    starts: (J,) int32 burn-in lengths, or None (no burn-in).
    real_x: real images (B, H, W, C).
    real_y: real targets (B,).
    problem: the static inner problem.
    init_group: initialisations per vmap call (0 = all J at once; a value
      that does not divide J also means all at once).

  Returns:
    (mean loss, gradient pytree like `learned`).
  """
  per_init = functools.partial(loss, problem=problem)
  batched = (params0, keys, starts)
  num = keys.shape[0]
  group = resolve_group(num, max(init_group, 0), sharded=False)

  def mean_loss(l, b):
    losses = jax.vmap(
        lambda p, k, s: per_init(l, fixed, p, k, s, real_x, real_y))(*b)
    return jnp.mean(losses)

  if num == 1:
    one = jax.tree.map(lambda a: a[0], batched)
    return jax.value_and_grad(
        lambda l: per_init(l, fixed, *one, real_x, real_y))(learned)
  if group == num:
    return jax.value_and_grad(mean_loss)(learned, batched)
  # Gradient accumulation over groups: each group's backward pass runs right
  # after its forward pass, so only one group's residuals are alive at once.
  grouped = jax.tree.map(
      lambda a: a.reshape(num // group, group, *a.shape[1:]), batched)
  losses, grads = jax.lax.map(
      lambda b: jax.value_and_grad(mean_loss)(learned, b), grouped)
  return jnp.mean(losses), jax.tree.map(lambda g: jnp.mean(g, 0), grads)
