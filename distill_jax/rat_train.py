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
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import checkpoint
from distill_jax import data
from distill_jax import distilled
from distill_jax import models
from distill_jax import progress as progress_lib
from distill_jax import rat_bptt
from distill_jax import rat_eval
from distill_jax import storage
from distill_jax import train
from distill_jax import viz
from distill_jax import xla_options
from distill_jax import zca as zca_lib

_support = jax.jit(rat_bptt.support)  # one program, not eager operations.
# Fields a resumed run may change. `outer_steps` among them: a run can be
# extended, or finished at an earlier checkpoint (no schedule depends on it).
_RUN_CONTROL = ("log_every", "checkpoint_every", "time_budget_s", "eval_nets",
                "val_nets", "eval_batch", "eval_every", "real_chunk",
                "outer_steps")


def _check_resume(path: str, cfg: rat_bptt.RatConfig) -> None:
  with open(path) as f:
    old = json.load(f)
  new = json.loads(cfg.to_json())
  defaults = json.loads(rat_bptt.RatConfig().to_json())
  # A field added after `old` was written counts as its default there.
  diff = sorted(k for k in new if k not in _RUN_CONTROL and
                old.get(k, defaults.get(k)) != new[k])
  if diff:
    raise ValueError(
        f"--resume with a different configuration: {diff} differ from "
        f"{path}. Resume with the original flags or use a fresh --workdir.")


def _check_resume_steps(mngr: checkpoint.Manager, cfg: rat_bptt.RatConfig,
                        workdir: str) -> None:
  start = mngr.latest_step() or 0
  if start > cfg.outer_steps:
    raise ValueError(
        f"--resume: the newest checkpoint in {workdir} is at outer step "
        f"{start}, past outer_steps={cfg.outer_steps}. Resume with "
        f"outer_steps >= {start}, or finish at an earlier step from a "
        "copy of the run whose newest checkpoint is at that step.")


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
  host = functools.partial(jax.tree.map, np.asarray)
  ckpt = {"state": state, "best": host(state.learned),
          "best_val": np.float32(-1), "best_step": np.int32(0)}
  mngr = checkpoint.manager(workdir)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  start, elapsed = 0, 0.0
  if resume:
    _check_resume_steps(mngr, cfg, workdir)
    restored, ckpt = checkpoint.restore_latest(mngr, ckpt)
    start = int(restored or 0)
    elapsed = train.truncate_metrics(metrics_path, start)
  elif os.path.exists(metrics_path):
    os.remove(metrics_path)
  state = ckpt["state"]
  x_train, y_train = jax.device_put(prep.x_train), jnp.asarray(ds.y_train)
  val = (jax.device_put(prep.x_val), jnp.asarray(ds.y_val))
  n_train = len(ds.y_train)
  total = cfg.outer_steps
  bar = progress_lib.Progress(total, start, enabled=show_progress)
  t0, step = time.time() - elapsed, start  # wall time counts across resumes.

  def candidate(rec):
    res = rat_eval.evaluate_set(cfg, model, eval_train, k_val,
                                _support(state.learned, fixed),
                                state.learned, cfg.val_nets, val,
                                norm=prep.norm)
    xla_options.release_host_memory()  # the evaluation's compiler memory.
    score = float(res["val"].mean(1).max())
    rec["val_acc"] = round(100 * score, 3)
    if score > ckpt["best_val"]:
      ckpt.update(best=host(state.learned), best_val=np.float32(score),
                  best_step=np.int32(step))

  if step < total:
    xla_options.precompile(outer_step, state, fixed, x_train, y_train,
                           train.batch_indices(cfg.seed, step, n_train,
                                               cfg.real_batch), k_steps)
  with open(metrics_path, "a") as log:
    while step < total:
      idx = train.batch_indices(cfg.seed, step, n_train, cfg.real_batch)
      state, m = outer_step(state, fixed, x_train, y_train, idx, k_steps)
      step += 1
      last = step == total or (cfg.time_budget_s and
                               time.time() - t0 > cfg.time_budget_s)
      is_eval = bool(last or (cfg.eval_every and step % cfg.eval_every == 0))
      if step % cfg.log_every == 0 or is_eval:
        rec = {"step": step, "time_s": round(time.time() - t0, 3),
               **{k: float(v) for k, v in m.items()}}
        if is_eval:
          candidate(rec)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        bar.update(step, loss=rec["loss"])
      ckpt["state"] = state
      interrupted = stop_at is not None and step >= stop_at and not last
      if interrupted or last or (cfg.checkpoint_every and
                                 step % cfg.checkpoint_every == 0):
        checkpoint.save(mngr, step, ckpt)
      if interrupted:
        return {"interrupted": True, "outer_steps": step}
      if last:
        break
  if total == 0 or step == start and ckpt["best_val"] < 0:
    ckpt.update(best=host(state.learned), best_step=np.int32(step))
  bar.update(total if step == total else step)
  return {"learned": ckpt["best"], "best_step": int(ckpt["best_step"]),
          "best_val": float(ckpt["best_val"]), "outer_steps": step,
          "train_time_s": round(time.time() - t0, 1), "interrupted": False}



def save(cfg: rat_bptt.RatConfig, prep: rat_bptt.Prepared, workdir: str, x,
         y_soft, learned: dict, metadata: dict, block=None) -> str:
  """Writes distilled.npz (and image PNGs); x (C, P, ...), y_soft (C, P, C)."""
  ds = prep.ds
  c, p = x.shape[:2]
  flat_x = np.asarray(x, np.float32).reshape(1, c * p, *x.shape[2:])
  if "raw_lr" in learned:
    raw = np.asarray(learned["raw_lr"], np.float32)
  else:
    raw = np.full((cfg.total_steps,), distilled.inverse_softplus(
        cfg.inner_lr), np.float32)
  extra = {"class_index": np.repeat(np.arange(c), p).astype(np.int32)}
  if cfg.learn_labels:
    extra["soft_labels"] = np.asarray(y_soft, np.float32).reshape(c * p, c)
  if block is not None:
    extra["block"] = np.asarray(block, np.int32).reshape(c * p)
  if prep.zca is not None:
    extra.update(zca_lib.as_extra(prep.zca))
  path = os.path.join(workdir, "distilled.npz")
  storage.save_distilled(
      path, {"x": flat_x, "raw_lr": raw},
      np.repeat(np.arange(c), p).astype(np.int32)[None], steps=1,
      epochs=raw.size, mean=ds.mean, std=ds.std,
      metadata={**metadata, "config": dataclasses.asdict(cfg),
                "layout": "class-major: image i has class i // P",
                "raw_lr_meaning": f"inner {cfg.inner_opt} lr per step"},
      extra=extra)
  if c <= 20:
    vis, mean, std = np.asarray(x, np.float32), ds.mean, ds.std
    if prep.zca is not None:
      vis = zca_lib.unwhiten(prep.zca, vis.reshape(c * p, *x.shape[2:]))
      lo = vis.min(axis=(1, 2, 3), keepdims=True)
      hi = vis.max(axis=(1, 2, 3), keepdims=True)
      vis = ((vis - lo) / np.maximum(hi - lo, 1e-8)).reshape(x.shape)
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

  Outputs: config.json, metrics.jsonl, checkpoints/, distilled.npz (soft
  labels and ZCA in `extra/`), images/step_XX.png, report.json.

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
  """
  cfg.validate()
  if cfg.boost_blocks != 1:
    raise ValueError(f"boost_blocks={cfg.boost_blocks}: use "
                     "distill_jax.boost.run (experiments/boost_dd.py).")
  os.makedirs(workdir, exist_ok=True)
  cfg_path = os.path.join(workdir, "config.json")
  if resume and os.path.exists(cfg_path):
    _check_resume(cfg_path, cfg)
    # Before config.json is rewritten: a refused resume changes nothing.
    _check_resume_steps(checkpoint.manager(workdir), cfg, workdir)
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
            "best_candidate_val_acc": round(100 * out["best_val"], 3),
            "train_time_s": out["train_time_s"], **result,
            "labels": "learned soft" if cfg.learn_labels else "fixed hard",
            "zca": cfg.zca, "eval_protocol": rat_eval.EVAL_PROTOCOL,
            "distilled": path}
  storage.write_json(os.path.join(workdir, "report.json"), report)
  return report
