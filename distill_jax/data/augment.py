"""Differentiable image augmentation with explicit PRNG keys (DSA style).

A strategy is a string of operations joined by "_", e.g. "flip_rotate". As
in RaT-BPTT's `flip_rotate` (DSA's `aug_mode='S'`), each call picks ONE of
the listed operations at random and applies it to the whole batch, with
per-image random parameters:

  * "flip": horizontal flip of each image with probability 1/2;
  * "rotate": rotation of each image by an angle ~ U(-max_deg, max_deg)
    about its centre, bilinear, zeros outside (PyTorch `affine_grid` +
    `grid_sample(align_corners=True)`).

"none" returns the batch unchanged. Everything is jnp code (no custom
gradients), so gradients flow to the images; the output is a deterministic
function of (key, images). For digits use "rotate" (flips change a digit).
"""

import math

import jax
import jax.numpy as jnp

OPS = ("flip", "rotate")


def parse(strategy: str) -> tuple[str, ...]:
  """Operation names of `strategy` ("none" -> ()); raises on unknown ops."""
  if strategy in ("", "none"):
    return ()
  ops = tuple(strategy.split("_"))
  bad = [o for o in ops if o not in OPS]
  if bad:
    raise ValueError(
        f"augmentation {strategy!r} has unknown operations {bad}; use "
        f"'none' or operations from {list(OPS)} joined by '_', e.g. "
        "'flip_rotate' (or 'rotate' for digits).")
  return ops


def flip(key: jax.Array, x: jax.Array) -> jax.Array:
  """Flips each image of x (N, H, W, C) left-right with probability 1/2."""
  mask = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
  return jnp.where(mask, x[:, :, ::-1, :], x)


def _bilinear(img: jax.Array, py: jax.Array, px: jax.Array) -> jax.Array:
  """Samples img (H, W, C) at float pixel coords, zeros outside."""
  h, w, c = img.shape
  flat = img.reshape(h * w, c)
  y0, x0 = jnp.floor(py), jnp.floor(px)
  out = jnp.zeros(py.shape + (c,), img.dtype)
  for dy in (0, 1):
    for dx in (0, 1):
      yi, xi = y0 + dy, x0 + dx
      wgt = (1 - jnp.abs(py - yi)) * (1 - jnp.abs(px - xi))
      valid = (yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1)
      idx = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(
          jnp.int32)
      out = out + flat[idx] * jnp.where(valid, wgt, 0.0)[..., None]
  return out


def rotate_by(x: jax.Array, angles: jax.Array) -> jax.Array:
  """Rotates image i of x (N, H, W, C) by angles[i] radians (bilinear)."""
  _, h, w, _ = x.shape
  v, u = jnp.meshgrid(jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w),
                      indexing="ij")

  def one(img, a):
    cos, sin = jnp.cos(a), jnp.sin(a)
    su = cos * u + sin * v  # affine_grid with [[cos, sin], [-sin, cos]].
    sv = -sin * u + cos * v
    return _bilinear(img, (sv + 1) * 0.5 * (h - 1), (su + 1) * 0.5 * (w - 1))
  return jax.vmap(one)(x, angles)


def rotate(key: jax.Array, x: jax.Array, max_deg: float = 15.0) -> jax.Array:
  """Rotates each image by an angle ~ U(-max_deg, max_deg) degrees."""
  angles = jax.random.uniform(key, (x.shape[0],), x.dtype, -max_deg, max_deg)
  return rotate_by(x, angles * (math.pi / 180.0))


def apply(key: jax.Array, x: jax.Array, strategy: str, *,
          max_deg: float = 15.0) -> jax.Array:
  """Applies one randomly chosen operation of `strategy` to the batch.

  Args:
    key: PRNG key (same key and images give the same output).
    x: images (N, H, W, C).
    strategy: e.g. "flip_rotate", "rotate", "flip" or "none".
    max_deg: rotation range in degrees.

  Returns:
    Augmented images, same shape and dtype.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.ones((2, 8, 8, 1))
    >>> apply(jax.random.key(0), x, "flip_rotate").shape
    (2, 8, 8, 1)
  """
  ops = parse(strategy)
  if not ops:
    return x
  k_op, k_param = jax.random.split(key)
  fns = {"flip": lambda k, v: flip(k, v),
         "rotate": lambda k, v: rotate(k, v, max_deg)}
  branches = [fns[o] for o in ops]
  if len(branches) == 1:
    return branches[0](k_param, x)
  choice = jax.random.randint(k_op, (), 0, len(branches))
  return jax.lax.switch(choice, branches, k_param, x)
