"""Boost-DD: fixed earlier blocks weighted by beta, nested prefixes."""

import functools

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax import boost
from distill_jax import models
from distill_jax import rat_bptt
from tests import test_utils  # pylint: disable=unused-import

SHAPE, C = (4, 4, 1), 3


class BoostTest(absltest.TestCase):

  def test_fixed_blocks_and_prefix_nesting(self):
    xs = [np.full((C, 2, *SHAPE), b, np.float32) for b in range(3)]
    ys = [np.broadcast_to(np.eye(C)[:, None], (C, 2, C)) for _ in range(3)]
    fixed = boost.fixed_blocks(xs[:2], ys[:2], 0.25, C, SHAPE)
    chex.assert_shape(fixed.x, (C, 4, *SHAPE))
    chex.assert_trees_all_equal(fixed.w, jnp.full((C, 4), 0.25))
    empty = boost.fixed_blocks([], [], 0.25, C, SHAPE)
    chex.assert_shape(empty.x, (C, 0, *SHAPE))
    x_all = np.concatenate(xs, axis=1)
    y_all = np.concatenate(ys, axis=1)
    for k in (1, 2, 3):
      px, _ = boost.prefix(x_all, y_all, k, 2)
      chex.assert_shape(px, (C, 2 * k, *SHAPE))
      np.testing.assert_array_equal(np.unique(px), np.arange(k))
    px2, _ = boost.prefix(x_all, y_all, 2, 2)
    np.testing.assert_array_equal(boost.prefix(x_all, y_all, 1, 2)[0],
                                  px2[:, :2])

  def test_old_blocks_fixed_and_scaled_by_beta(self):
    cfg = rat_bptt.RatConfig(
        arch="mlp", mlp_hidden=(8,), ipc=1, batch_per_class=2, boost_blocks=2,
        total_steps=3, window=2, syn_aug="none", real_aug="none",
        inner_opt="gd", inner_lr=0.1, real_batch=6, val_size=5).validate()
    model = models.build(cfg, SHAPE, C)
    learned = rat_bptt.init_learned(jax.random.key(0), cfg, C, SHAPE)
    old = [np.asarray(jax.random.normal(jax.random.key(1), (C, 1, *SHAPE)))]
    eye = [np.broadcast_to(np.eye(C)[:, None], (C, 1, C))]
    rx = jax.random.normal(jax.random.key(2), (6, *SHAPE))
    ry = jnp.arange(6) % C
    loss = functools.partial(rat_bptt.meta_loss, key=jax.random.key(3),
                             start=jnp.int32(1), real_x=rx, real_y=ry,
                             cfg=cfg, model=model,
                             opt=rat_bptt.build_opt(cfg))

    def inner_grad_of_old(beta):
      sup = rat_bptt.support(learned, boost.fixed_blocks(old, eye, beta, C,
                                                         SHAPE))
      p = model.init(jax.random.key(4))
      w = sup.w.reshape(-1)

      def f(params):
        ce = -jnp.sum(sup.y.reshape(-1, C) * jax.nn.log_softmax(model.apply(
            params, sup.x.reshape(-1, *SHAPE))), -1)
        return jnp.mean(w * ce * (jnp.arange(w.size) % 2 == 0))  # old only.
      return jax.grad(f)(p)
    chex.assert_trees_all_close(
        inner_grad_of_old(0.1),
        jax.tree.map(lambda g: 0.1 * g, inner_grad_of_old(1.0)), rtol=1e-5,
        atol=1e-8)
    g = jax.jit(jax.grad(loss))(learned, boost.fixed_blocks(old, eye, 0.1, C,
                                                            SHAPE))
    self.assertEqual(set(g), {"x"})  # only the new block is learned.
    chex.assert_tree_all_finite(g)


if __name__ == "__main__":
  absltest.main()
