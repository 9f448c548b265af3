"""Class-stratified index selection and the train/validation split."""

import numpy as np


def class_balanced_indices(rng: np.random.Generator, y, per_class: int,
                           num_classes: int) -> np.ndarray:
  """Draws ``per_class`` distinct indices of each class, without replacement.

  Args:
    rng: numpy random generator.
    y: integer labels (N,).
    per_class: examples to draw per class.
    num_classes: number of classes; classes are 0..num_classes-1.

  Returns:
    int64 indices of shape (num_classes * per_class,), grouped by class in
    class order.

  Raises:
    ValueError: if some class has fewer than ``per_class`` examples.
  """
  y = np.asarray(y)
  out = []
  for c in range(num_classes):
    idx = np.flatnonzero(y == c)
    if len(idx) < per_class:
      raise ValueError(f'class {c} has only {len(idx)} examples, fewer than '
                       f'per_class={per_class}.')
    out.append(rng.choice(idx, per_class, replace=False))
  if not out:
    return np.zeros((0,), np.int64)
  return np.concatenate(out).astype(np.int64)


def _stratified_choice(rng: np.random.Generator, y: np.ndarray,
                       n: int) -> np.ndarray:
  """Picks ``n`` indices with class counts proportional to ``y``'s."""
  if n > len(y):
    raise ValueError(f'cannot take {n} examples out of {len(y)}.')
  classes, counts = np.unique(y, return_counts=True)
  quota = counts * n / len(y)
  take = np.floor(quota).astype(np.int64)
  # Largest remainders get the leftover examples.
  for i in np.argsort(-(quota - take), kind='stable')[:n - take.sum()]:
    take[i] += 1
  chosen = [rng.choice(np.flatnonzero(y == c), k, replace=False)
            for c, k in zip(classes, take)]
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def split_validation(x, y, val_size: int, seed: int):
  """Holds out a class-stratified validation set.

  Args:
    x: images (N, ...).
    y: labels (N,).
    val_size: number of validation examples (0 for none).
    seed: random seed.

  Returns:
    ``(x_train, y_train, x_val, y_val)``; both parts keep the original order
    and are disjoint.
  """
  y = np.asarray(y)
  train_idx, val_idx = validation_indices(y, val_size, seed)
  return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def validation_indices(y, val_size: int, seed: int):
  """The indices `split_validation` keeps for training and holds out.

  Args:
    y: labels (N,).
    val_size: number of validation examples (0 for none).
    seed: random seed.

  Returns:
    ``(train_idx, val_idx)``: int64, sorted, disjoint, covering 0..N-1.
  """
  y = np.asarray(y)
  if not 0 <= val_size <= len(y):
    raise ValueError(f'val_size={val_size} must be in [0, {len(y)}].')
  rng = np.random.default_rng(seed)
  val_idx = _stratified_choice(rng, y, val_size)
  mask = np.ones(len(y), bool)
  mask[val_idx] = False
  return np.flatnonzero(mask), val_idx.astype(np.int64)


def stratified_subset(x, y, n: int, seed: int):
  """``n`` examples of ``(x, y)``, class-stratified and drawn at random
  (never just the first ``n``: local copies are often sorted by class)."""
  _, _, xs, ys = split_validation(x, y, n, seed)
  return xs, ys


TEST_FRACTION = 0.2  # of each class, for sources without a test split.
TEST_SEED = 0  # fixed: the test split does not change with a run's seed.


def holdout_test(x, y, fraction: float = TEST_FRACTION,
                 seed: int = TEST_SEED):
  """Takes a test split out of a source that has only a train split.

  Of each class with ``n`` examples, ``floor(fraction * n)`` drawn at
  random (numpy ``default_rng(seed)``) become test examples, so every class
  keeps most of its examples for training and the split is the same on
  every run and machine (classes of fewer than ``1 / fraction`` examples
  give none).

  Args:
    x: images (N, ...).
    y: integer labels (N,).
    fraction: share of each class held out.
    seed: seed of the draw.

  Returns:
    ``(x_train, y_train, x_test, y_test)``, disjoint, each in the original
    order.
  """
  y = np.asarray(y)
  test = holdout_mask(y, fraction, seed)
  return x[~test], y[~test], x[test], y[test]


def holdout_mask(y, fraction: float = TEST_FRACTION,
                 seed: int = TEST_SEED) -> np.ndarray:
  """The boolean (N,) mask of the examples `holdout_test` holds out."""
  y = np.asarray(y)
  rng = np.random.default_rng(seed)
  test = np.zeros(len(y), bool)
  for c in np.unique(y):
    idx = np.flatnonzero(y == c)
    k = int(fraction * len(idx) + 1e-9)  # floor, robust to 0.2 * 15.
    test[rng.choice(idx, k, replace=False)] = True
  return test
