"""Prepared splits read by random access, never materialised: `load`.

A dataset too large for memory is served from its prepared ArrayRecord
files (``builder.as_data_source``, no TensorFlow) instead of being read
into arrays. Only the labels (4 bytes per example) and the validation
split (``val_size`` examples) are held in memory; training batches are
read by index when a step needs them, and the test split is read in
consecutive batches through grain (``grain.MapDataset``, prefetched by
``to_iter_dataset``).

Everything equals the in-memory path of `datasets.load`: the same
examples held out for validation (`splits.validation_indices`) and by
``train_limit``, the same normalisation statistics (computed, when the
dataset has no standard ones, by the same chunked reduction over the train
split), and each batch prepared exactly as `load` prepares a whole split
(uint8 pixels kept, or normalised float32 after the optional resize and
channel replication). Batch ``k`` of a run depends only on the seed and
``k`` (`run.loop.batch_indices`), so a resumed run reads the same batches
and needs no reader state in its checkpoint.

Per-host sharding: a `StreamSplit` reads only this host's part of every
batch (``grain.sharding.ShardOptions``, by default `ShardByJaxProcess`):
contiguous, disjoint parts covering the batch (`shard_bounds`). With one
process the part is the whole batch.
"""

import dataclasses
import functools
from typing import Callable, Iterator

import numpy as np

from distill_jax.data import base
from distill_jax.data import readers
from distill_jax.data import registry
from distill_jax.data import splits
from distill_jax.data import tfds_source

CHUNK = 10000  # records per read when a split is scanned (labels, stats).
READ_BATCH = 2000  # records per read of an evaluation pass.


def _grain():
  import grain  # pylint: disable=g-import-not-at-top
  return grain


def host_shard():
  """This process's `grain.sharding.ShardOptions` (`ShardByJaxProcess`)."""
  return _grain().sharding.ShardByJaxProcess(drop_remainder=False)


def shard_bounds(n: int, shard) -> tuple[int, int]:
  """The contiguous part ``[start, end)`` of ``n`` items one shard reads.

  Parts of shards ``0..count-1`` are disjoint and cover ``0..n-1`` (with
  ``drop_remainder``, the last ``n % count`` items are dropped instead and
  all parts have one size).
  """
  i, count = int(shard.shard_index), int(shard.shard_count)
  if shard.drop_remainder:
    per = n // count
    return i * per, (i + 1) * per
  return n * i // count, n * (i + 1) // count


class Records:
  """Random access to some records of a TFDS data source, as uint8 images.

  A grain ``RandomAccessDataSource`` (``__len__``, ``__getitem__``) with a
  batched read, ``read``. Item ``i`` is the image of record ``ids[i]``,
  (H, W, C) uint8, resized to ``size`` if given.
  """

  def __init__(self, source, ids: np.ndarray, meta: tfds_source.Meta,
               size=None, where: str = ''):
    self.source = source
    self.ids = np.asarray(ids, np.int64)
    self.meta = meta
    self.size = size
    self.where = where

  def __len__(self) -> int:
    return len(self.ids)

  def __getitem__(self, i: int) -> np.ndarray:
    return self.read([i])[0][0]

  def read(self, idx) -> tuple[np.ndarray, np.ndarray]:
    """Images (len(idx), H, W, C) uint8 and labels (len(idx),) int64."""
    return read_records(self.source, self.ids[np.asarray(idx, np.int64)],
                        self.meta, self.size, self.where)

  def subset(self, idx) -> 'Records':
    """The records ``ids[idx]``."""
    return Records(self.source, self.ids[np.asarray(idx, np.int64)],
                   self.meta, self.size, self.where)


def read_records(source, ids, meta: tfds_source.Meta, size=None,
                 where: str = '') -> tuple[np.ndarray, np.ndarray]:
  """Records ``ids`` of a TFDS data source as (uint8 images, labels).

  Raises:
    DataFileError: the prepared files are missing, truncated or corrupt
      (one line naming them and the fix).
  """
  ids = [int(i) for i in ids]
  try:
    try:
      examples = source.__getitems__(ids)  # one batched read.
    except (AttributeError, TypeError):  # see tfds_source._read_split.
      examples = [source[i] for i in ids]
    images = [np.asarray(e[meta.image_key]) for e in examples]
    labels = np.asarray([e[meta.label_key] for e in examples], np.int64)
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise base.damaged_prepared(where or 'the prepared dataset',
                                'reading records', e) from e
  images = [im[..., None] if im.ndim == 2 else im for im in images]
  if size is not None:
    images = [readers.fit_image(im, size) for im in images]
  shape = (0, *meta.image_shape) if size is None else (0, *size,
                                                       meta.image_shape[-1])
  if not images:
    return np.zeros(shape, np.uint8), labels
  return np.stack(images).astype(np.uint8, copy=False), labels


@dataclasses.dataclass(eq=False)
class StreamSplit:
  """One split (train, validation or test) read from the prepared files.

  The `sources.Split` interface: ``len``, ``labels``, ``gather``,
  ``step_arrays``, ``batches``.

  Attributes:
    records: the split's records (`Records`).
    labels: int32 (N,) labels, in memory.
    prepare: uint8 images -> the arrays `datasets.load` holds (an own
      uint8 copy, or normalised float32).
    shard: which part of each batch this host reads (None: all of it).
  """
  records: Records
  labels: np.ndarray
  prepare: Callable[[np.ndarray], np.ndarray]
  shard: object = None

  def __len__(self) -> int:
    return len(self.labels)

  def _local(self, idx) -> np.ndarray:
    idx = np.asarray(idx)
    if self.shard is None:
      return idx
    start, end = shard_bounds(len(idx), self.shard)
    return idx[start:end]

  def gather(self, idx) -> tuple[np.ndarray, np.ndarray]:
    """This host's part of examples ``idx``: (images, int32 labels)."""
    idx = self._local(idx)
    x, _ = self.records.read(idx)
    return self.prepare(x), self.labels[idx]

  def take(self, idx) -> np.ndarray:
    """The images of examples ``idx`` (all of them, on every host)."""
    return self.prepare(self.records.read(idx)[0])

  def step_arrays(self, idx):
    """``(x, y, idx)`` of an outer step's real batch: the batch itself and
    ``arange`` to take all of it (`sources.InMemory.step_arrays`)."""
    x, y = self.gather(idx)
    return assemble(x), assemble(y), np.arange(_global_len(len(y)),
                                               dtype=np.int32)

  def batches(self, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The split in order, ``size`` examples at a time (the last one
    shorter), this host's part of it, read ahead by grain."""
    grain = _grain()
    start, end = (0, len(self)) if self.shard is None else shard_bounds(
        len(self), self.shard)
    n = -(-(end - start) // size)
    reads = grain.MapDataset.range(n).map(functools.partial(
        _read_slice, self, start, end, size))
    yield from reads.to_iter_dataset(grain.ReadOptions(
        num_threads=1, prefetch_buffer_size=2))


def _read_slice(split: StreamSplit, start: int, end: int, size: int, k):
  idx = np.arange(start + k * size, min(end, start + (k + 1) * size))
  x, _ = split.records.read(idx)
  return split.prepare(x), split.labels[idx]


def _global_len(local: int) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return local * jax.process_count()


def assemble(local: np.ndarray):
  """The global batch of the hosts' parts (the part itself on one host)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return local
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('batch',))
  sharding = jax.sharding.NamedSharding(mesh,
                                        jax.sharding.PartitionSpec('batch'))
  return jax.make_array_from_process_local_data(sharding, local)


def split_bytes(builder, split: str, meta: tfds_source.Meta) -> int:
  """Stored pixel bytes of a prepared split (0 if unknown)."""
  info = builder.info.splits.get(split) if builder.info.splits else None
  if info is None or meta.varying_size:
    return 0
  return int(info.num_examples) * int(np.prod(meta.image_shape))


AUTO_BYTES = 4 << 30  # data_source='auto' streams train splits above this.


def is_large(found: tfds_source.Found) -> bool:
  """Whether ``data_source='auto'`` streams this prepared dataset."""
  return split_bytes(found.builder, 'train', found.meta) > AUTO_BYTES


def scan(records: Records, where: str, stats: bool = False):
  """All labels of ``records`` and, if ``stats``, the statistics
  `datasets._train_stats` computes on their images: one pass, `CHUNK`
  records at a time, with the same chunks and the same float64 reduction
  (so the same numbers) and one chunk in memory.

  Returns:
    ``(labels, (mean, std) or None)``.
  """
  if not len(records):
    raise base.DataFileError(f'{where}: a prepared split is empty.')
  labels, total, total_sq, count = [], 0.0, 0.0, 0
  for start in range(0, len(records), CHUNK):
    x, y = records.read(np.arange(start, min(len(records), start + CHUNK)))
    labels.append(y)
    if not stats:
      continue
    chunk = x.reshape(-1, x.shape[-1]).astype(np.float64)
    del x
    chunk /= 255.0
    total = total + chunk.sum(0)
    np.square(chunk, out=chunk)
    total_sq = total_sq + chunk.sum(0)
    count += len(chunk)
    del chunk
  if not stats:
    return np.concatenate(labels), None
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
  return np.concatenate(labels), (tuple(float(m) for m in mean),
                                  tuple(float(s) for s in std))


def _splits(found: tfds_source.Found, size, where: str, stats: bool):
  """(train Records, train labels, test Records, test labels, note, train
  statistics or None)."""
  builder, meta = found.builder, found.meta
  names = set(builder.info.splits)
  test = 'test' if 'test' in names or not names else (
      'validation' if 'validation' in names else None)

  def records(split, ids=None):
    try:
      src = builder.as_data_source(split)
    except Exception as e:  # pylint: disable=broad-except
      raise base.damaged_prepared(
          where, f'opening the prepared {split} split', e) from e
    ids = np.arange(len(src)) if ids is None else ids
    return Records(src, ids, meta, size, f'{where} ({split})')
  train = records('train')
  if test is None:  # as `tfds_source.read_builder`.
    y_all, _ = scan(train, where)
    held = splits.holdout_mask(y_all)
    test_rec = records('train', np.flatnonzero(held))
    train = records('train', np.flatnonzero(~held))
    return (train, y_all[~held], test_rec, y_all[held],
            ' (test split: seeded hold-out of train)',
            scan(train, where, stats)[1])
  y_train, train_stats = scan(train, where, stats)
  test_rec = records(test)
  return train, y_train, test_rec, scan(test_rec, where)[0], '', train_stats


def load(found: tfds_source.Found, name: str, *, val_size: int = 0,
         seed: int = 0, image_size=None, train_limit: int | None = None,
         channels: int | None = None, pixels: str = 'float32',
         shard=None) -> base.Dataset:
  """`datasets.load` of a prepared dataset, its train and test splits
  streamed (`base.Dataset.streams`); arguments as there.

  Args:
    found: the prepared builder (`datasets.open_prepared`).
    name: the dataset's name (its standard statistics, if any).
    val_size, seed, image_size, train_limit, channels, pixels: as
      `datasets.load`.
    shard: which part of each batch this host reads (default:
      `host_shard`).

  Returns:
    A `Dataset` whose ``x_train`` and ``x_test`` are empty and whose
    ``streams`` read them.
  """
  # pylint: disable-next=g-import-not-at-top
  from distill_jax.data import datasets
  size = datasets._size(image_size)  # pylint: disable=protected-access
  where = found.source.split(':', 1)[-1]
  spec = registry.spec(name)
  train, y_train, test, y_test, note, train_stats = _splits(
      found, size if found.meta.varying_size else None, where,
      stats=not (spec and spec.stats))
  native = found.meta.image_shape[-1]
  mean, std = datasets.stats_of(name, native, channels, lambda: train_stats)
  train_idx, val_idx = splits.validation_indices(y_train, val_size, seed)
  if train_limit is not None and train_limit < len(train_idx):
    rng = np.random.default_rng([seed, 1])
    keep = splits._stratified_choice(rng, y_train[train_idx], train_limit)  # pylint: disable=protected-access
    train_idx = train_idx[keep]
  prep = datasets.preparer(pixels, image_size, channels, mean, std)
  x_val, _ = train.read(val_idx)
  train = train.subset(train_idx)
  shard = host_shard() if shard is None else shard
  empty = prep(train.read([0])[0])[:0]
  class_names = tuple(found.builder.info.features[
      found.meta.label_key].names)
  return base.Dataset(
      name=name, x_train=empty, y_train=y_train[train_idx].astype(np.int32),
      x_val=prep(x_val), y_val=y_train[val_idx].astype(np.int32),
      x_test=empty.copy(), y_test=y_test.astype(np.int32),
      num_classes=len(class_names), mean=mean, std=std,
      class_names=class_names, source=found.source + note,
      streams={
          'train': StreamSplit(train, y_train[train_idx].astype(np.int32),
                               prep, shard),
          'test': StreamSplit(test, y_test.astype(np.int32), prep, shard)})
