"""Streamed splits (`distill_jax.data.stream`) equal the in-memory ones.

Tiny datasets prepared as TFDS ArrayRecord files in a temporary folder
(the local MNIST builder on fake IDX files, and a generated builder without
a test split or standard statistics); nothing is downloaded.
"""

import os
import shutil

import chex
from etils import epath
import grain
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from distill_jax import data
from distill_jax.data import datasets
from distill_jax.data import sources
from distill_jax.data import stream
from distill_jax.eval import accuracy as accuracy_lib
from distill_jax.methods import rat_bptt
from distill_jax.methods.decoupled import config as config_lib
from distill_jax.methods.decoupled import rded
from distill_jax.methods.decoupled import ssl
from distill_jax.methods.decoupled import teacher as teacher_lib
from distill_jax.run import loop as loop_lib
from distill_jax.run import storage
from distill_jax.run import train_dd
from distill_jax.run import train_decoupled
from distill_jax.run import train_rat
from tests import test_utils


class TinyGenerated(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """45 random 6x6 RGB images of 3 classes; a train split only."""
  VERSION = tfds.core.Version('1.0.0')
  code_path = epath.Path(__file__)

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(6, 6, 3), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=3)}),
        supervised_keys=('image', 'label'), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(0)
    for i in range(45):
      yield i, {'image': rng.integers(0, 256, (6, 6, 3), dtype=np.uint8),
                'label': i % 3}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
  monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  datasets.clear_cache()
  yield
  datasets.clear_cache()


@pytest.fixture(name='raw_dir')
def _raw_dir(tmp_path):
  return test_utils.write_fake_datasets(str(tmp_path / 'raw'), n_train=120,
                                        n_test=40)


@pytest.fixture(name='generated')
def _generated(tmp_path):
  builder = TinyGenerated(data_dir=str(tmp_path / 'gen'),
                          file_format='array_record')
  builder.download_and_prepare()
  return str(builder.data_dir)


def _both(name, **kw):
  return (data.load(name, **kw),
          data.load(name, data_source='stream', **kw))


def _check_equal(mem, st):
  assert st.x_train.shape == (0, *mem.image_shape)
  for f in ('y_train', 'x_val', 'y_val', 'y_test'):
    np.testing.assert_array_equal(getattr(mem, f), getattr(st, f), f)
  assert (mem.mean, mem.std, mem.class_names) == (st.mean, st.std,
                                                  st.class_names)
  idx = np.random.default_rng(1).integers(0, len(mem.y_train), 50)
  x, y = st.streams['train'].gather(idx)
  assert x.dtype == mem.x_train.dtype
  np.testing.assert_array_equal(x, mem.x_train[idx])
  np.testing.assert_array_equal(y, mem.y_train[idx])
  xs = np.concatenate([b for b, _ in st.streams['test'].batches(7)])
  np.testing.assert_array_equal(xs, mem.x_test)


@pytest.mark.parametrize('kw', [
    dict(val_size=20, seed=3, pixels='uint8'),
    dict(val_size=10, seed=1, train_limit=50),
    dict(val_size=10, channels=3, image_size=16),
])
def test_streamed_local_builder_equals_memory(raw_dir, kw):
  _check_equal(*_both('mnist', manual_dir=raw_dir, **kw))


def test_streamed_prepared_folder_equals_memory(generated):
  # No standard statistics (computed by the same reduction) and no test
  # split (the same seeded hold-out of train).
  mem, st = _both(generated, val_size=6, seed=2)
  _check_equal(mem, st)
  assert 'hold-out' in st.source and st.source.startswith('prepared:')
  assert len(st.y_test) == 9


def test_auto_streams_only_large_splits(raw_dir, monkeypatch):
  kw = dict(manual_dir=raw_dir, val_size=10, data_source='auto')
  assert data.load('mnist', **kw).streams is None
  monkeypatch.setattr(stream, 'AUTO_BYTES', 0)
  assert data.load('mnist', **kw).streams is not None


def test_split_interface_and_streamed_accuracy(raw_dir):
  mem, st = _both('mnist', manual_dir=raw_dir, val_size=10, pixels='uint8')
  a, b = sources.of(mem, 'test'), sources.of(st, 'test')
  assert isinstance(a, sources.InMemory) and sources.is_streamed(b)
  idx = np.arange(5)
  np.testing.assert_array_equal(a.gather(idx)[0], b.gather(idx)[0])
  x, _, i = b.step_arrays(idx)
  np.testing.assert_array_equal(x[i], a.x[idx])

  def apply_fn(params, x):  # a fixed linear "network".
    return x.reshape(len(x), -1) @ params
  params = np.random.default_rng(0).normal(size=(3, 784, 10)).astype(
      np.float32)
  norm = (mem.mean, mem.std)
  want = accuracy_lib.accuracy(apply_fn, params, mem.x_test, mem.y_test,
                               batch=16, norm=norm)
  got = accuracy_lib.accuracy_on(apply_fn, params, b, batch=16, norm=norm)
  np.testing.assert_array_equal(want, got)


def test_shards_are_disjoint_and_cover(raw_dir):
  for n in (0, 1, 7, 12, 200):
    for count in (1, 2, 3, 4):
      parts = [np.arange(n)[slice(*stream.shard_bounds(
          n, grain.sharding.ShardOptions(i, count)))] for i in range(count)]
      np.testing.assert_array_equal(np.concatenate(parts), np.arange(n))
      dropped = [stream.shard_bounds(n, grain.sharding.ShardOptions(
          i, count, drop_remainder=True)) for i in range(count)]
      assert len({e - s for s, e in dropped}) == 1
  st = data.load('mnist', manual_dir=raw_dir, val_size=10,
                 data_source='stream', pixels='uint8')
  train = st.streams['train']
  batch = loop_lib.batch_indices(0, 3, len(train), 20)
  parts = []
  for i in range(3):
    train.shard = grain.sharding.ShardOptions(i, 3)
    parts.append(train.gather(batch)[0])
  train.shard = None
  np.testing.assert_array_equal(np.concatenate(parts), train.gather(batch)[0])


def test_damaged_or_unstreamable_data_is_one_line(generated, tmp_path):
  shard = [f for f in os.listdir(generated) if 'train.array_record' in f]
  with open(os.path.join(generated, shard[0]), 'r+b') as f:
    f.truncate(100)
  with pytest.raises(data.DataFileError) as e:
    data.load(generated, val_size=6, data_source='stream')
  assert '\n' not in str(e.value) and generated in str(e.value)
  os.remove(os.path.join(generated, shard[0]))
  with pytest.raises(data.DataFileError) as e:
    data.load(generated, val_size=6, data_source='stream')
  assert '\n' not in str(e.value)
  npz = str(tmp_path / 'mine.npz')
  np.savez(npz, x_train=np.zeros((4, 2, 2), np.uint8), y_train=np.arange(4),
           x_test=np.zeros((2, 2, 2), np.uint8), y_test=np.arange(2))
  with pytest.raises(ValueError, match='read into memory'):
    data.load(npz, data_source='stream')
  with pytest.raises(ValueError, match='data_source'):
    data.load(npz, data_source='disk')


def _rat_cfg(**kw):
  return rat_bptt.RatConfig(
      dataset='mnist', arch='mlp', mlp_hidden=(8,), ipc=1, batch_per_class=1,
      total_steps=4, window=2, real_batch=12, num_inits=1, inner_opt='sgd',
      inner_lr=0.1, outer_steps=4, eval_every=2, eval_budgets=(2,),
      val_nets=1, eval_nets=2, log_every=1, checkpoint_every=0, val_size=20,
      **kw)


def test_rat_bptt_streamed_and_resumed_equals_memory(raw_dir, tmp_path):
  full = str(tmp_path / 'memory')
  want = train_rat.run(_rat_cfg(), full, data_dir=raw_dir,
                       show_progress=False)
  part = str(tmp_path / 'stream')
  cfg = _rat_cfg(data_source='stream')
  assert train_rat.run(cfg, part, data_dir=raw_dir, show_progress=False,
                       stop_at=3) == {'interrupted_at': 3}
  got = train_rat.run(cfg, part, data_dir=raw_dir, show_progress=False,
                      resume=True)
  a = storage.load_distilled_set(os.path.join(full, 'distilled.npz'))
  b = storage.load_distilled_set(os.path.join(part, 'distilled.npz'))
  np.testing.assert_array_equal(a.images, b.images)
  for k in ('test_acc', 'val_acc_by_budget', 'best_step',
            'best_candidate_val_acc'):
    assert want[k] == got[k], k


def test_rat_bptt_refuses_zca_with_stream():
  with pytest.raises(ValueError, match='zca'):
    _rat_cfg(data_source='stream', zca=True)


def test_dd_streamed_and_resumed_equals_memory(raw_dir, tmp_path):
  def cfg(**kw):
    return test_utils.tiny_config(dataset='mnist', outer_steps=4,
                                  checkpoint_every=0, image_init='real',
                                  val_size=10, eval_every=2, **kw)
  full = str(tmp_path / 'memory')
  want = train_dd.run(cfg(), full, data_dir=raw_dir, show_progress=False)
  part = str(tmp_path / 'stream')
  assert train_dd.run(cfg(data_source='stream'), part, data_dir=raw_dir,
                      show_progress=False, stop_at=3) == {'interrupted_at': 3}
  got = train_dd.run(cfg(data_source='stream'), part, data_dir=raw_dir,
                     show_progress=False, resume=True)
  a = storage.load_distilled_set(os.path.join(full, 'distilled.npz'))
  b = storage.load_distilled_set(os.path.join(part, 'distilled.npz'))
  np.testing.assert_array_equal(a.images, b.images)
  assert want['test_acc'] == got['test_acc']
  assert want['val_acc'] == got['val_acc']


def _decoupled_cfg(**kw):
  cfg = config_lib.DecoupledConfig(dataset='mnist', ipc=1, val_size=10,
                                   rded_candidates=4, eval_hard=False,
                                   eval_random=False, **kw)
  return cfg.replace_flat(
      teacher_width=8, teacher_depth=2, teacher_epochs=2,
      teacher_batch_size=32, recover_iterations=4, recover_rounds=2,
      post_width=8, post_depth=2, post_epochs=1, post_eval_every=1,
      post_students=2, post_lr=0.01)


def test_decoupled_teacher_streamed_equals_memory(raw_dir):
  mem, st = _both('mnist', manual_dir=raw_dir, val_size=10)
  tcfg = _decoupled_cfg().teacher_cfg()
  # The same cache entry either way, so streamed runs reuse its teacher.
  assert teacher_lib.fingerprint(tcfg, mem) == teacher_lib.fingerprint(
      tcfg, st)
  model, want = teacher_lib.train(tcfg, mem)
  _, got = teacher_lib.train(tcfg, st)  # A host loop reading the files.
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
  assert teacher_lib.test_accuracy(model, want, st) == \
      teacher_lib.test_accuracy(model, want, mem)
  rows = sources.images(st, 'train')
  np.testing.assert_array_equal(rows[[5, 1, 5]], mem.x_train[[5, 1, 5]])
  np.testing.assert_array_equal(rows[3:9], mem.x_train[3:9])
  with pytest.raises(TypeError, match='not turned into one array'):
    np.asarray(rows)
  with pytest.raises(ValueError, match='ssl_train_limit'):
    ssl.load_or_train(ssl.SSLConfig(train_limit=0), tcfg.model_spec(st), st,
                      '/nonexistent', log=lambda *a: None)


def test_decoupled_run_streamed_equals_memory(raw_dir, tmp_path):
  """DELT (teacher-scored real init) and its fair evaluation (students
  tested on the streamed test split, diversity, TD) from streamed splits
  equal the in-memory run, the teacher reused from the in-memory run's
  cache; so do RDED's crops and the random-real baseline's images."""
  cache_mem, cache_st = tmp_path / 'cache_mem', tmp_path / 'cache_st'
  want = train_decoupled.run(
      _decoupled_cfg(method='delt', teacher_cache=str(cache_mem)),
      str(tmp_path / 'mem'), data_dir=raw_dir, show_progress=False)
  os.makedirs(cache_st)
  for f in os.listdir(cache_mem):
    if f.startswith('teacher_'):
      shutil.copy(cache_mem / f, cache_st / f)
  cfg = _decoupled_cfg(method='delt', teacher_cache=str(cache_st),
                       data_source='stream')
  got = train_decoupled.run(cfg, str(tmp_path / 'st'), data_dir=raw_dir,
                            show_progress=False)
  assert os.path.exists(cache_st / os.listdir(cache_mem)[0])
  a = storage.load_distilled_set(str(tmp_path / 'mem' / 'distilled.npz'))
  b = storage.load_distilled_set(str(tmp_path / 'st' / 'distilled.npz'))
  np.testing.assert_array_equal(a.images, b.images)
  for k in ('soft', 'td', 'diversity', 'full_data_hard_acc'):
    if isinstance(want['evaluation'][k], dict):
      want['evaluation'][k].pop('time_s', None)
      got['evaluation'][k].pop('time_s', None)
    assert want['evaluation'][k] == got['evaluation'][k], k
  # RDED's candidate crops read through the same rows.
  mem, st = _both('mnist', manual_dir=raw_dir, val_size=10)
  teacher = teacher_lib.load_or_train(cfg.teacher_cfg(), st, str(cache_st),
                                      log=lambda *a: None)
  rcfg = _decoupled_cfg(method='rded')
  np.testing.assert_array_equal(train_decoupled.rded_images(rcfg, mem, teacher),
                                train_decoupled.rded_images(rcfg, st, teacher))
  key = jax.random.key(4)
  np.testing.assert_array_equal(
      rded.random_real(key, mem.x_train, mem.y_train, 2, 10)[0],
      rded.random_real(key, sources.images(st, 'train'), st.y_train, 2, 10)[0])
