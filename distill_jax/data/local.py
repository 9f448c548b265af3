"""TFDS builders that read local copies of standard image datasets.

The builders here prepare ArrayRecord files (``file_format='array_record'``)
from files already on disk, given as ``manual_dir`` of the download config.
They need no TensorFlow: images are stored as ``tfds.features.Tensor`` of
``uint8`` (``tfds.features.Image`` would need TF to encode PNGs) and labels as
``tfds.features.ClassLabel``. Read them back with ``builder.as_data_source``.

Builders (``manual_dir`` may be the parent folder holding ``<folder>/`` or the
dataset folder itself):

* ``local_mnist``: ``mnist/`` with the four standard IDX ``.gz`` files.
* ``local_fashion_mnist``: ``fashion_mnist/`` (or Debian's
  ``/usr/share/datasets/fashion-mnist/``), same four IDX files.
* ``local_usps``: ``usps/usps.npz`` (16x16 floats in [0, 1]); stored as
  ``uint8`` 0..255 with shape (16, 16, 1).
* ``local_cifar10``: ``cifar10_jpeg/cifar10_jpg.tar.gz`` holding
  ``{train,test}/<class>/NNNN.jpg`` (lossy JPEG), decoded with PIL. Examples
  are stored in class order, then file number.
* ``local_cifar10_subset``: ``cifar10_subset/cifar10_lossless_subset.npz``
  (4000 train, 1000 test, pixel-exact).

Shuffling is disabled, so the stored order is the order of the source files.
The files are read by `distill_jax.data.readers` (re-exported here): corrupt
inputs (bad IDX magic, truncated gzip, missing npz keys, count mismatches,
bad shapes) raise ``ValueError`` naming the file and the problem.

Example::

  builder = local_datasets.LocalMnist(data_dir=data_dir,
                                      file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir))
  ds = builder.as_data_source('train')
  examples = ds.__getitems__(range(len(ds)))
"""

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

# The readers moved to `readers`; they stay importable from here.
# pylint: disable=unused-import
from distill_jax.data.readers import _check_pair
from distill_jax.data.readers import _require_dir
from distill_jax.data.readers import CIFAR10_CLASSES
from distill_jax.data.readers import DIGIT_CLASSES
from distill_jax.data.readers import FASHION_MNIST_CLASSES
from distill_jax.data.readers import find_dataset_dir
from distill_jax.data.readers import LAYOUTS
from distill_jax.data.readers import load_cifar10_jpeg_tar
from distill_jax.data.readers import load_idx_dataset
from distill_jax.data.readers import load_npz_dataset
from distill_jax.data.readers import MNIST_FILES
from distill_jax.data.readers import read_idx
# pylint: enable=unused-import


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the local builders: (image, label) pairs from local files."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  # Overridden because TFDS' default lookup needs the `importlib_resources`
  # package; the checksums file would live beside this module.
  code_path = epath.Path(__file__)

  LAYOUT_NAME: str = ''
  SHAPE: tuple[int, int, int] = (28, 28, 1)
  CLASS_NAMES: tuple[str, ...] = DIGIT_CLASSES
  DESCRIPTION: str = ''

  @classmethod
  def _manual_instructions(cls) -> str:
    folder, files = LAYOUTS[cls.LAYOUT_NAME]
    return (f'Pass manual_dir=<dir> where <dir>/{folder}/ (or <dir> itself) '
            f'holds {", ".join(files)}.')

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    if cls.LAYOUT_NAME:
      cls.MANUAL_DOWNLOAD_INSTRUCTIONS = cls._manual_instructions()

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=self.SHAPE, dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=self.CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
    )

  def _read_arrays(self, directory: epath.Path):
    """Returns {split: (x, y)}; each concrete builder below defines it."""
    raise TypeError(f"{type(self).__name__} does not define _read_arrays.")

  def _split_generators(self, dl_manager):
    directory = _require_dir(dl_manager.manual_dir, self.LAYOUT_NAME)
    arrays = self._read_arrays(directory)
    return {split: self._generate_examples(x, y)
            for split, (x, y) in arrays.items()}

  def _generate_examples(self, x, y):
    for i in range(len(x)):
      yield i, {'image': x[i], 'label': int(y[i])}


class LocalMnist(_LocalBuilder):
  """MNIST from the four local IDX ``.gz`` files."""
  LAYOUT_NAME = 'mnist'
  DESCRIPTION = 'MNIST read from local IDX files.'

  def _read_arrays(self, directory):
    return load_idx_dataset(directory)


class LocalFashionMnist(_LocalBuilder):
  """Fashion-MNIST from the four local IDX ``.gz`` files."""
  LAYOUT_NAME = 'fashion_mnist'
  CLASS_NAMES = FASHION_MNIST_CLASSES
  DESCRIPTION = 'Fashion-MNIST read from local IDX files.'

  def _read_arrays(self, directory):
    return load_idx_dataset(directory)


class LocalUsps(_LocalBuilder):
  """USPS digits (16x16) from a local npz, stored as uint8 0..255."""
  LAYOUT_NAME = 'usps'
  SHAPE = (16, 16, 1)
  DESCRIPTION = 'USPS digits read from a local npz, scaled to uint8.'

  def _read_arrays(self, directory):
    return load_npz_dataset(directory / 'usps.npz', self.SHAPE)


class LocalCifar10(_LocalBuilder):
  """CIFAR-10 from the local lossy JPEG (q75) tar.gz, decoded with PIL."""
  LAYOUT_NAME = 'cifar10'
  SHAPE = (32, 32, 3)
  CLASS_NAMES = CIFAR10_CLASSES
  DESCRIPTION = 'CIFAR-10 decoded from a local JPEG (quality 75) copy: lossy.'

  def _read_arrays(self, directory):
    return load_cifar10_jpeg_tar(directory / 'cifar10_jpg.tar.gz')


class LocalCifar10Subset(_LocalBuilder):
  """Pixel-exact CIFAR-10 subset (4000 train, 1000 test) from a local npz."""
  LAYOUT_NAME = 'cifar10_subset'
  SHAPE = (32, 32, 3)
  CLASS_NAMES = CIFAR10_CLASSES
  DESCRIPTION = 'First 4000 train / 1000 test CIFAR-10 images, lossless.'

  def _read_arrays(self, directory):
    return load_npz_dataset(directory / 'cifar10_lossless_subset.npz',
                            self.SHAPE)


BUILDERS = {
    'mnist': LocalMnist,
    'fashion_mnist': LocalFashionMnist,
    'usps': LocalUsps,
    'cifar10': LocalCifar10,
    'cifar10_subset': LocalCifar10Subset,
}
