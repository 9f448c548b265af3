"""Pools of pretrained networks, the p(theta_0) of the pretrained init modes.

`run` trains `num_nets` networks of one architecture on a dataset, all at
once under `jax.vmap` (each from its own random init and its own minibatch
order), and writes them to `workdir/pool.npz` with their test accuracies.
Pools feed `init_mode=fixed_pretrained|random_pretrained` (adaptation) and
the poisoning experiment (a distribution of well-trained classifiers).
"""

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import config as config_lib
from distill_jax import data
from distill_jax.core import inner_opt
from distill_jax.eval import accuracy as accuracy_lib
from distill_jax.eval import fit
from distill_jax.nn import models
from distill_jax.platform import xla_options
from distill_jax.run import progress as progress_lib
from distill_jax.run import storage


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """Hyper-parameters of a pretraining run."""
  dataset: str = "mnist"
  arch: str = "lenet"
  init: str = "xavier"
  image_size: int = 0
  channels: int = 0  # 0 = native; 3 replicates grayscale images.
  num_nets: int = 10
  epochs: float = 1.0
  batch_size: int = 128
  lr: float = 1e-3
  chunk: int = 10  # networks trained at once (vmapped)
  seed: int = 0
  val_size: int = 0

  def __post_init__(self):
    self.validate()  # a config that exists is a valid one.

  def validate(self) -> "PretrainConfig":
    if self.arch not in config_lib.ARCHS:
      raise ValueError(f"arch={self.arch!r}; choose from {config_lib.ARCHS}.")
    for name in ("num_nets", "batch_size", "chunk"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1.")
    if not self.epochs > 0 or not self.lr > 0:
      raise ValueError("epochs and lr must be > 0.")
    return self


def _model(cfg: PretrainConfig, ds: data.Dataset) -> models.Model:
  dcfg = config_lib.DistillConfig(arch=cfg.arch, init=cfg.init)
  return models.build(dcfg, ds.image_shape, ds.num_classes)


@xla_options.lazy_jit(static_argnames=("apply_fn", "tx", "steps",
                                        "batch"))
def _train(apply_fn, tx, params0, keys, x, y, steps: int, batch: int):
  """Trains a stack of networks with `tx` on uniform random minibatches."""
  trainer = fit.minibatch(apply_fn, tx.tx, tx.lr, x, y,
                          fit.uniform_batches(x.shape[0], batch))
  per_net = {"params0": params0,
             "keys": jax.vmap(lambda k: jax.random.split(k, steps))(keys)}
  return jax.tree.map(lambda a: a[0], fit.fit(trainer, per_net, (steps,)))


def train_pool(cfg: PretrainConfig, ds: data.Dataset, *,
               show_progress: bool = True):
  """Returns (stacked params (num_nets, ...), per-net test accuracy)."""
  cfg.validate()
  model = _model(cfg, ds)
  steps = max(1, int(cfg.epochs * len(ds.y_train) / cfg.batch_size))
  tx = inner_opt.build("adam", cfg.lr, eps_root=0.0)  # optax.adam's
  x, y = jax.device_put(ds.x_train), jnp.asarray(ds.y_train)
  key = jax.random.key(cfg.seed)
  k_init, k_train = jax.random.split(key)
  init_keys = jax.random.split(k_init, cfg.num_nets)
  train_keys = jax.random.split(k_train, cfg.num_nets)
  bar = progress_lib.Progress(cfg.num_nets, enabled=show_progress)
  pools, accs = [], []
  for start in range(0, cfg.num_nets, cfg.chunk):
    sl = slice(start, start + cfg.chunk)
    params0 = jax.vmap(model.init)(init_keys[sl])
    params = _train(model.apply, tx, params0, train_keys[sl], x, y, steps,
                    cfg.batch_size)
    accs.append(accuracy_lib.accuracy(model.apply, params,
                                      jax.device_put(ds.x_test),
                                      jnp.asarray(ds.y_test)))
    pools.append(jax.tree.map(np.asarray, params))
    bar.update(min(start + cfg.chunk, cfg.num_nets),
               acc=float(np.mean(accs[-1])))
  pool = jax.tree.map(lambda *a: np.concatenate(a), *pools)
  return pool, np.concatenate(accs)


def run(cfg: PretrainConfig, workdir: str, *, dataset=None, data_dir=None,
        show_progress: bool = True) -> dict:
  """Trains a pool and writes workdir/pool.npz and workdir/report.json."""
  cfg.validate()
  ds = dataset if dataset is not None else data.load(
      cfg.dataset, manual_dir=data_dir, val_size=cfg.val_size, seed=cfg.seed,
      image_size=cfg.image_size or None, channels=cfg.channels or None)
  t = time.time()
  pool, acc = train_pool(cfg, ds, show_progress=show_progress)
  path = os.path.join(workdir, "pool.npz")
  meta = {"arch": cfg.arch, "dataset": ds.name,
          "image_shape": list(ds.image_shape),
          "class_names": list(ds.class_names), "config":
          dataclasses.asdict(cfg), "test_acc": [float(a) for a in acc]}
  storage.save_pool(path, pool, meta)
  report = {"pool": path, "num_nets": cfg.num_nets,
            "test_acc": accuracy_lib.summary(acc),
            "time_s": round(time.time() - t, 1)}
  storage.write_json(os.path.join(workdir, "report.json"), report)
  return report
