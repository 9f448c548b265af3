"""Architectures: parameter counts of the reference networks, shapes."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import config as config_lib
from distill_jax.nn import models


class ModelsTest(parameterized.TestCase):

  @parameterized.parameters(
      ("lenet", (28, 28, 1), 10, 61_706),
      ("alexcifarnet", (32, 32, 3), 10, 1_756_426),
      ("convnet", (32, 32, 3), 10, 320_010),
      ("convnet", (32, 32, 3), 100, 504_420),
  )
  def test_parameter_counts(self, arch, shape, classes, expected):
    cfg = config_lib.DistillConfig(arch=arch)
    model = models.build(cfg, shape, classes)
    params = jax.eval_shape(model.init, jax.random.key(0))
    self.assertEqual(models.num_params(params), expected)

  @parameterized.product(
      arch=("lenet", "convnet", "mlp"),
      init=config_lib.INITS)
  def test_forward_shapes_and_finite(self, arch, init):
    cfg = config_lib.DistillConfig(arch=arch, init=init, width=8, depth=2)
    model = models.build(cfg, (28, 28, 1), 10)
    params = model.init(jax.random.key(0))
    out = model.apply(params, jnp.ones((3, 28, 28, 1)))
    chex.assert_shape(out, (3, 10))
    chex.assert_tree_all_finite(out)

  @parameterized.parameters("instance", "batch", "none")
  def test_convnet_norms(self, norm):
    cfg = config_lib.DistillConfig(arch="convnet", width=4, depth=2, norm=norm,
                                   pooling="max")
    model = models.build(cfg, (8, 8, 1), 3)
    params = model.init(jax.random.key(1))
    chex.assert_shape(model.apply(params, jnp.ones((2, 8, 8, 1))), (2, 3))

  def test_xavier_scale(self):
    cfg = config_lib.DistillConfig(arch="mlp", mlp_hidden=(400,))
    params = models.build(cfg, (20, 20, 1), 10).init(jax.random.key(0))
    w = np.asarray(params["Dense_0"]["kernel"])
    self.assertAlmostEqual(w.std(), np.sqrt(2.0 / (400 + 400)), delta=2e-3)
    self.assertTrue(np.all(np.asarray(params["Dense_0"]["bias"]) == 0))

  @parameterized.parameters(3, 4, 5)
  def test_lrn_matches_loop_reference(self, size):
    """The band-matmul LRN equals the per-channel definition (a Python loop
    over the zero-padded window with `**`), with its first and second
    derivatives."""
    alpha, beta, k = 0.3, 0.75, 1.0

    def reference(x):
      c = x.shape[-1]
      outs = []
      for ch in range(c):
        lo, hi = max(0, ch - size // 2), min(c, ch + (size - 1) // 2 + 1)
        win = jnp.sum(jnp.square(x[..., lo:hi]), axis=-1)
        outs.append(x[..., ch] / (k + alpha / size * win) ** beta)
      return jnp.stack(outs, axis=-1)

    def lrn(x):
      return models.local_response_norm(x, size, alpha=alpha, beta=beta, k=k)
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 7)) * 2.0
    chex.assert_trees_all_close(lrn(x), reference(x), rtol=1e-5, atol=1e-6)
    v = jax.random.normal(jax.random.key(1), x.shape)

    def grad_of(f):
      return jax.grad(lambda y: jnp.sum(jnp.sin(f(y)) * v))
    chex.assert_trees_all_close(grad_of(lrn)(x), grad_of(reference)(x),
                                rtol=1e-4, atol=1e-5)
    hvp = lambda f: jax.jvp(grad_of(f), (x,), (v,))[1]  # second order.
    chex.assert_trees_all_close(hvp(lrn), hvp(reference), rtol=1e-3,
                                atol=1e-4)

  def test_bad_arch_and_shape(self):
    with self.assertRaisesRegex(ValueError, "Unknown arch"):
      models.build(config_lib.DistillConfig(), (28, 28, 1), 10, arch="vit")
    with self.assertRaisesRegex(ValueError, "alexcifarnet needs 32x32"):
      models.build(config_lib.DistillConfig(arch="alexcifarnet"),
                   (28, 28, 1), 10)


if __name__ == "__main__":
  absltest.main()
