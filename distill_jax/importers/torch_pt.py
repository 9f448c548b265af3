"""Tensors from `torch.save` files, read with NumPy: no torch, no code run.

A ``.pt`` file of torch >= 1.6 is a zip archive: ``<name>/data.pkl``, a
pickle whose persistent ids ``('storage', storage_type, key, location,
numel)`` name raw little-endian buffers ``<name>/data/<key>``, and whose
tensors are rebuilt by ``torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, requires_grad, backward_hooks[, metadata])``.

Unpickling can call any importable function, so `load` uses a restricted
unpickler: the only globals it resolves are the tensor-rebuild functions
(as NumPy versions), the storage types (``torch.FloatStorage``, ...) and
``collections.OrderedDict``. Any other global (e.g. ``os.system``) is
refused with a one-line `ImportFileError` when the pickle names it, before
anything it would call can run.
"""

import collections
import io
import pickle
import sys
import zipfile

import jax.numpy as jnp
import numpy as np

from distill_jax.importers.contract import ImportFileError
from distill_jax.importers.contract import fail

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64,
    "HalfStorage": np.float16, "BFloat16Storage": jnp.bfloat16,
    "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_REBUILDERS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter")


class _StorageType:
  """A torch storage class: only its element type matters here."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(STORAGE_DTYPES[name])


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """`torch._utils._rebuild_tensor_v2` in NumPy: a strided view, copied."""
  del unused  # requires_grad, backward hooks, metadata.
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  offset = int(storage_offset)
  if len(size) != len(stride) or min(size + (0,)) < 0 or min(
      stride + (0,)) < 0:
    raise ValueError(f"tensor size {size} / stride {stride} are invalid")
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if 0 in size:
    return np.zeros(size, storage.dtype)
  if offset < 0 or last >= storage.size:
    raise ValueError(f"tensor of size {size} at offset {offset} overruns "
                     f"its storage of {storage.size} elements")
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=size,
      strides=tuple(s * storage.itemsize for s in stride), writeable=False)
  return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


class _Unpickler(pickle.Unpickler):
  """Resolves only tensor rebuilds, storage types and OrderedDict."""

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str,
               path: str, byteorder: str):
    super().__init__(io.BytesIO(data))
    self._zip, self._prefix, self._path = archive, prefix, path
    self._byteorder = byteorder
    self._storages = {}

  def find_class(self, module, name):
    if module == "torch._utils" and name in _REBUILDERS:
      return (_rebuild_parameter if name == "_rebuild_parameter" else
              _rebuild_tensor)
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    raise fail(self._path, f"refused to unpickle {module}.{name}: a .pt file "
               "is read only for its tensors (tensor rebuild functions, "
               "storage types and OrderedDict); nothing in it was run.")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise fail(self._path, f"unexpected persistent id {pid!r:.80}: not a "
                 "torch storage.")
    dtype, key = pid[1].dtype, str(pid[2])
    if key not in self._storages:
      raw = self._zip.read(f"{self._prefix}data/{key}")
      arr = np.frombuffer(raw, dtype)
      if self._byteorder != sys.byteorder and dtype.itemsize > 1:
        arr = arr.byteswap()
      self._storages[key] = arr
    return self._storages[key]


def _data_pkl(archive: zipfile.ZipFile, path: str) -> str:
  names = [n for n in archive.namelist() if n.endswith("data.pkl") and
           n.count("/") <= 1]
  if len(names) != 1:
    raise fail(path, "is a zip archive but not a torch.save file (no "
               "<name>/data.pkl).")
  return names[0]


def load(path: str):
  """The object of a ``.pt`` file, its tensors as NumPy arrays.

  Raises:
    ImportFileError: missing, legacy (pre-1.6) or corrupt file, or one that
      names anything but tensors (refused before it runs).
  """
  try:
    with open(path, "rb") as f:
      head = f.read(4)
  except OSError as e:
    raise fail(path, f"cannot be read: {e.strerror or e}.") from e
  if not zipfile.is_zipfile(path):
    legacy = head[:1] == b"\x80"
    raise fail(path, "is a legacy (torch < 1.6) file, which is not read; "
               "re-save it with torch.save of torch >= 1.6." if legacy else
               "is not a torch.save file (not a zip archive; truncated or "
               "corrupt?).")
  try:
    with zipfile.ZipFile(path) as archive:
      name = _data_pkl(archive, path)
      prefix = name[:-len("data.pkl")]
      order = "little"
      if f"{prefix}byteorder" in archive.namelist():
        order = archive.read(f"{prefix}byteorder").decode().strip()
      data = archive.read(name)
      return _Unpickler(data, archive, prefix, path, order).load()
  except ImportFileError:
    raise
  except (zipfile.BadZipFile, KeyError, EOFError, pickle.UnpicklingError,
          ValueError, TypeError, IndexError, AttributeError,
          UnicodeDecodeError) as e:
    raise fail(path, f"is not a readable torch.save file (truncated or "
               f"corrupt?): {e}") from e


def tensor(path: str, what: str) -> np.ndarray:
  """The one tensor of a ``.pt`` file (as MTT saves them)."""
  obj = load(path)
  if isinstance(obj, (list, tuple)) and len(obj) == 1:
    obj = obj[0]
  if not isinstance(obj, np.ndarray):
    raise fail(path, f"holds a {type(obj).__name__}, expected one tensor of "
               f"{what}.")
  return obj
