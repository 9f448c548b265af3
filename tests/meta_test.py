"""Meta-gradient correctness: finite differences, Python loop, remat, vmap."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp

from distill_jax import distilled
from distill_jax import inner
from distill_jax import meta
from distill_jax import unroll
from tests import test_utils


def _python_loop_loss(model, learned, labels, params0, real_x, real_y,
                      epochs):
  """Reference: the unrolled steps as an explicit Python loop."""
  params = params0
  lrs = distilled.lrs(learned)
  steps = learned["x"].shape[0]
  for t in range(steps * epochs):
    s = t % steps
    params = inner.step(model.apply, params, learned["x"][s], labels[s],
                        lrs[t])
  return inner.loss(model.apply, params, real_x, real_y)


class InnerTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_step_is_gradient_descent(self):
    model, learned, labels, params0, _, _ = test_utils.tiny_problem()
    p0 = jax.tree.map(lambda a: a[0], params0)
    x, y = learned["x"][0], labels[0]
    step = self.variant(functools.partial(inner.step, model.apply))
    p1 = step(p0, x, y, 0.5)
    g = jax.grad(inner.loss, argnums=1)(model.apply, p0, x, y)
    expected = jax.tree.map(lambda p, g: p - 0.5 * g, p0, g)
    chex.assert_trees_all_close(p1, expected, atol=1e-6)
    chex.assert_trees_all_equal_shapes(p1, p0)

  def test_soft_labels_match_one_hot(self):
    model, learned, labels, params0, _, _ = test_utils.tiny_problem()
    p0 = jax.tree.map(lambda a: a[0], params0)
    hard = inner.loss(model.apply, p0, learned["x"][0], labels[0])
    soft = inner.loss(model.apply, p0, learned["x"][0],
                      jax.nn.one_hot(labels[0], test_utils.NUM_CLASSES))
    chex.assert_trees_all_close(hard, soft, atol=1e-6)


class UnrollTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_scan_equals_python_loop(self):
    model, learned, labels, params0, rx, ry = test_utils.tiny_problem()
    p0 = jax.tree.map(lambda a: a[0], params0)
    f = self.variant(functools.partial(meta.loss, apply_fn=model.apply,
                                       epochs=2))
    got = f(learned, labels, p0, rx, ry)
    want = _python_loop_loss(model, learned, labels, p0, rx, ry, 2)
    chex.assert_trees_all_close(got, want, rtol=1e-5)
    g = jax.grad(f)(learned, labels, p0, rx, ry)
    g_ref = jax.grad(_python_loop_loss, argnums=1)(model, learned, labels, p0,
                                                   rx, ry, 2)
    chex.assert_trees_all_close(g, g_ref, rtol=1e-4, atol=1e-6)

  @parameterized.parameters("full", "dots", "dots_no_batch")
  def test_remat_leaves_gradients_unchanged(self, policy):
    model, learned, labels, params0, rx, ry = test_utils.tiny_problem()
    p0 = jax.tree.map(lambda a: a[0], params0)

    def grad(remat):
      return jax.jit(jax.grad(functools.partial(
          meta.loss, apply_fn=model.apply, epochs=2, remat=remat)))(
              learned, labels, p0, rx, ry)
    chex.assert_trees_all_close(grad(policy), grad("none"), rtol=1e-5,
                                atol=1e-7)

  def test_unknown_policy_is_rejected(self):
    with self.assertRaisesRegex(ValueError, "remat='bogus'"):
      unroll.wrap(lambda c, x: (c, None), "bogus")


class MetaGradTest(chex.TestCase):

  def test_matches_finite_differences(self):
    model, learned, labels, params0, rx, ry = test_utils.tiny_problem()
    p0 = jax.tree.map(lambda a: a[0], params0)

    def f(x, raw_lr):
      return meta.loss({"x": x, "raw_lr": raw_lr}, labels, p0, rx, ry,
                       apply_fn=model.apply, epochs=2)
    chex.assert_numerical_grads(f, (learned["x"], learned["raw_lr"]),
                                order=1, atol=2e-2, rtol=2e-2)

  @parameterized.parameters(
      (4, 0),  # one vmap over all inits
      (4, 2),  # two groups of two: vmap inside, lax.map across
      (4, 1),  # one init at a time
      (4, 3),  # does not divide: falls back to one vmap
      (1, 0),  # single init: no vmap at all
  )
  def test_vmap_over_inits_equals_loop(self, num_inits, init_group):
    model, learned, labels, params0, rx, ry = test_utils.tiny_problem(
        test_utils.tiny_config(num_inits=num_inits))
    loss, grads = meta.value_and_grad(learned, labels, params0, rx, ry,
                                      apply_fn=model.apply, epochs=2,
                                      init_group=init_group)
    n = jax.tree.leaves(params0)[0].shape[0]
    losses, gs = [], []
    for j in range(n):
      pj = jax.tree.map(lambda a, j=j: a[j], params0)
      l, g = jax.value_and_grad(meta.loss)(learned, labels, pj, rx, ry,
                                           apply_fn=model.apply, epochs=2)
      losses.append(l)
      gs.append(g)
    chex.assert_trees_all_close(loss, jnp.mean(jnp.stack(losses)), rtol=1e-5)
    mean_g = jax.tree.map(lambda *a: jnp.mean(jnp.stack(a), 0), *gs)
    chex.assert_trees_all_close(grads, mean_g, rtol=1e-4, atol=1e-7)
    chex.assert_tree_all_finite(grads)

  def test_resolve_group(self):
    self.assertEqual(meta.resolve_group(16, 4, False), 4)
    self.assertEqual(meta.resolve_group(16, 0, False), 16)
    self.assertEqual(meta.resolve_group(16, 5, False), 16)
    self.assertEqual(meta.resolve_group(16, -1, True), 16)
    self.assertEqual(meta.resolve_group(8, -1, False),
                     4 if jax.default_backend() == "cpu" else 8)

  def test_poison_targets(self):
    y = jnp.array([0, 1, 2, 0])
    chex.assert_trees_all_equal(meta.real_targets(y, "poison", 0, 2),
                                jnp.array([2, 1, 2, 2]))
    chex.assert_trees_all_equal(meta.real_targets(y, "ce", 0, 2), y)


if __name__ == "__main__":
  absltest.main()


class ChunkedLossTest(chex.TestCase):

  def test_chunked_equals_full_value_and_grad(self):
    model, learned, labels, params0, rx, ry = test_utils.tiny_problem()
    p0 = jax.tree.map(lambda a: a[0], params0)
    for chunk in (0, 3, 4, 16, 100):  # 3 leaves a remainder of 1 (n = 16).
      got = jax.value_and_grad(inner.chunked_loss, argnums=1)(
          model.apply, p0, rx, ry, chunk)
      want = jax.value_and_grad(inner.loss, argnums=1)(model.apply, p0, rx, ry)
      chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)

  def test_meta_gradient_unchanged_by_chunking(self):
    model, learned, labels, params0, rx, ry = test_utils.tiny_problem()
    a = meta.value_and_grad(learned, labels, params0, rx, ry,
                            apply_fn=model.apply, epochs=2, real_chunk=0)
    b = meta.value_and_grad(learned, labels, params0, rx, ry,
                            apply_fn=model.apply, epochs=2, real_chunk=4)
    chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-7)
