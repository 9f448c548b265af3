"""Cross-architecture evaluation of a distilled set (replay and retrain).

Loads a distilled.npz, reloads its data split, and for each architecture of
--archs trains --eval_inits fresh random inits (a) by replaying the learned
steps and lrs, (b) by retraining on all distilled images with minibatch SGD
(`evaluate.retrain_accuracy`, lr chosen from --retrain_lrs on the
validation split with --val_inits inits). The drop is reported against the
source architecture under the same random-init protocol (so a fixed-init
set is also measured on random inits here). Architectures that cannot take
the images (e.g. lenet needs 28/32 px) are listed as skipped.

Command (2-core CPU):

  python -m experiments.cross_arch --workdir=/tmp/cross_arch \
      --data_dir=../shared/datasets \
      --distilled=/tmp/dd_mnist_random/distilled.npz

Measured (--eval_inits=20, the 4-inits random-init MNIST set): 15 minutes
of wall-clock sharing the CPU with another run (the ConvNet-128 leg is most
of it). Replay: LeNet 79.2, ConvNet 77.5 (-1.7), MLP 69.9 (-9.3); retrain:
LeNet 78.1, ConvNet 81.1 (+3.0), MLP 70.6 (-7.5) (docs/results/cross_arch.md).
Outputs: WORKDIR/cross_arch.json.
"""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp

from distill_jax import config as config_lib
from distill_jax import data
from distill_jax.eval import accuracy as accuracy_lib
from distill_jax.eval import replay as evaluate
from distill_jax.nn import inits
from distill_jax.nn import models
from distill_jax.run import storage
from experiments import common
from experiments import configs
from experiments import presets


CrossArchConfig = configs.CrossArchConfig
PRESETS = presets.CROSS_ARCH
preset = PRESETS  # preset("smoke") builds a config (presets.Presets).


def run(cfg: CrossArchConfig, workdir: str, *, data_dir=None,
        show_progress: bool = True) -> dict:
  cfg.validate()
  del show_progress
  dset = storage.load_distilled_set(cfg.distilled)
  if dset.method != "dd":
    raise ValueError(f"{cfg.distilled} is a {dset.method} set; pass the "
                     "distilled.npz of a DD run (experiments/dd_*.py).")
  if "config" not in dset.metadata:
    raise ValueError(f"{cfg.distilled} has no config in its metadata.")
  src_cfg = config_lib.DistillConfig.from_dict(dset.metadata["config"])
  d = dset.as_dd()  # the learned steps, replayed in order.
  ds = data.load_for(src_cfg, data_dir)
  if len(ds.y_val) == 0:
    raise ValueError("The distilled set's run had val_size=0; retrain lr "
                     "selection needs a validation split.")
  learned = jax.tree.map(jnp.asarray, d.learned())
  labels = jnp.asarray(d.labels)
  x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  x_val, y_val = jnp.asarray(ds.x_val), jnp.asarray(ds.y_val)
  k_val, k_test, k_order = jax.random.split(jax.random.key(cfg.seed), 3)
  archs = list(dict.fromkeys([src_cfg.arch, *cfg.arch_list()]))
  rows = {}
  for arch in archs:
    try:
      model = models.build(src_cfg, ds.image_shape, ds.num_classes,
                           arch=arch)
    except ValueError as e:
      rows[arch] = {"skipped": str(e)}
      print(f"{arch}: skipped ({e})")
      continue
    sample = functools.partial(inits.sample, mode="random",
                               model_init=model.init, source={})
    p_test = sample(k_test, cfg.eval_inits)
    replay = evaluate.replay_accuracy(model.apply, p_test, learned, labels,
                                      x_test, y_test, epochs=d.epochs,
                                      batch=cfg.eval_batch)
    retrain = make_retrain(model, d, k_order, cfg)
    val = {lr: float(retrain(sample(k_val, cfg.val_inits), x_val, y_val,
                             lr).mean()) for lr in cfg.lr_list()}
    best_lr = max(val, key=val.get)
    test = retrain(p_test, x_test, y_test, best_lr)
    rows[arch] = {"replay": accuracy_lib.summary(replay),
                  "retrain": accuracy_lib.summary(test), "retrain_lr": best_lr,
                  "retrain_val_acc": {str(k): v * 100 for k, v in
                                      val.items()}}
    print(f"{arch}: replay {rows[arch]['replay']['mean']:.2f}, retrain "
          f"{rows[arch]['retrain']['mean']:.2f} (lr {best_lr})")
  src = rows[src_cfg.arch]
  if "skipped" not in src:
    for arch, row in rows.items():
      if "skipped" not in row:
        row["replay_drop"] = src["replay"]["mean"] - row["replay"]["mean"]
        row["retrain_drop"] = src["retrain"]["mean"] - row["retrain"]["mean"]
  out = {"distilled": os.path.abspath(cfg.distilled),
         "source_arch": src_cfg.arch, "dataset": ds.name,
         "config": dataclasses.asdict(cfg), "rows": rows}
  storage.write_json(os.path.join(workdir, "cross_arch.json"), out)
  return {"source_arch": src_cfg.arch,
          "rows": {a: {k: round(v["mean"], 2) if isinstance(v, dict) and
                       "mean" in v else v for k, v in r.items()
                       if k in ("replay", "retrain", "replay_drop",
                                "retrain_drop", "skipped")}
                   for a, r in rows.items()}}


def make_retrain(model, d, key, cfg):
  """retrain(params0, x_eval, y_eval, lr) on all distilled images."""
  x_syn, y_syn = jnp.asarray(d.x), jnp.asarray(d.labels)

  def retrain(params0, x, y, lr):
    return evaluate.retrain_accuracy(
        model.apply, params0, key, x_syn, y_syn, x, y, lr=lr,
        epochs=cfg.retrain_epochs, batch_size=cfg.retrain_batch,
        batch=cfg.eval_batch)
  return retrain


main = common.config_main(PRESETS, CrossArchConfig, run)


if __name__ == "__main__":
  common.define_flags(PRESETS, cfg_cls=CrossArchConfig)
  common.run(main)
