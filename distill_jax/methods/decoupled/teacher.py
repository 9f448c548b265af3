"""Squeeze: a teacher trained on the real training set, cached by recipe.

The teacher is trained with the one routine that trains fresh networks
(`eval.fit.supervised`): SGD (momentum, L2 weight decay as PyTorch adds it
to the gradient) or AdamW (no decay on BN and bias parameters), a cosine or
constant schedule, pad-and-crop and flip augmentation per image (METHODS.md
C.1 squeeze, C.7 CPU settings: a less-trained teacher recovers better, so
the CPU presets train 2-5 epochs).

A trained teacher is stored with its recipe, its validation and test
accuracy, the dataset's normalisation and class names, and reused by every
method and run that asks for the same recipe on the same data
(`load_or_train`): the file name is a hash of both.
"""

import dataclasses
import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill_jax import data
from distill_jax.data import sources
from distill_jax.eval import accuracy as accuracy_lib
from distill_jax.eval import fit
from distill_jax.nn import stat_models
from distill_jax.platform import mesh as sharding
from distill_jax.run import storage

OPTIMIZERS = ("sgd", "adamw")
# cosine: to 0 (SRe2L); half_cosine: 0.5 (1 + cos(pi t / 2T)), ending at
# 0.5x (RDED/DELT post-train, METHODS.md C.5, C.6 item 5); constant.
SCHEDULES = ("cosine", "half_cosine", "constant")
_EVAL_APPLY = {}


def eval_apply(model):
  """`(variables, x) -> logits` in eval mode, one function per model spec
  (a stable, hashable apply for `eval.accuracy`, so nothing recompiles)."""
  key = json.dumps(model.spec, sort_keys=True)
  if key not in _EVAL_APPLY:
    _EVAL_APPLY[key] = lambda v, x: model.apply(v, x, train=False)[0]
  return _EVAL_APPLY[key]


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
  """How the teacher is trained (the recipe stored with it)."""
  arch: str = "convnet_bn"
  width: int = 64
  depth: int = 3
  norm: str = "batch"
  epochs: float = 2.0
  batch_size: int = 256
  optimizer: str = "sgd"
  lr: float = 0.05
  momentum: float = 0.9
  weight_decay: float = 5e-4
  schedule: str = "cosine"
  pad_crop: int = 0  # RandomCrop padding in pixels (4 for CIFAR); 0: off.
  flip: bool = False  # horizontal flips (off for digits and clothes).
  seed: int = 0

  def __post_init__(self):
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"teacher optimizer={self.optimizer!r}; choose one "
                       f"of {OPTIMIZERS}.")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"teacher schedule={self.schedule!r}; choose one of "
                       f"{SCHEDULES}.")
    if not self.epochs > 0 or not self.lr > 0 or self.batch_size < 1:
      raise ValueError("teacher epochs, lr and batch_size must be > 0.")
    if self.pad_crop < 0 or self.weight_decay < 0:
      raise ValueError("teacher pad_crop and weight_decay must be >= 0.")

  def model_spec(self, ds: data.Dataset) -> dict:
    return stat_models.spec_for(self.arch, width=self.width,
                                depth=self.depth, norm=self.norm,
                                num_classes=ds.num_classes,
                                image_shape=ds.image_shape)


def optimizer(name: str, lr: float, total_steps: int, *, schedule: str,
              momentum: float = 0.9, weight_decay: float = 0.0,
              end_factor: float = 0.0) -> optax.GradientTransformation:
  """The optimiser of teachers and students.

  "sgd": PyTorch SGD (L2 decay added to the gradient, then momentum);
  "adamw": decoupled decay, not applied to 1-D parameters (BN scale and
  bias, biases), as the released post-train code's `get_parameters` does.
  `schedule` "cosine" decays lr to `end_factor` x lr over `total_steps`;
  "half_cosine" runs the first half of a cosine twice as long (to 0.5x).
  """
  if schedule == "cosine":
    rate = optax.cosine_decay_schedule(lr, max(1, total_steps),
                                       alpha=end_factor)
  elif schedule == "half_cosine":
    rate = optax.cosine_decay_schedule(lr, 2 * max(1, total_steps))
  else:
    rate = lr
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(rate, momentum=momentum or None))
  return optax.adamw(rate, weight_decay=weight_decay,
                     mask=lambda p: jax.tree.map(lambda a: a.ndim > 1, p))


def pad_crop_flip(pad: int, flip: bool):
  """Per-image RandomCrop(size, padding=pad) and horizontal flip, or None."""
  if not pad and not flip:
    return None

  def one(key, img):
    k1, k2, k3 = jax.random.split(key, 3)
    if pad:
      h, w = img.shape[:2]
      padded = jnp.pad(img, ((pad, pad), (pad, pad), (0, 0)))
      dy = jax.random.randint(k1, (), 0, 2 * pad + 1)
      dx = jax.random.randint(k2, (), 0, 2 * pad + 1)
      img = jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, img.shape[2]))
    if flip:
      img = jnp.where(jax.random.bernoulli(k3), img[:, ::-1], img)
    return img

  def augment(key, t, idx, images):
    del t, idx
    return jax.vmap(one)(jax.random.split(key, images.shape[0]), images)
  return augment


def cross_entropy(logits, labels):
  """Mean CE against integer labels or (mixed) probability targets."""
  logp = jax.nn.log_softmax(logits)
  if labels.ndim == 1:
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1))
  return -jnp.mean(jnp.sum(labels * logp, -1))


def train(cfg: TeacherConfig, ds: data.Dataset):
  """Trains the teacher on the train split; returns (model, variables).

  In memory the whole run is one jitted loop over the split on the device;
  a streamed split (`data.sources`) runs the same steps from a host loop
  that reads each batch from the files (`fit.fit_host`)."""
  model = stat_models.build(cfg.model_spec(ds))
  n = len(ds.y_train)
  batch = min(cfg.batch_size, n)
  per_epoch = max(1, n // batch)
  steps = max(1, int(round(cfg.epochs * per_epoch)))
  epochs = -(-steps // per_epoch)
  tx = optimizer(cfg.optimizer, cfg.lr, steps, schedule=cfg.schedule,
                 momentum=cfg.momentum, weight_decay=cfg.weight_decay)
  split = sources.of(ds, "train")
  streamed = sources.is_streamed(split)
  x = None if streamed else jnp.asarray(
      data.normalize(ds.x_train, ds.mean, ds.std)
      if ds.x_train.dtype == np.uint8 else ds.x_train)
  y = jnp.asarray(ds.y_train)
  indices = fit.epoch_batches(n, batch)
  trainer = fit.supervised(
      model, tx, x, indices, cross_entropy,
      targets=lambda key, t, idx, images, mixing: y[idx],
      augment=pad_crop_flip(cfg.pad_crop, cfg.flip),
      mesh=sharding.data_mesh(batch, "teacher batch size"))
  if not streamed:
    return model, fit_one(trainer, cfg.seed, steps, epochs)
  per_net = jax.tree.map(lambda a: a[0], net_keys(cfg.seed, epochs))
  read = lambda idx: _floats(split.step_arrays(idx)[0], ds)
  return model, jax.block_until_ready(
      fit.fit_host(trainer, per_net, steps, indices, read))


def _floats(x, ds):
  return data.normalize(x, ds.mean, ds.std) if x.dtype == np.uint8 else x


def net_keys(seed: int, epochs: int) -> dict:
  """One network's init, augmentation and per-epoch order keys from
  `seed`, with a leading network axis of 1."""
  k_init, k_order, k_aug = jax.random.split(jax.random.key(seed), 3)
  return {"init_key": k_init[None], "key": k_aug[None],
          "keys": jax.random.split(k_order, epochs)[None]}


def fit_one(trainer: fit.Trainer, seed: int, steps: int, epochs: int):
  """Runs `trainer` for `steps` steps on one network (`net_keys(seed)`);
  returns its final output."""
  out = jax.jit(lambda p: fit.fit(trainer, p, (steps,)))(
      net_keys(seed, epochs))
  return jax.block_until_ready(jax.tree.map(lambda a: a[0, 0], out))


def accuracy(model, variables, x, y=None, norm=None) -> float:
  """Eval-mode (running statistics) accuracy of one network, in [0, 1],
  on (x, y) or on a split (`data.sources`: in memory or streamed)."""
  batched = jax.tree.map(lambda a: a[None], variables)
  split = (x, y) if y is not None else x
  return float(accuracy_lib.accuracy_on(eval_apply(model), batched, split,
                                        batch=500, norm=norm)[0])


def test_accuracy(model, variables, ds: data.Dataset) -> float:
  """`accuracy` on the test split (read from the files if streamed)."""
  return accuracy(model, variables, sources.of(ds, "test"), norm=norm_of(ds))


def norm_of(ds: data.Dataset):
  """(mean, std) when the splits hold uint8 pixels, else None."""
  return (tuple(ds.mean), tuple(ds.std)) if ds.x_test.dtype == np.uint8 \
      else None


def fingerprint(cfg, ds: data.Dataset) -> str:
  """Hash of the recipe (a config dataclass or a dict) and of the training
  data the teacher sees."""
  recipe = cfg if isinstance(cfg, dict) else dataclasses.asdict(cfg)
  h = hashlib.sha256(json.dumps(
      {"recipe": recipe, "dataset": ds.name,
       "shape": list(ds.image_shape), "n_train": int(len(ds.y_train)),
       "mean": list(map(float, ds.mean)), "std": list(map(float, ds.std))},
      sort_keys=True).encode())
  h.update(np.ascontiguousarray(ds.y_train).tobytes())
  h.update(np.ascontiguousarray(sources.images(ds, "train")[:64]).tobytes())
  return h.hexdigest()[:16]


class Teacher:
  """A trained teacher: model, variables and what it was trained on."""

  def __init__(self, model, variables, meta: dict):
    self.model, self.variables, self.meta = model, variables, meta

  def logits(self, x, *, train: bool = False):
    """Logits on normalised images; BN in eval (running) or train mode."""
    logits, _ = self.model.apply(self.variables, x, train=train)
    return logits


def load_or_train(cfg: TeacherConfig, ds: data.Dataset, cache_dir: str, *,
                  log=print) -> Teacher:
  """The cached teacher for (recipe, data), trained and stored if absent.

  The file `cache_dir/teacher_<hash>.npz` holds the variables and the
  metadata: recipe, model spec, validation and test accuracy, training
  time, the dataset's normalisation and class names.
  """
  path = os.path.join(cache_dir, f"teacher_{fingerprint(cfg, ds)}.npz")
  if os.path.exists(path):
    variables, meta = storage.load_pool(path)
    model = stat_models.build(meta["model"])
    log(f"teacher: reusing {os.path.basename(path)} "
        f"(test {100 * meta['test_acc']:.2f}%)")
    return Teacher(model, jax.tree.map(lambda a: jnp.asarray(a[0]),
                                       variables), meta)
  t = time.time()
  model, variables = train(cfg, ds)
  norm = norm_of(ds)
  meta = {"kind": "teacher", "recipe": dataclasses.asdict(cfg),
          "model": model.spec, "dataset": ds.name,
          "mean": list(map(float, ds.mean)), "std": list(map(float, ds.std)),
          "class_names": list(ds.class_names),
          "train_time_s": round(time.time() - t, 1),
          "test_acc": test_accuracy(model, variables, ds),
          "val_acc": (accuracy(model, variables, ds.x_val, ds.y_val, norm)
                      if len(ds.y_val) else None)}
  os.makedirs(cache_dir, exist_ok=True)
  storage.save_pool(path, jax.tree.map(lambda a: np.asarray(a)[None],
                                       variables), meta)
  log(f"teacher: trained in {meta['train_time_s']} s, test "
      f"{100 * meta['test_acc']:.2f}%")
  return Teacher(model, variables, meta)
