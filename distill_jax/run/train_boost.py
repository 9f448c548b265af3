"""Boost-DD: nested distilled sets grown block by block (OUR READING).

Feng, Vedantam, Kempe (ICLR 2024) observe that distilled images are
intercorrelated (a subset of a large distilled set is much worse than a set
distilled at the small size) and propose Boost-DD, which "iteratively learns
to distill a dataset into a small set while setting the learning rate of
previously distilled instances to small value" (strength beta). The code is
not released and the details are not recovered (METHODS.md B.10), so this
module implements two labelled readings (`boost_mode`):

  * the set grows in `boost_blocks` blocks of `ipc` images per class, each
    block distilled with RaT-BPTT (`rat_train.distill`);
  * "frozen": while block k is distilled, blocks 0..k-1 stay FIXED (no
    gradient) but are part of the inner training: they are subsampled like
    the new block and their per-example inner loss weight is beta
    (`boost_beta`), i.e. their gradient contribution (and, for plain GD /
    SGD, their inner learning rate) is scaled by beta;
  * "slow": "learning rate of previously distilled instances" read as the
    OUTER learning rate: while block k is distilled, blocks 0..k-1 keep
    being learned, their outer (Adam) update scaled by beta, and every image
    has inner weight 1, as at evaluation;
  * the result is nested: the first k blocks (k * ipc images per class)
    form the budget-k set; every prefix budget is evaluated with the
    RaT-BPTT protocol (validation-selected budget, test mean +- std), and
    trained on with uniform weights.

Outputs in workdir: block_XX/ (metrics, checkpoints, block.npz; in "slow"
mode block.npz holds blocks 0..XX as they were after block XX),
distilled.npz (all blocks; its `block` field gives each image's block),
report.json with one entry per prefix budget.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import data
from distill_jax import platform
from distill_jax.methods import rat_budgets as rat_eval
from distill_jax.methods import rat_bptt
from distill_jax.nn import models
from distill_jax.run import lock as lock_lib
from distill_jax.run import storage
from distill_jax.run import train_rat as rat_train


READINGS = {
    "frozen": "earlier blocks fixed, inner loss weight beta",
    "slow": "earlier blocks keep learning at beta x the outer update",
}


def fixed_blocks(xs: list, ys: list, beta: float, num_classes: int,
                 image_shape) -> rat_bptt.Support:
  """Earlier blocks as a fixed support with loss weight beta.

  Args:
    xs: list of block images, each (C, ipc, H, W, ch).
    ys: list of block targets, each (C, ipc, C).
    beta: weight of every earlier image in the inner loss.
    num_classes: C.
    image_shape: (H, W, ch).

  Returns:
    A `rat_bptt.Support` (empty when `xs` is empty).
  """
  if not xs:
    return rat_bptt.empty_fixed(num_classes, image_shape)
  x = jnp.concatenate([jnp.asarray(v) for v in xs], axis=1)
  y = jnp.concatenate([jnp.asarray(v) for v in ys], axis=1)
  return rat_bptt.Support(x, y, jnp.full(x.shape[:2], beta, jnp.float32))


def prefix(x: np.ndarray, y: np.ndarray, blocks: int, ipc: int):
  """The nested budget-`blocks` subset of class-major arrays (C, P, ...)."""
  return x[:, :blocks * ipc], y[:, :blocks * ipc]


def _load_block(path: str):
  """(x, y, extra) of a block.npz; extra holds raw_lr when it was learned."""
  try:
    with np.load(path, allow_pickle=False) as z:
      return z["x"], z["y"], {k: z[k] for k in z.files if k == "raw_lr"}
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(f"{path} is not a Boost-DD block file ({e}); delete it "
                     "to re-distil the block, or use a fresh --workdir.") from e


def _write_block(path: str, learned: dict, ds, keep_lr: bool):
  """Writes block.npz (images, targets, raw lrs if `keep_lr`) atomically and
  returns the (C, P, ...) images and (C, P, C) targets."""
  x = np.asarray(learned["x"])
  y = np.asarray(rat_bptt.support(
      learned, rat_bptt.empty_fixed(ds.num_classes, ds.image_shape)).y)
  extra = ({k: np.asarray(v) for k, v in learned.items() if k == "raw_lr"}
           if keep_lr else {})
  storage.atomic_write(path, lambda f: np.savez(f, x=x, y=y, **extra))
  return x, y


def run(cfg: rat_bptt.RatConfig, workdir: str, *,
        dataset: data.Dataset | None = None, data_dir: str | None = None,
        resume: bool = False, show_progress: bool = True,
        prep: rat_bptt.Prepared | None = None) -> dict:
  """Distils `cfg.boost_blocks` nested blocks and evaluates every prefix.

  Args:
    cfg: configuration (`ipc` = block size, `boost_blocks`, `boost_beta`).
    workdir: output directory.
    dataset: an already loaded dataset.
    data_dir: local dataset copies.
    resume: skip finished blocks and resume the current one.
    show_progress: progress line on stderr.
    prep: already prepared data.

  Returns:
    The report (also workdir/report.json).

  Raises:
    guard.DivergedError: a block's run turned non-finite (its
      `rat_train.distill` stops; no set is written).
    lock.WorkdirLockedError: another run is using `workdir`.
  """
  cfg.validate()
  if cfg.batch_per_class > cfg.ipc:
    raise ValueError(f"batch_per_class={cfg.batch_per_class} exceeds the "
                     f"block size ipc={cfg.ipc} (block 0 has only ipc images "
                     "per class); lower --batch_per_class.")
  with lock_lib.workdir_lock(workdir):  # before anything in it is written.
    return _run_locked(cfg, workdir, dataset=dataset, data_dir=data_dir,
                       resume=resume, show_progress=show_progress, prep=prep)


def _slow_block(cfg: rat_bptt.RatConfig, b: int, k_b, prev_learned: dict,
                prep, model, sub: str, *, resume: bool,
                show_progress: bool) -> dict:
  """Slow mode, block b: the earlier blocks (scaled by beta) keep learning
  beside b new images per class."""
  ds = prep.ds
  new = rat_bptt.init_learned(jax.random.split(k_b, 3)[0], cfg,
                              ds.num_classes, ds.image_shape)
  scale = np.ones((ds.num_classes, (b + 1) * cfg.ipc), np.float32)
  init = new
  if b:
    prev = {k: np.asarray(v) for k, v in prev_learned.items()}
    init = {**prev, "x": np.concatenate([prev["x"], new["x"]], 1)}
    if "y" in prev:
      init["y"] = np.concatenate([prev["y"], np.asarray(new["y"])], 1)
    scale[:, :b * cfg.ipc] = cfg.boost_beta
  return rat_train.distill(
      dataclasses.replace(cfg, ipc=(b + 1) * cfg.ipc), prep, model, sub,
      key=k_b, resume=resume, show_progress=show_progress, init=init,
      x_scale=scale)


def _nested_budgets(cfg: rat_bptt.RatConfig, prep, model, k_eval, x_all,
                    y_all) -> list[dict]:
  """The final evaluation of the first k blocks, k = 1 .. boost_blocks."""
  ds = prep.ds
  budgets = []
  no_fixed = rat_bptt.empty_fixed(ds.num_classes, ds.image_shape)
  for k in range(1, cfg.boost_blocks + 1):
    px, py = prefix(x_all, y_all, k, cfg.ipc)
    learned = {"x": px, **({"y": py} if cfg.learn_labels else {})}
    sup = rat_bptt.support(learned, no_fixed)
    res = rat_eval.final_eval(cfg, prep, model, jax.random.fold_in(k_eval, k),
                              sup, learned)
    budgets.append({"ipc": k * cfg.ipc, "blocks": k, **res})
  return budgets


def _run_locked(cfg: rat_bptt.RatConfig, workdir: str, *,
                dataset: data.Dataset | None, data_dir: str | None,
                resume: bool, show_progress: bool,
                prep: rat_bptt.Prepared | None) -> dict:
  """`run` while it holds the workdir lock."""
  if platform.current().checkpoint_dir:
    raise ValueError("Boost-DD keeps one checkpoint folder per block in "
                     "<workdir>/block_XX; drop --checkpoint_dir.")
  os.makedirs(workdir, exist_ok=True)
  storage.atomic_write(os.path.join(workdir, "config.json"),
                       lambda f: f.write(cfg.to_json()), mode="w")
  prep = prep or rat_bptt.prepare(cfg, dataset, data_dir)
  ds = prep.ds
  model = models.build(cfg, ds.image_shape, ds.num_classes)
  key = jax.random.key(cfg.seed)
  k_blocks, k_eval = jax.random.split(key)
  xs, ys, block_info = [], [], []
  prev_learned = {}
  for b in range(cfg.boost_blocks):
    sub = os.path.join(workdir, f"block_{b:02d}")
    path = os.path.join(sub, "block.npz")
    if resume and os.path.exists(path):
      x, y, extra = _load_block(path)
      if cfg.boost_mode == "slow":
        prev_learned = {"x": x, **extra}
      block_info.append({"block": b, "resumed": True})
    elif cfg.boost_mode == "slow":
      out = _slow_block(cfg, b, jax.random.fold_in(k_blocks, b),
                        prev_learned, prep, model, sub, resume=resume,
                        show_progress=show_progress)
      prev_learned = out["learned"]
      x, y = _write_block(path, prev_learned, ds, keep_lr=True)
      block_info.append({"block": b, "best_step": out["best_step"],
                         "train_time_s": out["train_time_s"]})
    else:
      fixed = fixed_blocks(xs, ys, cfg.boost_beta, ds.num_classes,
                           ds.image_shape)
      out = rat_train.distill(cfg, prep, model, sub, fixed=fixed,
                              key=jax.random.fold_in(k_blocks, b),
                              resume=resume, show_progress=show_progress)
      x, y = _write_block(path, out["learned"], ds, keep_lr=False)
      block_info.append({"block": b, "best_step": out["best_step"],
                         "train_time_s": out["train_time_s"]})
    if cfg.boost_mode == "slow":  # block.npz holds every block so far.
      xs, ys = [x], [y]
      prev_learned = {"x": x, **({"y": y} if cfg.learn_labels else {}),
                      **{k: v for k, v in prev_learned.items()
                         if k == "raw_lr"}}
    else:
      xs.append(x)
      ys.append(y)
  x_all = np.concatenate(xs, axis=1)
  y_all = np.concatenate(ys, axis=1)
  budgets = _nested_budgets(cfg, prep, model, k_eval, x_all, y_all)
  block = np.broadcast_to(np.repeat(np.arange(cfg.boost_blocks), cfg.ipc),
                          x_all.shape[:2])
  path = rat_train.save(
      dataclasses.replace(cfg, ipc=cfg.ipc * cfg.boost_blocks), prep, workdir,
      x_all, y_all, {}, {"method": "boost_dd", "source": ds.source,
                         "reading": f"our reading (METHODS.md B.10): "
                                    f"{READINGS[cfg.boost_mode]}",
                         "block_ipc": cfg.ipc}, block=block)
  report = {"dataset": ds.name, "method": "boost_dd (our reading, METHODS.md "
            f"B.10): {READINGS[cfg.boost_mode]}", "boost_mode": cfg.boost_mode,
            "block_ipc": cfg.ipc, "blocks": cfg.boost_blocks,
            "beta": cfg.boost_beta, "budgets": budgets,
            "test_acc": budgets[-1]["test_acc"], "block_runs": block_info,
            "eval_protocol": rat_eval.EVAL_PROTOCOL, "distilled": path}
  storage.write_json(os.path.join(workdir, "report.json"), report)
  return report
