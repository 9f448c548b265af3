"""Augmentation of the decoupled family inside jit, with replayable params.

Images are (N, H, W, C). Each augmentation is split into a sampler that
draws explicit parameters from a PRNG key and an `apply_*` that is a pure,
differentiable function of (images, parameters), so relabel can store the
parameters and replay them (SRe2L's FKD stores coords, flip, mix index,
lam and box per batch, METHODS.md C.1 "Relabel").

  * RandomResizedCrop(scale=(min_scale, max_scale), ratio=(3/4, 4/3)) back
    to the input size: `sample_rrc_params` reimplements torchvision's
    `RandomResizedCrop.get_params` (10 attempts: area fraction ~
    U(min_scale, max_scale), log aspect ratio uniform, rounded integer box,
    uniform integer offset; then the centre-crop fallback); `min_scale`
    may be traced (CDA changes it every iteration, C.2). `apply_rrc`
    resizes the box bilinearly with `jax.image.scale_and_translate`; with
    edge="clamp" (default) rows and columns outside the box are first
    replaced by the box's edge pixels, which makes the result equal to
    torchvision's crop-then-resize (bilinear, align_corners=False: the
    source coordinate clamps at the crop border); edge="bleed" resizes
    the full image, so the outermost half pixel also sees the pixels just
    outside the box.
  * Horizontal flip with probability p (off for digits, C.7).
  * Roll by integer shifts (torch.roll semantics, cyclic), traced.
  * CutMix (lam ~ Beta(1, 1), one box and one permutation per batch) and
    Mixup (lam ~ Beta(0.8, 0.8)), SRe2L `relabel/utils_fkd.py` (C.1).

Recover draws ONE crop box, one flip and one shift for the whole batch
(torchvision v1 transforms on a 4-D tensor, `random.randint`;
METHODS.md C.0 "Recover augmentation is drawn once per batch", C.6 item 2):
`sample_augment(..., per_image=False)`, the default. Relabel and
post-train augment per image: `per_image=True`.
"""

import math
from typing import Optional, Sequence, Union

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array
RATIO = (3.0 / 4.0, 4.0 / 3.0)
_ATTEMPTS = 10  # torchvision's get_params.


# ------------------------------------------------------ RandomResizedCrop.


@flax.struct.dataclass
class CropParams:
  """Integer crop boxes, one per image, each (N,) int32 (pixels)."""
  top: Array
  left: Array
  height: Array
  width: Array


def full_crop(n: int, height: int, width: int) -> CropParams:
  """The identity box (0, 0, height, width) for n images."""
  z = jnp.zeros((n,), jnp.int32)
  return CropParams(top=z, left=z, height=z + height, width=z + width)


def _fallback(height: int, width: int,
              ratio: Sequence[float]) -> tuple[int, int]:
  """torchvision's central-crop fallback box size (h, w)."""
  in_ratio = width / height
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w, h = width, height
  return h, w


def _sample_box(key, height, width, min_scale, max_scale, ratio):
  """One torchvision RandomResizedCrop box: (top, left, h, w) int32."""
  ka, kr, ki, kj = jax.random.split(key, 4)
  area = float(height * width)
  frac = jax.random.uniform(ka, (_ATTEMPTS,), jnp.float32,
                            jnp.asarray(min_scale, jnp.float32),
                            jnp.asarray(max_scale, jnp.float32))
  log_r = jax.random.uniform(kr, (_ATTEMPTS,), jnp.float32,
                             math.log(ratio[0]), math.log(ratio[1]))
  target, aspect = area * frac, jnp.exp(log_r)
  w = jnp.round(jnp.sqrt(target * aspect))  # Half to even, as Python round.
  h = jnp.round(jnp.sqrt(target / aspect))
  ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  found, first = jnp.any(ok), jnp.argmax(ok)
  fh, fw = _fallback(height, width, ratio)
  h = jnp.where(found, h[first], fh).astype(jnp.int32)
  w = jnp.where(found, w[first], fw).astype(jnp.int32)

  def offset(k, size, crop):
    u = jax.random.uniform(k, (), jnp.float32)
    draw = jnp.floor(u * (size - crop + 1).astype(jnp.float32)).astype(
        jnp.int32)
    return jnp.where(found, jnp.minimum(draw, size - crop), (size - crop) // 2)
  return offset(ki, height, h), offset(kj, width, w), h, w


def sample_rrc_params(key: Array, n: int, height: int, width: int, *,
                      min_scale: Union[float, Array] = 0.08,
                      max_scale: Union[float, Array] = 1.0,
                      ratio: Sequence[float] = RATIO,
                      per_image: bool = True) -> CropParams:
  """RandomResizedCrop boxes for n images of size (height, width).

  Args:
    key: PRNG key.
    n: number of images.
    height: image height (static).
    width: image width (static).
    min_scale: lower end of the area fraction; may be traced (CDA's
      scheduled minimum, METHODS.md C.2).
    max_scale: upper end of the area fraction.
    ratio: aspect-ratio range (w / h), sampled log-uniformly.
    per_image: one box per image (relabel, post-train) or one box shared
      by the whole batch (recover, METHODS.md C.0).

  Returns:
    CropParams with (n,) int32 fields.
  """
  sample = lambda k: _sample_box(k, height, width, min_scale, max_scale,
                                 tuple(ratio))
  if per_image:
    top, left, h, w = jax.vmap(sample)(jax.random.split(key, n))
  else:
    top, left, h, w = (jnp.broadcast_to(a, (n,)) for a in sample(key))
  return CropParams(top=top, left=left, height=h, width=w)


def apply_rrc(x: Array, params: CropParams, *, edge: str = "clamp") -> Array:
  """Crops box i of `params` from image i of x and resizes it to (H, W).

  Bilinear (`jax.image.scale_and_translate`, method "linear"),
  differentiable in x. edge="clamp" replicates the box's edge pixels
  outside it first (equal to torchvision's crop then bilinear resize);
  edge="bleed" lets the border half pixel see the neighbours outside the
  box. The full box (0, 0, H, W) returns x.
  """
  if edge not in ("clamp", "bleed"):
    raise ValueError(f"edge must be 'clamp' or 'bleed', got {edge!r}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"apply_rrc needs float images, got {x.dtype}.")
  _, hh, ww, _ = x.shape

  def one(img, top, left, h, w):
    if edge == "clamp":
      rows = jnp.clip(jnp.arange(hh), top, top + h - 1)
      cols = jnp.clip(jnp.arange(ww), left, left + w - 1)
      img = img[rows][:, cols]
    hf, wf = h.astype(img.dtype), w.astype(img.dtype)
    scale = jnp.stack([hh / hf, ww / wf])
    trans = jnp.stack([-top.astype(img.dtype) * (hh / hf),
                       -left.astype(img.dtype) * (ww / wf)])
    return jax.image.scale_and_translate(img, img.shape, (0, 1), scale, trans,
                                         method="linear", antialias=False)
  return jax.vmap(one)(x, params.top, params.left, params.height,
                       params.width)


def random_resized_crop(key: Array, x: Array, *,
                        min_scale: Union[float, Array] = 0.08,
                        max_scale: Union[float, Array] = 1.0,
                        ratio: Sequence[float] = RATIO,
                        per_image: bool = True,
                        edge: str = "clamp") -> tuple[Array, CropParams]:
  """`sample_rrc_params` then `apply_rrc`; returns (images, params)."""
  n, h, w, _ = x.shape
  p = sample_rrc_params(key, n, h, w, min_scale=min_scale,
                        max_scale=max_scale, ratio=ratio, per_image=per_image)
  return apply_rrc(x, p, edge=edge), p


# ------------------------------------------------------------ flip, roll.


def sample_flips(key: Array, n: int, *, p: float = 0.5,
                 per_image: bool = True) -> Array:
  """(n,) bool: flip image i (probability p; one draw if not per_image)."""
  if per_image:
    return jax.random.bernoulli(key, p, (n,))
  return jnp.broadcast_to(jax.random.bernoulli(key, p), (n,))


def apply_flip(x: Array, flips: Array) -> Array:
  """Flips image i of x left-right where flips[i]."""
  return jnp.where(flips[:, None, None, None], x[:, :, ::-1, :], x)


def _jitter_range(jitter) -> tuple[int, int]:
  if isinstance(jitter, (tuple, list)):
    lo, hi = (int(j) for j in jitter)
  else:
    lo, hi = 0, int(jitter)
  if lo > hi:
    raise ValueError(f"jitter range ({lo}, {hi}) is empty.")
  return lo, hi


def sample_shifts(key: Array, n: int, jitter: Union[int, Sequence[int]], *,
                  per_image: bool = True) -> Array:
  """(n, 2) int32 (row, column) shifts, uniform on {lo, ..., hi}.

  jitter: an int j means {0, ..., j} (the recover scripts'
  `random.randint(0, jitter)`, both ends included, one draw per axis,
  METHODS.md C.1); a pair (lo, hi) means {lo, ..., hi}.
  """
  lo, hi = _jitter_range(jitter)
  shape = (n, 2) if per_image else (2,)
  s = jax.random.randint(key, shape, lo, hi + 1, jnp.int32)
  return s if per_image else jnp.broadcast_to(s, (n, 2))


def roll(x: Array, shift: Array) -> Array:
  """Rolls the whole batch by one (row, column) shift (may be traced).

  torch.roll(x, shifts=(s0, s1), dims=(H, W)): cyclic, element (r, c)
  moves to (r + s0, c + s1) mod (H, W).
  """
  shift = jnp.asarray(shift)
  return jnp.roll(x, (shift[0], shift[1]), axis=(1, 2))


def apply_roll(x: Array, shifts: Array) -> Array:
  """Rolls image i of x by shifts[i] = (row, column) (see `roll`)."""
  return jax.vmap(lambda img, s: jnp.roll(img, (s[0], s[1]), axis=(0, 1)))(
      x, shifts)


# ------------------------------------------------------------ composite.


@flax.struct.dataclass
class AugParams:
  """Parameters of one RRC -> flip -> roll pass; None = op disabled."""
  crop: Optional[CropParams] = None
  flips: Optional[Array] = None
  shifts: Optional[Array] = None


def sample_augment(key: Array, n: int, height: int, width: int, *,
                   crop: bool = True,
                   min_scale: Union[float, Array] = 0.08,
                   max_scale: Union[float, Array] = 1.0,
                   ratio: Sequence[float] = RATIO,
                   flip: bool = True,
                   jitter: Union[None, int, Sequence[int]] = None,
                   per_image: bool = False) -> AugParams:
  """Parameters of RRC (if crop), flip (if flip) and roll (if jitter).

  The defaults are SRe2L's ImageNet recover augmentation without the roll
  (RRC scale (0.08, 1), flip p 0.5) drawn once per batch (METHODS.md C.0,
  C.1); CIFAR recover is crop=False, flip=False, jitter=4. per_image=True
  draws everything per image (relabel, post-train).
  """
  kc, kf, ks = jax.random.split(key, 3)
  return AugParams(
      crop=sample_rrc_params(kc, n, height, width, min_scale=min_scale,
                             max_scale=max_scale, ratio=ratio,
                             per_image=per_image) if crop else None,
      flips=sample_flips(kf, n, per_image=per_image) if flip else None,
      shifts=(sample_shifts(ks, n, jitter, per_image=per_image)
              if jitter is not None else None))


def apply_augment(x: Array, params: AugParams, *,
                  edge: str = "clamp") -> Array:
  """RRC, then flip, then roll: the recover scripts' order (C.1, C.2)."""
  if params.crop is not None:
    x = apply_rrc(x, params.crop, edge=edge)
  if params.flips is not None:
    x = apply_flip(x, params.flips)
  if params.shifts is not None:
    x = apply_roll(x, params.shifts)
  return x


def augment(key: Array, x: Array, *, edge: str = "clamp",
            **kwargs) -> tuple[Array, AugParams]:
  """`sample_augment` (keyword options) then `apply_augment`."""
  n, h, w, _ = x.shape
  p = sample_augment(key, n, h, w, **kwargs)
  return apply_augment(x, p, edge=edge), p


# --------------------------------------------------------- CutMix, Mixup.


@flax.struct.dataclass
class MixParams:
  """One batch mix.

  Attributes:
    perm: (N,) int32 partner of each image (`torch.randperm`).
    lam: the drawn lam ~ Beta(alpha, alpha) (SRe2L stores this `mix_lam`).
    lam_area: the weight of each image's own content: lam for Mixup;
      1 - box area / (H W) for CutMix (the box is clipped at the border).
      `mix_targets` uses it.
    box: (4,) int32 (top, left, bottom, right), half-open; zeros for Mixup.
    kind: "cutmix" or "mixup" (static).
  """
  perm: Array
  lam: Array
  lam_area: Array
  box: Array
  kind: str = flax.struct.field(pytree_node=False, default="cutmix")


def sample_cutmix(key: Array, n: int, height: int, width: int, *,
                  alpha: float = 1.0) -> MixParams:
  """SRe2L `rand_bbox` + `cutmix` parameters (METHODS.md C.1 relabel).

  lam ~ Beta(alpha, alpha); cut = int(size * sqrt(1 - lam)) per axis;
  centre uniform on the pixel grid; box = clip(centre -/+ cut // 2).
  """
  kl, kr, kc, kp = jax.random.split(key, 4)
  lam = jax.random.beta(kl, alpha, alpha)
  rat = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * rat).astype(jnp.int32)
  cut_w = jnp.floor(width * rat).astype(jnp.int32)
  cy = jax.random.randint(kr, (), 0, height, jnp.int32)
  cx = jax.random.randint(kc, (), 0, width, jnp.int32)
  top = jnp.clip(cy - cut_h // 2, 0, height)
  bottom = jnp.clip(cy + cut_h // 2, 0, height)
  left = jnp.clip(cx - cut_w // 2, 0, width)
  right = jnp.clip(cx + cut_w // 2, 0, width)
  area = ((bottom - top) * (right - left)).astype(jnp.float32)
  return MixParams(perm=jax.random.permutation(kp, n).astype(jnp.int32),
                   lam=lam, lam_area=1.0 - area / (height * width),
                   box=jnp.stack([top, left, bottom, right]), kind="cutmix")


def sample_mixup(key: Array, n: int, *, alpha: float = 0.8) -> MixParams:
  """Mixup parameters: lam ~ Beta(alpha, alpha), one permutation."""
  kl, kp = jax.random.split(key)
  lam = jax.random.beta(kl, alpha, alpha)
  return MixParams(perm=jax.random.permutation(kp, n).astype(jnp.int32),
                   lam=lam, lam_area=lam, box=jnp.zeros((4,), jnp.int32),
                   kind="mixup")


def apply_mix(x: Array, params: MixParams) -> Array:
  """The mixed batch: CutMix pastes box of x[perm]; Mixup blends."""
  partner = x[params.perm]
  if params.kind == "mixup":
    lam = params.lam.astype(x.dtype)
    return lam * x + (1 - lam) * partner
  if params.kind != "cutmix":
    raise ValueError(f"unknown mix kind {params.kind!r}.")
  _, h, w, _ = x.shape
  top, left, bottom, right = (params.box[i] for i in range(4))
  r = jnp.arange(h)[:, None]
  c = jnp.arange(w)[None, :]
  inside = (r >= top) & (r < bottom) & (c >= left) & (c < right)
  return jnp.where(inside[None, :, :, None], partner, x)


def cutmix(key: Array, x: Array, *,
           alpha: float = 1.0) -> tuple[Array, MixParams]:
  """CutMix of the batch x; returns (mixed images, MixParams)."""
  n, h, w, _ = x.shape
  p = sample_cutmix(key, n, h, w, alpha=alpha)
  return apply_mix(x, p), p


def mixup(key: Array, x: Array, *,
          alpha: float = 0.8) -> tuple[Array, MixParams]:
  """Mixup of the batch x; returns (mixed images, MixParams)."""
  p = sample_mixup(key, x.shape[0], alpha=alpha)
  return apply_mix(x, p), p


def mix_targets(t: Array, params: MixParams) -> Array:
  """lam_area * t + (1 - lam_area) * t[perm], for targets of shape (N, ...).

  For a KD loss whose targets are not recomputed on the mixed input (the
  SRe2L family's teachers see the mixed images instead, C.1).
  """
  lam = params.lam_area.astype(t.dtype)
  return lam * t + (1 - lam) * t[params.perm]
