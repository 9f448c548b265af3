"""RaT-BPTT vs full-unroll and fixed-window BPTT vs real-data baselines.

One table under ONE evaluation protocol (`rat_eval`: fresh networks trained
with the inner optimiser, budget and checkpoint chosen on validation, test
mean +- std over --eval_nets nets; every row uses the same fresh nets):

  * rat_random: RaT-BPTT, N inner steps, random window of M (the preset);
  * rat_end: truncated BPTT, the window fixed at the end (s = N - M), same
    N, M and outer steps, so the same cost per outer step;
  * full: full-unroll BPTT of --full_total_steps steps (default M, so the
    same number of differentiable steps and memory as the window runs);
  * random_real: --real_draws random sets of ipc real training images per
    class (nets x draws pooled);
  * kmeans: per-class k-means centroids (k = ipc) of the training images.

By default every distillation gets the same number of outer steps
(--outer_steps; the presets have no time budget, so CPU contention does not
change the result) and its report
states the wall time it took. Sub-runs live in WORKDIR/<method>/ and are
reused when their report.json exists and their config matches; --random_dir
reuses an existing rat_bptt_fashion run of the same config as the RaT row.
With --time_budget_s=S and a large --outer_steps every distillation gets S
seconds of wall-clock instead (an equal CPU budget; run nothing else on the
cores); a finished run is then reused only if the budget changes nothing
(all its outer steps done, in less time than the budget). The
equal-budget table of docs/results/rat_bptt_vs_full_unroll.md ran each
method as its own rat_bptt_fashion process pinned to one core, two at a
time.

Command (2-core CPU, Fashion-MNIST IPC 1; on one core each distillation
takes 17-30 min and each evaluation of 8 nets about 9 min, about 2 h in all):

  python -m experiments.rat_compare --workdir=/tmp/rat_compare \
      --data_dir=../shared/datasets --preset=cpu_ipc1

Measured (8 nets, test %): RaT-BPTT 70.71 +- 0.87, window at the end
59.93 +- 0.66, full unroll N = M = 20 74.10 +- 0.98, full unroll N = M = 60
(--full_total_steps=60 --outer_steps=100) 70.20 +- 0.59, random real
49.17 +- 7.56, k-means 56.61 +- 1.14.

Outputs: rat_compare.md and rat_compare.json in --workdir.
"""

import dataclasses
import json
import os

from absl import flags
import jax
import numpy as np

from distill_jax.eval import accuracy as accuracy_lib
from distill_jax.methods import rat_budgets as rat_eval
from distill_jax.methods import baselines
from distill_jax.methods import rat_bptt
from distill_jax.nn import models
from distill_jax.run import storage
from distill_jax.run import train_rat as rat_train
from experiments import common
from experiments import presets

METHODS = ("rat_random", "rat_end", "full", "random_real", "kmeans")
DISTILLED = ("rat_random", "rat_end", "full")
# Fields that do not change what a run computes (ignored on reuse). The time
# budget is not one of them: when it binds it sets the number of outer steps.
_RUN_CONTROL = ("eval_batch", "log_every", "checkpoint_every")


PRESETS = presets.RAT_COMPARE
preset = PRESETS  # preset("smoke") builds a config (presets.Presets).


def method_config(cfg: rat_bptt.RatConfig, method: str,
                  full_total_steps: int = 0) -> rat_bptt.RatConfig:
  """The sub-run config of a distillation method."""
  if method == "rat_random":
    return dataclasses.replace(cfg, truncation="random")
  if method == "rat_end":
    return dataclasses.replace(cfg, truncation="end")
  if method == "full":
    n = full_total_steps or cfg.window
    return dataclasses.replace(cfg, truncation="full", total_steps=n,
                               window=n)
  raise ValueError(f"{method!r} is not a distillation method; choose one of "
                   f"{list(DISTILLED)}.")


def _comparable(cfg_dict: dict) -> dict:
  return {k: v for k, v in cfg_dict.items() if k not in _RUN_CONTROL}


def reuse_report(path: str, cfg: rat_bptt.RatConfig) -> dict | None:
  """The report.json of a finished run of `cfg` in `path`, else None.

  A different time budget is accepted when it changes nothing: the run
  finished all its outer steps within its own budget and the requested
  budget (0 = none) is no shorter than the time it took.

  Raises ValueError when `path` holds a finished run of another config.
  """
  report = os.path.join(path, "report.json")
  if not os.path.exists(report):
    return None
  with open(os.path.join(path, "config.json")) as f:
    have = _comparable(json.load(f))
  with open(report) as f:
    rep = json.load(f)
  want = _comparable(json.loads(cfg.to_json()))
  diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
  if diff == ["time_budget_s"]:
    budget = float(want["time_budget_s"] or 0.0)
    took = float(rep.get("train_time_s", float("inf")))
    if (rep.get("outer_steps") == want.get("outer_steps") and
        (budget == 0.0 or budget >= took)):
      diff = []
  if diff:
    raise ValueError(
        f"{path} holds a run with another config (fields {diff}: "
        f"{[(have.get(k), want.get(k)) for k in diff]}); give another "
        "--workdir or --random_dir, or delete that run.")
  return rep


def distill_time(workdir: str, report: dict) -> float:
  """Wall seconds of a run's distillation (its metrics.jsonl clock if the
  report, written by a resumed process, counted less)."""
  t = float(report.get("train_time_s", 0.0))
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      recs = [json.loads(l) for l in f if l.strip()]
    if recs:
      t = max(t, float(recs[-1].get("time_s", 0.0)))
  return round(t, 1)


def baseline_sets(method: str, prep: rat_bptt.Prepared, cfg, draws: int):
  """Learned-dict stand-ins (x: (C, ipc, ...)) of a real-data baseline."""
  ds = prep.ds
  c = ds.num_classes
  shape = (c, cfg.ipc, *ds.image_shape)
  if method == "random_real":
    key = jax.random.fold_in(jax.random.key(cfg.seed), 7)
    x_train = prep.floats(prep.x_train)
    return [baselines.random_real(jax.random.fold_in(key, d), x_train,
                                  ds.y_train, num_classes=c, steps=1,
                                  per_class=cfg.ipc)[0].reshape(shape)
            for d in range(draws)]
  if method == "kmeans":
    return [baselines.kmeans(prep.floats(prep.x_train), ds.y_train,
                             num_classes=c, steps=1, per_class=cfg.ipc,
                             seed=cfg.seed)[0].reshape(shape)]
  raise ValueError(f"{method!r} is not a baseline; choose random_real or "
                   "kmeans.")


def evaluate_baseline(method: str, cfg, prep, draws: int) -> dict:
  """Test accuracy of a baseline under the RaT-BPTT protocol."""
  ds = prep.ds
  model = models.build(cfg, ds.image_shape, ds.num_classes)
  eval_train = rat_eval.make_eval_train(cfg, model)
  k_eval = jax.random.split(jax.random.key(cfg.seed))[1]  # as rat_train.run
  tests, vals, chosen = [], [], []
  for x in baseline_sets(method, prep, cfg, draws):
    learned = {"x": x}
    sup = rat_bptt.support(
        learned, rat_bptt.empty_fixed(ds.num_classes, ds.image_shape))
    res = rat_eval.evaluate_set(cfg, model, eval_train, k_eval, sup, learned,
                                cfg.eval_nets, (prep.x_val, ds.y_val),
                                (prep.x_test, ds.y_test), norm=prep.norm)
    tests.append(res["test"])
    vals.append(res["val"])
    chosen.append(res["budget"])
  return {"method": method, "test_acc": accuracy_lib.summary(np.concatenate(tests)),
          "selected_budget": chosen, "draws": len(tests),
          "val_acc_by_budget": {
              str(b): accuracy_lib.summary(np.concatenate([v[i] for v in vals]))
              for i, b in enumerate(cfg.eval_budgets)}}


def run(cfg: rat_bptt.RatConfig, workdir: str, *, methods=METHODS,
        full_total_steps: int = 0, random_dir: str = "", real_draws: int = 3,
        data_dir=None, resume=False, show_progress=True) -> dict:
  """Runs every method; returns the table (also written as JSON and MD)."""
  bad = [m for m in methods if m not in METHODS]
  if bad or not methods:
    raise ValueError(f"--methods {bad or '(empty)'}: choose from "
                     f"{list(METHODS)}.")
  if real_draws < 1:
    raise ValueError(f"--real_draws={real_draws} must be >= 1.")
  if random_dir and not os.path.exists(os.path.join(random_dir,
                                                    "report.json")):
    raise ValueError(f"--random_dir={random_dir} has no report.json (not a "
                     "finished rat_bptt run).")
  cfg = cfg.validate()
  os.makedirs(workdir, exist_ok=True)
  if cfg.data_source != "memory":  # its baselines need the arrays.
    raise ValueError(f"data_source={cfg.data_source!r}: this experiment "
                     "reads the whole splits; use --data_source=memory.")
  prep = rat_bptt.prepare(cfg, None, data_dir)
  rows = []
  for m in methods:
    if m in DISTILLED:
      sub_cfg = method_config(cfg, m, full_total_steps).validate()
      sub = random_dir if (m == "rat_random" and random_dir) else (
          os.path.join(workdir, m))
      rep = reuse_report(sub, sub_cfg)
      if rep is None:
        rep = rat_train.run(sub_cfg, sub, prep=prep, resume=resume,
                            show_progress=show_progress)
      if "interrupted_at" in rep:
        raise RuntimeError(f"{m} was interrupted at outer step "
                           f"{rep['interrupted_at']}; rerun with --resume.")
      rows.append({"method": m, "truncation": sub_cfg.truncation,
                   "total_steps": sub_cfg.total_steps,
                   "window": sub_cfg.window_len,
                   "outer_steps": rep["outer_steps"],
                   "best_step": rep["best_step"],
                   "train_time_s": distill_time(sub, rep),
                   "selected_budget": rep["selected_budget"],
                   "test_acc": rep["test_acc"], "workdir": sub})
    else:
      path = os.path.join(workdir, f"{m}.json")
      if os.path.exists(path):
        with open(path) as f:
          res = json.load(f)
      else:
        res = evaluate_baseline(m, cfg, prep, real_draws)
        storage.write_json(path, res)
      rows.append(res)
  table = {"dataset": prep.ds.name, "ipc": cfg.ipc, "arch": cfg.arch,
           "width": cfg.width, "eval_nets": cfg.eval_nets,
           "eval_budgets": list(cfg.eval_budgets),
           "eval_protocol": rat_eval.EVAL_PROTOCOL, "rows": rows}
  storage.write_json(os.path.join(workdir, "rat_compare.json"), table)
  names = {"rat_random": "RaT-BPTT (random window)",
           "rat_end": "truncated BPTT (window at the end)",
           "full": "full-unroll BPTT", "random_real": "random real",
           "kmeans": "k-means centroids"}
  lines = [f"# {prep.ds.name}, {cfg.ipc} image(s)/class: test % (mean ± std "
           f"over nets), {cfg.arch} w{cfg.width}", "",
           "| method | N / M | outer steps | distil time (s) | test % | "
           "budget (val) |", "|---|---|---|---|---|---|"]
  for r in rows:
    acc = r["test_acc"]
    nm = (f"{r['total_steps']} / {r['window']}" if "window" in r else "–")
    lines.append(
        f"| {names[r['method']]} | {nm} | {r.get('outer_steps', '–')} | "
        f"{r.get('train_time_s', '–')} | {acc['mean']:.2f} ± {acc['std']:.2f}"
        f" (n={acc['n']}) | {r['selected_budget']} |")
  storage.atomic_write(os.path.join(workdir, "rat_compare.md"),
                       lambda f: f.write("\n".join(lines) + "\n"), mode="w")
  print("\n".join(lines))
  return {"test_acc": None, **table}


main = common.rat_main(PRESETS, run, lambda: dict(
    methods=tuple(flags.FLAGS.methods),
    full_total_steps=flags.FLAGS.full_total_steps,
    random_dir=flags.FLAGS.random_dir, real_draws=flags.FLAGS.real_draws))


if __name__ == "__main__":
  common.define_flags(PRESETS, cfg_cls=rat_bptt.RatConfig)
  common.define_choice_list("methods", METHODS, METHODS,
                            "rows of the table, in this order")
  flags.DEFINE_integer("full_total_steps", 0,
                       "inner steps N of the full-unroll row (0: the window "
                       "M)")
  flags.DEFINE_string("random_dir", "",
                      "reuse this finished RaT-BPTT run as the rat_random row")
  flags.DEFINE_integer("real_draws", 3, "random-real sets evaluated")
  common.run(main)
