"""Architectures: parameter counts of the reference networks, shapes."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import config as config_lib
from distill_jax import models


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

  def test_bad_arch_and_shape(self):
    with self.assertRaisesRegex(ValueError, "Unknown arch"):
      models.build(config_lib.DistillConfig(), (28, 28, 1), 10, arch="vit")
    with self.assertRaisesRegex(ValueError, "alexcifarnet needs 32x32"):
      models.build(config_lib.DistillConfig(arch="alexcifarnet"),
                   (28, 28, 1), 10)


if __name__ == "__main__":
  absltest.main()
