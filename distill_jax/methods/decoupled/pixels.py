"""Pixel-space helpers of the decoupled recover: clipping and JPEG.

  * `clip_pixels`: after every recover step the scripts clamp each channel
    of the normalised images to [-m_c / s_c, (1 - m_c) / s_c], i.e. [0, 1]
    before normalisation (`clip`, METHODS.md C.0).
  * `quantize_jpeg`: SRe2L, CDA, SC-DD and DELT save the last iterate as
    JPEG at PIL's default quality (75), so uint8 and JPEG artefacts enter
    before relabel (C.0, C.6 item 10). distill_jax keeps float arrays;
    this host-side round trip reproduces the saved files for faithful
    runs.
"""

import io
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

Array = jax.Array
Stats = Union[float, Sequence[float], np.ndarray, Array]


def clip_bounds(mean: Stats, std: Stats) -> tuple[Array, Array]:
  """Per-channel (low, high) = (-m / s, (1 - m) / s), each (C,)."""
  m = jnp.atleast_1d(jnp.asarray(mean, jnp.float32))
  s = jnp.atleast_1d(jnp.asarray(std, jnp.float32))
  return -m / s, (1.0 - m) / s


def clip_pixels(x: Array, mean: Stats, std: Stats) -> Array:
  """Clamps channel c of x (..., C) to [-m_c / s_c, (1 - m_c) / s_c].

  For MNIST (0.1307, 0.3081): [-0.4242, 2.8215] (METHODS.md C.7).
  """
  lo, hi = clip_bounds(mean, std)
  shape = (1,) * (x.ndim - 1) + (-1,)  # Explicit: no implicit rank promotion.
  return jnp.clip(x, lo.astype(x.dtype).reshape(shape),
                  hi.astype(x.dtype).reshape(shape))


def quantize_jpeg(x, mean: Stats, std: Stats, quality: int = 75,
                  truncate: bool = True) -> np.ndarray:
  """Round-trips normalised images (N, H, W, C) through uint8 JPEG files.

  As the recover scripts save and the relabel/post-train loaders read
  (METHODS.md C.0, C.6 item 10): denormalise (x s + m), clamp to [0, 1],
  multiply by 255 and cast to uint8 (`astype(np.uint8)` truncates; with
  truncate=False round to nearest), encode with PIL at `quality` (PIL's
  default 75; PIL's default chroma subsampling), decode, divide by 255 and
  normalise again. C = 1 is written as a grayscale ("L") JPEG, C = 3 as
  RGB.

  Args:
    x: normalised float images (numpy or jax), (N, H, W, C), C in {1, 3}.
    mean: per-channel mean (C,) or a scalar.
    std: per-channel std (C,) or a scalar.
    quality: JPEG quality 1..95 (PIL).
    truncate: cast like `astype(np.uint8)` (True) or round (False).

  Returns:
    numpy array with x's shape and float dtype (float32 for non-float x).
  """
  a = np.asarray(x)
  if a.ndim != 4 or a.shape[-1] not in (1, 3):
    raise ValueError(f"need (N, H, W, C) images with C in (1, 3), got "
                     f"{a.shape}.")
  dtype = a.dtype if np.issubdtype(a.dtype, np.floating) else np.float32
  c = a.shape[-1]
  m = np.broadcast_to(np.asarray(mean, np.float64).reshape(-1), (c,))
  s = np.broadcast_to(np.asarray(std, np.float64).reshape(-1), (c,))
  pix = np.clip(a.astype(np.float64) * s + m, 0.0, 1.0) * 255.0
  u8 = (pix if truncate else np.round(pix)).astype(np.uint8)
  out = np.empty(a.shape, np.float64)
  for i, img in enumerate(u8):
    buf = io.BytesIO()
    # 2-D uint8 -> "L", (H, W, 3) uint8 -> "RGB".
    Image.fromarray(img[..., 0] if c == 1 else img).save(
        buf, format="JPEG", quality=quality)
    buf.seek(0)
    dec = np.asarray(Image.open(buf).convert("L" if c == 1 else "RGB"))
    out[i] = dec.reshape(img.shape) / 255.0
  return ((out - m) / s).astype(dtype)
