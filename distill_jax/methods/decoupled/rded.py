"""RDED selection: teacher-scored real crops, no optimisation (METHODS.md C.8).

RDED (Sun et al., CVPR 2024; `LINs-lab/RDED`@3f6453d,
`synthesize/utils.py:54-164`, `synthesize/main.py::init_images`), per class:

  1. draw `num_candidates` real images of the class (300 on CIFAR);
  2. take `num_crops` random-resized crops of each (5; RDED uses
     RandomResizedCrop to side // f, ratio 1, default scale (0.08, 1));
  3. score every crop with the teacher: CE of the true class, lower is
     better; keep each image's best crop (`selector`);
  4. keep the IPC * f^2 best of those crops (ascending CE);
  5. f > 1: stitch f x f crops into one image, each resized to about 1/f of
     the side (`mix_images`): image i's cell k (row-major) holds the
     (k * IPC + i)-th best crop, so the IPC best crops fill cell 0.
  CIFAR default f = 1, where step 5 is the identity.

The teacher and the augmentation are callables, so this module depends on
neither: `score_fn(images, labels) -> (n,) CE` and `crop_fn(key, images,
n_crops) -> (N, n_crops, h, w, ch)`. RDED zero-pads sub-size crops to the
teacher's input size before scoring (`pad`); `pad_center` does the same.

`random_real` is the class-balanced random real baseline (D.2) in the same
(C, IPC, H, W, ch) layout, a thin adapter over `baselines.random_real`.
"""

from typing import Callable, NamedTuple, Optional, Tuple

import jax
import numpy as np

from distill_jax.methods import baselines

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
CropFn = Callable[[jax.Array, np.ndarray, int], np.ndarray]


class RdedSet(NamedTuple):
  """A selected set, class-major.

  Attributes:
    images: (C, IPC, H, W, ch) float32.
    labels: (C, IPC) int32, labels[c] == c.
    scores: (C, IPC, f*f) teacher CE of the crop in each cell (row-major).
    source_index: (C, IPC, f*f) index into `x` of each cell's real image.
  """
  images: np.ndarray
  labels: np.ndarray
  scores: np.ndarray
  source_index: np.ndarray


def pad_center(images, height: int, width: Optional[int] = None) -> np.ndarray:
  """Zero-pads (N, h, w, ch) images to (N, height, width, ch), centred.

  As RDED's `pad` (top/left get the smaller half). Zeros are in the
  caller's (normalised) pixel space, i.e. the mean colour for RDED.
  """
  width = height if width is None else width
  images = np.asarray(images)
  dv, dh = height - images.shape[1], width - images.shape[2]
  if dv < 0 or dh < 0:
    raise ValueError(f"images {images.shape[1:3]} exceed ({height}, {width}).")
  return np.pad(images, ((0, 0), (dv // 2, dv - dv // 2),
                         (dh // 2, dh - dh // 2), (0, 0)))


def _scores(score_fn: ScoreFn, crops, labels, batch: Optional[int]):
  if batch is None or batch >= len(crops):
    return np.asarray(score_fn(crops, labels), np.float64).reshape(-1)
  return np.concatenate([
      np.asarray(score_fn(crops[i:i + batch], labels[i:i + batch]),
                 np.float64).reshape(-1)
      for i in range(0, len(crops), batch)])


def _cell_sizes(size: int, factor: int):
  """RDED's `mix_images` split: the first size % f cells get one more."""
  s, rem = divmod(size, factor)
  return [s + 1 if i < rem else s for i in range(factor)]


def _nearest(images: np.ndarray, h: int, w: int) -> np.ndarray:
  """torch `F.interpolate(mode="nearest")`: source index floor(i * in / out)."""
  in_h, in_w = images.shape[1:3]
  rows = np.minimum(np.floor(np.arange(h) * (in_h / h)).astype(int), in_h - 1)
  cols = np.minimum(np.floor(np.arange(w) * (in_w / w)).astype(int), in_w - 1)
  return images[:, rows][:, :, cols]


def stitch(cells, out_hw: Tuple[int, int], factor: int,
           method: str = "nearest") -> np.ndarray:
  """Tiles f*f crops into images, as RDED's `mix_images`.

  Args:
    cells: (f*f, n, h, w, ch); cells[k] fills grid cell k (row-major).
    out_hw: (H, W) of the output.
    factor: f.
    method: "nearest" (default): torch's `F.interpolate` default, which RDED
      uses (source pixel floor(i * in / out), not `jax.image.resize`'s
      half-pixel centres); any other value is a `jax.image.resize` method.

  Returns:
    (n, H, W, ch) float32.
  """
  cells = np.asarray(cells, np.float32)
  if cells.shape[0] != factor * factor:
    raise ValueError(f"need {factor * factor} cells, got {cells.shape[0]}.")
  n, ch = cells.shape[1], cells.shape[-1]
  out = np.zeros((n, *out_hw, ch), np.float32)
  k, top = 0, 0
  for h in _cell_sizes(out_hw[0], factor):
    left = 0
    for w in _cell_sizes(out_hw[1], factor):
      part = cells[k]
      if part.shape[1:3] != (h, w) and method == "nearest":
        part = _nearest(part, h, w)
      elif part.shape[1:3] != (h, w):
        part = np.asarray(jax.image.resize(part, (n, h, w, ch), method))
      out[:, top:top + h, left:left + w] = part
      left, k = left + w, k + 1
    top += h
  return out


def select(key: jax.Array, x, y, *, num_classes: int, ipc: int,
           score_fn: ScoreFn, crop_fn: CropFn, factor: int = 1,
           num_crops: int = 5, num_candidates: int = 300,
           out_hw: Optional[Tuple[int, int]] = None,
           score_batch: Optional[int] = None,
           resize_method: str = "nearest") -> RdedSet:
  """RDED's selection (module docstring, steps 1-5), class by class.

  Class c uses `fold_in(key, c)`, split into the candidate draw and the
  `crop_fn` key, so the result is a function of `key`. Ties in CE keep the
  lower crop / earlier candidate (as `torch.argmin` / stable sort).

  Args:
    key: PRNG key.
    x: real images (N, H, W, ch).
    y: integer labels (N,).
    num_classes: C.
    ipc: images per class in the output.
    score_fn: (crops (n, h, w, ch), labels (n,)) -> (n,) per-crop CE of the
      true class (lower is better); pads / resizes for the teacher itself
      (see `pad_center`).
    crop_fn: (key, images (N, H, W, ch), n_crops) -> (N, n_crops, h, w, ch).
    factor: f; each output image stitches f x f crops.
    num_crops: crops per candidate image.
    num_candidates: real images drawn per class (all if fewer exist); must
      be >= ipc * f^2, since one crop per image is kept.
    out_hw: output (H, W); default x's.
    score_batch: crops per `score_fn` call (default: one call per class).
    resize_method: see `stitch`.

  Returns:
    An `RdedSet`.
  """
  x = x if hasattr(x, "shape") else np.asarray(x)  # An array or `Rows`.
  y = np.asarray(y).reshape(-1)
  out_hw = tuple(x.shape[1:3]) if out_hw is None else tuple(out_hw)
  need = ipc * factor * factor
  images, scores, sources = [], [], []
  for c in range(num_classes):
    idx = np.flatnonzero(y == c)
    m = min(num_candidates, len(idx))
    if m < need:
      raise ValueError(f"class {c}: {m} candidate images (num_candidates="
                       f"{num_candidates}, {len(idx)} in x) < ipc * f^2 = "
                       f"{need}.")
    k_cand, k_crop = jax.random.split(jax.random.fold_in(key, c))
    cand = idx[np.asarray(jax.random.permutation(k_cand, len(idx)))[:m]]
    crops = np.asarray(crop_fn(k_crop, np.asarray(x[cand]), num_crops),
                       np.float32)
    if crops.ndim != 5 or crops.shape[:2] != (m, num_crops):
      raise ValueError(f"crop_fn returned {crops.shape}; expected "
                       f"({m}, {num_crops}, h, w, ch).")
    flat = crops.reshape(m * num_crops, *crops.shape[2:])
    ce = _scores(score_fn, flat, np.full(len(flat), c, np.int32),
                 score_batch).reshape(m, num_crops)
    best = np.argmin(ce, axis=1)
    best_ce = ce[np.arange(m), best]
    order = np.argsort(best_ce, kind="stable")[:need]
    # cells[k, i] = order[k * ipc + i] (RDED's input_img[k*n:(k+1)*n]).
    grid = order.reshape(factor * factor, ipc)
    cells = crops[grid, best[grid]]  # (f*f, ipc, h, w, ch)
    if factor == 1 and cells.shape[2:4] == out_hw:
      images.append(cells[0])
    else:
      images.append(stitch(cells, out_hw, factor, resize_method))
    scores.append(best_ce[grid].T)
    sources.append(cand[grid].T)
  labels = np.repeat(np.arange(num_classes, dtype=np.int32)[:, None], ipc, 1)
  return RdedSet(images=np.stack(images).astype(np.float32), labels=labels,
                 scores=np.stack(scores), source_index=np.stack(sources))


def random_real(key: jax.Array, x, y, ipc: int, num_classes: int):
  """Class-balanced random real images, (C, IPC, H, W, ch) and (C, IPC).

  The D.2 baseline: `baselines.random_real` with one step of `ipc` images
  per class (class c draws with `fold_in(key, c)`), reshaped class-major.
  """
  imgs, labels = baselines.random_real(key, x, y, num_classes=num_classes,
                                       steps=1, per_class=ipc)
  return (imgs.reshape(num_classes, ipc, *imgs.shape[2:]),
          labels.reshape(num_classes, ipc).astype(np.int32))
