"""ZCA: whitening maths, test-set application, storage round trip."""

import os
import tempfile

from absl.testing import absltest
import chex
import jax.numpy as jnp
import numpy as np

from distill_jax import distilled_set
from distill_jax.data import zca
from distill_jax.run import storage
from tests import test_utils  # pylint: disable=unused-import


def _images(n, seed):
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(12, 12))
  return (rng.normal(size=(n, 12)) @ mix).reshape(n, 2, 2, 3).astype(
      np.float32)


class ZcaTest(absltest.TestCase):

  def test_whitened_covariance_spectrum(self):
    x = _images(400, 0)
    z = zca.fit(x, reg=0.1)
    w = zca.apply(z, x).reshape(400, -1)
    cov = np.cov(w, rowvar=False, bias=True)
    f = x.reshape(400, -1)
    f = f - f.mean(1, keepdims=True)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    lam = np.clip(np.linalg.eigvalsh(np.cov(f, rowvar=False, bias=True)), 0,
                  None)
    want = np.sort(lam / (lam + 0.1 * lam.mean() * 12 / 12))
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(cov)), want,
                               atol=1e-3)
    self.assertLess(np.linalg.eigvalsh(cov).max(), 1.0)

  def test_test_set_uses_train_statistics(self):
    z = zca.fit(_images(200, 0))
    test = _images(30, 1)
    got = zca.apply(z, test)
    f = test.reshape(30, -1)
    f = f - f.mean(1, keepdims=True)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    np.testing.assert_allclose(got.reshape(30, -1), (f - z.mean) @ z.matrix,
                               rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(zca.apply(z, jnp.asarray(test)), got,
                                atol=1e-5)
    back = zca.unwhiten(z, got).reshape(30, -1)
    np.testing.assert_allclose(back, f, atol=1e-4)

  def test_storage_round_trip(self):
    z = zca.fit(_images(100, 0))
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, "distilled.npz")
      storage.save_distilled_set(path, distilled_set.DistilledSet.from_dd(
          np.zeros((1, 3, 2, 2, 3), np.float32), np.zeros((1, 3), np.int32),
          np.zeros(2, np.float32), epochs=2, mean=(0, 0, 0), std=(1, 1, 1),
          class_names=("a",), dataset="t", model={}, metadata={}, zca=z))
      z2 = storage.load_distilled_set(path).zca
    x = _images(5, 2)
    np.testing.assert_array_equal(zca.apply(z2, x), zca.apply(z, x))
    with self.assertRaisesRegex(ValueError, "without --zca"):
      zca.from_extra({})

  def test_bad_reg(self):
    with self.assertRaisesRegex(ValueError, "zca_reg=0"):
      zca.fit(_images(10, 0), reg=0)


if __name__ == "__main__":
  absltest.main()
