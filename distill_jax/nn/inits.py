"""Distributions p(theta_0) of initial weights.

Four modes (Wang et al. 2018, Sec. 3.3):
  * fixed: one network, initialised once from the run's seed;
  * random: a fresh random initialisation per sample;
  * fixed_pretrained: member 0 of a pool of pretrained networks;
  * random_pretrained: a uniformly drawn member of the pool's training part.

A source is a dict: {"fixed": params} or {"pool": stacked_params,
"pool_train": int}. `sample` is pure and jittable; the mode is static.
"""

import jax
import jax.numpy as jnp


def sample(key: jax.Array, num: int, *, mode: str, model_init, source):
  """Draws `num` initial parameter sets, stacked on a leading axis.

  Args:
    key: PRNG key.
    num: number of initialisations J.
    mode: one of fixed, random, fixed_pretrained, random_pretrained.
    model_init: `init(key) -> params` of the network.
    source: {"fixed": params} for fixed mode; {"pool": stacked params,
      "pool_train": P} for pretrained modes; ignored for random.

  Returns:
    A params pytree with leading axis `num`.
  """
  if mode == "random":
    return jax.vmap(model_init)(jax.random.split(key, num))
  if mode == "fixed":
    return jax.tree.map(lambda p: jnp.broadcast_to(p, (num, *p.shape)),
                        source["fixed"])
  if mode == "fixed_pretrained":
    return jax.tree.map(lambda p: jnp.broadcast_to(p[0], (num, *p.shape[1:])),
                        source["pool"])
  if mode == "random_pretrained":
    idx = jax.random.randint(key, (num,), 0, source["pool_train"])
    return jax.tree.map(lambda p: p[idx], source["pool"])
  raise ValueError(f"Unknown init mode {mode!r}.")


def heldout(mode: str, source, model_init, key: jax.Array, num: int):
  """Initialisations for final evaluation, never seen during distillation.

  Fixed modes evaluate the very network they were distilled for (as in the
  paper); random mode draws fresh keys; random_pretrained uses the pool
  members after `pool_train` (or all members if none are held out).
  """
  if mode in ("fixed", "fixed_pretrained"):
    return sample(key, 1, mode=mode, model_init=model_init, source=source)
  if mode == "random":
    return sample(key, num, mode=mode, model_init=model_init, source=source)
  pool = source["pool"]
  size = jax.tree.leaves(pool)[0].shape[0]
  start = source["pool_train"] if source["pool_train"] < size else 0
  return jax.tree.map(lambda p: p[start:start + num], pool)
