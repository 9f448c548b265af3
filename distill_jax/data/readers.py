"""Readers of local dataset files into uint8 numpy arrays (no TFDS needed).

The file formats of the local copies (``../shared/datasets``) and their
folder layouts (`LAYOUTS`): MNIST-style IDX ``.gz`` files (`read_idx`,
`load_idx_dataset`), npz files of ``x_train``, ``y_train``, ``x_test``,
``y_test`` (`load_npz_dataset`) and a tar.gz of JPEGs in
``{train,test}/<class>/NNNN.jpg`` (`load_cifar10_jpeg_tar`). The TFDS
builders of `distill_jax.data.local` prepare their ArrayRecord files with
these. Corrupt inputs (bad IDX magic, truncated gzip, missing npz keys,
count mismatches, bad shapes) raise ``ValueError`` naming the file and the
problem.
"""

import concurrent.futures
import gzip
import io
import os
import re
import tarfile
import zlib

from etils import epath
import numpy as np
from PIL import Image

MNIST_FILES = {
    'train_images': 'train-images-idx3-ubyte.gz',
    'train_labels': 'train-labels-idx1-ubyte.gz',
    'test_images': 't10k-images-idx3-ubyte.gz',
    'test_labels': 't10k-labels-idx1-ubyte.gz',
}
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                         'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                   'frog', 'horse', 'ship', 'truck')
DIGIT_CLASSES = tuple(str(i) for i in range(10))

# Folder name (under a parent manual dir) and required files per dataset.
LAYOUTS = {
    'mnist': ('mnist', tuple(MNIST_FILES.values())),
    'fashion_mnist': ('fashion_mnist', tuple(MNIST_FILES.values())),
    'usps': ('usps', ('usps.npz',)),
    'cifar10': ('cifar10_jpeg', ('cifar10_jpg.tar.gz',)),
    'cifar10_subset': ('cifar10_subset', ('cifar10_lossless_subset.npz',)),
}

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}


def read_idx(path) -> np.ndarray:
  """Reads an IDX file (optionally gzip-compressed) into a numpy array.

  The format is a 4-byte magic (two zero bytes, a type byte, the number of
  dimensions), one big-endian uint32 per dimension, then the data row-major.

  Args:
    path: path of the file; gzip is detected from the content, not the name.

  Returns:
    The array, with the dimensions given in the header.

  Raises:
    ValueError: if the file is not a valid IDX file (bad magic, truncated,
      corrupt gzip, or a size that does not match the header).
  """
  path = os.fspath(path)
  with open(path, 'rb') as f:
    raw = f.read()
  if raw[:2] == b'\x1f\x8b':
    try:
      raw = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
      raise ValueError(f'{path}: corrupt or truncated gzip data ({e}).') from e
  if len(raw) < 4:
    raise ValueError(f'{path}: too short to be an IDX file ({len(raw)} bytes).')
  if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise ValueError(f'{path}: bad IDX magic {raw[:4].hex()} (expected '
                     '0000 + type byte 08/09/0b/0c/0d/0e + ndim).')
  dtype = _IDX_DTYPES[raw[2]]
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f'{path}: truncated IDX header ({ndim} dims).')
  shape = tuple(int(d) for d in np.frombuffer(raw, '>u4', ndim, offset=4))
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(f'{path}: IDX header says shape {shape} ({expected} data '
                     f'bytes) but the file has {len(raw) - header}.')
  data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
  return data.astype(dtype.newbyteorder('='), copy=False)


def find_dataset_dir(manual_dir, name: str) -> epath.Path | None:
  """Finds the folder holding a dataset's files below ``manual_dir``.

  Args:
    manual_dir: either a parent folder containing ``<folder>/`` (e.g.
      ``mnist/``) or the dataset's folder itself.
    name: a key of ``LAYOUTS`` (e.g. ``'mnist'``).

  Returns:
    The folder containing all required files, or None if there is none.
  """
  if not manual_dir:
    return None
  folder, files = LAYOUTS[name]
  root = epath.Path(manual_dir)
  for candidate in (root / folder, root):
    if all((candidate / f).exists() for f in files):
      return candidate
  return None


def _require_dir(manual_dir, name: str) -> epath.Path:
  path = find_dataset_dir(manual_dir, name)
  if path is None:
    folder, files = LAYOUTS[name]
    raise FileNotFoundError(
        f'{name}: files {list(files)} not found in {manual_dir} or '
        f'{manual_dir}/{folder}.')
  return path


def _check_pair(path, x: np.ndarray, y: np.ndarray, shape, num_classes: int):
  """Validates images and labels read from ``path``."""
  if x.shape[1:] != tuple(shape):
    raise ValueError(f'{path}: images have shape {x.shape[1:]}, expected '
                     f'{tuple(shape)}.')
  if y.ndim != 1 or len(x) != len(y):
    raise ValueError(f'{path}: {len(x)} images but labels of shape '
                     f'{y.shape}.')
  if len(y) and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f'{path}: labels outside [0, {num_classes}).')


def load_idx_dataset(directory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads the four MNIST-style IDX files of ``directory``.

  Args:
    directory: folder with the files named in ``MNIST_FILES``.

  Returns:
    ``{'train': (x, y), 'test': (x, y)}`` with x uint8 (N, 28, 28, 1) and y
    uint8 (N,).

  Raises:
    ValueError: on corrupt files or mismatched image/label counts.
  """
  directory = epath.Path(directory)
  out = {}
  for split in ('train', 'test'):
    images_path = directory / MNIST_FILES[f'{split}_images']
    labels_path = directory / MNIST_FILES[f'{split}_labels']
    x = read_idx(images_path)
    y = read_idx(labels_path)
    if x.ndim != 3 or x.dtype != np.uint8:
      raise ValueError(f'{images_path}: expected uint8 images (N, H, W), got '
                       f'{x.dtype} {x.shape}.')
    if y.ndim != 1 or len(y) != len(x):
      raise ValueError(f'{labels_path}: {y.shape[0] if y.ndim else 0} labels '
                       f'but {images_path} has {len(x)} images.')
    x = x[..., None]
    _check_pair(labels_path, x, y, (28, 28, 1), 10)
    out[split] = (x, y)
  return out


def load_npz_dataset(path, shape) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads an npz with ``x_train``, ``y_train``, ``x_test``, ``y_test``.

  Float images are taken to be in [0, 1] and scaled to 0..255 uint8.

  Args:
    path: the ``.npz`` file.
    shape: expected (H, W, C) of one image; a missing channel axis is added.

  Returns:
    ``{'train': (x, y), 'test': (x, y)}`` with x uint8 of shape (N, *shape).

  Raises:
    ValueError: on missing keys, bad shapes, values or counts.
  """
  path = os.fspath(path)
  try:
    npz = np.load(path)
    keys = set(npz.files)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{path}: not a readable npz file ({e}).') from e
  with npz:
    missing = {'x_train', 'y_train', 'x_test', 'y_test'} - keys
    if missing:
      raise ValueError(f'{path}: missing keys {sorted(missing)} (has '
                       f'{sorted(keys)}).')
    out = {}
    for split in ('train', 'test'):
      try:
        x, y = npz[f'x_{split}'], npz[f'y_{split}']
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f'{path}: cannot read {split} arrays ({e}).') from e
      if x.ndim == len(shape):
        x = x[..., None]
      if np.issubdtype(x.dtype, np.floating):
        if x.size and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
          raise ValueError(f'{path}: float images of x_{split} must be in '
                           f'[0, 1], got [{x.min()}, {x.max()}].')
        x = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
      elif x.dtype != np.uint8:
        raise ValueError(f'{path}: x_{split} has dtype {x.dtype}, expected '
                         'uint8 or float in [0, 1].')
      y = np.asarray(y).reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
      _check_pair(path, x, y, shape, 10)
      out[split] = (x, y.astype(np.int64))
  return out


def _decode_jpeg(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as img:
    return np.asarray(img.convert('RGB'))


def load_cifar10_jpeg_tar(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads and decodes ``{train,test}/<class>/NNNN.jpg`` from a tar.gz.

  Args:
    path: the ``.tar.gz`` file.

  Returns:
    ``{'train': (x, y), 'test': (x, y)}``, x uint8 (N, 32, 32, 3), sorted by
    class then file number.

  Raises:
    ValueError: on a corrupt archive or image, or unknown class folders.
  """
  path = os.fspath(path)
  pattern = re.compile(r'(?:^|/)(train|test)/([^/]+)/(\d+)\.jpe?g$')
  entries = {'train': [], 'test': []}
  try:
    with tarfile.open(path, 'r:gz') as tar:
      for member in tar:
        m = pattern.search(member.name)
        if not member.isfile() or not m:
          continue
        split, cls, num = m.groups()
        if cls not in CIFAR10_CLASSES:
          raise ValueError(f'{path}: unknown class folder {cls!r} in '
                           f'{member.name}.')
        data = tar.extractfile(member).read()
        entries[split].append((CIFAR10_CLASSES.index(cls), int(num), data))
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise ValueError(f'{path}: corrupt or truncated archive ({e}).') from e
  out = {}
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    for split, items in entries.items():
      if not items:
        raise ValueError(f'{path}: no {split}/<class>/*.jpg images found.')
      items.sort(key=lambda t: (t[0], t[1]))
      try:
        images = list(pool.map(_decode_jpeg, [t[2] for t in items],
                               chunksize=256))
      except OSError as e:
        raise ValueError(f'{path}: cannot decode a JPEG ({e}).') from e
      bad = [i for i, im in enumerate(images) if im.shape != (32, 32, 3)]
      if bad:
        raise ValueError(f'{path}: {len(bad)} images are not 32x32 RGB '
                         f'(first: {split} #{bad[0]}).')
      out[split] = (np.stack(images),
                    np.array([t[0] for t in items], np.int64))
  return out


def fit_image(image: np.ndarray, size) -> np.ndarray:
  """Resizes one uint8 (H, W, C) image to ``size`` = (height, width).

  PIL's bilinear filter (antialiased when shrinking); an image that already
  has that size is returned as is. Used for sources whose images differ in
  size (an image folder, TFDS datasets such as ``imagenette``).
  """
  if tuple(image.shape[:2]) == tuple(size):
    return image
  gray = image.shape[-1] == 1
  img = Image.fromarray(image[..., 0] if gray else image)
  out = np.asarray(img.resize((size[1], size[0]), Image.BILINEAR))
  return out[..., None] if gray else out
