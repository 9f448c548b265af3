"""RaT-BPTT host loop: distillation with checkpoints, resume, outputs.

`distill` runs the outer loop for one block of learned images (Boost-DD
calls it once per block): real batches and PRNG keys depend only on the seed
and the outer step, candidates are scored on the validation split every
`eval_every` steps (`rat_eval`), and checkpoints (`checkpoint`) hold the
outer state and the best candidate, so a resumed run reaches the same
result as an uninterrupted one. `run` adds the final evaluation and writes
the outputs.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import data
from distill_jax import distilled_set
from distill_jax.methods import rat_budgets as rat_eval
from distill_jax.methods import rat_bptt
from distill_jax.nn import models
from distill_jax.platform import xla_options
from distill_jax.run import guard as guard_lib
from distill_jax.run import lock as lock_lib
from distill_jax.run import loop as loop_lib
from distill_jax.run import storage
from distill_jax.run import viz

_support = jax.jit(rat_bptt.support)  # one program, not eager operations.
# Fields a resumed run may change. `outer_steps` among them: a run can be
# extended, or finished at an earlier checkpoint (no schedule depends on it).
_RUN_CONTROL = ("init_group", "log_every", "checkpoint_every",
                "time_budget_s", "eval_nets", "val_nets", "eval_batch",
                "eval_every", "real_chunk", "outer_steps", "data_source")


def distill(cfg: rat_bptt.RatConfig, prep: rat_bptt.Prepared,
            model: models.Model, workdir: str, *,
            fixed: rat_bptt.Support | None = None,
            key: jax.Array | None = None, resume: bool = False,
            show_progress: bool = True, stop_at: int | None = None,
            init: dict | None = None, x_scale=None) -> dict:
  """The outer loop: distils one block, keeps the validation-best set.

  Args:
    cfg: configuration.
    prep: prepared data.
    model: the network.
    workdir: where metrics.jsonl and checkpoints/ go.
    fixed: earlier (Boost-DD) blocks trained on but not learned.
    key: PRNG key (default from cfg.seed).
    resume: continue from the newest checkpoint in `workdir`.
    show_progress: progress line on stderr.
    stop_at: stop with a checkpoint after this many steps (as an
      interruption would).
    init: initial learned pytree (default `rat_bptt.init_learned`).
    x_scale: (C, P) per-image scale of the outer update (Boost-DD "slow").

  Returns:
    {"learned": best learned pytree (numpy), "best_step", "best_val",
     "outer_steps", "train_time_s", "interrupted"}.
  """
  ds = prep.ds
  os.makedirs(workdir, exist_ok=True)
  key = jax.random.key(cfg.seed) if key is None else key
  k_data, k_steps, k_val = jax.random.split(key, 3)
  fixed = fixed or rat_bptt.empty_fixed(ds.num_classes, ds.image_shape)
  tx = rat_bptt.outer_optimizer(cfg)
  # Set-up as one program each: on XLA:CPU every eagerly run operation is
  # an executable of its own, and dozens of them kept ~60 MiB.
  if init is None:
    init = rat_bptt.init_learned(k_data, cfg, ds.num_classes, ds.image_shape)
  state = xla_options.jit(lambda l: rat_bptt.init_state(l, tx))(
      jax.tree.map(jnp.asarray, init))
  outer_step = rat_bptt.make_step(
      cfg, model, tx, None if x_scale is None else jnp.asarray(x_scale),
      norm=prep.norm)
  eval_train = rat_eval.make_eval_train(cfg, model)
  train = prep.split("train")  # in memory or streamed (`data.sources`).
  val = (jax.device_put(prep.x_val), jnp.asarray(ds.y_val))

  def evaluate_candidate(learned):
    res = rat_eval.evaluate_set(cfg, model, eval_train, k_val,
                                _support(learned, fixed), learned,
                                cfg.val_nets, val, norm=prep.norm)
    xla_options.release_host_memory()  # the evaluation's compiler memory.
    return 100.0 * float(res["val"].mean(1).max())

  loop = loop_lib.LoopConfig(
      total=cfg.outer_steps, seed=cfg.seed, real_batch=cfg.real_batch,
      log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
      eval_every=cfg.eval_every, eval_last=True, select=True,
      time_budget_s=cfg.time_budget_s)
  out = loop_lib.outer_loop(
      workdir, state, outer_step,
      lambda idx: (fixed, *train.step_arrays(idx), k_steps),
      n_train=len(ds.y_train), loop=loop,
      advice=guard_lib.advice(cfg.outer_lr, cfg.clip_coef),
      evaluate=evaluate_candidate, resume=resume,
      show_progress=show_progress, stop_at=stop_at)
  if out.interrupted:
    return {"interrupted": True, "outer_steps": out.steps}
  return {"learned": out.learned, "best_step": out.best_step,
          "best_val": out.best_val,
          "outer_steps": out.steps, "train_time_s": out.train_time_s,
          "interrupted": False}


def save(cfg: rat_bptt.RatConfig, prep: rat_bptt.Prepared, workdir: str, x,
         y_soft, learned: dict, metadata: dict, block=None) -> str:
  """Writes distilled.npz (a `DistilledSet`) and image PNGs.

  Args:
    cfg: the configuration (its `ipc` the images per class in `x`).
    prep: the prepared data (dataset statistics, class names, ZCA).
    workdir: output directory.
    x: (C, P, H, W, ch) class-major images.
    y_soft: (C, P, C) targets; stored when `cfg.learn_labels`.
    learned: the learned pytree (its "raw_lr", if any, is stored).
    metadata: run description; "method" ("rat_bptt" default, "boost_dd")
      is the set's method, and the fields the set holds itself (dataset,
      arch, num_classes, image_shape) are dropped from it.
    block: (C, P) Boost-DD block of each image, or None.

  Returns:
    The path of distilled.npz.
  """
  ds = prep.ds
  c, p = x.shape[:2]
  metadata = {k: v for k, v in metadata.items() if k not in (
      "dataset", "arch", "num_classes", "image_shape")}
  method = metadata.pop("method", "rat_bptt")
  path = os.path.join(workdir, "distilled.npz")
  dset = distilled_set.DistilledSet.from_per_class(
      x, y_soft if cfg.learn_labels else None, raw_lr=learned.get("raw_lr"),
      block=block, mean=ds.mean, std=ds.std, class_names=ds.class_names,
      dataset=ds.name, method=method, model=distilled_set.model_spec(cfg),
      metadata={**metadata, "config": dataclasses.asdict(cfg)}, zca=prep.zca)
  storage.save_distilled_set(path, dset)
  if c <= 20:
    vis, mean, std = np.asarray(x, np.float32), ds.mean, ds.std
    if prep.zca is not None:  # per-image stretched, already in [0, 1].
      vis = dset.pixels().reshape(x.shape)
      mean, std = (0.0,) * x.shape[-1], (1.0,) * x.shape[-1]
    viz.save_step_grids(os.path.join(workdir, "images"), vis.swapaxes(0, 1),
                        np.tile(np.arange(c), (p, 1)), np.full(p, cfg.inner_lr),
                        mean, std, ds.class_names)
  return path


def run(cfg: rat_bptt.RatConfig, workdir: str, *,
        dataset: data.Dataset | None = None, data_dir: str | None = None,
        resume: bool = False, show_progress: bool = True,
        stop_at: int | None = None,
        prep: rat_bptt.Prepared | None = None,
        release_compiled: bool = True) -> dict:
  """Distils `cfg.dataset` with RaT-BPTT and writes the outputs to workdir.

  Outputs: config.json, metrics.jsonl, checkpoints/, distilled.npz (a
  `DistilledSet` with soft labels and ZCA), images/step_XX.png, report.json.

  Args:
    cfg: the configuration.
    workdir: output directory.
    dataset: an already loaded dataset (else loaded from cfg).
    data_dir: local dataset copies (see `data.load`).
    resume: continue from the newest checkpoint.
    show_progress: progress line on stderr.
    stop_at: stop after this many outer steps with a checkpoint.
    prep: already prepared data (overrides `dataset`).
    release_compiled: drop JAX's compiled programs between distillation and
      the final evaluation (`xla_options.release_compiled`; process-wide,
      other jitted functions recompile on their next call), so the
      distillation's outer step (~100 MiB on XLA:CPU) and candidate
      programs are not resident while the evaluation compiles and runs.

  Returns:
    The report (also workdir/report.json).

  Raises:
    guard.DivergedError: the run turned non-finite (no set is written).
    lock.WorkdirLockedError: another run is using `workdir`.
  """
  cfg.validate()
  if cfg.boost_blocks != 1:
    raise ValueError(f"boost_blocks={cfg.boost_blocks}: use "
                     "distill_jax.run.train_boost.run (experiments/boost_dd.py).")
  with lock_lib.workdir_lock(workdir):  # before anything in it is written.
    return _run_locked(cfg, workdir, dataset=dataset, data_dir=data_dir,
                       resume=resume, show_progress=show_progress,
                       stop_at=stop_at, prep=prep,
                       release_compiled=release_compiled)


def _run_locked(cfg: rat_bptt.RatConfig, workdir: str, *,
                dataset: data.Dataset | None, data_dir: str | None,
                resume: bool, show_progress: bool, stop_at: int | None,
                prep: rat_bptt.Prepared | None,
                release_compiled: bool) -> dict:
  """`run` while it holds the workdir lock."""
  os.makedirs(workdir, exist_ok=True)
  cfg_path = os.path.join(workdir, "config.json")
  if resume and os.path.exists(cfg_path):
    loop_lib.check_resume_config(cfg_path, cfg, _RUN_CONTROL)
    # Before config.json is rewritten: a refused resume changes nothing.
    loop_lib.check_resume_steps(workdir, cfg.outer_steps)
  storage.atomic_write(cfg_path, lambda f: f.write(cfg.to_json()), mode="w")
  prep = prep or rat_bptt.prepare(cfg, dataset, data_dir)
  ds = prep.ds
  model = models.build(cfg, ds.image_shape, ds.num_classes)
  k_distill, k_eval = jax.random.split(jax.random.key(cfg.seed))
  out = distill(cfg, prep, model, workdir, key=k_distill, resume=resume,
                show_progress=show_progress, stop_at=stop_at)
  if out["interrupted"]:
    return {"interrupted_at": out["outer_steps"]}
  if release_compiled:
    xla_options.release_compiled()
  learned = out["learned"]
  sup = _support(learned, rat_bptt.empty_fixed(ds.num_classes, ds.image_shape))
  result = rat_eval.final_eval(cfg, prep, model, k_eval, sup, learned)
  path = save(cfg, prep, workdir, learned["x"], sup.y, learned,
              {"dataset": ds.name, "arch": cfg.arch, "method": "rat_bptt",
               "num_classes": ds.num_classes, "source": ds.source,
               "image_shape": list(ds.image_shape),
               "outer_steps": out["outer_steps"],
               "best_step": out["best_step"]})
  report = {"dataset": ds.name, "method": "rat_bptt", "ipc": cfg.ipc,
            "arch": cfg.arch, "truncation": cfg.truncation,
            "total_steps": cfg.total_steps, "window": cfg.window_len,
            "outer_steps": out["outer_steps"], "best_step": out["best_step"],
            "best_candidate_val_acc": out["best_val"],
            "train_time_s": out["train_time_s"], **result,
            "labels": "learned soft" if cfg.learn_labels else "fixed hard",
            "zca": cfg.zca, "eval_protocol": rat_eval.EVAL_PROTOCOL,
            "distilled": path}
  storage.write_json(os.path.join(workdir, "report.json"), report)
  return report
