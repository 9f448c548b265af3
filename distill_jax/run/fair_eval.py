"""One fair evaluation for any distilled set (METHODS.md Part D).

Every set, from any method, is scored by the same students under named
protocols, next to random real images of the same budget under the
identical protocols:

  * soft-label accuracy under the run's protocol (`labels`: the teacher
    online, or stored FKD-style labels), and hard-label accuracy (CE on the
    set's labels, the same optimiser, epochs and augmentation);
  * random real images of the same IPC under both protocols;
  * HLR, IOR, alpha and LRS with fractions, plus the percent-based values
    DD-Ranking's code prints (`eval.metrics.ranking_report`); the full-data
    hard-label accuracy is that of the teacher recipe on the student
    architecture (the teacher itself when they are the same);
  * image bytes and label bytes (hard labels, the online teacher's
    parameters, or the stored logits);
  * within-class diversity of the teacher's features of the images;
  * the transferred discrepancy (TD) between a student trained on the set
    and one trained on the full data (linear heads fitted on validation
    features, measured on test features);
  * optional cross-architecture students (soft labels).

The soft labels come from the run's teacher or from a `relabel` teacher
(G-VBSM: the ensemble of its pool), for the set and for random real alike;
`relabel_teacher` in the result names it. Diversity, the full-data student
and TD use the run's teacher.

Epochs are chosen on the validation split, never on the test set (every
released implementation selects on test, C.8 item 1); mean +- std over
`students` seeds.
"""

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import data
from distill_jax.data import sources
from distill_jax.eval import metrics
from distill_jax.eval import td as td_lib
from distill_jax.methods.decoupled import posttrain
from distill_jax.methods.decoupled import rded
from distill_jax.methods.decoupled import teacher as teacher_lib
from distill_jax.run import storage


def _strip(res: dict) -> dict:
  return {k: v for k, v in res.items() if k not in ("variables", "model")}


def _features(model, variables, x, batch: int = 500) -> np.ndarray:
  f = jax.jit(lambda v, xb: model.apply(v, xb, train=False)[1]["features"])
  return np.concatenate([np.asarray(f(variables, jnp.asarray(x[i:i + batch])))
                         for i in range(0, len(x), batch)])


def _floats(ds: data.Dataset, x):
  return data.decode(x, ds.mean, ds.std) if x.dtype == np.uint8 else x


def _cached(cfg, ds, ipc, post, cache_dir: str, log, compute,
            relabel=None) -> dict:
  """Random-real results under `post`, computed once per (teacher, data,
  IPC, protocol, seed, relabel pool) and kept beside the cached teachers:
  every method of a comparison is scored against the same random-real
  students."""
  fields = {"teacher": teacher_lib.fingerprint(cfg.teacher_cfg(), ds),
            "ipc": ipc, "protocol": dataclasses.asdict(post),
            "seed": cfg.seed}
  if relabel is not None and post.labels != "hard":
    fields["relabel"] = relabel.meta["pool"]
  key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()
                       ).hexdigest()[:16]
  path = os.path.join(cache_dir, f"random_real_{key}.json")
  if os.path.exists(path):
    log(f"eval: random real ({post.labels}), reusing {os.path.basename(path)}")
    with open(path) as f:
      return json.load(f)
  log(f"eval: random real, {post.labels} labels")
  res = _strip(compute())
  os.makedirs(cache_dir, exist_ok=True)
  storage.write_json(path, res)
  return res


def full_data_student(cfg, ds, teacher, cache_dir: str, log=print):
  """The hard-label student on the whole training set (for HLR and TD):
  the teacher when the architectures agree, else the teacher recipe on
  the student architecture (cached like a teacher)."""
  tcfg = cfg.teacher_cfg()
  if (cfg.post.arch, cfg.post.width, cfg.post.depth) == (
      tcfg.arch, tcfg.width, tcfg.depth):
    return teacher
  return teacher_lib.load_or_train(
      dataclasses.replace(tcfg, arch=cfg.post.arch, width=cfg.post.width,
                          depth=cfg.post.depth),
      ds, cache_dir, log=log)


def evaluate(cfg, images, labels, ds: data.Dataset, teacher, *,
             cache_dir: str, stored=None, relabel=None, log=print) -> dict:
  """Scores (images (N, H, W, C), labels (N,)) under the fair protocol.

  Args:
    cfg: a `methods.decoupled.config.DecoupledConfig` (protocol fields).
    images: normalised float images.
    labels: integer labels.
    ds: the dataset (validation and test splits).
    teacher: the `teacher.Teacher` of the soft labels.
    cache_dir: where full-data students are cached.
    stored: stored labels for labels="stored", or None (computed).
    relabel: the soft labels' teacher (e.g. a `relabel.Ensemble`), or None
      (`teacher`).
    log: progress messages.

  Returns:
    A JSON-ready dict (see the module docstring).
  """
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  c = ds.num_classes
  ipc = max(1, len(labels) // c)
  soft_teacher = teacher if relabel is None else relabel
  out = {"protocol": dataclasses.asdict(cfg.post_cfg()), "ipc": ipc,
         "relabel_teacher": (
             "the run's teacher" if relabel is None else
             "ensemble of " + ", ".join(
                 f"{r['arch']} w{r['width']}" for r in relabel.meta["pool"]))}
  log(f"eval: soft-label students ({cfg.post.labels})")
  soft = posttrain.train_students(cfg.post_cfg(), images, labels, ds,
                                  soft_teacher, stored)
  out["soft"] = _strip(soft)
  hard = None
  if cfg.eval_hard:
    log("eval: hard-label students")
    hard = posttrain.train_students(cfg.post_cfg(labels="hard"), images, labels,
                                    ds)
    out["hard"] = _strip(hard)
  rand_soft = rand_hard = None
  if cfg.eval_random:
    rand_soft, rand_hard = _random_real_rows(cfg, ds, ipc, soft_teacher,
                                             relabel, cache_dir, log)
    out["random_real_soft"] = rand_soft
    if rand_hard is not None:
      out["random_real_hard"] = rand_hard
  for arch in [a for a in cfg.cross_archs.split(",") if a]:
    log(f"eval: cross-architecture students ({arch})")
    out[f"soft_{arch}"] = _strip(posttrain.train_students(
        cfg.post_cfg(arch=arch), images, labels, ds, soft_teacher, stored))
  if not cfg.eval_metrics:
    return out
  full = full_data_student(cfg, ds, teacher, cache_dir, log)
  out["full_data_hard_acc"] = full.meta["test_acc"]
  if hard is not None and rand_soft is not None:
    out["ranking"] = metrics.ranking_report(
        full.meta["test_acc"], np.asarray(hard["test"]),
        np.asarray(soft["test"]), np.asarray(rand_soft["test"]),
        acc_rand_hard=(None if rand_hard is None else
                       np.asarray(rand_hard["test"])))
  out["bytes"] = _bytes(cfg, images, labels, soft, soft_teacher)
  feats = _features(teacher.model, teacher.variables, images)
  out["diversity"] = metrics.within_class_diversity(feats, labels,
                                                    num_classes=c)
  if len(ds.y_val):
    out["td"] = _td(soft, full, ds)
  return out


def _random_real_rows(cfg, ds, ipc: int, soft_teacher, relabel, cache_dir,
                      log):
  """Random real images of the same IPC under the soft and (if
  `cfg.eval_hard`) hard protocols, each cached per protocol."""
  rx, ry = rded.random_real(jax.random.key(cfg.seed + 7919),
                            sources.images(ds, "train"), ds.y_train, ipc,
                            ds.num_classes)
  rx = _floats(ds, np.asarray(rx)).reshape(-1, *ds.image_shape)
  ry = np.asarray(ry).reshape(-1)
  rand_soft = _cached(cfg, ds, ipc, cfg.post_cfg(), cache_dir, log, lambda: (
      posttrain.train_students(cfg.post_cfg(), rx, ry, ds, soft_teacher)),
                      relabel=relabel)
  rand_hard = None
  if cfg.eval_hard:
    rand_hard = _cached(
        cfg, ds, ipc, cfg.post_cfg(labels="hard"), cache_dir, log,
        lambda: posttrain.train_students(cfg.post_cfg(labels="hard"), rx, ry,
                                         ds))
  return rand_soft, rand_hard


def _bytes(cfg, images, labels, soft: dict, soft_teacher) -> dict:
  """Image bytes beside hard- and soft-label bytes (stored logits, or the
  online teacher's parameters)."""
  teacher_bytes = sum(int(np.asarray(a).nbytes) for a in jax.tree.leaves(
      soft_teacher.variables))
  return {
      "images": metrics.image_bytes(images),
      "hard_labels": metrics.label_bytes("hard", num_images=len(labels)),
      "soft_labels": (soft.get("label_bytes") if cfg.post.labels == "stored"
                      else teacher_bytes),
      "soft_label_source": ("stored logits" if cfg.post.labels == "stored"
                            else "online teacher (its parameters)")}


def _td(soft: dict, full, ds) -> dict:
  """TD between the first soft-label student and the full-data network
  (heads fitted on validation features, disagreement on test)."""
  model, variables = soft["model"], soft["variables"]
  one = jax.tree.map(lambda a: a[0], variables)  # the first student.
  xv, xt = _floats(ds, ds.x_val), _floats(ds, sources.images(ds, "test"))
  return td_lib.transferred_discrepancy(
      _features(model, one, xv), _features(full.model, full.variables, xv),
      np.asarray(ds.y_val), num_classes=ds.num_classes,
      eval_feats_a=_features(model, one, xt),
      eval_feats_b=_features(full.model, full.variables, xt))
