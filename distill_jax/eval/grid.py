"""Replay evaluation of fixed sets with lr and epochs chosen on validation.

A baseline set (random real, k-means, ...) has no learned learning rates:
`grid_evaluate` tries every lr in {"learned", 0.001, ..., 0.3} x epochs in
{1, 3, 5} (the paper's grid), picks the combination with the best mean
accuracy on the VALIDATION split and only then measures test accuracy on
held-out initialisations. The "learned" lr option reuses a DD run's learned
per-step lrs (length S * E_dd); for a different number of epochs E it
cycles the DD run's per-epoch blocks (epoch e uses block e mod E_dd), see
`lr_schedule`.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.eval import replay as evaluate
from distill_jax.core import schedule as schedule_lib

LEARNED = "learned"
PAPER_LRS = (LEARNED, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
PAPER_EPOCHS = (1, 3, 5)


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
  raw = np.asarray([schedule_lib.inverse_softplus(float(v)) for v in lrs],
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
