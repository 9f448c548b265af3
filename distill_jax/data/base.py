"""The containers of the data layer (`Dataset`, `Raw`) and its errors.

Every error a user can cause (a dataset not found, a corrupt file, an
unknown name) is raised with a one-line message naming the problem and the
fix, which the entry points print as one ``error:`` line.
"""

import dataclasses

import numpy as np


class DatasetNotFoundError(FileNotFoundError):
  """No local copy of a dataset was found and the online route failed."""


class DataFileError(ValueError):
  """The user's own data (an .npz file or an image folder) is malformed."""


def one_line(text: str) -> str:
  """``text`` with every run of whitespace (newlines too) made one space."""
  return ' '.join(str(text).split())


def damaged_prepared(where: str, what: str, error: Exception) -> DataFileError:
  """The one-line error for prepared ArrayRecord files that cannot be read:
  ``what`` failed at ``where``, with the cause and the fix."""
  return DataFileError(
      f'{where}: {what} failed ({type(error).__name__}: '
      f'{one_line(error)[:200]}); the prepared ArrayRecord files are '
      'missing or damaged: delete the prepared folder to prepare it again.')


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A classification dataset as NHWC numpy arrays.

  Attributes:
    name: dataset name as given to `load`, e.g. ``'mnist'``,
      ``'emnist/balanced'`` or ``'/data/my_set.npz'``.
    x_train: float32 (N, H, W, C), normalised as ``(x01 - mean) / std``
      where ``x01`` are the pixels in [0, 1]; or, loaded with
      ``pixels='uint8'``, the stored uint8 pixels (same for ``x_val`` and
      ``x_test``; normalise with `decode`).
    y_train: int32 (N,).
    x_val: validation images held out from the train split (may be empty).
    y_val: validation labels.
    x_test: test images.
    y_test: test labels.
    num_classes: number of classes.
    mean: per-channel mean, in [0, 1] pixel units (the standard value of
      the dataset, or computed on its whole train split).
    std: per-channel std, in [0, 1] pixel units.
    class_names: name of each class, in label order (the class map).
    source: where the data came from: ``'local:<dir>'``,
      ``'tfds:<name>'``, ``'prepared:<dir>'``, ``'npz:<file>'`` or
      ``'folder:<dir>'``.
    streams: None for a dataset in memory; for a streamed one
      (``load(..., data_source='stream')``), ``{'train': ..., 'test': ...}``
      `stream.StreamSplit` s reading those splits from the prepared files,
      whose ``x_train`` and ``x_test`` are then empty (0, H, W, C) arrays
      (``y_train`` and ``y_test`` hold all labels; ``x_val`` is in memory).
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
  streams: dict | None = None

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
class Raw:
  """Unnormalised train and test splits, as cached in-process.

  Images are uint8 (0..255), or float32 in [0, 1] for a user's npz of float
  images (kept as they are, not quantised); (N, H, W, C), read-only.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  class_names: tuple[str, ...]
  source: str

  def __post_init__(self):
    for arr in (self.x_train, self.y_train, self.x_test, self.y_test):
      arr.flags.writeable = False
