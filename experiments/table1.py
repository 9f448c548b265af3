"""Table 1: our DD runs vs every baseline, one command per dataset.

Takes the workdirs of a fixed-init and a random-init DD run (each holding
distilled.npz + report.json from `experiments.dd_mnist_fixed` /
`experiments.dd_mnist_random`, or `experiments.dd_cifar10`), reloads the
data exactly as those runs did (same validation split), re-evaluates both DD
sets on the same held-out inits as the baselines, and evaluates random real,
optimized real, k-means, average real, k-NN on random real and k-NN on
k-means. Every training baseline uses the DD steps (S steps of one image per
class); lr in {learned, 0.001, ..., 0.3} x epochs in {1, 3, 5} is CHOSEN ON
THE VALIDATION SPLIT with --val_inits random inits, then reported on the
test set over --eval_inits held-out inits (mean +- std). "learned" takes the
random-init run's learned lrs (cycled per epoch for other epoch counts).

Commands (2-core CPU, after the two DD runs):

  python -m experiments.table1 --workdir=/tmp/table1_mnist \
      --data_dir=../shared/datasets --fixed_dir=/tmp/dd_mnist_fixed \
      --random_dir=/tmp/dd_mnist_random
  python -m experiments.table1 --workdir=/tmp/table1_cifar10 \
      --data_dir=../shared/datasets --fixed_dir=/tmp/dd_cifar10_fixed \
      --random_dir=/tmp/dd_cifar10 --eval_inits=10 --val_inits=2 \
      --random_sets=5 --optimized_sets=10 --kmeans_seeds=2 \
      --val_limit=1000 --eval_batch=250

(AlexCifarNet needs --eval_batch=250: at the default 2000, ten networks'
convolution patches need 65 GB.)

Measured (MNIST, LeNet, defaults; docs/results/dd_mnist_table1.md): DD
fixed 96.9, DD random 78.7 +- 2.8, random real 72.3 +- 8.3, optimized real
72.4 +- 7.7, k-means 79.6 +- 8.1, average real 77.0 +- 2.8, k-NN on random
real 72.5, k-NN on k-means 92.5. About 50 min wall sharing the 2 cores with
other jobs (alone 25-35 min, estimate); the baseline rows are cached in
WORKDIR/baselines_cache.json, so a re-run with another --fixed_dir takes
about 2 minutes. CIFAR-10 (AlexCifarNet, ~30x LeNet per image): the
reduced command above (selection on 1,000 validation images, 10 test
networks); docs/results/cifar10.md has its runtime and numbers. Outputs:
WORKDIR/table1.md and table1.json.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import config as config_lib
from distill_jax import data
from distill_jax.eval import accuracy as accuracy_lib
from distill_jax.eval import grid as grid_lib
from distill_jax.eval import replay as evaluate
from distill_jax.methods import baselines
from distill_jax.nn import inits
from distill_jax.nn import models
from distill_jax.run import storage
from experiments import common
from experiments import configs
from experiments import presets

# RESULTS.md 1.1 (Wang et al. 2018, Table 1): (mean, std or None).
PAPER = {
    "mnist": {"dd_fixed": (96.6, None), "dd_random": (79.5, 8.1),
              "random_real": (68.6, 9.8), "optimized_real": (73.0, 7.6),
              "kmeans": (76.4, 9.5), "average_real": (77.1, 2.7),
              "knn_random_real": (71.5, 2.1), "knn_kmeans": (92.2, 0.1)},
    "cifar10": {"dd_fixed": (54.0, None), "dd_random": (36.8, 1.2),
                "random_real": (21.3, 1.5), "optimized_real": (23.4, 1.3),
                "kmeans": (22.5, 3.1), "average_real": (22.3, 0.7),
                "knn_random_real": (18.8, 1.3), "knn_kmeans": (29.4, 0.3)},
}
ROW_NAMES = {
    "dd_fixed": "DD (ours), fixed init", "dd_random": "DD (ours), random init",
    "dd_random_real_init": "DD (ours), random init, images initialised "
                           "from real",
    "random_real": "random real", "optimized_real": "optimized real",
    "kmeans": "k-means", "average_real": "average real",
    "knn_random_real": "k-NN on random real", "knn_kmeans": "k-NN on k-means",
}


Table1Config = configs.Table1Config
PRESETS = presets.TABLE1
preset = PRESETS  # preset("smoke") builds a config (presets.Presets).


# The fields of the random-init run's config the baselines depend on (data
# split, network, number of steps and images), as the cache key.
_BASELINE_FIELDS = ("dataset", "val_size", "train_limit", "image_size", "seed",
                    "arch", "init", "width", "depth", "norm", "pooling",
                    "mlp_hidden", "steps", "epochs",
                    "images_per_class_per_step")


def baseline_inputs(cfg: config_lib.DistillConfig) -> dict:
  return {k: _jsonable(getattr(cfg, k)) for k in _BASELINE_FIELDS}


def extra_row_key(cfg: config_lib.DistillConfig, workdir: str) -> str:
  """Row key of an extra random-init run: its image init, else its dir."""
  if cfg.image_init != "noise":
    return f"dd_random_{cfg.image_init}_init"
  return "dd_random_" + os.path.basename(os.path.normpath(workdir))


def load_run(workdir: str):
  """(DistilledSet, DistillConfig, report) of a DD run's workdir."""
  d = storage.load_distilled_set(os.path.join(workdir, "distilled.npz"))
  if d.method != "dd":
    raise ValueError(f"{workdir}/distilled.npz is a {d.method} set; pass "
                     "the workdir of a DD run (experiments/dd_*.py).")
  report_path = os.path.join(workdir, "report.json")
  if not os.path.exists(report_path):
    raise ValueError(f"{report_path} is missing; pass the workdir of a "
                     "finished DD run.")
  with open(report_path) as f:
    report = json.load(f)
  if "config" not in d.metadata:
    raise ValueError(f"{workdir}/distilled.npz has no config in its "
                     "metadata; re-run the distillation with distill_jax.")
  cfg = config_lib.DistillConfig.from_dict(d.metadata["config"])
  return d, cfg, report


def _replay_dd(d, model, params0, ds, batch):
  steps = d.as_dd()
  return evaluate.replay_accuracy(
      model.apply, params0, jax.tree.map(jnp.asarray, steps.learned()),
      jnp.asarray(steps.labels), jnp.asarray(ds.x_test),
      jnp.asarray(ds.y_test), epochs=steps.epochs, batch=batch)


def _fmt(summary) -> str:
  if summary is None:
    return "-"
  mean, std = summary
  return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def markdown(rows: dict, dataset: str, title: str) -> str:
  """The table with paper numbers and differences (ours - paper)."""
  paper = PAPER.get(dataset, {})
  lines = [f"### {title}", "",
           "| row | ours (test %) | paper | ours − paper | selected on val |",
           "|---|---|---|---|---|"]
  order = [k for k in ROW_NAMES if k in rows] + sorted(
      k for k in rows if k not in ROW_NAMES)
  for key in order:
    row = rows[key]
    acc = row["test_acc"]
    ours = (acc["mean"], acc["std"] if acc["n"] > 1 else None)
    ref = paper.get(key)
    diff = f"{ours[0] - ref[0]:+.1f}" if ref else "-"
    best = row.get("best", "-")
    lines.append(f"| {ROW_NAMES.get(key, key)} | {_fmt(ours)} (n={acc['n']})"
                 f" | {_fmt(ref)} | {diff} | {best} |")
  return "\n".join(lines) + "\n"


def run(cfg: Table1Config, workdir: str, *, data_dir=None,
        show_progress: bool = True) -> dict:
  """Evaluates both DD runs and every baseline; writes table1.{md,json}."""
  cfg.validate()
  fixed, fixed_cfg, fixed_report = load_run(cfg.fixed_dir)
  rand, rand_cfg, rand_report = load_run(cfg.random_dir)
  rand_shape = rand.as_dd().x.shape  # (steps, images per step, H, W, C)
  if (fixed_cfg.dataset != rand_cfg.dataset or
      fixed.as_dd().x.shape != rand_shape):
    raise ValueError(
        f"The DD runs differ: {fixed_cfg.dataset} {fixed.as_dd().x.shape} vs "
        f"{rand_cfg.dataset} {rand_shape}; pass runs of one dataset with "
        "the same steps and images per step.")
  if fixed.init_params is None:
    raise ValueError(f"{cfg.fixed_dir}/distilled.npz holds no fixed "
                     "network; pass the workdir of a fixed-init run.")
  log = print if show_progress else (lambda s: None)
  ds = data.load_for(rand_cfg, data_dir)
  if cfg.val_limit and cfg.val_limit < len(ds.y_val):
    x_val, y_val = data.stratified_subset(ds.x_val, ds.y_val, cfg.val_limit,
                                          cfg.seed)
    ds = dataclasses.replace(ds, x_val=x_val, y_val=y_val)
  model = models.build(rand_cfg, ds.image_shape, ds.num_classes)
  k_val, k_test, k_sets = jax.random.split(jax.random.key(cfg.seed), 3)
  val_params0 = inits.sample(k_val, cfg.val_inits, mode="random",
                             model_init=model.init, source={})
  test_params0 = inits.sample(k_test, cfg.eval_inits, mode="random",
                              model_init=model.init, source={})
  rows = {}
  fixed_net = jax.tree.map(lambda p: jnp.asarray(p)[None], fixed.init_params)
  rows["dd_fixed"] = {
      "test_acc": accuracy_lib.summary(_replay_dd(fixed, model, fixed_net, ds,
                                              cfg.eval_batch)),
      "report_test_acc": fixed_report.get("test_acc")}
  rows["dd_random"] = {
      "test_acc": accuracy_lib.summary(_replay_dd(rand, model, test_params0, ds,
                                              cfg.eval_batch)),
      "report_test_acc": rand_report.get("test_acc")}
  for extra_dir in filter(None, (d.strip() for d in
                               cfg.extra_random_dirs.split(","))):
    extra, extra_cfg, extra_report = load_run(extra_dir)
    extra_shape = extra.as_dd().x.shape
    if extra_shape != rand_shape or extra_cfg.dataset != rand_cfg.dataset:
      raise ValueError(
          f"{extra_dir} holds {extra_cfg.dataset} {extra_shape}, not "
          f"{rand_cfg.dataset} {rand_shape} like --random_dir.")
    key = extra_row_key(extra_cfg, extra_dir)
    rows[key] = {
        "test_acc": accuracy_lib.summary(_replay_dd(extra, model, test_params0,
                                                ds, cfg.eval_batch)),
        "report_test_acc": extra_report.get("test_acc"),
        "workdir": extra_dir}
  log(f"DD fixed {rows['dd_fixed']['test_acc']['mean']:.2f}, DD random "
      f"{rows['dd_random']['test_acc']['mean']:.2f}")
  per_class = rand_cfg.images_per_class_per_step
  # The baselines (most of the cost) do not depend on the fixed-init run:
  # they are cached in the workdir, keyed by everything they do depend on,
  # so re-running with another --fixed_dir only re-evaluates the DD rows.
  cache_path = os.path.join(workdir, "baselines_cache.json")
  cache_key = {"config": _jsonable(dataclasses.asdict(
                   dataclasses.replace(cfg, fixed_dir="",
                                       extra_random_dirs=""))),
               "data": baseline_inputs(rand_cfg),
               "val_subset": "stratified" if cfg.val_limit else "all",
               "learned_lrs": [round(float(v), 7) for v in
                               np.asarray(rand.lrs).ravel()]}
  cached = None
  if os.path.exists(cache_path):
    with open(cache_path) as f:
      cached = json.load(f)
  if cached is not None and cached.get("key") == cache_key:
    print(f"baselines: reusing {cache_path}")
    rows.update(cached["rows"])
  else:
    base_rows = baselines.evaluate_all(
        k_sets, model.apply, ds, steps=rand_shape[0], per_class=per_class,
        learned_lrs=rand.lrs, val_params0=val_params0,
        test_params0=test_params0,
        lr_options=grid_lib.parse_lr_grid(cfg.lr_grid),
        epoch_options=cfg.epoch_grid, random_sets=cfg.random_sets,
        optimized_sets=cfg.optimized_sets, top_frac=cfg.top_frac,
        kmeans_seeds=cfg.kmeans_seeds, knn_ks=cfg.knn_ks,
        batch=cfg.eval_batch, log=log)
    rows.update(base_rows)
    storage.write_json(cache_path, {"key": cache_key,
                                    "rows": _jsonable(base_rows)})
  title = (f"Table 1, {ds.name} ({rand_cfg.arch}, {rand_shape[0]} steps x "
           f"{ds.num_classes * per_class} images; baselines' lr x epochs "
           f"chosen on {len(ds.y_val)} validation images, {cfg.val_inits} "
           f"inits; test over {cfg.eval_inits} held-out inits)")
  md = markdown(rows, rand_cfg.dataset, title)
  print(md)
  storage.atomic_write(os.path.join(workdir, "table1.md"),
                       lambda f: f.write(md), mode="w")
  out = {"dataset": ds.name, "source": ds.source, "config":
         dataclasses.asdict(cfg), "rows": _jsonable(rows),
         "paper": {k: list(v) for k, v in PAPER.get(rand_cfg.dataset,
                                                      {}).items()},
         "diff_vs_paper": {
             k: rows[k]["test_acc"]["mean"] - v[0]
             for k, v in PAPER.get(rand_cfg.dataset, {}).items()
             if k in rows}}
  storage.write_json(os.path.join(workdir, "table1.json"), out)
  return {"table": os.path.join(workdir, "table1.md"),
          "rows": {k: round(r["test_acc"]["mean"], 2)
                   for k, r in rows.items()}}


def _jsonable(obj):
  if isinstance(obj, dict):
    return {k: _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, np.generic):
    return obj.item()
  return obj


main = common.config_main(PRESETS, Table1Config, run)


if __name__ == "__main__":
  common.define_flags(PRESETS, cfg_cls=Table1Config)
  common.run(main)
