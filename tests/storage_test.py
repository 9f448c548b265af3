"""distilled.npz round trip and clear errors for bad files."""

import os

from absl.testing import absltest
import numpy as np

from distill_jax import storage
from tests import test_utils


def _save(path, **override):
  _, learned, labels, params0, _, _ = test_utils.tiny_problem()
  storage.save_distilled(path, learned, labels, steps=2, epochs=2,
                         mean=(0.5,), std=(0.25,), metadata={"dataset": "t"},
                         init_params=None, **override)
  return learned, labels


class StorageTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.path = os.path.join(self.dir, "distilled.npz")

  def test_round_trip(self):
    learned, labels = _save(self.path)
    d = storage.load_distilled(self.path)
    np.testing.assert_array_equal(d.x, learned["x"])
    np.testing.assert_array_equal(d.labels, labels)
    np.testing.assert_allclose(d.lrs, np.logaddexp(learned["raw_lr"], 0),
                               rtol=1e-6)
    self.assertEqual((d.steps, d.epochs), (2, 2))
    self.assertEqual(d.metadata, {"dataset": "t"})
    self.assertIsNone(d.init_params)

  def test_missing_file(self):
    with self.assertRaisesRegex(storage.DistilledFileError, "no such file"):
      storage.load_distilled(os.path.join(self.dir, "nope.npz"))

  def test_truncated(self):
    _save(self.path)
    with open(self.path, "rb") as f:
      blob = f.read()
    with open(self.path, "wb") as f:
      f.write(blob[: len(blob) // 2])
    with self.assertRaisesRegex(storage.DistilledFileError,
                                "truncated or corrupt"):
      storage.load_distilled(self.path)

  def test_not_an_npz(self):
    with open(self.path, "w") as f:
      f.write("hello")
    with self.assertRaises(storage.DistilledFileError):
      storage.load_distilled(self.path)

  def test_foreign_npz(self):
    np.savez(self.path, images=np.zeros((3, 2)))
    with self.assertRaisesRegex(storage.DistilledFileError,
                                "not a distill_jax distilled set"):
      storage.load_distilled(self.path)

  def test_pickled_npz(self):
    np.savez(self.path, format=np.array(storage.FORMAT),
             x=np.array([{"a": 1}], dtype=object))
    with self.assertRaisesRegex(storage.DistilledFileError, "pickle"):
      storage.load_distilled(self.path)

  def test_inconsistent_shapes(self):
    _save(self.path)
    with np.load(self.path) as z:
      files = dict(z)
    files["labels"] = files["labels"][:1]
    np.savez(self.path, **files)
    with self.assertRaisesRegex(storage.DistilledFileError, "labels shape"):
      storage.load_distilled(self.path)

  def test_newer_version(self):
    _save(self.path)
    with np.load(self.path) as z:
      files = dict(z)
    files["format_version"] = np.array(99)
    np.savez(self.path, **files)
    with self.assertRaisesRegex(storage.DistilledFileError, "newer"):
      storage.load_distilled(self.path)

  def test_nan(self):
    _save(self.path)
    with np.load(self.path) as z:
      files = dict(z)
    files["x"][0, 0, 0, 0, 0] = np.nan
    np.savez(self.path, **files)
    with self.assertRaisesRegex(storage.DistilledFileError, "NaN"):
      storage.load_distilled(self.path)

  def test_atomic_write_keeps_old_file_on_failure(self):
    storage.write_json(self.path, {"a": 1})

    def boom(f):
      f.write("partial")
      raise RuntimeError("disk full")
    with self.assertRaises(RuntimeError):
      storage.atomic_write(self.path, boom, mode="w")
    with open(self.path) as f:
      self.assertIn('"a": 1', f.read())
    self.assertEqual(os.listdir(self.dir), ["distilled.npz"])


if __name__ == "__main__":
  absltest.main()
