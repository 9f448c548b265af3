"""Dataset Distillation runs: `run(cfg, workdir)`.

It loads data, builds the model and the DD outer step (`methods.dd`), runs
the one host loop (`run.loop.outer_loop`: checkpoints, resume, validation
candidates, divergence checks, metrics), then evaluates the selected set on
held-out initialisations and writes the outputs. No flags, no globals.

With `eval_every > 0` the distilled set is replayed on the validation split
(held out from the training set) every `eval_every` steps and at the end;
with `select_on_val` the final outputs use the set with the best validation
accuracy (kept in the checkpoints), never anything chosen on the test set.

Outputs in `workdir`: config.json, metrics.jsonl, checkpoints/,
distilled.npz, steps/step_XX.png, report.json.
"""

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import config as config_lib
from distill_jax import data
from distill_jax import distilled_set
from distill_jax.data import sources
from distill_jax.data import zca as zca_lib
from distill_jax.eval import accuracy as accuracy_lib
from distill_jax.eval import replay as evaluate
from distill_jax.methods import dd
from distill_jax.methods import dd_data as distilled
from distill_jax.nn import inits
from distill_jax.nn import layers
from distill_jax.nn import models
from distill_jax.run import guard as guard_lib
from distill_jax.run import lock as lock_lib
from distill_jax.run import loop as loop_lib
from distill_jax.run import storage
from distill_jax.run import viz

# Fields that may differ between an interrupted run and its resumption: they
# change when the run stops, what it logs, or how (not what) it computes.
_RUN_CONTROL = ("log_every", "checkpoint_every", "time_budget_s", "eval_every",
                "eval_inits", "val_inits", "eval_batch", "outer_steps",
                "outer_epochs", "real_chunk", "remat", "init_group",
                "select_on_val", "data_source")


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

  Raises:
    guard.DivergedError: the run turned non-finite (no set is written).
    lock.WorkdirLockedError: another run is using `workdir`.
  """
  cfg.validate()
  with lock_lib.workdir_lock(workdir):  # before anything in it is written.
    return _run_locked(cfg, workdir, dataset=dataset, data_dir=data_dir,
                       resume=resume, show_progress=show_progress,
                       stop_at=stop_at)


def _run_locked(cfg: config_lib.DistillConfig, workdir: str, *,
                dataset: data.Dataset | None, data_dir: str | None,
                resume: bool, show_progress: bool,
                stop_at: int | None) -> dict:
  """`run` while it holds the workdir lock."""
  if jax.default_backend() == "cpu":
    layers.tune_cpu_malloc()
  os.makedirs(workdir, exist_ok=True)
  cfg_path = os.path.join(workdir, "config.json")
  if resume and os.path.exists(cfg_path):
    loop_lib.check_resume_config(cfg_path, cfg, _RUN_CONTROL)
  storage.atomic_write(cfg_path, lambda f: f.write(cfg.to_json()), mode="w")

  ds = dataset if dataset is not None else data.load_for(cfg, data_dir)
  ds, zca = whiten(ds, cfg.zca_reg) if cfg.zca else (ds, None)
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
  train = (sources.of(ds, "train") if ds.streams else sources.InMemory(
      jax.device_put(ds.x_train), jnp.asarray(ds.y_train)))
  if cfg.image_init == "real":
    learned["x"] = distilled.real_images(
        k_distilled, labels, ds.streams["train"] if ds.streams else
        ds.x_train, ds.y_train)
  n_train = len(ds.y_train)
  steps_per_epoch = max(1, n_train // cfg.real_batch)
  total = cfg.outer_steps or max(1, round(cfg.outer_epochs * steps_per_epoch))
  if cfg.learn_labels:
    learned["y"] = jax.nn.one_hot(labels, ds.num_classes, dtype=jnp.float32)
  tx = dd.optimizer(cfg, steps_per_epoch)
  state = dd.init_state(learned, tx)
  outer_step = dd.make_step(cfg, model.apply, model.init, tx)

  x_val, y_val = jax.device_put(ds.x_val), jnp.asarray(ds.y_val)
  val_params0 = inits.heldout(cfg.init_mode, source, model.init, k_val,
                              cfg.val_inits)
  eval_problem = replay_problem(cfg, model)

  def evaluate_candidate(learned):
    acc = evaluate.replay_accuracy(
        model.apply, val_params0, learned, labels, x_val, y_val,
        epochs=cfg.epochs, batch=cfg.eval_batch, problem=eval_problem,
        key=jax.random.fold_in(k_val, 1))
    return 100.0 * float(acc.mean())

  loop = loop_lib.LoopConfig(
      total=total, seed=cfg.seed, real_batch=cfg.real_batch,
      log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
      eval_every=cfg.eval_every, eval_last=cfg.eval_every > 0,
      select=cfg.select_on_val, time_budget_s=cfg.time_budget_s)
  out = loop_lib.outer_loop(
      workdir, state, outer_step,
      lambda idx: (labels, *train.step_arrays(idx), k_steps, source),
      n_train=n_train, loop=loop, advice=guard_lib.advice(cfg.outer_lr),
      evaluate=evaluate_candidate if len(ds.y_val) else None,
      resume=resume, show_progress=show_progress, stop_at=stop_at)
  if out.interrupted:
    return {"interrupted_at": out.steps}
  selected = {"step": out.best_step, "rule": "last"}
  if out.best_val is not None and cfg.select_on_val:
    selected = {"step": out.best_step, "rule": "best validation accuracy",
                "val_acc": out.best_val}
  return finalize(cfg, workdir, ds, model, out.learned, labels, source,
                  k_eval, outer_steps=out.steps,
                  train_time=out.train_time_s, selected=selected, zca=zca)


def whiten(ds: data.Dataset, reg: float):
  if ds.streams:
    raise ValueError(f"{ds.name}: the train split is streamed and zca=True "
                     "needs it in memory; use data_source='memory'.")
  """`ds` with every split ZCA-whitened by a transform fitted on train."""
  z = zca_lib.fit(ds.x_train, reg)
  return dataclasses.replace(
      ds, x_train=zca_lib.apply(z, ds.x_train),
      x_val=zca_lib.apply(z, ds.x_val) if len(ds.y_val) else ds.x_val,
      x_test=zca_lib.apply(z, ds.x_test)), z


def replay_problem(cfg: config_lib.DistillConfig, model: models.Model):
  """How a DD set is evaluated: replayed with the run's inner optimiser and
  augmentation (plain GD with the learned lrs for the paper's setting)."""
  if cfg.inner_opt == "gd" and not cfg.inner_wd and cfg.syn_aug == "none":
    return None  # `evaluate.replay_problem`, shared by every caller.
  return dd.problem(cfg, model.apply, remat="none")


def finalize(cfg, workdir, ds, model, learned, labels, source, key, *,
             outer_steps: int, train_time: float,
             selected: dict | None = None, zca=None) -> dict:
  """Evaluates on held-out inits and writes distilled.npz, PNGs, report."""
  learned = jax.tree.map(np.asarray, learned)
  params0 = inits.heldout(cfg.init_mode, source, model.init, key,
                          cfg.eval_inits)
  t = time.time()
  replay = functools.partial(
      evaluate.replay_accuracy, model.apply, params0, learned, labels,
      epochs=cfg.epochs, batch=cfg.eval_batch,
      problem=replay_problem(cfg, model), key=jax.random.fold_in(key, 1))
  test_acc = replay(*((ds.streams["test"], None) if ds.streams else (
      jax.device_put(ds.x_test), jnp.asarray(ds.y_test))))
  val_acc = (replay(jax.device_put(ds.x_val), jnp.asarray(ds.y_val))
             if len(ds.y_val) else None)
  eval_time = time.time() - t
  init_params = source.get("fixed") if cfg.init_mode == "fixed" else None
  path = os.path.join(workdir, "distilled.npz")
  storage.save_distilled_set(path, distilled_set.DistilledSet.from_dd(
      learned["x"], labels, learned["raw_lr"], epochs=cfg.epochs,
      soft_labels=learned.get("y"), mean=ds.mean, std=ds.std,
      class_names=ds.class_names, dataset=ds.name,
      model=distilled_set.model_spec(cfg),
      metadata={"init_mode": cfg.init_mode, "config": dataclasses.asdict(cfg),
                "outer_steps": outer_steps, "source": ds.source},
      init_params=jax.tree.map(np.asarray, init_params), zca=zca))
  viz.save_step_grids(os.path.join(workdir, "steps"), learned["x"],
                      np.asarray(labels), np.asarray(distilled.lrs(learned)),
                      ds.mean, ds.std, ds.class_names)
  report = {
      "dataset": ds.name, "arch": cfg.arch, "init_mode": cfg.init_mode,
      "outer_steps": outer_steps, "train_time_s": round(train_time, 1),
      "selected_checkpoint": selected or {"step": outer_steps,
                                          "rule": "last"},
      "eval_time_s": round(eval_time, 1),
      "test_acc": accuracy_lib.summary(test_acc),
      "val_acc": accuracy_lib.summary(val_acc) if val_acc is not None else None,
      "eval_protocol": "replay of the learned steps on held-out inits "
                       "(the fixed network itself for fixed modes)",
      "learned_lrs": [float(v) for v in distilled.lrs(learned)],
      "distilled": path,
  }
  storage.write_json(os.path.join(workdir, "report.json"), report)
  return report
