"""The jitted outer step: updates, shapes, no recompilation, init modes."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.core import meta
from distill_jax.core import outer as core_outer
from distill_jax.methods import dd as outer
from distill_jax.nn import inits
from tests import test_utils


class OuterStepTest(parameterized.TestCase):

  def tearDown(self):
    super().tearDown()
    chex.clear_trace_counter()

  def test_no_recompilation_across_steps(self):
    cfg = test_utils.tiny_config()
    model, learned, labels, _, rx, ry = test_utils.tiny_problem(cfg)
    tx = outer.optimizer(cfg, steps_per_epoch=4)
    state = outer.init_state(learned, tx)
    x0 = np.asarray(learned["x"]).copy()
    traced = chex.assert_max_traces(n=1)(meta.value_and_grad)
    orig = meta.value_and_grad
    meta.value_and_grad = traced
    try:
      step = outer.make_step(cfg, model.apply, model.init, tx)
      key = jax.random.key(0)
      for i in range(4):
        idx = jnp.asarray(np.random.default_rng(i).permutation(16)[:16],
                          jnp.int32)
        state, metrics = step(state, labels, rx, ry, idx, key, {})
    finally:
      meta.value_and_grad = orig
    self.assertEqual(int(state.step), 4)
    chex.assert_tree_all_finite(state.learned)
    chex.assert_shape(state.learned["x"], x0.shape)
    self.assertFalse(np.allclose(np.asarray(state.learned["x"]), x0))
    self.assertEqual(set(metrics), {"loss", "grad_norm", "lr_mean",
                                    "clip_ema"})

  def test_meta_loss_decreases(self):
    cfg = test_utils.tiny_config(outer_lr=0.05)
    ds = test_utils.tiny_dataset()
    model, learned, labels, _, _, _ = test_utils.tiny_problem(cfg)
    tx = outer.optimizer(cfg, steps_per_epoch=4)
    state = outer.init_state(learned, tx)
    step = outer.make_step(cfg, model.apply, model.init, tx)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    losses = []
    for i in range(30):
      idx = jnp.asarray(np.random.default_rng(i).permutation(60)[:16])
      state, m = step(state, labels, x, y, idx, jax.random.key(0), {})
      losses.append(float(m["loss"]))
    self.assertLess(np.mean(losses[-5:]), np.mean(losses[:5]) - 0.1)

  def test_frozen_lr(self):
    cfg = test_utils.tiny_config(learn_lr=False)
    model, learned, labels, _, rx, ry = test_utils.tiny_problem(cfg)
    raw0 = np.asarray(learned["raw_lr"]).copy()
    tx = outer.optimizer(cfg, steps_per_epoch=4)
    step = outer.make_step(cfg, model.apply, model.init, tx)
    state, _ = step(outer.init_state(learned, tx), labels, rx, ry,
                    jnp.arange(16), jax.random.key(0), {})
    np.testing.assert_array_equal(np.asarray(state.learned["raw_lr"]), raw0)

  def test_ema_clipping_bounds_the_image_gradient(self):
    g = jnp.ones((2, 3))
    out, ema, n = core_outer.clip_by_ema(g, jnp.float32(-1.0), 0.9)
    chex.assert_trees_all_close(out, g)  # first call: ema = n, no clipping
    chex.assert_trees_all_close(ema, n)
    big = 10 * g
    out, ema2, _ = core_outer.clip_by_ema(big, ema, 0.9)
    self.assertLessEqual(float(jnp.linalg.norm(out)), 2 * float(ema2) + 1e-5)

  @parameterized.parameters("fixed", "random", "fixed_pretrained",
                            "random_pretrained")
  def test_init_modes(self, mode):
    model, _, _, params0, _, _ = test_utils.tiny_problem()
    p = jax.tree.map(lambda a: a[0], params0)
    source = {"fixed": p, "pool": params0, "pool_train": 1}
    a = inits.sample(jax.random.key(0), 3, mode=mode, model_init=model.init,
                     source=source)
    b = inits.sample(jax.random.key(1), 3, mode=mode, model_init=model.init,
                     source=source)
    chex.assert_trees_all_equal_shapes(
        a, jax.tree.map(lambda x: jnp.stack([x] * 3), p))
    same = jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.all(u == v)),
                                        a, b))
    self.assertEqual(all(same), mode != "random")


if __name__ == "__main__":
  absltest.main()
