"""Decoupled runs: squeeze, recover (or select), relabel, post-train, score.

`run(cfg, workdir)` loads the data, trains or reuses the cached teacher
(`methods.decoupled.teacher`), makes the set:

  * sre2l / cda / delt: the recover loop (`methods.decoupled.recover`) on
    the one host loop (`run.loop.outer_loop`: checkpoints, resume,
    divergence checks, metrics);
  * scdd: the same recover loop against a self-supervised teacher (SimCLR
    backbone + linear probe, `methods.decoupled.ssl`, cached beside the
    supervised teacher); relabel and post-train use the supervised
    teacher, as the released code does (METHODS.md C.8 item 8);
  * gvbsm: the same loop with the pool of teachers round-robin
    (`methods.decoupled.gvbsm`), soft labels from the pool's ensemble;
  * rded: teacher-scored crop selection, no optimisation;
  * random_real: class-balanced random training images;

writes `distilled.npz` (a `DistilledSet`, hard labels; soft labels come
from the stored teacher), and scores it with the fair evaluation
(`run.fair_eval`) into `report.json`.
"""

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import data
from distill_jax import distilled_set
from distill_jax.data import crops
from distill_jax.data import sources
from distill_jax.importers import contract as import_contract
from distill_jax.methods.decoupled import config as config_lib
from distill_jax.methods.decoupled import gvbsm
from distill_jax.methods.decoupled import pixels
from distill_jax.methods.decoupled import rded
from distill_jax.methods.decoupled import recover
from distill_jax.methods.decoupled import ssl
from distill_jax.methods.decoupled import teacher as teacher_lib
from distill_jax.methods.decoupled import terms
from distill_jax.run import fair_eval
from distill_jax.run import guard as guard_lib
from distill_jax.run import lock as lock_lib
from distill_jax.run import loop as loop_lib
from distill_jax.run import storage

_RUN_CONTROL = ("eval_hard", "eval_random", "eval_metrics", "cross_archs",
                "teacher_cache", "data_source")


def default_cache() -> str:
  return os.path.join(os.path.expanduser("~"), ".cache", "distill_jax",
                      "teachers")


def load_data(cfg: config_lib.DecoupledConfig, data_dir=None):
  ds = data.load_for(cfg, data_dir, pixels="float32")
  data.clear_cache()
  return ds


def recover_images(cfg, ds, teacher, workdir: str, *, resume: bool,
                   show_progress: bool, log=print, pool=None):
  """The recover loop; returns ((C, IPC, H, W, ch) images, info).

  G-VBSM: `pool` is its list of teachers (`gvbsm.load_pool`)."""
  rcfg = cfg.recover_cfg()
  c = ds.num_classes
  key = jax.random.key(cfg.seed)
  k_init, k_loop = jax.random.split(key)
  scores = None
  x_train = sources.images(ds, "train")  # Read on demand if streamed.
  if rcfg.init_mode == "real_medium":
    scores = _true_class_prob(teacher, x_train, ds.y_train)
  x0 = recover.init_images(rcfg, k_init, c, ds.image_shape, x_train,
                           ds.y_train, scores)
  from distill_jax.core import outer  # pylint: disable=g-import-not-at-top
  if rcfg.method == "gvbsm":
    tcfgs = gvbsm.member_cfgs(cfg.teacher_cfg(), cfg.gvbsm_pool)
    log("gvbsm: real conv statistics, one pass per teacher")
    targets_ = [gvbsm.real_conv_stats(t, tc, x_train, rcfg.stats_batch,
                                      cfg.seed) for t, tc in zip(pool, tcfgs)]
    step = gvbsm.GvbsmStep(rcfg, pool, targets_, c, ds.mean, ds.std)
    state = outer.init_state(step.init_learned(x0), step.tx)
  else:
    objective = terms.sre2l(rcfg.r_bn, rcfg.first_bn_multiplier)
    step = recover.RoundStep(rcfg, teacher, objective, ds.image_shape, c,
                             ds.mean, ds.std)
    state = outer.init_state({"x": jnp.asarray(x0, jnp.float32)},
                             recover.optimizer(rcfg))
  targets = jnp.repeat(jnp.arange(c), rcfg.ipc)
  loop = loop_lib.LoopConfig(
      total=rcfg.iterations, seed=cfg.seed, real_batch=1,
      log_every=max(1, rcfg.iterations // 20), checkpoint_every=500,
      select=False)
  t = time.time()
  res = loop_lib.outer_loop(
      os.path.join(workdir, "recover"), state, step,
      lambda batch_idx: (targets, k_loop), n_train=1, loop=loop,
      advice=guard_lib.advice(rcfg.lr).replace("--outer_lr",
                                               "--recover_lr"),
      resume=resume, show_progress=show_progress)
  info = {"recover_time_s": round(time.time() - t, 1),
          "image_iterations": step.image_iterations(),
          "iterations": rcfg.iterations}
  return np.asarray(res.learned["x"]), info


def _true_class_prob(teacher, x, y, batch: int = 1000) -> np.ndarray:
  f = jax.jit(lambda xb: jax.nn.softmax(teacher.logits(xb)))
  p = np.concatenate([np.asarray(f(jnp.asarray(x[i:i + batch])))
                      for i in range(0, len(x), batch)])
  return p[np.arange(len(y)), np.asarray(y)]


def rded_images(cfg, ds, teacher):
  """RDED selection with the teacher's CE as the score (C.8)."""
  h, w = ds.image_shape[:2]
  score = jax.jit(lambda xb, yb: -jnp.take_along_axis(
      jax.nn.log_softmax(teacher.logits(xb)), yb[:, None], 1)[:, 0])
  min_scale = 1.0 / cfg.rded_factor if cfg.rded_factor > 1 else 0.5

  def crop_fn(key, images, n):
    keys = jax.random.split(key, n)
    out = [crops.random_resized_crop(k, jnp.asarray(images),
                                     min_scale=min_scale, per_image=True)[0]
           for k in keys]
    return jnp.stack(out, 1)
  sel = rded.select(jax.random.key(cfg.seed), sources.images(ds, "train"),
                    ds.y_train,
                    num_classes=ds.num_classes, ipc=cfg.ipc,
                    score_fn=lambda xb, yb: score(jnp.asarray(xb),
                                                  jnp.asarray(yb)),
                    crop_fn=crop_fn, factor=cfg.rded_factor,
                    num_crops=cfg.rded_crops,
                    num_candidates=cfg.rded_candidates, out_hw=(h, w))
  return np.asarray(sel.images, np.float32)


def run(cfg: config_lib.DecoupledConfig, workdir: str, *,
        dataset: data.Dataset | None = None, data_dir: str | None = None,
        resume: bool = False, show_progress: bool = True) -> dict:
  """The whole run; returns the report (also written to report.json)."""
  cfg.validate()
  lock_lib.ensure_workdir(workdir)
  with lock_lib.workdir_lock(workdir):
    return _run_locked(cfg, workdir, dataset, data_dir, resume,
                       show_progress)


def _run_locked(cfg, workdir, dataset, data_dir, resume, show_progress):
  log = print if show_progress else (lambda *a, **k: None)
  cfg_path = os.path.join(workdir, "config.json")
  if resume and os.path.exists(cfg_path):
    loop_lib.check_resume_config(cfg_path, cfg, _RUN_CONTROL)
  storage.atomic_write(cfg_path, lambda f: f.write(cfg.to_json()), mode="w")
  t0 = time.time()
  ds = dataset if dataset is not None else load_data(cfg, data_dir)
  cache = cfg.teacher_cache or default_cache()
  teacher = teacher_lib.load_or_train(cfg.teacher_cfg(), ds, cache, log=log)
  info, extra_meta, pool, relabel_teacher = {}, {}, None, None
  if cfg.method == "gvbsm":
    pool = gvbsm.load_pool(cfg.teacher_cfg(), cfg.gvbsm_pool, ds, cache,
                           log=log)
    relabel_teacher = gvbsm.ensemble(pool, ds)
    info["pool"] = [{"recipe": p.meta["recipe"], "test_acc": p.meta["test_acc"]}
                    for p in pool]
    info["ensemble_test_acc"] = relabel_teacher.meta["test_acc"]
  t = time.time()
  if cfg.method == "scdd":
    ssl_teacher = ssl.load_or_train(cfg.ssl_cfg(),
                                    cfg.teacher_cfg().model_spec(ds), ds,
                                    cache, log=log)
    extra_meta["ssl_teacher"] = {k: v for k, v in ssl_teacher.meta.items()
                                 if k != "class_names"}
    info["ssl_probe_test_acc"] = ssl_teacher.meta["test_acc"]
    t = time.time()
    x, info_r = recover_images(cfg, ds, ssl_teacher, workdir, resume=resume,
                               show_progress=show_progress, log=log)
    info.update(info_r)
  elif cfg.method in recover.METHODS:
    x, info_r = recover_images(cfg, ds, teacher, workdir, resume=resume,
                               show_progress=show_progress, log=log,
                               pool=pool)
    info.update(info_r)
  elif cfg.method == "rded":
    x = rded_images(cfg, ds, teacher)
  else:
    x, _ = rded.random_real(jax.random.key(cfg.seed),
                            sources.images(ds, "train"), ds.y_train, cfg.ipc,
                            ds.num_classes)
  info["synthesis_time_s"] = round(time.time() - t, 1)
  x = np.asarray(x, np.float32)
  if cfg.jpeg_quality:
    flat = pixels.quantize_jpeg(x.reshape(-1, *ds.image_shape), ds.mean,
                                ds.std, quality=cfg.jpeg_quality)
    x = np.asarray(flat, np.float32).reshape(x.shape)
  spec = cfg.teacher_cfg().model_spec(ds)
  dset = distilled_set.DistilledSet.from_per_class(
      x, mean=ds.mean, std=ds.std, class_names=ds.class_names,
      dataset=ds.name, method=cfg.method,
      model={k: (list(v) if isinstance(v, tuple) else v)
             for k, v in spec.items()},
      metadata={"config": dataclasses.asdict(cfg),
                "teacher": {k: v for k, v in teacher.meta.items()
                            if k != "class_names"}, **extra_meta})
  path = os.path.join(workdir, "distilled.npz")
  storage.save_distilled_set(path, dset)
  flat_x = x.reshape(-1, *ds.image_shape)
  labels = np.repeat(np.arange(ds.num_classes), cfg.ipc).astype(np.int32)
  ev = fair_eval.evaluate(cfg, flat_x, labels, ds, teacher, cache_dir=cache,
                          relabel=relabel_teacher, log=log)
  report = {"method": cfg.method, "dataset": ds.name, "ipc": cfg.ipc,
            "test_acc": ev["soft"]["test_acc"],
            "teacher_test_acc": teacher.meta["test_acc"],
            "teacher_recipe": teacher.meta["recipe"], **info, **extra_meta,
            "evaluation": ev, "distilled": path,
            "time_s": round(time.time() - t0, 1),
            "protocol_note": (
                "epochs chosen on the validation split; released code "
                "selects the best test epoch (METHODS.md C.8 item 1)")}
  storage.write_json(os.path.join(workdir, "report.json"), report)
  return report


def evaluate_file(cfg: config_lib.DecoupledConfig, workdir: str, *,
                  distilled: str, dataset: data.Dataset | None = None,
                  data_dir: str | None = None, resume: bool = False,
                  show_progress: bool = True) -> dict:
  """The fair evaluation of any stored set (DD, RaT-BPTT, ..., RDED).

  The set's images and labels are scored exactly as a decoupled run's
  own set (`run.fair_eval`), with the teacher of `cfg` on the set's
  dataset, after mapping the set's normalisation to the dataset's
  (`DistilledSet.normalised_as`: sets of other toolkits and of other
  normalisations are scored in the students' input space). Sets whitened
  with ZCA, stored or declared by an imported set's contract, are refused
  (the students would need the whitened test split).
  """
  del resume
  dset = storage.load_distilled_set(distilled)
  if import_contract.is_zca(dset):
    raise ValueError(
        f"{distilled}: ZCA-whitened sets are not supported by the fair "
        "evaluation (its students train on the unwhitened dataset); "
        + ("distil without --zca." if dset.method != "imported" else
           "this imported set's contract says ZCA."))
  cfg = dataclasses.replace(cfg, dataset=dset.dataset,
                            ipc=max(1, len(dset.labels) //
                                    dset.num_classes))
  lock_lib.ensure_workdir(workdir)
  with lock_lib.workdir_lock(workdir):
    log = print if show_progress else (lambda *a, **k: None)
    ds = dataset if dataset is not None else load_data(cfg, data_dir)
    if tuple(ds.image_shape) != tuple(dset.images.shape[1:]):
      raise ValueError(f"{distilled}: images {dset.images.shape[1:]} but "
                       f"{ds.name} has {ds.image_shape}; set --image_size/"
                       "--channels to the set's.")
    cache = cfg.teacher_cache or default_cache()
    teacher = teacher_lib.load_or_train(cfg.teacher_cfg(), ds, cache, log=log)
    images = dset.normalised_as(ds.mean, ds.std).images
    ev = fair_eval.evaluate(cfg, images, dset.labels, ds, teacher,
                            cache_dir=cache, log=log)
    report = {"distilled": distilled, "method": dset.method,
              "dataset": ds.name, "ipc": cfg.ipc,
              "test_acc": ev["soft"]["test_acc"],
              "teacher_test_acc": teacher.meta["test_acc"],
              "evaluation": ev}
    if dset.method == "imported":
      report["imported"] = {k: dset.metadata.get(k)
                            for k in ("source", "contract")}
    storage.write_json(os.path.join(workdir, "report.json"), report)
    return report
