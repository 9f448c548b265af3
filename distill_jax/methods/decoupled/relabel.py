"""Relabel: the teacher's soft labels on augmented views of the images.

Two label sources, both keyed so that they do not depend on the batch size
or the loader order (a user-reported bug of the released FKD labels,
METHODS.md C.8 "Users' reports"):

  * online: the teacher is run on each training batch (DELT/RDED, SRe2L's
    CIFAR and Tiny code); it sees exactly the student's (mixed) input;
  * stored (FKD-style): for epoch e and image i the view is drawn from
    `view_key(seed, e, i)` (random-resized crop and flip, per image) and the
    teacher's logits on it are stored in fp16 (or the top-k of them), so a
    student trained later re-creates the same views from the same keys and
    reads its targets by (e, i). With CutMix the stored targets are mixed by
    box area (`data.crops.mix_targets`) since the teacher never saw the
    mixed image.

The teacher may be a `relabel.Ensemble` of teachers (G-VBSM): its soft
labels are the mean of the members' softmax (online), its logits the mean
of the members' logits (stored labels and the MSE target, as G-VBSM's FKD
files hold the ensemble-mean logits).

The teacher's BatchNorm mode is a flag (`teacher_bn`): "eval" uses running
statistics; "train" normalises with each batch's statistics, as SRe2L's
CIFAR relabel code does by never calling `.eval()` (C.6 item 3; the running
statistics are not updated here, so the labels stay a pure function).

Stored labels are computed in chunks of images, each sharded over the
mesh's "data" axis (`platform.mesh.map_sharded`; eval-mode chunks are
padded to the axis size, train-mode chunks must divide it).
"""

import dataclasses
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.data import crops
from distill_jax.nn import stat_models
from distill_jax.platform import mesh as sharding

BN_MODES = ("eval", "train")


@dataclasses.dataclass(frozen=True)
class ViewConfig:
  """The per-image augmentation of relabel and post-train views."""
  crop: bool = True
  min_scale: float = 0.08  # RRC scale (min, 1); RDED/DELT: 0.25 on IN-1K.
  flip: bool = False
  seed: int = 0


def view_key(seed: int, epoch, image_id):
  """The PRNG key of image `image_id`'s view in epoch `epoch`."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch),
                            image_id)


def views(cfg: ViewConfig, epoch, image_ids, images):
  """The views of `images` (ids `image_ids`) in `epoch`: RRC + flip."""
  keys = jax.vmap(lambda i: view_key(cfg.seed, epoch, i))(image_ids)
  h, w = images.shape[1:3]

  def one(key, img):
    p = crops.sample_augment(key, 1, h, w, crop=cfg.crop,
                             min_scale=cfg.min_scale, flip=cfg.flip)
    return crops.apply_augment(img[None], p)[0]
  return jax.vmap(one)(keys, images)


class Ensemble:
  """Teachers used together (the `teacher.Teacher` interface).

  `model.apply(variables, x, train=)` returns the mean of the members'
  logits and the first member's aux (features); `variables` is the tuple
  of the members' variables; `meta["pool"]` lists the members' recipes.
  """

  def __init__(self, members):
    self.members = tuple(members)
    if not self.members:
      raise ValueError("an ensemble needs at least one teacher.")
    models = tuple(m.model for m in self.members)

    def apply(variables, x, *, train: bool = False):
      outs = [m.apply(v, x, train=train) for m, v in zip(models, variables)]
      return sum(o[0] for o in outs) / len(outs), outs[0][1]
    self.model = stat_models.StatModel(
        init=None, apply=apply, name="ensemble",
        spec={"arch": "ensemble", "members": [m.spec for m in models]})
    self.variables = tuple(m.variables for m in self.members)
    self.meta = {"kind": "ensemble",
                 "pool": [m.meta["recipe"] for m in self.members],
                 "member_test_acc": [m.meta["test_acc"]
                                     for m in self.members]}

  def logits(self, x, *, train: bool = False):
    return self.model.apply(self.variables, x, train=train)[0]


def teacher_logits(teacher, images, bn_mode: str = "eval"):
  """Teacher logits, BN with running ("eval") or batch ("train") stats
  (an `Ensemble`: the mean of its members' logits)."""
  if bn_mode not in BN_MODES:
    raise ValueError(f"teacher_bn={bn_mode!r}; choose one of {BN_MODES}.")
  logits, _ = teacher.model.apply(teacher.variables, images,
                                  train=bn_mode == "train")
  return logits


def teacher_probs(teacher, images, temperature: float,
                  bn_mode: str = "eval"):
  """softmax(logits / T); an `Ensemble`: the mean of its members'."""
  if isinstance(teacher, Ensemble):
    return sum(jax.nn.softmax(teacher_logits(m, images, bn_mode)
                              / temperature)
               for m in teacher.members) / len(teacher.members)
  return jax.nn.softmax(teacher_logits(teacher, images, bn_mode)
                        / temperature)


@dataclasses.dataclass
class StoredLabels:
  """FKD-style soft labels: logits per (epoch, image), fp16 or top-k.

  Attributes:
    view: the view recipe (with its seed): views are re-created from it.
    logits: (E, N, C) float16, or None when top-k is stored.
    topk_values: (E, N, k) float16 logits of the top-k classes, or None.
    topk_index: (E, N, k) int16 class indices, or None.
    num_classes: C.
  """
  view: ViewConfig
  logits: np.ndarray | None
  topk_values: np.ndarray | None
  topk_index: np.ndarray | None
  num_classes: int

  @property
  def epochs(self) -> int:
    arr = self.logits if self.logits is not None else self.topk_values
    return int(arr.shape[0])

  def nbytes(self) -> int:
    """Bytes of the stored labels (the per-epoch view key is the seed and
    the epoch number, so nothing else is stored)."""
    return sum(int(a.nbytes) for a in (self.logits, self.topk_values,
                                       self.topk_index) if a is not None)

  def dense(self) -> jax.Array:
    """(E, N, C) float32 logits; top-k entries elsewhere get -inf-like
    values (-1e4), so their softmax puts (almost) no mass there."""
    if self.logits is not None:
      return jnp.asarray(self.logits, jnp.float32)
    e, n, _ = self.topk_values.shape
    out = jnp.full((e, n, self.num_classes), -1e4, jnp.float32)
    ei = jnp.arange(e)[:, None, None]
    ni = jnp.arange(n)[None, :, None]
    return out.at[ei, ni, jnp.asarray(self.topk_index, jnp.int32)].set(
        jnp.asarray(self.topk_values, jnp.float32))


def store(teacher, images, epochs: int, view: ViewConfig, *,
          bn_mode: str = "eval", top_k: int = 0,
          chunk: int = 500) -> StoredLabels:
  """Teacher logits on every image's view of every epoch (FKD relabel)."""
  images = jnp.asarray(images)
  n = images.shape[0]
  ids = jnp.arange(n)

  @jax.jit
  def one_epoch(e, x, i):
    return teacher_logits(teacher, views(view, e, i, x), bn_mode)

  per_epoch = []
  for e in range(epochs):
    logits_e = sharding.map_sharded(
        lambda xi, e=e: one_epoch(jnp.int32(e), *xi), (images, ids), chunk,
        sharding.DATA, pad_as=None if bn_mode == "eval" else
        "relabel chunk (train-mode teacher BN)")
    per_epoch.append(np.asarray(logits_e, np.float32))
  logits = np.stack(per_epoch)
  c = logits.shape[-1]
  if top_k and top_k < c:
    index = np.argsort(-logits, -1)[..., :top_k]
    values = np.take_along_axis(logits, index, -1)
    return StoredLabels(view, None, values.astype(np.float16),
                        index.astype(np.int16), c)
  return StoredLabels(view, logits.astype(np.float16), None, None, c)


def stored_targets(labels: StoredLabels, steps_per_epoch: int,
                   temperature: float, output: str = "probs") -> tuple:
  """(augment, targets) callables for `eval.fit.supervised`.

  Step t is in epoch t // steps_per_epoch (cycling over the stored epochs);
  image i's view and logits are those stored for (epoch, i). Targets are
  the teacher's probabilities at `temperature` (mixed by box area under
  CutMix/Mixup), or with `output="logits"` the stored logits (mixed alike).
  """
  dense = labels.dense()
  stored_epochs = labels.epochs

  def epoch_of(t):
    return (t // steps_per_epoch) % stored_epochs

  def augment(key, t, idx, images):
    del key
    return views(labels.view, epoch_of(t), idx, images)

  def targets(key, t, idx, images, mixing):
    del key, images
    z = dense[epoch_of(t), idx]
    p = z if output == "logits" else jax.nn.softmax(z / temperature)
    return p if mixing is None else crops.mix_targets(p, mixing)
  return augment, targets


def online_targets(teacher, view: ViewConfig, temperature: float,
                   bn_mode: str = "eval", output: str = "probs"):
  """(augment, targets) callables: per-image views from (step, image id),
  the teacher's probabilities at `temperature` (`teacher_probs`), or with
  `output="logits"` its logits, on exactly the (mixed) student input."""
  def augment(key, t, idx, images):
    del key
    return views(view, t, idx, images)

  def targets(key, t, idx, images, mixing):
    del key, t, idx, mixing
    if output == "logits":
      return teacher_logits(teacher, images, bn_mode)
    return teacher_probs(teacher, images, temperature, bn_mode)
  return augment, targets


def with_hard_labels(targets, y, num_classes: int):
  """`targets` with the images' one-hot labels (mixed under CutMix/Mixup)
  appended: (N, K) -> (N, 2K), for losses that also use the label."""
  onehot = jax.nn.one_hot(jnp.asarray(y), num_classes)

  def fn(key, t, idx, images, mixing):
    z = onehot[idx]
    z = z if mixing is None else crops.mix_targets(z, mixing)
    return jnp.concatenate([targets(key, t, idx, images, mixing), z], -1)
  return fn


def hard_targets(y, view: ViewConfig | None, num_classes: int) -> tuple:
  """(augment, targets) for hard labels: one-hot (mixed if CutMix/Mixup)."""
  onehot = jax.nn.one_hot(jnp.asarray(y), num_classes)

  def augment(key, t, idx, images):
    del key
    return images if view is None else views(view, t, idx, images)

  def targets(key, t, idx, images, mixing):
    del key, t, images
    z = onehot[idx]
    return z if mixing is None else crops.mix_targets(z, mixing)
  return augment, targets

