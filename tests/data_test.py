"""Tests of distill_jax.data and distill_jax.data.local (offline, fast)."""

import gzip
import json
import os
import pathlib

import numpy as np
import pytest

from distill_jax import data as data_api
from distill_jax.data import datasets as data
from distill_jax.data import local as local_datasets
from distill_jax.data import registry
from distill_jax.data import tfds_source
from distill_jax.data import transforms
from tests import test_utils

NUM_TRAIN = 30
NUM_TEST = 20


def _write_idx(path, array, compress=True):
  """Writes a uint8 array as an IDX file."""
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim])
  header += b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
  raw = header + array.tobytes()
  if compress:
    raw = gzip.compress(raw)
  with open(path, 'wb') as f:
    f.write(raw)


def _fake_images(rng, n, shape):
  return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def _fake_labels(n):
  return (np.arange(n) % 10).astype(np.uint8)


def _write_fake_mnist(directory, seed=0):
  """Writes tiny MNIST-style IDX files; returns the arrays written."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in (('train', NUM_TRAIN), ('test', NUM_TEST)):
    x = _fake_images(rng, n, (28, 28))
    y = _fake_labels(n)
    _write_idx(os.path.join(
        directory, local_datasets.MNIST_FILES[f'{split}_images']), x)
    _write_idx(os.path.join(
        directory, local_datasets.MNIST_FILES[f'{split}_labels']), y)
    arrays[split] = (x, y)
  return arrays


def _write_fake_usps(directory, seed=0):
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  np.savez(os.path.join(directory, 'usps.npz'),
           x_train=rng.random((NUM_TRAIN, 16, 16), np.float32),
           y_train=_fake_labels(NUM_TRAIN),
           x_test=rng.random((NUM_TEST, 16, 16), np.float32),
           y_test=_fake_labels(NUM_TEST))


@pytest.fixture(autouse=True)
def _no_env(monkeypatch, tmp_path):
  """Isolates tests from the user's env vars and default data dir."""
  monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'default_tfds'))
  monkeypatch.setattr(data, 'FASHION_MNIST_SYSTEM_DIR',
                      str(tmp_path / 'no_system_dir'))
  monkeypatch.setitem(data._SPECS, 'fashion_mnist', data._Spec(
      True, 'fashion_mnist', None, (str(tmp_path / 'no_system_dir'),)))


# IDX parsing.


def test_read_idx_roundtrip(tmp_path):
  x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  _write_idx(tmp_path / 'a.gz', x)
  _write_idx(tmp_path / 'b', x, compress=False)
  np.testing.assert_array_equal(local_datasets.read_idx(tmp_path / 'a.gz'), x)
  np.testing.assert_array_equal(local_datasets.read_idx(tmp_path / 'b'), x)


def test_read_idx_bad_magic(tmp_path):
  path = tmp_path / 'bad.gz'
  path.write_bytes(gzip.compress(b'\x01\x02\x08\x01' + bytes(8)))
  with pytest.raises(ValueError, match='bad IDX magic') as e:
    local_datasets.read_idx(path)
  assert 'bad.gz' in str(e.value)


def test_read_idx_size_mismatch(tmp_path):
  path = tmp_path / 'short'
  _write_idx(path, np.zeros((5, 2), np.uint8), compress=False)
  path.write_bytes(path.read_bytes()[:-3])
  with pytest.raises(ValueError, match='short.*shape'):
    local_datasets.read_idx(path)


def test_read_idx_truncated_gzip(tmp_path):
  path = tmp_path / 'trunc.gz'
  _write_idx(path, np.zeros((50, 28, 28), np.uint8))
  path.write_bytes(path.read_bytes()[:40])
  with pytest.raises(ValueError, match='trunc.gz.*gzip'):
    local_datasets.read_idx(path)


# Builders.


def test_builder_prepares_array_record(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  arrays = _write_fake_mnist(tmp_path / 'manual' / 'mnist')
  builder = local_datasets.LocalMnist(data_dir=str(tmp_path / 'tfds'),
                                      file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(tmp_path / 'manual')))
  assert list(tmp_path.glob('tfds/local_mnist/1.0.0/*.array_record*'))
  ds = builder.as_data_source('train')
  assert len(ds) == NUM_TRAIN
  examples = ds.__getitems__(list(range(len(ds))))
  x = np.stack([e['image'] for e in examples])
  y = np.array([e['label'] for e in examples])
  assert x.dtype == np.uint8 and x.shape == (NUM_TRAIN, 28, 28, 1)
  # Shuffling is disabled: the stored order is the file order.
  np.testing.assert_array_equal(x[..., 0], arrays['train'][0])
  np.testing.assert_array_equal(y, arrays['train'][1])
  assert len(builder.as_data_source('test')) == NUM_TEST


def test_builder_label_count_mismatch(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  directory = tmp_path / 'mnist'
  _write_fake_mnist(directory)
  _write_idx(directory / local_datasets.MNIST_FILES['train_labels'],
             _fake_labels(NUM_TRAIN - 1))
  builder = local_datasets.LocalMnist(data_dir=str(tmp_path / 'tfds'),
                                      file_format='array_record')
  with pytest.raises(ValueError, match='train-labels'):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(directory)))


def test_npz_missing_keys(tmp_path):
  np.savez(tmp_path / 'usps.npz', x_train=np.zeros((2, 16, 16)))
  with pytest.raises(ValueError, match='usps.npz: missing keys'):
    local_datasets.load_npz_dataset(tmp_path / 'usps.npz', (16, 16, 1))


# load().


def test_load_local_mnist(tmp_path):
  arrays = _write_fake_mnist(tmp_path / 'manual' / 'mnist')
  ds = data.load('mnist', manual_dir=str(tmp_path / 'manual'),
                 data_dir=str(tmp_path / 'tfds'))
  assert ds.image_shape == (28, 28, 1)
  assert ds.x_train.shape == (NUM_TRAIN, 28, 28, 1)
  assert ds.x_test.shape == (NUM_TEST, 28, 28, 1)
  assert ds.x_val.shape == (0, 28, 28, 1) and ds.y_val.shape == (0,)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  assert ds.num_classes == 10 and len(ds.class_names) == 10
  assert ds.mean == (0.1307,) and ds.std == (0.3081,)
  assert ds.source.startswith('local:')
  expected = (arrays['train'][0][..., None] / 255.0 - 0.1307) / 0.3081
  np.testing.assert_allclose(ds.x_train, expected, atol=1e-5)
  np.testing.assert_allclose(
      data_api.denormalize(ds.x_train, ds.mean, ds.std),
      arrays['train'][0][..., None] / 255.0, atol=1e-5)


def test_load_env_var_and_dataset_dir(tmp_path, monkeypatch):
  # The env var may point directly at the dataset's folder.
  _write_fake_mnist(tmp_path / 'fm')
  monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / 'fm'))
  ds = data.load('fashion_mnist', data_dir=str(tmp_path / 'tfds'))
  assert ds.class_names[0] == 'T-shirt/top'
  # Computed stats: uniform random bytes have mean ~0.5.
  assert abs(ds.mean[0] - 0.5) < 0.05
  np.testing.assert_allclose(ds.x_train.mean(), 0.0, atol=1e-4)
  np.testing.assert_allclose(ds.x_train.std(), 1.0, atol=1e-3)


def test_load_validation_split_is_stratified_and_disjoint(tmp_path):
  arrays = _write_fake_mnist(tmp_path / 'mnist')
  ds = data.load('mnist', manual_dir=str(tmp_path), val_size=10, seed=3,
                 data_dir=str(tmp_path / 'tfds'))
  assert ds.x_train.shape[0] == NUM_TRAIN - 10 and ds.x_val.shape[0] == 10
  np.testing.assert_array_equal(np.bincount(ds.y_val, minlength=10),
                                np.ones(10))
  # Rows of train and val are disjoint images of the original train split.
  rows = {x.tobytes() for x in arrays['train'][0]}
  raw = lambda x: np.round(  # pylint: disable=g-long-lambda
      data_api.denormalize(x, ds.mean, ds.std)[..., 0] * 255).astype(np.uint8)
  train_rows = {r.tobytes() for r in raw(ds.x_train)}
  val_rows = {r.tobytes() for r in raw(ds.x_val)}
  assert not train_rows & val_rows
  assert train_rows | val_rows == rows


def test_load_usps_resize_and_limit(tmp_path):
  _write_fake_usps(tmp_path / 'usps')
  ds = data.load('usps', manual_dir=str(tmp_path), image_size=28,
                 train_limit=20, data_dir=str(tmp_path / 'tfds'))
  assert ds.x_train.shape == (20, 28, 28, 1)
  assert ds.x_test.shape == (NUM_TEST, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 2))


def test_load_replicates_gray_to_rgb(tmp_path):
  _write_fake_usps(tmp_path / 'usps')
  kwargs = dict(manual_dir=str(tmp_path), data_dir=str(tmp_path / 'tfds'))
  gray = data.load('usps', image_size=32, **kwargs)
  rgb = data.load('usps', image_size=32, channels=3, **kwargs)
  assert rgb.x_train.shape == gray.x_train.shape[:3] + (3,)
  assert len(rgb.mean) == 3 and rgb.mean[0] == gray.mean[0]
  for c in range(3):
    np.testing.assert_array_equal(rgb.x_test[..., c], gray.x_test[..., 0])
  with pytest.raises(ValueError, match='only grayscale -> 3 channels'):
    data.load('usps', channels=2, **kwargs)


def test_svhn_to_mnist_shapes_with_mock_data(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _write_fake_mnist(tmp_path / 'mnist')
  with tfds.testing.mock_data(num_examples=12):
    svhn = data.load('svhn_cropped', data_dir=str(tmp_path / 'tfds'))
  mnist = data.load('mnist', manual_dir=str(tmp_path), image_size=32,
                    channels=3, data_dir=str(tmp_path / 'tfds'))
  assert svhn.image_shape == mnist.image_shape == (32, 32, 3)


def test_load_is_cached(tmp_path, monkeypatch):
  _write_fake_mnist(tmp_path / 'mnist')
  kwargs = dict(manual_dir=str(tmp_path), data_dir=str(tmp_path / 'tfds'))
  first = data.load('mnist', **kwargs)
  monkeypatch.setattr(local_datasets, 'BUILDERS', {})  # Would fail if used.
  second = data.load('mnist', **kwargs)
  np.testing.assert_array_equal(first.x_train, second.x_train)


def test_missing_dataset_message(tmp_path):
  with pytest.raises(data.DatasetNotFoundError) as e:
    data.load('fashion_mnist', manual_dir=str(tmp_path), download=False,
              data_dir=str(tmp_path / 'tfds'))
  assert isinstance(e.value, FileNotFoundError)
  msg = str(e.value)
  assert '\n' not in msg  # printed as one `error:` line.
  for needle in ('manual_dir', '--data_dir', 'DISTILL_JAX_DATA_DIR',
                 'fashion_mnist/', 'train-images-idx3-ubyte.gz',
                 'apt-get install dataset-fashion-mnist',
                 'pip install tensorflow-cpu', str(tmp_path)):
    assert needle in msg, needle
  with pytest.raises(data.DatasetNotFoundError, match='usps.npz'):
    data.load('usps', manual_dir=str(tmp_path), data_dir=str(tmp_path))


def test_corrupt_local_file_is_value_error(tmp_path):
  directory = tmp_path / 'mnist'
  _write_fake_mnist(directory)
  path = directory / local_datasets.MNIST_FILES['test_images']
  path.write_bytes(path.read_bytes()[:50])
  with pytest.raises(ValueError, match='t10k-images'):
    data.load('mnist', manual_dir=str(tmp_path),
              data_dir=str(tmp_path / 'tfds'))


def test_unknown_name():
  # Not in the TFDS catalogue: one line listing the names and how to add one.
  with pytest.raises(ValueError) as e:
    data.load('nosuchset')
  msg = str(e.value)
  assert '\n' not in msg and msg.startswith("dataset 'nosuchset' is not")
  for needle in ('mnist, fashion_mnist, usps, cifar10, cifar10_subset',
                 'cifar100', 'emnist/balanced', 'imagenet2012',
                 'a path to an .npz or an image folder', 'To add a dataset',
                 'x_train, y_train, x_test, y_test', 'train/<class>/*.png'):
    assert needle in msg, needle
  # Not even a name (checked without TFDS); a close name is suggested.
  with pytest.raises(ValueError, match="'MNIST' is neither.*did you mean "
                     "'mnist'"):
    data.load('MNIST')
  with pytest.raises(ValueError, match="not a valid TFDS builder"):
    data.load('emnist/nosuchconfig')
  with pytest.raises(ValueError, match="not an image-classification"):
    data.load('imdb_reviews')
  assert 'cifar10_subset' in data.available()


def test_online_path_with_mock_data(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load('mnist', data_dir=str(tmp_path / 'tfds'), val_size=2)
  assert ds.source == 'tfds:mnist'
  assert ds.x_train.shape == (10, 28, 28, 1) and ds.x_val.shape[0] == 2
  assert ds.x_test.shape == (12, 28, 28, 1)
  assert ds.mean == (0.1307,)


# Any TFDS image-classification dataset by name (mocked: no network).


def test_tfds_names_with_mock_data(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  kw = dict(data_dir=str(tmp_path / 'tfds'))
  with tfds.testing.mock_data(num_examples=6):
    c100 = data.load('cifar100', **kw)
    emnist = data.load('emnist/balanced', val_size=2, **kw)
    corrupted = data.load('mnist_corrupted/shot_noise', **kw)
    raw = data.load('mnist_corrupted/shot_noise', pixels='uint8', **kw)
  # Shape, class count and names from the builder's info.
  assert c100.image_shape == (32, 32, 3) and c100.num_classes == 100
  assert len(c100.class_names) == 100 and c100.source == 'tfds:cifar100'
  assert (c100.mean, c100.std) == registry.CIFAR100_STATS  # known table.
  assert emnist.image_shape == (28, 28, 1) and emnist.num_classes == 47
  assert emnist.x_train.shape[0] == 4 and emnist.x_val.shape[0] == 2
  # Not in the table: computed on the training split, stored in the set.
  assert 'mnist_corrupted/shot_noise' not in data.available()
  x01 = raw.x_train.astype(np.float64) / 255
  np.testing.assert_allclose(corrupted.mean, [x01.mean()], rtol=1e-9)
  np.testing.assert_allclose(corrupted.std, [x01.std()], rtol=1e-9)
  np.testing.assert_allclose(
      corrupted.x_train, (x01 - x01.mean()) / x01.std(), atol=1e-5)


def test_tfds_varying_sizes_need_image_size(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  kw = dict(data_dir=str(tmp_path / 'tfds'))
  with tfds.testing.mock_data(num_examples=5):
    with pytest.raises(ValueError, match='varying size.*pass image_size=N'
                       ) as e:
      data.load('imagenette/160px-v2', **kw)
    assert '\n' not in str(e.value)
    ds = data.load('imagenette/160px-v2', image_size=(12, 10), **kw)
  assert ds.image_shape == (12, 10, 3) and ds.num_classes == 10
  assert ds.class_names[0] == 'n01440764'


def test_tfds_manual_dir(tmp_path, monkeypatch):
  """imagenet2012's manual download: <manual_dir>/imagenet2012/ (or the
  folder itself) reaches the builder's download config."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  (tmp_path / 'manual' / 'imagenet2012').mkdir(parents=True)
  seen = []
  with tfds.testing.mock_data(num_examples=4):
    real = tfds.core.DatasetBuilder.download_and_prepare
    def spy(self, *args, download_config=None, **kwargs):
      seen.append(download_config.manual_dir)
      return real(self, *args, download_config=download_config, **kwargs)
    with monkeypatch.context() as m:  # undone before mock_data exits.
      m.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', spy)
      ds = data.load('imagenet2012', manual_dir=str(tmp_path / 'manual'),
                     image_size=8, data_dir=str(tmp_path / 'tfds'))
  assert [os.fspath(p) for p in seen] == [
      str(tmp_path / 'manual' / 'imagenet2012')]
  assert ds.num_classes == 1000 and ds.mean == registry.IMAGENET_STATS[0]
  assert tfds_source.manual_dir_for(
      [None, str(tmp_path)], 'imagenet2012') == str(tmp_path)
  # Offline without a prepared copy: one line naming what was tried.
  with pytest.raises(data.DatasetNotFoundError,
                     match="not prepared in .* and download=False") as e:
    data.load('cifar100', download=False, data_dir=str(tmp_path / 'none'))
  assert '\n' not in str(e.value)


def _fake_builder(splits, n=10, k=2):
  """A prepared builder stand-in: `splits` are its split names."""
  import types  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  examples = {s: [{'image': rng.integers(0, 256, (3, 3), np.uint8),
                   'label': i % k} for i in range(n)] for s in splits}
  label = types.SimpleNamespace(names=[f'c{i}' for i in range(k)])
  info = types.SimpleNamespace(splits=dict.fromkeys(splits),
                               features={'label': label})
  builder = types.SimpleNamespace(info=info,
                                  as_data_source=examples.__getitem__)
  return builder, examples


def test_read_builder_chooses_the_test_split():
  meta = tfds_source.Meta('image', 'label', (3, 3, 1), np.dtype(np.uint8), 2,
                          ('c0', 'c1'))
  builder, examples = _fake_builder(('train', 'validation'))
  raw = tfds_source.read_builder(builder, 'tfds:x', meta)
  want = np.stack([e['image'] for e in examples['validation']])[..., None]
  np.testing.assert_array_equal(raw.x_test, want)
  assert raw.class_names == ('c0', 'c1') and raw.source == 'tfds:x'
  # Only a train split: a seeded fifth of each class is the test split.
  builder, examples = _fake_builder(('train',))
  raw = tfds_source.read_builder(builder, 'tfds:x', meta)
  np.testing.assert_array_equal(np.bincount(raw.y_test), [1, 1])
  assert len(raw.y_train) == 8 and 'seeded hold-out' in raw.source
  x = np.stack([e['image'] for e in examples['train']])[..., None]
  y = np.arange(10) % 2
  np.testing.assert_array_equal(raw.x_test, data_api.holdout_test(x, y)[2])


# Helpers.


def test_class_balanced_indices():
  y = np.repeat(np.arange(4), [5, 6, 7, 8])
  rng = np.random.default_rng(0)
  idx = data_api.class_balanced_indices(rng, y, 3, 4)
  assert idx.shape == (12,) and len(set(idx.tolist())) == 12
  np.testing.assert_array_equal(y[idx], np.repeat(np.arange(4), 3))
  with pytest.raises(ValueError, match='class 0 has only 5'):
    data_api.class_balanced_indices(rng, y, 6, 4)


def test_split_validation_stratified():
  y = np.repeat(np.arange(3), [10, 20, 30])
  x = np.arange(60)
  x_tr, y_tr, x_va, y_va = data_api.split_validation(x, y, 6, seed=0)
  np.testing.assert_array_equal(np.bincount(y_va), [1, 2, 3])
  assert len(x_tr) == 54 and not set(x_tr) & set(x_va)
  np.testing.assert_array_equal(y[x_tr], y_tr)


def test_stratified_subset_of_class_sorted_data():
  # A class-sorted split (as local copies are): the subset must cover every
  # class in proportion, not be the first n examples.
  y = np.repeat(np.arange(10), 50)
  x = np.arange(500)
  xs, ys = data_api.stratified_subset(x, y, 100, seed=3)
  np.testing.assert_array_equal(np.bincount(ys, minlength=10), [10] * 10)
  np.testing.assert_array_equal(y[xs], ys)
  xs2, _ = data_api.stratified_subset(x, y, 100, seed=3)
  np.testing.assert_array_equal(xs, xs2)


def test_normalize_and_resize():
  x = np.full((2, 4, 4, 3), 255, np.uint8)
  out = data_api.normalize(x, (0.5, 0.5, 0.5), (0.5, 0.25, 0.5))
  np.testing.assert_allclose(out[0, 0, 0], [1.0, 2.0, 1.0])
  np.testing.assert_allclose(
      data_api.denormalize(out, (0.5,) * 3, (0.5, 0.25, 0.5)), 1.0)
  resized = data_api.resize(np.ones((2, 4, 4, 3), np.float32), 8)
  assert resized.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(resized, 1.0, atol=1e-6)


def test_loaded_splits_are_aligned_and_exact(tmp_path):
  """Train/val/test are 64-byte aligned (so XLA:CPU shares them instead of
  copying) and bit-identical to the textbook float32 normalisation."""
  arrays = _write_fake_mnist(tmp_path / 'manual' / 'mnist')
  ds = data.load('mnist', manual_dir=str(tmp_path / 'manual'),
                 data_dir=str(tmp_path / 'tfds'), val_size=10)
  for x in (ds.x_train, ds.x_val, ds.x_test):
    assert x.ctypes.data % transforms.ALIGN == 0 and x.flags.c_contiguous
    assert x.flags.writeable and x.dtype == np.float32
  raw = arrays['test'][0][..., None]
  reference = ((raw.astype(np.float32) / 255.0 - np.float32(0.1307)) /
               np.float32(0.3081)).astype(np.float32)
  np.testing.assert_array_equal(ds.x_test, reference)
  # normalize() leaves a float input untouched.
  x = np.full((2, 3, 3, 1), 0.5, np.float32)
  out = data_api.normalize(x, (0.25,), (0.5,))
  np.testing.assert_array_equal(x, 0.5)
  np.testing.assert_allclose(out, 0.5)


def test_aligned_helpers():
  for shape in ((3,), (5, 7, 3), (0, 4)):
    a = data_api.aligned_empty(shape, np.float32)
    assert a.shape == shape and a.dtype == np.float32
    assert a.size == 0 or a.ctypes.data % transforms.ALIGN == 0
  x = np.arange(12, dtype=np.float32)[1:]  # offset by 4 bytes.
  y = data_api.as_aligned(x)
  assert y.ctypes.data % transforms.ALIGN == 0
  np.testing.assert_array_equal(x, y)
  assert data_api.as_aligned(y) is y
  ro = data_api.aligned_empty((4,), np.float32)
  ro.flags.writeable = False
  assert data_api.as_aligned(ro) is not ro


def test_uint8_pixels_decode_bit_identical(tmp_path):
  """pixels='uint8' keeps the stored pixels (a quarter of the memory);
  `decode` on the host and inside jit gives exactly the float32 splits."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  _write_fake_mnist(tmp_path / 'manual' / 'mnist')
  kw = dict(manual_dir=str(tmp_path / 'manual'),
            data_dir=str(tmp_path / 'tfds'), val_size=10)
  f = data.load('mnist', **kw)
  u = data.load('mnist', pixels='uint8', **kw)
  assert (u.pixels, f.pixels) == ('uint8', 'float32')
  decode = jax.jit(lambda x, i: data_api.decode(x[i], u.mean, u.std))
  for xu, xf in ((u.x_train, f.x_train), (u.x_val, f.x_val),
                 (u.x_test, f.x_test)):
    assert xu.dtype == np.uint8 and xu.ctypes.data % transforms.ALIGN == 0
    np.testing.assert_array_equal(data_api.decode(xu, u.mean, u.std), xf)
    idx = jnp.arange(len(xu))[::-1]
    np.testing.assert_array_equal(
        np.asarray(decode(jax.device_put(xu), idx)), xf[::-1])
  np.testing.assert_array_equal(u.y_train, f.y_train)
  assert data_api.decode(f.x_test, f.mean, f.std) is f.x_test  # floats pass.
  rgb = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), np.uint8)
  m, s = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
  np.testing.assert_array_equal(data_api.decode(rgb, m, s),
                                data_api.normalize(rgb, m, s))
  np.testing.assert_array_equal(
      np.asarray(jax.jit(lambda x: data_api.decode(x, m, s))(rgb)),
      data_api.normalize(rgb, m, s))


def test_uint8_pixels_errors(tmp_path):
  _write_fake_mnist(tmp_path / 'manual' / 'mnist')
  kw = dict(manual_dir=str(tmp_path / 'manual'),
            data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(ValueError, match='pixels='):
    data.load('mnist', pixels='int8', **kw)
  with pytest.raises(ValueError, match='image_size or channels'):
    data.load('mnist', pixels='uint8', image_size=16, **kw)
  with pytest.raises(ValueError, match='image_size or channels'):
    data.load('mnist', pixels='uint8', channels=3, **kw)


def test_clear_cache_rereads(tmp_path, monkeypatch):
  _write_fake_mnist(tmp_path / 'manual' / 'mnist')
  kw = dict(manual_dir=str(tmp_path / 'manual'),
            data_dir=str(tmp_path / 'tfds'))
  first = data.load('mnist', **kw)
  calls = []
  real = tfds_source.read_builder
  monkeypatch.setattr(tfds_source, 'read_builder',
                      lambda *a: calls.append(1) or real(*a))
  data.load('mnist', **kw)
  assert not calls  # cached.
  data.clear_cache()
  again = data.load('mnist', **kw)
  assert calls == [1]
  np.testing.assert_array_equal(first.x_train, again.x_train)


# A prepared copy is used only for the files it was prepared from.


def test_prepared_copy_of_other_files_is_prepared_again(tmp_path):
  tfds_dir = str(tmp_path / 'tfds')
  a = test_utils.write_fake_datasets(str(tmp_path / 'a'), n_train=40,
                                     n_test=10)
  b = test_utils.write_fake_datasets(str(tmp_path / 'b'), n_train=60,
                                     n_test=20, seed=1)
  ds_a = data.load('fashion_mnist', manual_dir=a, data_dir=tfds_dir)
  assert ds_a.x_train.shape[0] == 40
  stamp = pathlib.Path(tfds_dir, 'local_fashion_mnist', '1.0.0',
                       data.SOURCE_STAMP)
  assert json.loads(stamp.read_text())['files'] == data.source_fingerprint(
      'fashion_mnist', os.path.join(a, 'fashion_mnist'))
  data.clear_cache()
  # Same data dir, other files (as after a test run had prepared fake data
  # into the default dir): B's data, not A's.
  ds_b = data.load('fashion_mnist', manual_dir=b, data_dir=tfds_dir)
  assert ds_b.x_train.shape[0] == 60 and ds_b.x_test.shape[0] == 20
  # A prepared folder without a record (older versions) is prepared again.
  stamp.unlink()
  data.clear_cache()
  ds_b2 = data.load('fashion_mnist', manual_dir=b, data_dir=tfds_dir)
  np.testing.assert_array_equal(ds_b2.x_train, ds_b.x_train)
  assert stamp.exists()

