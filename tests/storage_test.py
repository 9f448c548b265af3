"""distilled.npz (format version 2) round trip, clear errors for bad files,
and durable atomic writes."""

import json
import os
from unittest import mock

from absl.testing import absltest
import chex
import numpy as np

from distill_jax import distilled_set
from distill_jax.data import zca as zca_lib
from distill_jax.run import storage
from tests import test_utils

DistilledSet = distilled_set.DistilledSet


def _dd_set(**override) -> DistilledSet:
  _, learned, labels, params0, _, _ = test_utils.tiny_problem()
  kw = dict(epochs=2, mean=(0.5,), std=(0.25,), class_names=("a", "b", "c"),
            dataset="t", model={"arch": "mlp", "mlp_hidden": [8]},
            metadata={"config": {"steps": 2}},
            init_params={"dense": {"w": np.arange(6.0).reshape(2, 3)}})
  kw.update(override)
  return DistilledSet.from_dd(np.asarray(learned["x"]), np.asarray(labels),
                              np.asarray(learned["raw_lr"]), **kw)


def _rat_set() -> DistilledSet:
  """Soft labels, learned lrs, ZCA and blocks: every optional field."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 2, 2, 2, 1)).astype(np.float32)
  return DistilledSet.from_per_class(
      x, rng.uniform(size=(3, 2, 3)).astype(np.float32),
      raw_lr=np.float32([0.1, -0.2, 0.3]), block=[[0, 1]] * 3, mean=(0.4,),
      std=(0.3,), class_names=("cat", "dog", "owl"), dataset="pets",
      method="boost_dd", model={"arch": "convnet", "width": 4},
      metadata={"block_ipc": 1},
      zca=zca_lib.fit(rng.normal(size=(20, 2, 2, 1))))


class RoundTripTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.path = os.path.join(self.create_tempdir().full_path, "d.npz")

  def test_dd(self):
    want = _dd_set()
    storage.save_distilled_set(self.path, want)
    got = storage.load_distilled_set(self.path)
    chex.assert_trees_all_equal(got, want)  # arrays, zca, init_params.
    self.assertEqual(
        (got.class_names, got.dataset, got.method, got.model, got.metadata,
         got.format_version),
        (("a", "b", "c"), "t", "dd", {"arch": "mlp", "mlp_hidden": [8]},
         {"config": {"steps": 2}}, 2))
    dd = got.as_dd()
    _, learned, labels, _, _, _ = test_utils.tiny_problem()
    np.testing.assert_array_equal(dd.x, learned["x"])
    np.testing.assert_array_equal(dd.labels, labels)
    self.assertEqual((dd.steps, dd.epochs), (2, 2))
    np.testing.assert_allclose(dd.lrs, np.logaddexp(learned["raw_lr"], 0),
                               rtol=1e-6)
    with np.load(self.path) as z:  # the readable copy of the lrs.
      np.testing.assert_array_equal(z["lrs"], got.lrs)

  def test_all_optional_fields(self):
    want = _rat_set()
    storage.save_distilled_set(self.path, want)
    got = storage.load_distilled_set(self.path)
    chex.assert_trees_all_equal(got, want)
    self.assertIsNone(got.schedule)
    self.assertEqual(got.class_names, ("cat", "dog", "owl"))
    self.assertEqual((got.method, got.model), ("boost_dd",
                                               {"arch": "convnet",
                                                "width": 4}))
    view = got.per_class()
    np.testing.assert_array_equal(view.block, [[0, 1]] * 3)
    self.assertEqual(set(view.learned()), {"x", "y", "raw_lr"})

  def test_soft_dd_labels_and_views(self):
    soft = np.random.default_rng(1).uniform(size=(2, 3, 3)).astype(
        np.float32)
    _, learned, labels, _, _, _ = test_utils.tiny_problem()
    s = DistilledSet.from_dd(np.asarray(learned["x"]), labels,
                             np.asarray(learned["raw_lr"]), epochs=2,
                             soft_labels=soft, mean=(0.5,), std=(0.25,),
                             class_names=("a", "b", "c"), dataset="t",
                             model={}, metadata={})
    storage.save_distilled_set(self.path, s)
    dd = storage.load_distilled_set(self.path).as_dd()
    np.testing.assert_array_equal(dd.labels, labels)
    np.testing.assert_array_equal(dd.soft_labels, soft)
    np.testing.assert_array_equal(dd.learned()["y"], soft)

  def test_unbalanced_per_class_view(self):
    s = _dd_set()
    s = s.replace(labels=np.int32([0, 0, 0, 1, 2, 2]))
    with self.assertRaisesRegex(ValueError, r"\[3, 1, 2\]"):
      s.per_class()

  def test_writer_refuses_bad_sets_and_writes_nothing(self):
    s = _dd_set()
    bad = {
        "NaN or infinite": s.replace(images=np.full_like(s.images, np.nan)),
        "outside the 3 classes": s.replace(labels=s.labels + 5),
        "do not fit the 4 inner steps": s.replace(raw_lr=s.raw_lr[:3]),
        "integer indices into the 6": s.replace(schedule=s.schedule + 6),
        "method 'x'": s.replace(method="x"),
        "not JSON-serialisable": s.replace(metadata={"a": object()}),
    }
    for pattern, value in bad.items():
      with self.assertRaisesRegex(ValueError, f"Not writing .*{pattern}"):
        storage.save_distilled_set(self.path, value)
      self.assertFalse(os.path.exists(self.path))


class BadFileTest(test_utils.BadDistilledFileAsserts,
                  absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.path = os.path.join(self.dir, "distilled.npz")
    storage.save_distilled_set(self.path, _rat_set())

  def _rewrite(self, **changes):
    test_utils.rewrite_npz(self.path, self.path, **changes)

  def test_missing_file(self):
    self.path = os.path.join(self.dir, "nope.npz")
    self._fails("no such file")

  def test_truncated(self):
    with open(self.path, "rb") as f:
      blob = f.read()
    with open(self.path, "wb") as f:
      f.write(blob[: len(blob) // 2])
    self._fails("truncated or corrupt")

  def test_not_an_npz(self):
    with open(self.path, "w") as f:
      f.write("hello")
    self._fails("not a readable .npz")

  def test_foreign_npz(self):
    np.savez(self.path, images=np.zeros((3, 2)))
    self._fails("not a distill_jax distilled set")

  def test_pickled_npz(self):
    np.savez(self.path, format=np.array(storage.FORMAT),
             images=np.array([{"a": 1}], dtype=object))
    self._fails("pickle")

  def test_newer_version(self):
    self._rewrite(format_version=np.array(99))
    self._fails("format version 99 is newer")

  def test_missing_field(self):
    self._rewrite(class_names=None)
    self._fails(r"missing fields \['class_names'\]")

  def test_inconsistent_labels(self):
    self._rewrite(labels=np.zeros((6, 2), np.int32))
    self._fails(r"labels int32\[6, 2\] do not match 6 images")

  def test_inconsistent_soft_labels(self):
    self._rewrite(soft_labels=np.zeros((6, 2), np.float32))
    self._fails(r"soft_labels shape \(6, 2\) does not match 6 images and 3")

  def test_nan(self):
    self._rewrite(raw_lr=np.float32([0.1, np.nan, 0.3]),
                  lrs=np.float32([0.1, np.nan, 0.3]))
    self._fails("NaN or infinite")

  def test_lrs_without_raw_lr(self):
    self._rewrite(raw_lr=None)
    self._fails("raw_lr and lrs must be stored together")

  def test_half_a_zca(self):
    self._rewrite(**{"zca/mean": None})
    self._fails("only one of zca/matrix and zca/mean")

  def test_bad_metadata(self):
    self._rewrite(metadata=np.array("{not json"))
    self._fails("metadata is not JSON")

  def test_bad_block(self):
    self._rewrite(block=np.int32([0, 1]))
    self._fails("block has shape")


class AtomicWriteTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.path = os.path.join(self.dir, "out.json")

  def test_keeps_old_file_on_failure(self):
    storage.write_json(self.path, {"a": 1})

    def boom(f):
      f.write("partial")
      raise RuntimeError("disk full")
    with self.assertRaises(RuntimeError):
      storage.atomic_write(self.path, boom, mode="w")
    with open(self.path) as f:
      self.assertEqual(json.load(f), {"a": 1})
    self.assertEqual(os.listdir(self.dir), ["out.json"])

  def test_fsyncs_file_before_rename_and_folder_after(self):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
      kind = "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"
      if kind == "file":  # the temporary file, complete at this point.
        with open(f"/proc/self/fd/{fd}") as f:
          kind += ":" + f.read()
      events.append(kind)
      real_fsync(fd)

    def replace(src, dst):
      events.append("rename")
      real_replace(src, dst)
    with mock.patch.object(os, "fsync", fsync), mock.patch.object(
        os, "replace", replace):
      storage.atomic_write(self.path, lambda f: f.write("done"), mode="w")
    self.assertEqual(events, ["file:done", "rename", "dir"])
    with open(self.path) as f:
      self.assertEqual(f.read(), "done")


if __name__ == "__main__":
  absltest.main()
