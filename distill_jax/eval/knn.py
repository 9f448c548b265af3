"""k-nearest-neighbour classification with a distilled set as memory.

The Dataset Distillation paper's k-NN baselines (Table 1): the same images
as memory, l1 or l2 distance and K in {1, 3}, chosen on validation
(`knn_grid`); test accuracy is measured once with the chosen (metric, K).
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.platform import xla_options

METRICS = ("l1", "l2")


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
