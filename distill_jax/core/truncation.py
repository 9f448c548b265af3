"""Window sampling for randomly truncated BPTT (RaT-BPTT).

An outer step unrolls at most N = `total` inner steps from a fresh network:
s forward-only steps (the burn-in, no gradient), then a differentiable window
of M = `window` steps, and the meta-loss is taken there. Modes:

  * "random" (RaT-BPTT, `--cctype 2`): s ~ U{0, ..., N - M} (inclusive), drawn
    independently for every sampled initialisation;
  * "end" (plain truncated BPTT, `--cctype 0`): s = N - M;
  * "full" (full BPTT): M = N and s = 0.

The window length is static (one compiled program); only s is dynamic. Starts
are redrawn every outer step, or every `redraw_every` outer steps (the
released code redraws once per pass over the real data): `window_key` derives
the key from the outer step, so a resumed run draws the same windows.
"""

import jax
import jax.numpy as jnp

MODES = ("random", "end", "full")


def validate(mode: str, total: int, window: int, redraw_every: int = 1):
  """Raises ValueError naming the bad setting and how to fix it."""
  if mode not in MODES:
    raise ValueError(
        f"truncation={mode!r} is not supported; choose one of {list(MODES)}.")
  if total < 1:
    raise ValueError(f"total_steps={total} must be >= 1.")
  if mode != "full" and not 1 <= window <= total:
    raise ValueError(
        f"window={window} must be in [1, total_steps={total}]; lower --window "
        "or raise --total_steps (or use --truncation=full).")
  if redraw_every < 1:
    raise ValueError(f"redraw_every={redraw_every} must be >= 1.")


def window_length(mode: str, total: int, window: int) -> int:
  """Static number M of differentiable steps (N for mode "full")."""
  validate(mode, total, window)
  return total if mode == "full" else window


def sample_starts(key: jax.Array, num: int, *, mode: str, total: int,
                  window: int) -> jax.Array:
  """Burn-in lengths s for `num` initialisations (int32, shape (num,)).

  Args:
    key: PRNG key.
    num: number of sampled initialisations.
    mode: "random", "end" or "full".
    total: N, the total number of inner steps.
    window: M, the differentiable window (ignored for "full").

  Returns:
    Starts s with s + M <= N.

  Examples:
    >>> import jax
    >>> s = sample_starts(jax.random.key(0), 4, mode="random", total=10,
    ...                   window=3)
    >>> bool((s >= 0).all() and (s <= 7).all())
    True
  """
  m = window_length(mode, total, window)
  if mode == "random":
    return jax.random.randint(key, (num,), 0, total - m + 1, jnp.int32)
  return jnp.full((num,), total - m, jnp.int32)


def window_key(key: jax.Array, step: jax.Array,
               redraw_every: int) -> jax.Array:
  """Key of the windows of outer step `step` (constant for K steps)."""
  return jax.random.fold_in(key, step // redraw_every)
