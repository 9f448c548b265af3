"""The distilled set: learned images and learning rates, plus fixed labels.

Learned quantities live in a dict `learned = {"x": ..., "raw_lr": ...}` (the
pytree the outer optimiser updates); fixed labels are a separate array. Shapes:

  x:      (S, n, H, W, C)  images of step s = 0..S-1 (n per step)
  raw_lr: (S * E,)         one learning rate per inner step, lr = softplus(raw)
  labels: (S, n)           integer class of each image (not learned)

Inner step t (t = 0..S*E-1) uses images x[t % S] with learning rate
softplus(raw_lr[t]): the order of the steps is part of the distilled data.
"""

import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.core import schedule as schedule_lib
from distill_jax.data import sources


inverse_softplus = schedule_lib.inverse_softplus


def init(key: jax.Array, *, steps: int, epochs: int, num_classes: int,
         per_class: int, image_shape: tuple[int, int, int], lr_init: float):
  """Random N(0, 1) images (normalised space), labels [0..C-1] per step.

  Args:
    key: PRNG key.
    steps: S, number of distinct distilled batches.
    epochs: E, passes over the S batches.
    num_classes: C.
    per_class: images per class per step.
    image_shape: (H, W, C).
    lr_init: initial learning rate of every step.

  Returns:
    (learned, labels) as described in the module docstring.
  """
  n = num_classes * per_class
  x = jax.random.normal(key, (steps, n, *image_shape), jnp.float32)
  labels = jnp.tile(jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32),
                               per_class)[None], (steps, 1))
  raw_lr = jnp.full((steps * epochs,), inverse_softplus(lr_init), jnp.float32)
  return {"x": x, "raw_lr": raw_lr}, labels


def real_images(key: jax.Array, labels, x_train, y_train) -> jax.Array:
  """Initial images drawn from the training set: one random image of the
  right class for every (step, slot) of `labels` (no image used twice).

  Args:
    key: PRNG key.
    labels: (S, n) integer classes of the distilled images.
    x_train: (N, H, W, C) normalised training images, or a streamed
      split (`data.stream.StreamSplit`) to read them from.
    y_train: (N,) their classes.

  Returns:
    (S, n, H, W, C) float32 images.
  """
  labels = np.asarray(labels)
  y_train = np.asarray(y_train)
  flat = labels.reshape(-1)
  out = np.empty(flat.shape, np.int64)
  for c in np.unique(flat):
    pool = np.flatnonzero(y_train == c)
    slots = np.flatnonzero(flat == c)
    if len(pool) < len(slots):
      raise ValueError(
          f"image_init=real needs {len(slots)} training images of class {c} "
          f"but the training split has {len(pool)}; use image_init=noise.")
    key, sub = jax.random.split(key)
    out[slots] = pool[np.asarray(jax.random.permutation(sub, len(pool)))[
        :len(slots)]]
  x = (x_train.take(out) if sources.is_streamed(x_train) else
       np.asarray(x_train)[out])
  return jnp.asarray(x.reshape(*labels.shape, *x.shape[1:]), jnp.float32)


def lrs(learned) -> jax.Array:
  """Effective per-step learning rates (positive)."""
  return jax.nn.softplus(learned["raw_lr"])


def step_order(steps: int, epochs: int) -> np.ndarray:
  """Index of the distilled batch used at each inner step."""
  return np.tile(np.arange(steps), epochs)


def sequence(learned, labels, epochs: int):
  """Per-inner-step inputs (x_t, y_t, lr_t), stacked on a leading axis."""
  x = jnp.concatenate([learned["x"]] * epochs, axis=0)
  y = jnp.concatenate([labels] * epochs, axis=0)
  return x, y, lrs(learned)
