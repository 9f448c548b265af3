"""Distilled-set files of format version 1 still load, into `DistilledSet`.

The fixtures in tests/fixtures/ were written by the version 1 writer (see
its README.md); expected_v1.json holds what the version 1 reader returned.
"""

import json
import os
import shutil

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import distilled_set
from distill_jax.eval import replay as evaluate
from distill_jax.methods import rat_bptt
from distill_jax.nn import models
from distill_jax.run import storage
from tests import test_utils

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
C = test_utils.NUM_CLASSES


def _expected(name: str) -> dict:
  with open(os.path.join(FIXTURES, "expected_v1.json")) as f:
    return json.load(f)[name]


def _array(rec: dict) -> np.ndarray:
  return np.array(rec["values"], rec["dtype"]).reshape(rec["shape"])


def _load(name: str) -> distilled_set.DistilledSet:
  return storage.load_distilled_set(os.path.join(FIXTURES, name))


def _assert_sets_equal(test, a, b):
  """Every field of two sets equal (format_version aside)."""
  chex.assert_trees_all_equal(
      {k: getattr(a, k) for k in ("images", "labels", "mean", "std")},
      {k: getattr(b, k) for k in ("images", "labels", "mean", "std")})
  for name in ("soft_labels", "raw_lr", "schedule", "block"):
    x, y = getattr(a, name), getattr(b, name)
    test.assertEqual(x is None, y is None, name)
    if x is not None:
      np.testing.assert_array_equal(x, y, err_msg=name)
  test.assertEqual(a.zca is None, b.zca is None)
  if a.zca is not None:
    chex.assert_trees_all_equal(tuple(a.zca), tuple(b.zca))
  test.assertEqual(a.init_params is None, b.init_params is None)
  if a.init_params is not None:
    chex.assert_trees_all_equal(a.init_params, b.init_params)
  for name in ("class_names", "dataset", "method", "model", "metadata"):
    test.assertEqual(getattr(a, name), getattr(b, name), name)


class V1FixturesTest(absltest.TestCase):

  def test_dd(self):
    want = _expected("dd_v1.npz")
    s = _load("dd_v1.npz")
    self.assertEqual((s.format_version, s.method, s.dataset),
                     (1, "dd", "blobs"))
    x = _array(want["x"])
    np.testing.assert_array_equal(s.images, x.reshape(6, 4, 4, 1))
    np.testing.assert_array_equal(s.labels, _array(want["labels"]).ravel())
    np.testing.assert_array_equal(s.raw_lr, _array(want["raw_lr"]))
    np.testing.assert_allclose(s.lrs, _array(want["lrs"]), rtol=1e-6)
    np.testing.assert_array_equal(s.mean, _array(want["mean"]))
    np.testing.assert_array_equal(s.std, _array(want["std"]))
    # Step t sees the 3 images of step t % 2, stored step-major.
    np.testing.assert_array_equal(
        s.schedule, [[0, 1, 2], [3, 4, 5], [0, 1, 2], [3, 4, 5]])
    self.assertIsNone(s.block)
    self.assertIsNone(s.zca)
    chex.assert_trees_all_equal(
        s.init_params, jax.tree.map(_array, want["init_params"],
                                    is_leaf=lambda r: "values" in r))
    self.assertEqual(s.class_names, ("0", "1", "2"))
    self.assertEqual(s.model["arch"], "mlp")
    self.assertEqual(s.model["mlp_hidden"], [8])
    self.assertEqual(s.metadata["init_mode"], "fixed")
    self.assertEqual(s.metadata["config"]["steps"], 2)
    dd = s.as_dd()
    np.testing.assert_array_equal(dd.x, x)
    np.testing.assert_array_equal(dd.labels, _array(want["labels"]))
    np.testing.assert_array_equal(dd.raw_lr, _array(want["raw_lr"]))
    self.assertEqual((dd.steps, dd.epochs), (2, 2))
    np.testing.assert_array_equal(
        _array(want["step_order"]), np.tile(np.arange(dd.steps), dd.epochs))

  def test_rat_bptt_soft_labels_and_zca(self):
    want = _expected("rat_v1.npz")
    s = _load("rat_v1.npz")
    self.assertEqual((s.format_version, s.method), (1, "rat_bptt"))
    x = _array(want["x"])
    np.testing.assert_array_equal(s.images, x[0])
    extra = {k: _array(v) for k, v in want["extra"].items()}
    np.testing.assert_array_equal(s.labels, extra["class_index"])
    np.testing.assert_array_equal(s.soft_labels, extra["soft_labels"])
    self.assertTrue(s.soft)
    np.testing.assert_array_equal(s.zca.matrix, extra["zca_matrix"])
    np.testing.assert_array_equal(s.zca.mean, extra["zca_mean"])
    # Its run used inner SGD at a fixed lr: version 1's raw_lr was filler.
    self.assertFalse(s.metadata["config"]["learn_lr"])
    self.assertIsNone(s.raw_lr)
    self.assertIsNone(s.schedule)
    self.assertIsNone(s.block)
    view = s.per_class()
    np.testing.assert_array_equal(view.x, x[0].reshape(C, 2, 4, 4, 1))
    np.testing.assert_array_equal(view.targets,
                                  extra["soft_labels"].reshape(C, 2, C))
    with self.assertRaisesRegex(ValueError, "no replay schedule"):
      s.as_dd()

  def test_boost_blocks(self):
    want = _expected("boost_v1.npz")
    s = _load("boost_v1.npz")
    self.assertEqual((s.format_version, s.method), (1, "boost_dd"))
    extra = {k: _array(v) for k, v in want["extra"].items()}
    np.testing.assert_array_equal(s.images, _array(want["x"])[0])
    np.testing.assert_array_equal(s.labels, extra["class_index"])
    self.assertIsNone(s.soft_labels)
    np.testing.assert_array_equal(s.block, extra["block"])
    self.assertEqual(s.metadata["block_ipc"], 1)
    view = s.per_class()
    np.testing.assert_array_equal(view.block, [[0, 1]] * C)
    chex.assert_trees_all_equal(
        view.targets, np.broadcast_to(np.eye(C, dtype=np.float32)[:, None],
                                      (C, 2, C)))
    self.assertEqual(set(view.learned()), {"x"})  # hard labels, no lrs.

  def test_v2_round_trip_keeps_everything(self):
    tmp = self.create_tempdir().full_path
    for name in ("dd_v1.npz", "rat_v1.npz", "boost_v1.npz"):
      old = _load(name)
      path = os.path.join(tmp, name)
      storage.save_distilled_set(path, old)
      new = storage.load_distilled_set(path)
      self.assertEqual(new.format_version, 2)
      _assert_sets_equal(self, old, new)

  def test_per_class_view_feeds_rat_bptt(self):
    view = _load("rat_v1.npz").per_class()
    sup = rat_bptt.support(view.learned(),
                           rat_bptt.empty_fixed(C, view.x.shape[2:]))
    chex.assert_trees_all_equal(np.asarray(sup.x), view.x)
    chex.assert_trees_all_equal(np.asarray(sup.y), view.targets)


class ReplayTest(absltest.TestCase):

  def test_dd_fixture_replays_to_the_same_accuracy(self):
    """Through the type, as through the raw version 1 arrays and as the
    version 1 code measured when it wrote the fixture."""
    want = _expected("dd_v1.npz")
    s = _load("dd_v1.npz")
    ds = test_utils.tiny_dataset()
    cfg = test_utils.tiny_config()
    model = models.build(cfg, ds.image_shape, ds.num_classes)
    p0 = jax.tree.map(lambda a: jnp.asarray(a)[None], s.init_params)
    x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
    dd = s.as_dd()
    got = evaluate.replay_accuracy(
        model.apply, p0, jax.tree.map(jnp.asarray, dd.learned()),
        jnp.asarray(dd.labels), x_test, y_test, epochs=dd.epochs)
    with np.load(os.path.join(FIXTURES, "dd_v1.npz")) as z:
      raw = {"x": jnp.asarray(z["x"]), "raw_lr": jnp.asarray(z["raw_lr"])}
      labels, epochs = jnp.asarray(z["labels"]), len(z["lrs"]) // len(z["x"])
    old = evaluate.replay_accuracy(model.apply, p0, raw, labels, x_test,
                                   y_test, epochs=epochs)
    np.testing.assert_array_equal(got, old)
    self.assertAlmostEqual(float(got[0]), want["replay_test_acc"], places=6)


class BadV1FilesTest(test_utils.BadDistilledFileAsserts,
                     absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.path = os.path.join(self.create_tempdir().full_path, "bad.npz")

  def _rewrite(self, name, **changes):
    test_utils.rewrite_npz(os.path.join(FIXTURES, name), self.path,
                           **changes)

  def test_truncated(self):
    shutil.copy(os.path.join(FIXTURES, "rat_v1.npz"), self.path)
    with open(self.path, "r+b") as f:
      f.truncate(os.path.getsize(self.path) // 2)
    self._fails("truncated or corrupt")

  def test_newer_version(self):
    self._rewrite("dd_v1.npz", format_version=np.array(3, np.int32))
    self._fails("format version 3 is newer .* upgrade distill_jax")

  def test_unknown_old_version(self):
    self._rewrite("dd_v1.npz", format_version=np.array(0, np.int32))
    self._fails("unknown format version 0")

  def test_missing_field(self):
    self._rewrite("dd_v1.npz", step_order=None)
    self._fails(r"missing fields \['step_order'\]")

  def test_nan(self):
    with np.load(os.path.join(FIXTURES, "rat_v1.npz")) as z:
      x = z["x"].copy()
    x[0, 1, 0, 0, 0] = np.nan
    self._rewrite("rat_v1.npz", x=x)
    self._fails("NaN or infinite")

  def test_class_index_mismatch(self):
    self._rewrite("boost_v1.npz",
                  **{"extra/class_index": np.zeros(6, np.int32)})
    self._fails("class_index .* does not match")

  def test_soft_labels_shape(self):
    self._rewrite("rat_v1.npz",
                  **{"extra/soft_labels": np.zeros((6, 2), np.float32)})
    self._fails("soft_labels has shape")

  def test_zca_of_other_images(self):
    self._rewrite("rat_v1.npz",
                  **{"extra/zca_matrix": np.eye(4, dtype=np.float32),
                     "extra/zca_mean": np.zeros(4, np.float32)})
    self._fails("ZCA matrix")

  def test_step_order_out_of_range(self):
    self._rewrite("dd_v1.npz", step_order=np.array([0, 1, 2, 0], np.int32))
    self._fails("step order")


if __name__ == "__main__":
  absltest.main()
