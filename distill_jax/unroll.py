"""Unrolled inner training as `lax.scan`, with selectable rematerialisation.

`unroll` runs a fixed number of steps (the length of `xs`) and is
differentiable: `jax.grad` through it is back-propagation through time. With
`remat != "none"` the scan body is wrapped in `jax.checkpoint`, so the
backward pass recomputes each step's activations instead of storing them:
memory stays O(parameters x steps) rather than O(activations x steps), for
the same gradients.
"""

from typing import Any, Callable

import jax

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


def unroll(step_fn: Callable[[Any, Any], Any], carry, xs, *,
           remat: str = "full"):
  """Applies `carry = step_fn(carry, x)` for each leading slice `x` of `xs`.

  Args:
    step_fn: pure `(carry, x) -> carry`.
    carry: initial state (e.g. network parameters).
    xs: pytree of per-step inputs with a leading time axis.
    remat: "none", "full", "dots" or "dots_no_batch".

  Returns:
    The final carry.
  """
  def body(c, x):
    return step_fn(c, x), None
  carry, _ = jax.lax.scan(wrap(body, remat), carry, xs)
  return carry
