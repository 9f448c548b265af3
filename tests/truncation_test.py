"""Window sampling: bounds, modes, per-init independence, redraw schedule."""

from absl.testing import absltest
import chex
import jax
import numpy as np

from distill_jax.core import truncation
from tests import test_utils  # pylint: disable=unused-import


class TruncationTest(absltest.TestCase):

  def test_random_bounds_cover_range(self):
    s = np.asarray(truncation.sample_starts(
        jax.random.key(0), 2000, mode="random", total=10, window=3))
    self.assertEqual(s.min(), 0)
    self.assertEqual(s.max(), 7)
    self.assertEqual(len(np.unique(s)), 8)

  def test_end_and_full(self):
    chex.assert_trees_all_equal(truncation.sample_starts(
        jax.random.key(0), 3, mode="end", total=10, window=3),
                                np.full(3, 7, np.int32))
    chex.assert_trees_all_equal(truncation.sample_starts(
        jax.random.key(0), 3, mode="full", total=10, window=3),
                                np.zeros(3, np.int32))
    self.assertEqual(truncation.window_length("full", 10, 3), 10)
    self.assertEqual(truncation.window_length("random", 10, 3), 3)

  def test_inits_are_independent(self):
    s = np.asarray(truncation.sample_starts(
        jax.random.key(1), 64, mode="random", total=100, window=10))
    self.assertGreater(len(np.unique(s)), 20)

  def test_redraw_every_k_steps(self):
    key = jax.random.key(0)

    def draw(step, k):
      return np.asarray(truncation.sample_starts(
          truncation.window_key(key, step, k), 8, mode="random", total=100,
          window=10))

    chex.assert_trees_all_equal(draw(10, 5), draw(14, 5))
    self.assertFalse(np.array_equal(draw(14, 5), draw(15, 5)))
    self.assertFalse(np.array_equal(draw(3, 1), draw(4, 1)))

  def test_bad_settings_name_the_fix(self):
    with self.assertRaisesRegex(ValueError, "window=30 must be in"):
      truncation.validate("random", 20, 30)
    with self.assertRaisesRegex(ValueError, "truncation='cyclic'"):
      truncation.validate("cyclic", 20, 10)
    with self.assertRaisesRegex(ValueError, "redraw_every=0"):
      truncation.validate("random", 20, 10, 0)


if __name__ == "__main__":
  absltest.main()
