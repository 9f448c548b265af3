"""SC-DD's squeeze: a self-supervised backbone with a linear probe.

SC-DD (METHODS.md C.3) recovers against a self-supervised model: its BN
running statistics are those of contrastive pre-training, and a linear
probe trained on its frozen features supplies the recover CE. Here:

  1. SimCLR pre-training (`train`): the teacher's BN architecture plus an
     MLP projection head (Dense -> ReLU -> Dense) on the penultimate
     features; two views of every image (`ssl_aug`); NT-Xent loss
     (`nt_xent`) with temperature tau; the one training routine
     (`eval.fit.supervised`) in train mode, so the running statistics are
     those of the augmented views. The projection head is discarded.
  2. Linear probe (`probe`): the classifier head retrained on features of
     the frozen backbone in eval mode (running statistics; backbone
     parameters and statistics untouched).

The result is an ordinary `teacher.Teacher` (model, variables, meta), so
recover uses it exactly as the supervised teacher. It is cached like the
supervised teacher (`load_or_train`: `ssl_<hash>.npz`, keyed by the SSL
recipe, the backbone spec and the data), with its probe test accuracy.
Relabel and post-train use the supervised teacher, as the released code
does (C.8 item 8).
"""

import dataclasses
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import data
from distill_jax.data import sources
from distill_jax.eval import fit
from distill_jax.methods.decoupled import ssl_aug
from distill_jax.methods.decoupled import teacher as teacher_lib
from distill_jax.nn import models
from distill_jax.nn import stat_models
from distill_jax.run import storage


@dataclasses.dataclass(frozen=True)
class SSLConfig:
  """The SSL recipe (defaults CPU-sized: 5 epochs on 10,000 images, 195
  steps of 512 views; minutes of a Fashion-MNIST run on 2 cores)."""
  epochs: float = 5.0
  batch_size: int = 256
  optimizer: str = "sgd"
  lr: float = 0.06
  momentum: float = 0.9
  weight_decay: float = 5e-4
  temperature: float = 0.5
  proj_hidden: int = 128
  proj_dim: int = 64
  min_scale: float = 0.3  # RRC scale floor of the views.
  flip: bool = False
  color: float = 0.4  # brightness/contrast jitter strength (0: off).
  train_limit: int = 10000  # images for SSL and probe (0: all).
  probe_epochs: float = 20.0
  probe_lr: float = 0.01
  probe_batch_size: int = 256
  seed: int = 0

  def __post_init__(self):
    if self.optimizer not in teacher_lib.OPTIMIZERS:
      raise ValueError(f"ssl_optimizer={self.optimizer!r}; choose one of "
                       f"{teacher_lib.OPTIMIZERS}.")
    for name in ("epochs", "lr", "temperature", "probe_epochs", "probe_lr"):
      if not getattr(self, name) > 0:
        raise ValueError(f"ssl_{name}={getattr(self, name)} must be > 0.")
    for name in ("batch_size", "probe_batch_size"):
      if getattr(self, name) < 2:
        raise ValueError(f"ssl_{name}={getattr(self, name)} must be >= 2 "
                         "(NT-Xent needs negatives in the batch).")
    if min(self.proj_hidden, self.proj_dim) < 1:
      raise ValueError("ssl_proj_hidden and ssl_proj_dim must be >= 1.")
    if not 0 < self.min_scale <= 1:
      raise ValueError(f"ssl_min_scale={self.min_scale} must be in (0, 1].")
    if self.color < 0 or self.train_limit < 0 or self.weight_decay < 0:
      raise ValueError("ssl_color, ssl_train_limit and ssl_weight_decay "
                       "must be >= 0.")


def nt_xent(z, temperature: float):
  """NT-Xent (SimCLR): rows i and N + i of z (2N, D) are positives.

  Cosine similarities over tau; for every row, CE of its positive against
  the other 2N - 1 rows (itself excluded); mean over the 2N rows.
  """
  n2 = z.shape[0]
  z = z / jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-12)
  sim = (z @ z.T) / temperature
  sim = jnp.where(jnp.eye(n2, dtype=bool), -1e9, sim)
  pos = (jnp.arange(n2) + n2 // 2) % n2
  logp = jax.nn.log_softmax(sim, axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, pos[:, None], 1))


class ProjectionHead(nn.Module):
  """SimCLR's MLP projection head (discarded after pre-training)."""
  hidden: int
  out: int

  @nn.compact
  def __call__(self, x):
    return models.Dense(self.out, "torch")(
        nn.relu(models.Dense(self.hidden, "torch")(x)))


def _check_backbone(spec: dict) -> None:
  if spec["arch"] == "mlp" or spec.get("norm") not in (None, "batch"):
    raise ValueError(f"SC-DD needs a BatchNorm teacher architecture (got "
                     f"{spec['arch']}, norm {spec.get('norm')}); use "
                     "--teacher_arch=convnet_bn --teacher_norm=batch or a "
                     "ResNet.")


def contrastive_model(backbone, cfg: SSLConfig) -> stat_models.StatModel:
  """Backbone + projection head as a `StatModel` whose "logits" are the
  projections z (what `fit.supervised` trains)."""
  head = ProjectionHead(cfg.proj_hidden, cfg.proj_dim)
  shape = backbone.spec["image_shape"]
  feat = jax.eval_shape(
      lambda: backbone.apply(backbone.init(jax.random.key(0)),
                             jnp.zeros((2, *shape)))[1]["features"])

  def init(key):
    k1, k2 = jax.random.split(key)
    v = backbone.init(k1)
    hp = head.init(k2, jnp.zeros((1, feat.shape[-1])))["params"]
    return {"params": {"backbone": v["params"], "head": hp},
            "batch_stats": v["batch_stats"]}

  def apply(variables, x, *, train=False):
    _, aux = backbone.apply({"params": variables["params"]["backbone"],
                             "batch_stats": variables["batch_stats"]}, x,
                            train=train)
    return head.apply({"params": variables["params"]["head"]},
                      aux["features"]), aux
  return stat_models.StatModel(init, apply, "simclr", backbone.spec)


def _steps(n: int, batch_size: int, epochs: float):
  batch = min(batch_size, n)
  per_epoch = max(1, n // batch)
  steps = max(1, int(round(epochs * per_epoch)))
  return batch, steps, -(-steps // per_epoch)


def train(cfg: SSLConfig, spec: dict, x):
  """SimCLR pre-training on normalised images x; returns (backbone model,
  its variables) with the projection head dropped."""
  _check_backbone(spec)
  backbone = stat_models.build(spec)
  model = contrastive_model(backbone, cfg)
  n = len(x)
  if n < 2:
    raise ValueError("SSL pre-training needs at least 2 training images.")
  batch, steps, epochs = _steps(n, cfg.batch_size, cfg.epochs)
  tx = teacher_lib.optimizer(cfg.optimizer, cfg.lr, steps, schedule="cosine",
                             momentum=cfg.momentum,
                             weight_decay=cfg.weight_decay)
  trainer = fit.supervised(
      model, tx, jnp.asarray(x), fit.epoch_batches(n, batch),
      lambda z, _: nt_xent(z, cfg.temperature),
      targets=lambda key, t, idx, images, mixing: jnp.zeros(()),
      augment=ssl_aug.two_views(cfg.min_scale, cfg.flip, cfg.color))
  out = teacher_lib.fit_one(trainer, cfg.seed, steps, epochs)
  return backbone, {"params": out["params"]["backbone"],
                    "batch_stats": out["batch_stats"]}


def head_name(params: dict) -> str:
  """The classifier head's module name (the last Dense of the backbone)."""
  dense = [k for k in params if k.startswith("Dense_")]
  return max(dense, key=lambda k: int(k.split("_")[1]))


def features(model, variables, x, batch: int = 500) -> np.ndarray:
  """Eval-mode (running statistics) penultimate features of x."""
  f = jax.jit(lambda xb: model.apply(variables, xb, train=False)[1][
      "features"])
  return np.concatenate([np.asarray(f(jnp.asarray(x[i:i + batch])))
                         for i in range(0, len(x), batch)])


def probe(cfg: SSLConfig, model, variables, x, y):
  """Linear probe: the head retrained (from zero) on frozen eval-mode
  features of x; every other parameter and the BN statistics are kept."""
  feats = jnp.asarray(features(model, variables, x))
  head = variables["params"][head_name(variables["params"])]
  linear = stat_models.StatModel(
      init=lambda key: {"params": jax.tree.map(jnp.zeros_like, head),
                        "batch_stats": {}},
      apply=lambda v, f, *, train=False: (
          f @ v["params"]["kernel"] + v["params"]["bias"][None, :],
          {"batch_stats": {}}),
      name="probe", spec={})
  n = len(y)
  batch, steps, epochs = _steps(n, cfg.probe_batch_size, cfg.probe_epochs)
  tx = teacher_lib.optimizer("adamw", cfg.probe_lr, steps, schedule="cosine")
  labels = jnp.asarray(y)
  trainer = fit.supervised(
      linear, tx, feats, fit.epoch_batches(n, batch),
      teacher_lib.cross_entropy,
      targets=lambda key, t, idx, images, mixing: labels[idx])
  out = teacher_lib.fit_one(trainer, cfg.seed + 1, steps, epochs)
  params = {**variables["params"], head_name(variables["params"]):
            out["params"]}
  return {"params": params, "batch_stats": variables["batch_stats"]}


def _subset(cfg: SSLConfig, ds: data.Dataset):
  """The pre-training images (normalised) and labels: the train split, or
  `train_limit` of them; from a streamed split only those are read."""
  x = sources.images(ds, "train")
  y = np.asarray(ds.y_train)
  if cfg.train_limit and cfg.train_limit < len(y):
    idx = np.sort(np.random.default_rng(cfg.seed).choice(
        len(y), cfg.train_limit, replace=False))
    x, y = x[idx], y[idx]
  elif isinstance(x, sources.Rows):
    raise ValueError(
        f"{ds.name}: SC-DD's SSL pre-training holds its images in memory "
        f"and the train split ({len(y)} images) is streamed; set "
        "--ssl_train_limit (e.g. 100000) or --data_source=memory.")
  x = data.normalize(x, ds.mean, ds.std) if x.dtype == np.uint8 else x
  return np.asarray(x, np.float32), y


def load_or_train(cfg: SSLConfig, spec: dict, ds: data.Dataset,
                  cache_dir: str, *, log=print) -> teacher_lib.Teacher:
  """The cached SSL teacher (backbone + probe) for (recipe, spec, data),
  trained and stored in `cache_dir/ssl_<hash>.npz` if absent."""
  _check_backbone(stat_models.resolve_spec(spec))
  key = teacher_lib.fingerprint({"ssl": dataclasses.asdict(cfg),
                                 "model": stat_models.resolve_spec(spec)}, ds)
  path = os.path.join(cache_dir, f"ssl_{key}.npz")
  if os.path.exists(path):
    try:
      variables, meta = storage.load_pool(path)
    except storage.DistilledFileError as e:
      raise ValueError(f"{path}: unreadable SSL teacher cache ({e}); delete "
                       "the file to retrain it.") from None
    log(f"ssl teacher: reusing {os.path.basename(path)} (probe test "
        f"{100 * meta['test_acc']:.2f}%)")
    return teacher_lib.Teacher(stat_models.build(meta["model"]), jax.tree.map(
        lambda a: jnp.asarray(a[0]), variables), meta)
  x, y = _subset(cfg, ds)
  t = time.time()
  model, variables = train(cfg, spec, x)
  ssl_time = round(time.time() - t, 1)
  t = time.time()
  variables = probe(cfg, model, variables, x, y)
  norm = teacher_lib.norm_of(ds)
  meta = {"kind": "ssl_teacher", "recipe": dataclasses.asdict(cfg),
          "model": model.spec, "dataset": ds.name, "train_images": len(y),
          "mean": list(map(float, ds.mean)), "std": list(map(float, ds.std)),
          "class_names": list(ds.class_names), "ssl_time_s": ssl_time,
          "probe_time_s": round(time.time() - t, 1),
          "test_acc": teacher_lib.test_accuracy(model, variables, ds),
          "val_acc": (teacher_lib.accuracy(model, variables, ds.x_val,
                                           ds.y_val, norm)
                      if len(ds.y_val) else None)}
  os.makedirs(cache_dir, exist_ok=True)
  storage.save_pool(path, jax.tree.map(lambda a: np.asarray(a)[None],
                                       variables), meta)
  log(f"ssl teacher: SimCLR {ssl_time} s + probe {meta['probe_time_s']} s, "
      f"probe test {100 * meta['test_acc']:.2f}%")
  return teacher_lib.Teacher(model, variables, meta)
