"""The user's own data by path: an .npz file or a folder of images.

* ``.npz`` (``numpy.savez``): ``x_train``, ``y_train``, ``x_test``,
  ``y_test``. Images uint8 (0..255) or float in [0, 1] (kept as float32,
  not quantised), NHWC or NHW (grayscale); labels integers 0..K-1 of shape
  (N,) or (N, 1). Optional ``class_names`` (K strings); without it the
  classes are named ``'0'``, ``'1'``, ... and K is the largest label + 1.
* an image folder: ``<dir>/train/<class>/*.png`` and
  ``<dir>/test/<class>/*.png`` (also .jpg, .jpeg, .bmp, .gif, .webp), or
  only ``<dir>/<class>/*``, in which case the test split is held out from
  the images: of each class, ``floor(n / 5)`` images drawn with a fixed
  seed (`splits.holdout_test`), the same on every run. Classes are the
  sorted folder names (the class map, label ``i`` = ``i``-th name); within
  a class, files are in sorted name order. Grayscale images give one
  channel; if any image has colour, all are RGB (alpha dropped). All images
  must have one size, unless ``image_size`` is given: then each image of
  another size is resized to it (PIL bilinear) as it is read.

Every class needs at least one training image. Anything malformed raises
`DataFileError` (a ValueError) with one line naming the file, the problem
and the fix. Reads are cached in-process while the files are unchanged.
"""

import concurrent.futures
import functools
import hashlib
import os
import zipfile

import numpy as np
from PIL import Image

from distill_jax.data import base
from distill_jax.data import readers
from distill_jax.data import registry
from distill_jax.data import splits

ARRAYS = ('x_train', 'y_train', 'x_test', 'y_test')
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp')
_SAVEZ = ('numpy.savez(path, x_train=..., y_train=..., x_test=..., '
          'y_test=..., class_names=...)')


def _fail(where, problem: str, fix: str):
  raise base.DataFileError(base.one_line(f'{where}: {problem}; {fix}.'))


def load(name: str, size=None) -> base.Raw:
  """Reads the .npz file or image folder at path ``name``.

  Args:
    name: the path (``~`` is expanded).
    size: (height, width) for folders whose images differ in size.

  Returns:
    The train and test splits (module docstring).

  Raises:
    DatasetNotFoundError: nothing at that path.
    DataFileError: a malformed file or folder.
  """
  path = os.path.abspath(os.path.expanduser(name))
  if not os.path.exists(path):
    raise base.DatasetNotFoundError(
        f'dataset path {name!r} does not exist ({path}); pass an existing '
        f'.npz file or image folder: {registry.USER_FORMATS}.')
  if os.path.isdir(path):
    return _read_folder(path, _folder_stamp(path), size)
  st = os.stat(path)
  return _read_npz(path, (st.st_size, st.st_mtime_ns))


# .npz files.


def _images(path, key: str, x: np.ndarray) -> np.ndarray:
  """Checks one image array; returns it NHWC (uint8 or float32)."""
  if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
    _fail(path, f'{key} has dtype {x.dtype}', 'save images as uint8 '
          '(0..255) or as floats in [0, 1]')
  if x.ndim == 3:
    x = x[..., None]
  elif x.ndim != 4:
    _fail(path, f'{key} has shape {x.shape} (rank {x.ndim})', 'save images '
          'as (N, H, W) for grayscale or (N, H, W, C)')
  elif x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
    _fail(path, f'{key} has shape {x.shape}, channels first', 'save NHWC '
          'images: x.transpose(0, 2, 3, 1)')
  if not len(x):
    _fail(path, f'{key} holds no images', 'save at least one image per '
          'split')
  if x.dtype != np.uint8:
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0 and hi <= 1):
      _fail(path, f'float images of {key} are in [{lo:g}, {hi:g}], not '
            '[0, 1]', 'divide them by 255 or save them as uint8')
    x = x.astype(np.float32, copy=False)
  return x


def _labels(path, key: str, y: np.ndarray, n: int) -> np.ndarray:
  """Checks one label array against its ``n`` images; returns int64 (N,)."""
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.ndim != 1:
    _fail(path, f'{key} has shape {y.shape}', 'save one integer label per '
          'image, shape (N,) (for one-hot labels: y.argmax(1))')
  if not np.issubdtype(y.dtype, np.integer):
    _fail(path, f'{key} has dtype {y.dtype}', 'save labels as integers '
          '0..K-1')
  if len(y) != n:
    _fail(path, f'{n} images in x_{key[2:]} but {len(y)} labels in {key}',
          'save one label per image')
  if len(y) and y.min() < 0:
    _fail(path, f'{key} has a negative label ({y.min()})', 'labels must be '
          '0..K-1')
  return y.astype(np.int64)


def _class_names(path, names, y_train, y_test) -> tuple[str, ...]:
  """The class map: the npz's ``class_names`` or '0'..'K-1'; checks that
  labels are in range and every class has training images."""
  top = int(max(y_train.max(), y_test.max() if len(y_test) else 0))
  if names is None:
    names = tuple(str(i) for i in range(top + 1))
  else:
    if names.ndim != 1 or names.dtype.kind not in 'US':
      _fail(path, f'class_names has shape {names.shape} and dtype '
            f'{names.dtype}', 'save it as a 1-D array of strings, '
            'np.array(["cat", "dog", ...])')
    names = tuple(str(n) for n in names)
    if len(set(names)) != len(names):
      _fail(path, 'class_names has duplicates', 'give every class its own '
            'name')
    if top >= len(names):
      _fail(path, f'label {top} is out of range for the {len(names)} '
            'class_names', f'labels must be 0..{len(names) - 1}, or add '
            'the missing names')
  empty = sorted(set(range(len(names))) - set(np.unique(y_train).tolist()))
  if empty:
    _fail(path, f'class {empty[0]} ({names[empty[0]]!r}) has no training '
          'images', 'add training images of every class, or number the '
          'classes 0..K-1 without gaps')
  return names


@functools.lru_cache(maxsize=8)
def _read_npz(path: str, stamp) -> base.Raw:
  """Reads and checks a user's npz (``stamp``: size and mtime, for the
  cache)."""
  del stamp
  if not zipfile.is_zipfile(path):
    _fail(path, 'not an .npz file (not a zip archive)', f'save one with '
          f'{_SAVEZ}, or pass an image folder')
  try:
    with np.load(path, allow_pickle=False) as npz:
      missing = [k for k in ARRAYS if k not in npz.files]
      if missing:
        _fail(path, f'missing arrays {missing} (it has {sorted(npz.files)})',
              f'save all four with {_SAVEZ}')
      arrays = {k: npz[k] for k in (*ARRAYS, 'class_names') if k in npz.files}
  except base.DataFileError:
    raise
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    _fail(path, f'cannot read its arrays ({base.one_line(e)[:200]})',
          f'save plain numeric arrays with {_SAVEZ}')
  x_train = _images(path, 'x_train', arrays['x_train'])
  x_test = _images(path, 'x_test', arrays['x_test'])
  if x_train.shape[1:] != x_test.shape[1:]:
    _fail(path, f'x_train images are {x_train.shape[1:]} but x_test images '
          f'are {x_test.shape[1:]}', 'save both splits with one image size '
          'and channel count')
  if x_train.dtype != x_test.dtype:  # one uint8, one float: both floats.
    x_train, x_test = (x if x.dtype == np.float32 else
                       x.astype(np.float32) / 255 for x in (x_train, x_test))
  y_train = _labels(path, 'y_train', arrays['y_train'], len(x_train))
  y_test = _labels(path, 'y_test', arrays['y_test'], len(x_test))
  names = _class_names(path, arrays.get('class_names'), y_train, y_test)
  return base.Raw(x_train, y_train, x_test, y_test, class_names=names,
                  source=f'npz:{path}')


# Image folders.


def _visible(directory: str, dirs: bool) -> list[str]:
  """Sorted names of the sub-folders (or files) of ``directory``, without
  hidden ones."""
  return sorted(n for n in os.listdir(directory) if not n.startswith('.')
                and os.path.isdir(os.path.join(directory, n)) == dirs)


def _class_files(directory: str) -> dict[str, list[str]]:
  """{class: sorted image paths} of the class folders of ``directory``."""
  out = {}
  for cls in _visible(directory, dirs=True):
    d = os.path.join(directory, cls)
    files = [os.path.join(d, f) for f in _visible(d, dirs=False)
             if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
      _fail(d, 'empty class folder (no .png, .jpg, ... images)', 'add '
            'images of this class or delete the folder')
    out[cls] = files
  return out


def _layout(path: str) -> tuple[dict, dict | None]:
  """{class: files} of the train and test folders (test None: held out)."""
  train_dir = os.path.join(path, 'train')
  split_layout = os.path.isdir(train_dir) and _visible(train_dir, dirs=True)
  train = _class_files(train_dir if split_layout else path)
  if not train:
    _fail(path, 'no class subfolders', 'put the images in <folder>/<class>/'
          ' or in <folder>/train/<class>/ and <folder>/test/<class>/')
  test_dir = os.path.join(path, 'test')
  test = _class_files(test_dir) if (
      split_layout and os.path.isdir(test_dir)) else None
  for cls in sorted(set(test or ()) - set(train)):
    _fail(os.path.join(test_dir, cls), 'a test class with no folder in '
          'train/', 'use the same class folder names in train/ and test/')
  return train, test


def _folder_stamp(path: str) -> str:
  """Hash of every file's path, size and mtime (for the cache)."""
  h = hashlib.sha256()
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for f in sorted(files):
      st = os.stat(os.path.join(root, f))
      h.update(f'{root}/{f}:{st.st_size}:{st.st_mtime_ns}\n'.encode())
  return h.hexdigest()


_GRAY_MODES = ('1', 'L', 'LA')
_COLOUR_MODES = ('P', 'PA', 'RGB', 'RGBA', 'CMYK', 'YCbCr', 'LAB', 'HSV')


def _decode(path: str) -> np.ndarray:
  """One image file as uint8 (H, W, 1) for grayscale or (H, W, 3)."""
  try:
    with Image.open(path) as img:
      if img.mode in _GRAY_MODES:
        return np.asarray(img.convert('L'))[..., None]
      if img.mode in _COLOUR_MODES:
        return np.asarray(img.convert('RGB'))
      mode = img.mode
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    _fail(path, f'unreadable image ({base.one_line(e)[:200]})', 'delete or '
          'replace the file')
  _fail(path, f'image mode {mode!r} is not 8-bit grayscale or colour',
        'save it as an 8-bit PNG or JPEG')


def _decode_all(where: str, files: list[str], size) -> np.ndarray:
  """Decodes ``files`` into one uint8 NHWC array (one size, one channel
  count; see the module docstring)."""
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    images = list(pool.map(_decode, files, chunksize=64))
  if any(im.shape[-1] == 3 for im in images):
    images = [np.repeat(im, 3, -1) if im.shape[-1] == 1 else im
              for im in images]
  shapes = {im.shape[:2]: f for im, f in zip(images, files)}
  if len(shapes) > 1:
    if size is None:
      (s0, f0), (s1, f1) = list(shapes.items())[:2]
      _fail(where, f'images of different '
            f'sizes ({f0} is {s0[0]}x{s0[1]}, {f1} is {s1[0]}x{s1[1]})',
            'resize them to one size, or pass image_size=N (--image_size=N)'
            ' to resize each image as it is read')
    images = [readers.fit_image(im, size) for im in images]
  return np.stack(images)


@functools.lru_cache(maxsize=8)
def _read_folder(path: str, stamp: str, size) -> base.Raw:
  """Reads and checks an image folder (``stamp``: `_folder_stamp`)."""
  del stamp
  train, test = _layout(path)
  names = tuple(train)
  files, labels = [], []
  for part in (train, test or {}):
    for cls, paths in part.items():
      files += paths
      labels += [names.index(cls)] * len(paths)
  x = _decode_all(path, files, size)
  y = np.asarray(labels, np.int64)
  n_train = sum(len(p) for p in train.values())
  source = f'folder:{path}'
  if test is None:
    x_train, y_train, x_test, y_test = splits.holdout_test(x, y)
    if not len(y_test):
      _fail(path, 'too few images to hold out a test split (every class '
            'has fewer than 5)', 'add images, or put the test images in '
            '<folder>/test/<class>/ and the others in <folder>/train/<class>/')
    source += ' (test split: seeded hold-out, 1/5 of each class)'
  else:
    x_train, y_train = x[:n_train], y[:n_train]
    x_test, y_test = x[n_train:], y[n_train:]
  return base.Raw(x_train, y_train, x_test, y_test, class_names=names,
                  source=source)


CACHED = (_read_npz, _read_folder)
