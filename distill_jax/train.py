"""The host loop of a distillation run: `run(cfg, workdir)`.

It loads data, builds the model and the jitted outer step, then loops:
real-batch indices from a per-epoch permutation seeded by (seed, epoch), PRNG
keys folded from the step number, metrics to `metrics.jsonl`, periodic
validation and checkpoints (`checkpoint`). Both the batch order and the
keys depend only on the seed and the step, so `resume=True` continues to the
same result as an uninterrupted run. No flags, no globals.

With `eval_every > 0` the distilled set is evaluated on the validation split
(held out from the training set) every `eval_every` steps; with
`select_on_val` the final outputs use the set with the best validation
accuracy (kept in best_val.npz), never anything chosen on the test set.

Outputs in `workdir`: config.json, metrics.jsonl, checkpoints/,
best_val.npz, distilled.npz, steps/step_XX.png, report.json.
"""

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import checkpoint
from distill_jax import config as config_lib
from distill_jax import data
from distill_jax import distilled
from distill_jax import evaluate
from distill_jax import inits
from distill_jax import layers
from distill_jax import models
from distill_jax import outer
from distill_jax import progress as progress_lib
from distill_jax import storage
from distill_jax import viz
from distill_jax import xla_options

# Fields that may differ between an interrupted run and its resumption: they
# change when the run stops, what it logs, or how (not what) it computes.
_RUN_CONTROL = ("log_every", "checkpoint_every", "time_budget_s", "eval_every",
                "eval_inits", "val_inits", "eval_batch", "outer_steps",
                "outer_epochs", "real_chunk", "remat", "init_group",
                "select_on_val")


def load_data(cfg: config_lib.DistillConfig, data_dir: str | None = None,
              pixels: str = "float32"):
  return data.load(cfg.dataset, manual_dir=data_dir, val_size=cfg.val_size,
                   seed=cfg.seed, image_size=cfg.image_size or None,
                   train_limit=cfg.train_limit or None,
                   channels=getattr(cfg, "channels", 0) or None,
                   pixels=pixels)


def init_source(cfg: config_lib.DistillConfig, model: models.Model,
                key: jax.Array) -> dict:
  """The p(theta_0) source for `inits.sample` (see inits.py)."""
  if cfg.init_mode == "fixed":
    return {"fixed": model.init(key)}
  if cfg.init_mode in ("fixed_pretrained", "random_pretrained"):
    pool, meta = storage.load_pool(cfg.pretrained_pool)
    if meta.get("arch") != cfg.arch:
      raise ValueError(
          f"Pool {cfg.pretrained_pool} holds {meta.get('arch')} networks but "
          f"arch={cfg.arch}; pretrain a pool for this architecture.")
    size = jax.tree.leaves(pool)[0].shape[0]
    if cfg.pool_heldout >= size:
      raise ValueError(f"pool_heldout={cfg.pool_heldout} leaves no training "
                       f"networks in a pool of {size}.")
    return {"pool": jax.tree.map(jnp.asarray, pool),
            "pool_train": size - cfg.pool_heldout}
  return {}


def _check_resume_config(path: str, cfg: config_lib.DistillConfig) -> None:
  with open(path) as f:
    old = json.load(f)
  new = dataclasses.asdict(cfg)
  # A field missing from an older config.json had its current default.
  defaults = dataclasses.asdict(config_lib.DistillConfig())
  diff = sorted(k for k in new if k not in _RUN_CONTROL and
                json.dumps(old.get(k, defaults[k])) != json.dumps(new[k]))
  if diff:
    raise ValueError(
        f"--resume with a different configuration: {diff} differ from "
        f"{path}. Resume with the original flags or use a fresh --workdir.")


@functools.lru_cache(maxsize=2)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)


def batch_indices(seed: int, step: int, n: int, batch: int) -> np.ndarray:
  """Real-batch indices of outer step `step`: epoch-wise permutations.

  The permutation of epoch e depends only on (seed, e), so any step's batch
  can be recomputed after a restart.
  """
  per_epoch = max(1, n // batch)
  epoch, i = divmod(step, per_epoch)
  return _epoch_permutation(seed, epoch, n)[i * batch:(i + 1) * batch]


def run(cfg: config_lib.DistillConfig, workdir: str, *,
        dataset: data.Dataset | None = None, data_dir: str | None = None,
        resume: bool = False, show_progress: bool = True,
        stop_at: int | None = None) -> dict:
  """Distils `cfg.dataset` and writes the outputs to `workdir`.

  Args:
    cfg: the run configuration.
    workdir: output directory (created).
    dataset: an already loaded `data.Dataset` (else loaded from cfg).
    data_dir: folder with local dataset copies (see `data.load`).
    resume: continue from the newest checkpoint in `workdir`.
    show_progress: print a progress line to stderr.
    stop_at: stop (with a checkpoint, no final outputs) once this many outer
      steps are done, as an interruption would; `resume=True` continues.

  Returns:
    The final report (also written to workdir/report.json).
  """
  cfg.validate()
  if jax.default_backend() == "cpu":
    layers.tune_cpu_malloc()
  os.makedirs(workdir, exist_ok=True)
  cfg_path = os.path.join(workdir, "config.json")
  if resume and os.path.exists(cfg_path):
    _check_resume_config(cfg_path, cfg)
  storage.atomic_write(cfg_path, lambda f: f.write(cfg.to_json()), mode="w")

  ds = dataset if dataset is not None else load_data(cfg, data_dir)
  if cfg.real_batch > len(ds.y_train):
    raise ValueError(f"real_batch={cfg.real_batch} exceeds the "
                     f"{len(ds.y_train)} training images.")
  model = models.build(cfg, ds.image_shape, ds.num_classes)
  key = jax.random.key(cfg.seed)
  k_distilled, k_fixed, k_steps, k_eval, k_val = jax.random.split(key, 5)
  source = init_source(cfg, model, k_fixed)
  learned, labels = distilled.init(
      k_distilled, steps=cfg.steps, epochs=cfg.epochs,
      num_classes=ds.num_classes, per_class=cfg.images_per_class_per_step,
      image_shape=ds.image_shape, lr_init=cfg.lr_init)
  if cfg.image_init == "real":
    learned["x"] = distilled.real_images(k_distilled, labels, ds.x_train,
                                         ds.y_train)
  n_train = len(ds.y_train)
  steps_per_epoch = max(1, n_train // cfg.real_batch)
  total = cfg.outer_steps or max(1, round(cfg.outer_epochs * steps_per_epoch))
  tx = outer.optimizer(cfg, steps_per_epoch)
  state = outer.init_state(learned, tx)
  outer_step = outer.make_step(cfg, model.apply, model.init, tx)

  mngr = checkpoint.manager(workdir)
  start, elapsed = 0, 0.0
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  if resume:
    restored_step, state = checkpoint.restore_latest(mngr, state)
    start = int(restored_step or 0)
    elapsed = truncate_metrics(metrics_path, start)
  elif os.path.exists(metrics_path):
    os.remove(metrics_path)

  x_train = jax.device_put(ds.x_train)
  y_train = jnp.asarray(ds.y_train)
  x_val, y_val = jax.device_put(ds.x_val), jnp.asarray(ds.y_val)
  val_params0 = inits.heldout(cfg.init_mode, source, model.init, k_val,
                              cfg.val_inits)
  best_path = os.path.join(workdir, "best_val.npz")
  best = _load_best(best_path) if resume else None
  if not resume and os.path.exists(best_path):
    os.remove(best_path)
  bar = progress_lib.Progress(total, start, enabled=show_progress,
                              time_budget_s=cfg.time_budget_s)
  t0 = time.time() - elapsed  # wall time counts across resumes.
  step = start
  if step < total:  # compile now, then return the compiler's freed memory.
    xla_options.precompile(
        outer_step, state, labels, x_train, y_train,
        batch_indices(cfg.seed, step, n_train, cfg.real_batch), k_steps,
        source)
  with open(metrics_path, "a") as log:
    while step < total:
      idx = batch_indices(cfg.seed, step, n_train, cfg.real_batch)
      state, m = outer_step(state, labels, x_train, y_train, idx, k_steps,
                            source)
      step += 1
      if step % cfg.log_every == 0 or step == total:
        rec = {"step": step, "time_s": round(time.time() - t0, 3),
               **{k: float(v) for k, v in m.items()}}
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == total):
          acc = evaluate.replay_accuracy(
              model.apply, val_params0, state.learned, labels,
              x_val, y_val, epochs=cfg.epochs, batch=cfg.eval_batch)
          rec["val_acc"] = float(acc.mean())
          if cfg.select_on_val and (best is None or
                                    rec["val_acc"] > best["val_acc"]):
            best = {"step": step, "val_acc": rec["val_acc"],
                    "learned": jax.tree.map(np.asarray, state.learned)}
            _save_best(best_path, best)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        bar.update(step, loss=rec["loss"], **(
            {"val_acc": rec["val_acc"]} if "val_acc" in rec else {}))
      if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
        checkpoint.save(mngr, step, state)
      if cfg.time_budget_s and time.time() - t0 > cfg.time_budget_s:
        break
      if stop_at is not None and step >= stop_at:
        checkpoint.save(mngr, step, state)
        return {"interrupted_at": step}
  bar.update(total if step == total else step)
  train_time = time.time() - t0
  checkpoint.save(mngr, step, state)
  learned, selected = state.learned, {"step": step, "rule": "last"}
  if best is not None:
    learned = best["learned"]
    selected = {"step": best["step"], "rule": "best validation accuracy",
                "val_acc": best["val_acc"]}
  return finalize(cfg, workdir, ds, model, learned, labels, source,
                  k_eval, outer_steps=step, train_time=train_time,
                  selected=selected)


def _save_best(path: str, best: dict) -> None:
  arrays = {f"learned/{k}": v for k, v in best["learned"].items()}
  arrays["step"] = np.array(best["step"])
  arrays["val_acc"] = np.array(best["val_acc"])
  storage.atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_best(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with np.load(path, allow_pickle=False) as z:
    return {"step": int(z["step"]), "val_acc": float(z["val_acc"]),
            "learned": {k.split("/", 1)[1]: z[k] for k in z.files
                        if k.startswith("learned/")}}


def finalize(cfg, workdir, ds, model, learned, labels, source, key, *,
             outer_steps: int, train_time: float,
             selected: dict | None = None) -> dict:
  """Evaluates on held-out inits and writes distilled.npz, PNGs, report."""
  learned = jax.tree.map(np.asarray, learned)
  params0 = inits.heldout(cfg.init_mode, source, model.init, key,
                          cfg.eval_inits)
  t = time.time()
  test_acc = evaluate.replay_accuracy(
      model.apply, params0, learned, labels, jax.device_put(ds.x_test),
      jnp.asarray(ds.y_test), epochs=cfg.epochs, batch=cfg.eval_batch)
  val_acc = (evaluate.replay_accuracy(
      model.apply, params0, learned, labels, jax.device_put(ds.x_val),
      jnp.asarray(ds.y_val), epochs=cfg.epochs, batch=cfg.eval_batch)
             if len(ds.y_val) else None)
  eval_time = time.time() - t
  metadata = {"dataset": ds.name, "arch": cfg.arch, "num_classes":
              ds.num_classes, "image_shape": list(ds.image_shape),
              "init_mode": cfg.init_mode, "config": dataclasses.asdict(cfg),
              "outer_steps": outer_steps, "source": ds.source}
  init_params = source.get("fixed") if cfg.init_mode == "fixed" else None
  path = os.path.join(workdir, "distilled.npz")
  storage.save_distilled(path, learned, np.asarray(labels), steps=cfg.steps,
                         epochs=cfg.epochs, mean=ds.mean, std=ds.std,
                         metadata=metadata, init_params=init_params)
  viz.save_step_grids(os.path.join(workdir, "steps"), learned["x"],
                      np.asarray(labels), np.asarray(distilled.lrs(learned)),
                      ds.mean, ds.std, ds.class_names)
  report = {
      "dataset": ds.name, "arch": cfg.arch, "init_mode": cfg.init_mode,
      "outer_steps": outer_steps, "train_time_s": round(train_time, 1),
      "selected_checkpoint": selected or {"step": outer_steps,
                                          "rule": "last"},
      "eval_time_s": round(eval_time, 1),
      "test_acc": evaluate.summary(test_acc),
      "val_acc": evaluate.summary(val_acc) if val_acc is not None else None,
      "eval_protocol": "replay of the learned steps on held-out inits "
                       "(the fixed network itself for fixed modes)",
      "learned_lrs": [float(v) for v in distilled.lrs(learned)],
      "distilled": path,
  }
  storage.write_json(os.path.join(workdir, "report.json"), report)
  return report


def truncate_metrics(path: str, step: int) -> float:
  """Drops records after `step` from a metrics.jsonl (used on resume).

  Returns the `time_s` of the last record kept (0.0 if none), so a resumed
  run's clock continues from the interrupted one (the time between its last
  log line and its checkpoint is not counted).
  """
  if not os.path.exists(path):
    return 0.0
  with open(path) as f:
    lines = [l for l in f if l.strip() and json.loads(l)["step"] <= step]
  storage.atomic_write(path, lambda f: f.writelines(lines), mode="w")
  return float(json.loads(lines[-1]).get("time_s", 0.0)) if lines else 0.0
