"""Datasets for distillation, as normalised numpy arrays: `load`.

A dataset is a local builder, a TFDS name or a path to the user's own data
(`distill_jax.data.registry`). ``tensorflow_datasets`` is imported lazily
inside functions (and not at all for the user's own files), so importing
``distill_jax`` stays fast.

Where a named dataset comes from (first match wins):

1. ``manual_dir`` argument (e.g. a ``--data_dir`` flag);
2. env var ``DISTILL_JAX_DATA_DIR``;
3. for ``fashion_mnist`` only, Debian's ``/usr/share/datasets/fashion-mnist``
   (``apt-get install dataset-fashion-mnist``);
4. online, the standard TFDS builder (``mnist``, ``fashion_mnist``,
   ``cifar10``, ``svhn_cropped``, and any other TFDS image-classification
   name: ``cifar100``, ``emnist/balanced``, ...; `tfds_source`). Builders
   with a manual download (``imagenet2012``) read it from ``manual_dir``
   or ``manual_dir/<name>/`` (then the env var).

Steps 1-3 apply to the local builders (`registry.LOCAL`). A manual dir may
be the parent folder (holding ``mnist/``, ``usps/``, ...) or a dataset's own
folder. Local files are prepared once by the TFDS builders of
``distill_jax.data.local`` into ArrayRecord files under ``data_dir``
(argument, else env ``TFDS_DATA_DIR``, else ``~/tensorflow_datasets``), e.g.
``~/tensorflow_datasets/local_mnist/1.0.0/``, and read back with
``builder.as_data_source`` (no TensorFlow needed); a prepared copy is reused
only while its recorded source matches the files found (`prepared`). The
user's own .npz files and image folders are read directly (`user`). Raw
splits are cached in-process.

Normalisation: the standard per-channel mean and std of the known datasets
(`registry`), otherwise computed on the whole training split (before the
validation split is held out) and stored in the `Dataset`.

Online path: it uses ``tfds.builder(name, file_format='array_record')``,
``download_and_prepare()`` and ``as_data_source`` rather than ``tfds.load``,
because ``as_data_source`` reads without TensorFlow. Preparing the standard
builders (which encode ``tfds.features.Image`` as PNG) does need TensorFlow
(``pip install tensorflow-cpu``) and network access. In tests,
``tfds.testing.mock_data`` mocks ``download_and_prepare`` and
``as_data_source`` (``MockPolicy.USE_CODE``), which works without TensorFlow
because the mocked data source decodes with numpy; so the online path is
tested by wrapping ``load('cifar100', download=True)`` in ``mock_data``.
"""

import functools
import os

import numpy as np

from distill_jax.data import base
from distill_jax.data import prepared
from distill_jax.data import readers
from distill_jax.data import registry
from distill_jax.data import tfds_source
from distill_jax.data import user
from distill_jax.data.splits import _stratified_choice
from distill_jax.data.splits import split_validation
from distill_jax.data.transforms import _normalize_inplace
from distill_jax.data.transforms import aligned_empty
from distill_jax.data.transforms import as_aligned
from distill_jax.data.transforms import PIXELS
from distill_jax.data.transforms import resize

# Names that lived here before the split; they stay importable from here.
# pylint: disable=unused-import,g-bad-import-order
from distill_jax.data.base import DataFileError
from distill_jax.data.base import Dataset
from distill_jax.data.base import DatasetNotFoundError
from distill_jax.data.base import Raw as _Raw
from distill_jax.data.prepared import SOURCE_STAMP
from distill_jax.data.prepared import source_fingerprint
from distill_jax.data.registry import _Spec
from distill_jax.data.registry import _SPECS
from distill_jax.data.registry import available
from distill_jax.data.registry import DATA_SOURCES
from distill_jax.data.registry import ENV_DATA_DIR
from distill_jax.data.registry import FASHION_MNIST_SYSTEM_DIR
from distill_jax.data.tfds_source import read_builder as _from_builder
# pylint: enable=unused-import,g-bad-import-order


def _default_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR') or os.path.expanduser(
      '~/tensorflow_datasets')


def _size(image_size) -> tuple[int, int] | None:
  if image_size is None:
    return None
  if isinstance(image_size, int):
    return (image_size, image_size)
  return tuple(int(s) for s in image_size)


def _locate(name: str, manual_dir, data_dir, download: bool, size=None):
  """Finds a dataset (see module docstring for the order), reading nothing.

  Returns:
    ``('user', path)``, ``('prepared', path)`` (a prepared TFDS folder),
    ``('local', name, directory)`` or ``('tfds', tfds_name, manual_dir,
    routes_tried, layout)``.
  """
  if registry.is_path(name):
    if tfds_source.is_prepared_dir(name):
      return ('prepared', os.path.abspath(os.path.expanduser(name)))
    return ('user', name)
  spec = registry.spec(name)
  roots = [('manual_dir', manual_dir),
           (f'${ENV_DATA_DIR}', os.environ.get(ENV_DATA_DIR))]
  tried, layout = [], None
  if spec is not None and spec.local:
    layout = readers.LAYOUTS[name]
    for label, root in roots + [('system', d) for d in spec.system_dirs]:
      if not root:
        continue
      directory = readers.find_dataset_dir(root, name)
      if directory is None:
        tried.append(f'{label}: {root} (no {name} files)')
        continue
      return ('local', name, os.path.abspath(os.fspath(directory)))
  tfds_name = spec.tfds_name if spec is not None else name
  if tfds_name:
    manual = tfds_source.manual_dir_for([r for _, r in roots], tfds_name)
    return ('tfds', tfds_name, manual, tried, layout)
  raise DatasetNotFoundError(registry.how_to_get(name, tried, layout))


def _online_failed(name: str, where, e: Exception) -> DatasetNotFoundError:
  """The error of a failed online route, naming every route tried."""
  return DatasetNotFoundError(registry.how_to_get(
      name, where[3] + [f'online TFDS {where[1]!r}: {e}'], where[4]))


def _load_raw(name: str, manual_dir, data_dir, download: bool,
              size=None) -> base.Raw:
  """Finds a dataset (`_locate`) and reads it."""
  where = _locate(name, manual_dir, data_dir, download, size)
  kind, arg = where[0], where[1]
  if kind == 'user':
    return user.load(arg, size)
  if kind == 'prepared':
    return tfds_source.load_prepared_dir(arg, size)
  if kind == 'local':
    return prepared.load_local(arg, where[2], os.fspath(data_dir))
  try:
    return tfds_source.load_online(arg, os.fspath(data_dir), where[2], size,
                                   download)
  except tfds_source.PrepareError as e:
    raise _online_failed(name, where, e) from e


def open_prepared(name: str, manual_dir, data_dir, download: bool,
                  size=None) -> tfds_source.Found:
  """The prepared builder of a dataset, for reading by index (`stream`).

  Raises:
    ValueError: the dataset is the user's .npz file or image folder, which
      is read into memory (only prepared ArrayRecord files stream).
    DatasetNotFoundError: as `load`.
  """
  where = _locate(name, manual_dir, data_dir, download, size)
  kind, arg = where[0], where[1]
  if kind == 'user':
    raise ValueError(
        f'{name}: an .npz file or an image folder is read into memory; '
        "use data_source='memory' (--data_source=memory), or prepare it as "
        'a TFDS ArrayRecord dataset and pass that folder.')
  if kind == 'prepared':
    return tfds_source.open_prepared_dir(arg, size)
  if kind == 'local':
    builder = prepared.prepare_local(arg, where[2], os.fspath(data_dir))
    return tfds_source.Found(builder, tfds_source.describe(builder, name),
                             f'local:{where[2]}')
  try:
    builder, meta = tfds_source.prepare_online(arg, os.fspath(data_dir),
                                               where[2], size, download)
  except tfds_source.PrepareError as e:
    raise _online_failed(name, where, e) from e
  return tfds_source.Found(builder, meta, f'tfds:{arg}')


@functools.lru_cache(maxsize=16)
def _train_stats(raw: base.Raw) -> registry.Stats:
  """Per-channel mean and std of the whole train split, in [0, 1] units."""
  x = raw.x_train
  c = x.shape[-1]
  scale = 255.0 if x.dtype == np.uint8 else 1.0
  total = np.zeros(c)
  total_sq = np.zeros(c)
  for start in range(0, len(x), 10000):
    chunk = x[start:start + 10000].reshape(-1, c).astype(np.float64) / scale
    total += chunk.sum(0)
    total_sq += (chunk ** 2).sum(0)
  count = x.size // c
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def clear_cache() -> None:
  """Drops the in-process cache of raw splits (see `load`)."""
  for cached in (prepared.load_local, tfds_source.load_online,
                 tfds_source.load_prepared_dir, _train_stats, *user.CACHED):
    cached.cache_clear()


def _check_args(name, pixels: str, image_size, channels) -> None:
  registry.check_name(name)
  if pixels not in PIXELS:
    raise ValueError(f"pixels={pixels!r}: choose one of {list(PIXELS)}.")
  if pixels == 'uint8' and (image_size is not None or channels):
    raise ValueError("pixels='uint8' keeps the stored images; it cannot be "
                     "combined with image_size or channels (use "
                     "pixels='float32').")


def _stats(name: str, raw: base.Raw, channels) -> registry.Stats:
  """The normalisation: standard for known datasets, else computed; with
  grayscale replicated to ``channels`` = 3, replicated with it."""
  return stats_of(name, raw.x_train.shape[-1], channels,
                  lambda: _train_stats(raw))


def stats_of(name: str, native: int, channels, compute) -> registry.Stats:
  """`_stats` of a dataset with ``native`` channels; ``compute()`` gives
  the statistics of the train split when the dataset has no standard ones.
  """
  spec = registry.spec(name)
  mean, std = spec.stats if spec and spec.stats else compute()
  if channels and channels != native:
    if not (native == 1 and channels == 3):
      raise ValueError(
          f"channels={channels}: {name} has {native}-channel images; only "
          "grayscale -> 3 channels (replication) is supported. Use "
          f"channels={native} or leave it unset.")
    mean, std = tuple(mean) * 3, tuple(std) * 3
  return tuple(mean), tuple(std)


def _prepare(x, pixels, image_size, channels, mean, std) -> np.ndarray:
  """Raw images -> normalised float32 (one full-size array), or an own
  uint8 copy (``raw`` is the in-process cache)."""
  if pixels == 'uint8' and x.dtype == np.uint8:
    out = aligned_empty(x.shape, np.uint8)
    out[...] = x
    return out
  out = aligned_empty(x.shape, np.float32)
  if x.dtype == np.uint8:
    np.divide(x, np.float32(255.0), out=out)
  else:  # float32 in [0, 1] (a user's npz).
    out[...] = x
  if image_size is not None:
    out = resize(out, image_size)
  if channels and channels != out.shape[-1]:
    out = np.repeat(out, channels, axis=-1)
  return _normalize_inplace(as_aligned(out), mean, std)


def preparer(pixels: str, image_size, channels, mean, std):
  """``x -> `_prepare`(x, ...)``: raw images to the arrays `load` holds."""
  return functools.partial(_prepare, pixels=pixels, image_size=image_size,
                           channels=channels, mean=mean, std=std)


def load(name: str, *, manual_dir=None, data_dir=None, val_size: int = 0,
         seed: int = 0, image_size=None, train_limit: int | None = None,
         download: bool = True, channels: int | None = None,
         pixels: str = 'float32', data_source: str = 'memory') -> Dataset:
  """Loads a dataset as normalised float32 (or raw uint8) NHWC arrays.

  Args:
    name: one of `available()`, another TFDS image-classification name
      (``'emnist/balanced'``), or a path to an .npz file or an image folder
      (`distill_jax.data.user`).
    manual_dir: folder with local copies (parent of ``<name>/`` folders, or
      the dataset's own folder), or a TFDS builder's manual download;
      else env ``DISTILL_JAX_DATA_DIR``; see the module docstring.
    data_dir: where prepared ArrayRecord files go; else env
      ``TFDS_DATA_DIR``, else ``~/tensorflow_datasets``.
    val_size: number of train examples held out, class-stratified, as the
      validation split.
    seed: seed of the validation split and of ``train_limit``.
    image_size: if set, int or (height, width) to resize to (bilinear, before
      normalisation), e.g. 28 to use USPS with MNIST models; required for
      sources whose images differ in size (resized as they are read).
    train_limit: if set, keep a class-stratified random subset of this many
      train examples (after holding out validation), in original order.
    download: whether the online TFDS route may download and prepare.
    channels: if 3 and the images are grayscale, replicate them to RGB (and
      the normalisation statistics with them), e.g. MNIST for SVHN-trained
      networks; None or the native count keeps the images as they are.
    pixels: 'float32' (normalised) or 'uint8': the images as stored, a
      quarter of the memory, normalised per batch with `decode(x, mean,
      std)` (not combinable with ``image_size`` or ``channels``). Data
      stored as floats (a user's npz of float images) comes back as
      normalised float32 either way (`decode` passes floats through).
    data_source: 'memory' (the splits as arrays), 'stream' (the train and
      test splits stay in the prepared ArrayRecord files and are read by
      index, `distill_jax.data.stream`; ``x_train`` and ``x_test`` are then
      empty and `Dataset.streams` reads them) or 'auto' (stream when the
      prepared train split holds more than `stream.AUTO_BYTES` of pixels).

  Returns:
    A `Dataset`.

  Raises:
    ValueError: unknown name, bad sizes, or corrupt files (`DataFileError`
      for the user's own data); one line each.
    DatasetNotFoundError: the dataset could not be found or downloaded.
  """
  _check_args(name, pixels, image_size, channels)
  if data_source not in DATA_SOURCES:
    raise ValueError(f'data_source={data_source!r}: choose one of '
                     f'{list(DATA_SOURCES)}.')
  data_dir = data_dir or _default_data_dir()
  if data_source != 'memory':
    from distill_jax.data import stream  # pylint: disable=g-import-not-at-top
    found = open_prepared(name, manual_dir, data_dir, download,
                          _size(image_size))
    if data_source == 'stream' or stream.is_large(found):
      return stream.load(found, name, val_size=val_size, seed=seed,
                         image_size=image_size, train_limit=train_limit,
                         channels=channels, pixels=pixels)
  raw = _load_raw(name, manual_dir, data_dir, download, _size(image_size))
  mean, std = _stats(name, raw, channels)
  x_train, y_train, x_val, y_val = split_validation(
      raw.x_train, raw.y_train, val_size, seed)
  if train_limit is not None and train_limit < len(y_train):
    rng = np.random.default_rng([seed, 1])
    keep = _stratified_choice(rng, y_train, train_limit)
    x_train, y_train = x_train[keep], y_train[keep]
  prep = preparer(pixels, image_size, channels, mean, std)
  return Dataset(
      name=name,
      x_train=prep(x_train),
      y_train=y_train.astype(np.int32),
      x_val=prep(x_val),
      y_val=y_val.astype(np.int32),
      x_test=prep(raw.x_test),
      y_test=raw.y_test.astype(np.int32),
      num_classes=len(raw.class_names),
      mean=mean,
      std=std,
      class_names=raw.class_names,
      source=raw.source,
  )


def load_for(cfg, data_dir: str | None = None, pixels: str = 'float32'):
  """`load` with the data fields of a run config (dataset, val_size, seed,
  image_size, train_limit, channels; 0 = native; data_source, default
  'memory')."""
  return load(cfg.dataset, manual_dir=data_dir, val_size=cfg.val_size,
              seed=cfg.seed, image_size=cfg.image_size or None,
              train_limit=getattr(cfg, 'train_limit', 0) or None,
              channels=getattr(cfg, 'channels', 0) or None, pixels=pixels,
              data_source=getattr(cfg, 'data_source', 'memory'))
