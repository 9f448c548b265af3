"""Tiny synthetic tasks and debug guards shared by the tests."""

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import config as config_lib
from distill_jax import data
from distill_jax.methods import dd_data as distilled
from distill_jax.nn import models

jax.config.update("jax_numpy_rank_promotion", "raise")

IMAGE_SHAPE = (4, 4, 1)
NUM_CLASSES = 3


def tiny_config(**kw) -> config_lib.DistillConfig:
  base = dict(arch="mlp", mlp_hidden=(8,), steps=2, epochs=2, real_batch=16,
              init_mode="random", num_inits=2, lr_init=0.1, eval_inits=4,
              val_inits=2, log_every=1, checkpoint_every=2, val_size=0)
  base.update(kw)
  return config_lib.DistillConfig(**base).validate()


def tiny_problem(cfg=None, seed: int = 0):
  """(model, learned, labels, params0 batch, real_x, real_y)."""
  cfg = cfg or tiny_config()
  model = models.build(cfg, IMAGE_SHAPE, NUM_CLASSES)
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  learned, labels = distilled.init(
      k1, steps=cfg.steps, epochs=cfg.epochs, num_classes=NUM_CLASSES,
      per_class=1, image_shape=IMAGE_SHAPE, lr_init=cfg.lr_init)
  params0 = jax.vmap(model.init)(jax.random.split(k2, cfg.num_inits))
  real_x = jax.random.normal(k3, (cfg.real_batch, *IMAGE_SHAPE))
  real_y = jax.random.randint(k4, (cfg.real_batch,), 0, NUM_CLASSES)
  return model, learned, labels, params0, real_x, real_y


def tiny_dataset(n_train=60, n_val=12, n_test=30, seed=0,
                 shape=IMAGE_SHAPE, classes=NUM_CLASSES) -> data.Dataset:
  """Gaussian blobs: class c has mean c in every pixel (learnable)."""
  rng = np.random.default_rng(seed)

  def make(n):
    y = np.arange(n) % classes
    x = rng.normal(size=(n, *shape)).astype(np.float32) * 0.5
    x += (y[:, None, None, None] - (classes - 1) / 2).astype(np.float32)
    return x, y.astype(np.int32)
  xtr, ytr = make(n_train)
  xv, yv = make(n_val)
  xte, yte = make(n_test)
  c = shape[-1]
  return data.Dataset(
      name="blobs", x_train=xtr, y_train=ytr, x_val=xv, y_val=yv,
      x_test=xte, y_test=yte, num_classes=classes, mean=(0.5,) * c,
      std=(0.25,) * c, class_names=tuple(str(i) for i in range(classes)),
      source="synthetic")


def _write_idx(path, array):
  import gzip  # pylint: disable=g-import-not-at-top
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim])
  header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  with open(path, "wb") as f:
    f.write(gzip.compress(header + array.tobytes()))


def write_fake_datasets(root: str, n_train: int = 300, n_test: int = 60,
                        seed: int = 0, bars: bool = False) -> str:
  """Writes tiny learnable MNIST/Fashion-MNIST/USPS/CIFAR-10-subset copies.

  Images are class-dependent brightness plus noise, in the on-disk formats
  of ../shared/datasets, so experiments can run end to end without real
  data. `bars=True` instead draws class c as a bright horizontal bar in row
  band c over noise: a spatial pattern that a few distillation steps learn
  (brightness alone is nearly removed by normalisation).
  """
  import os  # pylint: disable=g-import-not-at-top
  from distill_jax.data import local as local_datasets  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)

  def images(n, shape):
    y = np.arange(n) % 10
    x = rng.integers(0, 60, (n, *shape)).astype(np.int32)
    if bars:
      band = shape[0] // 10
      for c in range(10):
        x[y == c, c * band:(c + 1) * band] += 180
    else:
      x += (y * 20).reshape(-1, *[1] * len(shape))
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.uint8)

  for name in ("mnist", "fashion_mnist"):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
      x, y = images(n, (28, 28))
      _write_idx(os.path.join(d, local_datasets.MNIST_FILES[
          f"{split}_images"]), x)
      _write_idx(os.path.join(d, local_datasets.MNIST_FILES[
          f"{split}_labels"]), y)
  d = os.path.join(root, "usps")
  os.makedirs(d, exist_ok=True)
  xtr, ytr = images(n_train, (16, 16))
  xte, yte = images(n_test, (16, 16))
  np.savez(os.path.join(d, "usps.npz"), x_train=xtr / np.float32(255),
           y_train=ytr, x_test=xte / np.float32(255), y_test=yte)
  d = os.path.join(root, "cifar10_subset")
  os.makedirs(d, exist_ok=True)
  xtr, ytr = images(n_train, (32, 32, 3))
  xte, yte = images(n_test, (32, 32, 3))
  np.savez(os.path.join(d, "cifar10_lossless_subset.npz"), x_train=xtr,
           y_train=ytr, x_test=xte, y_test=yte,
           train_labels_all50000=np.zeros(50000, np.uint8))
  return root


def rewrite_npz(src: str, dst: str, **changes) -> None:
  """Copies the .npz `src` to `dst` with fields replaced (None deletes)."""
  with np.load(src) as z:
    files = dict(z)
  for k, v in changes.items():
    if v is None:
      del files[k]
    else:
      files[k] = v
  np.savez(dst, **files)


class BadDistilledFileAsserts:
  """Mixin for tests of `storage.load_distilled_set` on `self.path`."""

  def _fails(self, pattern):
    from distill_jax.run import storage  # pylint: disable=g-import-not-at-top
    with self.assertRaisesRegex(storage.DistilledFileError,
                                f"^{self.path}: .*{pattern}"):
      storage.load_distilled_set(self.path)
