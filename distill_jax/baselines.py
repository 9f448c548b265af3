"""Baselines of Dataset Distillation (Wang et al. 2018, Table 1).

Training-data baselines build a set shaped like a distilled set, so that it
is evaluated by exactly the same replay protocol (`evaluate.replay`):

  x:      (S, n, H, W, C) with n = num_classes * per_class; step s holds
          `per_class` images of every class, in the label order of
          `distilled.init` (class c occupies slots c*per_class ...);
  labels: (S, n), fixed.

  * `random_real`: S * per_class random training images per class;
  * `optimized_real`: many random-real sets scored by a caller-supplied
    function (validation accuracy), the best `top_frac` (20% in the paper)
    kept; the single best set is what callers evaluate (documented choice:
    the paper does not say how the kept 20% are turned into one number);
  * `kmeans`: per-class k-means centroids (scikit-learn, seeded);
  * `average_real`: the per-class mean image, reused in every step.

Learning rates and epochs are not part of these sets: `grid_evaluate` tries
every lr in {"learned", 0.001, ..., 0.3} x epochs in {1, 3, 5}, picks the
combination with the best mean accuracy on the VALIDATION split and only
then measures test accuracy on held-out initialisations. The "learned" lr
option reuses a DD run's learned per-step lrs (length S * E_dd); for a
different number of epochs E it cycles the DD run's per-epoch blocks
(epoch e uses block e mod E_dd), see `lr_schedule`.

k-NN baselines (`knn_predict`, `knn_grid`) classify with the same images as
memory, l1 or l2 distance and K in {1, 3}, chosen on validation as well.
"""

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import distilled
from distill_jax import evaluate
from distill_jax import xla_options

LEARNED = "learned"
PAPER_LRS = (LEARNED, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
PAPER_EPOCHS = (1, 3, 5)
METRICS = ("l1", "l2")


def _labels(num_classes: int, steps: int, per_class: int) -> np.ndarray:
  row = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
  return np.tile(row[None], (steps, 1))


def _arrange(per_class_images: Sequence[np.ndarray], steps: int,
             per_class: int) -> np.ndarray:
  """Stacks per-class arrays (S*per_class, H, W, C) into (S, n, H, W, C)."""
  stacked = np.stack(per_class_images)  # (C, S*p, H, W, Ch)
  c = stacked.shape[0]
  stacked = stacked.reshape(c, steps, per_class, *stacked.shape[2:])
  stacked = np.swapaxes(stacked, 0, 1)  # (S, C, p, ...)
  return stacked.reshape(steps, c * per_class, *stacked.shape[3:])


def _class_indices(y: np.ndarray, num_classes: int, need: int):
  out = []
  for c in range(num_classes):
    idx = np.flatnonzero(np.asarray(y) == c)
    if len(idx) < need:
      raise ValueError(
          f"Class {c} has {len(idx)} training images but the baseline needs "
          f"{need}; use fewer steps/images per class or more training data.")
    out.append(idx)
  return out


def random_real(key: jax.Array, x: np.ndarray, y: np.ndarray, *,
                num_classes: int, steps: int, per_class: int = 1):
  """Random real images arranged as a distilled set.

  Args:
    key: PRNG key choosing the images.
    x: training images (N, H, W, C).
    y: integer labels (N,).
    num_classes: C.
    steps: S distilled steps.
    per_class: images per class per step.

  Returns:
    (images (S, C * per_class, H, W, C), labels (S, C * per_class)); each
    class contributes S * per_class distinct images.
  """
  need = steps * per_class
  chosen = []
  for c, idx in enumerate(_class_indices(y, num_classes, need)):
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, c),
                                             len(idx)))
    chosen.append(np.asarray(x)[idx[perm[:need]]])
  return (_arrange(chosen, steps, per_class).astype(np.float32),
          _labels(num_classes, steps, per_class))


def optimized_real(key: jax.Array, x: np.ndarray, y: np.ndarray,
                   score_fn: Callable[[np.ndarray], float], *,
                   num_classes: int, steps: int, per_class: int = 1,
                   num_sets: int = 50, top_frac: float = 0.2) -> dict:
  """"Optimized real": the best of many random-real sets.

  The paper samples several random-real sets and keeps the best 20%. Here
  `num_sets` sets are scored with `score_fn` (callers pass a validation-split
  accuracy, never a test accuracy) and the top `top_frac` are kept.

  Args:
    key: PRNG key; set i uses `fold_in(key, i)`.
    x: training images (N, H, W, C).
    y: labels (N,).
    score_fn: maps images (S, n, H, W, C) to a score (higher is better).
    num_classes: C.
    steps: S.
    per_class: images per class per step.
    num_sets: random-real sets sampled.
    top_frac: fraction kept (at least one set).

  Returns:
    dict with "x" (the single best set, what callers evaluate), "labels",
    "top_x" (the kept sets, best first, (K, S, n, H, W, C)), "scores" (all
    sets' scores) and "top_idx".
  """
  if num_sets < 1 or not 0.0 < top_frac <= 1.0:
    raise ValueError(f"num_sets={num_sets} must be >= 1 and top_frac="
                     f"{top_frac} in (0, 1].")
  sets, scores = [], []
  labels = None
  for i in range(num_sets):
    xs, labels = random_real(jax.random.fold_in(key, i), x, y,
                             num_classes=num_classes, steps=steps,
                             per_class=per_class)
    sets.append(xs)
    scores.append(float(score_fn(xs)))
  scores = np.asarray(scores)
  keep = max(1, int(round(top_frac * num_sets)))
  top_idx = np.argsort(-scores, kind="stable")[:keep]
  return {"x": sets[top_idx[0]], "labels": labels,
          "top_x": np.stack([sets[i] for i in top_idx]), "scores": scores,
          "top_idx": top_idx}


def kmeans(x: np.ndarray, y: np.ndarray, *, num_classes: int, steps: int,
           per_class: int = 1, seed: int = 0, n_init: int = 3):
  """Per-class k-means centroids (k = S * per_class) as a distilled set.

  Args:
    x: training images (N, H, W, C).
    y: labels (N,).
    num_classes: C.
    steps: S.
    per_class: images per class per step.
    seed: `random_state` of scikit-learn's KMeans.
    n_init: k-means restarts per class.

  Returns:
    (centroids (S, C * per_class, H, W, C), labels (S, C * per_class)).
  """
  from sklearn import cluster  # pylint: disable=g-import-not-at-top
  k = steps * per_class
  x = np.asarray(x)
  cents = []
  for idx in _class_indices(y, num_classes, k):
    flat = x[idx].reshape(len(idx), -1).astype(np.float64)
    km = cluster.KMeans(n_clusters=k, n_init=n_init, random_state=seed)
    km.fit(flat)
    cents.append(km.cluster_centers_.reshape(k, *x.shape[1:]))
  return (_arrange(cents, steps, per_class).astype(np.float32),
          _labels(num_classes, steps, per_class))


def average_real(x: np.ndarray, y: np.ndarray, *, num_classes: int,
                 steps: int, per_class: int = 1):
  """The mean image of each class, repeated in every slot of every step."""
  x = np.asarray(x)
  means = [x[idx].mean(0) for idx in _class_indices(y, num_classes, 1)]
  cents = [np.broadcast_to(m, (steps * per_class, *m.shape)) for m in means]
  return (_arrange(cents, steps, per_class).astype(np.float32),
          _labels(num_classes, steps, per_class))


def lr_schedule(option, *, steps: int, epochs: int,
                learned_lrs: np.ndarray | None = None) -> np.ndarray:
  """Per-inner-step learning rates (S * E,) of a baseline.

  Args:
    option: a positive float (constant lr) or "learned".
    steps: S of the baseline set.
    epochs: E of this evaluation.
    learned_lrs: a DD run's learned lrs, length S * E_dd (needed for
      "learned"). For E != E_dd the per-epoch blocks are cycled: epoch e
      uses the DD lrs of epoch e mod E_dd (E < E_dd truncates).

  Returns:
    float32 array of S * E positive learning rates.
  """
  if option == LEARNED:
    if learned_lrs is None:
      raise ValueError("lr option 'learned' needs the learned lrs of a DD "
                       "run (distilled.npz).")
    learned_lrs = np.asarray(learned_lrs, np.float32)
    if learned_lrs.size % steps:
      raise ValueError(
          f"{learned_lrs.size} learned lrs do not fit {steps} steps; the DD "
          "run and the baselines must use the same number of steps.")
    return np.resize(learned_lrs, steps * epochs).astype(np.float32)
  lr = float(option)
  if not lr > 0:
    raise ValueError(f"Learning rate {option!r} must be > 0 or 'learned'.")
  return np.full((steps * epochs,), lr, np.float32)


def as_learned(x_set: np.ndarray, lrs: np.ndarray) -> dict:
  """A baseline set as the `learned` pytree of `evaluate.replay`."""
  raw = np.asarray([distilled.inverse_softplus(float(v)) for v in lrs],
                   np.float32)
  return {"x": jnp.asarray(x_set), "raw_lr": jnp.asarray(raw)}


def parse_lr_grid(text: str) -> tuple:
  """'learned,0.001,0.01' -> ("learned", 0.001, 0.01), validated."""
  out = []
  for item in (t.strip() for t in text.split(",") if t.strip()):
    if item == LEARNED:
      out.append(LEARNED)
      continue
    try:
      value = float(item)
    except ValueError:
      raise ValueError(f"lr grid entry {item!r} is neither 'learned' nor a "
                       "number; e.g. --lr_grid=learned,0.001,0.01") from None
    if not value > 0:
      raise ValueError(f"lr grid entry {item!r} must be > 0.")
    out.append(value)
  if not out:
    raise ValueError("The lr grid is empty; e.g. --lr_grid=learned,0.01")
  return tuple(out)


def _split(params0, r: int, num: int):
  return jax.tree.map(lambda a: a[r::num], params0)


def replay_over_sets(apply_fn, sets: np.ndarray, labels: np.ndarray,
                     lrs: np.ndarray, params0, x: np.ndarray, y: np.ndarray,
                     *, epochs: int, batch: int = 2000) -> np.ndarray:
  """Replay accuracy when network i is trained on set i mod R.

  Args:
    apply_fn: network apply function.
    sets: R baseline sets (R, S, n, H, W, C).
    labels: (S, n) labels shared by the sets.
    lrs: (S * epochs,) learning rates.
    params0: initialisations with a leading axis (>= R for all sets used).
    x: evaluation images.
    y: evaluation labels.
    epochs: passes over the S steps.
    batch: evaluation batch size.

  Returns:
    One accuracy per network, grouped by set.
  """
  num = sets.shape[0]
  labels = jnp.asarray(labels)
  x, y = jnp.asarray(x), jnp.asarray(y)
  out = []
  for r in range(num):
    p = _split(params0, r, num)
    if jax.tree.leaves(p)[0].shape[0] == 0:
      continue
    out.append(evaluate.replay_accuracy(
        apply_fn, p, as_learned(sets[r], lrs), labels, x, y, epochs=epochs,
        batch=batch))
  return np.concatenate(out)


def grid_evaluate(apply_fn, sets: np.ndarray, labels: np.ndarray, *,
                  lr_options: Sequence, epoch_options: Sequence[int],
                  learned_lrs: np.ndarray | None, val_params0, test_params0,
                  x_val: np.ndarray, y_val: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray, batch: int = 2000) -> dict:
  """Chooses (lr, epochs) on validation, then measures test accuracy.

  Args:
    apply_fn: network apply function.
    sets: one set (S, n, H, W, C) or R sets (R, S, n, H, W, C); network i
      trains on set i mod R (so the spread includes set sampling).
    labels: (S, n).
    lr_options: floats and/or "learned".
    epoch_options: epochs to try.
    learned_lrs: a DD run's learned lrs (for "learned"; may be None if the
      grid has no "learned").
    val_params0: initialisations used for selection.
    test_params0: held-out initialisations used for the reported number.
    x_val: validation images (must be non-empty).
    y_val: validation labels.
    x_test: test images.
    y_test: test labels.
    batch: evaluation batch size.

  Returns:
    dict: "grid" (one record per combination with its validation mean %),
    "best" ({"lr", "epochs"}), "val_acc" (% of the best) and "test_acc"
    (per-network accuracies in [0, 1]).
  """
  if len(y_val) == 0:
    raise ValueError("Baseline selection needs a validation split; set "
                     "val_size > 0.")
  sets = np.asarray(sets)
  if sets.ndim == 5:
    sets = sets[None]
  steps = sets.shape[1]
  grid = []
  for lr in lr_options:
    for e in epoch_options:
      lrs = lr_schedule(lr, steps=steps, epochs=int(e),
                        learned_lrs=learned_lrs)
      acc = replay_over_sets(apply_fn, sets, labels, lrs, val_params0, x_val,
                             y_val, epochs=int(e), batch=batch)
      grid.append({"lr": lr, "epochs": int(e),
                   "val_acc": float(acc.mean() * 100.0)})
  best = max(grid, key=lambda g: g["val_acc"])
  lrs = lr_schedule(best["lr"], steps=steps, epochs=best["epochs"],
                    learned_lrs=learned_lrs)
  test = replay_over_sets(apply_fn, sets, labels, lrs, test_params0, x_test,
                          y_test, epochs=best["epochs"], batch=batch)
  return {"grid": grid, "best": {"lr": best["lr"], "epochs": best["epochs"]},
          "val_acc": best["val_acc"], "test_acc": test}


def _knn_chunk(k: int, metric: str, memory, memory_y, num_classes: int):
  def predict(xb):
    if metric == "l2":
      d = (jnp.sum(xb * xb, -1, keepdims=True) - 2.0 * xb @ memory.T +
           jnp.sum(memory * memory, -1)[None])
    else:
      d = jnp.sum(jnp.abs(xb[:, None, :] - memory[None, :, :]), -1)
    _, idx = jax.lax.top_k(-d, k)  # (B, k), nearest first
    votes = jax.nn.one_hot(memory_y[idx], num_classes)  # (B, k, C)
    # Majority vote; ties go to the class of the nearer neighbour.
    weights = 1.0 + 1e-3 * (k - jnp.arange(k, dtype=jnp.float32)) / k
    return jnp.argmax(jnp.sum(votes * weights[None, :, None], 1), -1)
  return predict


@xla_options.lazy_jit(
    static_argnames=("k", "metric", "num_classes", "batch"))
def knn_predict(memory_x: jax.Array, memory_y: jax.Array, x: jax.Array, *,
                k: int, metric: str, num_classes: int,
                batch: int = 256) -> jax.Array:
  """k-nearest-neighbour predictions, batched over `x` with `lax.map`.

  Args:
    memory_x: memory images (M, ...) (any trailing shape; flattened).
    memory_y: their integer labels (M,).
    x: images to classify (N, ...).
    k: neighbours K (<= M).
    metric: "l1" or "l2".
    num_classes: C.
    batch: test images per chunk (bounds the (batch, M, D) l1 buffer).

  Returns:
    int32 predictions (N,).
  """
  if metric not in METRICS:
    raise ValueError(f"metric={metric!r}; choose one of {METRICS}.")
  mem = memory_x.reshape(memory_x.shape[0], -1).astype(jnp.float32)
  if not 1 <= k <= mem.shape[0]:
    raise ValueError(f"k={k} must be in [1, {mem.shape[0]}] (memory size).")
  flat = x.reshape(x.shape[0], -1).astype(jnp.float32)
  n = flat.shape[0]
  pad = (-n) % batch
  flat = jnp.concatenate([flat, jnp.zeros((pad, flat.shape[1]), flat.dtype)])
  chunks = flat.reshape(-1, batch, flat.shape[1])
  preds = jax.lax.map(_knn_chunk(k, metric, mem, memory_y, num_classes),
                      chunks)
  return preds.reshape(-1)[:n].astype(jnp.int32)


def knn_accuracy(memory_x, memory_y, x, y, *, k: int, metric: str,
                 num_classes: int) -> float:
  """Accuracy of the k-NN classifier with the given memory on (x, y)."""
  memory_x = jnp.asarray(memory_x)
  d = int(np.prod(memory_x.shape[1:]))
  batch = int(max(1, min(256, 2 ** 24 // max(1, memory_x.shape[0] * d))))
  pred = knn_predict(memory_x, jnp.asarray(memory_y), jnp.asarray(x), k=k,
                     metric=metric, num_classes=num_classes, batch=batch)
  return float(jnp.mean(pred == jnp.asarray(y)))


def knn_grid(memories: Sequence[np.ndarray], memory_labels: np.ndarray, *,
             x_val, y_val, x_test, y_test, num_classes: int,
             ks: Sequence[int] = (1, 3),
             metrics: Sequence[str] = METRICS) -> dict:
  """k-NN baseline: (metric, K) chosen on validation, then tested.

  Args:
    memories: R memory sets, each of any shape (..., H, W, C) whose leading
      dims match `memory_labels` (e.g. a baseline set (S, n, H, W, C)).
    memory_labels: labels with the memories' leading shape.
    x_val: validation images.
    y_val: validation labels.
    x_test: test images.
    y_test: test labels.
    num_classes: C.
    ks: neighbour counts to try.
    metrics: distances to try.

  Returns:
    dict with "grid", "best" ({"metric", "k"}), "val_acc" (%) and
    "test_acc" (one accuracy per memory set, in [0, 1]).
  """
  labels = np.asarray(memory_labels).reshape(-1)
  flat = [np.asarray(m).reshape(labels.size, *np.asarray(m).shape[-3:])
          for m in memories]
  grid = []
  for metric in metrics:
    for k in ks:
      accs = [knn_accuracy(m, labels, x_val, y_val, k=int(k), metric=metric,
                           num_classes=num_classes) for m in flat]
      grid.append({"metric": metric, "k": int(k),
                   "val_acc": float(np.mean(accs) * 100.0)})
  best = max(grid, key=lambda g: g["val_acc"])
  test = np.asarray([knn_accuracy(m, labels, x_test, y_test, k=best["k"],
                                  metric=best["metric"],
                                  num_classes=num_classes) for m in flat])
  return {"grid": grid, "best": {"metric": best["metric"], "k": best["k"]},
          "val_acc": best["val_acc"], "test_acc": test}


def evaluate_all(key: jax.Array, apply_fn, ds, *, steps: int,
                 per_class: int, learned_lrs: np.ndarray | None,
                 val_params0, test_params0,
                 lr_options: Sequence = PAPER_LRS,
                 epoch_options: Sequence[int] = PAPER_EPOCHS,
                 random_sets: int = 10, optimized_sets: int = 50,
                 top_frac: float = 0.2, kmeans_seeds: int = 3,
                 knn_ks: Sequence[int] = (1, 3), batch: int = 2000,
                 log: Callable[[str], None] = lambda s: None) -> dict:
  """Every Table 1 baseline under the validation-selected protocol.

  Training-data rows (random real, optimized real, k-means, average real)
  use `grid_evaluate`; "optimized real" scores its candidate sets by mean
  validation accuracy on `val_params0` with the (lr, epochs) that random
  real selected, then runs its own grid search on the best set. k-NN rows
  use `knn_grid` with the random-real sets and the k-means sets as memory.

  Args:
    key: PRNG key of the random sets.
    apply_fn: network apply function.
    ds: a `data.Dataset` with a non-empty validation split.
    steps: S (the DD run's number of steps).
    per_class: images per class per step.
    learned_lrs: the DD run's learned lrs (for the "learned" lr option).
    val_params0: initialisations for selection.
    test_params0: held-out initialisations for the reported numbers.
    lr_options: lr grid.
    epoch_options: epoch grid.
    random_sets: independent random-real sets (network i uses set i mod R).
    optimized_sets: candidate sets of optimized real.
    top_frac: fraction of candidates kept by optimized real.
    kmeans_seeds: k-means runs with different seeds.
    knn_ks: neighbour counts of the k-NN rows.
    batch: evaluation batch size.
    log: progress callback.

  Returns:
    name -> {"test_acc": summary (%), "best", "val_acc", "grid", ...}.
  """
  for name, n in (("random_sets", random_sets),
                  ("optimized_sets", optimized_sets),
                  ("kmeans_seeds", kmeans_seeds)):
    if n < 1:
      raise ValueError(f"{name}={n} must be >= 1.")
  common = dict(num_classes=ds.num_classes, steps=steps, per_class=per_class)
  grid = functools.partial(
      grid_evaluate, apply_fn, lr_options=lr_options,
      epoch_options=epoch_options, learned_lrs=learned_lrs,
      val_params0=val_params0, test_params0=test_params0, x_val=ds.x_val,
      y_val=ds.y_val, x_test=ds.x_test, y_test=ds.y_test, batch=batch)
  k_random, k_opt = jax.random.split(key)
  rows = {}

  def finish(name, res, **extra):
    rows[name] = {**{k: v for k, v in res.items() if k != "test_acc"},
                  "test_acc": evaluate.summary(res["test_acc"]), **extra}
    log(f"{name}: test {rows[name]['test_acc']['mean']:.2f} +- "
        f"{rows[name]['test_acc']['std']:.2f} (best {res['best']})")

  randoms = [random_real(jax.random.fold_in(k_random, r), ds.x_train,
                         ds.y_train, **common) for r in range(random_sets)]
  labels = randoms[0][1]
  random_x = np.stack([r[0] for r in randoms])
  res = grid(random_x, labels)
  finish("random_real", res, sets=random_sets)

  best = res["best"]
  score_lrs = lr_schedule(best["lr"], steps=steps, epochs=best["epochs"],
                          learned_lrs=learned_lrs)

  def score(x_set):
    return replay_over_sets(apply_fn, x_set[None], labels, score_lrs,
                            val_params0, ds.x_val, ds.y_val,
                            epochs=best["epochs"], batch=batch).mean()
  opt = optimized_real(k_opt, ds.x_train, ds.y_train, score, **common,
                       num_sets=optimized_sets, top_frac=top_frac)
  finish("optimized_real", grid(opt["x"], labels), candidates=optimized_sets,
         kept=len(opt["top_idx"]),
         kept_val_scores=[float(opt["scores"][i] * 100) for i in
                          opt["top_idx"]])

  kms = np.stack([kmeans(ds.x_train, ds.y_train, **common, seed=s)[0]
                  for s in range(kmeans_seeds)])
  finish("kmeans", grid(kms, labels), seeds=kmeans_seeds)

  avg, _ = average_real(ds.x_train, ds.y_train, **common)
  finish("average_real", grid(avg, labels))

  knn = functools.partial(knn_grid, memory_labels=labels, x_val=ds.x_val,
                          y_val=ds.y_val, x_test=ds.x_test, y_test=ds.y_test,
                          num_classes=ds.num_classes, ks=knn_ks)
  finish("knn_random_real", knn(list(random_x)), sets=random_sets)
  finish("knn_kmeans", knn(list(kms)), seeds=kmeans_seeds)
  return rows
