"""One interface for a split in memory and a streamed split: `Split`.

A bilevel method samples real batches by index from the train split and an
evaluation reads a split in order; both go through a `Split`, which is
either `InMemory` (arrays, as `datasets.load` returns them) or
`stream.StreamSplit` (read from the prepared ArrayRecord files). `of`
gives a dataset's split either way.

``step_arrays(idx)`` returns what a jitted outer step takes for its real
batch, ``(x, y, idx)``, with the step gathering ``x[idx]``: in memory the
whole split (on the device once) and the indices, so existing programs and
their results are unchanged; streamed, the batch itself and
``arange(len(idx))``. The batch values are the same either way.
"""

from typing import Iterator, Protocol

import numpy as np

from distill_jax.data import base
from distill_jax.data import stream


class Split(Protocol):
  """A split readable by index and in order."""

  labels: np.ndarray

  def __len__(self) -> int:
    ...

  def gather(self, idx) -> tuple[np.ndarray, np.ndarray]:
    """Examples ``idx`` (this host's part of them): (images, labels)."""

  def step_arrays(self, idx) -> tuple:
    """``(x, y, idx)`` for an outer step that gathers ``x[idx]``."""

  def batches(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The split in order, ``size`` examples at a time."""


class InMemory:
  """A split held as arrays (numpy or JAX)."""

  def __init__(self, x, y):
    self.x = x
    self.labels = y

  def __len__(self) -> int:
    return len(self.labels)

  def gather(self, idx):
    return self.x[idx], self.labels[idx]

  def step_arrays(self, idx):
    return self.x, self.labels, idx

  def batches(self, size: int):
    for start in range(0, len(self), size):
      yield self.x[start:start + size], self.labels[start:start + size]


def is_streamed(split) -> bool:
  """Whether ``split`` is read from files (a `stream.StreamSplit`)."""
  return isinstance(split, stream.StreamSplit)


def of(ds: base.Dataset, name: str, x=None) -> Split:
  """Split ``name`` ('train', 'val' or 'test') of ``ds``.

  Args:
    ds: a dataset, in memory or streamed (`base.Dataset.streams`).
    name: which split.
    x: in memory, the images to use instead of ``ds.x_<name>`` (e.g.
      ZCA-whitened ones); must be None for a streamed split.

  Returns:
    The streamed split, or `InMemory` of its arrays.
  """
  if ds.streams and name in ds.streams:
    if x is not None:
      raise ValueError(f'{ds.name}: the {name} split is streamed; it cannot '
                       'be replaced by transformed arrays (use '
                       "data_source='memory').")
    return ds.streams[name]
  return InMemory(getattr(ds, f'x_{name}') if x is None else x,
                  getattr(ds, f'y_{name}'))
