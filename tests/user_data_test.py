"""The user's own data by path (distill_jax.data.user): an .npz file or an
image folder loads with the right arrays, class map and normalisation; every
malformed input gives one line naming the problem and the fix; and both
distil end to end from the command line."""

import json
import os

import numpy as np
from PIL import Image
import pytest

import distill_jax
from distill_jax import config as config_lib
from distill_jax import data
from distill_jax.data import splits
from tests.experiments_test import _run


def _images(rng, n, shape, k):
  """Learnable uint8 images: brightness grows with the class, plus noise."""
  y = np.arange(n) % k
  x = rng.integers(0, 50, (n, *shape)) + (y * 200 // max(k - 1, 1)).reshape(
      -1, *[1] * len(shape))
  return np.clip(x, 0, 255).astype(np.uint8), y


def _write_npz(path, rng, n_train=30, n_test=9, k=3, shape=(6, 5), **arrays):
  """An npz of uint8 NHW images; `arrays` replace (None: drop) entries."""
  x_train, y_train = _images(rng, n_train, shape, k)
  x_test, y_test = _images(rng, n_test, shape, k)
  out = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             class_names=np.array(['cat', 'dog', 'owl'][:k]))
  out.update(arrays)
  np.savez(path, **{key: v for key, v in out.items() if v is not None})
  return out


def _write_folder(root, per_class, rng, shape=(6, 5, 3), names=('zebra',
                                                                'ant', 'moth')):
  """Writes PNGs to root/<split>/<class>/NN.png for per_class = {split: n}
  (split '' = class folders directly under root); returns {split: [(x,
  class name)]} in written order."""
  out = {}
  for split, n in per_class.items():
    out[split] = []
    for c, name in enumerate(names):
      d = os.path.join(root, split, name)
      os.makedirs(d, exist_ok=True)
      x, _ = _images(rng, n, shape, len(names))
      x = np.clip(x.astype(int) + 60 * c, 0, 255).astype(np.uint8)
      for i, im in enumerate(x):
        Image.fromarray(im[..., 0] if shape[-1] == 1 else im).save(
            os.path.join(d, f'{i:02d}.png'))
        out[split].append((im.reshape(shape), name))
  return out


def _hand_stats(x01):
  """Per-channel mean and (population) std of NHWC images in [0, 1]."""
  flat = x01.reshape(-1, x01.shape[-1]).astype(np.float64)
  return flat.mean(0), flat.std(0)


@pytest.fixture(autouse=True)
def _fresh_cache():
  data.clear_cache()
  yield
  data.clear_cache()


# Loading.


def test_npz_uint8_nhw(tmp_path):
  arrays = _write_npz(tmp_path / 'set.npz', np.random.default_rng(0))
  ds = data.load(str(tmp_path / 'set.npz'), val_size=6, seed=1)
  assert ds.name == str(tmp_path / 'set.npz')
  assert ds.source == f'npz:{tmp_path / "set.npz"}'
  assert ds.image_shape == (6, 5, 1) and ds.num_classes == 3
  assert ds.class_names == ('cat', 'dog', 'owl')
  assert ds.x_train.shape == (24, 6, 5, 1) and ds.x_val.shape == (6, 6, 5, 1)
  np.testing.assert_array_equal(np.bincount(ds.y_val), [2, 2, 2])
  # Normalisation: computed on the whole train split (validation included).
  mean, std = _hand_stats(arrays['x_train'][..., None] / 255.0)
  np.testing.assert_allclose(ds.mean, mean, rtol=1e-9)
  np.testing.assert_allclose(ds.std, std, rtol=1e-9)
  expected = (arrays['x_test'][..., None] / 255.0 - mean) / std
  np.testing.assert_allclose(ds.x_test, expected, atol=1e-5)
  np.testing.assert_array_equal(ds.y_test, arrays['y_test'])
  # The stored pixels, as for the named datasets.
  u = data.load(str(tmp_path / 'set.npz'), pixels='uint8')
  np.testing.assert_array_equal(u.x_test[..., 0], arrays['x_test'])


def test_npz_float_nhwc_is_not_quantised(tmp_path):
  rng = np.random.default_rng(1)
  x_train = rng.random((20, 4, 4, 3), np.float32)
  x_test = rng.random((5, 4, 4, 3), np.float32)
  np.savez(tmp_path / 'f.npz', x_train=x_train, y_train=np.arange(20) % 4,
           x_test=x_test, y_test=np.arange(5)[:, None] % 4)  # (N, 1) too.
  ds = data.load(str(tmp_path / 'f.npz'), pixels='uint8')  # floats stay.
  assert ds.class_names == ('0', '1', '2', '3') and ds.num_classes == 4
  assert ds.x_train.dtype == np.float32 and ds.pixels == 'float32'
  mean, std = _hand_stats(x_train)
  np.testing.assert_allclose(ds.mean, mean, rtol=1e-9)
  np.testing.assert_allclose((ds.x_test * std + mean), x_test, atol=1e-6)
  np.testing.assert_array_equal(ds.y_test, np.arange(5) % 4)


def test_folder_with_train_and_test(tmp_path):
  written = _write_folder(tmp_path / 'imgs', {'train': 4, 'test': 2},
                          np.random.default_rng(2))
  ds = data.load(str(tmp_path / 'imgs'))
  # Class order = sorted folder names; within a class, sorted file names.
  assert ds.class_names == ('ant', 'moth', 'zebra') and ds.num_classes == 3
  assert ds.source == f'folder:{tmp_path / "imgs"}'
  for split, x, y in (('train', ds.x_train, ds.y_train),
                      ('test', ds.x_test, ds.y_test)):
    ref = sorted(written[split], key=lambda t: t[1])  # stable: file order.
    ref_x = np.stack([im for im, _ in ref]) / 255.0
    np.testing.assert_array_equal(
        y, [ds.class_names.index(name) for _, name in ref])
    if split == 'train':
      mean, std = _hand_stats(ref_x)
      np.testing.assert_allclose(ds.mean, mean, rtol=1e-9)
      np.testing.assert_allclose(ds.std, std, rtol=1e-9)
    np.testing.assert_allclose(x, (ref_x - mean) / std, atol=1e-5)


def test_folder_of_classes_holds_out_a_seeded_test_split(tmp_path):
  rng = np.random.default_rng(3)
  written = _write_folder(tmp_path / 'g', {'': 11}, rng, shape=(5, 5, 1),
                          names=('b', 'a'))
  # One colour image makes every image RGB (gray replicated).
  colour = rng.integers(0, 255, (5, 5, 3), np.uint8)
  Image.fromarray(colour).save(tmp_path / 'g' / 'a' / 'zz.png')
  ds = data.load(str(tmp_path / 'g'))
  assert ds.class_names == ('a', 'b') and ds.image_shape == (5, 5, 3)
  assert 'seeded hold-out' in ds.source
  # floor(n / 5) of each class: 12 'a' images -> 2, 11 'b' images -> 2.
  np.testing.assert_array_equal(np.bincount(ds.y_test), [2, 2])
  np.testing.assert_array_equal(np.bincount(ds.y_train), [10, 9])
  # The reference: every image in class then file order, split by
  # `splits.holdout_test` with its fixed seed.
  by_class = {n: [np.repeat(im, 3, -1) for im, c in written[''] if c == n]
              for n in ('a', 'b')}
  x_all = np.stack(by_class['a'] + [colour] + by_class['b'])
  y_all = np.repeat([0, 1], [12, 11])
  ref = splits.holdout_test(x_all, y_all)
  raw = data.load(str(tmp_path / 'g'), pixels='uint8')
  for got, want in zip((raw.x_train, raw.y_train, raw.x_test, raw.y_test),
                       ref):
    np.testing.assert_array_equal(got, want)


def test_holdout_test_counts():
  y = np.repeat(np.arange(4), [4, 5, 14, 15])
  x_tr, y_tr, x_te, y_te = splits.holdout_test(np.arange(len(y)), y)
  np.testing.assert_array_equal(np.bincount(y_te, minlength=4), [0, 1, 2, 3])
  assert not set(x_tr) & set(x_te) and len(x_tr) + len(x_te) == len(y)
  np.testing.assert_array_equal(y[x_te], y_te)
  np.testing.assert_array_equal(y_tr, y[x_tr])
  again = splits.holdout_test(np.arange(len(y)), y)[2]
  np.testing.assert_array_equal(again, x_te)


def test_folder_of_different_sizes_with_image_size(tmp_path):
  rng = np.random.default_rng(4)
  _write_folder(tmp_path / 'm', {'train': 2, 'test': 1}, rng)
  Image.fromarray(rng.integers(0, 255, (9, 7, 3), np.uint8)).save(
      tmp_path / 'm' / 'train' / 'ant' / 'big.png')
  ds = data.load(str(tmp_path / 'm'), image_size=8)
  assert ds.x_train.shape == (7, 8, 8, 3) and ds.x_test.shape == (3, 8, 8, 3)


def test_config_accepts_paths_and_rejects_non_names(tmp_path):
  path = str(tmp_path / 'set.npz')
  assert config_lib.DistillConfig(dataset=path).dataset == path
  for ok in ('./my_images', '~/data/x.npz', 'emnist/balanced', 'cifar100',
             'mnist:3.0.1'):
    assert data.check_name(ok) == ok
  for bad, why in (('', 'is empty'), ('MNIST', "did you mean 'mnist'"),
                   (' mnist', 'spaces'), ('my data', 'neither')):
    with pytest.raises(ValueError, match=why) as e:
      config_lib.DistillConfig(dataset=bad)
    assert '\n' not in str(e.value)
    assert 'a path to an .npz or an image folder' in str(e.value)


# Malformed input: one line naming the file, the problem and the fix.


def _npz_case(tmp_path, **arrays):
  _write_npz(tmp_path / 'bad.npz', np.random.default_rng(5), **arrays)
  return tmp_path / 'bad.npz'


NPZ_CASES = {
    'missing': (dict(y_test=None), r"missing arrays \['y_test'\].*save all"),
    'lengths': (dict(y_train=np.zeros(29, int)),
                '30 images in x_train but 29 labels in y_train; save one'),
    'out_of_range': (dict(y_test=np.full(9, 3)),
                     'label 3 is out of range for the 3 class_names'),
    'negative': (dict(y_train=-(np.arange(30) % 3)), 'negative label'),
    'image_dtype': (dict(x_test=np.zeros((9, 6, 5), np.int64)),
                    'x_test has dtype int64; save images as uint8'),
    'label_dtype': (dict(y_train=np.zeros(30, np.float32)),
                    'y_train has dtype float32; save labels as integers'),
    'rank': (dict(x_train=np.zeros((30, 30), np.uint8)),
             r'x_train has shape \(30, 30\) \(rank 2\); save images as'),
    'channels_first': (dict(x_train=np.zeros((30, 3, 6, 5), np.uint8)),
                       r'channels first; save NHWC.*transpose'),
    'float_range': (dict(x_test=np.full((9, 6, 5), 255.0)),
                    r'are in \[255, 255\], not \[0, 1\]; divide'),
    'empty_class': (dict(class_names=np.array(['a', 'b', 'c', 'd'])),
                    "class 3 \\('d'\\) has no training images; add"),
    'sizes': (dict(x_test=np.zeros((9, 5, 5), np.uint8)),
              r'x_train images are \(6, 5, 1\) but x_test images are'),
    'object_array': (dict(class_names=np.array(['a', 1, None], object)),
                     'cannot read its arrays.*save plain numeric arrays'),
}


@pytest.mark.parametrize('case', sorted(NPZ_CASES))
def test_malformed_npz(case, tmp_path):
  arrays, message = NPZ_CASES[case]
  path = _npz_case(tmp_path, **arrays)
  with pytest.raises(data.DataFileError, match=message) as e:
    data.load(str(path))
  assert '\n' not in str(e.value) and str(e.value).startswith(f'{path}: ')


def test_not_a_zip_and_missing_path(tmp_path):
  (tmp_path / 'junk.npz').write_bytes(b'not a zip file at all')
  with pytest.raises(data.DataFileError,
                     match=r'junk.npz: not an .npz file \(not a zip archive'
                     r'\); save one with numpy.savez'):
    data.load(str(tmp_path / 'junk.npz'))
  with pytest.raises(data.DatasetNotFoundError,
                     match='does not exist.*pass an existing .npz') as e:
    data.load(str(tmp_path / 'none.npz'))
  assert '\n' not in str(e.value)


def _folder_case(tmp_path, case):
  root = tmp_path / 'f'
  rng = np.random.default_rng(6)
  _write_folder(root, {'train': 2, 'test': 1}, rng)
  if case == 'unreadable':
    (root / 'train' / 'ant' / '00.png').write_bytes(b'\x89PNG garbage')
  elif case == 'empty_class':
    (root / 'test' / 'ant').mkdir(exist_ok=True)
    for f in (root / 'test' / 'ant').iterdir():
      f.unlink()
  elif case == 'sizes':
    Image.fromarray(rng.integers(0, 255, (9, 7, 3), np.uint8)).save(
        root / 'test' / 'moth' / 'big.png')
  elif case == 'unknown_test_class':
    (root / 'test' / 'bee').mkdir()
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(
        root / 'test' / 'bee' / 'a.png')
  elif case == 'no_classes':
    root = tmp_path / 'flat'
    root.mkdir()
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(root / 'a.png')
  return root


FOLDER_CASES = {
    'unreadable': r'train/ant/00.png: unreadable image \(.*\); delete or '
                  'replace the file',
    'empty_class': r'test/ant: empty class folder .*; add images',
    'sizes': r'f: images of different sizes \(.* is 6x5, .*big.png is 9x7'
             r'\); resize them to one size, or pass image_size=N',
    'unknown_test_class': 'test/bee: a test class with no folder in train/',
    'no_classes': r'flat: no class subfolders; put the images in',
}


@pytest.mark.parametrize('case', sorted(FOLDER_CASES))
def test_malformed_folder(case, tmp_path):
  root = _folder_case(tmp_path, case)
  with pytest.raises(data.DataFileError, match=FOLDER_CASES[case]) as e:
    data.load(str(root))
  assert '\n' not in str(e.value)


# End to end, from the command line.


def _check_run(wd, dataset, class_names, n_eval):
  report = json.loads((wd / 'report.json').read_text())
  assert report['dataset'] == dataset
  assert 0.0 <= report['test_acc']['mean'] <= 100.0
  assert report['test_acc']['n'] == n_eval
  d = distill_jax.load_distilled_set(str(wd / 'distilled.npz'))
  assert d.dataset == dataset and d.class_names == class_names
  assert np.isfinite(d.images).all()
  return d


# Tiny MLP runs: the smoke preset with fewer networks (seconds each).
DD_FLAGS = ['--preset=smoke', '--arch=mlp', '--mlp_hidden=8', '--val_size=6',
            '--real_batch=16', '--eval_inits=1', '--val_inits=1']


def test_user_npz_and_folder_distil_end_to_end(tmp_path):
  rng = np.random.default_rng(7)
  npz = str(tmp_path / 'mine.npz')
  _write_npz(npz, rng, n_train=30, n_test=9, shape=(8, 8))
  folder = str(tmp_path / 'pngs')
  _write_folder(folder, {'train': 8, 'test': 2}, rng, shape=(8, 8, 3))
  for dataset, names, shape in ((npz, ('cat', 'dog', 'owl'), (8, 8, 1)),
                                (folder, ('ant', 'moth', 'zebra'),
                                 (8, 8, 3))):
    run = tmp_path / f'run_{os.path.basename(dataset)}'
    proc = _run('dd_fashion_mnist', [*DD_FLAGS, f'--dataset={dataset}'],
                str(tmp_path), run)
    assert 'test accuracy:' in proc.stdout
    d = _check_run(run / 'wd', dataset, names, 1)
    view = d.as_dd()
    assert view.x.shape == (2, 3, *shape)  # steps x classes x image.
    np.testing.assert_array_equal(view.labels, np.tile(np.arange(3), (2, 1)))


def test_user_npz_decoupled_end_to_end(tmp_path):
  npz = str(tmp_path / 'mine.npz')
  _write_npz(npz, np.random.default_rng(8), n_train=36, n_test=9,
             shape=(8, 8))
  proc = _run('decoupled', [
      '--preset=smoke', '--method=sre2l', f'--dataset={npz}', '--val_size=6',
      f'--teacher_cache={tmp_path / "cache"}', '--teacher_epochs=1',
      '--recover_iterations=1', '--recover_rounds=1', '--post_epochs=1',
      '--post_eval_every=1', '--post_students=1', '--noeval_hard',
      '--noeval_random', '--noeval_metrics'],
              str(tmp_path), tmp_path)
  assert 'test accuracy:' in proc.stdout
  d = _check_run(tmp_path / 'wd', npz, ('cat', 'dog', 'owl'), 1)
  assert d.images.shape == (6, 8, 8, 1)
  np.testing.assert_array_equal(d.labels, np.repeat(np.arange(3), 2))
