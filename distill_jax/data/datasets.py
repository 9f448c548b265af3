"""Datasets for distillation: local copies or TFDS, as normalised numpy arrays.

This is the only module of ``distill_jax`` that imports
``tensorflow_datasets``, and it does so lazily inside functions, so importing
``distill_jax`` stays fast.

Where a dataset comes from (first match wins):

1. ``manual_dir`` argument (e.g. a ``--data_dir`` flag);
2. env var ``DISTILL_JAX_DATA_DIR``;
3. for ``fashion_mnist`` only, Debian's ``/usr/share/datasets/fashion-mnist``
   (``apt-get install dataset-fashion-mnist``);
4. online, the standard TFDS builder (``mnist``, ``fashion_mnist``,
   ``cifar10``, ``svhn_cropped``).

A manual dir may be the parent folder (holding ``mnist/``, ``usps/``, ...) or
a dataset's own folder. Local files are prepared once by the TFDS builders of
``distill_jax.data.local`` into ArrayRecord files under ``data_dir``
(argument, else env ``TFDS_DATA_DIR``, else ``~/tensorflow_datasets``), e.g.
``~/tensorflow_datasets/local_mnist/1.0.0/``, and read back with
``builder.as_data_source`` (no TensorFlow needed). Note that prepared data is
reused only while its recorded source (size and sha256 of each file, in
``distill_jax_source.json``) matches the files found; otherwise it is
prepared again. Raw uint8 arrays are also cached in-process.

Online path: it uses ``tfds.builder(name, file_format='array_record')``,
``download_and_prepare()`` and ``as_data_source`` rather than ``tfds.load``,
because ``as_data_source`` reads without TensorFlow. Preparing the standard
builders (which encode ``tfds.features.Image`` as PNG) does need TensorFlow
(``pip install tensorflow-cpu``) and network access. In tests,
``tfds.testing.mock_data`` mocks ``download_and_prepare`` and
``as_data_source`` (``MockPolicy.USE_CODE``), which works without TensorFlow
for ``mnist`` because the mocked data source decodes with numpy; so the
online path can be tested by wrapping ``load('mnist', download=True)`` in
``mock_data``. (Its mocked ``__getitems__`` fails in tfds 4.9.10, so reads
fall back to ``ds[i]``.) The standard ``mnist`` builder itself could not be
prepared here: there is no TensorFlow and no network.
"""

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import threading

from absl import logging

import numpy as np

from distill_jax.data.splits import _stratified_choice
from distill_jax.data.splits import split_validation
from distill_jax.data.transforms import _normalize_inplace
from distill_jax.data.transforms import aligned_empty
from distill_jax.data.transforms import as_aligned
from distill_jax.data.transforms import PIXELS
from distill_jax.data.transforms import resize

ENV_DATA_DIR = 'DISTILL_JAX_DATA_DIR'
FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'

_MNIST_STATS = ((0.1307,), (0.3081,))
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))


@dataclasses.dataclass(frozen=True)
class _Spec:
  local: bool  # Has a builder in `local_datasets`.
  tfds_name: str | None  # Standard TFDS builder, for the online path.
  stats: tuple[tuple[float, ...], tuple[float, ...]] | None  # None: computed.
  system_dirs: tuple[str, ...] = ()


_SPECS = {
    'mnist': _Spec(True, 'mnist', _MNIST_STATS),
    'fashion_mnist': _Spec(True, 'fashion_mnist', None,
                           (FASHION_MNIST_SYSTEM_DIR,)),
    'usps': _Spec(True, None, None),
    'cifar10': _Spec(True, 'cifar10', _CIFAR10_STATS),
    'cifar10_subset': _Spec(True, None, _CIFAR10_STATS),
    'svhn_cropped': _Spec(False, 'svhn_cropped', None),
}


class DatasetNotFoundError(FileNotFoundError):
  """No local copy of a dataset was found and the online route failed."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A classification dataset as NHWC numpy arrays.

  Attributes:
    name: dataset name, e.g. ``'mnist'``.
    x_train: float32 (N, H, W, C), normalised as ``(x / 255 - mean) / std``;
      or, loaded with ``pixels='uint8'``, the stored uint8 pixels (same for
      ``x_val`` and ``x_test``; normalise with `decode`).
    y_train: int32 (N,).
    x_val: validation images held out from the train split (may be empty).
    y_val: validation labels.
    x_test: test images.
    y_test: test labels.
    num_classes: number of classes.
    mean: per-channel mean, in [0, 1] pixel units.
    std: per-channel std, in [0, 1] pixel units.
    class_names: name of each class.
    source: where the data came from, ``'local:<dir>'`` or ``'tfds:<name>'``.
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  class_names: tuple[str, ...]
  source: str

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of one image."""
    return tuple(self.x_train.shape[1:])

  @property
  def pixels(self) -> str:
    """'uint8' if the images are stored pixels (see `decode`), else
    'float32'."""
    return 'uint8' if self.x_train.dtype == np.uint8 else 'float32'


@dataclasses.dataclass(frozen=True, eq=False)
class _Raw:
  """Unnormalised uint8 splits, as cached in-process."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  class_names: tuple[str, ...]
  source: str


def available() -> tuple[str, ...]:
  """Returns the names accepted by `load`."""
  return tuple(_SPECS)


def _local_datasets():
  """Imports `local_datasets` (and so TFDS) on first use."""
  # pylint: disable-next=g-import-not-at-top
  from distill_jax.data import local as local_datasets
  return local_datasets


def _default_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR') or os.path.expanduser(
      '~/tensorflow_datasets')


def _how_to_get(name: str, tried: list[str]) -> str:
  """The message of a `DatasetNotFoundError`."""
  spec = _SPECS[name]
  lines = [f'Dataset {name!r} was not found.']
  if tried:
    lines.append('Tried:\n  ' + '\n  '.join(tried))
  lines.append('Ways to get it:')
  if spec.local:
    local_datasets = _local_datasets()
    folder, files = local_datasets.LAYOUTS[name]
    lines.append(
        f'  * pass manual_dir=<dir> (the --data_dir flag) or set the env var '
        f'{ENV_DATA_DIR}=<dir>, where <dir>/{folder}/ (or <dir> itself) '
        f'holds {", ".join(files)};')
  if name == 'fashion_mnist':
    lines.append('  * apt-get install dataset-fashion-mnist (files go to '
                 f'{FASHION_MNIST_SYSTEM_DIR}/);')
  if spec.tfds_name:
    lines.append(
        f'  * go online: TFDS builder {spec.tfds_name!r} downloads it, which '
        'needs network access and TensorFlow (pip install tensorflow-cpu).')
  else:
    lines.append('  * (no online TFDS source for this dataset.)')
  return '\n'.join(lines)


def _read_data_source(ds) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole TFDS data source into (images, labels) arrays."""
  n = len(ds)
  xs, ys = [], []
  chunk = 8192
  for start in range(0, n, chunk):
    idx = list(range(start, min(n, start + chunk)))
    try:
      examples = ds.__getitems__(idx)  # Batched read: much faster.
    except (AttributeError, TypeError):
      # No batched read, or the `tfds.testing.mock_data` data source, whose
      # `__getitems__` is broken in tfds 4.9.10 (it does not receive `self`).
      examples = [ds[i] for i in idx]
    xs.append(np.stack([np.asarray(e['image']) for e in examples]))
    ys.append(np.asarray([e['label'] for e in examples], np.int64))
  if not xs:
    raise ValueError('empty split')
  x = np.concatenate(xs)
  if x.ndim == 3:
    x = x[..., None]
  return x.astype(np.uint8), np.concatenate(ys)


def _from_builder(builder, source: str) -> _Raw:
  splits = {}
  for split in ('train', 'test'):
    splits[split] = _read_data_source(builder.as_data_source(split))
  names = tuple(builder.info.features['label'].names)
  for arr in (*splits['train'], *splits['test']):
    arr.flags.writeable = False
  return _Raw(*splits['train'], *splits['test'], class_names=names,
              source=source)


_LOCK = threading.Lock()


SOURCE_STAMP = 'distill_jax_source.json'


def source_fingerprint(name: str, directory: str) -> dict:
  """Size and sha256 of each file a local dataset is prepared from."""
  _, files = _local_datasets().LAYOUTS[name]
  out = {}
  for f in files:
    path = os.path.join(directory, f)
    h = hashlib.sha256()
    with open(path, 'rb') as fh:
      for chunk in iter(lambda: fh.read(1 << 20), b''):  # pylint: disable=cell-var-from-loop
        h.update(chunk)
    out[f] = {'bytes': os.path.getsize(path), 'sha256': h.hexdigest()}
  return out


def _read_stamp(path: str):
  try:
    with open(path) as f:
      return json.load(f).get('files')
  except (OSError, ValueError, AttributeError):
    return None


@functools.lru_cache(maxsize=16)
def _load_local(name: str, directory: str, data_dir: str) -> _Raw:
  """Prepares (once per source) and reads a local dataset.

  The prepared folder records the size and sha256 of the files it was made
  from (``SOURCE_STAMP``); a prepared folder made from other files (another
  copy, a test's fake data, or a version of this library that kept no
  record) is deleted and prepared again, so a run never silently reads data
  other than the files it was pointed at.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  local_datasets = _local_datasets()
  want = source_fingerprint(name, directory)

  def make():
    return local_datasets.BUILDERS[name](data_dir=data_dir,
                                         file_format='array_record')
  with _LOCK:
    builder = make()
    prepared = os.path.abspath(os.fspath(builder.data_dir))
    # Only a folder of our own under data_dir is ever deleted or stamped
    # (under `tfds.testing.mock_data` the builder points elsewhere).
    ours = os.path.commonpath(
        [prepared, os.path.abspath(data_dir)]) == os.path.abspath(data_dir)
    stamp = os.path.join(prepared, SOURCE_STAMP)
    if ours and os.path.isdir(prepared) and _read_stamp(stamp) != want:
      logging.warning(
          '%s: the prepared copy in %s was not made from the files in %s '
          '(different or unrecorded source); preparing it again.', name,
          prepared, directory)
      shutil.rmtree(prepared)
      builder = make()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=directory))
    if ours and os.path.isdir(prepared) and _read_stamp(stamp) != want:
      tmp = f'{stamp}.tmp{os.getpid()}'
      with open(tmp, 'w') as f:
        json.dump({'source': directory, 'files': want}, f, indent=1)
      os.replace(tmp, stamp)
  return _from_builder(builder, f'local:{directory}')


@functools.lru_cache(maxsize=8)
def _load_online(name: str, data_dir: str) -> _Raw:
  """Prepares (once, downloading) and reads a standard TFDS dataset."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds_name = _SPECS[name].tfds_name
  builder = tfds.builder(tfds_name, data_dir=data_dir,
                         file_format='array_record')
  builder.download_and_prepare()
  return _from_builder(builder, f'tfds:{tfds_name}')


def _load_raw(name: str, manual_dir, data_dir, download: bool) -> _Raw:
  """Finds a dataset (see module docstring for the order) and reads it."""
  spec = _SPECS[name]
  tried = []
  if spec.local:
    local_datasets = _local_datasets()
    candidates = [('manual_dir', manual_dir),
                  (f'${ENV_DATA_DIR}', os.environ.get(ENV_DATA_DIR))]
    candidates += [('system', d) for d in spec.system_dirs]
    for label, root in candidates:
      if not root:
        continue
      directory = local_datasets.find_dataset_dir(root, name)
      if directory is None:
        tried.append(f'{label}: {root} (no {name} files)')
        continue
      return _load_local(name, os.path.abspath(os.fspath(directory)),
                         os.fspath(data_dir))
  if spec.tfds_name and download:
    try:
      return _load_online(name, os.fspath(data_dir))
    except ImportError as e:
      tried.append(f'online TFDS {spec.tfds_name!r}: {e!r} (preparing the '
                   'standard TFDS builders needs: pip install tensorflow-cpu)')
    except Exception as e:  # pylint: disable=broad-except
      tried.append(f'online TFDS {spec.tfds_name!r}: {e!r}')
  elif spec.tfds_name:
    tried.append('online TFDS: skipped (download=False)')
  raise DatasetNotFoundError(_how_to_get(name, tried))


@functools.lru_cache(maxsize=16)
def _train_stats(raw: _Raw) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std of the whole train split, in [0, 1] units."""
  x = raw.x_train
  c = x.shape[-1]
  total = np.zeros(c)
  total_sq = np.zeros(c)
  for start in range(0, len(x), 10000):
    chunk = x[start:start + 10000].reshape(-1, c).astype(np.float64) / 255.0
    total += chunk.sum(0)
    total_sq += (chunk ** 2).sum(0)
  count = x.size // c
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def clear_cache() -> None:
  """Drops the in-process cache of raw uint8 splits (see `load`)."""
  for cached in (_load_local, _load_online, _train_stats):
    cached.cache_clear()


def load(name: str, *, manual_dir=None, data_dir=None, val_size: int = 0,
         seed: int = 0, image_size=None, train_limit: int | None = None,
         download: bool = True, channels: int | None = None,
         pixels: str = 'float32') -> Dataset:
  """Loads a dataset as normalised float32 (or raw uint8) NHWC arrays.

  Args:
    name: one of `available()`.
    manual_dir: folder with local copies (parent of ``<name>/`` folders, or
      the dataset's own folder); else env ``DISTILL_JAX_DATA_DIR``; see the
      module docstring for the full search order.
    data_dir: where prepared ArrayRecord files go; else env
      ``TFDS_DATA_DIR``, else ``~/tensorflow_datasets``.
    val_size: number of train examples held out, class-stratified, as the
      validation split.
    seed: seed of the validation split and of ``train_limit``.
    image_size: if set, int or (height, width) to resize to (bilinear, before
      normalisation), e.g. 28 to use USPS with MNIST models.
    train_limit: if set, keep a class-stratified random subset of this many
      train examples (after holding out validation), in original order.
    download: whether the online TFDS route may be tried.
    channels: if 3 and the images are grayscale, replicate them to RGB (and
      the normalisation statistics with them), e.g. MNIST for SVHN-trained
      networks; None or the native count keeps the images as they are.
    pixels: 'float32' (normalised) or 'uint8': the images as stored, a
      quarter of the memory, normalised per batch with `decode(x, mean,
      std)` (not combinable with ``image_size`` or ``channels``).

  Returns:
    A `Dataset`.

  Raises:
    ValueError: unknown name, bad sizes, or corrupt local files.
    DatasetNotFoundError: the dataset could not be found or downloaded.
  """
  if name not in _SPECS:
    raise ValueError(f'Unknown dataset {name!r}; supported: '
                     f'{", ".join(available())}.')
  if pixels not in PIXELS:
    raise ValueError(f"pixels={pixels!r}: choose one of {list(PIXELS)}.")
  if pixels == 'uint8' and (image_size is not None or channels):
    raise ValueError("pixels='uint8' keeps the stored images; it cannot be "
                     "combined with image_size or channels (use "
                     "pixels='float32').")
  data_dir = data_dir or _default_data_dir()
  raw = _load_raw(name, manual_dir, data_dir, download)
  spec = _SPECS[name]
  mean, std = spec.stats if spec.stats else _train_stats(raw)
  native = raw.x_train.shape[-1]
  if channels and channels != native:
    if not (native == 1 and channels == 3):
      raise ValueError(
          f"channels={channels}: {name} has {native}-channel images; only "
          "grayscale -> 3 channels (replication) is supported. Use "
          f"channels={native} or leave it unset.")
    mean, std = tuple(mean) * 3, tuple(std) * 3

  x_train, y_train, x_val, y_val = split_validation(
      raw.x_train, raw.y_train, val_size, seed)
  if train_limit is not None and train_limit < len(y_train):
    rng = np.random.default_rng([seed, 1])
    keep = _stratified_choice(rng, y_train, train_limit)
    x_train, y_train = x_train[keep], y_train[keep]

  def prepare(x):  # uint8 -> normalised float32, one full-size array.
    if pixels == 'uint8':  # an own copy: `raw` is the in-process cache.
      out = aligned_empty(x.shape, np.uint8)
      out[...] = x
      return out
    out = aligned_empty(x.shape, np.float32)
    np.divide(x, np.float32(255.0), out=out)
    if image_size is not None:
      out = resize(out, image_size)
    if channels and channels != out.shape[-1]:
      out = np.repeat(out, channels, axis=-1)
    return _normalize_inplace(as_aligned(out), mean, std)

  return Dataset(
      name=name,
      x_train=prepare(x_train),
      y_train=y_train.astype(np.int32),
      x_val=prepare(x_val),
      y_val=y_val.astype(np.int32),
      x_test=prepare(raw.x_test),
      y_test=raw.y_test.astype(np.int32),
      num_classes=len(raw.class_names),
      mean=tuple(mean),
      std=tuple(std),
      class_names=raw.class_names,
      source=raw.source,
  )


def load_for(cfg, data_dir: str | None = None, pixels: str = 'float32'):
  """`load` with the data fields of a run config (dataset, val_size, seed,
  image_size, train_limit, channels; 0 = native)."""
  return load(cfg.dataset, manual_dir=data_dir, val_size=cfg.val_size,
              seed=cfg.seed, image_size=cfg.image_size or None,
              train_limit=getattr(cfg, 'train_limit', 0) or None,
              channels=getattr(cfg, 'channels', 0) or None, pixels=pixels)
