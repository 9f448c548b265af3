"""SimCLR views: two independently augmented copies of every image.

Each view is a per-image RandomResizedCrop (`data.crops`, torchvision's
sampler), an optional horizontal flip and a brightness/contrast jitter
applied in normalised pixel space (a grayscale-safe stand-in for SimCLR's
colour jitter): x -> (x - mean_i) * c + mean_i + b with c ~ U(1 - s, 1 + s)
and b ~ U(-s, s) per image, mean_i the image's mean, s = `color`.
"""

import jax
import jax.numpy as jnp

from distill_jax.data import crops


def view(key, images, *, min_scale: float, flip: bool, color: float):
  """One augmented view of (N, H, W, C) normalised images."""
  n, h, w, _ = images.shape
  k_aug, k_c, k_b = jax.random.split(key, 3)
  params = crops.sample_augment(k_aug, n, h, w, crop=True,
                                min_scale=min_scale, flip=flip,
                                per_image=True)
  x = crops.apply_augment(images, params)
  if color:
    c = jax.random.uniform(k_c, (n, 1, 1, 1), minval=1 - color,
                           maxval=1 + color)
    b = jax.random.uniform(k_b, (n, 1, 1, 1), minval=-color, maxval=color)
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * c + mean + b
  return x


def two_views(min_scale: float, flip: bool, color: float):
  """`augment(key, t, idx, images) -> (2N, ...)` for `fit.supervised`:
  rows i and N + i are two views of image i."""
  def augment(key, t, idx, images):
    del t, idx
    k1, k2 = jax.random.split(key)
    kw = dict(min_scale=min_scale, flip=flip, color=color)
    return jnp.concatenate([view(k1, images, **kw), view(k2, images, **kw)])
  return augment
