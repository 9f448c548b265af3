"""Augmentation: deterministic per key, differentiable, geometrically right."""

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.data import augment
from tests import test_utils  # pylint: disable=unused-import


class AugmentTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.x = jax.random.normal(jax.random.key(0), (6, 8, 8, 2))

  def test_deterministic_given_key(self):
    f = jax.jit(lambda k, x: augment.apply(k, x, "flip_rotate"))
    a = f(jax.random.key(3), self.x)
    chex.assert_trees_all_equal(a, f(jax.random.key(3), self.x))
    chex.assert_shape(a, self.x.shape)
    outs = {float(jnp.sum(f(jax.random.key(i), self.x))) for i in range(6)}
    self.assertGreater(len(outs), 1)

  def test_differentiable(self):
    w = jax.random.normal(jax.random.key(1), self.x.shape)
    for strategy in ("flip", "rotate", "flip_rotate"):
      g = jax.grad(lambda x, s=strategy: jnp.sum(
          w * augment.apply(jax.random.key(2), x, s)))(self.x)
      chex.assert_tree_all_finite(g)
      self.assertGreater(float(jnp.abs(g).sum()), 0.0)

  def test_rotation_geometry(self):
    chex.assert_trees_all_close(
        augment.rotate_by(self.x, jnp.zeros(6)), self.x, atol=1e-5)
    r = augment.rotate_by(self.x, jnp.full(6, np.pi / 2))
    chex.assert_trees_all_close(
        r[:, 1:-1, 1:-1], jnp.rot90(self.x, k=-1, axes=(1, 2))[:, 1:-1, 1:-1],
        atol=1e-4)
    a = augment.rotate(jax.random.key(0), self.x, 15.0)
    self.assertLess(float(jnp.abs(a - self.x).mean()),
                    float(jnp.abs(self.x).mean()))

  def test_flip_is_per_image(self):
    x = jnp.broadcast_to(jnp.arange(8.0)[None, None, :, None], (64, 2, 8, 1))
    f = augment.flip(jax.random.key(0), x)
    flipped = np.asarray(f[:, 0, 0, 0] == 7.0)
    self.assertTrue(0 < flipped.sum() < 64)

  def test_none_and_errors(self):
    chex.assert_trees_all_equal(augment.apply(jax.random.key(0), self.x,
                                              "none"), self.x)
    with self.assertRaisesRegex(ValueError, "unknown operations"):
      augment.apply(jax.random.key(0), self.x, "flip_crop")


if __name__ == "__main__":
  absltest.main()
