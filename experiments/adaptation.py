"""Table 2: domain adaptation with distilled data (USPS <-> MNIST offline).

A pool of LeNets is pretrained on the SOURCE (here, unless --pool is given;
USPS is resized to 28 px); its last --pool_heldout members are held out.
On the TARGET we then run DD with init_mode=random_pretrained (train
members) and fixed_pretrained (member 0) through `train.run`, and
evaluate on the held-out members: the baselines of Table 1 (lr x epochs
chosen on the target's validation split with --val_inits TRAIN-pool
members), "no adaptation" (the held-out source networks on the target test
set) and "train on full target" (the held-out networks fine-tuned with SGD
on the whole target train split for --full_target_epochs). DD fixed
pretrained is evaluated on member 0 itself (as in the paper).

Commands (2-core CPU; data from ../shared/datasets):

  python -m experiments.adaptation --workdir=/tmp/adapt_u2m \
      --data_dir=../shared/datasets --source=usps --target=mnist
  python -m experiments.adaptation --workdir=/tmp/adapt_m2u \
      --data_dir=../shared/datasets --source=mnist --target=usps \
      --pretrain_epochs=1 --val_size=729

SVHN -> MNIST needs the network (TFDS `svhn_cropped`; no local copy) and
matching shapes: SVHN is 32x32 RGB, so MNIST is resized to 32 px and its
gray channel replicated to three (`--image_size=32 --channels=3`):

  python -m experiments.adaptation --workdir=/tmp/adapt_s2m \
      --source=svhn_cropped --target=mnist --image_size=32 --channels=3

Expected runtime per direction: ~60-75 CPU minutes (pretraining 30 LeNets,
~5-10 min; two DD runs of --dd_time_budget_s=900 each; baselines ~10 min;
full-target fine-tuning ~3 min). Expected result (paper, RESULTS.md 1.2):
U->M no adaptation ~67.5% -> DD random pretrained ~92.7%, above random real
~87%; full target ~98.6%. Outputs: WORKDIR/table2.md, table2.json, pool/,
dd_random_pretrained/, dd_fixed_pretrained/.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp

from distill_jax import config as config_lib
from distill_jax import data
from distill_jax.eval import accuracy as accuracy_lib
from distill_jax.eval import grid as grid_lib
from distill_jax.eval import replay as evaluate
from distill_jax.methods import baselines
from distill_jax.nn import models
from distill_jax.run import storage
from distill_jax.run import train_pool as pretrain
from experiments import common
from experiments import configs
from experiments import presets
from experiments import table1

# RESULTS.md 1.2 (Wang et al. 2018, Table 2).
PAPER = {
    "usps->mnist": {"dd_fixed_pretrained": (93.2, None),
                    "dd_random_pretrained": (92.7, 1.4),
                    "random_real": (87.1, 2.9), "optimized_real": (87.6, 2.1),
                    "kmeans": (85.6, 3.1), "average_real": (78.4, 5.0),
                    "no_adaptation": (67.5, 3.9), "full_target": (98.6, 0.5)},
    "mnist->usps": {"dd_fixed_pretrained": (97.9, None),
                    "dd_random_pretrained": (95.4, 1.8),
                    "random_real": (94.9, 0.8), "optimized_real": (95.2, 0.7),
                    "kmeans": (92.2, 1.6), "average_real": (93.9, 0.8),
                    "no_adaptation": (90.4, 3.0), "full_target": (97.3, 0.3)},
}
table1.ROW_NAMES.update({
    "dd_fixed_pretrained": "DD (ours), fixed pretrained",
    "dd_random_pretrained": "DD (ours), random pretrained",
    "no_adaptation": "no adaptation", "full_target": "train on full target"})


AdaptConfig = configs.AdaptConfig
PRESETS = presets.ADAPTATION
preset = PRESETS  # preset("smoke") builds a config (presets.Presets).


def run(cfg: AdaptConfig, workdir: str, *, data_dir=None,
        show_progress: bool = True) -> dict:
  cfg.validate()
  from distill_jax.run import train_dd as train  # pylint: disable=g-import-not-at-top
  log = print if show_progress else (lambda s: None)
  load = lambda name, val: data.load(  # pylint: disable=g-long-lambda
      name, manual_dir=data_dir, val_size=val, seed=cfg.seed,
      image_size=cfg.image_size or None, train_limit=cfg.train_limit or None,
      channels=cfg.channels or None)
  src = load(cfg.source, 0)
  tgt = load(cfg.target, cfg.val_size)
  if src.image_shape != tgt.image_shape:
    raise ValueError(f"{cfg.source} images {src.image_shape} != {cfg.target}"
                     f" images {tgt.image_shape}; set --image_size (and "
                     "--channels=3 for a grayscale/RGB pair).")
  pool_path = cfg.pool
  if not pool_path:
    pcfg = pretrain.PretrainConfig(
        dataset=cfg.source, arch=cfg.arch, image_size=cfg.image_size,
        channels=cfg.channels, num_nets=cfg.pool_size,
        epochs=cfg.pretrain_epochs, seed=cfg.seed + 1,
        chunk=min(10, cfg.pool_size))
    pool_path = pretrain.run(pcfg, os.path.join(workdir, "pool"), dataset=src,
                             show_progress=show_progress)["pool"]
  pool, _ = storage.load_pool(pool_path)
  size = jax.tree.leaves(pool)[0].shape[0]
  if size <= cfg.pool_heldout:
    raise ValueError(f"The pool holds {size} networks; pool_heldout="
                     f"{cfg.pool_heldout} must be smaller.")
  pool = jax.tree.map(jnp.asarray, pool)
  heldout = jax.tree.map(lambda p: p[size - cfg.pool_heldout:], pool)
  val_params0 = jax.tree.map(lambda p: p[:cfg.val_inits], pool)

  rows, dd = {}, {}
  for mode in ("random_pretrained", "fixed_pretrained"):
    dcfg = config_lib.DistillConfig(
        dataset=cfg.target, image_size=cfg.image_size,
        channels=cfg.channels, arch=cfg.arch,
        init_mode=mode, pretrained_pool=pool_path,
        pool_heldout=cfg.pool_heldout, steps=cfg.steps, epochs=cfg.epochs,
        lr_init=cfg.lr_init, real_batch=cfg.real_batch,
        outer_steps=cfg.dd_outer_steps, time_budget_s=cfg.dd_time_budget_s,
        eval_inits=cfg.pool_heldout, val_inits=1, val_size=cfg.val_size,
        train_limit=cfg.train_limit, eval_batch=cfg.eval_batch,
        seed=cfg.seed, log_every=10).validate()
    report = train.run(dcfg, os.path.join(workdir, f"dd_{mode}"),
                       dataset=tgt, show_progress=show_progress)
    rows[f"dd_{mode}"] = {"test_acc": report["test_acc"],
                          "outer_steps": report["outer_steps"]}
    dd[mode] = storage.load_distilled_set(
        os.path.join(workdir, f"dd_{mode}", "distilled.npz"))
    log(f"DD {mode}: {report['test_acc']['mean']:.2f}")

  model = models.build(config_lib.DistillConfig(arch=cfg.arch),
                       tgt.image_shape,
                       tgt.num_classes)
  rows.update(baselines.evaluate_all(
      jax.random.key(cfg.seed + 2), model.apply, tgt, steps=cfg.steps,
      per_class=1, learned_lrs=dd["random_pretrained"].lrs,
      val_params0=val_params0, test_params0=heldout,
      lr_options=grid_lib.parse_lr_grid(cfg.lr_grid),
      epoch_options=cfg.epoch_grid, random_sets=cfg.random_sets,
      optimized_sets=cfg.optimized_sets, kmeans_seeds=cfg.kmeans_seeds,
      batch=cfg.eval_batch, log=log))
  for knn in ("knn_random_real", "knn_kmeans"):  # not rows of Table 2
    rows.pop(knn)
  x_test, y_test = jnp.asarray(tgt.x_test), jnp.asarray(tgt.y_test)
  rows["no_adaptation"] = {"test_acc": accuracy_lib.summary(accuracy_lib.accuracy(
      model.apply, heldout, x_test, y_test, batch=cfg.eval_batch))}
  rows["full_target"] = {
      "test_acc": accuracy_lib.summary(evaluate.retrain_accuracy(
          model.apply, heldout, jax.random.key(cfg.seed + 3),
          jnp.asarray(tgt.x_train), jnp.asarray(tgt.y_train), x_test, y_test,
          lr=cfg.full_target_lr, epochs=cfg.full_target_epochs,
          batch_size=cfg.full_target_batch, batch=cfg.eval_batch)),
      "protocol": f"SGD lr {cfg.full_target_lr}, batch "
                  f"{cfg.full_target_batch}, {cfg.full_target_epochs} "
                  "epoch(s) on the whole target train split"}
  direction = f"{cfg.source}->{cfg.target}"
  paper = PAPER.get(direction, {})
  table1.PAPER[direction] = paper
  md = table1.markdown(rows, direction, f"Table 2, {direction} ({cfg.arch}, "
                       f"{cfg.pool_heldout} held-out source networks)")
  print(md)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "table2.md"), "w") as f:
    f.write(md)
  storage.write_json(os.path.join(workdir, "table2.json"), {
      "direction": direction, "config": dataclasses.asdict(cfg),
      "rows": table1._jsonable(rows),  # pylint: disable=protected-access
      "paper": {k: list(v) for k, v in paper.items()},
      "diff_vs_paper": {k: rows[k]["test_acc"]["mean"] - v[0]
                        for k, v in paper.items() if k in rows}})
  return {"table": os.path.join(workdir, "table2.md"),
          "rows": {k: round(r["test_acc"]["mean"], 2)
                   for k, r in rows.items()}}


main = common.config_main(PRESETS, AdaptConfig, run)


if __name__ == "__main__":
  common.define_flags(PRESETS, cfg_cls=AdaptConfig)
  common.run(main)
