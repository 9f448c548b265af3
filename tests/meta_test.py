"""The bilevel core (DD configuration): inner step, unroll, meta-gradient.

References: an explicit Python loop for the unroll, per-initialisation
gradients for the vmapped and grouped meta-gradient, the whole-batch loss for
the chunked one. Finite-difference checks of every gradient path are in
gradcheck_test.py.
"""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import optax

from distill_jax.core import inner
from distill_jax.core import meta
from distill_jax.core import schedule
from distill_jax.core import unroll
from distill_jax.methods import dd
from distill_jax.methods import dd_data as distilled
from tests import test_utils


def _problem(model, epochs=2, **kw):
  return meta.Problem(schedule=schedule.Ordered(epochs), apply_fn=model.apply,
                      **kw)


def _loss(model, learned, labels, p0, rx, ry, epochs=2, **kw):
  return meta.loss(learned, labels, p0, jax.random.key(0), None, rx, ry,
                   problem=_problem(model, epochs, **kw))


def _python_loop_loss(model, learned, labels, params0, real_x, real_y,
                      epochs):
  """Reference: the unrolled steps as an explicit Python loop."""
  params = params0
  lrs = distilled.lrs(learned)
  steps = learned["x"].shape[0]
  for t in range(steps * epochs):
    s = t % steps
    g = jax.grad(inner.loss, argnums=1)(model.apply, params,
                                        learned["x"][s], labels[s])
    params = jax.tree.map(lambda p, g, t=t: p - lrs[t] * g, params, g)
  return inner.loss(model.apply, params, real_x, real_y)


class InnerTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_gd_step_is_gradient_descent(self):
    model, learned, labels, params0, _, _ = test_utils.tiny_problem()
    p0 = jax.tree.map(lambda a: a[0], params0)
    x, y = learned["x"][0], labels[0]
    step = self.variant(functools.partial(inner.gd_step, model.apply))
    p1 = step(p0, x, y, 0.5)
    g = jax.grad(inner.loss, argnums=1)(model.apply, p0, x, y)
    expected = jax.tree.map(lambda p, g: p - 0.5 * g, p0, g)
    chex.assert_trees_all_close(p1, expected, atol=1e-6)
    chex.assert_trees_all_equal_shapes(p1, p0)

  def test_step_with_optax_momentum_matches_optax_sgd(self):
    model, learned, labels, params0, _, _ = test_utils.tiny_problem()
    p0 = jax.tree.map(lambda a: a[0], params0)
    tx = optax.trace(decay=0.9)
    ref = optax.sgd(0.1, momentum=0.9)
    s, ref_state, p_ref = inner.init_state(p0, tx), ref.init(p0), p0
    for t in range(3):
      x, y = learned["x"][t % 2], labels[t % 2]
      s = inner.step(s, x, y, None, 0.1, apply_fn=model.apply, tx=tx)
      g = jax.grad(inner.loss, argnums=1)(model.apply, p_ref, x, y)
      u, ref_state = ref.update(g, ref_state, p_ref)
      p_ref = optax.apply_updates(p_ref, u)
    chex.assert_trees_all_close(s.params, p_ref, rtol=1e-5, atol=1e-6)

  def test_soft_labels_match_one_hot_and_weights_scale(self):
    model, learned, labels, params0, _, _ = test_utils.tiny_problem()
    p0 = jax.tree.map(lambda a: a[0], params0)
    x = learned["x"][0]
    hard = inner.loss(model.apply, p0, x, labels[0])
    soft = inner.loss(model.apply, p0, x,
                      jax.nn.one_hot(labels[0], test_utils.NUM_CLASSES))
    chex.assert_trees_all_close(hard, soft, atol=1e-6)
    half = inner.loss(model.apply, p0, x, labels[0],
                      jnp.full(labels[0].shape, 0.5))
    chex.assert_trees_all_close(half, 0.5 * hard, rtol=1e-6)


class UnrollTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_scan_equals_python_loop(self):
    model, learned, labels, params0, rx, ry = test_utils.tiny_problem()
    p0 = jax.tree.map(lambda a: a[0], params0)
    f = self.variant(functools.partial(_loss, model))
    got = f(learned, labels, p0, rx, ry)
    want = _python_loop_loss(model, learned, labels, p0, rx, ry, 2)
    chex.assert_trees_all_close(got, want, rtol=1e-5)
    g = jax.grad(f)(learned, labels, p0, rx, ry)
    g_ref = jax.grad(_python_loop_loss, argnums=1)(model, learned, labels, p0,
                                                   rx, ry, 2)
    chex.assert_trees_all_close(g, g_ref, rtol=1e-4, atol=1e-6)

  def test_burn_in_plus_window_equals_full_unroll_value(self):
    model, learned, labels, params0, rx, ry = test_utils.tiny_problem()
    p0 = jax.tree.map(lambda a: a[0], params0)
    full = _loss(model, learned, labels, p0, rx, ry)
    for start in (0, 1, 3):
      prob = _problem(model, window=4 - start)
      got = meta.loss(learned, labels, p0, jax.random.key(0),
                      jnp.int32(start), rx, ry, problem=prob)
      chex.assert_trees_all_close(got, full, rtol=1e-5)

  def test_burn_in_gets_no_gradient(self):
    # With a window of the last step only, the images of step 0 (seen at
    # inner steps 0 and 2, both in the burn-in) get no gradient.
    model, learned, labels, params0, rx, ry = test_utils.tiny_problem()
    p0 = jax.tree.map(lambda a: a[0], params0)
    prob = _problem(model, window=1)
    g = jax.grad(meta.loss)(learned, labels, p0, jax.random.key(0),
                            jnp.int32(3), rx, ry, problem=prob)
    chex.assert_trees_all_equal(g["x"][0], jnp.zeros_like(g["x"][0]))
    self.assertGreater(float(jnp.abs(g["x"][1]).sum()), 0.0)
    self.assertEqual(float(jnp.abs(g["raw_lr"][:3]).sum()), 0.0)

  @parameterized.parameters("full", "dots", "dots_no_batch")
  def test_remat_leaves_gradients_unchanged(self, policy):
    model, learned, labels, params0, rx, ry = test_utils.tiny_problem()
    p0 = jax.tree.map(lambda a: a[0], params0)

    def grad(remat):
      return jax.jit(jax.grad(functools.partial(_loss, model, remat=remat)))(
          learned, labels, p0, rx, ry)
    chex.assert_trees_all_close(grad(policy), grad("none"), rtol=1e-5,
                                atol=1e-7)

  def test_unknown_policy_is_rejected(self):
    with self.assertRaisesRegex(ValueError, "remat='bogus'"):
      unroll.wrap(lambda c, x: (c, None), "bogus")


class MetaGradTest(chex.TestCase):

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
    n = jax.tree.leaves(params0)[0].shape[0]
    keys = jax.random.split(jax.random.key(1), n)
    prob = _problem(model)
    loss, grads = meta.value_and_grad(learned, labels, params0, keys, None,
                                      rx, ry, problem=prob,
                                      init_group=init_group)
    losses, gs = [], []
    for j in range(n):
      pj = jax.tree.map(lambda a, j=j: a[j], params0)
      l, g = jax.value_and_grad(meta.loss)(learned, labels, pj, keys[j], None,
                                           rx, ry, problem=prob)
      losses.append(l)
      gs.append(g)
    chex.assert_trees_all_close(loss, jnp.mean(jnp.stack(losses)), rtol=1e-5)
    mean_g = jax.tree.map(lambda *a: jnp.mean(jnp.stack(a), 0), *gs)
    chex.assert_trees_all_close(grads, mean_g, rtol=1e-4, atol=1e-7)
    chex.assert_tree_all_finite(grads)

  def test_resolve_group(self):
    for (num_inits, init_group, sharded), want in {
        (16, 4, False): 4,  # the default: groups of 4,
        (8, 4, False): 4,
        (16, 2, False): 2,
        (3, 4, False): 3,  # all when the group is not smaller,
        (4, 4, False): 4,
        (1, 4, False): 1,
        (16, 5, False): 16,  # or does not divide num_inits,
        (16, 4, True): 16,  # or the inits are sharded;
        (16, 0, False): 16,  # 0 = all at once.
        (3, 0, False): 3,
    }.items():
      self.assertEqual(meta.resolve_group(num_inits, init_group, sharded),
                       want, (num_inits, init_group, sharded))

  def test_poison_targets(self):
    y = jnp.array([0, 1, 2, 0])
    chex.assert_trees_all_equal(dd.real_targets(y, "poison", 0, 2),
                                jnp.array([2, 1, 2, 2]))
    chex.assert_trees_all_equal(dd.real_targets(y, "ce", 0, 2), y)


class ChunkedLossTest(chex.TestCase):

  def test_chunked_equals_full_value_and_grad(self):
    model, learned, labels, params0, rx, ry = test_utils.tiny_problem()
    del learned, labels
    p0 = jax.tree.map(lambda a: a[0], params0)
    for chunk in (0, 3, 4, 16, 100):  # 3 leaves a remainder of 1 (n = 16).
      got = jax.value_and_grad(inner.chunked_loss, argnums=1)(
          model.apply, p0, rx, ry, chunk)
      want = jax.value_and_grad(inner.loss, argnums=1)(model.apply, p0, rx, ry)
      chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)

  def test_meta_gradient_unchanged_by_chunking(self):
    model, learned, labels, params0, rx, ry = test_utils.tiny_problem()
    keys = jax.random.split(jax.random.key(1), 2)
    a, b = (meta.value_and_grad(learned, labels, params0, keys, None, rx, ry,
                                problem=_problem(model, real_chunk=c))
            for c in (0, 4))
    chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-7)


if __name__ == "__main__":
  absltest.main()
