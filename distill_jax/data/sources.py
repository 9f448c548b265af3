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


class Rows:
  """A streamed split's images, indexed like an array and read on demand.

  ``rows[idx]`` (an int, a slice, an int or boolean array) reads just those
  examples through `stream.StreamSplit.take` (every host reads all of
  them, so every host sees the same values); ``len``, ``shape`` and
  ``dtype`` are the array's. Code written for ``ds.x_train`` as an array
  (a class-balanced pick, candidate crops, a pass in slices) runs unchanged
  on a split that is never held in memory.
  """

  def __init__(self, split: stream.StreamSplit, example_shape, dtype):
    self.split = split
    self.shape = (len(split), *tuple(example_shape))
    self.dtype = np.dtype(dtype)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, key) -> np.ndarray:
    idx = np.arange(len(self))[key]
    if idx.ndim == 0:
      return self.split.take(idx[None])[0]
    if not idx.size:
      return np.zeros((0, *self.shape[1:]), self.dtype)
    return self.split.take(idx)

  def __array__(self, dtype=None, copy=None):
    raise TypeError(f'a streamed split ({len(self)} examples) is not '
                    'turned into one array; index it (rows[idx]), or load '
                    "the data in memory (data_source='memory').")


def images(ds: base.Dataset, name: str):
  """The images of split ``name``: ``ds.x_<name>`` in memory, or `Rows`
  reading them from the files when the split is streamed."""
  if ds.streams and name in ds.streams:
    x = getattr(ds, f'x_{name}')
    return Rows(ds.streams[name], x.shape[1:], x.dtype)
  return getattr(ds, f'x_{name}')
