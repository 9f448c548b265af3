"""`DistilledSet`: the one type of a distilled set, for every method.

Dataset Distillation (DD), RaT-BPTT and Boost-DD all produce N images with
labels and, depending on the method, learned learning rates and an order in
which the inner problem sees the images. A `DistilledSet` holds all of it:

  images       (N, H, W, C) float32 in the model's input space: normalised
               with `mean`/`std` and, when `zca` is set, ZCA-whitened.
  labels       (N,) int32 the class each image was distilled for.
  soft_labels  (N, K) float32 learned soft targets that replace the one-hot
               `labels` in training (cross-entropy targets as learned, not
               necessarily summing to 1), or None. The class of an image is
               `labels`, not the argmax of its soft targets.
  raw_lr       (T,) float32 learned learning rate of each inner step t,
               lr_t = softplus(raw_lr[t]) (`lrs`); None when not learned.
  schedule     (T, n) int32: the indices of the images inner step t trains
               on. DD: step t sees the images of distilled step t % S, which
               are stored step-major (image s * n + j is slot j of step s).
               None: every inner step draws a class-balanced subsample of the
               whole set (RaT-BPTT, Boost-DD).
  block        (N,) int32 Boost-DD block of each image (0 = first learned),
               or None.
  mean, std    (C,) float32 per-channel normalisation in [0, 1] pixel units:
               pixel = normalised * std + mean.
  zca          `zca.Zca` applied after the normalisation, or None.
  class_names  the K class names, in label order.
  dataset      dataset name; `method` one of METHODS; `model` the network it
               was distilled for ({"arch": ..., hyper-parameters}, see
               `model_spec`); `metadata` any JSON (run config, steps, ...).
  init_params  the fixed initial network of DD's fixed-init modes, or None.
  format_version  the file format version it was read from (see `storage`).

Two views feed the existing evaluation code: `as_dd()` gives the (S, n, ...)
steps, labels and raw lrs that `evaluate.replay_accuracy` replays, and
`per_class()` the class-major (K, P, ...) arrays of `rat_bptt` / `rat_eval`.
"""

import json
from typing import NamedTuple

import flax.struct
import numpy as np

from distill_jax.data import zca as zca_lib

FORMAT_VERSION = 2
# Bilevel methods, then the decoupled family and its baselines (hard
# labels stored; soft labels come from the teacher, `methods.decoupled`),
# then sets of other toolkits (`distill_jax.importers`; the source and its
# preprocessing contract are in `metadata`).
METHODS = ("dd", "rat_bptt", "boost_dd", "sre2l", "cda", "delt", "gvbsm",
           "rded", "random_real", "scdd", "imported")
# Configuration fields that define the network (`models.build`).
MODEL_FIELDS = ("arch", "init", "width", "depth", "norm", "pooling",
                "mlp_hidden")


def model_spec(cfg) -> dict:
  """The network description stored with a set: arch and its fields.

  Args:
    cfg: a run configuration (`DistillConfig`, `RatConfig`) or its dict.
  """
  fields = cfg if isinstance(cfg, dict) else vars(cfg)
  out = {}
  for name in MODEL_FIELDS:
    if fields.get(name) is not None:
      value = fields[name]
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


class DDView(NamedTuple):
  """A set as DD's ordered steps: inner step t uses x[t % S], lr_t."""
  x: np.ndarray  # (S, n, H, W, C)
  labels: np.ndarray  # (S, n) int32
  soft_labels: np.ndarray | None  # (S, n, K) float32
  raw_lr: np.ndarray  # (S * epochs,)
  epochs: int

  @property
  def steps(self) -> int:
    return self.x.shape[0]

  @property
  def lrs(self) -> np.ndarray:
    """(S * epochs,) effective learning rates softplus(raw_lr)."""
    return _softplus(self.raw_lr)

  def learned(self) -> dict:
    """The learned pytree of DD: {"x", "raw_lr"}, and "y" if soft."""
    out = {"x": self.x, "raw_lr": self.raw_lr}
    if self.soft_labels is not None:
      out["y"] = self.soft_labels
    return out


class PerClassView(NamedTuple):
  """A set as class-major arrays: image j of class c is x[c, j]."""
  x: np.ndarray  # (K, P, H, W, C)
  targets: np.ndarray  # (K, P, K) float32: one-hot for hard labels.
  soft: bool
  raw_lr: np.ndarray | None  # (T,)
  block: np.ndarray | None  # (K, P)

  def learned(self) -> dict:
    """The learned pytree of `rat_bptt`: x, y if soft, raw_lr if any."""
    out = {"x": self.x}
    if self.soft:
      out["y"] = self.targets
    if self.raw_lr is not None:
      out["raw_lr"] = self.raw_lr
    return out


def _softplus(raw) -> np.ndarray:
  return np.logaddexp(np.asarray(raw, np.float32),
                      np.float32(0)).astype(np.float32)


def _f32(a) -> np.ndarray:
  return np.asarray(a, np.float32)


def _opt(a, dtype):
  return None if a is None else np.asarray(a, dtype)


@flax.struct.dataclass
class DistilledSet:
  """A distilled set of any method; see the module docstring for fields."""
  images: np.ndarray
  labels: np.ndarray
  soft_labels: np.ndarray | None
  raw_lr: np.ndarray | None
  schedule: np.ndarray | None
  block: np.ndarray | None
  mean: np.ndarray
  std: np.ndarray
  zca: zca_lib.Zca | None
  init_params: dict | None
  class_names: tuple[str, ...] = flax.struct.field(pytree_node=False)
  dataset: str = flax.struct.field(pytree_node=False)
  method: str = flax.struct.field(pytree_node=False)
  model: dict = flax.struct.field(pytree_node=False)
  metadata: dict = flax.struct.field(pytree_node=False)
  format_version: int = flax.struct.field(pytree_node=False,
                                          default=FORMAT_VERSION)

  # Constructors.

  @classmethod
  def from_dd(cls, x, labels, raw_lr, *, epochs: int, mean, std,
              class_names, dataset: str, model: dict, metadata: dict,
              soft_labels=None, init_params=None,
              zca=None) -> "DistilledSet":
    """A DD set from its steps.

    Args:
      x: (S, n, H, W, C) images of the S distilled steps.
      labels: (S, n) int classes.
      raw_lr: (S * epochs,) learned raw learning rates.
      epochs: E, passes over the S steps.
      mean: per-channel normalisation mean.
      std: per-channel normalisation std.
      class_names: the K class names.
      dataset: dataset name.
      model: `model_spec` of the network.
      metadata: JSON-serialisable run description.
      soft_labels: (S, n, K) learned soft targets, or None.
      init_params: the fixed initial network (fixed-init modes), or None.
      zca: a `zca.Zca` the images are whitened with, or None.

    Returns:
      The `DistilledSet` (method "dd").
    """
    x = _f32(x)
    s, n = x.shape[:2]
    schedule = (np.tile(np.arange(s), epochs)[:, None] * n +
                np.arange(n)[None]).astype(np.int32)
    soft = None if soft_labels is None else _f32(soft_labels).reshape(
        s * n, -1)
    return cls(images=x.reshape(s * n, *x.shape[2:]),
               labels=np.asarray(labels, np.int32).reshape(s * n),
               soft_labels=soft, raw_lr=_f32(raw_lr), schedule=schedule,
               block=None,
               mean=_f32(mean), std=_f32(std), zca=zca,
               init_params=init_params, class_names=tuple(class_names),
               dataset=dataset, method="dd", model=dict(model),
               metadata=dict(metadata))

  @classmethod
  def from_per_class(cls, x, soft_labels=None, *, raw_lr=None, block=None,
                     mean, std, class_names, dataset: str, method: str,
                     model: dict, metadata: dict,
                     zca=None) -> "DistilledSet":
    """A RaT-BPTT / Boost-DD set from class-major arrays.

    Args:
      x: (K, P, H, W, C) images, P per class.
      soft_labels: (K, P, K) learned soft targets, or None (hard labels).
      raw_lr: (T,) learned raw learning rates, or None.
      block: (K, P) Boost-DD block of each image, or None.
      mean: per-channel normalisation mean.
      std: per-channel normalisation std.
      class_names: the K class names.
      dataset: dataset name.
      method: "rat_bptt" or "boost_dd".
      model: `model_spec` of the network.
      metadata: JSON-serialisable run description.
      zca: a `zca.Zca` the images are whitened with, or None.

    Returns:
      The `DistilledSet` (no schedule: class-balanced subsampling).
    """
    x = _f32(x)
    k, p = x.shape[:2]
    return cls(images=x.reshape(k * p, *x.shape[2:]),
               labels=np.repeat(np.arange(k), p).astype(np.int32),
               soft_labels=(None if soft_labels is None else
                            _f32(soft_labels).reshape(k * p, -1)),
               raw_lr=_opt(raw_lr, np.float32), schedule=None,
               block=None if block is None else np.broadcast_to(
                   np.asarray(block, np.int32), (k, p)).reshape(k * p),
               mean=_f32(mean), std=_f32(std), zca=zca, init_params=None,
               class_names=tuple(class_names), dataset=dataset,
               method=method, model=dict(model), metadata=dict(metadata))

  # Properties.

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def soft(self) -> bool:
    """Whether the set has learned soft labels."""
    return self.soft_labels is not None

  @property
  def targets(self) -> np.ndarray:
    """(N, K) float32 training targets: soft labels, else one-hot."""
    if self.soft:
      return _f32(self.soft_labels)
    return np.eye(self.num_classes, dtype=np.float32)[self.labels]

  @property
  def lrs(self) -> np.ndarray | None:
    """(T,) effective learned learning rates softplus(raw_lr), or None."""
    return None if self.raw_lr is None else _softplus(self.raw_lr)

  # Views.

  def as_dd(self) -> DDView:
    """The DD view: distinct steps (S, n, ...) cycled over `epochs`.

    S is the shortest period of the schedule, so a DD set comes back as it
    was distilled.

    Raises:
      ValueError: the set has no schedule or no learned learning rates.
    """
    if self.schedule is None or self.raw_lr is None:
      raise ValueError(
          f"This {self.method} set has no "
          f"{'replay schedule' if self.schedule is None else 'learned lrs'}"
          ", so it cannot be replayed as DD steps; evaluate it with "
          "`per_class()` and `rat_eval` (fresh networks trained on it).")
    sched = np.asarray(self.schedule)
    t = sched.shape[0]
    period = next(s for s in range(1, t + 1) if t % s == 0 and np.array_equal(
        sched, np.tile(sched[:s], (t // s, 1))))
    steps = sched[:period]
    return DDView(x=np.asarray(self.images)[steps],
                  labels=np.asarray(self.labels)[steps],
                  soft_labels=(None if self.soft_labels is None else
                               np.asarray(self.soft_labels)[steps]),
                  raw_lr=np.asarray(self.raw_lr), epochs=t // period)

  def per_class(self) -> PerClassView:
    """The class-major view (K, P, ...), images in stored order per class.

    Raises:
      ValueError: the classes do not all hold the same number of images.
    """
    cls_of = np.asarray(self.labels)
    counts = np.bincount(cls_of, minlength=self.num_classes)
    if counts.min() != counts.max():
      raise ValueError(
          f"Per-class view needs the same number of images in every class; "
          f"this set has {counts.tolist()}.")
    order = np.argsort(cls_of, kind="stable")
    k, p = self.num_classes, int(counts[0])
    x = np.asarray(self.images)[order].reshape(k, p, *self.images.shape[1:])
    targets = self.targets[order].reshape(k, p, k)
    block = (None if self.block is None else
             np.asarray(self.block)[order].reshape(k, p))
    return PerClassView(x=x, targets=targets, soft=self.soft,
                        raw_lr=self.raw_lr, block=block)

  def pixels(self) -> np.ndarray:
    """Images for viewing, (N, H, W, C) in [0, 1].

    Without ZCA: pixel = image * std + mean (clipped). ZCA's per-image
    normalisation removes each image's brightness and contrast, so whitened
    images are un-whitened and then stretched to [0, 1] one by one.
    """
    x = np.asarray(self.images, np.float32)
    if self.zca is None:
      return np.clip(x * self.std + self.mean, 0.0, 1.0)
    back = zca_lib.unwhiten(self.zca, x)
    lo = back.min(axis=(1, 2, 3), keepdims=True)
    hi = back.max(axis=(1, 2, 3), keepdims=True)
    return (back - lo) / np.maximum(hi - lo, 1e-8)

  def normalised_as(self, mean, std) -> "DistilledSet":
    """The same set in another normalisation: images re-expressed so that
    pixel = image * std + mean still holds with the new `mean`, `std`.

    Args:
      mean: (C,) or scalar target mean, in [0, 1] pixel units.
      std: (C,) or scalar target std (> 0).

    Returns:
      A new `DistilledSet` (self when the normalisation is already equal).

    Raises:
      ValueError: the set is ZCA-whitened (its images are not per-channel
        normalised pixels), or `std` is not positive.
    """
    c = np.shape(self.images)[-1]
    mean = np.broadcast_to(_f32(mean), (c,)).copy()
    std = np.broadcast_to(_f32(std), (c,)).copy()
    if self.zca is not None:
      raise ValueError("a ZCA-whitened set cannot be re-normalised per "
                       "channel.")
    if not np.all(std > 0):
      raise ValueError(f"std {std.tolist()} must be positive.")
    if np.array_equal(mean, self.mean) and np.array_equal(std, self.std):
      return self
    px = _f32(self.images) * _f32(self.std) + _f32(self.mean)
    return self.replace(images=((px - mean) / std).astype(np.float32),
                        mean=mean, std=std)

  # Checks.

  def validate(self) -> "DistilledSet":
    """Checks shapes, ranges and finiteness; returns self.

    Raises:
      ValueError: one line naming the inconsistency.
    """
    x, y = np.asarray(self.images), np.asarray(self.labels)
    if x.ndim != 4:
      raise ValueError(f"images have shape {x.shape}, expected (N, H, W, C).")
    n, k = x.shape[0], self.num_classes
    if k < 1:
      raise ValueError("no class names (one per class, in label order).")
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f"labels {y.dtype}{list(y.shape)} do not match "
                       f"{n} images (expected int ({n},)).")
    if n and (y.min() < 0 or y.max() >= k):
      raise ValueError(f"labels span [{y.min()}, {y.max()}], outside the "
                       f"{k} classes.")
    if self.soft and np.shape(self.soft_labels) != (n, k):
      raise ValueError(f"soft_labels shape {np.shape(self.soft_labels)} "
                       f"does not match {n} images and {k} classes.")
    if self.method not in METHODS:
      raise ValueError(f"method {self.method!r} is not one of {METHODS}.")
    for name in ("mean", "std"):
      shape = np.shape(getattr(self, name))
      if shape != (x.shape[-1],):
        raise ValueError(f"{name} must have one value per channel "
                         f"({x.shape[-1]}), got shape {shape}.")
    if self.raw_lr is not None and np.ndim(self.raw_lr) != 1:
      raise ValueError(f"raw_lr has shape {np.shape(self.raw_lr)}, "
                       "expected (T,).")
    if self.schedule is not None:
      s = np.asarray(self.schedule)
      if (s.ndim != 2 or not np.issubdtype(s.dtype, np.integer) or
          (s.size and (s.min() < 0 or s.max() >= n))):
        raise ValueError(f"schedule {s.dtype}{list(s.shape)} must be (T, n) "
                         f"integer indices into the {n} images.")
      if self.raw_lr is not None and len(self.raw_lr) != s.shape[0]:
        raise ValueError(f"{len(self.raw_lr)} learning rates do not fit the "
                         f"{s.shape[0]} inner steps of the schedule.")
    if self.block is not None and (np.shape(self.block) != (n,) or (
        n and np.min(self.block) < 0)):
      raise ValueError(f"block has shape {np.shape(self.block)}, expected "
                       f"({n},) non-negative block ids.")
    if self.zca is not None:
      d = int(np.prod(x.shape[1:]))
      if (np.shape(self.zca.matrix) != (d, d) or
          np.shape(self.zca.mean) != (d,)):
        raise ValueError(f"ZCA matrix {np.shape(self.zca.matrix)} / mean "
                         f"{np.shape(self.zca.mean)} do not fit images of "
                         f"{d} values.")
    arrays = [x, self.std, self.mean] + [
        a for a in (self.soft_labels, self.raw_lr, *(self.zca or ()))
        if a is not None]
    if not all(np.all(np.isfinite(a)) for a in arrays):
      raise ValueError("contains NaN or infinite values (a diverged run?).")
    try:
      json.dumps([self.model, self.metadata])
    except (TypeError, ValueError) as e:
      raise ValueError(f"model/metadata are not JSON-serialisable: {e}") from e
    return self
