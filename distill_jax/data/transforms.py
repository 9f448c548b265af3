"""Pixel transforms: normalisation, uint8 decoding, resizing, aligned arrays."""

import jax
import jax.numpy as jnp
import numpy as np


def normalize(x, mean, std) -> np.ndarray:
  """Normalises images per channel.

  Args:
    x: images (..., C); integer dtypes are 0..255, floats are in [0, 1].
    mean: per-channel mean in [0, 1] units (sequence of length C).
    std: per-channel std in [0, 1] units.

  Returns:
    float32 array ``(x01 - mean) / std``.
  """
  x = np.asarray(x)
  out = x.astype(np.float32)  # a copy: the caller's array is left alone.
  if np.issubdtype(x.dtype, np.integer):
    out /= 255.0
  return _normalize_inplace(out, mean, std)


ALIGN = 64  # bytes; XLA:CPU shares (does not copy) arrays aligned to this.


def aligned_empty(shape, dtype) -> np.ndarray:
  """`np.empty` whose data starts on an `ALIGN`-byte boundary, so that
  `jax.device_put` on CPU uses it in place instead of copying it."""
  dtype = np.dtype(dtype)
  nbytes = int(np.prod(shape)) * dtype.itemsize
  buf = np.empty(nbytes + ALIGN, np.uint8)
  offset = (-buf.ctypes.data) % ALIGN
  return buf[offset:offset + nbytes].view(dtype).reshape(shape)


def as_aligned(x: np.ndarray) -> np.ndarray:
  """`x` itself if C-contiguous, writeable and aligned, else an aligned
  copy."""
  if (x.flags.c_contiguous and x.flags.writeable and
      x.ctypes.data % ALIGN == 0):
    return x
  out = aligned_empty(x.shape, x.dtype)
  out[...] = x
  return out


def _normalize_inplace(x: np.ndarray, mean, std) -> np.ndarray:
  """`(x - mean) / std` written into float32 `x` itself (no temporaries:
  a full-size copy of a 55,000-image train split is ~170 MB)."""
  x -= np.asarray(mean, np.float32)
  x /= np.asarray(std, np.float32)
  return x


PIXELS = ('float32', 'uint8')


def decode(x, mean, std):
  """uint8 pixels -> normalised float32, ``(x / 255 - mean) / std``.

  Works on numpy arrays and (inside ``jit``) on JAX arrays, so splits can be
  kept as uint8 (a quarter of the memory) and normalised per batch where
  they are used; float arrays are returned unchanged. The values are
  bit-identical to `load`'s float32 path: each of the 256 levels is
  normalised once on the host (a (256, C) table) and the pixels index it.

  Args:
    x: images (..., C), uint8 (0..255) or already-normalised floats.
    mean: per-channel mean in [0, 1] units.
    std: per-channel std in [0, 1] units.

  Returns:
    float32 normalised images (``x`` itself if it is not uint8).
  """
  if x.dtype != np.uint8:
    return x
  c = x.shape[-1]
  levels = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None], (256, c))
  table = normalize(levels, mean, std)
  if isinstance(x, jax.Array):
    return jnp.asarray(table)[x.astype(jnp.int32), jnp.arange(c)]
  return table[x, np.arange(c)]


def denormalize(x, mean, std) -> np.ndarray:
  """Inverts `normalize`.

  Args:
    x: normalised images (..., C).
    mean: per-channel mean in [0, 1] units.
    std: per-channel std in [0, 1] units.

  Returns:
    float32 images in [0, 1] (clipped).
  """
  x = np.asarray(x, np.float32) * np.asarray(std, np.float32)
  x = x + np.asarray(mean, np.float32)
  return np.clip(x, 0.0, 1.0)


def resize(x, size) -> np.ndarray:
  """Resizes NHWC float images bilinearly.

  Args:
    x: images (N, H, W, C).
    size: int (square) or (height, width).

  Returns:
    float32 images (N, height, width, C).
  """
  if isinstance(size, int):
    size = (size, size)
  x = np.asarray(x, np.float32)
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  shape = (x.shape[0], size[0], size[1], x.shape[3])
  if not x.shape[0]:
    return np.zeros(shape, np.float32)
  return np.asarray(jax.image.resize(x, shape, method='bilinear'))
