"""Inner optimisers: equal to optax's, state carried prefix -> window."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import optax

from distill_jax.core import inner_opt
from tests import test_utils  # pylint: disable=unused-import


def _loss(p, x):
  return jnp.sum(jnp.tanh(x @ p["w"]) ** 2) + jnp.sum(p["b"] ** 2)


_REFERENCE = {
    "gd": lambda: optax.sgd(0.05),
    "sgd": lambda: optax.chain(optax.add_decayed_weights(5e-4),
                               optax.sgd(0.05, momentum=0.9)),
    "adam": lambda: optax.adam(0.05, eps_root=1e-16),
}


class InnerOptTest(parameterized.TestCase):

  @parameterized.parameters("gd", "sgd", "adam")
  def test_carried_state_matches_python_loop(self, name):
    opt = inner_opt.build(name, 0.05, weight_decay=5e-4 if name == "sgd"
                          else 0.0)
    p0 = {"w": jnp.linspace(-1, 1, 6).reshape(3, 2), "b": jnp.ones(2)}
    xs = jax.random.normal(jax.random.key(0), (7, 4, 3))
    start = jnp.int32(3)

    def step(carry, x):
      p, s = carry
      return inner_opt.apply(opt.tx, jax.grad(_loss)(p, x), s, p, opt.lr)

    @jax.jit
    def prefix_then_window(p, start):
      carry = jax.lax.fori_loop(0, start, lambda t, c: step(c, xs[t]),
                                (p, opt.tx.init(p)))
      carry, _ = jax.lax.scan(lambda c, i: (step(c, xs[start + i]), None),
                              carry, jnp.arange(4))
      return carry[0]

    ref = _REFERENCE[name]()
    p, s = p0, ref.init(p0)
    for t in range(7):
      u, s = ref.update(jax.grad(_loss)(p, xs[t]), s, p)
      p = optax.apply_updates(p, u)
    chex.assert_trees_all_close(prefix_then_window(p0, start), p, rtol=1e-5,
                                atol=1e-6)

  @parameterized.parameters("sgd", "adam")
  def test_differentiable_and_finite(self, name):
    opt = inner_opt.build(name, 0.05)
    p0 = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}  # zero grads for b.

    def final_loss(x):
      p, s = p0, opt.tx.init(p0)
      for _ in range(3):
        p, s = inner_opt.apply(opt.tx, jax.grad(_loss)(p, x), s, p, opt.lr)
      return _loss(p, x)
    g = jax.grad(final_loss)(jnp.ones((4, 3)))
    chex.assert_tree_all_finite(g)

  def test_bad_name(self):
    with self.assertRaisesRegex(ValueError, "inner_opt='rmsprop'"):
      inner_opt.build("rmsprop", 0.1)


if __name__ == "__main__":
  absltest.main()
