"""Schedules: which distilled examples inner step t trains on.

A schedule turns the distilled set into per-step batches. It has two parts:

  * `inputs(learned, fixed) -> (data, xs)`: `data` is the pytree every step
    may read (e.g. the whole support set), `xs` an optional pytree of
    per-step inputs with a leading axis of length `total` (or None);
  * `batch(key, t, data, xs_t) -> (x, y, w, lr)`: the images, labels,
    per-example loss weights (or None) and learning rate of step t.

Schedules (Wang et al. 2018; Feng et al. 2024):

  * `Ordered` (Dataset Distillation): S distilled batches in a fixed order,
    cycled over E epochs; step t sees batch t % S with learned lr eta_t;
  * `ClassBalanced` (RaT-BPTT): every step draws `batch_per_class` images of
    each of `classes_per_step` random classes (without replacement within a
    class) from the per-class support;
  * Boost-DD is `ClassBalanced` with `fixed` holding the earlier blocks (their
    loss weight beta) in front of the block being learned (`support`).

Schedules are frozen dataclasses (hashable, static under `jax.jit`).
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def inverse_softplus(y: float) -> float:
  """The raw value whose softplus is the learning rate `y` (> 0)."""
  return float(np.log(np.expm1(y)))


def softplus_lrs(raw_lr: jax.Array) -> jax.Array:
  """Learned learning rates are stored as raw values, lr = softplus(raw)."""
  return jax.nn.softplus(raw_lr)


@dataclasses.dataclass(frozen=True)
class Ordered:
  """DD's schedule: learned["x"] (S, n, ...) in order, cycled `epochs` times.

  `fixed` is the (S, n) integer labels, unless labels are learned
  (learned["y"], (S, n, C) soft labels); learned["raw_lr"] holds one raw
  learning rate per inner step (S * epochs).
  """
  epochs: int

  def total(self, learned) -> int:
    return learned["x"].shape[0] * self.epochs

  def inputs(self, learned, fixed):
    labels = learned.get("y", fixed)
    x = jnp.concatenate([learned["x"]] * self.epochs, axis=0)
    y = jnp.concatenate([labels] * self.epochs, axis=0)
    return None, (x, y, softplus_lrs(learned["raw_lr"]))

  def batch(self, key, t, data, xs_t):
    del key, t, data
    x, y, lr = xs_t
    return x, y, None, lr


class Support(NamedTuple):
  """Images trained on in the inner loop, grouped by class.

  x: (C, P, H, W, ch); y: (C, P, C) targets (one-hot or soft); w: (C, P)
  per-example loss weights (1, or Boost-DD's beta for earlier blocks).
  """
  x: jax.Array
  y: jax.Array
  w: jax.Array


def empty_support(num_classes: int, image_shape) -> Support:
  """No fixed images (plain RaT-BPTT)."""
  return Support(jnp.zeros((num_classes, 0, *image_shape), jnp.float32),
                 jnp.zeros((num_classes, 0, num_classes), jnp.float32),
                 jnp.zeros((num_classes, 0), jnp.float32))


def support(learned: dict, fixed: Support) -> Support:
  """Fixed blocks followed by the learned block, along the per-class axis."""
  c, p = learned["x"].shape[:2]
  y = learned.get("y")
  if y is None:
    y = jnp.broadcast_to(jnp.eye(c)[:, None], (c, p, c))
  return Support(jnp.concatenate([fixed.x, learned["x"]], axis=1),
                 jnp.concatenate([fixed.y, y], axis=1),
                 jnp.concatenate([fixed.w, jnp.ones((c, p))], axis=1))


def subsample(key: jax.Array, num_classes: int, per_class: int, nc: int,
              bpc: int):
  """Indices (class, member), each (nc, bpc): nc random classes, bpc
  members of each without replacement."""
  k_c, k_p = jax.random.split(key)
  classes = jnp.arange(num_classes)
  if nc < num_classes:
    classes = jnp.argsort(jax.random.uniform(k_c, (num_classes,)))[:nc]
  members = jnp.argsort(jax.random.uniform(k_p, (nc, per_class)), axis=1)
  return (jnp.broadcast_to(classes[:, None], (nc, bpc)), members[:, :bpc])


@dataclasses.dataclass(frozen=True)
class ClassBalanced:
  """RaT-BPTT's schedule: a class-balanced subsample of the support per step.

  Attributes:
    steps: N, the number of inner steps.
    batch_per_class: images drawn per class and step.
    classes_per_step: classes per step (0 = all).
    lr: the inner learning rate when none is learned; learned["raw_lr"]
      (if present) gives one per step, the last repeated past its end.
  """
  steps: int
  batch_per_class: int = 1
  classes_per_step: int = 0
  lr: float = 1e-3

  def total(self, learned) -> int:
    del learned
    return self.steps

  def inputs(self, learned, fixed):
    return (support(learned, fixed), learned.get("raw_lr")), None

  def step_lr(self, raw_lr, t):
    if raw_lr is None:
      return self.lr
    lrs = softplus_lrs(raw_lr)
    return lrs[jnp.minimum(t, lrs.shape[0] - 1)]

  def batch(self, key, t, data, xs_t):
    del xs_t
    sup, raw_lr = data
    c, p = sup.x.shape[:2]
    ci, pi = subsample(key, c, p, self.classes_per_step or c,
                       self.batch_per_class)
    x = sup.x[ci, pi].reshape(-1, *sup.x.shape[2:])
    y = sup.y[ci, pi].reshape(-1, c)
    w = sup.w[ci, pi].reshape(-1)
    return x, y, w, self.step_lr(raw_lr, t)
