"""The names `load` accepts, how each is found, and the errors about names.

A dataset is named in one of three ways (`is_path`, `spec`):

* a local builder (`LOCAL`: ``mnist``, ``fashion_mnist``, ``usps``,
  ``cifar10``, ``cifar10_subset``): read from local copies (``manual_dir``,
  env ``DISTILL_JAX_DATA_DIR``, Debian's Fashion-MNIST package), else from
  TFDS online where TFDS has it;
* a path to the user's own data, an ``.npz`` file or an image folder
  (`distill_jax.data.user`). A path starts with ``/``, ``.`` or ``~``, or
  ends in ``.npz``, or contains ``/`` and exists; a bare name such as
  ``my_images`` is never a path (write ``./my_images``);
* any other name is a TFDS builder, with an optional config and version
  (``cifar100``, ``emnist/balanced``, ``imagenette/160px-v2``,
  ``mnist:3.0.1``), prepared online (`distill_jax.data.tfds_source`).
  `KNOWN_TFDS` lists image-classification builders known to fit, with their
  standard normalisation where there is one (otherwise it is computed on
  the training split).

`check_name` is the cheap syntactic check of a config's ``dataset`` field
(no TFDS import, no file access); `load` checks the rest (the TFDS
catalogue, the files).
"""

import dataclasses
import difflib
import os
import re

ENV_DATA_DIR = 'DISTILL_JAX_DATA_DIR'
# Where a run reads its data from (`datasets.load`'s ``data_source``).
DATA_SOURCES = ('memory', 'stream', 'auto')
FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'

Stats = tuple[tuple[float, ...], tuple[float, ...]]
MNIST_STATS = ((0.1307,), (0.3081,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclasses.dataclass(frozen=True)
class _Spec:
  local: bool  # Has a builder in `distill_jax.data.local`.
  tfds_name: str | None  # Standard TFDS builder, for the online path.
  stats: Stats | None  # None: computed on the training split.
  system_dirs: tuple[str, ...] = ()


_SPECS = {
    'mnist': _Spec(True, 'mnist', MNIST_STATS),
    'fashion_mnist': _Spec(True, 'fashion_mnist', None,
                           (FASHION_MNIST_SYSTEM_DIR,)),
    'usps': _Spec(True, None, None),
    'cifar10': _Spec(True, 'cifar10', CIFAR10_STATS),
    'cifar10_subset': _Spec(True, None, CIFAR10_STATS),
    # TFDS only (online, or prepared once in data_dir).
    'svhn_cropped': _Spec(False, 'svhn_cropped', None),
    'cifar100': _Spec(False, 'cifar100', CIFAR100_STATS),
    'emnist/balanced': _Spec(False, 'emnist/balanced', None),
    'emnist/letters': _Spec(False, 'emnist/letters', None),
    'kmnist': _Spec(False, 'kmnist', None),
    'stl10': _Spec(False, 'stl10', None),
    'imagenette/160px-v2': _Spec(False, 'imagenette/160px-v2', None),
    'imagenet_resized/32x32': _Spec(False, 'imagenet_resized/32x32',
                                    IMAGENET_STATS),
    'imagenet_resized/64x64': _Spec(False, 'imagenet_resized/64x64',
                                    IMAGENET_STATS),
    # Manual download: pass its folder as manual_dir (--data_dir).
    'imagenet2012': _Spec(False, 'imagenet2012', IMAGENET_STATS),
}
LOCAL = tuple(n for n, s in _SPECS.items() if s.local)
KNOWN_TFDS = tuple(n for n, s in _SPECS.items() if not s.local)

# A TFDS builder name: lower-case snake name, optional /config, :version.
_TFDS_NAME = re.compile(
    r'^[a-z][a-z0-9_]*(/[A-Za-z0-9_.\-]+)?(:\d+\.\d+\.\d+)?$')
USER_FORMATS = ('an .npz with x_train, y_train, x_test, y_test (optional '
                'class_names) or a folder of train/<class>/*.png and '
                'test/<class>/*.png (or only <class>/ subfolders)')


def available() -> tuple[str, ...]:
  """The dataset names `load` knows (local builders, then known TFDS
  names); any other TFDS name and a path to an .npz or an image folder are
  accepted too."""
  return tuple(_SPECS)


def spec(name: str) -> _Spec | None:
  """The entry of a known name, None for other TFDS names and paths."""
  return _SPECS.get(name)


def is_path(name: str) -> bool:
  """Whether ``name`` is a path to the user's own data (module docstring)."""
  if name in _SPECS:
    return False
  if name.startswith(('/', '.', '~')) or name.lower().endswith('.npz'):
    return True
  return '/' in name and os.path.exists(name)


def tfds_base(name: str) -> str:
  """``'emnist/balanced:3.0.0'`` -> ``'emnist'``."""
  return name.split(':')[0].split('/')[0]


def unknown_name_message(name: str,
                         why: str = 'is not a local builder or a TFDS dataset'
                         ) -> str:
  """One line: the problem, the names available and how to add one."""
  close = difflib.get_close_matches(str(name).lower(), available(), n=1)
  hint = f" (did you mean {close[0]!r}?)" if close else ''
  return (f"dataset {name!r} {why}{hint}. Use a local builder "
          f"({', '.join(LOCAL)}), a TFDS image-classification name (e.g. "
          f"{', '.join(KNOWN_TFDS)}; any other TFDS name works online), or "
          f"a path to an .npz or an image folder. To add a dataset, save it "
          f"as {USER_FORMATS} and pass its path, or add a builder to "
          "distill_jax/data/local.py and registry.py.")


def check_name(name) -> str:
  """Checks a config's ``dataset`` field without touching files or TFDS.

  Args:
    name: a known name, a TFDS builder name or a path (module docstring).

  Returns:
    ``name``.

  Raises:
    ValueError: one line naming the problem and the accepted names.
  """
  if not isinstance(name, str) or not name.strip():
    raise ValueError(unknown_name_message(name, 'is empty'))
  if name != name.strip():
    raise ValueError(unknown_name_message(
        name, 'has leading or trailing spaces'))
  if name in _SPECS or is_path(name) or _TFDS_NAME.match(name):
    return name
  raise ValueError(unknown_name_message(
      name, 'is neither a dataset name nor a path'))


def how_to_get(name: str, tried: list[str], layout=None) -> str:
  """The one-line message of a `DatasetNotFoundError`.

  Args:
    name: the dataset.
    tried: what was tried, one entry each.
    layout: ``(folder, files)`` of a local builder (`readers.LAYOUTS`).

  Returns:
    The message: the problem, what was tried and every way to get it.
  """
  s = spec(name)
  parts = [f'Dataset {name!r} was not found.']
  if tried:
    parts.append('Tried: ' + '; '.join(tried) + '.')
  ways = []
  if layout is not None:
    folder, files = layout
    ways.append(
        f'pass manual_dir=<dir> (the --data_dir flag) or set the env var '
        f'{ENV_DATA_DIR}=<dir>, where <dir>/{folder}/ (or <dir> itself) '
        f'holds {", ".join(files)}')
  if name == 'fashion_mnist':
    ways.append('apt-get install dataset-fashion-mnist (files go to '
                f'{FASHION_MNIST_SYSTEM_DIR}/)')
  tfds_name = s.tfds_name if s else name
  if tfds_name:
    ways.append(
        f'go online: TFDS builder {tfds_name!r} downloads it, which needs '
        'network access and TensorFlow (pip install tensorflow-cpu); for a '
        'manual download (imagenet2012) pass its folder as manual_dir '
        '(--data_dir)')
  else:
    ways.append('(no online TFDS source for this dataset)')
  ways.append(f'or save it as {USER_FORMATS} and pass its path')
  return ' '.join(parts) + ' Ways to get it: ' + '; '.join(ways) + '.'
