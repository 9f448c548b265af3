"""The TFDS path: prepared builders read into arrays; any TFDS dataset.

`read_builder` reads the train and test splits of a prepared builder (the
local builders of `distill_jax.data.local` and the standard TFDS ones) with
``builder.as_data_source``, which needs no TensorFlow. `load_online` makes
any TFDS image-classification builder by name (``cifar100``,
``emnist/balanced``, ``imagenette/160px-v2``, ``imagenet2012``, ...): it
checks the name against the TFDS catalogue, reads the image feature, the
class count and the class names from the builder's info (`describe`, no
data read), prepares it once in ``data_dir`` (``file_format=
'array_record'``; downloading, or from ``manual_dir`` for builders with a
manual download such as ``imagenet2012``) and reads it back.

Which splits: ``train``, and ``test``, else ``validation`` (ImageNet,
Imagenette), else a seeded test split held out from train
(`splits.holdout_test`). Images whose size varies (``Image(shape=(None,
None, 3))``) need ``image_size``: each image is resized (PIL bilinear) as it
is read. Preparing the standard builders (which encode images as PNG) needs
TensorFlow (``pip install tensorflow-cpu``) and, unless already prepared,
network access. In tests, ``tfds.testing.mock_data`` mocks
``download_and_prepare`` and ``as_data_source`` (random examples of the
builder's features; no TensorFlow, no network).
"""

import dataclasses
import functools
import os
from typing import NamedTuple

import numpy as np

from distill_jax.data import base
from distill_jax.data import readers
from distill_jax.data import registry
from distill_jax.data import splits


class PrepareError(Exception):
  """Preparing or reading a valid TFDS builder failed (e.g. offline)."""


@dataclasses.dataclass(frozen=True)
class Meta:
  """What a builder's info says about its images and labels."""
  image_key: str
  label_key: str
  image_shape: tuple  # (H, W, C); None for dimensions that vary.
  dtype: np.dtype
  num_classes: int
  class_names: tuple[str, ...]

  @property
  def varying_size(self) -> bool:
    return None in self.image_shape[:2]


class Found(NamedTuple):
  """A prepared builder, its `Meta` and the `Dataset.source` to record."""
  builder: object
  meta: Meta
  source: str


def describe(builder, name: str = '') -> Meta:
  """The image and class-label features of a builder (no data is read).

  Args:
    builder: a TFDS builder (prepared or not).
    name: the dataset's name, for the error message.

  Returns:
    Its `Meta`. The class names of some builders (``cifar100``) are only
    filled in when the builder is prepared; before, they are ``'0'``,
    ``'1'``, ...

  Raises:
    ValueError: the builder is not an image-classification dataset.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  features = builder.info.features
  keys = builder.info.supervised_keys
  if not (isinstance(keys, tuple) and len(keys) == 2 and
          all(isinstance(k, str) and k in features for k in keys)):
    images = [k for k in features if isinstance(
        features[k], tfds.features.Image)]
    labels = [k for k in features if isinstance(
        features[k], tfds.features.ClassLabel)]
    keys = (images[0], labels[0]) if len(images) == len(labels) == 1 else None
  image = features[keys[0]] if keys else None
  label = features[keys[1]] if keys else None
  if not (isinstance(image, (tfds.features.Image, tfds.features.Tensor)) and
          len(image.shape) in (2, 3) and
          isinstance(label, tfds.features.ClassLabel)):
    raise ValueError(registry.unknown_name_message(
        name or builder.name, 'is not an image-classification dataset (it '
        'has no image and class-label features)'))
  shape = tuple(image.shape) + ((1,) if len(image.shape) == 2 else ())
  return Meta(keys[0], keys[1], shape, np.dtype(image.np_dtype),
              int(label.num_classes), tuple(label.names))


def _read_split(ds, meta: Meta, size) -> tuple[np.ndarray, np.ndarray]:
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
    images = [np.asarray(e[meta.image_key]) for e in examples]
    images = [im[..., None] if im.ndim == 2 else im for im in images]
    if size is not None:
      images = [readers.fit_image(im, size) for im in images]
    xs.append(np.stack(images))
    ys.append(np.asarray([e[meta.label_key] for e in examples], np.int64))
  if not xs:
    raise ValueError('empty split')
  return np.concatenate(xs).astype(np.uint8), np.concatenate(ys)


def read_builder(builder, source: str, meta: Meta | None = None,
                 size=None) -> base.Raw:
  """Reads the train and test splits of a prepared builder.

  Args:
    builder: a prepared TFDS builder.
    source: the `Dataset.source` to record, e.g. ``'tfds:cifar100'``.
    meta: its `describe` (default: computed).
    size: (height, width) every image is resized to as it is read, or None.

  Returns:
    The uint8 splits and the class names (module docstring: which splits).
  """
  meta = meta or describe(builder)
  names = set(builder.info.splits)  # empty under `tfds.testing.mock_data`.
  test = 'test' if 'test' in names or not names else (
      'validation' if 'validation' in names else None)
  x_train, y_train = _read_split(builder.as_data_source('train'), meta, size)
  if test is None:
    x_train, y_train, x_test, y_test = splits.holdout_test(x_train, y_train)
    source += ' (test split: seeded hold-out of train)'
  else:
    x_test, y_test = _read_split(builder.as_data_source(test), meta, size)
  class_names = tuple(builder.info.features[meta.label_key].names)
  return base.Raw(x_train, y_train, x_test, y_test, class_names=class_names,
                  source=source)


def open_builder(name: str, data_dir: str, size=None):
  """The TFDS builder of ``name`` and its `Meta`, checked (nothing read).

  Raises:
    ValueError: one line: not a TFDS name (listing the names available),
      not an image-classification dataset, non-uint8 images, or images of
      varying size without ``size``.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir,
                           file_format='array_record')
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(registry.unknown_name_message(name)) from e
  except (ValueError, KeyError) as e:  # a bad config or version.
    raise ValueError(registry.unknown_name_message(
        name, f'is not a valid TFDS builder ({base.one_line(e)[:200]})')
                     ) from e
  meta = describe(builder, name)
  if meta.dtype != np.uint8:
    raise ValueError(f'TFDS dataset {name!r} stores {meta.dtype} images; '
                     'only uint8 images are supported: save it as an .npz '
                     'of float images in [0, 1] and pass its path.')
  if meta.varying_size and size is None:
    raise ValueError(f'TFDS dataset {name!r} has images of varying size '
                     f'{meta.image_shape}; pass image_size=N (--image_size=N)'
                     ' to resize them to N x N as they are read.')
  return builder, meta


def manual_dir_for(roots, name: str) -> str | None:
  """The first of ``roots`` that is set, or its ``<tfds base name>/``
  subfolder when there is one (``<dir>/imagenet2012/``)."""
  for root in roots:
    if root:
      sub = os.path.join(os.fspath(root), registry.tfds_base(name))
      return sub if os.path.isdir(sub) else os.fspath(root)
  return None


@functools.lru_cache(maxsize=8)
def load_online(name: str, data_dir: str, manual_dir: str | None = None,
                size: tuple[int, int] | None = None,
                download: bool = True) -> base.Raw:
  """Prepares (once) and reads the TFDS builder ``name``.

  Args:
    name: a TFDS builder name, e.g. ``'cifar100'``, ``'emnist/balanced'``.
    data_dir: where the prepared files go (and are looked for).
    manual_dir: folder with manually downloaded files (``imagenet2012``).
    size: (height, width) for builders whose image size varies.
    download: if False, only an already prepared copy is read.

  Returns:
    The uint8 train and test splits.

  Raises:
    ValueError: see `open_builder`.
    PrepareError: preparing or reading failed (offline, no TensorFlow,
      missing manual files, ...); one line.
  """
  builder, meta = prepare_online(name, data_dir, manual_dir, size, download)
  try:
    return read_builder(builder, f'tfds:{name}', meta,
                        size if meta.varying_size else None)
  except Exception as e:  # pylint: disable=broad-except
    raise _prepare_error(e) from e


def prepare_online(name: str, data_dir: str, manual_dir: str | None = None,
                   size: tuple[int, int] | None = None,
                   download: bool = True):
  """Prepares (once) the TFDS builder ``name``; nothing is read.

  Returns:
    ``(builder, meta)``.

  Raises:
    ValueError, PrepareError: as `load_online`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder, meta = open_builder(name, data_dir, size)
  try:
    if download:
      builder.download_and_prepare(download_config=tfds.download.
                                   DownloadConfig(manual_dir=manual_dir))
    elif not builder.is_prepared():
      raise PrepareError(f'not prepared in {data_dir} and download=False')
    return builder, meta
  except PrepareError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise _prepare_error(e) from e


def _prepare_error(e: Exception) -> PrepareError:
  """One line for a failure to prepare or read a builder."""
  if isinstance(e, ImportError):
    return PrepareError(f'{base.one_line(e)[:200]} (preparing the standard '
                        'TFDS builders needs: pip install tensorflow-cpu)')
  return PrepareError(f'{type(e).__name__}: {base.one_line(e)[:300]}')


def is_prepared_dir(path: str) -> bool:
  """Whether ``path`` is a prepared TFDS dataset folder (it holds
  ``dataset_info.json``, e.g. ``<data_dir>/my_set/1.0.0``)."""
  return os.path.isfile(os.path.join(os.path.expanduser(path),
                                     'dataset_info.json'))


def open_prepared_dir(path: str, size=None) -> Found:
  """The builder of a prepared TFDS folder (`is_prepared_dir`), checked.

  Raises:
    DataFileError: its ``dataset_info.json`` cannot be read, or it is not
      an image-classification dataset with uint8 images (one line).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder_from_directory(path)
    meta = describe(builder, path)
  except Exception as e:  # pylint: disable=broad-except
    raise base.DataFileError(
        f'{path}: not a readable prepared TFDS dataset '
        f'({type(e).__name__}: {base.one_line(e)[:200]}); prepare it again '
        '(builder.download_and_prepare, file_format="array_record").'
    ) from e
  if meta.dtype != np.uint8 or (meta.varying_size and size is None):
    raise base.DataFileError(
        f'{path}: images {meta.dtype}{list(meta.image_shape)}; only uint8 '
        'images are supported, and images of varying size need '
        'image_size=N (--image_size=N).')
  return Found(builder, meta, f'prepared:{path}')


@functools.lru_cache(maxsize=4)
def load_prepared_dir(path: str, size=None) -> base.Raw:
  """Reads the train and test splits of a prepared TFDS folder."""
  found = open_prepared_dir(path, size)
  try:
    return read_builder(found.builder, found.source, found.meta,
                        size if found.meta.varying_size else None)
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise base.damaged_prepared(path, 'reading the prepared files', e) from e
