"""The unroll: a forward-only burn-in, then a differentiable window.

For T inner steps with window length M and burn-in length s (see
`distill_jax.core.truncation`):

.. math::
  \\theta_s = \\mathrm{burn\\_in}_s(\\theta_0, \\mathrm{sg}(\\tilde D)), \\quad
  \\theta_{s+M} = \\mathrm{window}_M(\\theta_s, \\tilde D)

The burn-in is a `lax.fori_loop` with a dynamic bound on stop-gradient data,
the window a `lax.scan` of static length M whose body may be wrapped in
`jax.checkpoint` (`remat`), so one compiled program serves every s, and the
backward pass recomputes each step's activations instead of storing them:
memory is O(parameters x M) rather than O(activations x M). Without a start
(`start=None`) all T steps form the window (full back-propagation through
time). `jax.grad` through `run` is exact BPTT over the window.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from distill_jax.core import inner
from distill_jax.data import augment

POLICIES = {
    "full": None,  # save nothing but the carry
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def wrap(body: Callable, remat: str) -> Callable:
  """Wraps a scan body in `jax.checkpoint` with the named policy."""
  if remat == "none":
    return body
  if remat not in POLICIES:
    raise ValueError(
        f"remat={remat!r} is not supported; choose one of "
        f"{['none', *POLICIES]}.")
  return jax.checkpoint(body, policy=POLICIES[remat], prevent_cse=False)


def _at(xs, t):
  return jax.tree.map(lambda a: a[t], xs)


def run(step_fn: Callable, state, learned, fixed, *, schedule,
        start=None, window: int | None = None, remat: str = "full"):
  """Trains `state` on the distilled set for `schedule.total` steps.

  Args:
    step_fn: pure `(state, t, data, xs_t) -> state`, with (data, xs) from
      `schedule.inputs(learned, fixed)`.
    state: initial inner state.
    learned: the learned distilled quantities (differentiated).
    fixed: the distilled quantities that are not learned.
    schedule: a `distill_jax.core.schedule` schedule.
    start: None (every step differentiable), or the traced burn-in length s:
      steps 0..s-1 run on stop-gradient data, then `window` steps.
    window: M, the number of differentiable steps when `start` is given.
    remat: rematerialisation policy of the window's scan body.

  Returns:
    The state after the window.
  """
  if start is None:
    data, xs = schedule.inputs(learned, fixed)
    ts = jnp.arange(schedule.total(learned))

    def body_all(s, t_x):
      return step_fn(s, t_x[0], data, t_x[1]), None
    state, _ = jax.lax.scan(wrap(body_all, remat), state, (ts, xs))
    return state
  frozen = jax.lax.stop_gradient(learned)
  data_f, xs_f = schedule.inputs(frozen, fixed)
  state = jax.lax.fori_loop(
      0, start, lambda t, s: step_fn(s, t, data_f, _at(xs_f, t)), state)
  data, xs = schedule.inputs(learned, fixed)

  def body(s, i):
    t = start + i
    return step_fn(s, t, data, _at(xs, t)), None
  state, _ = jax.lax.scan(wrap(body, remat), state, jnp.arange(window))
  return state


def make_step(schedule, *, apply_fn, tx, syn_aug: str = "none",
              rotate_deg: float = 15.0, key=None) -> Callable[..., Any]:
  """The inner step of `run`: batch from the schedule, augment, update.

  Step t draws its subsample and augmentation from `fold_in(key, t)`, so a
  step's batch depends only on the key and t.
  """
  def step_fn(state, t, data, xs_t):
    k_sub, k_aug = jax.random.split(jax.random.fold_in(key, t))
    x, y, w, lr = schedule.batch(k_sub, t, data, xs_t)
    x = augment.apply(k_aug, x, syn_aug, max_deg=rotate_deg)
    return inner.step(state, x, y, w, lr, apply_fn=apply_fn, tx=tx)
  return step_fn
